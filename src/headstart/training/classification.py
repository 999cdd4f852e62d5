"""What every classification task (image, text, audio) gives the training loop: the loss step, the validation
scores, and the head solved on frozen features.

The loop itself knows nothing about classes; these hooks are shared so the three classifiers train, score and
record their solved head the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from headstart.evaluation.calibration import calibrated_log_loss
from headstart.evaluation.metrics import log_loss
from headstart.training.heads import fit_linear_head
from headstart.training.loop import StepOutput, Validation

if TYPE_CHECKING:
    from headstart.features.store import FeatureStore

__all__ = ["inverse_frequency_weights", "classification_step", "classification_scores", "solve_linear_head",
           "head_record"]


def inverse_frequency_weights(class_counts: Sequence[int]) -> torch.Tensor:
    """Per-class loss weights ``n / (k * n_c)``: every class weighs as much as in a balanced set.

    >>> [round(w, 4) for w in inverse_frequency_weights([30, 10]).tolist()]
    [0.6667, 2.0]
    """
    counts = torch.tensor(list(class_counts), dtype=torch.float32).clamp(min=1)
    return counts.sum() / (len(counts) * counts)


def classification_step(module: nn.Module, inputs: Any, labels: torch.Tensor, *, class_weight: torch.Tensor | None,
                        label_smoothing: float) -> StepOutput:
    """Cross entropy (class weights, label smoothing) of ``module(inputs)``, with the number of right answers."""
    logits = module(inputs)
    weight = None if class_weight is None else class_weight.to(logits.device)
    loss = F.cross_entropy(logits.float(), labels, weight=weight, label_smoothing=label_smoothing)
    return StepOutput(loss=loss, size=len(labels), correct=(logits.detach().argmax(1) == labels).sum())


def classification_scores(probabilities: np.ndarray, labels: np.ndarray, *, prefix: str = "val") -> dict[str, float]:
    """Log loss and accuracy of predicted ``probabilities``, under ``{prefix}_loss`` / ``{prefix}_accuracy``; for
    validation also ``val_calibrated_loss``, the log loss at the temperature that suits these predictions
    (:func:`~headstart.evaluation.calibration.calibrated_log_loss`), which a best epoch can be chosen by."""
    labels = np.asarray(labels)
    scores = {f"{prefix}_loss": log_loss(probabilities, labels),
              f"{prefix}_accuracy": float((probabilities.argmax(1) == labels).mean()) if len(labels) else 0.0}
    if prefix == "val":
        probabilities = np.asarray(probabilities, dtype=np.float64)
        usable = len(labels) > 1 and probabilities.ndim == 2 and probabilities.shape[1] > 1
        scores["val_calibrated_loss"] = calibrated_log_loss(probabilities, labels) if usable else scores["val_loss"]
    return scores


def head_record(train_probabilities: np.ndarray, train_labels: np.ndarray, val_probabilities: np.ndarray,
                val_labels: np.ndarray, *, selection: dict[str, Any]) -> Validation:
    """A fitted head on frozen features as one history record: train and validation scores and how the head
    was chosen (its CV table)."""
    record = {**classification_scores(train_probabilities, train_labels, prefix="train"), "head_selection": selection}
    if "l2" in selection:
        record["l2"] = selection["l2"]
    return Validation(scores=classification_scores(val_probabilities, val_labels), payload=val_probabilities,
                      record=record)


@torch.no_grad()
def _probabilities(head: nn.Module, features: torch.Tensor) -> np.ndarray:
    was_training = head.training
    head.eval()
    weight = next(head.parameters())
    probabilities = torch.softmax(head(features.to(weight.device, weight.dtype)).float(), dim=1).cpu().numpy()
    head.train(was_training)
    return probabilities


def solve_linear_head(head: nn.Linear, train_features: torch.Tensor, train_labels: torch.Tensor,
                      val_features: torch.Tensor, val_labels: torch.Tensor, *, n_views: int = 1,
                      class_weight: torch.Tensor | None = None, seed: int = 0,
                      store: FeatureStore | None = None,
                      layers: tuple[list[tuple[int, int]], dict[str, list[int]]] | None = None) -> Validation:
    """Solve ``head`` on frozen features (penalty by cross-validation, :func:`~headstart.training.heads.fit_linear_head`),
    copy the solution into it, and score it: one history record.

    Args:
        head: the network's linear classifier (any device); it is overwritten.
        train_features, train_labels: ``n_views`` views of every training example, view-major.
        val_features, val_labels: the validation examples.
        store: where the solve is stored and found again by a re-run on the same features (None: not stored).
        layers: for intermediate-layer features (:class:`~headstart.models.multilayer.StageFeatures`): the column
            range of each layer (the last layer first) and the candidate layer sets; the set chosen is the one
            with the lowest CV log loss, where a set larger than the first must beat the first by more than its
            standard error. The head's weights on the layers not chosen are zero.
    """
    def fit(features: torch.Tensor) -> Any:
        return fit_linear_head(features, train_labels, n_classes=head.out_features, n_views=n_views,
                               class_weight=None if class_weight is None else class_weight.cpu(), seed=seed,
                               store=store)

    if layers is None:
        solution = fit(train_features)
        weight, selection = solution.weight, solution.summary()
    else:
        weight, solution, selection = _solve_layer_sets(fit, train_features, *layers)
    with torch.no_grad():
        head.weight.copy_(weight.to(head.weight))
        head.bias.copy_(solution.bias.to(head.bias))
    return head_record(_probabilities(head, train_features), train_labels.numpy(), _probabilities(head, val_features),
                       val_labels.numpy(), selection=selection)


def _solve_layer_sets(fit: Any, features: torch.Tensor, bounds: list[tuple[int, int]],
                      candidates: dict[str, list[int]]) -> tuple[torch.Tensor, Any, dict[str, Any]]:
    """Each candidate layer set solved on its columns, every layer rescaled to the last layer's mean feature
    variance (Head2Toe's per-layer normalisation, here folded into the weights); the chosen set's weights on
    the full width (zeros elsewhere), its fit (penalty, bias, CV table), and the selection record."""
    variances = [float(features[:, a:b].double().var(dim=0).mean()) for a, b in bounds]
    scales = [(variances[0] / max(v, 1e-12)) ** 0.5 for v in variances]
    table, fits = [], {}
    for name, indices in candidates.items():
        columns = torch.cat([features[:, bounds[i][0]:bounds[i][1]] * scales[i] for i in indices], dim=1)
        fits[name] = fit(columns)
        best = min(fits[name].cv, key=lambda row: row["cv_log_loss"]) if fits[name].cv else {}
        table.append({"layers": name, "n_layers": len(indices), "dim": int(columns.shape[1]),
                      "cv_log_loss": best.get("cv_log_loss"), "standard_error": best.get("standard_error")})
    chosen = table[0]
    for row in table[1:]:
        if (row["cv_log_loss"] is not None and chosen["cv_log_loss"] is not None
                and row["cv_log_loss"] < chosen["cv_log_loss"] - chosen["standard_error"]):
            chosen = row
    solution = fits[chosen["layers"]]
    weight = torch.zeros(solution.weight.shape[0], bounds[-1][1])
    start = 0
    for i in candidates[chosen["layers"]]:
        width = bounds[i][1] - bounds[i][0]
        weight[:, bounds[i][0]:bounds[i][1]] = solution.weight[:, start:start + width] * scales[i]
        start += width
    selection = {**solution.summary(), "feature_layers": {"chosen": chosen["layers"], "candidates": table,
                                                          "rule": "lowest CV log loss; a larger set must beat"
                                                                  " the first by more than its standard error"}}
    return weight, solution, selection
