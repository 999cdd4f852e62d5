"""Heads fitted on cached frozen features.

A linear probe on frozen features is a convex problem, so instead of running SGD epochs it is solved to
convergence: multinomial logistic regression with an L2 penalty, by full-batch L-BFGS. The penalty is chosen on
the training data alone by stratified k-fold cross-validation of the log loss, with the one-standard-error
rule (the strongest penalty whose CV loss is within one standard error of the best), which favours the simpler
model when the folds cannot tell candidates apart, as they usually cannot with a few hundred images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["LinearHeadFit", "fit_linear_head", "L2_GRID"]

# Penalty on 0.5 * ||W||^2 added to the mean cross-entropy; features of ImageNet CNNs have norms of ~10-30.
L2_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)


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
           class_weight: torch.Tensor | None, max_iter: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    dim = features.shape[1]
    weight = torch.zeros(n_classes, dim, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    x = features.double()
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, tolerance_grad=1e-7,
                                  tolerance_change=1e-10, history_size=20, line_search_fn="strong_wolfe")
    loss_fn = nn.CrossEntropyLoss(weight=None if class_weight is None else class_weight.double())

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_fn(x @ weight.T + bias, labels) + 0.5 * l2 * (weight**2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


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

    Returns:
        The head refitted on all rows with the chosen penalty, and the CV table.
    """
    features = features.detach().cpu()
    labels = labels.detach().cpu()
    n_images = len(labels) // n_views
    image_labels = labels[:n_images].numpy()
    smallest = int(np.bincount(image_labels, minlength=n_classes)[np.unique(image_labels)].min())
    folds_used = max(2, min(n_folds, smallest))
    table: list[dict[str, float]] = []
    if smallest >= 2 and len(grid) > 1:
        fold_of_image = _folds(image_labels, folds_used, seed)
        fold = np.tile(fold_of_image, n_views)
        for l2 in grid:
            losses = []
            for k in range(folds_used):
                train, held = torch.as_tensor(fold != k), torch.as_tensor(fold_of_image == k)
                weight, bias = _solve(features[train], labels[train], n_classes, l2, class_weight)
                # score held-out images on their first (plain) view, as they will be seen at prediction
                logits = features[:n_images][held].double() @ weight.T + bias
                losses.append(float(nn.functional.cross_entropy(logits, labels[:n_images][held])))
            table.append({"l2": l2, "cv_log_loss": float(np.mean(losses)),
                          "standard_error": float(np.std(losses, ddof=1) / np.sqrt(len(losses)))})
        best = min(table, key=lambda row: row["cv_log_loss"])
        chosen = max(row["l2"] for row in table if row["cv_log_loss"] <= best["cv_log_loss"] + best["standard_error"])
    else:
        chosen = grid[len(grid) // 2]
    weight, bias = _solve(features, labels, n_classes, chosen, class_weight)
    return LinearHeadFit(weight=weight.float(), bias=bias.float(), l2=chosen, cv=table, folds=folds_used if table else 0)
