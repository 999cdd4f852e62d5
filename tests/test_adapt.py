"""Domain adaptation (headstart.adapt) and shift measurement (headstart.deploy.shift): the gradient-reversal layer, each
method on synthetic and real Office-31 features, label blindness, bundles, CLI, and the service's /shift."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SAMPLE
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from headstart import DomainAdapter, ImageClassifier
from headstart.adapt import (
    METHODS,
    DomainFeatures,
    gradient_reversal,
    information_maximization,
)
from headstart.adapt.coral import coral_transform
from headstart.adapt.self_training import confident_pseudo_labels
from headstart.cli import app
from headstart.deploy.serve import ServeConfig, create_app
from headstart.deploy.shift import measure_shift
from headstart.errors import DataError, ParameterError
from headstart.models.heads import FeatureMLP

OFFICE = ("domains", "office31")
CLASSES = ("back_pack", "bike", "calculator", "headphones", "mug")


# -- gradient reversal ---------------------------------------------------------------------------------------------


def test_gradient_reversal_is_identity_forward_and_negates_scaled_gradients_backward() -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 3)
    x = torch.randn(5, 4)
    plain = layer(x).pow(2).sum()
    plain.backward()
    expected = layer.weight.grad.clone()
    layer.zero_grad()
    reversed_output = gradient_reversal(layer(x), 0.7)
    assert torch.equal(reversed_output, layer(x))
    reversed_output.pow(2).sum().backward()
    assert torch.allclose(layer.weight.grad, -0.7 * expected, atol=1e-6)


# -- methods on synthetic features --------------------------------------------------------------------------------


def _synthetic(seed: int = 0, n: int = 120, shift: float = 0.3) -> tuple[DomainFeatures, np.ndarray]:
    """Three Gaussian classes in 16-d; the target is the source stretched and moved by ``shift`` times the distance
    from class 0's centre to class 1's (labels returned apart)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (3, 16))
    labels_s, labels_t = rng.integers(0, 3, n), rng.integers(0, 3, n)
    source = centres[labels_s] + rng.normal(0, 1, (n, 16))
    target = 1.5 * (centres[labels_t] + rng.normal(0, 1, (n, 16))) + shift * (centres[1] - centres[0])
    views = lambda x: np.stack([x, x + rng.normal(0, 0.05, x.shape)]).astype(np.float32)  # noqa: E731
    return DomainFeatures(source=views(source), source_labels=labels_s, target=views(target), n_classes=3), labels_t


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_returns_a_head_that_classifies_the_shifted_target(name: str) -> None:
    data, target_labels = _synthetic()
    result = METHODS[name](data, 1e-2, 0, 300)
    assert result.method == name and np.isfinite(result.score)
    with torch.no_grad():
        predicted = result.module.eval()(torch.from_numpy(data.target[0])).argmax(1).numpy()
    assert isinstance(result.module, (torch.nn.Linear, FeatureMLP))
    assert (predicted == target_labels).mean() > 0.6, name


def test_alignment_beats_source_only_when_the_target_is_moved_far() -> None:
    data, target_labels = _synthetic(seed=1, shift=1.0)

    def accuracy(name: str) -> float:
        module = METHODS[name](data, 1e-2, 0, 300).module.eval()
        with torch.no_grad():
            return float((module(torch.from_numpy(data.target[0])).argmax(1).numpy() == target_labels).mean())

    assert accuracy("coral") > accuracy("source_only") + 0.2


def test_coral_matches_target_mean_and_covariance() -> None:
    rng = np.random.default_rng(0)
    # features with variances far above the identity regulariser: the covariances then match closely
    source, target = rng.normal(0, 100, (400, 5)), rng.normal(2, 300, (600, 5)) @ rng.normal(0, 1, (5, 5))
    moved = coral_transform(source, target)
    assert np.allclose(moved.mean(0), target.mean(0), atol=1e-6)
    assert np.allclose(np.cov(moved, rowvar=False), np.cov(target, rowvar=False), rtol=1e-2, atol=5.0)
    assert not np.allclose(np.cov(source, rowvar=False), np.cov(target, rowvar=False), rtol=1e-2, atol=5.0)


