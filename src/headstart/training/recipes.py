"""Training recipes: which layers train in which stage, for how many epochs, at what learning rate.


A strategy is a list of :class:`Stage` objects. Each one is defined in one place below:

- ``linear_probe``: the backbone stays frozen (BatchNorm statistics included); only a new linear head learns.
- ``fine_tune``: fastai's recipe. Train the new head with the backbone frozen, then unfreeze everything and
  train on with lower learning rates for earlier layer groups (discriminative learning rates).
- ``gradual_unfreeze``: ULMFiT's gradual unfreezing. The head first, then the last backbone layer group, then
  the last two, ... one epoch each, then everything; earlier groups learn more slowly (discriminative rates).
- ``lp_ft``: Kumar et al. 2022, "Fine-Tuning can Distort Pretrained Features": the linear head is trained to
  convergence on cached frozen features (LP), then the whole network is fine-tuned (FT) with one small learning
  rate and BatchNorm statistics kept, so the backbone's features are moved as little as the task needs.
- ``full``: train every layer from the start with one learning rate.

Discriminative learning rates: the group ``d`` groups below the head learns at ``lr * lr_mult ** d``
(``lr_mult`` = 1 gives one rate for all).


"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from headstart.errors import ParameterError, check_choice
from headstart.models.classifier_net import N_BACKBONE_GROUPS

__all__ = ["STRATEGIES", "Stage", "plan_stages", "choose_strategy", "default_epochs"]

STRATEGIES = ("linear_probe", "fine_tune", "gradual_unfreeze", "lp_ft", "full")


@dataclass(frozen=True)
class Stage:
    """One phase of training.

    Args:
        name: ``head`` (backbone frozen) or ``all`` (everything trains).
        epochs: epochs in this stage.
        freeze_backbone: keep every backbone weight and BatchNorm statistic fixed.
        lr: peak learning rate of the head.
        lr_ratio: the earliest backbone group's learning rate divided by ``lr``; groups in between are spaced
            geometrically (1.0 = one learning rate for all).
        freeze_batchnorm: keep BatchNorm layers in eval mode (their statistics fixed) even when the backbone
            trains: with a few hundred images, batch statistics of 32 images are noisier than ImageNet's.
        trainable_groups: when the backbone is not frozen, how many of its last layer groups train (``None``:
            all of them); the earlier groups stay frozen (gradual unfreezing).
    """

    name: str
    epochs: int
    freeze_backbone: bool
    lr: float
    lr_ratio: float = 1.0
    freeze_batchnorm: bool = False
    trainable_groups: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_stages(strategy: str, epochs: int, *, lr: float | None = None, head_epochs: int = 1,
                lr_mult: float | None = None) -> list[Stage]:
    """The stages of ``strategy``.

    Args:
        strategy: one of :data:`STRATEGIES`.
        epochs: epochs of the strategy's main stage: the head for ``linear_probe``, the unfrozen network for
            ``fine_tune`` and ``full``.
        lr: the head's peak learning rate; each strategy has its own default.
        head_epochs: ``fine_tune`` only: epochs of the frozen head stage before unfreezing (fastai's
            ``freeze_epochs``). When the training loop caches frozen features, a frozen head stage is solved
            to convergence in one step instead.
        lr_mult: per-group learning-rate multiplier for unfrozen stages (group ``d`` below the head learns at
            ``lr * lr_mult ** d``); default: each strategy's own (fine_tune: 1/20 from head to earliest group).

    >>> [(s.name, s.epochs, s.freeze_backbone) for s in plan_stages("fine_tune", 6)]
    [('head', 1, True), ('all', 6, False)]
    >>> [(s.name, s.trainable_groups) for s in plan_stages("gradual_unfreeze", 3)]
    [('head', None), ('top-1', 1), ('top-2', 2), ('all', None)]
    """
    check_choice("ImageClassifier", "strategy", strategy, STRATEGIES)
    if epochs < 1 or head_epochs < 1:
        name, value = ("epochs", epochs) if epochs < 1 else ("head_epochs", head_epochs)
        raise ParameterError(
            f"The '{name}' parameter must be at least 1 for strategy {strategy!r}. Got {value}.",
            fix=f"Pass a positive {name}, or leave it unset to let headstart choose.",
        )
    if lr_mult is not None and not 0 < lr_mult <= 1:
        raise ParameterError(f"The 'lr_mult' parameter must be in (0, 1]. Got {lr_mult!r}.",
                             fix="Pass e.g. 0.3 (each earlier layer group learns 0.3x as fast), or 1 for one rate.")

    def ratio(default: float) -> float:  # earliest group's lr / head lr
        return default if lr_mult is None else lr_mult ** N_BACKBONE_GROUPS

    if strategy == "linear_probe":
        return [Stage("head", epochs, freeze_backbone=True, lr=lr or 3e-3)]
    if strategy == "full":
        return [Stage("all", epochs, freeze_backbone=False, lr=lr or 5e-4, lr_ratio=ratio(1.0))]
    head_lr = lr or 2e-3
    head = Stage("head", head_epochs, freeze_backbone=True, lr=head_lr)
    if strategy == "lp_ft":
        # one small rate for everything (FT of LP-FT), BatchNorm statistics kept from pretraining
        return [head, Stage("all", epochs, freeze_backbone=False, lr=head_lr / 20, lr_ratio=ratio(1.0),
                            freeze_batchnorm=True)]
    if strategy == "gradual_unfreeze":
        # one epoch per newly unfrozen group (ULMFiT), BatchNorm of still-frozen groups untouched
        partial = [Stage(f"top-{k}", 1, freeze_backbone=False, lr=head_lr / 4, lr_ratio=ratio(1 / 20),
                         freeze_batchnorm=True, trainable_groups=k) for k in range(1, N_BACKBONE_GROUPS)]
        return [head, *partial, Stage("all", epochs, freeze_backbone=False, lr=head_lr / 4, lr_ratio=ratio(1 / 20))]
    # fine_tune: the head first, then everything, with the earliest layers learning 20x more slowly than the
    # head (fastai's fine_tune: freeze_epochs=1, then slice(lr/100, lr) with its one-cycle schedule).
    return [head, Stage("all", epochs, freeze_backbone=False, lr=head_lr / 4, lr_ratio=ratio(1 / 20))]


def choose_strategy(n_train: int) -> tuple[str, str]:
    """Default strategy for ``n_train`` training images, and the reason, for printing.

    Below 1,000 images a linear probe on frozen features (solved exactly, penalty chosen by cross-validation)
    was as accurate as fine-tuning in our measurements (docs/benchmarks.md) at a fraction of the cost, and it
    cannot overfit the backbone; above that, fine-tuning has the data to move the backbone.

    >>> choose_strategy(245)[0], choose_strategy(5000)[0]
    ('linear_probe', 'fine_tune')
    """
    if n_train < 1000:
        return "linear_probe", f"{n_train} training images (<1000): frozen backbone, linear head on cached features"
    return "fine_tune", f"{n_train} training images (>=1000): head first, then the whole network"


def default_epochs(strategy: str, n_train: int) -> int:
    """Epochs of the main stage when none are given: fewer for larger datasets (more steps per epoch).

    >>> default_epochs("fine_tune", 500), default_epochs("fine_tune", 20000)
    (8, 4)
    """
    if strategy == "linear_probe":
        return 1  # fit() caches frozen features and solves the head in one step
    if n_train <= 1000:
        return 8
    return 6 if n_train <= 5000 else 4
