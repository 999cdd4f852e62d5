"""Frozen-backbone feature extraction: files -> cached pooled features, decoding in parallel with inference.

Only files whose content is not yet in the :class:`~headstart.features.store.FeatureStore` under the same
backbone, weights, preprocessing and view reach the backbone; images are decoded by DataLoader workers while
the chosen runtime (:mod:`headstart.features.runtime`) runs the previous batch.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from torch import nn
from torch.utils.data import DataLoader, Dataset

from headstart.data.images import DEFAULT_MAX_IMAGE_PIXELS
from headstart.data.transforms import DECODING, ImageDataset, build_transform
from headstart.errors import ParameterError
from headstart.features.runtime import FeatureEngine, create_engine
from headstart.features.store import (
    FeatureKey,
    FeatureStore,
    file_digest,
    weights_digest,
)
from headstart.models import Preprocessing, create_backbone, get_backbone_spec
from headstart.models.inference import auto_num_workers, forward_batches

__all__ = ["FeatureExtractor", "ExtractionReport", "extract_features", "frozen_feature_size", "frozen_view_features",
           "view_names"]


def view_names(n_augmented: int = 0, *, mirror: bool = True) -> list[str]:
    """The views cached for training: the centre crop, its mirror, then ``n_augmented`` seeded random views.

    >>> view_names(2)
    ['center', 'mirror', 'augment-0', 'augment-1']
    """
    return ["center", *(["mirror"] if mirror else []), *(f"augment-{k}" for k in range(n_augmented))]


def frozen_feature_size(pretrained_size: int) -> int:
    """Input side for frozen features of a backbone pretrained at ``pretrained_size``.

    A network trained with random-resized crops sees objects larger than a centre crop at the same size
    shows them, so it classifies best when tested at a higher resolution: about 1.29x (224 -> 288) in Touvron
    et al., "Fixing the train-test resolution discrepancy" (FixRes, 2019). Only models pretrained at
    <= 256 px are scaled; larger ones (Inception 299, NASNet 331) are already expensive on a CPU.

    >>> frozen_feature_size(224), frozen_feature_size(299)
    (288, 299)
    """
    if pretrained_size > 256:
        return pretrained_size
    return int(round(pretrained_size * 1.29 / 32) * 32)


def extraction_workers(n_items: int) -> int:
    """Decoding processes for frozen extraction: two on small CPUs, where one cannot keep up with a fast runtime.

    Measured on 2 cores (bench/extraction_workers.py, OpenVINO): 81-83 images/s with one worker, 87-92 with two;
    training keeps :func:`~headstart.models.inference.auto_num_workers`' single worker, its model needs the cores.
    """
    cpus = os.cpu_count() or 1
    if n_items < 32 or cpus > 4:
        return auto_num_workers(n_items)
    return min(2, cpus)


class _SeededViewDataset(Dataset):
    """The k-th random augmentation of each file, the same every time: the RNG is seeded by the file's digest."""

    def __init__(self, images: ImageDataset, digests: Sequence[bytes], view_index: int) -> None:
        self.images, self.digests, self.view_index = images, list(digests), view_index

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        seed = hashlib.blake2b(self.digests[index] + self.view_index.to_bytes(4, "little"), digest_size=8)
        state = torch.random.get_rng_state()
        torch.manual_seed(int.from_bytes(seed.digest(), "little") & (2**63 - 1))
        try:
            return self.images[index]
        finally:
            torch.random.set_rng_state(state)


@dataclass
class ExtractionReport:
    """What an extraction did: files served from the cache, files computed, the runtime, the time taken."""

    runtime: str = "none"
    parity: float | None = None
    cached: int = 0
    computed: int = 0
    seconds: float = 0.0
    views: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "parity_min_cosine": self.parity, "cached": self.cached,
                "computed": self.computed, "seconds": round(self.seconds, 2), "views": self.views}

    def describe(self) -> str:
        images_per_second = self.computed / self.seconds if self.seconds > 0 and self.computed else 0.0
        speed = f" at {images_per_second:.0f} img/s" if self.computed else ""
        return (f"features: {self.cached} from cache, {self.computed} computed with {self.runtime}{speed}"
                f" ({self.seconds:.1f}s)")


