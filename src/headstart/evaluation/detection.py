"""Object-detection metrics (COCO mAP with bootstrap 95% intervals), and pictures and JSON of detections.

The average precision follows pycocotools' ``COCOeval`` for boxes (area range "all", 100 detections; a test
checks the figures against pycocotools). Two differences from published COCO / VOC numbers: crowd boxes are
dropped when the data is read (pycocotools ignores detections on them; here those count as false positives), and
VOC "difficult" objects are scored like the others (VOC's own protocol ignores them):

* per class and image, detections are sorted by score (stable) and the first 100 kept (pycocotools applies
  ``maxDets`` per image *and class*);
* each detection, in score order, is matched to the unmatched true box of its class with the highest IoU,
  if that IoU is >= the threshold (ties go to the later true box, as in pycocotools); unmatched detections are
  false positives, and a second detection of an already matched box is one too;
* IoU is computed on pixel coordinates without the old "+1" (COCO convention);
* per threshold in 0.50:0.05:0.95, detections of all images are sorted by score, precision is made
  monotone from the right, and AP is the mean of the interpolated precision at 101 recall points
  (0, 0.01, ..., 1); precision is 0 at recall points never reached;
* classes without true boxes in the set have no AP and are left out of the means.

The confidence intervals resample images with replacement. Matching is done once: each image's per-detection
match flags per threshold are kept, and a resample only re-weights images before the cumulative sums.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from headstart.errors import ParameterError

__all__ = [
    "IOU_THRESHOLDS",
    "box_iou",
    "detection_metrics",
    "format_detection_summary",
    "draw_detections",
    "detections_to_json",
]

# Exactly pycocotools' thresholds and recall points (np.linspace with its counts), so results agree to the bit.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1)
RECALL_POINTS = np.linspace(0.0, 1.0, int(np.round((1.0 - 0.0) / 0.01)) + 1)
MAX_DETECTIONS = 100
_INDEX_50, _INDEX_75 = 0, 5


def box_iou(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Intersection over union of every pair of ``x1, y1, x2, y2`` boxes: (N, 4), (M, 4) -> (N, M).

    >>> box_iou(np.array([[0, 0, 10, 10]]), np.array([[5, 0, 15, 10], [20, 20, 30, 30]])).round(4).tolist()
    [[0.3333, 0.0]]
    """
    a = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(others, dtype=np.float64).reshape(-1, 4)
    width = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    height = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    intersection = np.clip(width, 0, None) * np.clip(height, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, intersection / union, 0.0)


def _match(detections: np.ndarray, truths: np.ndarray) -> np.ndarray:
    """Match flags (thresholds, detections) for one image and class; detections already in score order."""
    flags = np.zeros((len(IOU_THRESHOLDS), len(detections)), dtype=bool)
    if len(detections) == 0 or len(truths) == 0:
        return flags
    ious = box_iou(detections, truths)
    n_truths = len(truths)
    required = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)  # pycocotools' cap
    matched = np.zeros((len(IOU_THRESHOLDS), n_truths), dtype=bool)
    for index in range(len(detections)):
        candidates = np.where(matched, -1.0, ious[index][None, :])
        best = n_truths - 1 - np.argmax(candidates[:, ::-1], axis=1)  # the last of equal maxima
        value = candidates[np.arange(len(IOU_THRESHOLDS)), best]
        hit = value >= required
        flags[hit, index] = True
        matched[np.flatnonzero(hit), best[hit]] = True
    return flags


def _average_precision(flags: np.ndarray, weights: np.ndarray, n_true: float) -> np.ndarray:
    """AP per threshold from match flags (thresholds, detections) sorted by score, each detection weighted
    (1 normally; the number of times its image was drawn in a bootstrap resample)."""
    if flags.shape[1] == 0:
        return np.zeros(flags.shape[0])
    true_positives = np.cumsum(flags * weights, axis=1)
    false_positives = np.cumsum(~flags * weights, axis=1)
    recall = true_positives / n_true
    # pycocotools adds np.spacing(1) to this denominator against 0/0, which makes perfect detections score
    # 0.9999999999999998; every weight here is > 0, so the denominator is too, and 1.0 stays 1.0.
    precision = true_positives / (true_positives + false_positives)
    precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    result = np.empty(flags.shape[0])
    count = flags.shape[1]
    for row in range(flags.shape[0]):
        positions = np.searchsorted(recall[row], RECALL_POINTS, side="left")
        reached = positions < count
        result[row] = precision[row, positions[reached]].sum() / len(RECALL_POINTS)
    return result