def test_pseudo_labels_are_class_balanced_and_grow_with_the_share() -> None:
    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(0, 0.1, (30, 4)) + np.eye(4)[c] for c in range(3)])
    probabilities = np.repeat(np.eye(3), 30, axis=0) * 0.7 + 0.1
    probabilities[:, :] += rng.uniform(0, 0.01, probabilities.shape)
    (few, few_labels), (many, _) = (confident_pseudo_labels(probabilities, features, share) for share in (0.2, 1.0))
    assert len(few) == 18 and len(many) == 90  # 20% / 100% of each of the three classes
    assert np.bincount(few_labels).tolist() == [6, 6, 6]
    assert np.array_equal(few_labels, probabilities.argmax(1)[few])
    # a classifier that disagrees with the clusters on class 2: "agree" drops those images, "centroid" relabels them
    wrong = probabilities.copy()
    wrong[60:70, 1:] = wrong[60:70, ::-1][:, :2]  # ten images of class 2 predicted as class 1
    agreed, _ = confident_pseudo_labels(wrong, features, 1.0, rule="agree")
    relabelled, centroid = confident_pseudo_labels(wrong, features, 1.0, rule="centroid")
    assert len(agreed) == 80 and not set(range(60, 70)) & set(agreed.tolist())
    assert len(relabelled) == 90 and centroid[60:70].tolist() == [2] * 10


def test_information_maximization_prefers_confident_diverse_predictions() -> None:
    confident = np.eye(3)[[0, 1, 2, 0, 1, 2]] * 0.9 + 0.1 / 3
    collapsed = np.eye(3)[[0] * 6] * 0.9 + 0.1 / 3
    unsure = np.full((6, 3), 1 / 3)
    assert information_maximization(confident) > information_maximization(collapsed)
    assert information_maximization(confident) > information_maximization(unsure)


def test_mlp_head_bundle_round_trips_on_a_backbone_whose_pooled_width_differs_from_num_features(tmp_path: Path
                                                                                                  ) -> None:
    from headstart.models import Preprocessing, create_backbone, get_backbone_spec
    from headstart.models.heads import set_classifier

    model, _ = create_backbone("timm:mobilenetv3_small_050", 3, weights="random")
    model.eval()
    pooled = model.forward_head(model.forward_features(torch.zeros(1, 3, 64, 64)), pre_logits=True).shape[1]
    assert pooled != model.num_features  # 1024 vs 288: the case a num_features-sized head would break
    head = FeatureMLP(pooled, 3, hidden=16).eval()
    set_classifier(model, head)
    spec = get_backbone_spec("timm:mobilenetv3_small_050")
    preprocessing = Preprocessing.from_dict({**spec.preprocessing().to_dict(), "input_size": 64})
    classifier = ImageClassifier.from_frozen_model(
        model, classes=["a", "b", "c"], preprocessing=preprocessing,
        backbone_spec={"name": spec.name, "timm_id": spec.timm_id, "architecture": spec.architecture,
                       "weights": "random"}, params={"backbone": "timm:mobilenetv3_small_050", "runtime": "torch"},
        metrics=None, history=[], validation=None)
    loaded = ImageClassifier.load(classifier.save(tmp_path / "model"))
    assert isinstance(loaded.model_.get_classifier(), FeatureMLP)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded.model_(x), model(x), atol=1e-6)


def test_set_classifier_refuses_models_with_two_classifier_layers() -> None:
    import timm

    from headstart.models.heads import set_classifier

    model = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, num_classes=3)
    with pytest.raises(ParameterError, match="no single classifier"):
        set_classifier(model, torch.nn.Linear(192, 3))


# -- shift --------------------------------------------------------------------------------------------------------


def test_measure_shift_separates_same_and_moved_distributions() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(300, 20))
    same = measure_shift(base[:150], base[150:], permutations=99)
    moved = measure_shift(base[:150], rng.normal(size=(150, 20)) + 2.0, permutations=99)
    assert same.verdict == "no_shift" and same.p_value > 0.05
    assert moved.verdict == "severe_shift" and moved.p_value <= 0.01 and moved.proxy_a_distance > 1.8


def test_measure_shift_refuses_tiny_or_mismatched_sets() -> None:
    with pytest.raises(DataError, match="at least 10"):
        measure_shift(np.zeros((5, 3)), np.ones((50, 3)))
    with pytest.raises(ParameterError, match="one width"):
        measure_shift(np.zeros((50, 3)), np.ones((50, 4)))
    with pytest.raises(ParameterError, match="permutations"):
        measure_shift(np.zeros((50, 3)), np.ones((50, 3)), permutations=5)
    for options, name in (({"max_samples": 5}, "max_samples"), ({"seed": -1}, "seed")):
        with pytest.raises(ParameterError, match=name):
            measure_shift(np.zeros((50, 3)), np.ones((50, 3)), **options)


def _subset(root: Path, out: Path, *, per_class: int, offset: int = 0, classes: tuple[str, ...] = CLASSES,
            labels: bool = True) -> Path:
    """Symlinks to ``per_class`` images of each class of an Office-31 domain (in class folders, or flat)."""
    for name in classes:
        files = sorted((root / name).glob("*.jpg"))[offset:offset + per_class]
        folder = out / name if labels else out
        folder.mkdir(parents=True, exist_ok=True)
        for file in files:
            (folder / f"{name}_{file.name}").symlink_to(file)
    return out


