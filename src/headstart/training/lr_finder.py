"""The learning-rate range test (Leslie Smith, 2015; fastai's ``lr_find``): which peak learning rate to train with.

The test trains for up to a hundred mini-batches while the learning rate grows exponentially from tiny to
huge, and records the loss of each batch. At first the steps are too small to change anything and the loss
stays flat; then it falls; past the largest usable learning rate it turns up and explodes. A good peak
learning rate lies inside the fall. The sweep trains the caller's network itself (no copy, so no second model
in memory), then puts back every weight, BatchNorm statistic, ``requires_grad`` flag, gradient and train/eval
mode: afterwards the network is exactly as it was.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import (
    Figure,  # no pyplot: figures never touch the user's backend or need a display
)
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from torch import nn
from torch.optim import AdamW
from torch.utils.data import DataLoader

from headstart.data.transforms import ImageDataset
from headstart.errors import ParameterError
from headstart.evaluation.plots import _save
from headstart.models.classifier_net import ClassifierNet
from headstart.training.optim import parameter_groups
from headstart.training.recipes import Stage

__all__ = ["LRFinderResult", "find_learning_rate", "suggest_learning_rate", "plot_lr_finder"]

# fastai's choices: the loss curve is an exponential moving average with this factor (bias-corrected, so
# the first points are not pulled towards 0), and the sweep stops once it passes this multiple of its best.
SMOOTHING_BETA = 0.98
DIVERGENCE_FACTOR = 4.0


@dataclass
class LRFinderResult:
    """What a learning-rate range test recorded.

    Args:
        learning_rates: the sweep's (head) learning rate at each step, exponentially spaced. Groups of earlier
            layers ran at this value times their ``lr_scale``.
        losses: the training loss of each step's mini-batch, as measured (noisy).
        smoothed_losses: ``losses`` after a bias-corrected exponential moving average (beta 0.98).
        suggestion: the suggested peak learning rate: see :func:`suggest_learning_rate`.
        stopped_early: the sweep ended before ``end_lr`` because the smoothed loss exceeded 4x its best (or
            a loss was not finite).
        stage: the name of the :class:`~headstart.training.recipes.Stage` that was swept (``head`` or ``all``).
    """

    learning_rates: list[float]
    losses: list[float]
    smoothed_losses: list[float]
    suggestion: float
    stopped_early: bool
    stage: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (plain floats, lists and strings)."""
        return asdict(self)


def _check_arguments(dataset: ImageDataset, *, start_lr: float, end_lr: float, num_steps: int, batch_size: int,
                     weight_decay: float, label_smoothing: float, seed: int, num_workers: int) -> None:
    if not (math.isfinite(start_lr) and start_lr > 0):
        raise ParameterError(f"The 'start_lr' parameter must be a positive number. Got {start_lr!r}.",
                             fix="Pass a small positive start_lr such as 1e-7.")
    if not (math.isfinite(end_lr) and end_lr > start_lr):
        raise ParameterError(
            f"The 'end_lr' parameter must be greater than 'start_lr' (the sweep goes up). Got start_lr={start_lr!r},"
            f" end_lr={end_lr!r}.",
            fix="Pass an end_lr above start_lr, e.g. start_lr=1e-7 and end_lr=10.",
        )
    if num_steps < 10:
        raise ParameterError(f"The 'num_steps' parameter must be at least 10. Got {num_steps!r}.",
                             fix="Pass num_steps=100 (the default): fewer points cannot show the curve's shape.")
    if batch_size < 1:
        raise ParameterError(f"The 'batch_size' parameter must be >= 1. Got {batch_size!r}.",
                             fix="Pass the batch size you will train with, e.g. 32.")
    if not weight_decay >= 0:
        raise ParameterError(f"The 'weight_decay' parameter must be >= 0. Got {weight_decay!r}.",
                             fix="Pass the weight decay you will train with, e.g. 0.01.")
    if not 0 <= label_smoothing < 1:
        raise ParameterError(f"The 'label_smoothing' parameter must be in [0, 1). Got {label_smoothing!r}.",
                             fix="Pass the label smoothing you will train with, e.g. 0.1.")
    if seed < 0:
        raise ParameterError(f"The 'seed' parameter must be a non-negative integer. Got {seed!r}.",
                             fix="Pass seed=0 or another non-negative integer.")
    if num_workers < 0:
        raise ParameterError(f"The 'num_workers' parameter must be >= 0. Got {num_workers!r}.",
                             fix="Pass num_workers=0 to decode images in this process.")
    if len(dataset) == 0:
        raise ParameterError("The 'dataset' parameter holds no images: there is nothing to sweep over.",
                             fix="Pass the training images (a non-empty ImageDataset).")
    if any(label < 0 for label in dataset.labels):
        raise ParameterError("The 'dataset' parameter must be labelled: some of its labels are -1 (unknown).",
                             fix="Pass the labelled training images, not images to predict.")


