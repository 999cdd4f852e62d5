"""CORAL: correlation alignment (Sun, Feng & Saenko 2016, "Return of Frustratingly Easy Domain Adaptation").

The source features are whitened with their own covariance and re-coloured with the target's (both regularised
by the identity), and moved to the target mean; a linear head is then solved on these transformed source features
and applied to the *untransformed* target features. So the saved model is an ordinary linear head: nothing about
the transform is needed at prediction time. The penalty is the one source cross-validation chose for
:mod:`source_only` (passed in), so CORAL adds no setting of its own.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from headstart.adapt.common import (
    AdaptedHead,
    DomainFeatures,
    information_maximization,
    linear_module,
    target_probabilities,
)
from headstart.training.heads import fit_linear_head

__all__ = ["coral_transform", "fit_coral"]


def _matrix_power(covariance: np.ndarray, power: float) -> np.ndarray:
    values, vectors = np.linalg.eigh(covariance)
    return (vectors * np.clip(values, 1e-8, None) ** power) @ vectors.T


def coral_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Source rows re-coloured to the target's covariance and mean: ``(Xs - mu_s) Cs^-1/2 Ct^1/2 + mu_t``, with
    ``C = cov + I``.

    >>> rng = np.random.default_rng(0)
    >>> s, t = rng.normal(0, 10, (500, 3)), rng.normal(5, 30, (800, 3))
    >>> moved = coral_transform(s, t)
    >>> bool(np.allclose(moved.mean(0), t.mean(0))), np.round(np.diag(np.cov(moved, rowvar=False)) / 900, 1).tolist()
    (True, [1.0, 1.0, 1.0])
    """
    source, target = np.asarray(source, dtype=np.float64), np.asarray(target, dtype=np.float64)
    eye = np.eye(source.shape[1])
    whiten = _matrix_power(np.cov(source, rowvar=False) + eye, -0.5)
    colour = _matrix_power(np.cov(target, rowvar=False) + eye, 0.5)
    return (source - source.mean(0)) @ whiten @ colour + target.mean(0)


def coral_source(data: DomainFeatures) -> np.ndarray:
    """The source features (views, n, dim) after :func:`coral_transform` towards all target views."""
    views, n, dim = data.source.shape
    moved = coral_transform(data.source.reshape(-1, dim), data.target.reshape(-1, dim))
    return moved.reshape(views, n, dim).astype(np.float32)


def fit_coral(data: DomainFeatures, *, l2: float, seed: int = 0) -> AdaptedHead:
    """Solve a linear head with penalty ``l2`` on CORAL-aligned source features."""
    started = time.perf_counter()
    moved = coral_source(data)
    features = torch.from_numpy(moved.reshape(-1, data.dim))
    labels = torch.from_numpy(np.tile(data.source_labels, moved.shape[0]))
    fit = fit_linear_head(features, labels, n_classes=data.n_classes, n_views=moved.shape[0], grid=(l2,), seed=seed)
    module = linear_module(fit.weight, fit.bias)
    score = information_maximization(target_probabilities(module, data.target))
    return AdaptedHead(method="coral", module=module, score=score, params={"l2": l2},
                       seconds=time.perf_counter() - started)
