"""Scikit-learn heads on frozen features: CV search, no-pickle save/load, prediction in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_params

from headstart import ImageClassifier
from headstart.errors import BundleError, ParameterError
from headstart.models.heads import SKLEARN_HEADS, load_sklearn_head, save_sklearn_head
from headstart.training.heads import fit_sklearn_head


def _blobs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(0, 1, (30, 6)), rng.normal(2.5, 1, (30, 6)), rng.normal(-2.5, 1, (30, 6))])
    return x.astype(np.float32), np.repeat([0, 1, 2], 30)


@pytest.mark.parametrize("name", SKLEARN_HEADS)
def test_each_head_searches_a_grid_and_round_trips_without_pickle(name: str, tmp_path: Path) -> None:
    x, y = _blobs()
    fit = fit_sklearn_head(name, x, y)
    assert fit.folds == 5 and len(fit.cv) >= 2 and fit.params
    assert all(0 <= row["cv_score"] <= 1 for row in fit.cv)
    probabilities = fit.estimator.predict_proba(x)
    assert probabilities.shape == (90, 3) and np.allclose(probabilities.sum(1), 1, atol=1e-6)
    assert (probabilities.argmax(1) == y).mean() > 0.85
    path = save_sklearn_head(fit.estimator, tmp_path / "head.skops")
    with zipfile.ZipFile(path) as archive:  # skops: a zip of a JSON schema and .npy arrays, no pickle
        names = archive.namelist()
        assert "schema.json" in names and all(n == "schema.json" or n.endswith(".npy") for n in names)
        json.loads(archive.read("schema.json"))
    np.testing.assert_allclose(load_sklearn_head(path).predict_proba(x), probabilities, atol=1e-6)


def test_views_of_one_image_share_a_fold() -> None:
    """A mirrored copy of a held-out image in the training folds would inflate kNN's CV score to 1.0."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5)).astype(np.float32)  # pure noise: nothing to learn
    y = np.repeat([0, 1], 20)
    doubled = np.concatenate([x, x + 1e-4])  # second "view" = almost the same point
    fit = fit_sklearn_head("knn", doubled, np.tile(y, 2), n_views=2)
    assert max(row["cv_score"] for row in fit.cv) < 0.8


def test_unknown_head_and_bad_combination() -> None:
    x, y = _blobs()
    with pytest.raises(ParameterError, match="'head' parameter.*Got 'svm_rbf'") as info:
        fit_sklearn_head("svm_rbf", x, y)
    assert "rbf_svm" in (info.value.fix or "")
    with pytest.raises(ParameterError, match="cannot be trained with strategy='fine_tune'"):
        ImageClassifier(**tiny_params(head="knn", strategy="fine_tune")).fit("unused")


def test_loading_refuses_unexpected_types(tmp_path: Path) -> None:
    import skops.io
    from sklearn.preprocessing import FunctionTransformer

    skops.io.dump(FunctionTransformer(func=os.getcwd), tmp_path / "head.skops")
    with pytest.raises(BundleError, match="types that no headstart head uses"):
        load_sklearn_head(tmp_path / "head.skops")