@dataclass
class _NetSnapshot:
    """Everything a sweep changes in a network, taken before it and put back after it."""

    parameters: list[nn.Parameter]
    state: dict[str, torch.Tensor]
    requires_grad: list[bool]
    grads: list[torch.Tensor | None]
    modes: list[tuple[nn.Module, bool]]
    frozen: tuple[bool, bool]

    @classmethod
    def take(cls, net: ClassifierNet) -> _NetSnapshot:
        """Record ``net``'s weights, BatchNorm statistics, flags, gradients, frozen state and train/eval modes."""
        parameters = list(net.parameters())
        return cls(
            parameters=parameters,
            # on the CPU, so a large GPU model is not doubled there
            state={name: value.detach().to("cpu", copy=True) for name, value in net.state_dict().items()},
            requires_grad=[p.requires_grad for p in parameters],
            grads=[p.grad for p in parameters],
            modes=[(module, module.training) for module in net.modules()],
            frozen=(net.backbone_frozen, net.batchnorm_frozen),
        )

    def restore(self, net: ClassifierNet) -> None:
        """Put ``net`` back exactly as it was when the snapshot was taken."""
        net.load_state_dict(self.state)
        net.backbone_frozen, net.batchnorm_frozen = self.frozen
        for parameter, flag, grad in zip(self.parameters, self.requires_grad, self.grads, strict=True):
            parameter.requires_grad_(flag)
            parameter.grad = grad
        for module, mode in self.modes:
            module.training = mode


def _shuffled_loader(dataset: ImageDataset, *, batch_size: int, seed: int, num_workers: int,
                     device: torch.device) -> DataLoader:
    """A loader that reshuffles ``dataset`` each pass, seeded by ``seed`` and pinning memory for a GPU."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed),
                      num_workers=num_workers, persistent_workers=num_workers > 0, pin_memory=device.type == "cuda",
                      # equal batches when there are enough images: a 1-image batch is all noise
                      drop_last=len(dataset) > batch_size)


def _batches(loader: DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches forever: the loader is started again (reshuffled) whenever it runs out."""
    while True:
        yield from loader


