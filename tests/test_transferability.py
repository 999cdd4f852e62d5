"""LogME, the cross-validated linear probe and Kendall's tau (headstart.selection.transferability).

LogME is checked against references written here from the formula alone: the closed-form log evidence maximised
by a brute-force grid, and a naive d x d fixed-point iteration that uses no eigendecomposition.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import pytest

from headstart.errors import DataError, HeadstartError, ParameterError
from headstart.selection.transferability import (
    _MAX_ITERATIONS,
    _RELATIVE_TOLERANCE,
    _class_evidences,
    cv_linear_probe_accuracy,
    kendall_tau,
    logme_score,
)


def naive_log_evidence(features: np.ndarray, target: np.ndarray, alpha: float, beta: float) -> float:
    """Bishop's (3.86): the log evidence of Bayesian linear regression, straight from its definition."""
    n, d = features.shape
    a_matrix = alpha * np.eye(d) + beta * features.T @ features
    mean = beta * np.linalg.solve(a_matrix, features.T @ target)
    residual = target - features @ mean
    return float(
        d / 2 * math.log(alpha) + n / 2 * math.log(beta) - n / 2 * math.log(2 * math.pi)
        - beta / 2 * residual @ residual - alpha / 2 * mean @ mean - 0.5 * np.linalg.slogdet(a_matrix)[1]
    )


def dual_log_evidence(features: np.ndarray, target: np.ndarray, alpha: float, beta: float) -> float:
    """The same evidence as the Gaussian marginal likelihood y ~ N(0, I / beta + F F^T / alpha) (n x n form)."""
    covariance = np.eye(len(target)) / beta + features @ features.T / alpha
    return float(-0.5 * np.linalg.slogdet(covariance)[1] - 0.5 * target @ np.linalg.solve(covariance, target)
                 - len(target) / 2 * math.log(2 * math.pi))


def naive_logme(features: np.ndarray, labels: np.ndarray, *, form: str) -> float:
    """LogME from the textbook formulas, one class at a time, without any eigendecomposition.

    ``form="primal"`` builds the d x d A = alpha I + beta F^T F and updates alpha, beta with MacKay's
    gamma = d - alpha trace(A^-1) (Bishop 3.91-3.95); ``form="dual"`` works with the n x n marginal covariance
    C = I / beta + F F^T / alpha, where y - F m = C^-1 y / beta and n - gamma = trace(C^-1) / beta (stable
    when n <= d, where the primal trace loses its digits). Same start and cap as the module; it stops when
    alpha / beta or the evidence stops moving, instead of bounding alpha / beta.
    """
    features = np.asarray(features, dtype=np.float64)
    n, d = features.shape
    evidences = []
    evidence_at = naive_log_evidence if form == "primal" else dual_log_evidence
    for c in np.unique(labels):
        target = (labels == c).astype(np.float64)
        alpha, beta = 1.0, 1.0
        evidence = evidence_at(features, target, alpha, beta)
        for _ in range(_MAX_ITERATIONS):
            if form == "primal":
                a_inverse = np.linalg.inv(alpha * np.eye(d) + beta * features.T @ features)
                mean = beta * a_inverse @ features.T @ target
                gamma = d - alpha * np.trace(a_inverse)
                unexplained = n - gamma
                residual = target - features @ mean
            else:
                c_inverse = np.linalg.inv(np.eye(n) / beta + features @ features.T / alpha)
                dual = c_inverse @ target
                mean = features.T @ dual / alpha
                unexplained = np.trace(c_inverse) / beta
                gamma = n - unexplained
                residual = dual / beta
            new_alpha, new_beta = gamma / (mean @ mean), unexplained / (residual @ residual)
            converged = abs(new_alpha / new_beta - alpha / beta) <= _RELATIVE_TOLERANCE * alpha / beta
            alpha, beta = new_alpha, new_beta
            new_evidence = evidence_at(features, target, alpha, beta)
            # Stop also when the evidence no longer moves: on the way to a boundary (beta -> infinity) it
            # converges long before alpha / beta does.
            if converged or abs(new_evidence - evidence) <= 1e-13 * max(1.0, abs(evidence)):
                break
            evidence = new_evidence
        evidences.append(new_evidence)
    return float(np.mean(evidences) / n)