class FeatureExtractor:
    """Pooled features of a frozen backbone for image files, cached by content.

    Args:
        model: the frozen timm backbone (its classifier is ignored).
        preprocessing: how images are prepared (size, normalisation, crop).
        architecture: the timm architecture name, part of the cache key.
        store: the feature store (also holds the runtime's exported model); ``None`` caches nothing.
        cache_features: look up and save features in ``store`` (False: use it for the runtime export only,
            e.g. when predicting new images).
        runtime: ``auto``, ``openvino``, ``onnxruntime`` or ``torch`` (see :mod:`headstart.features.runtime`).
        batch_size: images per forward pass.
        num_workers: decoding processes; default: one on small CPUs, more on big ones.
        progress: show a progress bar on ``console``.

    The engine is created (and checked against torch) on the first batch that needs computing.
    """

    def __init__(self, model: nn.Module, *, preprocessing: Preprocessing, architecture: str,
                 store: FeatureStore | None = None, cache_features: bool = True, runtime: str = "auto",
                 batch_size: int = 32, num_workers: int | None = None, progress: bool = False,
                 console: Console | None = None, warn: Callable[[str], None] | None = None,
                 max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> None:
        self.model = model.eval()
        self.preprocessing = preprocessing
        self.architecture = architecture + getattr(model, "feature_tag", "")  # e.g. intermediate-layer features
        self.store = store
        self.cache_features = cache_features
        self.max_pixels = max_pixels
        self.runtime = runtime
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.progress = progress
        self.console = console or Console()
        self.warn = warn
        self.weights = weights_digest(model)
        self.engine: FeatureEngine | None = None
        self.report = ExtractionReport()

    def key(self, view: str) -> FeatureKey:
        # the decoding is part of what the features are: JPEG draft decoding (transforms.draft_size) made them differ
        return FeatureKey(self.architecture, self.weights, {**self.preprocessing.to_dict(), "decode": DECODING}, view)

    def _dataset(self, paths: Sequence[Path], digests: Sequence[bytes], view: str) -> Dataset:
        if view in ("center", "mirror"):
            return ImageDataset(paths, None, build_transform(self.preprocessing, train=False, flip=view == "mirror",
                                                             as_uint8=True), max_pixels=self.max_pixels)
        if view.startswith("augment-") and view[len("augment-"):].isdigit():
            images = ImageDataset(paths, None, build_transform(self.preprocessing, train=True, as_uint8=True),
                                  max_pixels=self.max_pixels)
            return _SeededViewDataset(images, digests, int(view[len("augment-"):]))
        raise ParameterError(f"Unknown feature view {view!r}.", fix="Use 'center', 'mirror' or 'augment-<k>'.")

    def _engine(self, first_batch: np.ndarray) -> FeatureEngine:
        if self.engine is None:
            export_dir = None
            if self.store is not None:
                export_dir = (self.store.root / "runtimes"
                              / f"{self.architecture}-{self.weights}-{self.preprocessing.input_size}-uint8")
            self.engine = create_engine(self.model, mean=self.preprocessing.mean, std=self.preprocessing.std,
                                        runtime=self.runtime, image_size=self.preprocessing.input_size,
                                        export_dir=export_dir if self.runtime != "torch" else None,
                                        parity_images=first_batch[:8], warn=self.warn)
            self.report.runtime, self.report.parity = self.engine.name, self.engine.parity
        return self.engine

    def extract(self, paths: Sequence[str | os.PathLike[str]], *, view: str = "center") -> np.ndarray:
        """Features (n, dim) of ``paths`` in order; only files not in the store are decoded and computed.

        Raises:
            ImageDecodeError: a file that must be computed cannot be decoded (the message names it).
        """
        started = time.perf_counter()
        paths = [Path(p) for p in paths]
        digests = [file_digest(p) for p in paths]
        key = self.key(view)
        caching = self.store is not None and self.cache_features
        found = self.store.lookup(key, digests) if caching else {}
        missing = [i for i, d in enumerate(digests) if d not in found]
        unique_missing: dict[bytes, int] = {}  # files with identical bytes are computed once
        for index in missing:
            unique_missing.setdefault(digests[index], index)
        computed: dict[bytes, np.ndarray] = {}
        if unique_missing:
            order = list(unique_missing.values())
            dataset = self._dataset([paths[i] for i in order], [digests[i] for i in order], view)
            rows = self._run(dataset, f"features ({view})")
            computed = {digests[i]: row for i, row in zip(order, rows)}
            if caching:
                self.store.add(key, list(computed), np.stack(list(computed.values())))
        table = {**found, **computed}
        self.report.cached += len(paths) - len(missing)
        self.report.computed += len(unique_missing)
        self.report.seconds += time.perf_counter() - started
        if view not in self.report.views:
            self.report.views.append(view)
        if not paths:
            return np.zeros((0, self.model.num_features), dtype=np.float32)
        return np.stack([table[d] for d in digests]).astype(np.float32, copy=False)

    def _run(self, dataset: Dataset, description: str) -> np.ndarray:
        workers = extraction_workers(len(dataset)) if self.num_workers is None else self.num_workers
        loader = DataLoader(dataset, batch_size=self.batch_size, shuffle=False, num_workers=workers,
                            prefetch_factor=4 if workers else None)
        outputs: list[np.ndarray] = []
        images_dataset = dataset.images if isinstance(dataset, _SeededViewDataset) else dataset
        bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                       console=self.console, transient=True, disable=not self.progress)
        with bar:
            task = bar.add_task(description, total=len(dataset))
            for images, labels in loader:
                images_dataset.raise_for_failures(labels)
                batch = images.numpy()
                outputs.append(self._engine(batch)(batch))
                bar.update(task, advance=len(batch))
        return np.concatenate(outputs)