def test_shift_finds_none_between_halves_of_a_domain_and_a_clear_one_between_amazon_and_webcam(
        shared_data: Path, tmp_path: Path) -> None:
    from headstart.deploy.shift import shift_between

    office = shared_data.joinpath(*OFFICE)
    classes = sorted(p.name for p in (office / "webcam" / "images").iterdir())[:12]
    rng = np.random.default_rng(0)

    def link(files: list[Path], folder: Path) -> Path:
        folder.mkdir()
        for file in files:
            (folder / f"{file.parent.name}_{file.name}").symlink_to(file)
        return folder

    webcam = [f for c in classes for f in sorted((office / "webcam" / "images" / c).glob("*.jpg"))]
    webcam = [webcam[i] for i in rng.permutation(len(webcam))]
    half_a = link(webcam[: len(webcam) // 2], tmp_path / "half_a")
    half_b = link(webcam[len(webcam) // 2:], tmp_path / "half_b")
    amazon = [f for c in classes for f in sorted((office / "amazon" / "images" / c).glob("*.jpg"))]
    amazon = link([amazon[i] for i in rng.choice(len(amazon), len(webcam) // 2, replace=False)], tmp_path / "amazon")
    halves, _ = shift_between(half_a, half_b, permutations=199)
    domains, described = shift_between(amazon, half_a, permutations=199)
    assert halves.verdict == "no_shift", halves.describe()
    assert domains.verdict in ("shift", "severe_shift") and domains.p_value <= 0.01, domains.describe()
    assert domains.proxy_a_distance > halves.proxy_a_distance + 0.8
    assert described["images_a"] == described["images_b"] == len(webcam) // 2


# -- DomainAdapter on real Office-31 images ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def office_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from conftest import SHARED_DATA

    office = SHARED_DATA.joinpath(*OFFICE)
    if not office.is_dir():
        pytest.skip(f"Office-31 is not at {office} (../shared/data beside the checkout)")
    root = tmp_path_factory.mktemp("office")
    return (_subset(office / "dslr" / "images", root / "dslr", per_class=6),
            _subset(office / "webcam" / "images", root / "webcam", per_class=6))


def _adapter(**overrides: object) -> DomainAdapter:
    params: dict[str, object] = dict(method="all", image_size=128, steps=60, progress=False, n_bootstrap=50,
                                     num_workers=0)
    params.update(overrides)
    return DomainAdapter(**params)


def test_every_method_runs_end_to_end_on_office31_and_metrics_name_each(office_pair: tuple[Path, Path],
                                                                          tmp_path: Path) -> None:
    source, target = office_pair
    adapter = _adapter().fit(source, target, out=tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(METHODS) <= set(metrics) and metrics["selected_method"] == adapter.method_ in METHODS
    for name in METHODS:
        assert 0.0 <= metrics[name]["accuracy"]["value"] <= 1.0 and len(metrics[name]["confusion_matrix"]) == 5
    assert metrics["target_labelled"] == 30
    assert len(adapter.target_paths_) == 30
    for name in ("dann", "self_training"):  # one prediction row per scored checkpoint / round, for the benchmark
        head = adapter.heads_[name]
        assert len(head.checkpoint_predictions) == len(head.history) >= (5 if name == "self_training" else 1)
        assert all(p.shape == (30,) for p in head.checkpoint_predictions)
    assert adapter.results_[adapter.method_]["im_score"] == max(r["im_score"] for r in adapter.results_.values())
    for name in ("config.json", "data.json", "history.json", "comparison.png", "confusion_matrix.png", "summary.txt"):
        assert (tmp_path / "run" / name).is_file(), name
    assert len(adapter.predict(sorted(target.rglob("*.jpg"))[:3])) == 3


def test_target_labels_never_reach_training_or_selection(office_pair: tuple[Path, Path], tmp_path: Path) -> None:
    source, target = office_pair
    shuffled = tmp_path / "shuffled"
    files = sorted(target.rglob("*.jpg"))
    rng = np.random.default_rng(0)
    for file, name in zip(files, rng.permutation([f.parent.name for f in files])):
        (shuffled / name).mkdir(parents=True, exist_ok=True)
        (shuffled / name / file.name).symlink_to(file.resolve())
    runs = [_adapter().fit(source, folder) for folder in (target, shuffled)]
    assert runs[0].method_ == runs[1].method_
    for name in METHODS:
        assert runs[0].results_[name]["im_score"] == runs[1].results_[name]["im_score"], name
    first, second = (r.classifier_.model_.get_classifier().state_dict() for r in runs)
    assert all(torch.equal(first[k], second[k]) for k in first)
    # the labels were read (for evaluation only): the shuffled ones score worse
    accuracy = [r.results_[r.method_]["target"]["accuracy"]["value"] for r in runs]
    assert accuracy[0] > accuracy[1]


@pytest.mark.parametrize("method", ["self_training", "dann"])
def test_adapted_bundles_predict_export_and_serve_in_a_new_process(method: str, office_pair: tuple[Path, Path],
                                                                    tmp_path: Path) -> None:
    from headstart.deploy.export import export_bundle

    source, target = office_pair
    adapter = _adapter(method=method).fit(source, target)
    bundle = adapter.save(tmp_path / "model")
    images = sorted(target.rglob("*.jpg"))[:4]
    expected = adapter.predict_proba(images)
    script = ("import json, sys; from headstart import ImageClassifier; "
              f"m = ImageClassifier.load({str(bundle)!r}); print(json.dumps(m.predict_proba({[str(p) for p in images]!r}).tolist()))")
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert np.allclose(np.array(json.loads(output.stdout.strip().splitlines()[-1])), expected, atol=1e-5)
    config = json.loads((bundle / "config.json").read_text())
    assert config["adaptation"]["method"] == method and config["task"] == "image_classification"
    assert config["head"]["kind"] == ("mlp" if method == "dann" else "linear")
    report = export_bundle(bundle, tmp_path / "export", format="onnx", data=target)
    assert report["parity"]["max_abs_diff"] < 1e-4 and report["parity"]["top1_identical"]
    with TestClient(create_app(ServeConfig(bundle=str(bundle), backend="torch"), log=lambda _: None)) as client:
        response = client.post("/predict", files=[("files", (p.name, p.read_bytes(), "image/jpeg"))
                                                  for p in images[:2]])
    assert response.status_code == 200
    top = [row["label"] for row in response.json()["predictions"]]
    assert top == [adapter.classes_[i] for i in expected[:2].argmax(1)]


def test_adapter_refuses_bad_methods_weights_and_tiny_targets(office_pair: tuple[Path, Path], tmp_path: Path) -> None:
    source, target = office_pair
    with pytest.raises(ParameterError, match="'method'.*dan"):
        _adapter(method="dan").fit(source, target)
    with pytest.raises(ParameterError, match="'weights'"):
        _adapter(weights="random").fit(source, target)
    few = tmp_path / "few"
    few.mkdir()
    for file in sorted(target.rglob("*.jpg"))[:4]:
        (few / file.name).symlink_to(file.resolve())
    with pytest.raises(DataError, match="4 distinct usable images"):
        _adapter().fit(source, few)


def test_cli_adapt_and_shift(office_pair: tuple[Path, Path], tmp_path: Path) -> None:
    source, target = office_pair
    unlabelled = _subset(Path(str(target)), tmp_path / "flat", per_class=6, labels=False)  # no class folders
    runner = CliRunner()
    result = runner.invoke(app, ["adapt", str(source), "--target", str(unlabelled), "--method", "source_only,coral",
                                 "--image-size", "128", "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["target_labelled"] == 0 and set(metrics) >= {"source_only", "coral"}
    assert "accuracy" not in metrics["coral"]  # nothing to evaluate without target labels
    result = runner.invoke(app, ["adapt", str(source), "--target", str(unlabelled), "--method", "bogus",
                                 "--out", str(tmp_path / "bad")])
    assert result.exit_code == 2 and "method" in result.output
    result = runner.invoke(app, ["shift", str(tmp_path / "run" / "model"), str(unlabelled), "--permutations", "99",
                                 "--out", str(tmp_path / "shift.json"), "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "shift.json").read_text())
    assert report["verdict"] in ("no_shift", "shift", "severe_shift") and report["images_a"] == 30


# -- the service's /shift ----------------------------------------------------------------------------------------


def test_service_logs_embeddings_and_reports_shift_on_request(tiny_image_bundle: Path) -> None:
    photos = sorted((SAMPLE / "val").rglob("*.jpg")) + sorted((SAMPLE / "test").rglob("*.jpg"))
    with pytest.raises(ParameterError, match="log_embeddings"):
        ServeConfig(bundle=str(tiny_image_bundle), log_embeddings=5).validate()
    off = TestClient(create_app(ServeConfig(bundle=str(tiny_image_bundle)), log=lambda _: None))
    assert off.get("/shift").json()["error"]["code"] == "shift_logging_off"
    with TestClient(create_app(ServeConfig(bundle=str(tiny_image_bundle), log_embeddings=50),
                               log=lambda _: None)) as client:
        early = client.get("/shift")
        assert early.status_code == 409 and "at least 10" in early.json()["error"]["message"]
        for photo in photos[:12]:
            assert client.post("/predict", files={"file": (photo.name, photo.read_bytes(), "image/jpeg")}).status_code == 200
        report = client.get("/shift", params={"permutations": 99}).json()
    assert report["logged_images"] == 12 and report["reference_images"] >= 10
    assert report["verdict"] in ("no_shift", "shift", "severe_shift") and 0 < report["p_value"] <= 1
