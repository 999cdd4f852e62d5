"""How well will a backbone transfer? Scores computed from its frozen features, before any fine-tuning.

:func:`logme_score` is LogME (You, Liu, Wang and Long, "LogME: Practical Assessment of Pre-trained Models for
Transfer Learning", ICML 2021): the maximised marginal likelihood (evidence) of a Bayesian linear model from
features to one-hot labels. It needs no training and no hyper-parameter, and costs one eigendecomposition.
:func:`cv_linear_probe_accuracy` is the slower, more familiar number: cross-validated accuracy of a logistic
regression on the same features. :func:`kendall_tau` says whether two ways of ranking backbones agree.

Features in, numbers out: this module imports no training code and no torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from headstart.errors import DataError, ParameterError

__all__ = ["cv_linear_probe_accuracy", "kendall_tau", "logme_score"]

# The fixed-point iteration on t = alpha / beta usually settles to machine precision in 5-20 steps. It may
# instead head for a boundary, where the evidence has a supremum but no maximum: t -> 0 (noise-free fit) when
# the features can interpolate the labels (rank n, usual when n <= d), t -> infinity (w = 0) when a class is
# unrelated to the features. Keeping t between 1e-12 times the smallest and 1e12 times the largest nonzero
# eigenvalue of F^T F ends those walks with the evidence about 1e-12 from its limit. (The paper's code adds
# 1e-5 to the denominators instead, which depends on the scale of the features.) Only when the labels are an
# exact linear function of features of rank < n is the supremum infinite; the bound then makes the score finite
# but large.
_MAX_ITERATIONS = 500
_RELATIVE_TOLERANCE = 1e-10
_RATIO_BOUND = 1e12


def _validate_features_and_labels(function: str, features: object, labels: object) -> tuple[np.ndarray, np.ndarray]:
    """Features as float64 (n, d) and labels as int64 (n,), or a :class:`ParameterError` / :class:`DataError`."""
    features_array = np.asarray(features)
    if features_array.ndim != 2:
        raise ParameterError(
            f"The 'features' parameter of {function} must be a 2-D array of shape (n_samples, n_features). "
            f"Got an array of shape {features_array.shape}.",
            fix="Pass one row per sample; reshape a single sample with features.reshape(1, -1).",
        )
    if not (np.issubdtype(features_array.dtype, np.number) or features_array.dtype == np.bool_):
        raise ParameterError(
            f"The 'features' parameter of {function} must hold numbers. Got dtype {features_array.dtype}.",
            fix="Convert the features to a float array, e.g. np.asarray(features, dtype=np.float64).",
        )
    features_array = features_array.astype(np.float64)
    labels_array = np.asarray(labels)
    if labels_array.ndim != 1:
        raise ParameterError(
            f"The 'labels' parameter of {function} must be a 1-D array of class indices. "
            f"Got an array of shape {labels_array.shape}.",
            fix="Pass one integer class index per sample; turn one-hot rows into indices with labels.argmax(axis=1).",
        )
    if not np.issubdtype(labels_array.dtype, np.integer):
        raise ParameterError(
            f"The 'labels' parameter of {function} must hold integer class indices. Got dtype {labels_array.dtype}.",
            fix="Encode the class names as indices with np.unique(labels, return_inverse=True)[1].",
        )
    if len(labels_array) != len(features_array):
        raise ParameterError(
            f"The 'labels' parameter of {function} must have one entry per row of 'features' "
            f"({len(features_array)}). Got {len(labels_array)} labels.",
            fix="Pass the labels of exactly the samples whose features you pass, in the same order.",
        )
    if len(features_array) < 2:
        raise DataError(
            f"The 'features' parameter of {function} needs at least 2 samples. Got {len(features_array)}.",
            fix="Score a backbone on a labelled set of at least a few samples per class.",
        )
    if features_array.shape[1] < 1:
        raise ParameterError(
            f"The 'features' parameter of {function} must have at least 1 feature column. Got shape "
            f"{features_array.shape}.",
            fix="Check the feature extraction: it returned empty feature vectors.",
        )
    if not np.isfinite(features_array).all():
        bad_rows = np.flatnonzero(~np.isfinite(features_array).all(axis=1))
        raise DataError(
            f"The 'features' parameter of {function} must be finite. Got NaN or infinite values in "
            f"{len(bad_rows)} row(s), the first at row {int(bad_rows[0])}.",
            fix="Drop those samples or recompute their features (NaNs often come from float16 overflow).",
        )
    n_classes = len(np.unique(labels_array))
    if n_classes < 2:
        raise DataError(
            f"The 'labels' parameter of {function} must contain at least 2 classes. Got {n_classes}.",
            fix="Score the backbone on a labelled set with two or more classes.",
        )
    return features_array, labels_array.astype(np.int64)


def _eigen_projection(features: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nonzero squared singular values ``sigma`` of ``features`` and the targets in its left singular basis.

    With ``features = U diag(sqrt(sigma)) V^T`` (only the numerically nonzero part kept), returns ``sigma`` of
    shape (k,) and ``U^T targets`` of shape (k, n_targets). It eigendecomposes the smaller Gram matrix: the
    d x d ``F^T F`` when n >= d (then ``U^T y = V^T F^T y / sqrt(sigma)``) or the n x n ``F F^T`` when n < d.
    """
    n, d = features.shape
    if n >= d:
        sigma, right = np.linalg.eigh(features.T @ features)
    else:
        sigma, left = np.linalg.eigh(features @ features.T)
    # Eigenvalues of a Gram matrix are accurate to about eps * sigma_max; anything below is numerically zero,
    # and a zero singular direction adds nothing to the evidence (its term log(1 + sigma / t) is 0).
    keep = sigma > max(sigma.max(initial=0.0), 0.0) * max(n, d) * np.finfo(np.float64).eps
    if not keep.any():
        return np.zeros(0), np.zeros((0, targets.shape[1]))
    sigma = sigma[keep]
    if n >= d:
        projected = (right[:, keep].T @ (features.T @ targets)) / np.sqrt(sigma)[:, None]
    else:
        projected = left[:, keep].T @ targets
    return sigma, projected