def clustered(
    n: int, d: int, *, n_classes: int = 3, separation: float = 2.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Features whose class means are separated, plus unit Gaussian noise; labels balanced-ish at random."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % n_classes)
    means = separation * rng.normal(size=(n_classes, d))
    return means[labels] + rng.normal(size=(n, d)), labels


# --- LogME against references ------------------------------------------------------------------------------------


def test_logme_matches_brute_force_grid_maximum_of_the_evidence() -> None:
    features, labels = clustered(40, 5, seed=1)
    evidences, alphas, betas = _class_evidences(features, labels)
    for index, c in enumerate(np.unique(labels)):
        target = (labels == c).astype(np.float64)
        # The value reported is the closed-form evidence at the alpha, beta the iteration stopped at ...
        assert evidences[index] == pytest.approx(naive_log_evidence(features, target, alphas[index], betas[index]),
                                                 rel=1e-10)
        # ... and that point is the maximum: zoom a 41 x 41 grid over (log alpha, log beta) in on the best cell.
        centre, half_width = np.array([0.0, 0.0]), 12.0
        best_value, best_point = -np.inf, centre
        for _ in range(6):
            for log_alpha in np.linspace(centre[0] - half_width, centre[0] + half_width, 41):
                for log_beta in np.linspace(centre[1] - half_width, centre[1] + half_width, 41):
                    value = naive_log_evidence(features, target, math.exp(log_alpha), math.exp(log_beta))
                    if value > best_value:
                        best_value, best_point = value, np.array([log_alpha, log_beta])
            centre, half_width = best_point, half_width / 8
        assert best_value <= evidences[index] + 1e-9  # nothing on the grid beats the fixed point
        assert best_value == pytest.approx(evidences[index], abs=1e-6)
        assert best_point == pytest.approx([math.log(alphas[index]), math.log(betas[index])], abs=1e-2)
    assert logme_score(features, labels) == pytest.approx(evidences.mean() / 40, rel=1e-12)


@pytest.mark.parametrize(
    ("n", "d", "form"),
    [(200, 20, "primal"), (60, 60, "primal"), (60, 60, "dual"), (30, 80, "dual"), (12, 300, "dual")],
    ids=["n>d", "n=d-primal", "n=d-dual", "n<d", "n<<d"],
)
def test_logme_matches_a_naive_implementation(n: int, d: int, form: str) -> None:
    features, labels = clustered(n, d, seed=n + d)
    assert logme_score(features, labels) == pytest.approx(naive_logme(features, labels, form=form), rel=1e-8)


def test_logme_handles_rank_deficient_features_like_the_naive_implementation() -> None:
    features, labels = clustered(80, 6, seed=3)
    features = np.hstack([features, features[:, :2] + features[:, 2:4], np.zeros((80, 2))])  # rank 6 of 10
    assert logme_score(features, labels) == pytest.approx(naive_logme(features, labels, form="dual"), rel=1e-8)


def test_logme_reaches_the_supremum_when_the_features_interpolate_the_labels() -> None:
    # With n < d the labels are exactly linear in the features, and the evidence may rise towards the noise-free
    # limit (beta -> infinity) without a maximum. The supremum is the larger of the best interior point found
    # by a generic optimiser and that limit: max over alpha of log N(y | 0, F F^T / alpha), in closed form.
    from scipy.optimize import minimize

    n = 30
    features, labels = clustered(n, 80, seed=110)
    kernel = features @ features.T
    evidences, _, _ = _class_evidences(features, labels)
    at_the_limit = 0
    for index, c in enumerate(np.unique(labels)):
        target = (labels == c).astype(np.float64)
        def negative_evidence(log_parameters: np.ndarray, target: np.ndarray = target) -> float:
            return -dual_log_evidence(features, target, math.exp(log_parameters[0]), math.exp(log_parameters[1]))

        result = minimize(negative_evidence, x0=[0.0, 0.0], method="L-BFGS-B", bounds=[(-20.0, 40.0), (-20.0, 40.0)])
        best_alpha = n / (target @ np.linalg.solve(kernel, target))
        noise_free = float(-0.5 * np.linalg.slogdet(kernel / best_alpha)[1] - n / 2 - n / 2 * math.log(2 * math.pi))
        supremum = max(-result.fun, noise_free)
        at_the_limit += noise_free > -result.fun
        assert evidences[index] == pytest.approx(supremum, abs=1e-8 * n)
    assert at_the_limit > 0  # the case this test is about does occur in this data


def test_logme_stays_finite_when_the_labels_are_exactly_linear_in_the_features() -> None:
    # One-hot columns among the features: the evidence grows without bound as the noise variance goes to 0.
    labels = np.repeat([0, 1, 2], 20)
    features = np.hstack([np.eye(3)[labels], np.random.default_rng(10).normal(size=(60, 2))])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division by zero or overflow on the way
        score = logme_score(features, labels)
    assert math.isfinite(score)
    assert score > logme_score(features[:, 3:], labels) + 5.0


# --- LogME orderings and invariances -----------------------------------------------------------------------------


def test_logme_prefers_features_that_encode_the_labels() -> None:
    features, labels = clustered(300, 16, separation=1.5, seed=4)
    rng = np.random.default_rng(5)
    informative = logme_score(features, labels)
    shuffled_labels = logme_score(features, rng.permutation(labels))
    pure_noise = logme_score(rng.normal(size=features.shape) * features.std(), labels)
    assert informative > shuffled_labels + 0.1
    assert informative > pure_noise + 0.1
    # More separation, more evidence.
    assert logme_score(*clustered(300, 16, separation=3.0, seed=4)) > informative


def test_logme_is_invariant_to_sample_order_label_values_and_input_dtype() -> None:
    features, labels = clustered(120, 10, seed=6)
    score = logme_score(features, labels)
    order = np.random.default_rng(7).permutation(len(labels))
    assert logme_score(features[order], labels[order]) == pytest.approx(score, rel=1e-10)
    assert logme_score(features, np.array([3, 7, 42])[labels]) == pytest.approx(score, rel=1e-12)
    as_float32 = features.astype(np.float32)
    assert logme_score(as_float32, labels) == pytest.approx(logme_score(as_float32.astype(np.float64), labels),
                                                            rel=1e-12)


def test_logme_of_all_zero_features_is_the_evidence_of_pure_noise() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 2])
    n = len(labels)
    expected = []
    for c in range(3):
        target_norm2 = float((labels == c).sum())
        beta = n / target_norm2  # y ~ N(0, I / beta), beta at its maximum
        expected.append(n / 2 * math.log(beta) - beta / 2 * target_norm2 - n / 2 * math.log(2 * math.pi))
    assert logme_score(np.zeros((n, 4)), labels) == pytest.approx(np.mean(expected) / n, rel=1e-12)


