"""Classification metrics with bootstrap 95% confidence intervals.

Every rate (accuracy, precision, recall, F1, per class and macro) is reported as
``{"value": v, "ci95": [low, high]}``; the interval comes from resampling the evaluated images with
replacement (percentile bootstrap), which is what an honest number from a few hundred images needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from headstart.errors import ParameterError

__all__ = ["classification_metrics", "format_summary", "log_loss", "paired_accuracy_gain"]


def _rates_from_confusion(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy and per-class precision/recall/F1 from confusion matrices of shape (..., k, k) (rows = truth)."""
    true_positive = np.diagonal(cm, axis1=-2, axis2=-1).astype(np.float64)
    predicted = cm.sum(axis=-2).astype(np.float64)
    actual = cm.sum(axis=-1).astype(np.float64)
    total = cm.sum(axis=(-2, -1)).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, true_positive / predicted, 0.0)
        recall = np.where(actual > 0, true_positive / actual, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        accuracy = true_positive.sum(axis=-1) / np.maximum(total, 1)
    return {"accuracy": accuracy, "precision": precision, "recall": recall, "f1": f1}


def _confusion(true: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(true * k + pred, minlength=k * k).reshape(k, k)


def log_loss(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-probability of the true class (probabilities clipped at 1e-12).

    >>> round(log_loss(np.array([[0.5, 0.5], [0.9, 0.1]]), np.array([0, 0])), 4)
    0.3993
    """
    picked = np.asarray(probabilities)[np.arange(len(labels)), np.asarray(labels)]
    return float(-np.log(np.clip(picked, 1e-12, 1.0)).mean())


def paired_accuracy_gain(labels: Sequence[int] | np.ndarray, before: np.ndarray, after: np.ndarray, *,
                         n_bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Accuracy of the probabilities ``after`` minus that of ``before`` on the same examples, with a paired
    percentile-bootstrap 95% CI (both resampled with the same indices); ``significant`` when the CI is above 0.

    >>> labels = np.array([0, 1] * 50)
    >>> guess = np.tile([[0.6, 0.4]], (100, 1))
    >>> right = np.eye(2)[labels]
    >>> check = paired_accuracy_gain(labels, guess, right)
    >>> check["gain"], check["significant"], paired_accuracy_gain(labels, right, right)["significant"]
    (0.5, True, False)
    """
    labels = np.asarray(labels)
    difference = ((np.asarray(after).argmax(1) == labels).astype(np.float64)
                  - (np.asarray(before).argmax(1) == labels).astype(np.float64))
    n = len(labels)
    if n == 0:
        return {"gain": 0.0, "ci95": [0.0, 0.0], "significant": False, "n": 0}
    means = difference[np.random.default_rng(seed).integers(0, n, (n_bootstrap, n))].mean(axis=1)
    low, high = (float(v) for v in np.percentile(means, [2.5, 97.5]))
    return {"gain": float(difference.mean()), "ci95": [low, high], "significant": bool(low > 0), "n": n}


def classification_metrics(
    y_true: Sequence[int] | np.ndarray,
    probabilities: np.ndarray,
    *,
    classes: Sequence[str],
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Accuracy, per-class and macro precision / recall / F1 with bootstrap CIs, confusion matrix, log loss.

    Args:
        y_true: true class indices, shape (n,).
        probabilities: predicted class probabilities, shape (n, k).
        classes: the k class names.
        n_bootstrap: bootstrap resamples for the confidence intervals (0 disables them).
        seed: seed of the resampling.

    Returns:
        A JSON-ready dict.

    Raises:
        ParameterError: shapes that do not agree.

    >>> p = np.array([[.9, .1], [.2, .8], [.6, .4]])
    >>> m = classification_metrics([0, 1, 1], p, classes=["a", "b"], n_bootstrap=50)
    >>> round(m["accuracy"]["value"], 3), m["confusion_matrix"]
    (0.667, [[1, 0], [1, 1]])
    """
    true = np.asarray(y_true, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    k = len(classes)
    if probabilities.ndim != 2 or probabilities.shape != (len(true), k):
        raise ParameterError(
            f"Expected probabilities of shape ({len(true)}, {k}) for {len(true)} labels and {k} classes. "
            f"Got {probabilities.shape}.",
            fix="Pass one row of class probabilities per label, with one column per class name.",
        )
    if len(true) == 0:
        raise ParameterError("Cannot compute metrics on zero samples.", fix="Evaluate on a non-empty dataset.")
    pred = probabilities.argmax(axis=1)
    cm = _confusion(true, pred, k)
    point = _rates_from_confusion(cm)

    intervals: dict[str, np.ndarray] | None = None
    if n_bootstrap > 0:
        rng = np.random.default_rng(seed)
        n = len(true)
        chunks = []
        per_chunk = max(1, 2_000_000 // n)  # bounds memory of the (resamples, n) index array
        for start in range(0, n_bootstrap, per_chunk):
            b = min(per_chunk, n_bootstrap - start)
            index = rng.integers(0, n, size=(b, n))
            codes = true[index] * k + pred[index] + (np.arange(b) * k * k)[:, None]
            chunks.append(np.bincount(codes.ravel(), minlength=b * k * k).reshape(b, k, k))
        boot = _rates_from_confusion(np.concatenate(chunks))
        boot["macro_precision"] = boot["precision"].mean(axis=-1)
        boot["macro_recall"] = boot["recall"].mean(axis=-1)
        boot["macro_f1"] = boot["f1"].mean(axis=-1)
        intervals = {name: np.percentile(values, [2.5, 97.5], axis=0) for name, values in boot.items()}

    def rate(name: str, value: float, index: int | None = None) -> dict[str, Any]:
        entry: dict[str, Any] = {"value": float(value)}
        if intervals is not None:
            bounds = intervals[name] if index is None else intervals[name][:, index]
            entry["ci95"] = [float(bounds[0]), float(bounds[1])]
        return entry

    return {
        "n_samples": int(len(true)),
        "classes": list(classes),
        "accuracy": rate("accuracy", point["accuracy"]),
        "macro_precision": rate("macro_precision", point["precision"].mean()),
        "macro_recall": rate("macro_recall", point["recall"].mean()),
        "macro_f1": rate("macro_f1", point["f1"].mean()),
        "per_class": {
            name: {
                "precision": rate("precision", point["precision"][i], i),
                "recall": rate("recall", point["recall"][i], i),
                "f1": rate("f1", point["f1"][i], i),
                "support": int(cm[i].sum()),
            }
            for i, name in enumerate(classes)
        },
        "confusion_matrix": cm.tolist(),
        "log_loss": log_loss(probabilities, true),
        "bootstrap": {"resamples": n_bootstrap, "seed": seed, "method": "percentile"},
    }


def format_summary(metrics: dict[str, Any]) -> str:
    """A few human-readable lines: accuracy and macro-F1 with CIs, and each class's F1."""

    def show(entry: dict[str, Any]) -> str:
        ci = entry.get("ci95")
        return f"{entry['value']:.3f}" + (f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else "")

    lines = [
        f"accuracy  {show(metrics['accuracy'])}   on {metrics['n_samples']} examples",
        f"macro F1  {show(metrics['macro_f1'])}",
    ]
    for name, values in metrics["per_class"].items():
        lines.append(
            f"  {name:<20} precision {values['precision']['value']:.3f}  recall {values['recall']['value']:.3f}"
            f"  F1 {values['f1']['value']:.3f}  (n={values['support']})"
        )
    return "\n".join(lines)
