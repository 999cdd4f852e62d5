"""Ranking candidate backbones on the training images (headstart.selection.rank)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import SAMPLE, TINY_BACKBONE
from rich.console import Console

from headstart.data import load_image_dataset
from headstart.errors import ParameterError
from headstart.features import FeatureExtractor, FeatureStore
from headstart.selection.rank import BackboneScore, format_ranking, rank_backbones

# Two tiny random-weight networks that run in a second at 64 px, and a registered backbone with no weights offline.
TINY_OTHER = "timm:test_resnet"
RANDOM = {TINY_BACKBONE: "random", TINY_OTHER: "random"}


def _rank(store: FeatureStore, backbones: list[str], **options: object) -> list[BackboneScore]:
    return rank_backbones(SAMPLE, backbones, store=store, runtime="torch", image_size=64, n_folds=3,
                          weights={k: v for k, v in RANDOM.items() if k in backbones}, **options)  # type: ignore[arg-type]


def test_ranking_is_sorted_finite_and_lists_a_candidate_without_weights_last(
        tmp_path: Path, empty_weight_caches: tuple[Path, Path]) -> None:
    scores = _rank(FeatureStore(tmp_path), ["resnet18", TINY_BACKBONE, TINY_OTHER])

    assert [s.name for s in scores][-1] == "resnet18"
    failed = scores[-1]
    assert failed.error is not None and "No pretrained weights" in failed.error and "Fix:" in failed.error
    assert math.isnan(failed.logme) and math.isnan(failed.cv_accuracy) and failed.weights == "auto"
    scored = scores[:-1]
    assert {s.name for s in scored} == {TINY_BACKBONE, TINY_OTHER}
    assert [s.logme for s in scored] == sorted((s.logme for s in scored), reverse=True)
    train = load_image_dataset(SAMPLE).train
    for score in scored:
        assert score.error is None and math.isfinite(score.logme) and 0.0 <= score.cv_accuracy <= 1.0
        assert score.n_images == len(train) == 32 and score.dim > 0
        assert score.weights.startswith("random") and not score.cached
        assert score.feature_seconds > 0 and score.score_seconds > 0
        assert score.to_dict()["logme"] == score.logme
    assert failed.to_dict()["logme"] is None


def test_second_ranking_with_the_same_store_reads_every_feature_from_it(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path)
    first = _rank(store, [TINY_BACKBONE])
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    console = Console(record=True, width=200)
    second = _rank(store, [TINY_BACKBONE], progress=True, console=console)

    assert not first[0].cached and second[0].cached
    text = console.export_text()
    assert "32 training examples" in text and "cached features" in text
    assert second[0].logme == first[0].logme and second[0].cv_accuracy == first[0].cv_accuracy
    # "random" weights are drawn from the seed inside a forked RNG: the caller's random state is left alone.
    assert torch.equal(torch.random.get_rng_state(), state)


def test_without_a_store_nothing_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path))
    scores = rank_backbones(SAMPLE, [TINY_BACKBONE], store=None, runtime="torch", image_size=64, n_folds=3,
                            weights={TINY_BACKBONE: "random"})
    assert scores[0].error is None and not scores[0].cached
    assert not any(tmp_path.iterdir())


def test_only_training_images_are_read(tmp_path: Path, image_folder: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Path] = []
    original = FeatureExtractor.extract

    def spy(self: FeatureExtractor, paths: list[Path], **kwargs: object) -> object:
        seen.extend(Path(p) for p in paths)
        return original(self, paths, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(FeatureExtractor, "extract", spy)
    # train/ + val/ + test/: only train/.
    _rank(FeatureStore(tmp_path / "a"), [TINY_BACKBONE])
    assert seen and all(p.parent.parent.name == "train" for p in seen)
    # Plain class folders: the same hold-out as training with that seed is left out.
    seen.clear()
    scores = rank_backbones(image_folder, [TINY_BACKBONE], store=FeatureStore(tmp_path / "b"), runtime="torch",
                            image_size=64, n_folds=3, weights={TINY_BACKBONE: "random"}, seed=1)
    splits = load_image_dataset(image_folder, seed=1)
    assert sorted(seen) == sorted(splits.train.paths) and scores[0].n_images == len(splits.train) < 32
    assert not set(seen) & set(splits.val.paths)


@pytest.mark.parametrize("backbones, options, message", [
    ([], {}, "at least one backbone"),
    ("efficientnet_lite0", {}, "sequence of names"),
    (["efficientnet_lite0", "efficientnet_lite0"], {}, "each backbone once"),
    (["efficientnet_lit0"], {}, "Did you mean 'efficientnet_lite0'"),
    (["efficientnet_lite0"], {"weights": {"efficientnet_lite1": "random"}}, "not among the candidates"),
    (["efficientnet_lite0"], {"n_folds": 1}, "n_folds"),
    (["efficientnet_lite0"], {"image_size": 8}, "image_size"),
    (["efficientnet_lite0"], {"runtime": "tensorrt"}, "runtime"),
])
def test_bad_arguments_fail_before_any_work(tmp_path: Path, backbones: object, options: dict[str, object],
                                            message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        rank_backbones(tmp_path / "no-such-folder", backbones, store=FeatureStore(tmp_path), **options)  # type: ignore[arg-type]
    assert not (tmp_path / "features").exists()


def test_format_ranking_shows_ranks_scores_and_the_failure_reason() -> None:
    scores = [BackboneScore("good", logme=0.25, cv_accuracy=0.875, feature_seconds=3.0, score_seconds=0.5,
                            cached=True, n_images=32, dim=1280, weights="installed package x"),
              BackboneScore("broken", weights="auto", error="No pretrained weights for backbone 'broken'.")]
    console = Console(record=True, width=200)
    console.print(format_ranking(scores))
    text = console.export_text()
    for expected in ("rank", "LogME", "CV acc", "features s", "scoring s", "cached", "note",
                     "0.2500", "0.875", "yes", "No pretrained weights"):
        assert expected in text
    lines = [line for line in text.splitlines() if "good" in line or "broken" in line]
    assert lines[0].strip().startswith("│ 1") or " 1 " in lines[0]
    assert "-" in lines[1]


@pytest.mark.integration
def test_pretrained_lite0_outranks_the_same_architecture_with_random_weights(shared_data: Path,
                                                                               tmp_path: Path) -> None:
    """On real photos, ImageNet weights must beat random weights of the same network on both scores."""
    data = shared_data / "images" / "hymenoptera"
    if not data.is_dir():
        pytest.skip(f"{data} is missing")
    random_lite0 = "timm:tf_efficientnet_lite0"
    scores = rank_backbones(data, [random_lite0, "efficientnet_lite0"], store=FeatureStore(tmp_path),
                            weights={random_lite0: "random"})
    assert [s.name for s in scores] == ["efficientnet_lite0", random_lite0]
    pretrained, random = scores
    assert pretrained.error is None and random.error is None
    assert pretrained.logme > random.logme
    assert pretrained.cv_accuracy > random.cv_accuracy + 0.15
    assert pretrained.cv_accuracy > 0.85