# --- real data ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    features, labels = load_digits(return_X_y=True)
    return features, labels


def test_logme_ranks_digit_pixels_above_random_features(digits: tuple[np.ndarray, np.ndarray]) -> None:
    features, labels = digits
    random_features = np.random.default_rng(0).normal(size=features.shape)
    pixels = logme_score(features, labels)
    assert pixels > logme_score(random_features, labels) + 0.2
    assert pixels == pytest.approx(naive_logme(features, labels, form="primal"), rel=1e-8)


def test_cv_linear_probe_accuracy_on_digits(digits: tuple[np.ndarray, np.ndarray]) -> None:
    features, labels = digits
    accuracy = cv_linear_probe_accuracy(features, labels)
    assert 0.9 < accuracy <= 1.0
    chance_level = cv_linear_probe_accuracy(np.random.default_rng(0).normal(size=features.shape), labels)
    assert chance_level < 0.3
    assert cv_linear_probe_accuracy(features, labels, seed=0) == accuracy  # reproducible


def test_cv_linear_probe_uses_fewer_folds_when_a_class_is_small() -> None:
    features, labels = clustered(60, 4, seed=8)
    features, labels = features[:-1], labels[:-1]
    small = np.flatnonzero(labels == 0)[3:]  # leave class 0 with 3 samples
    keep = np.setdiff1d(np.arange(len(labels)), small)
    with warnings.catch_warnings():
        # scikit-learn warns when a class has fewer members than n_splits; the folds must have been reduced.
        warnings.simplefilter("error")
        accuracy = cv_linear_probe_accuracy(features[keep], labels[keep], n_folds=5)
    assert 0.0 <= accuracy <= 1.0