def extract_features(
    backbone: str,
    paths: Sequence[str | os.PathLike[str]],
    *,
    weights: str = "auto",
    image_size: int | None = None,
    view: str = "center",
    store: FeatureStore | None = None,
    runtime: str = "auto",
    batch_size: int = 32,
    num_workers: int | None = None,
) -> np.ndarray:
    """Pooled features of a frozen pretrained backbone for each image, shape (n, dim).

    Args:
        backbone: a registered backbone name or ``timm:<name>``.
        paths: image files.
        weights: ``auto``, ``random`` or a checkpoint file (see :func:`headstart.models.create_backbone`).
        image_size: input side; default: the backbone's pretrained size.
        view: ``center`` (eval transform), ``mirror``, or ``augment-<k>``.
        store: cache features here (``None``: no caching).
        runtime: inference runtime, see :mod:`headstart.features.runtime`.

    Raises:
        WeightsNotFoundError: no weights for the backbone; ImageDecodeError: an unreadable file.
    """
    spec = get_backbone_spec(backbone)
    preprocessing = spec.preprocessing()
    if image_size is not None:
        preprocessing = Preprocessing.from_dict({**preprocessing.to_dict(), "input_size": image_size})
    model, _ = create_backbone(backbone, 0, weights=weights)
    extractor = FeatureExtractor(model, preprocessing=preprocessing, architecture=spec.architecture, store=store,
                                 runtime=runtime, batch_size=batch_size, num_workers=num_workers)
    return extractor.extract(paths, view=view)


def frozen_view_features(net: nn.Module, views: Sequence[ImageDataset], val_set: ImageDataset, *,
                         extractor: FeatureExtractor | None, view_names: Sequence[str], batch_size: int,
                         num_workers: int | None, device: torch.device, console: Console,
                         progress: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Frozen-backbone features of every training view and of the validation images, computed once.

    With an ``extractor`` (one CPU process) they come from the feature store and the fastest runtime, so a
    later run on the same images computes nothing, and ``view_names`` are its views; otherwise the network's
    ``pooled_features`` runs here over ``views`` on ``device``.

    Returns:
        Training features (views stacked view-major), their labels, validation features, and the number of views.
    """
    started = time.perf_counter()
    if extractor is not None:
        train = [torch.from_numpy(extractor.extract(views[0].paths, view=name)) for name in view_names]
        val = torch.from_numpy(extractor.extract(val_set.paths, view="center"))
        labels = torch.as_tensor(list(views[0].labels) * len(view_names), dtype=torch.long)
        console.print(f"Frozen {extractor.report.describe()}; views {', '.join(view_names)}.", highlight=False)
        return torch.cat(train), labels, val, len(view_names)
    total = sum(len(v) for v in views) + len(val_set)
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=console, transient=True, disable=not progress)
    channels_last = torch.device(device).type == "cpu"
    with bar:
        task = bar.add_task("frozen backbone: extracting features", total=total)
        net.eval()
        extracted = [
            forward_batches(net.pooled_features, dataset, batch_size=batch_size * 2, num_workers=num_workers,
                            device=device, channels_last=channels_last,
                            on_batch=lambda n: bar.update(task, advance=n))[0]
            for dataset in (*views, val_set)
        ]
    labels = torch.as_tensor([label for view in views for label in view.labels], dtype=torch.long)
    console.print(f"Cached frozen features of {total} images ({len(views)} views of the training images) in"
                  f" {time.perf_counter() - started:.1f}s; frozen epochs now train the head only.", highlight=False)
    return torch.cat(extracted[:-1]), labels, extracted[-1], len(views)
