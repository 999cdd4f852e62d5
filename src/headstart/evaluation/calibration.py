"""Confidence calibration: temperature scaling, expected calibration error and the reliability diagram.

A fine-tuned network is usually overconfident: among the images it labels with 95% confidence, fewer than 95%
are right. Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017) fixes that with
one number fitted on held-out data: every row of log-probabilities is divided by ``T`` and soft-maxed again.
``T > 1`` softens overconfident predictions, ``T < 1`` sharpens underconfident ones, and the predicted class
never changes, so accuracy is untouched.

headstart's models hand over probabilities, not logits. That loses nothing: ``log(softmax(z)) = z - c`` with one
constant ``c`` per row, and that constant cancels in the second softmax, so ``softmax(log(p) / T)`` equals
``softmax(z / T)``. Probabilities are clipped at 1e-12 before the logarithm.

Fit the temperature on a validation split and judge it on a test split: fitted and judged on the same images the
improvement is flattered.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import (
    Figure,  # no pyplot: figures never touch the user's backend or need a display
)
from scipy.optimize import (
    minimize_scalar,  # scipy is a dependency of scikit-learn, which headstart requires
)

from headstart.errors import ParameterError
from headstart.evaluation.metrics import log_loss
from headstart.evaluation.plots import _save

__all__ = [
    "apply_temperature",
    "calibrated_log_loss",
    "calibration_report",
    "expected_calibration_error",
    "fit_temperature",
    "plot_reliability_diagram",
    "reliability_bins",
]

_CLIP = 1e-12
_MIN_TEMPERATURE = 0.05
_MAX_TEMPERATURE = 20.0
_ROW_SUM_TOLERANCE = 1e-3  # float32 softmax outputs sum to 1 within ~1e-6; logits or scores miss by far more


def _check_probabilities(probabilities: Any, name: str = "probabilities") -> np.ndarray:
    """Return ``probabilities`` as a float64 (n, k) array of finite, non-negative rows that sum to 1."""
    array = np.asarray(probabilities, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] < 2:
        raise ParameterError(
            f"The '{name}' parameter must be a 2-D array of shape (n, k) with n >= 1 samples and k >= 2 classes. "
            f"Got shape {array.shape}.",
            fix="Pass one row of class probabilities per sample (e.g. the output of predict_proba).",
        )
    if not np.isfinite(array).all():
        raise ParameterError(
            f"The '{name}' parameter contains {int((~np.isfinite(array)).sum())} NaN or infinite values.",
            fix="Remove or repair the rows with non-finite probabilities.",
        )
    worst = float(np.abs(array.sum(axis=1) - 1.0).max())
    if array.min() < 0 or worst > _ROW_SUM_TOLERANCE:
        raise ParameterError(
            f"The '{name}' parameter must hold probabilities: non-negative rows that sum to 1. Got a minimum of "
            f"{array.min():.4g} and a row sum that is off by {worst:.4g}.",
            fix="Pass softmax outputs, not logits or scores (apply a softmax over the class axis first).",
        )
    return array


def _check_labels(labels: Any, n: int, k: int) -> np.ndarray:
    """Return ``labels`` as an int64 (n,) array of class indices in [0, k)."""
    array = np.asarray(labels)
    if array.ndim != 1 or array.shape[0] != n:
        raise ParameterError(
            f"The 'labels' parameter must have shape ({n},), one class index per row of probabilities. "
            f"Got shape {array.shape}.",
            fix="Pass the true class index of every sample, in the same order as the probability rows.",
        )
    numeric = np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    if array.dtype == np.bool_ or not numeric:
        raise ParameterError(
            f"The 'labels' parameter must hold integer class indices. Got dtype {array.dtype}.",
            fix="Map class names to their indices (0 .. k-1) before calling.",
        )
    if np.issubdtype(array.dtype, np.floating) and not (np.isfinite(array).all() and (array == np.round(array)).all()):
        raise ParameterError(
            "The 'labels' parameter must hold integer class indices. Got non-integer values.",
            fix="Pass class indices (0 .. k-1), not probabilities or scores.",
        )
    array = array.astype(np.int64)
    if array.min() < 0 or array.max() >= k:
        raise ParameterError(
            f"The 'labels' parameter must hold class indices in [0, {k - 1}] for {k} probability columns. "
            f"Got values from {array.min()} to {array.max()}.",
            fix="Check that labels and probability columns use the same class order and number of classes.",
        )
    return array


def _check_temperature(temperature: Any) -> float:
    try:
        value = float(temperature)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ParameterError(
            f"The 'temperature' parameter must be a finite number > 0. Got {temperature!r}.",
            fix="Use the value returned by fit_temperature (1.0 leaves probabilities unchanged).",
        )
    return value


def _check_n_bins(n_bins: Any) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ParameterError(
            f"The 'n_bins' parameter must be an integer >= 1. Got {n_bins!r}.",
            fix="Use the default of 15 equal-width confidence bins, or fewer for small evaluation sets.",
        )
    return int(n_bins)


def _log_probabilities(probabilities: np.ndarray) -> np.ndarray:
    return np.log(np.clip(probabilities, _CLIP, 1.0))


def _softmax_of_scaled(log_probabilities: np.ndarray, temperature: float) -> np.ndarray:
    scaled = log_probabilities / temperature
    scaled -= scaled.max(axis=1, keepdims=True)  # exp never overflows; the row maximum becomes exp(0) = 1
    exponentials = np.exp(scaled)
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def _scaled_nll(log_probabilities: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of ``labels`` under softmax(log_probabilities / temperature)."""
    scaled = log_probabilities / temperature
    top = scaled.max(axis=1)
    log_normaliser = top + np.log(np.exp(scaled - top[:, None]).sum(axis=1))
    return float((log_normaliser - scaled[np.arange(len(labels)), labels]).mean())


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The temperature ``T`` that minimises the negative log-likelihood of softmax(log(p) / T) on ``labels``.

    The search runs over ``log T`` in [log 0.05, log 20] with a bounded Brent search. The likelihood has a single
    minimum along that line (it is convex in 1/T), so the 1-D search finds it. When the data pull ``T`` to a
    bound (e.g. every prediction correct: sharper is always better) the bound is returned.

    Args:
        probabilities: predicted class probabilities on held-out data, shape (n, k), rows summing to 1.
        labels: true class indices, shape (n,).

    Returns:
        The fitted temperature, a float in [0.05, 20]. Above 1 means the model was overconfident.

    Raises:
        ParameterError: shapes that do not agree, fewer than 2 classes, non-finite values, rows that are not
            probabilities, or labels out of range.

    >>> rng = np.random.default_rng(0)
    >>> z = rng.normal(size=(5000, 3))
    >>> truth = np.exp(z) / np.exp(z).sum(1, keepdims=True)                  # the real class probabilities
    >>> y = (rng.random((5000, 1)) > truth.cumsum(1)).sum(1)                  # labels drawn from them
    >>> overconfident = np.exp(2 * z) / np.exp(2 * z).sum(1, keepdims=True)  # what the model reports
    >>> round(fit_temperature(overconfident, y), 1)
    2.0
    """
    probabilities = _check_probabilities(probabilities)
    labels = _check_labels(labels, *probabilities.shape)
    log_probabilities = _log_probabilities(probabilities)
    result = minimize_scalar(
        lambda log_t: _scaled_nll(log_probabilities, labels, math.exp(log_t)),
        bounds=(math.log(_MIN_TEMPERATURE), math.log(_MAX_TEMPERATURE)),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(min(max(math.exp(result.x), _MIN_TEMPERATURE), _MAX_TEMPERATURE))


def calibrated_log_loss(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Log loss after the temperature that suits these predictions best (:func:`fit_temperature`): how good the
    predictions are once their confidence scale is set right. It compares models trained to different confidence
    (a head solved without label smoothing, epochs trained with it) on what they rank, not on how sure they are.

    >>> from headstart.evaluation.metrics import log_loss
    >>> p = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.7, 0.3], [0.45, 0.55]])
    >>> y = np.array([0, 1, 0, 1, 1, 0])
    >>> flat = apply_temperature(p, 3.0)  # the same ranking, less confident
    >>> round(calibrated_log_loss(p, y), 6) == round(calibrated_log_loss(flat, y), 6) < log_loss(flat, y)
    True
    """
    probabilities = _check_probabilities(probabilities)
    labels = _check_labels(labels, *probabilities.shape)
    return _scaled_nll(_log_probabilities(probabilities), labels, fit_temperature(probabilities, labels))


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities rescaled by ``temperature``: softmax(log(p) / T), row by row.

    Rows still sum to 1 and the most probable class of each row is unchanged; ``T = 1`` returns ``p`` (up to
    the 1e-12 clip).

    Args:
        probabilities: predicted class probabilities, shape (n, k), rows summing to 1.
        temperature: the temperature, > 0 (usually from :func:`fit_temperature`).

    Returns:
        A new float64 array of shape (n, k).

    Raises:
        ParameterError: probabilities that are not an (n, k) array of probabilities, or a temperature <= 0.

    >>> apply_temperature(np.array([[0.8, 0.2], [0.5, 0.5]]), 2.0).round(3)
    array([[0.667, 0.333],
           [0.5  , 0.5  ]])
    """
    probabilities = _check_probabilities(probabilities)
    temperature = _check_temperature(temperature)
    return _softmax_of_scaled(_log_probabilities(probabilities), temperature)


def _bin_statistics(probabilities: np.ndarray, labels: np.ndarray,
                    n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Edges, counts, summed confidence and summed correctness per equal-width bin (lower, upper]."""
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # bins are (lower, upper] as in Guo et al.; a confidence of exactly 0 (impossible for k >= 2 rows) joins bin 0
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    counts = np.bincount(index, minlength=n_bins)
    confidence_sums = np.bincount(index, weights=confidence, minlength=n_bins)
    correct_sums = np.bincount(index, weights=correct, minlength=n_bins)
    return edges, counts, confidence_sums, correct_sums


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, *, n_bins: int = 15) -> float:
    """Top-label expected calibration error with equal-width confidence bins.

    Each sample's confidence is its highest probability. Samples fall into ``n_bins`` bins (lower, upper] over
    [0, 1]; the error is ``sum over bins of |bin| / n * |accuracy(bin) - mean confidence(bin)|``.

    Args:
        probabilities: predicted class probabilities, shape (n, k), rows summing to 1.
        labels: true class indices, shape (n,).
        n_bins: number of equal-width confidence bins.

    Returns:
        The ECE, in [0, 1]; 0 is perfectly calibrated.

    Raises:
        ParameterError: inputs as in :func:`fit_temperature`, or ``n_bins`` < 1.

    >>> p = np.array([[0.95, 0.05], [0.85, 0.15], [0.35, 0.65], [0.55, 0.45]])
    >>> round(expected_calibration_error(p, np.array([0, 1, 1, 1]), n_bins=5), 4)  # see reliability_bins
    0.425
    """
    probabilities = _check_probabilities(probabilities)
    labels = _check_labels(labels, *probabilities.shape)
    n_bins = _check_n_bins(n_bins)
    _, _, confidence_sums, correct_sums = _bin_statistics(probabilities, labels, n_bins)
    # |bin|/n * |acc - conf| = |sum(correct) - sum(confidence)| / n, which needs no care for empty bins
    return float(np.abs(correct_sums - confidence_sums).sum() / len(labels))


