"""AdamW parameter groups: one learning-rate scale per layer group, no weight decay on biases and norms."""

from __future__ import annotations

from typing import Any

from torch import nn

from headstart.models.classifier_net import ClassifierNet, layer_groups
from headstart.training.recipes import Stage

__all__ = ["parameter_groups"]


def parameter_groups(net: ClassifierNet, stage: Stage, *, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups for ``stage``: each carries its ``lr_scale`` (its lr = scale x schedule lr).

    Biases and normalisation weights (1-d tensors) get no weight decay.
    """
    backbone, head = layer_groups(net.model)
    scaled: list[tuple[float, list[nn.Parameter]]] = [(1.0, head)]
    if not stage.freeze_backbone:
        n = len(backbone)
        first = 0 if stage.trainable_groups is None else n - stage.trainable_groups
        for index, params in enumerate(backbone):
            # earliest group -> lr_ratio, last backbone group -> lr_ratio ** (1/n), head -> 1
            scale = stage.lr_ratio ** ((n - index) / n)
            if index >= first:
                scaled.append((scale, params))
    groups: list[dict[str, Any]] = []
    for scale, params in scaled:
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        for members, wd in ((decay, weight_decay), (no_decay, 0.0)):
            if members:
                groups.append({"params": members, "lr_scale": scale, "weight_decay": wd, "lr": stage.lr * scale})
    return groups
