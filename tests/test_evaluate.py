"""Metrics against scikit-learn, and bootstrap intervals that bracket the point estimate."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
)

from headstart.errors import ParameterError
from headstart.evaluation.metrics import classification_metrics, format_summary


def test_metrics_match_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, 300)
    logits = rng.normal(size=(300, 3)) + 1.5 * np.eye(3)[truth]
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    predicted = probabilities.argmax(1)
    metrics = classification_metrics(truth, probabilities, classes=["a", "b", "c"], n_bootstrap=500)
    assert metrics["accuracy"]["value"] == pytest.approx(accuracy_score(truth, predicted))
    assert metrics["macro_f1"]["value"] == pytest.approx(f1_score(truth, predicted, average="macro"))
    assert metrics["macro_precision"]["value"] == pytest.approx(precision_score(truth, predicted, average="macro"))
    assert metrics["per_class"]["b"]["recall"]["value"] == pytest.approx(recall_score(truth, predicted, average=None)[1])
    assert metrics["confusion_matrix"] == confusion_matrix(truth, predicted).tolist()
    for name in ("accuracy", "macro_f1", "macro_recall"):
        low, high = metrics[name]["ci95"]
        assert low < metrics[name]["value"] < high and high - low < 0.2
    # the interval is about the width binomial theory predicts for n = 300
    p = metrics["accuracy"]["value"]
    assert metrics["accuracy"]["ci95"][1] - metrics["accuracy"]["ci95"][0] == pytest.approx(
        2 * 1.96 * np.sqrt(p * (1 - p) / 300), rel=0.25)
    assert "accuracy" in format_summary(metrics)


def test_shape_mismatch_is_a_clear_error() -> None:
    with pytest.raises(ParameterError, match=r"shape \(2, 3\)"):
        classification_metrics([0, 1], np.ones((2, 2)) / 2, classes=["a", "b", "c"])