def reliability_bins(probabilities: np.ndarray, labels: np.ndarray, *, n_bins: int = 15) -> list[dict[str, Any]]:
    """Per-bin statistics behind the ECE and the reliability diagram, ready for a JSON report.

    Args:
        probabilities: predicted class probabilities, shape (n, k), rows summing to 1.
        labels: true class indices, shape (n,).
        n_bins: number of equal-width confidence bins.

    Returns:
        ``n_bins`` dicts, lowest bin first, each ``{"lower", "upper", "count", "mean_confidence", "accuracy"}``.
        A bin holds confidences in (lower, upper]; an empty bin has count 0 and ``None`` (JSON null) for
        mean_confidence and accuracy.

    Raises:
        ParameterError: inputs as in :func:`expected_calibration_error`.

    >>> p = np.array([[0.95, 0.05], [0.85, 0.15], [0.35, 0.65], [0.55, 0.45]])
    >>> for row in reliability_bins(p, np.array([0, 1, 1, 1]), n_bins=5)[2:]:
    ...     print(row)
    {'lower': 0.4, 'upper': 0.6, 'count': 1, 'mean_confidence': 0.55, 'accuracy': 0.0}
    {'lower': 0.6, 'upper': 0.8, 'count': 1, 'mean_confidence': 0.65, 'accuracy': 1.0}
    {'lower': 0.8, 'upper': 1.0, 'count': 2, 'mean_confidence': 0.9, 'accuracy': 0.5}
    """
    probabilities = _check_probabilities(probabilities)
    labels = _check_labels(labels, *probabilities.shape)
    n_bins = _check_n_bins(n_bins)
    edges, counts, confidence_sums, correct_sums = _bin_statistics(probabilities, labels, n_bins)
    rows = []
    for i in range(n_bins):
        count = int(counts[i])
        rows.append({
            "lower": round(float(edges[i]), 12),  # linspace gives 0.6000000000000001; reports should say 0.6
            "upper": round(float(edges[i + 1]), 12),
            "count": count,
            "mean_confidence": round(float(confidence_sums[i] / count), 12) if count else None,
            "accuracy": round(float(correct_sums[i] / count), 12) if count else None,
        })
    return rows


