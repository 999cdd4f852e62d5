"""Temperature scaling recovers a known temperature, ECE matches its definition, the diagram is a real PNG."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from headstart.errors import ParameterError
from headstart.evaluation.calibration import (
    apply_temperature,
    calibration_report,
    expected_calibration_error,
    fit_temperature,
    plot_reliability_diagram,
    reliability_bins,
)

# confidences 0.95 (right), 0.85 (wrong), 0.65 (right), 0.55 (wrong): none lies on a bin edge of 1, 2, 5 or 10 bins
HAND_PROBABILITIES = np.array([[0.95, 0.05], [0.85, 0.15], [0.35, 0.65], [0.55, 0.45]])
HAND_LABELS = np.array([0, 1, 1, 1])


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _synthetic(n: int, k: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits z and labels drawn from softmax(z): softmax(z) is calibrated by construction."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=1.5, size=(n, k))
    cumulative = _softmax(z).cumsum(axis=1)
    labels = (rng.random((n, 1)) > cumulative).sum(axis=1)  # inverse-CDF sampling, one draw per row
    return z, np.minimum(labels, k - 1)


@pytest.mark.parametrize("true_temperature", [3.0, 0.5])
def test_fit_temperature_recovers_known_temperature(true_temperature: float) -> None:
    # labels ~ softmax(z) but the model reports softmax(T_true * z): dividing its log-probabilities by T_true
    # restores the true distribution, so the expected likelihood is maximal at T = T_true
    z, labels = _synthetic(20_000, 5, seed=1)
    reported = _softmax(true_temperature * z)
    fitted = fit_temperature(reported, labels)
    assert fitted == pytest.approx(true_temperature, rel=0.10)
    # the calibrated model's own probabilities need no rescaling
    assert fit_temperature(_softmax(z), labels) == pytest.approx(1.0, rel=0.10)


def test_ece_small_when_calibrated_large_when_overconfident_and_fixed_by_temperature() -> None:
    z, labels = _synthetic(20_000, 5, seed=2)
    calibrated = _softmax(z)
    overconfident = _softmax(3 * z)
    assert expected_calibration_error(calibrated, labels) < 0.02
    before = expected_calibration_error(overconfident, labels)
    assert before > 0.10
    rescaled = apply_temperature(overconfident, fit_temperature(overconfident, labels))
    after = expected_calibration_error(rescaled, labels)
    assert after < 0.02 and after < before / 5


def test_ece_matches_hand_computation() -> None:
    # 5 bins: (0.4, 0.6] holds 0.55 (wrong) -> |0 - 0.55| * 1/4 = 0.1375
    #         (0.6, 0.8] holds 0.65 (right) -> |1 - 0.65| * 1/4 = 0.0875
    #         (0.8, 1.0] holds 0.95 (right), 0.85 (wrong) -> |0.5 - 0.9| * 2/4 = 0.2
    assert expected_calibration_error(HAND_PROBABILITIES, HAND_LABELS, n_bins=5) == pytest.approx(0.425)
    # one bin: |accuracy 0.5 - mean confidence 0.75| = 0.25
    assert expected_calibration_error(HAND_PROBABILITIES, HAND_LABELS, n_bins=1) == pytest.approx(0.25)
    # ten bins: every sample alone in its bin, so ECE is the mean of |correct - confidence|
    assert expected_calibration_error(HAND_PROBABILITIES, HAND_LABELS, n_bins=10) == pytest.approx(
        (0.05 + 0.85 + 0.35 + 0.55) / 4)


def test_reliability_bins_match_hand_computation_and_ece() -> None:
    bins = reliability_bins(HAND_PROBABILITIES, HAND_LABELS, n_bins=5)
    assert [(b["lower"], b["upper"]) for b in bins] == [(0.0, 0.2), (0.2, 0.4), (0.4, 0.6), (0.6, 0.8), (0.8, 1.0)]
    assert [b["count"] for b in bins] == [0, 0, 1, 1, 2]
    assert [b["accuracy"] for b in bins] == [None, None, 0.0, 1.0, 0.5]
    assert [b["mean_confidence"] for b in bins][2:] == pytest.approx([0.55, 0.65, 0.9])
    json.dumps(bins, allow_nan=False)  # empty bins are null, not NaN

    z, labels = _synthetic(3_000, 4, seed=3)
    probabilities = _softmax(2 * z)
    bins = reliability_bins(probabilities, labels, n_bins=15)
    assert sum(b["count"] for b in bins) == len(labels)
    from_bins = sum(b["count"] / len(labels) * abs(b["accuracy"] - b["mean_confidence"]) for b in bins if b["count"])
    assert expected_calibration_error(probabilities, labels, n_bins=15) == pytest.approx(from_bins)


def test_ece_bins_are_closed_on_the_right() -> None:
    # a confidence of exactly 0.75 belongs to (0.5, 0.75], not (0.75, 1.0]; with 4 bins the two choices differ
    probabilities = np.array([[0.75, 0.25], [0.9, 0.1]])
    bins = reliability_bins(probabilities, np.array([0, 0]), n_bins=4)
    assert [b["count"] for b in bins] == [0, 0, 1, 1]


def test_apply_temperature_keeps_argmax_and_row_sums() -> None:
    z, _ = _synthetic(2_000, 6, seed=4)
    probabilities = _softmax(z)
    for temperature in (0.1, 0.5, 1.0, 2.0, 15.0):
        scaled = apply_temperature(probabilities, temperature)
        assert scaled.shape == probabilities.shape
        np.testing.assert_allclose(scaled.sum(axis=1), 1.0, atol=1e-12)
        np.testing.assert_array_equal(scaled.argmax(axis=1), probabilities.argmax(axis=1))
    np.testing.assert_allclose(apply_temperature(probabilities, 1.0), probabilities, atol=1e-12)
    np.testing.assert_allclose(apply_temperature(probabilities, 2.0), _softmax(z / 2), atol=1e-12)
    # higher temperature, softer predictions
    assert apply_temperature(probabilities, 3.0).max(axis=1).mean() < probabilities.max(axis=1).mean()


def test_calibration_report_is_json_ready_and_improves_overconfident_model() -> None:
    z, labels = _synthetic(5_000, 4, seed=5)
    overconfident = _softmax(2.5 * z)
    validation, test = slice(0, 2_500), slice(2_500, None)
    temperature = fit_temperature(overconfident[validation], labels[validation])
    report = calibration_report(overconfident[test], labels[test], temperature=temperature, n_bins=10)
    assert set(report) == {"temperature", "ece_before", "ece_after", "nll_before", "nll_after", "n",
                           "bins_before", "bins_after"}
    assert report["temperature"] == temperature and report["n"] == 2_500
    assert report["ece_after"] < report["ece_before"]
    assert report["nll_after"] < report["nll_before"]
    assert report["ece_before"] == pytest.approx(expected_calibration_error(overconfident[test], labels[test],
                                                                            n_bins=10))
    assert len(report["bins_before"]) == len(report["bins_after"]) == 10
    json.dumps(report, allow_nan=False)


@pytest.mark.parametrize("with_after", [True, False])
def test_reliability_diagram_is_a_png(tmp_path: Path, with_after: bool) -> None:
    z, labels = _synthetic(2_000, 3, seed=6)
    before = _softmax(3 * z)
    after = apply_temperature(before, 3.0) if with_after else None
    target = tmp_path / "figures" / "reliability.png"
    written = plot_reliability_diagram(before, after, labels, target, title="test")
    assert written == target
    data = target.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000  # axes, two curves and a histogram, not an empty canvas
    assert [p.name for p in target.parent.iterdir()] == ["reliability.png"]  # no temporary file left behind


GOOD = HAND_PROBABILITIES


@pytest.mark.parametrize(
    ("call", "parameter"),
    [
        (lambda folder: fit_temperature(GOOD[:, 0], HAND_LABELS), "probabilities"),            # 1-D
        (lambda folder: fit_temperature(np.ones((4, 1)), np.zeros(4, int)), "probabilities"),  # one class
        (lambda folder: fit_temperature(np.empty((0, 2)), np.empty(0, int)), "probabilities"),
        (lambda folder: fit_temperature(np.where(GOOD == 0.95, np.nan, GOOD), HAND_LABELS), "probabilities"),
        (lambda folder: fit_temperature(np.log(GOOD), HAND_LABELS), "probabilities"),  # logits, not probabilities
        (lambda folder: fit_temperature(GOOD, HAND_LABELS[:3]), "labels"),
        (lambda folder: fit_temperature(GOOD, np.array([0, 1, 2, 1])), "labels"),
        (lambda folder: fit_temperature(GOOD, np.array([0, -1, 1, 1])), "labels"),
        (lambda folder: fit_temperature(GOOD, np.array([0, 0.5, 1, 1])), "labels"),
        (lambda folder: apply_temperature(GOOD, 0.0), "temperature"),
        (lambda folder: apply_temperature(GOOD, float("nan")), "temperature"),
        (lambda folder: calibration_report(GOOD, HAND_LABELS, temperature=-1.0), "temperature"),
        (lambda folder: expected_calibration_error(GOOD, HAND_LABELS, n_bins=0), "n_bins"),
        (lambda folder: reliability_bins(GOOD, HAND_LABELS, n_bins=2.5), "n_bins"),
        (lambda folder: plot_reliability_diagram(GOOD, GOOD[:3], HAND_LABELS, folder / "unused.png"), "after"),
        (lambda folder: plot_reliability_diagram(GOOD * 2, None, HAND_LABELS, folder / "unused.png"), "before"),
    ],
)
def test_bad_input_names_the_parameter(tmp_path: Path, call: Callable[[Path], object], parameter: str) -> None:
    with pytest.raises(ParameterError, match=f"'{parameter}'") as raised:
        call(tmp_path)
    assert raised.value.fix  # every error says how to fix it
    assert not list(tmp_path.iterdir())  # nothing was written
