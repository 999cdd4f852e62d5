"""Heads fitted on cached frozen features: the solved linear head, and scikit-learn heads.

A linear probe on frozen features is a convex problem, so instead of running SGD epochs it is solved to
convergence: multinomial logistic regression with an L2 penalty, by full-batch L-BFGS. The penalty is chosen on
the training data alone by stratified k-fold cross-validation of the log loss, with the one-standard-error
rule (the strongest penalty whose CV loss is within one standard error of the best), which favours the simpler
model when the folds cannot tell candidates apart, as they usually cannot with a few hundred images.

Given a :class:`~headstart.features.store.FeatureStore`, a solve is stored under the digest of everything it
reads (feature and label bytes, classes, views, class weights, grid, folds, seed, solver version): a re-run on
the same data reads its head and CV table back instead of solving again (the solve is deterministic, so the
result is the same either way).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from headstart.models.heads import SKLEARN_HEADS, plain_value

if TYPE_CHECKING:
    from headstart.features.store import FeatureStore

__all__ = [
    "L2_GRID",
    "LinearHeadFit",
    "SklearnHeadFit",
    "fit_linear_head",
    "fit_sklearn_head",
]

# Feature tensors smaller than this (elements) are solved on one thread.
SMALL_SOLVE = 4_000_000
# Penalty on 0.5 * ||W||^2 added to the mean cross-entropy; features of ImageNet CNNs have norms of ~10-30.
L2_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
# Part of every stored solve's digest: bump it when the solver's result for the same inputs changes.
SOLVER_VERSION = 2


@dataclass
class LinearHeadFit:
    """A fitted linear head: ``logits = features @ weight.T + bias``."""

    weight: torch.Tensor
    bias: torch.Tensor
    l2: float
    cv: list[dict[str, float]] = field(default_factory=list)
    folds: int = 0

    def summary(self) -> dict[str, Any]:
        return {"l2": self.l2, "selection": f"{self.folds}-fold CV log loss, one-standard-error rule", "cv": self.cv}


def _solve(features: torch.Tensor, labels: torch.Tensor, n_classes: int, l2: float,
           class_weight: torch.Tensor | None, max_iter: int = 200,
           init: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise the (class-weighted) mean cross-entropy + ``0.5 * l2 * ||W||^2`` by L-BFGS from ``init`` (or 0).

    The loss and its gradient are computed in closed form (softmax minus one-hot), without autograd: the
    thousands of closure calls of a cross-validated fit are then two matrix products each.
    """
    dim = features.shape[1]
    start = init if init is not None else (torch.zeros(n_classes, dim, dtype=torch.float64),
                                           torch.zeros(n_classes, dtype=torch.float64))
    # Centred features give the same optimum (the unpenalised bias absorbs the mean: w.(x - m) + b' = w.x + b
    # with b = b' - w.m) and a far better-conditioned problem: pooled CNN features are all positive.
    mean = features.double().mean(dim=0)
    x = features.double() - mean
    weight, bias = start[0].clone().double(), start[1].clone().double() + start[0].double() @ mean
    row_weight = (torch.full((len(labels),), 1.0 / len(labels), dtype=torch.float64) if class_weight is None else
                  class_weight.double()[labels] / class_weight.double()[labels].sum())
    one_hot = nn.functional.one_hot(labels, n_classes).double()
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, tolerance_grad=1e-7,
                                  tolerance_change=1e-10, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        log_p = torch.log_softmax(x @ weight.T + bias, dim=1)
        loss = -(row_weight * (log_p * one_hot).sum(dim=1)).sum() + 0.5 * l2 * (weight**2).sum()
        residual = (log_p.exp() - one_hot) * row_weight[:, None]
        weight.grad = residual.T @ x + l2 * weight
        bias.grad = residual.sum(dim=0)
        return loss

    with torch.no_grad():
        optimizer.step(closure)
    return weight, bias - weight @ mean