def _class_evidences(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maximised log evidence (not divided by n), alpha and beta of each class's one-vs-rest regression.

    Arrays of shape (n_classes,), classes in the order of ``np.unique(labels)``. Inputs are already validated.
    """
    n = features.shape[0]
    classes = np.unique(labels)
    targets = (labels[:, None] == classes[None, :]).astype(np.float64)  # one-hot, (n, C)
    sigma, projected = _eigen_projection(features, targets)
    squared = projected**2  # x_i^2, (k, C)
    # The part of y orthogonal to the feature columns is never explained, whatever alpha and beta are. It is
    # exactly 0 when those columns span R^n (rank n, usual when n <= d); the subtraction would leave ~1e-15 of
    # rounding there, which swamps the vanishing residual of a near noise-free fit and stalls the iteration.
    if len(sigma) == n:
        outside_norm2 = np.zeros(len(classes))
    else:
        outside_norm2 = np.maximum((targets**2).sum(axis=0) - squared.sum(axis=0), 0.0)
    if len(sigma):
        lowest, highest = sigma.min() / _RATIO_BOUND, sigma.max() * _RATIO_BOUND
    else:  # all-zero features: the evidence does not depend on alpha at all
        lowest = highest = 1.0

    def fit_terms(ratio: np.ndarray, columns: np.ndarray) -> tuple[np.ndarray, ...]:
        # In the singular basis, with t = alpha / beta: m = V diag(s / (sigma + t)) x and
        # y - F m = U diag(t / (sigma + t)) x + (the part of y outside the span of U).
        x2, shrink = squared[:, columns], ratio[None, :] / (sigma[:, None] + ratio[None, :])  # t / (sigma + t)
        gamma = (1.0 - shrink).sum(axis=0)
        # n - gamma summed directly rather than subtracted: when n <= d, gamma is within a hair of n and the
        # subtraction would lose most digits of beta's numerator.
        unexplained = (n - len(sigma)) + shrink.sum(axis=0)
        weight_norm2 = (x2 * (1.0 - shrink) ** 2 / sigma[:, None]).sum(axis=0)
        residual_norm2 = (x2 * shrink**2).sum(axis=0) + outside_norm2[columns]
        return gamma, unexplained, weight_norm2, residual_norm2

    # The paper's iteration, from alpha = beta = 1: alpha <- gamma / ||m||^2, beta <- (n - gamma) / ||y - F m||^2.
    ratio = np.ones(len(classes))
    # A converged class is frozen, so its score ignores the other classes. Without features there is no alpha.
    active = np.arange(len(classes) if len(sigma) else 0)
    for _ in range(_MAX_ITERATIONS):
        gamma, unexplained, weight_norm2, residual_norm2 = fit_terms(ratio[active], active)
        with np.errstate(divide="ignore"):  # ||m|| = 0 (labels orthogonal to the features): alpha = inf
            alpha = gamma / weight_norm2
        beta = unexplained / residual_norm2  # > 0: t > 0 and each class has a sample, so the residual is > 0
        new_ratio = np.clip(alpha / beta, lowest, highest)
        moving = np.abs(new_ratio - ratio[active]) > _RELATIVE_TOLERANCE * ratio[active]
        ratio[active] = new_ratio
        active = active[moving]
        if len(active) == 0:
            break

    # At the final t, beta = n / (||y - F m||^2 + t ||m||^2) maximises the evidence over beta (at a fixed point
    # of the iteration it equals (n - gamma) / ||y - F m||^2), and alpha = t beta.
    everything = np.arange(len(classes))
    _, _, weight_norm2, residual_norm2 = fit_terms(ratio, everything)
    beta = n / (residual_norm2 + ratio * weight_norm2)
    alpha = ratio * beta
    # d/2 log(alpha) - 1/2 log|alpha I + beta F^T F| = -1/2 sum_i log(1 + sigma_i / t) over the d eigenvalues of
    # F^T F; the zero ones contribute nothing, which is why the n < d case needs only the n x n Gram matrix.
    log_determinant_term = -0.5 * np.log1p(sigma[:, None] / ratio[None, :]).sum(axis=0)
    evidence = (
        log_determinant_term
        + 0.5 * n * np.log(beta)
        - 0.5 * beta * residual_norm2
        - 0.5 * alpha * weight_norm2
        - 0.5 * n * math.log(2.0 * math.pi)
    )
    return evidence, alpha, beta


def logme_score(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME: the mean over classes of the maximised log evidence of a Bayesian linear model, per sample.

    For each class c, the targets are y = 1[label == c] (one-hot column) and the model is
    y = F w + noise with prior w ~ N(0, I / alpha) and noise ~ N(0, I / beta). With F of shape (n, d),
    A = alpha I + beta F^T F and m = beta A^{-1} F^T y, the log evidence is::

        L(alpha, beta) = d/2 log alpha + n/2 log beta - n/2 log 2 pi
                         - beta/2 ||y - F m||^2 - alpha/2 ||m||^2 - 1/2 log|A|

    It is maximised by the paper's fixed-point iteration (from alpha = beta = 1):
    gamma = sum_i beta s_i / (alpha + beta s_i), alpha <- gamma / ||m||^2, beta <- (n - gamma) / ||y - F m||^2,
    where s_i are the eigenvalues of F^T F, until t = alpha / beta changes by less than 1e-10 (relative; at most
    500 steps). All terms are evaluated in the singular basis of F, from the d x d Gram matrix when n >= d or
    the n x n one when n < d. The score is (1 / C) sum_c L_c(alpha_c, beta_c) / n; higher
    means the features explain the labels better. No bias term and no centring, as in the paper: compare
    backbones with features preprocessed the same way. Computed in float64.

    Args:
        features: frozen features, shape (n_samples, n_features), finite numbers.
        labels: integer class index of each sample, shape (n_samples,); any integers, at least 2 distinct.

    Returns:
        The LogME score (a log-likelihood per sample: usually between about -2 and 2, comparable only on the
        same labelled data). Where the evidence has a supremum but no maximum (t -> 0 or infinity), the
        iteration walks towards it and stops at a bound on t that leaves it a negligible distance away: t is kept
        within [1e-12, 1e12] times the range of
        the nonzero eigenvalues of F^T F. If the labels are an exact linear function of features of rank < n,
        the supremum is infinite and the score is large (the value at the bound).

    Raises:
        ParameterError: ``features`` not 2-D numbers, ``labels`` not 1-D integers, or their lengths differ.
        DataError: fewer than 2 samples, fewer than 2 classes, or NaN / infinite features.

    >>> rng = np.random.default_rng(0)
    >>> labels = np.repeat([0, 1, 2], 30)
    >>> informative = np.eye(3)[labels] @ rng.normal(size=(3, 8)) + 0.3 * rng.normal(size=(90, 8))
    >>> noise = rng.normal(size=(90, 8))
    >>> logme_score(informative, labels) > logme_score(noise, labels)
    True
    """
    features, labels = _validate_features_and_labels("logme_score", features, labels)
    evidence, _, _ = _class_evidences(features, labels)
    return float(evidence.mean() / features.shape[0])


def cv_linear_probe_accuracy(features: np.ndarray, labels: np.ndarray, *, n_folds: int = 5, seed: int = 0) -> float:
    """Stratified k-fold cross-validated accuracy of a standardised multinomial logistic regression.

    The probe is ``StandardScaler`` then ``LogisticRegression(C=1.0, max_iter=1000)`` (scikit-learn), refitted
    on each training fold. The folds are shuffled with ``seed``; if the smallest class has fewer than
    ``n_folds`` samples, that many folds are used instead (never fewer than 2).

    Args:
        features: frozen features, shape (n_samples, n_features), finite numbers.
        labels: integer class index of each sample, shape (n_samples,).
        n_folds: number of folds, at least 2.
        seed: seed of the fold shuffling.

    Returns:
        Mean accuracy over the folds, in [0, 1].

    Raises:
        ParameterError: bad shapes or types (as in :func:`logme_score`), or ``n_folds`` not an integer >= 2.
        DataError: NaN / infinite features, fewer than 2 classes, or a class with fewer than 2 samples.

    >>> rng = np.random.default_rng(0)
    >>> labels = np.repeat([0, 1], 20)
    >>> features = 3.0 * labels[:, None] + rng.normal(size=(40, 4))
    >>> cv_linear_probe_accuracy(features, labels, n_folds=4) > 0.9
    True
    """
    if isinstance(n_folds, bool) or not isinstance(n_folds, (int, np.integer)) or n_folds < 2:
        raise ParameterError(
            f"The 'n_folds' parameter of cv_linear_probe_accuracy must be an integer >= 2. Got {n_folds!r}.",
            fix="Use n_folds=5 (the default), or at least 2.",
        )
    features, labels = _validate_features_and_labels("cv_linear_probe_accuracy", features, labels)
    classes, counts = np.unique(labels, return_counts=True)
    if counts.min() < 2:
        rare = [int(c) for c in classes[counts < 2]]
        raise DataError(
            f"The 'labels' parameter of cv_linear_probe_accuracy must have at least 2 samples per class to "
            f"cross-validate. Got a single sample for class(es) {rare}.",
            fix="Add samples to those classes or drop them before scoring.",
        )
    # Imported here so that importing headstart.selection.transferability stays cheap.
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = StratifiedKFold(n_splits=int(min(n_folds, counts.min())), shuffle=True, random_state=seed)
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
    return float(cross_val_score(probe, features, labels, cv=folds, scoring="accuracy").mean())


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b rank correlation of two score lists (e.g. LogME vs fine-tuned accuracy of backbones).

    Args:
        a: one score per item.
        b: another score per item, same length and order.

    Returns:
        tau in [-1, 1]; ``nan`` when it is undefined (fewer than 2 items, a constant list, or NaN scores).

    Raises:
        ParameterError: ``a`` and ``b`` are not 1-D or have different lengths.

    >>> kendall_tau([0.1, 0.5, 0.9], [1.0, 2.0, 3.0])
    1.0
    >>> kendall_tau([1.0, 2.0], [5.0, 5.0])
    nan
    """
    first = np.asarray(a, dtype=np.float64)
    second = np.asarray(b, dtype=np.float64)
    if first.ndim != 1 or second.ndim != 1 or len(first) != len(second):
        raise ParameterError(
            f"The 'a' and 'b' parameters of kendall_tau must be 1-D sequences of the same length. "
            f"Got shapes {first.shape} and {second.shape}.",
            fix="Pass one score per item in each list, in the same item order.",
        )
    if (
        len(first) < 2
        or not (np.isfinite(first).all() and np.isfinite(second).all())
        or np.ptp(first) == 0
        or np.ptp(second) == 0
    ):
        return float("nan")
    from scipy.stats import kendalltau

    return float(kendalltau(first, second).statistic)