def suggest_learning_rate(learning_rates: Sequence[float], smoothed_losses: Sequence[float]) -> float:
    """The learning rate half-way down the longest valley of a smoothed range-test curve (fastai's ``valley``).

    The valley is the longest run of steps, not necessarily adjacent, whose smoothed losses strictly decrease
    (the longest decreasing subsequence). It is searched after the first 10% of the points and up to the
    lowest loss, so it ends at the minimum and the divergence beyond is never part of it. The suggestion is
    the member of that run closest to its middle on the log learning-rate axis: the loss is still falling
    there, well below the learning rate of the minimum, past which training becomes unstable.

    Why not the steepest descent? Over 100 noisy mini-batches the steepest slope is often one lucky batch,
    and it can lie anywhere, even in the flat start. The valley uses the whole falling stretch, which is why
    fastai made it its default suggestion (v2.5) in place of ``steep`` and ``minimum / 10``.

    Args:
        learning_rates: increasing learning rates.
        smoothed_losses: the smoothed loss at each learning rate. Points that are not finite are ignored.

    Returns:
        One of ``learning_rates``. When the loss never falls it is the smallest one read: nothing larger was
        seen to help.

    Raises:
        ParameterError: the two sequences differ in length, or hold no finite point.

    >>> lrs = [10 ** (-6 + i / 10) for i in range(61)]  # 1e-6 ... 1
    >>> def loss(lr):  # flat, falls from 1e-4 to its minimum at 1e-2, then climbs
    ...     return 1.0 if lr < 1e-4 else 1.0 - 0.25 * math.log10(lr / 1e-4) if lr <= 1e-2 else 0.5 + 100 * lr
    >>> f"{suggest_learning_rate(lrs, [loss(lr) for lr in lrs]):.0e}"
    '1e-03'
    """
    if len(learning_rates) != len(smoothed_losses):
        raise ParameterError(
            f"The 'learning_rates' and 'smoothed_losses' parameters must have the same length. Got"
            f" {len(learning_rates)} and {len(smoothed_losses)}.",
            fix="Pass the two lists of one LRFinderResult.",
        )
    points = [i for i, loss in enumerate(smoothed_losses) if math.isfinite(loss)]
    if not points:
        raise ParameterError("The 'smoothed_losses' parameter holds no finite loss: there is no curve to read.",
                             fix="Run find_learning_rate again with a smaller start_lr.")
    points = points[len(points) // 10:]  # the first steps: lowest learning rates, noisiest averages
    # The valley ends at the lowest loss: past it the loss climbs, and a run among diverging points is no valley.
    lowest = min(points, key=lambda i: (smoothed_losses[i], i))
    points = points[:points.index(lowest) + 1]
    # Longest strictly decreasing subsequence, with back-pointers so the run itself can be read back. Among
    # equally long runs into a point the latest predecessor wins (>=), so a run does not reach back across
    # a flat stretch to its first point, which would move the middle of the valley towards the flat start.
    length = [1] * len(points)
    previous = [-1] * len(points)
    for i in range(len(points)):
        for j in range(i):
            if smoothed_losses[points[j]] > smoothed_losses[points[i]] and length[j] + 1 >= length[i]:
                length[i], previous[i] = length[j] + 1, j
    end = max(range(len(points)), key=lambda i: (length[i], -i))  # the earliest of the longest runs
    run = [end]
    while previous[run[-1]] >= 0:
        run.append(previous[run[-1]])
    run = [points[i] for i in reversed(run)]
    if len(run) < 2:
        return float(learning_rates[points[0]])
    middle = (math.log(learning_rates[run[0]]) + math.log(learning_rates[run[-1]])) / 2
    chosen = min(run, key=lambda i: abs(math.log(learning_rates[i]) - middle))
    return float(learning_rates[chosen])


def find_learning_rate(
    net: ClassifierNet,
    dataset: ImageDataset,
    *,
    stage: Stage,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_steps: int = 100,
    batch_size: int = 32,
    weight_decay: float = 0.01,
    label_smoothing: float = 0.1,
    seed: int = 0,
    num_workers: int = 0,
    progress: bool = False,
) -> LRFinderResult:
    """Run the learning-rate range test for one training stage, and leave ``net`` as it was.

    Each step trains on one mini-batch (the data are reshuffled and reused when they run out) with AdamW at a
    learning rate that grows exponentially from ``start_lr`` to ``end_lr``. The optimizer has the stage's
    parameter groups (:func:`~headstart.training.optim.parameter_groups`): the backbone is frozen when the stage
    freezes it, and with discriminative learning rates each group runs at the sweep's rate times its
    ``lr_scale``, exactly as in training, so the suggestion is the stage's ``lr`` (the head's rate). The sweep
    stops early when the smoothed loss passes 4x its best. It runs where ``net``'s parameters are (move the
    network to a GPU first to sweep there); the global random state is left untouched.

    Args:
        net: the network, its head already sized for the classes. Restored afterwards: weights, BatchNorm
            statistics, ``requires_grad`` flags, gradients, frozen state and train/eval mode.
        dataset: the training images, with their training transform.
        stage: the stage to sweep (from :func:`~headstart.training.recipes.plan_stages`); its ``lr`` is not used.
        start_lr: the first learning rate.
        end_lr: the last learning rate, reached when the sweep does not stop early.
        num_steps: mini-batches (learning rates) in the sweep.
        batch_size: images per mini-batch: the one you will train with (the usable rate depends on it).
        weight_decay: AdamW weight decay of the matrices (biases and norms get none).
        label_smoothing: of the cross-entropy loss, as in training.
        seed: seeds the shuffling and the augmentations.
        num_workers: processes decoding images (0: in this process).
        progress: show a progress bar.

    Returns:
        The recorded curve and the suggested learning rate.

    Raises:
        ParameterError: a bad range (``start_lr`` not positive, ``end_lr <= start_lr``, ``num_steps < 10``),
            another bad option, an empty or unlabelled dataset, or a network whose loss is not finite before
            any update.
        ImageDecodeError: an image of a mini-batch cannot be decoded.

    >>> import shutil, tempfile
    >>> from PIL import Image
    >>> from headstart.models import Preprocessing, create_backbone
    >>> from headstart.data import ImageDataset, build_transform
    >>> from headstart.models.classifier_net import ClassifierNet
    >>> from headstart.training.recipes import plan_stages
    >>> folder = Path(tempfile.mkdtemp())
    >>> paths = [folder / f"{i}.png" for i in range(8)]
    >>> for i, path in enumerate(paths):
    ...     Image.new("RGB", (40, 40), (200 * (i % 2), 60, 90)).save(path)
    >>> images = ImageDataset(paths, [i % 2 for i in range(8)],
    ...                       build_transform(Preprocessing(32, (0.5,) * 3, (0.25,) * 3), train=True))
    >>> net = ClassifierNet(create_backbone("timm:test_efficientnet", 2, weights="random")[0])
    >>> result = find_learning_rate(net, images, stage=plan_stages("linear_probe", 1)[0], num_steps=10, batch_size=4)
    >>> result.stage, result.learning_rates[0], 1e-7 <= result.suggestion <= 10.0
    ('head', 1e-07, True)
    >>> shutil.rmtree(folder)
    """
    _check_arguments(dataset, start_lr=start_lr, end_lr=end_lr, num_steps=num_steps, batch_size=batch_size,
                     weight_decay=weight_decay, label_smoothing=label_smoothing, seed=seed, num_workers=num_workers)
    device = next(net.parameters()).device
    saved = _NetSnapshot.take(net)

    learning_rates: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    stopped_early = False
    rng_devices: list[int] = []
    if device.type == "cuda":
        rng_devices = [torch.cuda.current_device() if device.index is None else device.index]
    try:
        with torch.random.fork_rng(devices=rng_devices):  # seeding here must not reseed the caller's program
            torch.manual_seed(seed)
            for parameter in saved.parameters:
                parameter.grad = None  # else the first backward would add to the caller's gradients
            net.set_trainable(freeze_backbone=stage.freeze_backbone, freeze_batchnorm=stage.freeze_batchnorm)
            net.train()
            optimizer = AdamW(parameter_groups(net, stage, weight_decay=weight_decay))
            criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
            batches = _batches(_shuffled_loader(dataset, batch_size=batch_size, seed=seed, num_workers=num_workers,
                                                device=device))
            ratio = end_lr / start_lr
            average = 0.0
            best = math.inf
            bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                           TextColumn("{task.fields[info]}"), transient=True, disable=not progress)
            with bar:
                task = bar.add_task(f"learning-rate range test [{stage.name}]", total=num_steps, info="")
                for step in range(num_steps):
                    lr = start_lr * ratio ** (step / (num_steps - 1))
                    for group in optimizer.param_groups:
                        group["lr"] = lr * group["lr_scale"]
                    images, labels = next(batches)
                    dataset.raise_for_failures(labels)
                    images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                    loss = criterion(net(images), labels)
                    value = float(loss.detach())
                    if not math.isfinite(value):
                        if step == 0:
                            raise ParameterError(
                                f"The 'net' parameter gives a non-finite loss ({value}) on the first mini-batch,"
                                " before any update: its weights or the images hold NaN or infinity.",
                                fix="Check the network's weights and the dataset's transform.",
                            )
                        stopped_early = True
                        break
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    average = SMOOTHING_BETA * average + (1 - SMOOTHING_BETA) * value
                    current = average / (1 - SMOOTHING_BETA ** (step + 1))
                    learning_rates.append(lr)
                    losses.append(value)
                    smoothed.append(current)
                    best = min(best, current)
                    bar.update(task, advance=1, info=f"lr {lr:.1e}  loss {current:.3f}")
                    if current > DIVERGENCE_FACTOR * best:
                        stopped_early = step < num_steps - 1
                        break
    finally:
        saved.restore(net)
    return LRFinderResult(learning_rates=learning_rates, losses=losses, smoothed_losses=smoothed,
                          suggestion=suggest_learning_rate(learning_rates, smoothed), stopped_early=stopped_early,
                          stage=stage.name)


