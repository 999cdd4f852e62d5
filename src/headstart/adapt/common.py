"""What every adaptation method shares: the features it learns from, what it returns, the label-free score that
chooses between candidates, and the training loop of the methods that learn a bottleneck network.

Every method sees :class:`DomainFeatures`: labelled source features and *unlabelled* target features (cached
frozen-backbone features, two views per image: centre crop and mirror). Target labels do not exist here, so no
method and no selection can use them.

Choosing without target labels (issue 7): every candidate (a method's checkpoints, its settings) is scored by the
**information-maximisation score** of its predictions on the unlabelled target images,
``IM = H(mean prediction) - mean H(prediction)`` (entropies in nats; Shi & Sha 2012, SHOT 2020): high when each
target image gets a confident prediction *and* the predictions spread over the classes (a model that puts every
image into one class has low ``H(mean)``). docs/benchmarks.md reports how well it tracks true target accuracy.
Two known biases: the ``H(mean)`` term assumes the target holds the source's classes in similar shares (a target
with only some of the classes favours models that spread predictions over all of them), and methods trained with
label smoothing and dropout (the bottleneck methods) are less confident, so their scores sit below the linear
methods' on the same accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from headstart.models.heads import FeatureMLP

__all__ = ["DomainFeatures", "AdaptedHead", "information_maximization", "target_probabilities", "linear_module",
           "train_bottleneck"]


@dataclass
class DomainFeatures:
    """Frozen features for adaptation. Arrays are (views, n, dim); view 0 is the centre crop, view 1 its mirror."""

    source: np.ndarray
    source_labels: np.ndarray
    target: np.ndarray
    n_classes: int

    @property
    def dim(self) -> int:
        return int(self.source.shape[2])

    def flat_source(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Source features view-major (views * n, dim) with their labels, as :func:`fit_linear_head` takes them."""
        views, n, dim = self.source.shape
        return (torch.from_numpy(self.source.reshape(views * n, dim)),
                torch.from_numpy(np.tile(self.source_labels, views)))


@dataclass
class AdaptedHead:
    """A method's result: a head on pooled features (an ``nn.Linear`` or a :class:`FeatureMLP`) and its record."""

    method: str
    module: nn.Module
    score: float  # information-maximisation score on the target (higher is better)
    params: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    # the predicted target class of every image at each scored checkpoint / round (rows follow ``history``), so a
    # benchmark holding the target labels can see how well the IM score chose among them
    checkpoint_predictions: list[np.ndarray] = field(default_factory=list)


def _entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    return -(p * np.log(np.clip(p, 1e-12, 1.0))).sum(axis=axis)


def information_maximization(probabilities: np.ndarray) -> float:
    """``H(mean prediction) - mean H(prediction)``: confident and diverse target predictions score high.

    >>> round(information_maximization(np.eye(4)), 3), round(information_maximization(np.full((4, 4), 0.25)), 3)
    (1.386, 0.0)
    >>> abs(information_maximization(np.tile([[1.0, 0, 0, 0]], (4, 1))))  # one class only: confident, not diverse
    0.0
    """
    p = np.asarray(probabilities, dtype=np.float64)
    return float(_entropy(p.mean(0)) - _entropy(p).mean())


@torch.no_grad()
def target_probabilities(module: nn.Module, target: np.ndarray) -> np.ndarray:
    """Mean class probabilities over the target views, (n, classes)."""
    module.eval()
    views = torch.from_numpy(target)
    return torch.stack([torch.softmax(module(v), dim=1) for v in views]).mean(0).numpy()


def linear_module(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    return layer.eval()


def inverse_decay(progress: float) -> float:
    """Learning-rate factor of DANN/CDAN (Ganin et al. 2016): ``(1 + 10 p)^-0.75``."""
    return (1 + 10 * progress) ** -0.75


def ramp(progress: float) -> float:
    """Weight of the alignment loss, from 0 to 1 (``2 / (1 + exp(-10 p)) - 1``): the classifier is shaped by the
    source labels before the features are pulled together."""
    return 2.0 / (1.0 + math.exp(-10 * progress)) - 1.0


# An alignment loss: (bottleneck features of a source+target batch, logits, number of source rows, ramp) -> loss
AlignmentLoss = Callable[[torch.Tensor, torch.Tensor, int, float], torch.Tensor]


def train_bottleneck(data: DomainFeatures, alignment: AlignmentLoss, *, method: str, extra: nn.Module | None = None,
                     steps: int = 2000, batch_size: int = 32, lr: float = 0.01, hidden: int = 256,
                     eval_every: int = 250, seed: int = 0) -> AdaptedHead:
    """Train a :class:`FeatureMLP` (standardise -> bottleneck -> classifier) on source labels plus ``alignment``
    between the source and target bottleneck features; keep the checkpoint with the best target IM score.

    ``extra`` holds the alignment's own parameters (a domain discriminator), trained by the same optimiser. Each
    step draws ``batch_size`` source and target images, each in a random view. SGD with Nesterov momentum and the
    inverse-decay schedule, as in DANN/CDAN; label smoothing 0.1 on the source loss.
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    source, target = torch.from_numpy(data.source), torch.from_numpy(data.target)
    labels = torch.from_numpy(data.source_labels).long()
    net = FeatureMLP(data.dim, data.n_classes, hidden=hidden)
    net.set_standardization(source[0].mean(0), source[0].std(0))
    modules = nn.ModuleList([net] + ([extra] if extra is not None else []))
    optimizer = torch.optim.SGD(modules.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    best_state, best_score, best_step, history, predictions = None, -math.inf, 0, [], []
    for step in range(steps):
        progress = step / steps
        for group in optimizer.param_groups:
            group["lr"] = lr * inverse_decay(progress)
        i = torch.randint(0, source.shape[1], (batch_size,), generator=generator)
        j = torch.randint(0, target.shape[1], (batch_size,), generator=generator)
        view_i = torch.randint(0, source.shape[0], (batch_size,), generator=generator)
        view_j = torch.randint(0, target.shape[0], (batch_size,), generator=generator)
        modules.train()
        features = net.features(torch.cat([source[view_i, i], target[view_j, j]]))
        logits = net.classifier(features)
        loss = nn.functional.cross_entropy(logits[:batch_size], labels[i], label_smoothing=0.1)
        align = alignment(features, logits, batch_size, ramp(progress))
        optimizer.zero_grad()
        (loss + align).backward()
        loss, align = loss.detach(), align.detach()
        optimizer.step()
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            probabilities = target_probabilities(net, data.target)
            score = information_maximization(probabilities)
            predictions.append(probabilities.argmax(1))
            history.append({"step": step + 1, "source_loss": round(loss.item(), 4),
                            "alignment_loss": round(align.item(), 4), "target_im": round(score, 4)})
            if score > best_score:
                best_score, best_step = score, step + 1
                best_state = {k: v.clone() for k, v in net.state_dict().items()}
    assert best_state is not None  # at least one evaluation runs (the last step)
    net.load_state_dict(best_state)
    return AdaptedHead(method=method, module=net.eval(), score=best_score, history=history,
                       checkpoint_predictions=predictions,
                       params={"steps": steps, "best_step": best_step, "batch_size": batch_size, "lr": lr,
                               "hidden": hidden, "selection": "checkpoint with the highest target IM score"})
