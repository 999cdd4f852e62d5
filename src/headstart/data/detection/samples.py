"""What reading detection data gives: images with boxes, the splits, and the account of what was changed.

Separate so that the annotation readers, the loader, the Dataset and the estimator share these types (and the
fixed reasons a box is dropped or adjusted, which the summary counts) without importing one another.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from headstart.data.images import SkippedFile

__all__ = [
    "DetectionSample",
    "DetectionSamples",
    "DroppedBox",
    "Adjustment",
    "DetectionSplits",
    "REASON_COORDINATES",
    "REASON_NO_NAME",
    "REASON_AREA",
    "REASON_OUTSIDE",
    "REASON_CLASS",
    "REASON_CROWD",
    "REASON_CATEGORY",
    "REASON_IMAGE_ID",
    "CLIPPED",
    "SIZE_DIFFERS",
]

# Reasons a box is dropped (short and fixed, so the summary can count them).
REASON_COORDINATES = "coordinates missing or not numbers"
REASON_NO_NAME = "no class name"
REASON_AREA = "zero or negative area (x2 <= x1 or y2 <= y1)"
REASON_OUTSIDE = "entirely outside the image"
REASON_CLASS = "class not in the given classes"
REASON_CROWD = "crowd region (iscrowd=1)"
REASON_CATEGORY = "category id not in the file's categories"
REASON_IMAGE_ID = "image id not in the file's images"
# Reasons an annotation was adjusted (the boxes were kept).
CLIPPED = "clipped to the image"
SIZE_DIFFERS = "annotated size differs from the image"

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Adjustment:
    """A change made to one image's annotation so it could be used; its boxes were kept."""

    reason: str  # CLIPPED or SIZE_DIFFERS
    detail: str  # e.g. "RBC (600.0, 10.0, 660.0, 50.0) -> (600.0, 10.0, 640.0, 50.0)"


@dataclass(eq=False)
class DetectionSample:
    """One image and its boxes.

    ``boxes`` is float32 (N, 4) ``x1, y1, x2, y2`` in pixels of the decoded image (``width`` x ``height``),
    ``labels`` int64 (N,) 0-based class indices; N may be 0. ``adjustments`` lists what was changed while
    reading (clipped boxes, a corrected image size).
    """

    image: Path
    boxes: np.ndarray
    labels: np.ndarray
    width: int
    height: int
    adjustments: tuple[Adjustment, ...] = ()


@dataclass
class DetectionSamples:
    """A list of :class:`DetectionSample`."""

    samples: list[DetectionSample] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> DetectionSample:
        return self.samples[index]

    def __iter__(self) -> Iterator[DetectionSample]:
        return iter(self.samples)

    def subset(self, indices: Iterable[int]) -> DetectionSamples:
        return DetectionSamples([self.samples[i] for i in indices])

    @property
    def n_boxes(self) -> int:
        return int(sum(len(sample.labels) for sample in self.samples))

    def class_counts(self, classes: Sequence[str]) -> dict[str, int]:
        """Boxes per class name (classes without a box count 0)."""
        counts = np.zeros(len(classes), dtype=np.int64)
        for sample in self.samples:
            counts += np.bincount(sample.labels, minlength=len(classes))[: len(classes)]
        return {name: int(count) for name, count in zip(classes, counts)}


@dataclass(frozen=True)
class DroppedBox:
    """A box left out of the dataset, and why. ``file`` is the annotation file (for COCO, with the image)."""

    file: str
    box: tuple[float, ...]  # as written in the annotation, x1, y1, x2, y2; () when unreadable
    label: str
    reason: str


@dataclass
class DetectionSplits:
    """Train / validation / optional test images with boxes, plus everything skipped, dropped or adjusted."""

    train: DetectionSamples
    val: DetectionSamples
    test: DetectionSamples | None
    classes: list[str]
    skipped: list[SkippedFile]
    dropped: list[DroppedBox]
    source: str  # "voc" or "coco"
    root: Path | None = None
    split: str = ""  # how the split was made, in words

    def _splits(self) -> dict[str, DetectionSamples | None]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def summary(self) -> dict[str, Any]:
        """A JSON-ready account of the data: images, boxes (per class) and images without boxes per split;
        every skipped file, dropped box and adjustment, with counts by reason."""

        def describe(samples: DetectionSamples | None) -> dict[str, Any] | None:
            if samples is None:
                return None
            return {
                "images": len(samples),
                "boxes": samples.n_boxes,
                "images_without_boxes": sum(1 for sample in samples if len(sample.labels) == 0),
                "boxes_per_class": samples.class_counts(self.classes),
            }

        adjusted = [
            {"image": str(sample.image), "reason": adjustment.reason, "detail": adjustment.detail}
            for samples in self._splits().values() if samples is not None
            for sample in samples for adjustment in sample.adjustments
        ]
        return {
            "source": self.source,
            "root": None if self.root is None else str(self.root),
            "split": self.split,
            "classes": list(self.classes),
            **{name: describe(samples) for name, samples in self._splits().items()},
            "skipped_count": len(self.skipped),
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
            "dropped_count": len(self.dropped),
            "dropped_reasons": dict(Counter(d.reason for d in self.dropped).most_common()),
            "dropped": [{"file": d.file, "box": list(d.box), "label": d.label, "reason": d.reason}
                        for d in self.dropped],
            "adjusted_count": len(adjusted),
            "adjusted_reasons": dict(Counter(a["reason"] for a in adjusted).most_common()),
            "adjusted": adjusted,
        }
