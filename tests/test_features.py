"""The feature store (invalidation, concurrency), the runtimes' parity with torch and their fallback."""

from __future__ import annotations

import multiprocessing
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SAMPLE, TINY_BACKBONE

from headstart.features import (
    FeatureExtractor,
    FeatureKey,
    FeatureStore,
    available_runtimes,
    create_engine,
)
from headstart.features import runtime as runtime_module
from headstart.features import store as store_module
from headstart.features.runtime import PARITY_MIN_COSINE, row_cosine
from headstart.models import create_backbone, get_backbone_spec
from headstart.models.registry import Preprocessing

TINY_PREPROCESSING = Preprocessing(input_size=64, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=0.875)


def _tiny_extractor(store: FeatureStore | None, *, runtime: str = "torch", seed: int = 0) -> FeatureExtractor:
    torch.manual_seed(seed)
    model, _ = create_backbone(TINY_BACKBONE, 0, weights="random")
    return FeatureExtractor(model, preprocessing=TINY_PREPROCESSING, architecture="test_efficientnet", store=store,
                            runtime=runtime, batch_size=8, num_workers=0)


@pytest.fixture
def photos(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "photos"
    shutil.copytree(SAMPLE / "train", folder)
    return sorted(folder.rglob("*.jpg"))


def test_second_run_extracts_nothing_and_matches(tmp_path: Path, photos: list[Path]) -> None:
    store = FeatureStore(tmp_path / "cache")
    first = _tiny_extractor(store)
    features = first.extract(photos)
    assert first.report.computed == len(photos) and first.report.cached == 0
    second = _tiny_extractor(store)
    again = second.extract(photos)
    assert second.report.computed == 0 and second.report.cached == len(photos)
    np.testing.assert_array_equal(features, again)
    # Same content under another name (a copy, a rename) is served from the cache too.
    renamed = tmp_path / "renamed.jpg"
    shutil.copy(photos[0], renamed)
    third = _tiny_extractor(store)
    np.testing.assert_array_equal(third.extract([renamed])[0], features[0])
    assert third.report.computed == 0


def test_added_changed_and_deleted_files(tmp_path: Path, photos: list[Path]) -> None:
    store = FeatureStore(tmp_path / "cache")
    base, extra = photos[:-10], photos[-10:]
    reference = _tiny_extractor(None).extract(photos)
    _tiny_extractor(store).extract(base)
    added = _tiny_extractor(store)
    features = added.extract(photos)
    assert (added.report.computed, added.report.cached) == (10, len(base))
    np.testing.assert_allclose(features, reference, rtol=0, atol=1e-5)

    changed_path = photos[3]
    other_bytes = photos[20].read_bytes()
    changed_path.write_bytes(other_bytes)  # same path, different content
    changed = _tiny_extractor(store)
    row = changed.extract([changed_path])
    assert changed.report.computed == 0  # those bytes were already cached under photos[20]
    np.testing.assert_allclose(row[0], reference[20], atol=1e-5)
    changed_path.write_bytes(other_bytes + b"\0")  # new bytes never seen: recomputed
    fresh = _tiny_extractor(store)
    fresh.extract([changed_path])
    assert fresh.report.computed == 1

    deleted = photos[5]
    deleted.unlink()
    remaining = [p for p in photos if p != deleted]
    after_delete = _tiny_extractor(store)
    assert after_delete.extract(remaining).shape == (len(remaining), reference.shape[1])
    assert after_delete.report.computed == 0


def test_key_separates_weights_preprocessing_and_views(tmp_path: Path, photos: list[Path]) -> None:
    store = FeatureStore(tmp_path / "cache")
    a = _tiny_extractor(store, seed=0)
    a.extract(photos[:4])
    other_weights = _tiny_extractor(store, seed=1)
    other_weights.extract(photos[:4])
    assert other_weights.report.computed == 4
    mirror = _tiny_extractor(store, seed=0)
    mirrored = mirror.extract(photos[:4], view="mirror")
    assert mirror.report.computed == 4
    assert not np.allclose(mirrored, a.extract(photos[:4]))
    bigger = _tiny_extractor(store, seed=0)
    bigger.preprocessing = Preprocessing.from_dict({**TINY_PREPROCESSING.to_dict(), "input_size": 72})
    bigger.extract(photos[:4])
    assert bigger.report.computed == 4
    assert len(store.info()) == 4


def test_augmented_views_are_reproducible_and_distinct(tmp_path: Path, photos: list[Path]) -> None:
    first = _tiny_extractor(FeatureStore(tmp_path / "one")).extract(photos[:6], view="augment-0")
    again = _tiny_extractor(FeatureStore(tmp_path / "two")).extract(photos[:6], view="augment-0")
    other = _tiny_extractor(FeatureStore(tmp_path / "two")).extract(photos[:6], view="augment-1")
    np.testing.assert_allclose(first, again, atol=1e-6)  # seeded by file content and view index
    assert np.abs(first - other).max() > 1e-3


def _extract_in_process(cache: str, paths: list[str], seed: int) -> None:
    torch.set_num_threads(1)
    extractor = _tiny_extractor(FeatureStore(cache), seed=seed)
    extractor.extract([Path(p) for p in paths])


def test_concurrent_writers_never_corrupt_the_store(tmp_path: Path, photos: list[Path]) -> None:
    cache = tmp_path / "cache"
    context = multiprocessing.get_context("spawn")
    # Overlapping halves at once: both write shards for the shared middle files.
    jobs = [context.Process(target=_extract_in_process, args=(str(cache), [str(p) for p in photos[:20]], 0)),
            context.Process(target=_extract_in_process, args=(str(cache), [str(p) for p in photos[12:]], 0))]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(timeout=300)
        assert job.exitcode == 0
    assert not list(cache.rglob("*.tmp"))
    check = _tiny_extractor(FeatureStore(cache))
    features = check.extract(photos)
    assert check.report.computed == 0, "every file must be readable from the shards the two writers left"
    np.testing.assert_allclose(features, _tiny_extractor(None).extract(photos), atol=1e-5)


def test_many_shards_are_merged_without_losing_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "MAX_SHARDS", 3)
    store = FeatureStore(tmp_path)
    key = FeatureKey("arch", "w", {"input_size": 1})
    digests = [bytes([i]) * 16 for i in range(10)]
    for i, digest in enumerate(digests):
        store.add(key, [digest], np.full((1, 4), i, dtype=np.float32))
    shards = list((tmp_path / "features" / key.digest()).glob("shard-*"))
    assert len(shards) <= 4
    found = store.lookup(key, digests)
    assert [float(found[d][0]) for d in digests] == list(range(10))


