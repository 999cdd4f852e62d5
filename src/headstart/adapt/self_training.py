"""Self-training: learn from the model's own confident predictions on the target images.

Start from the CORAL head (:mod:`coral`: source features aligned to the target's statistics). Each round:

1. predict the target images (mean over the centre crop and its mirror);
2. check each prediction against the target's own cluster structure: class centroids are formed from the
   predictions on L2-normalised target features (two rounds of spherical k-means started from them, as in SHOT,
   Liang et al. 2020), and an image is a candidate only where its nearest centroid agrees with the classifier;
3. per predicted class, keep the most confident share of the candidates (class-balanced, so frequent classes do not
   crowd out rare ones), growing from 40% to 100% over the rounds (curriculum);
4. solve a linear head on the aligned source features plus the kept target images with their pseudo-labels.

The schedule (four rounds, 40 -> 100%) and the penalty (source CV, :mod:`source_only`) are fixed before seeing any
target data; the IM score of each round is recorded in the history. No target label exists at this point.
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
from headstart.adapt.coral import coral_source
from headstart.training.heads import fit_linear_head

__all__ = ["RULES", "centroid_labels", "confident_pseudo_labels", "fit_self_training"]

SHARES = (0.4, 0.6, 0.8, 1.0)


def centroid_labels(probabilities: np.ndarray, features: np.ndarray, *, rounds: int = 2) -> np.ndarray:
    """Nearest-centroid labels after ``rounds`` of spherical k-means started from probability-weighted centroids.

    >>> x = np.array([[1.0, 0.1], [0.9, 0.0], [0.0, 1.0], [0.1, 0.8]])
    >>> centroid_labels(np.array([[0.6, 0.4], [0.6, 0.4], [0.6, 0.4], [0.3, 0.7]]), x).tolist()
    [0, 0, 1, 1]
    """
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    weights = np.asarray(probabilities, dtype=np.float64)
    labels = weights.argmax(1)
    for _ in range(rounds):
        centroids = weights.T @ unit / np.maximum(weights.sum(0)[:, None], 1e-12)
        centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
        labels = (unit @ centroids.T).argmax(1)
        weights = np.eye(probabilities.shape[1])[labels]
    return labels


RULES = ("agree", "confidence", "centroid")


def confident_pseudo_labels(probabilities: np.ndarray, features: np.ndarray, share: float, *,
                            rule: str = "agree") -> tuple[np.ndarray, np.ndarray]:
    """The target images kept this round and their pseudo-labels: per label, the most confident ``share`` of the
    candidates (at least one per label that has a candidate).

    ``rule``: ``agree`` (the default: classifier labels, only where the nearest target centroid agrees),
    ``confidence`` (classifier labels, all images are candidates) or ``centroid`` (centroid labels, ranked by the
    classifier's confidence). docs/benchmarks.md compares them (bench/self_training_variants.py).
    """
    predicted, confidence = probabilities.argmax(1), probabilities.max(1)
    candidates = np.ones(len(predicted), dtype=bool)
    if rule == "centroid":
        predicted = centroid_labels(probabilities, features)
    elif rule == "agree":
        candidates = centroid_labels(probabilities, features) == predicted
    kept: list[np.ndarray] = []
    for label in np.unique(predicted[candidates]):
        members = np.flatnonzero(candidates & (predicted == label))
        order = members[np.argsort(-confidence[members], kind="stable")]
        kept.append(order[: max(1, int(np.ceil(share * len(members))))])
    indices = np.sort(np.concatenate(kept)) if kept else np.zeros(0, dtype=np.int64)
    return indices, predicted[indices]


def fit_self_training(data: DomainFeatures, *, l2: float, seed: int = 0, shares: tuple[float, ...] = SHARES,
                      start: str = "coral", rule: str = "agree") -> AdaptedHead:
    """CORAL start (``start="source"``: the plain source features), then ``len(shares)`` rounds of class-balanced
    pseudo-labelling with ``rule`` (see :func:`confident_pseudo_labels`)."""
    from headstart.errors import check_choice

    check_choice("fit_self_training", "start", start, ("coral", "source"))
    check_choice("fit_self_training", "rule", rule, RULES)
    started = time.perf_counter()
    views = data.source.shape[0]
    source = (coral_source(data) if start == "coral" else data.source).reshape(-1, data.dim)
    source_labels = np.tile(data.source_labels, views)
    target_mean = data.target.mean(0)  # the two views' average: one point per target image for the centroids

    def solve(features: np.ndarray, labels: np.ndarray) -> torch.nn.Linear:
        fit = fit_linear_head(torch.from_numpy(features), torch.from_numpy(labels), n_classes=data.n_classes,
                              grid=(l2,), seed=seed)
        return linear_module(fit.weight, fit.bias)

    module = solve(source, source_labels)
    probabilities = target_probabilities(module, data.target)
    history = [{"round": 0, "pseudo_labelled": 0, "target_im": round(information_maximization(probabilities), 4)}]
    predictions = [probabilities.argmax(1)]
    for round_index, share in enumerate(shares, start=1):
        kept, pseudo = confident_pseudo_labels(probabilities, target_mean, share, rule=rule)
        features = np.concatenate([source] + [data.target[v][kept] for v in range(data.target.shape[0])])
        labels = np.concatenate([source_labels] + [pseudo] * data.target.shape[0])
        module = solve(features.astype(np.float32), labels.astype(np.int64))
        probabilities = target_probabilities(module, data.target)
        history.append({"round": round_index, "share": share, "pseudo_labelled": int(len(kept)),
                        "target_im": round(information_maximization(probabilities), 4)})
        predictions.append(probabilities.argmax(1))
    return AdaptedHead(method="self_training", module=module, score=information_maximization(probabilities),
                       params={"l2": l2, "shares": list(shares), "start": start, "rule": rule}, history=history,
                       checkpoint_predictions=predictions,
                       seconds=time.perf_counter() - started)
