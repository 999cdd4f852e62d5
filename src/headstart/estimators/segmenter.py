"""``Segmenter``: semantic segmentation with a U-Net or FPN decoder on a pretrained registry backbone.

>>> Segmenter(decoder="fpn")
Segmenter(backbone='efficientnet_lite0', decoder='fpn')
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from headstart.data.images import IMAGE_FORMATS
from headstart.errors import check_choice
from headstart.estimators.dense import DenseEstimator
from headstart.models import DEFAULT_BACKBONE
from headstart.models.dense import DECODERS

__all__ = ["Segmenter", "dice_loss"]

MAX_REPORT_IMAGES = 8


def dice_loss(logits: torch.Tensor, masks: torch.Tensor, *, ignore_index: int) -> torch.Tensor:
    """Soft Dice loss averaged over classes (Milletari et al. 2016), ignoring ``ignore_index`` pixels.

    >>> logits = torch.tensor([[[[9.0, -9.0]], [[-9.0, 9.0]]]])  # 1 image, 2 classes, 1x2 pixels
    >>> round(float(dice_loss(logits, torch.tensor([[[0, 1]]]), ignore_index=255)), 4)
    0.0
    """
    valid = (masks != ignore_index).unsqueeze(1)
    probabilities = torch.softmax(logits, dim=1) * valid
    one_hot = F.one_hot(masks.clamp(0, logits.shape[1] - 1), logits.shape[1]).permute(0, 3, 1, 2) * valid
    dims = (0, 2, 3)
    intersection = (probabilities * one_hot).sum(dims)
    total = probabilities.sum(dims) + one_hot.sum(dims)
    return 1.0 - ((2 * intersection + 1.0) / (total + 1.0)).mean()


class Segmenter(DenseEstimator):
    """Per-pixel classification from pairs of images and label masks.

    Args:
        backbone: a registry backbone with multi-scale stages (default ``efficientnet_lite0``) or ``timm:<name>``.
        decoder: ``unet`` (skip connections at every stage) or ``fpn`` (feature pyramid, lighter).
        epochs: total epochs (default from the data size); frozen_epochs: first epochs with the encoder frozen
            (default a quarter of them); encoder_lr_mult: the encoder's learning rate relative to the decoder's
            once unfrozen.
        weights: ``auto`` (pretrained, offline sources), ``random``, or a checkpoint file.
        lr: peak learning rate of the decoder (default 1e-3). batch_size: crops per step.
        crop_size: side of the random training crops (images smaller than it are padded).
        crops_per_image: crops drawn per training image per epoch (default: the first training image's area /
            crop area).
        dice_weight: loss = cross entropy + dice_weight * soft Dice.
        dihedral: also flip vertically and turn by 90 degrees while training (for images without an "up":
            microscopy, satellite, pathology); off = random rescale, crop and left-right flips only.
        classes, ignore_index: class names in index order, and the mask value that is ignored.
        mask_format: ``auto``, ``index``, ``binary`` or ``palette`` (see
            :func:`headstart.data.segmentation.load_segmentation_dataset`; an automatic palette orders classes by
            the colours' sorted (r, g, b) values, so name classes in that order).
        tta: predict (and evaluate) as the mean of the image and its horizontal, vertical and double flips
            (4x the prediction time; an exported model predicts without it).
        patience: early stopping on validation mIoU (None = off). val_fraction: hold-out share without
            validation data. seed: split, initialisation and augmentation.
        strategy: ``auto`` (``fine_tune``: the frozen-backbone stage, then everything; ``full`` for random weights),
            ``linear_probe`` (the backbone stays frozen), ``fine_tune``, ``gradual_unfreeze``, ``lp_ft`` or ``full``
            (see :mod:`headstart.training.recipes`).
        devices, accelerator, precision: passed to Lightning Fabric (e.g. ``devices=2`` for two processes,
            ``precision="bf16-mixed"`` on a GPU).
    """

    task = "segmentation"
    monitor = "miou"
    metric_panels = (("Loss", "train_loss", None), ("mIoU", None, "val_miou"), ("Dice", None, "val_dice"))

    def __init__(self, backbone: str = DEFAULT_BACKBONE, *, decoder: str = "unet", epochs: int | None = None,
                 frozen_epochs: int | None = None, weights: str = "auto", lr: float | None = None,
                 encoder_lr_mult: float = 0.1, batch_size: int = 4, crop_size: int = 256,
                 crops_per_image: int | None = None, dice_weight: float = 1.0, dihedral: bool = False,
                 classes: Sequence[str] | None = None, mask_format: str = "auto", ignore_index: int = 255,
                 tta: bool = False, patience: int | None = None, seed: int = 0, val_fraction: float = 0.2,
                 strategy: str = "auto", devices: int = 1, accelerator: str = "auto", precision: str = "32-true",
                 allow_download: bool = True, progress: bool = True) -> None:
        self.backbone, self.decoder, self.epochs, self.frozen_epochs = backbone, decoder, epochs, frozen_epochs
        self.weights, self.lr, self.encoder_lr_mult, self.batch_size = weights, lr, encoder_lr_mult, batch_size
        self.crop_size, self.crops_per_image, self.dice_weight = crop_size, crops_per_image, dice_weight
        self.dihedral, self.mask_format = dihedral, mask_format
        self.classes, self.ignore_index, self.tta, self.patience, self.seed = classes, ignore_index, tta, patience, seed
        self.val_fraction, self.allow_download, self.progress = val_fraction, allow_download, progress
        self.strategy, self.devices, self.accelerator, self.precision = strategy, devices, accelerator, precision

    def _validate(self) -> None:
        self._validate_common()
        check_choice("Segmenter", "decoder", self.decoder, DECODERS)
        check_choice("Segmenter", "mask_format", self.mask_format, ("auto", "index", "binary", "palette"))
        if not isinstance(self.crop_size, int) or not 32 <= self.crop_size <= 4096 or self.crop_size % 32:
            raise self._bad("crop_size", "a multiple of 32 in [32, 4096]")
        if self.crops_per_image is not None and (not isinstance(self.crops_per_image, int) or self.crops_per_image < 1):
            raise self._bad("crops_per_image", "a positive integer or None")
        if not isinstance(self.dice_weight, (int, float)) or self.dice_weight < 0:
            raise self._bad("dice_weight", "a number >= 0")
        if not isinstance(self.ignore_index, int) or not 0 <= self.ignore_index <= 65535:
            raise self._bad("ignore_index", "an integer in [0, 65535]")

    # -- data ---------------------------------------------------------------------------------------------------
    def _load_splits(self, data: Any, val: Any) -> Any:
        from headstart.data.segmentation import load_segmentation_dataset

        return load_segmentation_dataset(data, val=val, val_fraction=self.val_fraction, seed=self.seed,
                                         classes=list(self.classes) if self.classes else None,
                                         mask_format=self.mask_format, ignore_index=self.ignore_index)

    def _dense_config(self, splits: Any) -> dict[str, Any]:
        return {"decoder": self.decoder, "mask_format": splits.mask_format.to_dict(), "ignore_index": self.ignore_index}

    def _mask_format(self) -> Any:
        from headstart.data.segmentation import MaskFormat

        return MaskFormat.from_dict(self.config_["dense"]["mask_format"])

    def _transform(self, *, train: bool) -> Any:
        from headstart.data.segmentation import JointTransform

        prep = self.config_["preprocessing"] if hasattr(self, "config_") else None
        mean, std = (prep["mean"], prep["std"]) if prep else self._spec_norm()
        return JointTransform(train=train, crop_size=self.crop_size if train else None, mean=mean, std=std,
                              ignore_index=self.ignore_index, vflip=train and self.dihedral,
                              rotate90=train and self.dihedral)

    def _spec_norm(self) -> tuple[Any, Any]:
        from headstart.models.registry import get_backbone_spec

        prep = get_backbone_spec(self.backbone).preprocessing()
        return prep.mean, prep.std

    def _crops_per_image(self, splits: Any) -> int:
        if self.crops_per_image is not None:
            return self.crops_per_image
        with Image.open(splits.train.images[0], formats=IMAGE_FORMATS) as first:
            width, height = first.size
        return max(1, math.ceil(width * height / self.crop_size ** 2))

    def _train_dataset(self, splits: Any, epoch: int) -> Any:
        from headstart.data.segmentation import SegmentationDataset

        repeats = self._crops_per_image(splits)
        # each image appears `repeats` times; every copy draws its own crop (rng from seed, epoch and position)
        samples = splits.train.subset(np.tile(np.arange(len(splits.train)), repeats))
        dataset = SegmentationDataset(samples, splits.mask_format, len(splits.classes), self._transform(train=True),
                                      seed=self.seed)
        dataset.set_epoch(epoch)
        return dataset

    def _loss(self, net: nn.Module, batch: Any) -> torch.Tensor:
        images, masks = batch
        logits = net(images)
        loss = F.cross_entropy(logits, masks, ignore_index=self.ignore_index)
        if self.dice_weight:
            loss = loss + self.dice_weight * dice_loss(logits, masks, ignore_index=self.ignore_index)
        return loss

    def _default_epochs(self, splits: Any) -> int:
        return 30 if len(splits.train) < 100 else 15

    def _default_lr(self) -> float:
        return 1e-3

    def _validation_files(self) -> list[Path]:
        return list(self._splits.val.images)

    # -- prediction -----------------------------------------------------------------------------------------------
    def _probabilities(self, image: Image.Image, net: nn.Module | None = None) -> np.ndarray:
        net = (net or self.net_).eval()
        tensor, _ = self._transform(train=False)(image, None, np.random.default_rng(0))
        batch = tensor.unsqueeze(0).to(next(net.parameters()).device)
        flips = [(), (3,), (2,), (2, 3)] if self.tta else [()]
        with torch.inference_mode():
            total = torch.zeros((), device=batch.device)
            for dims in flips:  # predict on the flipped image, flip the prediction back
                probabilities = torch.softmax(net(batch.flip(dims) if dims else batch).float(), dim=1)
                total = total + (probabilities.flip(dims) if dims else probabilities)
            return (total / len(flips))[0].cpu().numpy()

    def predict_proba(self, images: Sequence[str | os.PathLike[str]] | str | os.PathLike[str]) -> list[np.ndarray]:
        """Per-pixel class probabilities, one (classes, height, width) array per image (its own size)."""
        from headstart.data.images import load_image

        self._check_fitted("predict_proba")
        return [self._probabilities(load_image(path)) for path in self._as_paths(images)]

    def predict(self, images: Sequence[str | os.PathLike[str]] | str | os.PathLike[str]) -> list[np.ndarray]:
        """Class-index masks (height, width), one per image."""
        return [p.argmax(0).astype(np.int64) for p in self.predict_proba(images)]

    def predict_masks(self, images: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]) -> list[Path]:
        """Write ``<stem>.png`` label-index masks (palette PNG: viewable, pixel values are class indices)."""
        from headstart.evaluation.segmentation import save_mask_png

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        for path in self._as_paths(images):  # one image at a time: a large folder never sits in memory
            mask = self.predict([path])[0]
            target, n = out / f"{Path(path).stem}.png", 1
            while target in written:  # two inputs with one name (a/0.png, b/0.png) keep both masks
                target, n = out / f"{Path(path).stem}_{n}.png", n + 1
            written.append(save_mask_png(mask, target, classes=self.classes_))
        return written

    # -- measurement ------------------------------------------------------------------------------------------
    def _measure(self, samples: Any, *, n_bootstrap: int, net: nn.Module | None = None
                 ) -> tuple[dict[str, Any], list[Any]]:
        from headstart.data.images import load_image
        from headstart.data.segmentation import read_mask
        from headstart.evaluation.segmentation import (
            confusion_for_image,
            segmentation_metrics,
        )

        mask_format, k = self._mask_format(), len(self.classes_)
        confusions, predictions = [], []
        pairs = [(i, m) for i, m in zip(samples.images, samples.masks) if m is not None]
        for image_path, mask_path in self._tracked(pairs, f"Scoring {len(pairs)} images"):
            predicted = self._probabilities(load_image(image_path), net).argmax(0)
            truth = read_mask(mask_path, mask_format, num_classes=k)
            confusions.append(confusion_for_image(predicted, truth, num_classes=k, ignore_index=self.ignore_index))
            if len(predictions) < MAX_REPORT_IMAGES:
                predictions.append(predicted)
        return segmentation_metrics(confusions, self.classes_, n_bootstrap=n_bootstrap, seed=self.seed), predictions

    def _quick_scores(self, metrics: dict[str, Any]) -> dict[str, float]:
        return {"miou": metrics["miou"], "dice": metrics["dice"], "pixel_accuracy": metrics["pixel_accuracy"]}

    def _format_metrics(self, metrics: dict[str, Any]) -> str:
        from headstart.evaluation.segmentation import format_segmentation_summary

        return format_segmentation_summary(metrics)

    def _write_report_images(self, samples: Any, predictions: list[Any], folder: Path) -> list[Path]:
        from headstart.data.images import load_image
        from headstart.data.segmentation import read_mask
        from headstart.evaluation.segmentation import render_overlay
        from headstart.storage import atomic_replace, temporary_sibling

        folder.mkdir(parents=True, exist_ok=True)
        written = []
        labelled = [(i, m) for i, m in zip(samples.images, samples.masks) if m is not None]
        for (image_path, mask_path), predicted in zip(labelled, predictions):
            truth = read_mask(mask_path, self._mask_format(), num_classes=len(self.classes_))
            overlay = render_overlay(load_image(image_path), truth, predicted, num_classes=len(self.classes_))
            target = folder / f"{Path(image_path).stem}_overlay.png"
            temporary = temporary_sibling(target)
            overlay.save(temporary, format="PNG")
            atomic_replace(temporary, target)
            written.append(target)
        return written

    def evaluate(self, data: str | os.PathLike[str], *, out: str | os.PathLike[str] | None = None,
                 n_bootstrap: int = 1000) -> dict[str, Any]:
        """Metrics (per-class IoU and Dice, mIoU, pixel accuracy, CIs over images) on labelled pairs in ``data``;
        with ``out``: metrics.json and overlay images there."""
        from headstart.data.segmentation import read_segmentation_pairs

        self._check_fitted("evaluate")
        samples, skipped = read_segmentation_pairs(data, mask_format=self._mask_format(), classes=self.classes_)
        return self._evaluate_samples(samples, skipped, out=out, n_bootstrap=n_bootstrap)
