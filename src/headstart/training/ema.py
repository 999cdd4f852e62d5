"""An exponential moving average of the weights that train (Polyak averaging, as timm's ``ModelEmaV3``).

``TrainConfig.ema_decay = d``: after every optimizer step the average moves a share ``1 - d`` of the way towards
the current weights; each epoch is validated, kept as best and restored with the averaged weights, while training
goes on from the raw ones. Started from a solved head at the beginning of a stage, the average changes the
network more slowly than the optimizer does: with ``d = 0.99`` the weights of the last ~100 steps dominate it.
Only parameters that train are averaged (buffers such as BatchNorm statistics are the network's own); the average
is saved in each checkpoint, so a resumed run continues it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["WeightAverage"]


class WeightAverage:
    """The moving average of ``net``'s trainable parameters, starting from their current values.

    >>> net = nn.Linear(2, 1)
    >>> average = WeightAverage(net, decay=0.5)
    >>> with torch.no_grad():
    ...     _ = net.weight.add_(2.0)
    >>> average.update(net)
    >>> with average.applied(net):
    ...     inside = net.weight.clone()
    >>> bool(torch.allclose(inside + 1.0, net.weight))  # halfway, and the raw weights are back afterwards
    True
    """

    def __init__(self, net: nn.Module, decay: float) -> None:
        self.decay = float(decay)
        self.names = [name for name, p in net.named_parameters() if p.requires_grad]
        parameters = dict(net.named_parameters())
        self.shadow = {name: parameters[name].detach().clone() for name in self.names}

    def _pairs(self, net: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        parameters = dict(net.named_parameters())
        return [self.shadow[n] for n in self.names], [parameters[n].data for n in self.names]

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        """One step of the average towards ``net``'s current weights."""
        shadow, current = self._pairs(net)
        if shadow:
            torch._foreach_lerp_(shadow, current, 1.0 - self.decay)

    @contextmanager
    def applied(self, net: nn.Module) -> Iterator[None]:
        """``net`` holds the averaged weights inside the block and its own again after it."""
        shadow, current = self._pairs(net)
        raw = [tensor.clone() for tensor in current]
        with torch.no_grad():
            for target, value in zip(current, shadow):
                target.copy_(value)
        try:
            yield
        finally:
            with torch.no_grad():
                for target, value in zip(current, raw):
                    target.copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"ema.{name}": tensor for name, tensor in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Continue a saved average (a resumed run); names must match the trainable parameters."""
        for name in self.names:
            self.shadow[name].copy_(state[f"ema.{name}"])
