"""``Detector``: object detection with a Faster R-CNN + FPN on a pretrained registry backbone.

>>> Detector(min_size=512)
Detector(backbone='efficientnet_lite0', min_size=512)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from headstart.estimators.dense import DenseEstimator
from headstart.models import DEFAULT_BACKBONE

__all__ = ["Detector"]

MAX_REPORT_IMAGES = 8


class Detector(DenseEstimator):
    """Boxes and classes of objects, from Pascal VOC XML folders or COCO JSON.

    Args:
        backbone: a registry backbone with multi-scale stages (default ``efficientnet_lite0``) or ``timm:<name>``.
        epochs: total epochs (default from the data size); frozen_epochs: first epochs with the backbone frozen
            (default a quarter); encoder_lr_mult: the backbone's learning rate relative to the heads' once unfrozen.
        weights: ``auto`` (pretrained, offline sources), ``random``, or a checkpoint file.
        lr: peak learning rate of FPN + detection heads (default 1e-3, AdamW). batch_size: images per step.
        min_size, max_size: images are resized so the short side is ``min_size`` and the long side at most
            ``max_size`` (inside the model, also at prediction time). The default 384 keeps a CPU epoch of a few
            hundred images at a few minutes; raise it for small objects.
        scale: multi-scale training: each batch's short side is drawn from five sizes spanning
            ``min_size * scale`` (torchvision resizes the boxes with the images); plus random horizontal flips.
        score_threshold: detections below this score are dropped (keep it low for mAP; raise it for display).
        classes: class names to keep (others are dropped and reported); default: all found.
        patience: early stopping on validation mAP@0.5 (None = off). val_fraction: hold-out share when the data
            has no validation list. seed: split, initialisation and augmentation.
        strategy: ``auto`` (``fine_tune``: the frozen-backbone stage, then everything; ``full`` for random weights),
            ``linear_probe`` (the backbone stays frozen), ``fine_tune``, ``gradual_unfreeze``, ``lp_ft`` or ``full``
            (see :mod:`headstart.training.recipes`).
        devices, accelerator, precision: passed to Lightning Fabric (e.g. ``devices=2`` for two processes,
            ``precision="bf16-mixed"`` on a GPU).
    """

    task = "detection"
    monitor = "map_50"
    metric_panels = (("Loss", "train_loss", None), ("mAP@0.5", None, "val_map_50"),
                     ("mAP@[0.5:0.95]", None, "val_map_50_95"))

    def __init__(self, backbone: str = DEFAULT_BACKBONE, *, epochs: int | None = None, frozen_epochs: int | None = None,
                 weights: str = "auto", lr: float | None = None, encoder_lr_mult: float = 0.1, batch_size: int = 4,
                 min_size: int = 384, max_size: int = 640, scale: tuple[float, float] = (0.8, 1.2),
                 score_threshold: float = 0.01, classes: Sequence[str] | None = None, patience: int | None = None,
                 seed: int = 0, val_fraction: float = 0.2, strategy: str = "auto", devices: int = 1,
                 accelerator: str = "auto", precision: str = "32-true", allow_download: bool = True,
                 progress: bool = True) -> None:
        self.backbone, self.epochs, self.frozen_epochs, self.weights = backbone, epochs, frozen_epochs, weights
        self.lr, self.encoder_lr_mult, self.batch_size = lr, encoder_lr_mult, batch_size
        self.min_size, self.max_size, self.scale, self.score_threshold = min_size, max_size, scale, score_threshold
        self.classes, self.patience, self.seed, self.val_fraction = classes, patience, seed, val_fraction
        self.strategy, self.devices, self.accelerator, self.precision = strategy, devices, accelerator, precision
        self.allow_download, self.progress = allow_download, progress

    def _validate(self) -> None:
        self._validate_common()
        for name in ("min_size", "max_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 64 <= value <= 4096:
                raise self._bad(name, "an integer in [64, 4096]")
        if self.max_size < self.min_size:
            raise self._bad("max_size", f"at least min_size ({self.min_size})")
        scale = tuple(self.scale) if isinstance(self.scale, (tuple, list)) else ()
        if len(scale) != 2 or not 0.1 <= scale[0] <= scale[1] <= 10:
            raise self._bad("scale", "two numbers (low, high) with 0.1 <= low <= high <= 10")
        if not isinstance(self.score_threshold, (int, float)) or not 0 <= self.score_threshold < 1:
            raise self._bad("score_threshold", "a number in [0, 1)")

    # -- data -------------------------------------------------------------------------------------------------
    def _load_splits(self, data: Any, val: Any) -> Any:
        from headstart.data.detection import load_detection_dataset
        from headstart.errors import DataError

        splits = load_detection_dataset(data, val=val, val_fraction=self.val_fraction, seed=self.seed,
                                        classes=list(self.classes) if self.classes else None)
        if splits.val.n_boxes == 0:
            raise DataError(f"The validation images of {data} hold no boxes, so mAP (which chooses the best epoch)"
                            f" cannot be computed ({len(splits.val)} images, {splits.split}).",
                            fix="Pass --val with annotated images, list some in ImageSets/Main/val.txt, or raise"
                                " --val-fraction.")
        return splits

    def _train_sizes(self) -> list[int]:
        low, high = self.scale
        return sorted({int(round(self.min_size * f)) for f in np.linspace(low, high, 5)} - {self.min_size})

    def _dense_config(self, splits: Any) -> dict[str, Any]:
        return {"min_size": self.min_size, "max_size": self.max_size, "train_sizes": self._train_sizes(),
                "box_score_thresh": self.score_threshold,
                "source": splits.source}

    def _train_dataset(self, splits: Any, epoch: int) -> Any:
        from headstart.data.detection import DetectionDataset, DetectionTransform

        # flips here; rescaling happens inside the model (train_sizes), which would undo a rescale done here
        dataset = DetectionDataset(splits.train, DetectionTransform(train=True, scale=(1.0, 1.0)), seed=self.seed)
        dataset.set_epoch(epoch)
        return dataset

    @staticmethod
    def _collate(items: list[Any]) -> Any:
        from headstart.data.detection import collate_detection

        return collate_detection(items)

    def _loss(self, net: nn.Module, batch: Any) -> torch.Tensor:
        images, targets = batch
        targets = [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in targets]  # 0 is background
        return sum(net(list(images), targets).values())

    def _default_epochs(self, splits: Any) -> int:
        return 8

    def _default_lr(self) -> float:
        return 1e-3

    def _validation_files(self) -> list[Path]:
        return [s.image for s in self._splits.val]

    # -- prediction -------------------------------------------------------------------------------------------
    def _detect(self, images: list[Image.Image], net: nn.Module | None = None) -> list[dict[str, np.ndarray]]:
        from torchvision.transforms.functional import pil_to_tensor

        net = (net or self.net_).eval()
        device = next(net.parameters()).device
        tensors = [(pil_to_tensor(image).float() / 255.0).to(device) for image in images]
        with torch.inference_mode():
            outputs = [{k: v.cpu() for k, v in o.items()} for o in net(tensors)]
        return [{"boxes": o["boxes"].numpy().astype(np.float32), "scores": o["scores"].numpy().astype(np.float32),
                 "labels": o["labels"].numpy().astype(np.int64) - 1} for o in outputs]

    def predict(self, images: Sequence[str | os.PathLike[str]] | str | os.PathLike[str]) -> list[dict[str, np.ndarray]]:
        """Detections per image: ``boxes`` (N, 4) x1 y1 x2 y2 in the image's pixels, ``scores``, ``labels``
        (indices into ``classes_``), highest score first."""
        from headstart.data.images import load_image

        self._check_fitted("predict")
        return [self._detect([load_image(path)])[0] for path in self._as_paths(images)]

    def predict_to_folder(self, images: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], *,
                          score_threshold: float = 0.5) -> Path:
        """Write ``detections.json`` (boxes per image at or above ``score_threshold``) and an annotated copy of
        each image to ``out``; returns the JSON path."""
        from headstart.data.images import load_image
        from headstart.evaluation.detection import detections_to_json, draw_detections
        from headstart.storage import (
            atomic_replace,
            atomic_write_json,
            temporary_sibling,
        )

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        results: list[dict[str, Any]] = []
        drawn_files: list[Path] = []
        for path in self._as_paths(images):
            image = load_image(path)
            found = self._detect([image])[0]
            keep = found["scores"] >= score_threshold
            boxes, labels, scores = found["boxes"][keep], found["labels"][keep], found["scores"][keep]
            results.append({"image": str(path), "detections": detections_to_json(boxes, labels, scores, self.classes_)})
            drawn = draw_detections(image, boxes=boxes, labels=labels, scores=scores, classes=self.classes_)
            target, n = out / f"{Path(path).stem}_boxes.jpg", 1
            while target in drawn_files:  # two inputs with one name keep both drawings
                target, n = out / f"{Path(path).stem}_{n}_boxes.jpg", n + 1
            temporary = temporary_sibling(target)
            drawn.convert("RGB").save(temporary, format="JPEG", quality=90)
            atomic_replace(temporary, target)
            drawn_files.append(target)
            results[-1]["annotated"] = str(target)
        return atomic_write_json(out / "detections.json", results)

    # -- measurement --------------------------------------------------------------------------------------------
    def _measure(self, samples: Any, *, n_bootstrap: int, net: nn.Module | None = None
                 ) -> tuple[dict[str, Any], list[Any]]:
        from headstart.data.images import load_image
        from headstart.evaluation.detection import detection_metrics

        predictions, targets = [], []
        for sample in self._tracked(list(samples), f"Detecting in {len(samples)} images"):
            predictions.append(self._detect([load_image(sample.image)], net)[0])
            targets.append({"boxes": sample.boxes, "labels": sample.labels})
        metrics = detection_metrics(predictions, targets, self.classes_, n_bootstrap=n_bootstrap, seed=self.seed)
        return metrics, predictions[:MAX_REPORT_IMAGES]

    def _quick_scores(self, metrics: dict[str, Any]) -> dict[str, float]:
        return {"map_50": metrics["map_50"], "map_50_95": metrics["map_50_95"]}

    def _format_metrics(self, metrics: dict[str, Any]) -> str:
        from headstart.evaluation.detection import format_detection_summary

        return format_detection_summary(metrics)

    def _write_report_images(self, samples: Any, predictions: list[Any], folder: Path) -> list[Path]:
        from headstart.data.images import load_image
        from headstart.evaluation.detection import draw_detections
        from headstart.storage import atomic_replace, temporary_sibling

        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for sample, found in zip(samples, predictions):
            keep = found["scores"] >= 0.5
            drawn = draw_detections(load_image(sample.image), boxes=found["boxes"][keep], labels=found["labels"][keep],
                                    scores=found["scores"][keep], classes=self.classes_, truth_boxes=sample.boxes,
                                    truth_labels=sample.labels)
            target = folder / f"{Path(sample.image).stem}_boxes.jpg"
            temporary = temporary_sibling(target)
            drawn.convert("RGB").save(temporary, format="JPEG", quality=90)
            atomic_replace(temporary, target)
            written.append(target)
        return written

    def evaluate(self, data: str | os.PathLike[str], *, out: str | os.PathLike[str] | None = None,
                 n_bootstrap: int = 1000) -> dict[str, Any]:
        """mAP@0.5, mAP@[0.5:0.95] and per-class AP on labelled data (a VOC folder's test list when it has one);
        with ``out``: metrics.json and annotated sample images there."""
        from headstart.data.detection import read_detection_annotations
        from headstart.data.images import SkippedFile

        self._check_fitted("evaluate")
        samples, skipped, dropped = read_detection_annotations(data, classes=self.classes_)
        if dropped:
            # dropped boxes are listed with the skipped files: metrics.json says what was not scored
            skipped = [*skipped, *(SkippedFile(str(d.file), f"box {d.box} ({d.label}) dropped: {d.reason}")
                                   for d in dropped)]
        return self._evaluate_samples(samples, skipped, out=out, n_bootstrap=n_bootstrap)