def _as_arrays(entry: dict[str, Any], index: int, role: str, *, scored: bool
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        boxes = np.asarray(entry["boxes"], dtype=np.float64).reshape(-1, 4)
        labels = np.asarray(entry["labels"], dtype=np.int64).reshape(-1)
        scores = np.asarray(entry["scores"], dtype=np.float64).reshape(-1) if scored else np.zeros(len(boxes))
    except (KeyError, TypeError, ValueError) as error:
        keys = '"boxes", "scores", "labels"' if scored else '"boxes", "labels"'
        found = f"no {error.args[0]!r} key" if isinstance(error, KeyError) else f"{type(error).__name__}: {error}"
        raise ParameterError(f"{role}[{index}] must be a dict of {keys} arrays ((N, 4), (N,) ...). Found {found}.",
                             fix="Pass numpy arrays with one row per box.") from None
    if len(labels) != len(boxes) or len(scores) != len(boxes):
        raise ParameterError(f"{role}[{index}] has {len(boxes)} boxes but {len(labels)} labels"
                             + (f" and {len(scores)} scores" if scored else "") + ".",
                             fix="Give one label (and score) per box.")
    return boxes, labels, scores


class _ClassMatches(NamedTuple):
    """One class's detections over all images, in score order: what the AP of any image resample needs."""

    flags: np.ndarray  # (thresholds, detections) match flags
    images: np.ndarray  # (detections,) the image of each detection
    n_true: np.ndarray  # (images,) true boxes of the class per image


def _check_labels(parsed_predictions: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
                  parsed_targets: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], classes: list[str]) -> None:
    """Raise ParameterError for the first label, predicted or true, that does not index ``classes``."""
    n_classes = len(classes)
    for role, parsed in (("predictions", parsed_predictions), ("targets", parsed_targets)):
        for index, (_, labels, _) in enumerate(parsed):
            outside = labels[(labels < 0) | (labels >= n_classes)]
            if len(outside):
                raise ParameterError(f"{role}[{index}] has label {int(outside[0])}, outside 0..{n_classes - 1} for "
                                     f"classes {list(classes)}.",
                                     fix="Pass the class names the model was trained with.")


def _match_per_class(parsed_predictions: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
                     parsed_targets: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], n_classes: int
                     ) -> tuple[list[_ClassMatches], np.ndarray]:
    """Match every image's detections once, per class; also the number of detections of each class."""
    n_images = len(parsed_targets)
    per_class: list[_ClassMatches] = []
    n_predicted = np.zeros(n_classes, dtype=np.int64)
    for label in range(n_classes):
        scores_parts, flags_parts, image_parts = [], [], []
        n_true = np.zeros(n_images, dtype=np.int64)
        for image, ((boxes, labels, scores), (true_boxes, true_labels, _)) in enumerate(
                zip(parsed_predictions, parsed_targets)):
            mine = labels == label
            n_predicted[label] += int(mine.sum())
            truths = true_boxes[true_labels == label]
            n_true[image] = len(truths)
            if not mine.any():
                continue
            order = np.argsort(-scores[mine], kind="stable")[:MAX_DETECTIONS]
            scores_parts.append(scores[mine][order])
            flags_parts.append(_match(boxes[mine][order], truths))
            image_parts.append(np.full(len(order), image))
        if scores_parts:
            all_scores = np.concatenate(scores_parts)
            order = np.argsort(-all_scores, kind="stable")
            flags = np.concatenate(flags_parts, axis=1)[:, order]
            images = np.concatenate(image_parts)[order]
        else:
            flags, images = np.zeros((len(IOU_THRESHOLDS), 0), dtype=bool), np.zeros(0, dtype=np.int64)
        per_class.append(_ClassMatches(flags, images, n_true))
    return per_class, n_predicted