def plot_reliability_diagram(before: np.ndarray, after: np.ndarray | None, labels: np.ndarray,
                             path: str | os.PathLike[str], *, n_bins: int = 15, title: str | None = None) -> Path:
    """Reliability diagram (accuracy against confidence) before and after calibration, saved as one PNG.

    The top panel draws, per non-empty bin, accuracy at the bin's mean confidence for each set of probabilities,
    with the diagonal of perfect calibration and each ECE in the legend; the bottom panel is the histogram of
    confidences, which shows how many samples stand behind each point.

    Args:
        before: uncalibrated probabilities, shape (n, k).
        after: calibrated probabilities of the same samples (e.g. from :func:`apply_temperature`), or ``None``
            to draw ``before`` alone.
        labels: true class indices, shape (n,).
        path: where to write the PNG (parent folders are created; the file appears whole or not at all).
        n_bins: number of equal-width confidence bins.
        title: figure title; defaults to "Reliability diagram".

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ParameterError: inputs as in :func:`expected_calibration_error`, or ``after`` of another shape than
            ``before``.

    >>> import tempfile
    >>> p = np.array([[0.95, 0.05], [0.85, 0.15], [0.35, 0.65], [0.55, 0.45]])
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     written = plot_reliability_diagram(p, apply_temperature(p, 2.0), [0, 1, 1, 1], Path(folder) / "r.png")
    ...     written.name, written.read_bytes()[:4]
    ('r.png', b'\\x89PNG')
    """
    before = _check_probabilities(before, "before")
    labels = _check_labels(labels, *before.shape)
    n_bins = _check_n_bins(n_bins)
    series = [("uncalibrated", before, "tab:red", "o")]
    if after is not None:
        after = _check_probabilities(after, "after")
        if after.shape != before.shape:
            raise ParameterError(
                f"The 'after' parameter must have the shape of 'before', {before.shape}. Got {after.shape}.",
                fix="Pass the calibrated probabilities of the same samples, e.g. apply_temperature(before, T).",
            )
        series.append(("temperature-scaled", after, "tab:blue", "s"))

    figure = Figure(figsize=(6.5, 7.5))
    reliability, histogram = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    reliability.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    for name, probabilities, colour, marker in series:
        _, counts, confidence_sums, correct_sums = _bin_statistics(probabilities, labels, n_bins)
        filled = counts > 0
        ece = float(np.abs(correct_sums - confidence_sums).sum() / len(labels))
        reliability.plot(confidence_sums[filled] / counts[filled], correct_sums[filled] / counts[filled],
                         marker=marker, color=colour, label=f"{name} (ECE {ece:.3f})")
        histogram.hist(probabilities.max(axis=1), bins=edges, histtype="step", color=colour, linewidth=1.5,
                       label=name)
    for edge in edges[1:-1]:
        reliability.axvline(edge, color="grey", alpha=0.12, linewidth=0.8)
    reliability.set_xlim(0, 1)
    reliability.set_ylim(0, 1)
    reliability.set_ylabel("accuracy")
    reliability.set_title(title if title is not None else "Reliability diagram")
    reliability.legend(loc="upper left", fontsize=9)
    histogram.set_xlabel(f"confidence (top-class probability, {n_bins} bins)")
    histogram.set_ylabel("samples")
    histogram.grid(alpha=0.3)
    return _save(figure, Path(path))