def _folds(labels: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Stratified fold index per image."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        fold[members] = np.arange(len(members)) % n_folds
    return fold


def fit_linear_head(
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    n_classes: int,
    n_views: int = 1,
    class_weight: torch.Tensor | None = None,
    grid: tuple[float, ...] = L2_GRID,
    n_folds: int = 5,
    seed: int = 0,
    store: FeatureStore | None = None,
) -> LinearHeadFit:
    """Fit an L2-regularised multinomial logistic regression, choosing the penalty by cross-validation.

    Args:
        features: (n_views * n_images, dim), view-major: rows ``v * n_images + i`` are views of image ``i``.
        labels: matching class indices.
        n_classes: number of classes.
        n_views: views per image; all views of an image fall in the same fold (no leakage across folds).
        class_weight: optional per-class loss weights.
        grid: candidate penalties.
        n_folds: folds (reduced when the smallest class has fewer images).
        seed: fold assignment.
        store: where solves are stored and found again (None: always solve).

    Returns:
        The head refitted on all rows with the chosen penalty, and the CV table.
    """
    features, labels = features.detach().cpu(), labels.detach().cpu()
    options = {"n_classes": n_classes, "n_views": n_views, "grid": list(grid), "n_folds": n_folds, "seed": seed,
               "class_weight": None if class_weight is None else class_weight.detach().cpu().double().tolist()}
    digest = _solve_digest(features, labels, options) if store is not None else ""
    if store is not None and (stored := _stored_fit(store, digest)) is not None:
        return stored
    with _threads_for(features.numel()):
        fit = _fit_linear_head(features, labels, n_classes=n_classes, n_views=n_views, class_weight=class_weight,
                               grid=grid, n_folds=n_folds, seed=seed)
    if store is not None:
        store.add_head(digest, {"weight": fit.weight, "bias": fit.bias},
                       {"l2": fit.l2, "cv": fit.cv, "folds": fit.folds, "options": options})
    return fit


def _solve_digest(features: torch.Tensor, labels: torch.Tensor, options: dict[str, Any]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps({"solver": SOLVER_VERSION, "dtype": str(features.dtype), "shape": list(features.shape),
                              **options}, sort_keys=True).encode())
    digest.update(features.contiguous().numpy().tobytes())
    digest.update(labels.to(torch.int64).contiguous().numpy().tobytes())
    return digest.hexdigest()


def _stored_fit(store: FeatureStore, digest: str) -> LinearHeadFit | None:
    found = store.lookup_head(digest)
    if found is None:
        return None
    tensors, metadata = found
    try:
        return LinearHeadFit(weight=tensors["weight"], bias=tensors["bias"], l2=float(metadata["l2"]),
                             cv=list(metadata["cv"]), folds=int(metadata["folds"]))
    except (KeyError, TypeError, ValueError):
        return None


@contextmanager
def _threads_for(size: int) -> Iterator[None]:
    """One torch thread for small solves: thousands of tiny matrix products gain nothing from a thread pool, and
    on a busy machine its synchronisation made them 14x slower (measured: 73 s vs 5 s for 488 x 1280 features)."""
    previous = torch.get_num_threads()
    if size < SMALL_SOLVE:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _fit_linear_head(features: torch.Tensor, labels: torch.Tensor, *, n_classes: int, n_views: int,
                     class_weight: torch.Tensor | None, grid: tuple[float, ...], n_folds: int, seed: int
                     ) -> LinearHeadFit:
    n_images = len(labels) // n_views
    image_labels = labels[:n_images].numpy()
    smallest = int(np.bincount(image_labels, minlength=n_classes)[np.unique(image_labels)].min())
    folds_used = max(2, min(n_folds, smallest))
    table: list[dict[str, float]] = []
    if smallest >= 2 and len(grid) > 1:
        fold_of_image = _folds(image_labels, folds_used, seed)
        fold = np.tile(fold_of_image, n_views)
        losses: dict[float, list[float]] = {l2: [] for l2 in grid}
        for k in range(folds_used):
            train, held = torch.as_tensor(fold != k), torch.as_tensor(fold_of_image == k)
            solution = None
            # the regularisation path, strongest penalty first: each solve starts from the previous one's
            # optimum, which is close, so it takes a fraction of the iterations a cold start does
            for l2 in sorted(grid, reverse=True):
                solution = _solve(features[train], labels[train], n_classes, l2, class_weight, init=solution)
                # score held-out images on their first (plain) view, as they will be seen at prediction
                logits = features[:n_images][held].double() @ solution[0].T + solution[1]
                losses[l2].append(float(nn.functional.cross_entropy(logits, labels[:n_images][held])))
        table = [{"l2": l2, "cv_log_loss": float(np.mean(losses[l2])),
                  "standard_error": float(np.std(losses[l2], ddof=1) / np.sqrt(len(losses[l2])))} for l2 in grid]
        best = min(table, key=lambda row: row["cv_log_loss"])
        chosen = max(row["l2"] for row in table if row["cv_log_loss"] <= best["cv_log_loss"] + best["standard_error"])
    else:
        chosen = grid[len(grid) // 2]
    weight, bias = _solve(features, labels, n_classes, chosen, class_weight)
    return LinearHeadFit(weight=weight.float(), bias=bias.float(), l2=chosen, cv=table, folds=folds_used if table else 0)


# -- a small MLP head (domain adaptation's bottleneck) ------------------------------------------------------------


# -- scikit-learn heads ---------------------------------------------------------------------------------------
#
# The "frozen features + SVM / random forest" recipe. Each head has sensible defaults and a small grid searched
# by stratified k-fold cross-validation on the training images only; all views of one image (centre crop,
# mirror, augmented crops) stay in one fold, so no held-out image is ever seen mirrored in training.

@dataclass
class SklearnHeadFit:
    """A fitted scikit-learn head (``estimator.predict_proba(features)``) and how it was chosen."""

    name: str
    estimator: Any
    params: dict[str, Any]
    cv: list[dict[str, Any]] = field(default_factory=list)
    folds: int = 0
    scoring: str = "accuracy"

    def summary(self) -> dict[str, Any]:
        return {"head": self.name, "params": self.params, "cv": self.cv,
                "selection": f"{self.folds}-fold CV {self.scoring} on the training images" if self.folds else
                "defaults (too few images per class for cross-validation)"}


def _sklearn_candidates(name: str, *, n_train: int, balanced: bool, seed: int) -> tuple[Any, dict[str, list[Any]]]:
    """The estimator (a Pipeline) and its parameter grid."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import Normalizer, StandardScaler
    from sklearn.svm import SVC, LinearSVC

    weight = "balanced" if balanced else None
    if name == "logistic":
        return (Pipeline([("scale", StandardScaler()), ("model", LogisticRegression(max_iter=3000, class_weight=weight))]),
                {"model__C": [0.01, 0.1, 1.0, 10.0]})
    if name == "linear_svm":
        return (Pipeline([("scale", StandardScaler()),
                          ("model", LinearSVC(max_iter=20000, class_weight=weight, random_state=seed))]),
                {"model__C": [1e-4, 1e-3, 1e-2, 1e-1]})
    if name == "rbf_svm":
        return (Pipeline([("scale", StandardScaler()), ("model", SVC(kernel="rbf", gamma="scale", class_weight=weight))]),
                {"model__C": [0.3, 1.0, 3.0, 10.0]})
    if name == "random_forest":
        return (RandomForestClassifier(n_estimators=200, class_weight=weight, n_jobs=-1, random_state=seed),
                {"max_features": ["sqrt", 0.05]})
    # knn: cosine neighbours (L2-normalised features), the usual metric for CNN embeddings
    neighbours = sorted({k for k in (1, 5, 10, 20) if k < max(2, n_train // 2)}) or [1]
    return (Pipeline([("normalize", Normalizer()),
                      ("model", KNeighborsClassifier(algorithm="brute", weights="distance"))]),
            {"model__n_neighbors": neighbours})


def fit_sklearn_head(
    name: str,
    features: np.ndarray,
    labels: np.ndarray,
    *,
    n_views: int = 1,
    class_weight: bool = False,
    n_folds: int = 5,
    seed: int = 0,
) -> SklearnHeadFit:
    """Fit one of :data:`SKLEARN_HEADS` on features, choosing its hyper-parameters by cross-validation.

    Args:
        name: ``logistic``, ``linear_svm``, ``rbf_svm``, ``random_forest`` or ``knn``.
        features: (n_views * n_images, dim), view-major (rows ``v * n_images + i`` are views of image ``i``).
        labels: matching class indices.
        n_views: views per image; views of one image share a fold.
        class_weight: weight classes by inverse frequency and select by balanced accuracy (imbalanced data).
        n_folds: folds (reduced when the smallest class has fewer images).
        seed: fold assignment and the estimators' randomness.

    Returns:
        The estimator refitted on all rows with the chosen parameters (SVMs wrapped in Platt scaling so they
        give probabilities), with the CV table.

    Raises:
        ParameterError: unknown ``name``.

    >>> rng = np.random.default_rng(0)
    >>> x = np.concatenate([rng.normal(0, 1, (20, 4)), rng.normal(3, 1, (20, 4))]); y = np.repeat([0, 1], 20)
    >>> fit = fit_sklearn_head("knn", x, y)
    >>> fit.estimator.predict_proba(x[:1]).shape, fit.folds
    ((1, 2), 5)
    """
    from sklearn.base import clone
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.model_selection import GridSearchCV

    from headstart.errors import check_choice

    check_choice("fit_sklearn_head", "head", name, SKLEARN_HEADS)
    features = np.asarray(features, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    n_images = len(labels) // n_views
    image_labels = labels[:n_images]
    smallest = int(np.bincount(image_labels)[np.unique(image_labels)].min())
    folds_used = max(2, min(n_folds, smallest))
    estimator, grid = _sklearn_candidates(name, n_train=n_images, balanced=class_weight, seed=seed)
    scoring = "balanced_accuracy" if class_weight else "accuracy"
    table: list[dict[str, Any]] = []
    params: dict[str, Any] = {}
    if smallest >= 2:
        fold = np.tile(_folds(image_labels, folds_used, seed), n_views)
        # score held-out images on their plain view only: extra views are training augmentation
        test_fold = np.where(np.arange(len(labels)) < n_images, fold, -1)
        splits = [(np.flatnonzero(fold != k), np.flatnonzero(test_fold == k)) for k in range(folds_used)]
        search = GridSearchCV(estimator, grid, scoring=scoring, cv=splits, n_jobs=1, refit=False)
        search.fit(features, labels)
        results = search.cv_results_
        table = [{"params": {k: plain_value(v) for k, v in p.items()}, "cv_score": float(m), "std": float(s)}
                 for p, m, s in zip(results["params"], results["mean_test_score"], results["std_test_score"])]
        params = {k: plain_value(v) for k, v in search.best_params_.items()}
    final = clone(estimator).set_params(**params)
    if name in ("linear_svm", "rbf_svm"):
        # Platt scaling on out-of-fold decision values, one model refitted on everything (ensemble=False)
        calibration_folds = max(2, min(3, smallest))
        final = CalibratedClassifierCV(final, method="sigmoid", cv=calibration_folds, ensemble=False)
    final.fit(features, labels)
    return SklearnHeadFit(name=name, estimator=final, params=params, cv=table, folds=folds_used if table else 0,
                          scoring=scoring)