def test_cache_info_and_clear(tmp_path: Path, photos: list[Path]) -> None:
    store = FeatureStore(tmp_path / "cache")
    _tiny_extractor(store).extract(photos[:5])
    _tiny_extractor(store).extract(photos[:3], view="mirror")
    info = store.info()
    assert sorted((e["view"], e["files"]) for e in info) == [("center", 5), ("mirror", 3)]
    assert all(e["architecture"] == "test_efficientnet" and e["bytes"] > 0 for e in info)
    assert store.clear() == 2 and store.info() == []


def test_store_rejects_mismatched_rows(tmp_path: Path) -> None:
    from headstart.errors import ParameterError

    with pytest.raises(ParameterError, match="one feature row per digest"):
        FeatureStore(tmp_path).add(FeatureKey("a", "w", {}), [b"x" * 16], np.zeros((2, 3), dtype=np.float32))


@pytest.mark.parametrize("runtime", [r for r in available_runtimes() if r != "torch"])
def test_runtime_matches_torch_on_real_photos(tmp_path: Path, photos: list[Path], runtime: str) -> None:
    store = FeatureStore(tmp_path / "cache")
    reference = _tiny_extractor(None, runtime="torch").extract(photos[:12])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback may happen here
        fast = _tiny_extractor(store, runtime=runtime)
        features = fast.extract(photos[:12])
    assert fast.report.runtime == runtime and fast.report.parity >= PARITY_MIN_COSINE
    assert row_cosine(features, reference).min() >= PARITY_MIN_COSINE
    assert list((tmp_path / "cache" / "runtimes").rglob("backbone.onnx")), "the export is cached"


def test_runtime_missing_parity_falls_back_to_torch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    model, _ = create_backbone(TINY_BACKBONE, 0, weights="random")

    def broken(onnx_path: Path) -> runtime_module.FeatureEngine:  # right shape, wrong values
        return runtime_module.FeatureEngine("onnxruntime", lambda images: np.random.rand(len(images), model.num_features))

    monkeypatch.setattr(runtime_module, "_onnxruntime_engine", broken)
    images = np.random.default_rng(0).integers(0, 256, size=(4, 3, 64, 64), dtype=np.uint8)
    messages: list[str] = []
    engine = create_engine(model, mean=(0.5,) * 3, std=(0.5,) * 3, runtime="onnxruntime", image_size=64,
                           export_dir=tmp_path,
                           parity_images=images, warn=messages.append)
    assert engine.name == "torch"
    assert messages and "differ from torch" in messages[0] and "onnxruntime" in messages[0]


def test_runtime_failure_falls_back_to_torch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def failing(*args: object, **kwargs: object) -> Path:
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(runtime_module, "export_onnx", failing)
    model, _ = create_backbone(TINY_BACKBONE, 0, weights="random")
    with pytest.warns(RuntimeWarning, match="unsupported operator"):
        engine = create_engine(model, mean=(0.5,) * 3, std=(0.5,) * 3, runtime="auto", image_size=64,
                               export_dir=tmp_path, parity_images=None)
    assert engine.name == "torch"


@pytest.mark.integration
def test_fast_runtime_parity_with_pretrained_lite0(shared_data: Path, tmp_path: Path) -> None:
    """The real backbone on real photos: the chosen runtime's features agree with torch's (cosine >= 0.9999)."""
    paths = sorted((shared_data / "images" / "hymenoptera" / "val").rglob("*.jpg"))[:16]
    spec = get_backbone_spec("efficientnet_lite0")
    model, _ = create_backbone("efficientnet_lite0", 0)
    reference = FeatureExtractor(model, preprocessing=spec.preprocessing(), architecture=spec.architecture,
                                 runtime="torch", num_workers=0).extract(paths)
    fast = FeatureExtractor(model, preprocessing=spec.preprocessing(), architecture=spec.architecture,
                            store=FeatureStore(tmp_path), runtime="auto", num_workers=0)
    features = fast.extract(paths)
    assert fast.report.runtime == available_runtimes()[0]
    assert row_cosine(features, reference).min() >= PARITY_MIN_COSINE


def test_engines_refuse_float_batches() -> None:
    """A normalised float batch cast to uint8 would give garbage features without any error."""
    from headstart.errors import ParameterError

    model, _ = create_backbone(TINY_BACKBONE, 0, weights="random")
    engine = create_engine(model, mean=(0.5,) * 3, std=(0.5,) * 3, runtime="torch", image_size=64, export_dir=None,
                           parity_images=None)
    assert engine(np.zeros((1, 3, 64, 64), dtype=np.uint8)).shape == (1, model.num_features)
    with pytest.raises(ParameterError, match="uint8 pixels.*float32"):
        engine(np.zeros((1, 3, 64, 64), dtype=np.float32))
