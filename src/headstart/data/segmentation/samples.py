"""What loading a segmentation dataset gives: image/mask file pairs per split, and the splits with their classes.

Separate so that the Dataset and the estimator can name these types without importing the loader.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from headstart.data.images import SkippedFile
from headstart.data.segmentation.masks import MaskFormat

__all__ = ["SegmentationSamples", "SegmentationSplits"]


@dataclass
class SegmentationSamples:
    """Image files and their mask files: ``masks[i]`` belongs to ``images[i]`` (None: unlabelled)."""

    images: list[Path]
    masks: list[Path | None]

    def __len__(self) -> int:
        return len(self.images)

    @property
    def labelled_count(self) -> int:
        """How many images have a mask."""
        return sum(mask is not None for mask in self.masks)

    def subset(self, indices: Iterable[int]) -> SegmentationSamples:
        chosen = list(indices)
        return SegmentationSamples([self.images[i] for i in chosen], [self.masks[i] for i in chosen])


@dataclass
class SegmentationSplits:
    """Train / validation / optional test pairs, the classes, how masks are read, and every skipped file."""

    train: SegmentationSamples
    val: SegmentationSamples
    test: SegmentationSamples | None
    classes: list[str]
    mask_format: MaskFormat
    skipped: list[SkippedFile] = field(default_factory=list)
    split: str = "given"

    def summary(self) -> dict[str, object]:
        """Counts per split, classes, mask format and the skipped files, JSON-ready."""
        return {
            "classes": list(self.classes),
            "mask_format": self.mask_format.to_dict(),
            "split": self.split,
            "train": len(self.train),
            "val": len(self.val),
            "test": None if self.test is None else len(self.test),
            "test_labelled": None if self.test is None else self.test.labelled_count,
            "skipped_count": len(self.skipped),
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
        }