def _class_ap(per_class: Sequence[_ClassMatches], image_weights: np.ndarray) -> np.ndarray:
    """(classes, thresholds) AP, NaN for classes without true boxes under these image weights."""
    result = np.full((len(per_class), len(IOU_THRESHOLDS)), np.nan)
    for label, (flags, images, n_true) in enumerate(per_class):
        total = float((n_true * image_weights).sum())
        if total > 0:
            weights = image_weights[images]
            kept = weights > 0
            result[label] = _average_precision(flags[:, kept], weights[kept], total)
    return result


def _mean_or_none(values: np.ndarray) -> float | None:
    """The mean of the values that are not NaN, or None when all are."""
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else None


def _bootstrap_intervals(per_class: Sequence[_ClassMatches], n_images: int, *, n_bootstrap: int, seed: int
                         ) -> dict[str, list[float] | None]:
    """95% percentile intervals of mAP@0.5 and mAP@0.5:0.95 over image resamples (None where no resample had a
    true box)."""
    intervals: dict[str, list[float] | None] = {"map_50_ci": None, "map_50_95_ci": None}
    rng = np.random.default_rng(seed)
    samples = np.full((n_bootstrap, 2), np.nan)
    for draw in range(n_bootstrap):
        weights = np.bincount(rng.integers(0, n_images, size=n_images), minlength=n_images).astype(np.float64)
        ap = _class_ap(per_class, weights)
        valid = ~np.isnan(ap[:, 0])
        if valid.any():
            samples[draw] = ap[valid, _INDEX_50].mean(), ap[valid].mean()
    for column, key in enumerate(("map_50_ci", "map_50_95_ci")):
        values = samples[:, column][~np.isnan(samples[:, column])]
        if len(values):
            low, high = np.percentile(values, [2.5, 97.5])
            intervals[key] = [float(low), float(high)]
    return intervals