@pytest.mark.integration
@pytest.mark.parametrize("head", SKLEARN_HEADS)
def test_each_head_end_to_end_on_real_photos(shared_data: Path, tmp_path: Path, head: str) -> None:
    """Real Lite0 features of the hymenoptera photos; save; predict from image files in a new process."""
    data = shared_data / "images" / "hymenoptera"
    classifier = ImageClassifier(head=head, progress=False, image_size=224).fit(data, out=tmp_path / "run")
    accuracy = classifier.metrics_["accuracy"]["value"]
    assert accuracy >= 0.85, f"{head}: validation accuracy {accuracy:.3f}"
    model_dir = tmp_path / "run" / "model"
    assert sorted(p.name for p in model_dir.iterdir() if p.name != ".headstart-owned.json") == ["config.json", "head.skops", "model.safetensors",
                                                         "validation.json"]
    images = sorted((data / "val").rglob("*.jpg"))[:6]
    expected = classifier.predict_proba(images)
    script = ("import json, sys; from headstart import ImageClassifier; c = ImageClassifier.load(sys.argv[1]);"
              " print(json.dumps(c.predict_proba(sys.argv[2:]).tolist()))")
    done = subprocess.run([sys.executable, "-c", script, str(model_dir), *map(str, images)], capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_allclose(np.array(json.loads(done.stdout.strip().splitlines()[-1])), expected, atol=1e-4)


@pytest.mark.parametrize(("head", "accelerator", "extractor"),
                         [("random_forest", "auto", True), ("linear", "auto", False), ("random_forest", "cuda", False)])
def test_frozen_features_stay_on_the_cpu_extractor_for_sklearn_heads_when_a_gpu_is_present(
        monkeypatch: pytest.MonkeyPatch, head: str, accelerator: str, extractor: bool) -> None:
    """Found on an H100: with a GPU present every scikit-learn head was refused ('runs on the CPU in one process')."""
    import timm
    import torch
    from rich.console import Console

    from headstart.models import get_backbone_spec

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    classifier = ImageClassifier(**tiny_params(head=head, accelerator=accelerator))
    spec = get_backbone_spec(classifier.backbone)
    model = timm.create_model(spec.architecture, pretrained=False, num_classes=0)
    found = classifier._feature_extractor(model, spec.preprocessing(), spec.architecture, console=Console(quiet=True),
                                          cache_features=False)
    assert (found is not None) == extractor


def test_a_solved_linear_head_is_stored_and_read_back_only_for_the_same_inputs(tmp_path: Path,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    import headstart.training.heads as heads
    from headstart.features.store import FeatureStore

    x, y = _blobs()
    features, labels = torch.from_numpy(np.concatenate([x, x[:, ::-1].copy()])), torch.from_numpy(np.tile(y, 2))
    store = FeatureStore(tmp_path / "cache")
    first = heads.fit_linear_head(features, labels, n_classes=3, n_views=2, store=store)
    assert len(list((tmp_path / "cache" / "heads").glob("*.safetensors"))) == 1

    solves = []
    original = heads._fit_linear_head
    monkeypatch.setattr(heads, "_fit_linear_head", lambda *a, **k: solves.append(1) or original(*a, **k))
    again = heads.fit_linear_head(features, labels, n_classes=3, n_views=2, store=store)
    assert not solves, "the same inputs must be read back, not solved again"
    assert torch.equal(again.weight, first.weight) and torch.equal(again.bias, first.bias)
    assert again.l2 == first.l2 and again.cv == first.cv and again.folds == first.folds

    # anything the solve reads changes the key: a label, a feature value, the class weights, the seed
    changed_labels = labels.clone()
    changed_labels[0] = 1
    changed_features = features.clone()
    changed_features[5, 2] += 1e-3
    heads.fit_linear_head(features, changed_labels, n_classes=3, n_views=2, store=store)
    heads.fit_linear_head(changed_features, labels, n_classes=3, n_views=2, store=store)
    heads.fit_linear_head(features, labels, n_classes=3, n_views=2, store=store,
                          class_weight=torch.tensor([1.0, 2.0, 1.0]))
    heads.fit_linear_head(features, labels, n_classes=3, n_views=2, store=store, seed=1)
    assert len(solves) == 4
    assert len(list((tmp_path / "cache" / "heads").glob("*.safetensors"))) == 5

    # a damaged entry is solved again, not trusted
    for entry in (tmp_path / "cache" / "heads").glob("*.safetensors"):
        entry.write_bytes(b"not a safetensors file")
    heads.fit_linear_head(features, labels, n_classes=3, n_views=2, store=store)
    assert len(solves) == 5
    assert store.clear() == 0 and not (tmp_path / "cache" / "heads").exists()
