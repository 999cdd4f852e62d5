"""Training recipes: which layers train in which stage, for how many epochs, at what learning rate.

One vocabulary for every task (image, text and audio classification, segmentation, detection). A strategy is
a list of :class:`Stage` objects, planned in one place (:func:`plan_stages`):

- ``linear_probe``: the pretrained part stays frozen (BatchNorm statistics included); only the new part learns.
  For classification the linear head is solved to convergence on cached frozen features in one step; dense
  tasks train their decoder for the given epochs.
- ``fine_tune``: fastai's recipe. The new part first with the pretrained part frozen, then everything, earlier
  layer groups learning more slowly (discriminative learning rates).
- ``gradual_unfreeze``: ULMFiT's gradual unfreezing. The head first, then the last layer groups, one epoch per
  step, then everything.
- ``lp_ft``: Kumar et al. 2022, "Fine-Tuning can Distort Pretrained Features": the head first (LP), then the
  whole network (FT) with one small learning rate and BatchNorm statistics kept, so the pretrained features
  move as little as the task needs.
- ``full``: everything from the start with one learning rate (the default for random weights).
- ``lora``: text and audio transformers: the head first, then only low-rank adapters (peft) and the head.
- ``partial``: images, Lee et al. 2023's surgical fine-tuning: the head first, then only the last blocks
  (``tune_blocks``) on the frozen blocks' cached output (:mod:`headstart.training.partial`); stage ``top``.

Discriminative learning rates: pretrained group ``d`` groups below the new part learns at ``lr * lr_mult ** d``.
What a task's ``lr`` means and its defaults are its :class:`Recipe`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from headstart.errors import ParameterError, check_choice
from headstart.models.classifier_net import N_BACKBONE_GROUPS

__all__ = ["STRATEGIES", "NON_LORA_STRATEGIES", "IMAGE_STRATEGIES", "Stage", "Recipe", "IMAGE_RECIPE", "FINE_TUNE_MIN_EXAMPLES",
           "plan_stages", "choose_strategy", "default_epochs"]

STRATEGIES = ("linear_probe", "fine_tune", "gradual_unfreeze", "lp_ft", "full", "lora")
# lora needs a transformers model (text, transformers audio); everything else works for every network
NON_LORA_STRATEGIES = STRATEGIES[:-1]
# image classification's: partial fine-tuning caches a CNN's frozen blocks (timm's EfficientNet family)
IMAGE_STRATEGIES = (*NON_LORA_STRATEGIES, "partial")
# Below this many training examples the solved linear head is the default: fine-tuning rarely beat it in our
# measurements (docs/benchmarks.md) at a fraction of the cost, and it cannot overfit the backbone.
FINE_TUNE_MIN_EXAMPLES = 1000


@dataclass(frozen=True)
class Stage:
    """One phase of training.

    Args:
        name: ``head`` (pretrained part frozen), ``top-k`` (its last k layer groups train), ``all`` or ``lora``.
        epochs: epochs in this stage.
        lr: peak learning rate of the new part (head, decoder).
        freeze_backbone: keep every pretrained weight and BatchNorm statistic fixed.
        lr_mult: each pretrained layer group learns ``lr_mult`` times as fast as the group after it.
        freeze_batchnorm: keep the pretrained BatchNorm layers on their statistics while they train.
        trainable_groups: when not frozen, how many of the last layer groups train (``None``: all).
        solve: a frozen-backbone stage whose linear head is solved on cached features in one step.
    """

    name: str
    epochs: int
    lr: float
    freeze_backbone: bool = False
    lr_mult: float = 1.0
    freeze_batchnorm: bool = False
    trainable_groups: int | None = None
    solve: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Recipe:
    """What a task's ``lr`` means and its learning-rate defaults.

    Args:
        default_lr: ``lr`` when none is given: the new part's peak rate in frozen stages.
        tune_share: stages that move the pretrained part run at ``lr * tune_share``.
        lr_mult: the per-group multiplier of ``fine_tune``, ``gradual_unfreeze`` and ``lora``.
        solve_head: frozen head stages are solved on cached features (classification) rather than trained.
        tune_batchnorm: the pretrained BatchNorm statistics update when ``fine_tune`` / ``gradual_unfreeze``
            train the whole network (False: they stay the pretrained ones, as in ``lp_ft``).
    """

    default_lr: float
    tune_share: float = 1.0
    lr_mult: float = 1.0
    solve_head: bool = True
    tune_batchnorm: bool = True


# Images: the backbone stages run at lr / 4 and the earliest of three layer groups 20x slower than the head
# (fastai's fine_tune: freeze_epochs=1, then slice(lr/100, lr) with its one-cycle schedule).
# Images keep the pretrained BatchNorm statistics when the whole network trains: measured on 1,000 chest X-rays
# (docs/benchmarks.md, issue 17), one fine_tune epoch with them updating took validation accuracy from the solved
# head's 0.944 to 0.708 (0.564 at a tenth of the learning rate, 0.634 with milder crops); kept, 0.924. On
# hymenoptera (ImageNet-like photos) 0.961 updating vs 0.954 kept: one image of 153.
IMAGE_RECIPE = Recipe(default_lr=2e-3, tune_share=0.25, lr_mult=(1 / 20) ** (1 / N_BACKBONE_GROUPS),
                      tune_batchnorm=False)


def plan_stages(strategy: str, epochs: int, *, lr: float | None = None, lr_mult: float | None = None,
                head_epochs: int = 1, recipe: Recipe = IMAGE_RECIPE, n_groups: int = N_BACKBONE_GROUPS,
                owner: str = "ImageClassifier") -> list[Stage]:
    """The stages of ``strategy``.

    Args:
        strategy: one of :data:`STRATEGIES`.
        epochs: epochs of the main stage: the unfrozen network for ``fine_tune``, ``full``, ``lp_ft`` and
            ``lora``, the frozen one for ``linear_probe`` (1 when the head is solved).
        lr: the task's learning rate (``recipe.default_lr`` when None).
        lr_mult: per-group multiplier in (0, 1]; default: the recipe's for discriminative strategies, 1 for
            ``full`` and ``lp_ft``.
        head_epochs: epochs of a frozen head stage that is trained rather than solved.
        recipe: the task's learning-rate rules.
        n_groups: the network's pretrained layer groups (``gradual_unfreeze`` opens them in steps).

    >>> [(s.name, s.epochs, s.freeze_backbone) for s in plan_stages("fine_tune", 6)]
    [('head', 1, True), ('all', 6, False)]
    >>> [(s.name, s.trainable_groups) for s in plan_stages("gradual_unfreeze", 3)]
    [('head', None), ('top-1', 1), ('top-2', 2), ('all', None)]
    """
    check_choice(owner, "strategy", strategy, (*STRATEGIES, "partial"))
    if epochs < 1 or head_epochs < 1:
        name, value = ("epochs", epochs) if epochs < 1 else ("head_epochs", head_epochs)
        raise ParameterError(f"The '{name}' parameter must be at least 1 for strategy {strategy!r}. Got {value}.",
                             fix=f"Pass a positive {name}, or leave it unset to let headstart choose.")
    if lr_mult is not None and not 0 < lr_mult <= 1:
        raise ParameterError(f"The 'lr_mult' parameter must be in (0, 1]. Got {lr_mult!r}.",
                             fix="Pass e.g. 0.3 (each earlier layer group learns 0.3x as fast), or 1 for one rate.")
    head_lr = lr if lr is not None else recipe.default_lr
    tune_lr = head_lr * recipe.tune_share
    discriminative = recipe.lr_mult if lr_mult is None else lr_mult
    uniform = 1.0 if lr_mult is None else lr_mult
    solve = recipe.solve_head
    head = Stage("head", 1 if solve else head_epochs, head_lr, freeze_backbone=True, solve=solve)
    if strategy == "linear_probe":
        return [Stage("head", 1 if solve else epochs, head_lr, freeze_backbone=True, solve=solve)]
    if strategy == "full":  # no head stage: an lr given is the rate of everything; the default is the tuning rate
        return [Stage("all", epochs, lr if lr is not None else tune_lr, lr_mult=uniform)]
    if strategy == "lp_ft":
        return [head, Stage("all", epochs, tune_lr / 5, lr_mult=uniform, freeze_batchnorm=True)]
    if strategy == "lora":
        return [head, Stage("lora", epochs, tune_lr, lr_mult=discriminative)]
    if strategy == "partial":  # the pretrained part is two groups here: frozen blocks, then the trained ones
        return [head, Stage("top", epochs, tune_lr, lr_mult=discriminative, freeze_batchnorm=True, trainable_groups=1)]
    if strategy == "gradual_unfreeze":
        # one epoch per newly opened step (ULMFiT), BatchNorm of the still-partial network untouched
        steps = sorted({max(1, round(n_groups * j / 3)) for j in (1, 2)} - {n_groups})
        partial = [Stage(f"top-{k}", 1, tune_lr, lr_mult=discriminative, freeze_batchnorm=True, trainable_groups=k)
                   for k in steps]
        return [head, *partial, Stage("all", epochs, tune_lr, lr_mult=discriminative,
                                      freeze_batchnorm=not recipe.tune_batchnorm)]
    return [head, Stage("all", epochs, tune_lr, lr_mult=discriminative, freeze_batchnorm=not recipe.tune_batchnorm)]


def choose_strategy(n_train: int, *, task: str = "image", pretrained: bool = True,
                    head: str = "linear") -> tuple[str, str]:
    """The ``auto`` strategy for a task and training-set size, and the reason, for printing (the one rule).

    >>> choose_strategy(245)[0], choose_strategy(5000)[0], choose_strategy(20, task="segmentation")[0]
    ('linear_probe', 'fine_tune', 'fine_tune')
    """
    noun = "images" if task in ("image", "segmentation", "detection") else "examples"
    if head != "linear":
        return "linear_probe", f"the {head} head works on frozen features"
    if task in ("segmentation", "detection"):  # a new decoder must learn; a linear probe is not an option
        if not pretrained:
            return "full", "random weights: every layer trains from the start"
        return "fine_tune", "a new decoder first on the frozen backbone, then the whole network"
    if n_train < FINE_TUNE_MIN_EXAMPLES:
        return "linear_probe", (f"{n_train} training {noun} (<{FINE_TUNE_MIN_EXAMPLES}): frozen backbone, linear"
                                " head on cached features")
    return "fine_tune", f"{n_train} training {noun} (>={FINE_TUNE_MIN_EXAMPLES}): head first, then the whole network"


def default_epochs(strategy: str, n_train: int) -> int:
    """Image classification: epochs of the main stage when none are given, fewer for larger datasets.

    >>> default_epochs("fine_tune", 500), default_epochs("fine_tune", 20000)
    (8, 4)
    """
    if strategy == "linear_probe":
        return 1  # the head is solved on cached features in one step
    if n_train <= 1000:
        return 8
    return 6 if n_train <= 5000 else 4
