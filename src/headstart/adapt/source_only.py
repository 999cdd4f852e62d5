"""Source only: the baseline every adaptation method must beat.

A linear head solved on the source features alone (L2-penalised multinomial logistic regression, penalty chosen by
source cross-validation; :func:`headstart.training.heads.fit_linear_head`). The target images are not used for training;
they only receive the IM score, like every other candidate.
"""

from __future__ import annotations

import time

from headstart.adapt.common import (
    AdaptedHead,
    DomainFeatures,
    information_maximization,
    linear_module,
    target_probabilities,
)
from headstart.training.heads import fit_linear_head

__all__ = ["fit_source_only"]

# The penalties source cross-validation chooses between (3-fold: Office-31's amazon has 2,817 images, and each
# solve takes seconds).
GRID = (1e-3, 3e-3, 1e-2)


def fit_source_only(data: DomainFeatures, *, seed: int = 0) -> AdaptedHead:
    """Solve a linear head on the source features (both views), penalty by 3-fold source CV."""
    started = time.perf_counter()
    features, labels = data.flat_source()
    fit = fit_linear_head(features, labels, n_classes=data.n_classes, n_views=data.source.shape[0], grid=GRID,
                          n_folds=3, seed=seed)
    module = linear_module(fit.weight, fit.bias)
    score = information_maximization(target_probabilities(module, data.target))
    return AdaptedHead(method="source_only", module=module, score=score,
                       params={"l2": fit.l2, "l2_selection": "3-fold source CV log loss, one-standard-error rule"},
                       seconds=time.perf_counter() - started)