def detection_metrics(
    predictions: Sequence[dict[str, Any]],
    targets: Sequence[dict[str, Any]],
    classes: list[str],
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """COCO mAP@0.5, mAP@0.5:0.95 and mAP@0.75, per-class AP, and bootstrap 95% intervals over images.

    Args:
        predictions: per image, ``{"boxes": (M, 4) x1 y1 x2 y2, "scores": (M,), "labels": (M,)}``.
        targets: per image (same order), ``{"boxes": (N, 4), "labels": (N,)}``.
        classes: the class names that labels index.
        n_bootstrap: image resamples for the intervals (0: no intervals).
        seed: seed of the resampling.

    Returns:
        ``map_50``, ``map_50_95``, ``map_75`` (None when no class has a true box), ``map_50_ci`` and
        ``map_50_95_ci`` ([low, high] or None), ``per_class`` (``class``, ``ap_50``, ``ap_50_95`` (None
        without true boxes), ``n_true``, ``n_predicted``), ``n_images`` and ``n_true_boxes``.

    Raises:
        ParameterError: different numbers of predictions and targets, malformed entries, labels outside
            ``classes``.

    >>> truth = [{"boxes": np.array([[0, 0, 10, 10]]), "labels": np.array([0])}]
    >>> found = [{"boxes": np.array([[0, 0, 10, 9]]), "scores": np.array([0.9]), "labels": np.array([0])}]
    >>> m = detection_metrics(found, truth, ["cell"], n_bootstrap=0)
    >>> m["map_50"], m["map_75"], round(m["map_50_95"], 2)
    (1.0, 1.0, 0.9)
    """
    if len(predictions) != len(targets):
        raise ParameterError(f"Expected one prediction per target image. Got {len(predictions)} predictions for "
                             f"{len(targets)} targets.", fix="Pass the predictions and targets of the same images.")
    if n_bootstrap < 0:
        raise ParameterError(f"The 'n_bootstrap' parameter must be >= 0. Got {n_bootstrap!r}.",
                             fix="Pass 0 to skip the intervals, or 1000.")
    n_classes, n_images = len(classes), len(targets)
    parsed_predictions = [_as_arrays(entry, i, "predictions", scored=True) for i, entry in enumerate(predictions)]
    parsed_targets = [_as_arrays(entry, i, "targets", scored=False) for i, entry in enumerate(targets)]
    _check_labels(parsed_predictions, parsed_targets, classes)
    per_class, n_predicted = _match_per_class(parsed_predictions, parsed_targets, n_classes)

    point = _class_ap(per_class, np.ones(n_images))
    map_50 = _mean_or_none(point[:, _INDEX_50])
    map_50_95 = _mean_or_none(point.mean(axis=1))  # NaN rows (no true boxes) stay NaN and are left out

    intervals: dict[str, list[float] | None] = {"map_50_ci": None, "map_50_95_ci": None}
    if n_bootstrap > 0 and n_images > 0 and map_50 is not None:
        intervals = _bootstrap_intervals(per_class, n_images, n_bootstrap=n_bootstrap, seed=seed)

    n_true_per_class = [int(matches.n_true.sum()) for matches in per_class]
    return {
        "map_50": map_50,
        "map_50_95": map_50_95,
        "map_75": _mean_or_none(point[:, _INDEX_75]),
        **intervals,
        "per_class": [
            {
                "class": name,
                "ap_50": None if np.isnan(point[label, _INDEX_50]) else float(point[label, _INDEX_50]),
                "ap_50_95": None if np.isnan(point[label, 0]) else float(point[label].mean()),
                "n_true": n_true_per_class[label],
                "n_predicted": int(n_predicted[label]),
            }
            for label, name in enumerate(classes)
        ],
        "n_images": n_images,
        "n_true_boxes": int(sum(n_true_per_class)),
    }


def format_detection_summary(metrics: dict[str, Any]) -> str:
    """A few human-readable lines: the mAPs with intervals, then each class's AP.

    >>> print(format_detection_summary({"map_50": 0.5, "map_50_95": 0.25, "map_75": 0.2, "map_50_ci": None,
    ...     "map_50_95_ci": [0.2, 0.3], "n_images": 3, "n_true_boxes": 4, "per_class": [
    ...     {"class": "cell", "ap_50": 0.5, "ap_50_95": 0.25, "n_true": 4, "n_predicted": 6},
    ...     {"class": "dust", "ap_50": None, "ap_50_95": None, "n_true": 0, "n_predicted": 1}]}))
    mAP@0.5       0.500   on 3 images, 4 true boxes
    mAP@0.5:0.95  0.250 (95% CI 0.200-0.300)
    mAP@0.75      0.200
      cell                 AP50 0.500  AP50:95 0.250  (true 4, predicted 6)
      dust                 no true boxes in this set  (predicted 1)
    """

    def show(value: float | None, ci: list[float] | None = None) -> str:
        if value is None:
            return "n/a (no true boxes)"
        return f"{value:.3f}" + (f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else "")

    where = f"on {metrics['n_images']} images, {metrics['n_true_boxes']} true boxes"
    lines = [
        f"mAP@0.5       {show(metrics['map_50'], metrics.get('map_50_ci'))}   {where}",
        f"mAP@0.5:0.95  {show(metrics['map_50_95'], metrics.get('map_50_95_ci'))}",
        f"mAP@0.75      {show(metrics['map_75'])}",
    ]
    for entry in metrics["per_class"]:
        if entry["ap_50"] is None:
            lines.append(f"  {entry['class']:<20} no true boxes in this set  (predicted {entry['n_predicted']})")
        else:
            lines.append(f"  {entry['class']:<20} AP50 {entry['ap_50']:.3f}  AP50:95 {entry['ap_50_95']:.3f}"
                         f"  (true {entry['n_true']}, predicted {entry['n_predicted']})")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# Pictures and JSON

# Tableau 10: distinct on photos and for colour-blind readers; class i gets colour i mod 10.
_PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
            (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def _class_name(classes: Sequence[str], label: int) -> str:
    return classes[label] if 0 <= label < len(classes) else str(label)


def _dashed_rectangle(draw: ImageDraw.ImageDraw, box: Sequence[float], *, width: int, dash: int) -> None:
    x1, y1, x2, y2 = box
    edges = [((x1, y1), (x2, y1)), ((x2, y1), (x2, y2)), ((x2, y2), (x1, y2)), ((x1, y2), (x1, y1))]
    for (ax, ay), (bx, by) in edges:
        length = max(abs(bx - ax), abs(by - ay))
        steps = max(1, int(length // dash))
        for step in range(0, steps, 2):
            start, end = step / steps, min(step + 1, steps) / steps
            segment = [(ax + (bx - ax) * start, ay + (by - ay) * start), (ax + (bx - ax) * end, ay + (by - ay) * end)]
            draw.line(segment, fill=(0, 0, 0), width=width + 2)  # a dark outline keeps white visible on white
            draw.line(segment, fill=(255, 255, 255), width=width)


def draw_detections(
    image: Image.Image,
    *,
    boxes: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray | None = None,
    classes: Sequence[str],
    truth_boxes: np.ndarray | None = None,
    truth_labels: np.ndarray | None = None,
) -> Image.Image:
    """A copy of ``image`` with the detections drawn: one colour per class, captioned "label 0.93".

    True boxes, when given, are drawn first as thin dashed white lines (outlined in black), so the predictions
    stay readable over them. ``truth_labels`` is accepted for symmetry; the truth is drawn uncaptioned.

    >>> picture = draw_detections(Image.new("RGB", (64, 48)), boxes=np.array([[4, 4, 30, 30]]),
    ...                           labels=np.array([0]), scores=np.array([0.93]), classes=["cell"])
    >>> picture.size, picture.getpixel((4, 20)) != (0, 0, 0)
    ((64, 48), True)
    """
    picture = image.convert("RGB").copy()
    draw = ImageDraw.Draw(picture)
    line = max(2, round(min(picture.size) / 250))
    font = ImageFont.load_default(size=max(10, round(min(picture.size) / 40)))
    if truth_boxes is not None:
        for box in np.asarray(truth_boxes, dtype=np.float64).reshape(-1, 4):
            _dashed_rectangle(draw, box.tolist(), width=max(1, line // 2), dash=max(4, line * 3))
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    shown_scores = None if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1)
    for index, (box, label) in enumerate(zip(boxes, labels)):
        colour = _PALETTE[int(label) % len(_PALETTE)]
        x1, y1, x2, y2 = box.tolist()
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=line)
        caption = _class_name(classes, int(label)) + ("" if shown_scores is None else f" {shown_scores[index]:.2f}")
        left, top, right, bottom = draw.textbbox((0, 0), caption, font=font)
        text_width, text_height = right - left, bottom - top
        ty = y1 - text_height - 4 if y1 - text_height - 4 >= 0 else y1  # above the box, or inside at the top
        tx = min(max(x1, 0), max(picture.size[0] - text_width - 4, 0))
        draw.rectangle([tx, ty, tx + text_width + 4, ty + text_height + 4], fill=colour)
        brightness = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
        draw.text((tx + 2 - left, ty + 2 - top), caption, font=font,
                  fill=(0, 0, 0) if brightness > 150 else (255, 255, 255))
    return picture


def detections_to_json(boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray, classes: Sequence[str]
                       ) -> list[dict[str, Any]]:
    """Detections as JSON-ready dicts: ``{"label", "score", "box": [x1, y1, x2, y2]}``, in the given order,
    boxes rounded to 0.1 pixel and scores to 4 decimals.

    >>> detections_to_json(np.array([[1.234, 2, 30.06, 40]]), np.array([1]), np.array([0.912345]), ["a", "b"])
    [{'label': 'b', 'score': 0.9123, 'box': [1.2, 2.0, 30.1, 40.0]}]
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not len(boxes) == len(labels) == len(scores):
        raise ParameterError(f"Expected as many boxes, labels and scores. Got {len(boxes)}, {len(labels)} and "
                             f"{len(scores)}.", fix="Pass one label and one score per box.")
    return [
        {"label": _class_name(classes, int(label)), "score": round(float(score), 4),
         "box": [round(float(value), 1) for value in box]}
        for box, label, score in zip(boxes, labels, scores)
    ]
