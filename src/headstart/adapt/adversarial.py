"""Adversarial alignment: DANN (Ganin et al. 2016) and CDAN (Long et al. 2018).

A domain discriminator learns to tell source from target bottleneck features; a gradient-reversal layer between
the two makes the bottleneck learn the opposite, features the discriminator cannot separate, while the classifier
keeps them useful for the source labels.

- **DANN** feeds the discriminator the bottleneck features.
- **CDAN** feeds it their outer product with the class probabilities (the *conditional* distribution: a feature
  is aligned together with the class it is predicted to be), and weights each example by the certainty of its
  prediction, ``1 + exp(-entropy)`` (CDAN+E), so confusing examples count less.

The reversal coefficient ramps from 0 to 1 (the DANN schedule); checkpoints are chosen by the target IM score.
These methods train the bottleneck network on cached frozen features, not the backbone (see docs/benchmarks.md).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from headstart.adapt.common import AdaptedHead, DomainFeatures, train_bottleneck

__all__ = ["GradientReversal", "gradient_reversal", "DomainDiscriminator", "fit_dann", "fit_cdan"]


class GradientReversal(torch.autograd.Function):
    """Identity forward; the gradient is multiplied by ``-coefficient`` on the way back."""

    @staticmethod
    def forward(ctx: Any, inputs: torch.Tensor, coefficient: float) -> torch.Tensor:
        ctx.coefficient = coefficient
        return inputs.view_as(inputs)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.coefficient * grad, None


def gradient_reversal(inputs: torch.Tensor, coefficient: float = 1.0) -> torch.Tensor:
    """``inputs`` unchanged, with reversed (and scaled) gradients.

    >>> x = torch.ones(3, requires_grad=True)
    >>> gradient_reversal(x, 0.5).sum().backward()
    >>> x.grad.tolist()
    [-0.5, -0.5, -0.5]
    """
    return GradientReversal.apply(inputs, coefficient)


class DomainDiscriminator(nn.Module):
    """Two hidden layers -> one logit (source = 1, target = 0)."""

    def __init__(self, in_features: int, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(0.5),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(0.5), nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(1)


def _domain_loss(logits: torch.Tensor, n_source: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    domains = torch.cat([torch.ones(n_source), torch.zeros(len(logits) - n_source)])
    losses = nn.functional.binary_cross_entropy_with_logits(logits, domains, reduction="none")
    if weights is None:
        return losses.mean()
    # CDAN+E: normalise the weights within each domain so both domains keep equal total weight
    source_w, target_w = weights[:n_source], weights[n_source:]
    weights = torch.cat([source_w / source_w.sum(), target_w / target_w.sum()]) * len(logits) / 2
    return (losses * weights).mean()


def fit_dann(data: DomainFeatures, *, seed: int = 0, steps: int = 2000, hidden: int = 256) -> AdaptedHead:
    """DANN on the bottleneck features."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    discriminator = DomainDiscriminator(hidden)

    def alignment(features: torch.Tensor, logits: torch.Tensor, n_source: int, ramp: float) -> torch.Tensor:
        return _domain_loss(discriminator(gradient_reversal(features, ramp)), n_source)

    result = train_bottleneck(data, alignment, method="dann", extra=discriminator, steps=steps, hidden=hidden,
                              seed=seed)
    result.seconds = time.perf_counter() - started
    return result


def fit_cdan(data: DomainFeatures, *, seed: int = 0, steps: int = 2000, hidden: int = 256) -> AdaptedHead:
    """CDAN+E: the discriminator sees features (x) class probabilities, examples weighted by certainty."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    discriminator = DomainDiscriminator(hidden * data.n_classes)

    def alignment(features: torch.Tensor, logits: torch.Tensor, n_source: int, ramp: float) -> torch.Tensor:
        probabilities = torch.softmax(logits, dim=1).detach()
        reversed_features = gradient_reversal(features, ramp)
        joint = torch.bmm(probabilities.unsqueeze(2), reversed_features.unsqueeze(1)).flatten(1)
        entropy = -(probabilities * torch.log(probabilities.clamp_min(1e-12))).sum(1)
        return _domain_loss(discriminator(joint), n_source, weights=1.0 + torch.exp(-entropy))

    result = train_bottleneck(data, alignment, method="cdan", extra=discriminator, steps=steps, hidden=hidden,
                              seed=seed)
    result.seconds = time.perf_counter() - started
    return result
