"""The optimiser of every task: AdamW groups with discriminative learning rates, and the warm-up + cosine schedule.

One rule for every network (image CNN, text transformer, spectrogram CNN, segmenter, detector): the network's
pretrained layer groups (earliest first, :meth:`headstart.models.transfer.TransferMixin.layer_groups`) learn
``lr_mult`` times as fast as the group after them, the new part (head, decoder) at the stage's rate; biases and
normalisation weights get no weight decay. The schedule is a pure function of the step (nanoGPT style).
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from headstart.training.recipes import Stage

__all__ = ["parameter_groups", "lr_factor"]


def parameter_groups(net: nn.Module, stage: Stage, *, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups of ``net``'s trainable parameters for ``stage``.

    Group ``i`` of ``n`` pretrained layer groups (0 = the earliest) learns at ``stage.lr * stage.lr_mult ** (n - i)``,
    everything else at ``stage.lr``; groups the stage keeps frozen, and parameters that do not require grad, are
    left out. Each group carries its ``lr_scale``, so the loop sets ``lr = stage.lr * lr_scale * schedule``.

    >>> from headstart.models.classifier_net import ClassifierNet
    >>> import timm
    >>> net = ClassifierNet(timm.create_model("test_efficientnet", num_classes=2))
    >>> groups = parameter_groups(net, Stage("all", 1, 1e-3, lr_mult=0.5), weight_decay=0.01)
    >>> sorted({g["lr_scale"] for g in groups})
    [0.125, 0.25, 0.5, 1.0]
    """
    layers = net.layer_groups()  # type: ignore[operator]
    n = len(layers)
    first = n if stage.freeze_backbone else 0 if stage.trainable_groups is None else n - stage.trainable_groups
    scaled: list[tuple[float, list[nn.Parameter]]] = [(stage.lr_mult ** (n - i), layers[i]) for i in range(first, n)]
    listed = {id(p) for group in layers for p in group}
    scaled.append((1.0, [p for p in net.parameters() if id(p) not in listed]))
    groups: list[dict[str, Any]] = []
    for scale, params in scaled:
        trainable = [p for p in params if p.requires_grad]
        for members, decay in (([p for p in trainable if p.ndim > 1], weight_decay),
                               ([p for p in trainable if p.ndim <= 1], 0.0)):
            if members:
                groups.append({"params": members, "lr": stage.lr * scale, "lr_scale": scale, "weight_decay": decay})
    return groups


def lr_factor(step: int, total_steps: int, *, warmup_steps: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0, as a pure function of the step.

    >>> [round(lr_factor(s, 10, warmup_steps=2), 3) for s in (0, 1, 2, 6, 10)]
    [0.5, 1.0, 1.0, 0.5, 0.0]
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