def plot_lr_finder(result: LRFinderResult, path: str | os.PathLike[str], *, title: str | None = None) -> Path:
    """Loss against learning rate (log axis): raw losses faint, the smoothed curve, and the suggestion marked.

    Args:
        result: from :func:`find_learning_rate`.
        path: the PNG file to write (atomically: it appears whole or not at all).
        title: the figure's title; by default it names the stage.

    Returns:
        ``path``, as a :class:`~pathlib.Path`.

    >>> import tempfile
    >>> result = LRFinderResult([1e-3, 1e-2, 1e-1], [0.7, 0.5, 0.9], [0.7, 0.6, 0.7], 1e-2, False, "head")
    >>> plot_lr_finder(result, Path(tempfile.mkdtemp()) / "lr.png").read_bytes()[:4]
    b'\\x89PNG'
    """
    figure = Figure(figsize=(7, 4.5))
    axis = figure.subplots()
    lrs, raw, smooth = result.learning_rates, result.losses, result.smoothed_losses
    axis.plot(lrs, raw, color="tab:blue", alpha=0.25, linewidth=1, label="loss per mini-batch")
    axis.plot(lrs, smooth, color="tab:blue", linewidth=2, label="smoothed loss")
    if lrs:
        nearest = min(range(len(lrs)), key=lambda i: abs(math.log(lrs[i]) - math.log(result.suggestion)))
        axis.plot([result.suggestion], [smooth[nearest]], "o", color="tab:red", markersize=9,
                  label=f"suggestion: {result.suggestion:.1e}")
        # Scale to the smoothed curve: a diverging raw batch would otherwise flatten everything else.
        low, high = min(min(raw), min(smooth)), max(smooth)
        margin = 0.05 * (high - low) or 0.05 * abs(high) or 0.05
        axis.set_ylim(low - margin, high + margin)
    axis.set_xscale("log")
    axis.set_xlabel("learning rate" + (" (head; earlier layer groups scaled down)" if result.stage == "all" else ""))
    axis.set_ylabel("training loss")
    if title is None:
        title = f"Learning-rate range test, stage '{result.stage}'"
        title += " (stopped early)" if result.stopped_early else ""
    axis.set_title(title)
    axis.grid(alpha=0.3, which="both")
    axis.legend()
    return _save(figure, Path(path))