def calibration_report(probabilities: np.ndarray, labels: np.ndarray, *, temperature: float,
                       n_bins: int = 15) -> dict[str, Any]:
    """ECE, negative log-likelihood and reliability bins before and after applying ``temperature``.

    Args:
        probabilities: uncalibrated class probabilities, shape (n, k), rows summing to 1.
        labels: true class indices, shape (n,).
        temperature: the temperature to judge, > 0 (fit it on other data than these).
        n_bins: number of equal-width confidence bins.

    Returns:
        A JSON-ready dict: ``{"temperature", "ece_before", "ece_after", "nll_before", "nll_after", "n",
        "bins_before", "bins_after"}`` (the bins as from :func:`reliability_bins`).

    Raises:
        ParameterError: inputs as in :func:`expected_calibration_error`, or a temperature <= 0.

    >>> p = np.array([[0.95, 0.05], [0.85, 0.15], [0.35, 0.65], [0.55, 0.45]])
    >>> report = calibration_report(p, np.array([0, 1, 1, 1]), temperature=2.0, n_bins=5)
    >>> round(report["ece_before"], 3), round(report["ece_after"], 3), report["n"]
    (0.425, 0.248, 4)
    """
    probabilities = _check_probabilities(probabilities)
    labels = _check_labels(labels, *probabilities.shape)
    temperature = _check_temperature(temperature)
    n_bins = _check_n_bins(n_bins)
    scaled = _softmax_of_scaled(_log_probabilities(probabilities), temperature)
    return {
        "temperature": temperature,
        "ece_before": expected_calibration_error(probabilities, labels, n_bins=n_bins),
        "ece_after": expected_calibration_error(scaled, labels, n_bins=n_bins),
        "nll_before": log_loss(probabilities, labels),
        "nll_after": log_loss(scaled, labels),
        "n": len(labels),
        "bins_before": reliability_bins(probabilities, labels, n_bins=n_bins),
        "bins_after": reliability_bins(scaled, labels, n_bins=n_bins),
    }
