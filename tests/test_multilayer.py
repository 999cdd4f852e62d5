"""Intermediate-layer features (Head2Toe): every stage pooled in the same forward pass, the layer set chosen by
cross-validation on training data, and a bundle that predicts, reloads in a fresh process and exports alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from conftest import ROOT, TINY_BACKBONE, tiny_params

from headstart import ImageClassifier, ParameterError
from headstart.models.classifier_net import ClassifierNet
from headstart.models.multilayer import StageFeatures, layer_candidates
from headstart.training.classification import solve_linear_head


def test_stage_features_are_the_last_layer_then_every_stage_pooled() -> None:
    torch.manual_seed(0)
    plain = timm.create_model("test_efficientnet", num_classes=0).eval()
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        expected_last = plain(images)
        _, stages = plain.forward_intermediates(images, extra_blocks=True)
        wrapped = StageFeatures(plain, num_classes=2).eval()
        pooled = wrapped.forward_head(wrapped.forward_features(images), pre_logits=True)
    bounds = wrapped.layer_bounds()
    assert len(bounds) == len(stages) + 1 and pooled.shape == (3, wrapped.num_features)
    torch.testing.assert_close(pooled[:, slice(*bounds[0])], expected_last)
    for (start, end), stage in zip(bounds[1:], stages):
        torch.testing.assert_close(pooled[:, start:end], stage.mean(dim=(2, 3)))
    assert ClassifierNet(wrapped).layer_groups() and all(p.requires_grad for p in wrapped.parameters())


def _features(signal_in: int, n: int = 240, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    """Two classes; the label shows only in layer ``signal_in`` of three layers of widths 16, 8, 8 (layer 2's
    values are 100x smaller, so it is found only if every layer is rescaled)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    widths = (16, 8, 8)
    parts = [torch.randn(n, w, generator=generator) * (0.01 if i == 2 else 1.0) for i, w in enumerate(widths)]
    parts[signal_in][:, 0] += (labels.float() * 2 - 1) * 1.5 * (0.01 if signal_in == 2 else 1.0)
    bounds = [(0, 16), (16, 24), (24, 32)]
    return torch.cat(parts, dim=1), labels, bounds


@pytest.mark.parametrize(("signal_in", "chosen"), [(0, "last"), (2, "all")])
def test_the_layer_set_is_chosen_by_cross_validation(signal_in: int, chosen: str) -> None:
    features, labels, bounds = _features(signal_in)
    head = torch.nn.Linear(32, 2)
    record = solve_linear_head(head, features[:200], labels[:200], features[200:], labels[200:],
                               layers=(bounds, layer_candidates("auto", 2))).record
    choice = record["head_selection"]["feature_layers"]
    assert choice["chosen"] == chosen, choice
    assert [row["layers"] for row in choice["candidates"]] == ["last", "all"]
    if chosen == "last":  # the other layers get zero weight: the head reads the last layer only
        assert torch.count_nonzero(head.weight[:, 16:]) == 0 and torch.count_nonzero(head.weight[:, :16]) > 0
    accuracy = float((head(features[200:]).argmax(1) == labels[200:]).float().mean())
    assert accuracy > 0.85, accuracy  # the rescaling is folded into the weights: raw features predict


def test_bad_feature_layers_are_refused_with_a_fix(sample_dir: Path) -> None:
    for value, message in (("deep", "'auto', 'last', 'all'"), (0, "k >= 1")):
        with pytest.raises(ParameterError, match=message) as info:
            ImageClassifier(**tiny_params(feature_layers=value)).fit(".")
        assert "--feature-layers" in (info.value.fix or "")
    with pytest.raises(ParameterError, match="head is 'logistic'"):
        ImageClassifier(**tiny_params(strategy="linear_probe", head="logistic", feature_layers="all",
                                      epochs=None)).fit(sample_dir)


def test_auto_reads_intermediate_layers_only_for_a_frozen_backbone(sample_dir: Path) -> None:
    tuned = ImageClassifier(**tiny_params(epochs=1)).fit(sample_dir)  # fine_tune: auto keeps the last layer
    assert not isinstance(tuned.model_, StageFeatures)
    probe = ImageClassifier(**tiny_params(strategy="linear_probe", epochs=None)).fit(sample_dir)
    assert isinstance(probe.model_, StageFeatures)
    assert probe.history_[0]["head_selection"]["feature_layers"]["chosen"] in ("last", "all")


def test_a_multilayer_bundle_predicts_the_same_in_a_fresh_process_and_exports(tmp_path: Path,
                                                                              sample_dir: Path) -> None:
    classifier = ImageClassifier(**tiny_params(strategy="linear_probe", feature_layers=2, epochs=None,
                                               cache_dir=tmp_path / "cache")).fit(sample_dir)
    assert classifier.history_[0]["head_selection"]["feature_layers"]["chosen"] == "last+2"
    images = sorted((sample_dir / "test").rglob("*.jpg"))[:6]
    expected = classifier.predict_proba(images)
    model = classifier.save(tmp_path / "model")
    assert json.loads((model / "config.json").read_text())["head"]["feature_layers"] == "stages"
    script = ("import json, sys; from headstart import ImageClassifier;"
              "m = ImageClassifier.load(sys.argv[1]); print(json.dumps(m.predict_proba(sys.argv[2:]).tolist()))")
    env = {"PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    output = subprocess.run([sys.executable, "-c", script, str(model), *map(str, images)], env=env, check=True,
                            capture_output=True, text=True).stdout
    np.testing.assert_allclose(np.array(json.loads(output)), expected, atol=1e-5)
    # the whole network (every stage's pooling and the head) goes into the ONNX graph, checked for parity
    from headstart.deploy.export import export_bundle

    report = export_bundle(model, tmp_path / "export", data=sample_dir / "test")
    parity = report["parity"]
    assert (tmp_path / "export" / "model.onnx").is_file() and parity["n_inputs"] > 0
    assert parity["max_abs_diff"] <= parity["max_allowed"] and parity["top1_agreement"] == 1.0, parity