# --- Kendall's tau -----------------------------------------------------------------------------------------------


def test_kendall_tau_values() -> None:
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # One discordant pair out of six: (5 - 1) / 6.
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    for a, b in [([1.0], [2.0]), ([1, 2, 3], [5, 5, 5]), ([1, 2, float("nan")], [1, 2, 3]), ([], [])]:
        assert math.isnan(kendall_tau(a, b))


# --- bad input ---------------------------------------------------------------------------------------------------

GOOD_FEATURES, GOOD_LABELS = clustered(20, 3, seed=9)
NAN_FEATURES = GOOD_FEATURES.copy()
NAN_FEATURES[4, 1] = np.nan

BAD_CALLS: list[tuple[str, Callable[[], object], type[HeadstartError], str]] = [
    ("features 1-D", lambda: logme_score(GOOD_FEATURES[:, 0], GOOD_LABELS), ParameterError, "'features'"),
    ("features text", lambda: logme_score(GOOD_FEATURES.astype(str), GOOD_LABELS), ParameterError, "'features'"),
    ("features NaN", lambda: logme_score(NAN_FEATURES, GOOD_LABELS), DataError, "'features'"),
    ("one sample", lambda: logme_score(GOOD_FEATURES[:1], GOOD_LABELS[:1]), DataError, "'features'"),
    ("labels 2-D", lambda: logme_score(GOOD_FEATURES, np.eye(3)[GOOD_LABELS]), ParameterError, "'labels'"),
    ("labels float", lambda: logme_score(GOOD_FEATURES, GOOD_LABELS * 1.0), ParameterError, "'labels'"),
    ("labels short", lambda: logme_score(GOOD_FEATURES, GOOD_LABELS[:-1]), ParameterError, "'labels'"),
    ("one class", lambda: logme_score(GOOD_FEATURES, np.zeros(20, dtype=int)), DataError, "'labels'"),
    ("cv n_folds", lambda: cv_linear_probe_accuracy(GOOD_FEATURES, GOOD_LABELS, n_folds=1), ParameterError,
     "'n_folds'"),
    ("cv singleton class", lambda: cv_linear_probe_accuracy(GOOD_FEATURES, np.r_[GOOD_LABELS[:-1], 5]), DataError,
     "'labels'"),
    ("cv features NaN", lambda: cv_linear_probe_accuracy(NAN_FEATURES, GOOD_LABELS), DataError, "'features'"),
    ("tau lengths", lambda: kendall_tau([1, 2, 3], [1, 2]), ParameterError, "'a' and 'b'"),
]


@pytest.mark.parametrize(("call", "error", "name"), [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_bad_input_raises_a_project_error_naming_the_parameter(
    call: Callable[[], object], error: type[HeadstartError], name: str
) -> None:
    with pytest.raises(error) as raised:
        call()
    assert name in raised.value.message
    assert "Got" in raised.value.message
    assert raised.value.fix
