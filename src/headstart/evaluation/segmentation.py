"""Semantic segmentation metrics with bootstrap 95% confidence intervals, and pictures of masks.

Metrics come from one confusion matrix per image (rows = truth, columns = prediction, ignored pixels left
out). Figures are pooled over images (the matrices are summed) and the intervals come from resampling the
images with replacement (percentile bootstrap): pixels of one image are not independent, images are.
"""

from __future__ import annotations

import colorsys
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from headstart.errors import DataError, ParameterError
from headstart.storage import atomic_replace, temporary_sibling

__all__ = [
    "colorize_mask",
    "confusion_for_image",
    "format_segmentation_summary",
    "render_overlay",
    "save_mask_png",
    "segmentation_metrics",
    "segmentation_palette",
]

# Sasha Trubetskoy's 20 distinct colours; none is black, which marks ignored pixels.
_BASE_COLOURS = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
    (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255), (170, 110, 40),
    (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
)


def confusion_for_image(pred: np.ndarray, true: np.ndarray, *, num_classes: int, ignore_index: int = 255
                        ) -> np.ndarray:
    """The (K, K) confusion matrix of one image: ``[t, p]`` counts pixels of true class t predicted as p.

    Pixels whose truth is ``ignore_index`` are left out.

    Raises:
        ParameterError: the masks differ in shape, or hold values that are not classes.

    >>> confusion_for_image(np.array([[0, 1], [1, 1]]), np.array([[0, 0], [1, 255]]), num_classes=2).tolist()
    [[1, 1], [0, 1]]
    """
    pred, true = np.asarray(pred), np.asarray(true)
    if pred.shape != true.shape:
        raise ParameterError(f"Prediction and truth masks must have the same shape. Got {pred.shape} and {true.shape}.",
                             fix="Predict at the mask's size (resize the logits before the argmax).")
    keep = true != ignore_index
    true_kept, pred_kept = true[keep].astype(np.int64), pred[keep].astype(np.int64)
    for name, values in (("truth", true_kept), ("prediction", pred_kept)):
        bad = values[(values < 0) | (values >= num_classes)]
        if len(bad):
            raise ParameterError(f"The {name} mask holds values {sorted(set(bad.tolist()))[:6]} that are not class "
                                 f"indices; expected 0..{num_classes - 1} (or {ignore_index} in the truth, ignored).",
                                 fix="Pass num_classes matching the model and the masks' ignore_index.")
    counts = np.bincount(true_kept * num_classes + pred_kept, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def _pooled_figures(true_positive: np.ndarray, true_pixels: np.ndarray, predicted_pixels: np.ndarray
                    ) -> dict[str, np.ndarray]:
    """IoU, Dice (NaN for classes in neither truth nor prediction), their means and pixel accuracy.

    Works on (..., K) arrays so one call scores every bootstrap resample.
    """
    false_positive = predicted_pixels - true_positive
    false_negative = true_pixels - true_positive
    union = true_positive + false_positive + false_negative
    present = union > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(present, true_positive / union, np.nan)
        dice = np.where(present, 2 * true_positive / (2 * true_positive + false_positive + false_negative), np.nan)
        total = true_pixels.sum(axis=-1)
        accuracy = np.where(total > 0, true_positive.sum(axis=-1) / total, np.nan)
        count = present.sum(axis=-1)
        miou = np.where(count > 0, np.nansum(iou, axis=-1) / count, np.nan)
        mean_dice = np.where(count > 0, np.nansum(dice, axis=-1) / count, np.nan)
    return {"iou": iou, "dice": dice, "miou": miou, "dice_mean": mean_dice, "pixel_accuracy": accuracy}


def _interval(samples: np.ndarray) -> list[float] | None:
    finite = samples[np.isfinite(samples)]
    if len(finite) == 0:
        return None
    low, high = np.percentile(finite, [2.5, 97.5])
    return [float(low), float(high)]


def _number(value: float) -> float | None:
    return None if not np.isfinite(value) else float(value)


def segmentation_metrics(confusions: Sequence[np.ndarray], classes: Sequence[str], *, n_bootstrap: int = 1000,
                         seed: int = 0) -> dict[str, Any]:
    """Mean IoU, Dice and pixel accuracy pooled over images, per-class IoU / Dice, with bootstrap CIs.

    Per class: IoU = TP / (TP + FP + FN), Dice = 2TP / (2TP + FP + FN), from the summed confusion matrices.
    ``miou`` and ``dice`` average the classes present in the truth or the prediction (a class in neither has no
    IoU: ``None``). The 95% intervals resample images with replacement and recompute the pooled figures.

    Args:
        confusions: one (K, K) matrix per image from :func:`confusion_for_image`.
        classes: the K class names.
        n_bootstrap: bootstrap resamples (0: no intervals, every ``*_ci`` is None).
        seed: seed of the resampling.

    Returns:
        A JSON-ready dict with keys ``miou``, ``miou_ci``, ``dice``, ``dice_ci``, ``pixel_accuracy``,
        ``pixel_accuracy_ci``, ``per_class`` (``class``, ``iou``, ``iou_ci``, ``dice``, ``dice_ci``,
        ``true_pixels``, ``predicted_pixels``), ``confusion_matrix``, ``n_images``, ``n_pixels``.

    Raises:
        ParameterError: no matrices, or matrices whose shape is not (K, K).
        DataError: no pixel was scored (every truth pixel is ignored).

    >>> m = segmentation_metrics([np.array([[3, 1], [0, 4]])], ["a", "b"], n_bootstrap=0)
    >>> m["miou"], m["per_class"][0]["iou"], m["pixel_accuracy"]
    (0.775, 0.75, 0.875)
    """
    k = len(classes)
    if len(confusions) == 0:
        raise ParameterError("segmentation_metrics needs at least one confusion matrix. Got none.",
                             fix="Evaluate on one or more labelled images.")
    stack = np.stack([np.asarray(c, dtype=np.int64) for c in confusions]) if k else np.zeros((0, 0, 0))
    if stack.shape[1:] != (k, k):
        raise ParameterError(f"Each confusion matrix must be {k}x{k} for the {k} classes. Got shape {stack.shape[1:]}.",
                             fix="Pass the class names of the model that made the predictions.")
    diagonal = np.diagonal(stack, axis1=1, axis2=2).astype(np.float64)  # (n, K)
    true_rows = stack.sum(axis=2).astype(np.float64)
    predicted_columns = stack.sum(axis=1).astype(np.float64)
    n_pixels = int(stack.sum())
    if n_pixels == 0:
        raise DataError(f"No pixel was scored in the {len(stack)} images: every truth pixel is ignored.",
                        fix="Check the masks' ignore_index, or evaluate on labelled images.")
    point = _pooled_figures(diagonal.sum(0), true_rows.sum(0), predicted_columns.sum(0))
    boot: dict[str, np.ndarray] = {}
    if n_bootstrap > 0:
        rng = np.random.default_rng(seed)
        draws = rng.integers(0, len(stack), size=(n_bootstrap, len(stack)))
        # Each resample as image weights (how often each image was drawn): pooled sums are then matrix products.
        offsets = (np.arange(n_bootstrap)[:, None] * len(stack) + draws).ravel()
        weights = np.bincount(offsets, minlength=n_bootstrap * len(stack)).reshape(n_bootstrap, len(stack))
        weights = weights.astype(np.float64)
        boot = _pooled_figures(weights @ diagonal, weights @ true_rows, weights @ predicted_columns)
    per_class = []
    for index, name in enumerate(classes):
        per_class.append({
            "class": name,
            "iou": _number(point["iou"][index]),
            "iou_ci": _interval(boot["iou"][:, index]) if n_bootstrap > 0 else None,
            "dice": _number(point["dice"][index]),
            "dice_ci": _interval(boot["dice"][:, index]) if n_bootstrap > 0 else None,
            "true_pixels": int(true_rows[:, index].sum()),
            "predicted_pixels": int(predicted_columns[:, index].sum()),
        })
    return {
        "miou": _number(point["miou"]),
        "miou_ci": _interval(boot["miou"]) if n_bootstrap > 0 else None,
        "dice": _number(point["dice_mean"]),
        "dice_ci": _interval(boot["dice_mean"]) if n_bootstrap > 0 else None,
        "pixel_accuracy": _number(point["pixel_accuracy"]),
        "pixel_accuracy_ci": _interval(boot["pixel_accuracy"]) if n_bootstrap > 0 else None,
        "per_class": per_class,
        "confusion_matrix": stack.sum(axis=0).tolist(),
        "n_images": len(stack),
        "n_pixels": n_pixels,
    }


def _with_interval(value: float | None, interval: list[float] | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" + (f" ({interval[0]:.3f}-{interval[1]:.3f})" if interval else "")


def format_segmentation_summary(metrics: dict[str, Any]) -> str:
    """A few readable lines: the pooled figures with their 95% intervals, then one row per class.

    >>> m = segmentation_metrics([np.array([[3, 1], [0, 4]])], ["a", "b"], n_bootstrap=0)
    >>> print(format_segmentation_summary(m).splitlines()[0])
    mIoU 0.775 | Dice 0.873 | pixel accuracy 0.875
    """
    lines = [
        (f"mIoU {_with_interval(metrics['miou'], metrics.get('miou_ci'))} | "
        f"Dice {_with_interval(metrics['dice'], metrics.get('dice_ci'))} | "
        f"pixel accuracy {_with_interval(metrics['pixel_accuracy'], metrics.get('pixel_accuracy_ci'))}"),
        f"{metrics['n_images']} images, {metrics['n_pixels']:,} pixels scored"
        + (" (95% bootstrap intervals in brackets)" if metrics.get("miou_ci") else ""),
    ]
    rows = metrics["per_class"]
    width = max([len("class"), *(len(str(row["class"])) for row in rows)])
    lines.append(f"{'class':<{width}}  {'IoU':>5}  {'Dice':>5}  {'true px':>12}  {'predicted px':>12}")
    for row in rows:
        iou = "-" if row["iou"] is None else f"{row['iou']:.3f}"
        dice = "-" if row["dice"] is None else f"{row['dice']:.3f}"
        absent = "  (absent: not in mIoU)" if row["iou"] is None else ""
        lines.append(f"{row['class']:<{width}}  {iou:>5}  {dice:>5}  {row['true_pixels']:>12,}  "
                     f"{row['predicted_pixels']:>12,}{absent}")
    return "\n".join(lines)


def segmentation_palette(num_classes: int) -> list[tuple[int, int, int]]:
    """A fixed colour per class, distinct and never black (black marks ignored pixels).

    >>> segmentation_palette(2)
    [(230, 25, 75), (60, 180, 75)]
    """
    colours = list(_BASE_COLOURS[:num_classes])
    for index in range(len(colours), num_classes):
        hue = (index * 0.618033988749895) % 1.0  # golden-ratio steps spread hues evenly
        value = 0.95 if index % 2 else 0.7
        red, green, blue = colorsys.hsv_to_rgb(hue, 0.75, value)
        colours.append((round(red * 255), round(green * 255), round(blue * 255)))
    return colours


def colorize_mask(mask: np.ndarray, num_classes: int) -> Image.Image:
    """An RGB picture of class indices: class i in colour i of :func:`segmentation_palette`; the ignore index
    (and any value that is not a class) black.

    >>> np.asarray(colorize_mask(np.array([[0, 255]]), 2)).tolist()
    [[[230, 25, 75], [0, 0, 0]]]
    """
    labels = np.asarray(mask)
    if labels.ndim != 2:
        raise ParameterError(f"colorize_mask needs a 2-D (H, W) mask of class indices. Got shape {labels.shape}.",
                             fix="Pass one image's mask, not a batch.")
    table = np.zeros((num_classes + 1, 3), dtype=np.uint8)
    table[:num_classes] = np.asarray(segmentation_palette(num_classes), dtype=np.uint8).reshape(-1, 3)
    valid = (labels >= 0) & (labels < num_classes)
    return Image.fromarray(table[np.where(valid, labels, num_classes).astype(np.int64)], mode="RGB")


def _overlay(pixels: np.ndarray, mask: np.ndarray, num_classes: int, alpha: float) -> np.ndarray:
    colours = np.asarray(colorize_mask(mask, num_classes), dtype=np.float64)
    valid = ((mask >= 0) & (mask < num_classes))[..., None]
    blended = pixels * (1 - alpha) + colours * alpha
    return np.where(valid, blended, pixels).round().astype(np.uint8)  # ignored pixels show the image alone


def _label(panel: Image.Image, text: str) -> None:
    draw = ImageDraw.Draw(panel)
    font = ImageFont.load_default()
    left, top, right, bottom = draw.textbbox((4, 3), text, font=font)
    draw.rectangle((left - 3, top - 2, right + 3, bottom + 2), fill=(0, 0, 0))
    draw.text((4, 3), text, fill=(255, 255, 255), font=font)


def render_overlay(image: Image.Image, true_mask: np.ndarray | None, pred_mask: np.ndarray, *, num_classes: int,
                   alpha: float = 0.45) -> Image.Image:
    """Side-by-side panels, each as wide as the image: image | truth over image | prediction over image.

    The truth panel is left out when ``true_mask`` is None. Panels carry the labels "image", "truth" and
    "prediction"; ignored pixels show the image without colour.

    Raises:
        ParameterError: a mask whose size differs from the image's, or ``alpha`` outside [0, 1].

    >>> render_overlay(Image.new("RGB", (40, 30)), None, np.zeros((30, 40), dtype=int), num_classes=2).size
    (80, 30)
    """
    if not 0.0 <= alpha <= 1.0:
        raise ParameterError(f"The 'alpha' parameter of render_overlay must be between 0 and 1. Got {alpha!r}.",
                             fix="Pass alpha=0.45, for example.")
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    pixels = np.asarray(rgb, dtype=np.float64)
    panels = [("image", np.asarray(rgb))]
    for name, mask in (("truth", true_mask), ("prediction", pred_mask)):
        if mask is None:
            continue
        labels = np.asarray(mask)
        if labels.shape != pixels.shape[:2]:
            raise ParameterError(f"The {name} mask must be the image's size ({rgb.width}x{rgb.height}). Got "
                                 f"{labels.shape[1] if labels.ndim > 1 else '?'}x{labels.shape[0]}.",
                                 fix="Resize the prediction to the image (nearest neighbour) before drawing it.")
        panels.append((name, _overlay(pixels, labels, num_classes, alpha)))
    canvas = Image.new("RGB", (rgb.width * len(panels), rgb.height))
    for position, (name, array) in enumerate(panels):
        panel = Image.fromarray(array, mode="RGB")
        _label(panel, name)
        canvas.paste(panel, (position * rgb.width, 0))
    return canvas


def save_mask_png(mask: np.ndarray, path: str | os.PathLike[str], *, classes: Sequence[str],
                  ignore_index: int = 255) -> Path:
    """Write class indices as a PNG, atomically, whose pixel values are the class indices.

    Masks with values up to 255 are saved in mode "P" with the :func:`segmentation_palette` colours (viewable,
    and ``np.asarray(Image.open(path))`` gives the indices back); larger indices as a 16-bit grayscale PNG. The
    class names are stored in the PNG's ``classes`` text chunk (JSON).

    Raises:
        ParameterError: the mask is not 2-D, or holds values that are neither classes nor ``ignore_index``.

    >>> import tempfile
    >>> target = save_mask_png(np.array([[0, 1], [255, 1]]), Path(tempfile.mkdtemp()) / "m.png", classes=["a", "b"])
    >>> np.asarray(Image.open(target)).tolist()
    [[0, 1], [255, 1]]
    """
    labels = np.asarray(mask)
    if labels.ndim != 2:
        raise ParameterError(f"save_mask_png needs a 2-D (H, W) mask of class indices. Got shape {labels.shape}.",
                             fix="Pass one image's mask, not a batch.")
    labels = labels.astype(np.int64)
    k = len(classes)
    bad = np.unique(labels[((labels < 0) | (labels >= k)) & (labels != ignore_index)])
    if len(bad):
        raise ParameterError(f"The mask holds values {bad[:6].tolist()} that are not class indices; expected 0..{k - 1}"
                             f" or {ignore_index} (ignored).", fix="Pass the classes of the model that made the mask.")
    info = PngInfo()
    info.add_text("classes", json.dumps(list(classes)))
    if labels.size == 0 or (labels.min() >= 0 and labels.max() <= 255):
        picture = Image.fromarray(labels.astype(np.uint8))  # mode L; putpalette makes it P, values unchanged
        palette = np.zeros((256, 3), dtype=np.uint8)
        palette[: min(k, 256)] = np.asarray(segmentation_palette(min(k, 256)), dtype=np.uint8).reshape(-1, 3)
        if 0 <= ignore_index < 256:
            palette[ignore_index] = 0
        picture.putpalette(palette.ravel().tolist())
    else:
        if labels.min() < 0 or labels.max() > 65535:
            raise ParameterError(f"save_mask_png stores values 0..65535; the mask holds {labels.min()}..{labels.max()}.",
                                 fix="Use an ignore_index within 0..65535, such as 255.")
        picture = Image.fromarray(labels.astype(np.uint16))
    path = Path(path)
    temporary = temporary_sibling(path)
    try:
        picture.save(temporary, format="PNG", pnginfo=info)
        atomic_replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path
