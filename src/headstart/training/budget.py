"""Time budgets: how many epochs of a stage fit in the time left, and the ``time_budget`` parameter's values.

A stage's epoch time is measured, not guessed: the loop times a few forward + backward steps of the stage on
its real batches before it starts (weights and BatchNorm statistics are put back afterwards), extrapolates to
the epoch, and runs only the epochs that fit in what is left of the budget; a stage of which not one epoch fits
is skipped. The decisions are printed and kept in the run's history (``TrainState.budget``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from headstart.errors import ParameterError

__all__ = ["AUTO_BUDGET", "MIN_TUNE_EPOCHS", "FORWARD_SHARE", "left_as_it_was", "epoch_seconds", "BudgetDecision", "decide_epochs", "parse_time_budget", "format_seconds",
           "training_images_per_second", "fine_tune_within", "resolve_time_budget"]

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
# time_budget="auto" with strategy="auto" (images): seconds for the training stages. On this project's 2-core CPU
# an unfrozen EfficientNet-Lite0 epoch runs at ~5 images/s and has never beaten the solved head
# (docs/benchmarks.md), so the CPU default leaves room for a linear probe of thousands of images, not 40 minutes.
AUTO_BUDGET = {"cpu": 300.0, "gpu": 1800.0}
# auto fine-tunes only when this many unfrozen epochs fit in the budget: one epoch has not paid on images
MIN_TUNE_EPOCHS = 2
# a forward pass (validation) takes about this share of a training step's forward + backward
FORWARD_SHARE = 1 / 3


def parse_time_budget(value: Any, *, owner: str = "ImageClassifier") -> float | str | None:
    """``None`` / ``"none"`` / ``0``: no budget; ``"auto"``: the estimator's default; otherwise seconds (a number,
    or a string with unit: ``"300"``, ``"300s"``, ``"5m"``, ``"1.5h"``).

    >>> parse_time_budget("5m"), parse_time_budget(90), parse_time_budget("none"), parse_time_budget("auto")
    (300.0, 90.0, None, 'auto')
    """
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("auto",):
            return "auto"
        if text in ("none", "off", "0"):
            return None
        match = re.fullmatch(r"(\d+(?:\.\d*)?)\s*(s|m|min|h)?", text)
        if match is None:
            raise ParameterError(f"The 'time_budget' parameter of {owner} must be seconds (e.g. 300), a time with a"
                                 f" unit (300s, 5m, 1.5h), 'auto' or 'none'. Got {value!r}.",
                                 fix="Pass e.g. --time-budget 10m.")
        seconds = float(match.group(1)) * _UNITS[match.group(2) or ""]
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        seconds = float(value)
    else:
        raise ParameterError(f"The 'time_budget' parameter of {owner} must be a number of seconds, a string such as"
                             f" '5m', 'auto' or None. Got {value!r}.", fix="Pass e.g. time_budget=600.")
    if seconds < 0:
        raise ParameterError(f"The 'time_budget' parameter of {owner} must not be negative. Got {value!r}.",
                             fix="Pass a positive number of seconds, or 'none' for no budget.")
    return seconds or None


def format_seconds(seconds: float) -> str:
    """``"42 s"``, ``"7.5 min"``, ``"2.5 h"``.

    >>> format_seconds(42.4), format_seconds(450), format_seconds(9000)
    ('42 s', '7.5 min', '2.5 h')
    """
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass
class BudgetDecision:
    """What the budget allowed for one stage."""

    stage: str
    planned_epochs: int
    epochs: int
    epoch_seconds: float
    seconds_left: float
    budget_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "epoch_seconds": round(self.epoch_seconds, 1),
                "seconds_left": round(self.seconds_left, 1)}

    def message(self) -> str:
        each = f"one epoch takes ~{format_seconds(self.epoch_seconds)} (measured on its first steps)"
        left = f"{format_seconds(max(self.seconds_left, 0))} of the {format_seconds(self.budget_seconds)} budget left"
        if self.epochs == 0:
            return (f"Time budget: stage {self.stage!r} skipped: {each}, {left} (--time-budget). The best model so"
                    " far is kept.")
        if self.epochs < self.planned_epochs:
            return (f"Time budget: stage {self.stage!r} shortened to {self.epochs} of {self.planned_epochs} epochs:"
                    f" {each}, {left} (--time-budget).")
        return f"Time budget: stage {self.stage!r}, {self.epochs} epochs: {each}, {left}."


def decide_epochs(stage: str, planned: int, epoch_seconds: float, seconds_left: float,
                  budget_seconds: float) -> BudgetDecision:
    """The epochs of a ``planned``-epoch stage that fit in ``seconds_left`` at ``epoch_seconds`` each.

    >>> decide_epochs("all", 6, 100.0, 250.0, 600.0).epochs, decide_epochs("all", 6, 400.0, 250.0, 600.0).epochs
    (2, 0)
    """
    fit = planned if epoch_seconds <= 0 else max(0, min(planned, int(seconds_left // epoch_seconds)))
    return BudgetDecision(stage, planned, fit, epoch_seconds, seconds_left, budget_seconds)


@contextmanager
def left_as_it_was(net: Any) -> Iterator[None]:
    """Run timing steps on ``net`` and leave no trace: its weights, BatchNorm statistics, gradients, which
    parameters train, its training flag and the global random state are all put back afterwards."""
    import torch

    saved = {name: value.detach().clone() for name, value in net.state_dict().items()}
    trainable = [p.requires_grad for p in net.parameters()]
    was_training = net.training
    with torch.random.fork_rng(devices=[]):  # dropout draws must not shift the run's random numbers
        try:
            yield
        finally:
            net.zero_grad(set_to_none=True)
            net.load_state_dict(saved)
            for parameter, flag in zip(net.parameters(), trainable):
                parameter.requires_grad_(flag)
            net.train(was_training)


def epoch_seconds(step_seconds: float, n_train_steps: int, n_val_items: int, batch_size: int) -> float:
    """An epoch's seconds from one training step's: the training steps, then a validation pass (forward only,
    about :data:`FORWARD_SHARE` of a step per batch).

    >>> epoch_seconds(1.0, 10, 64, 32)
    10.666666666666666
    """
    return n_train_steps * step_seconds + n_val_items / max(1, batch_size) * step_seconds * FORWARD_SHARE


def training_images_per_second(net: Any, input_size: int, *, batch: int = 8, steps: int = 3) -> float:
    """Images per second of a full (unfrozen) forward + backward pass of an image network on the CPU, timed on
    random inputs after one warm-up step (:func:`left_as_it_was`: measuring changes nothing about the run)."""
    import time

    import torch

    pixels = torch.randn(batch, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
    pixels = pixels.contiguous(memory_format=torch.channels_last)
    labels = torch.zeros(batch, dtype=torch.long)
    times = []
    with left_as_it_was(net):
        for parameter in net.parameters():
            parameter.requires_grad_(True)
        net.train()
        for _ in range(max(2, steps)):
            started = time.perf_counter()
            torch.nn.functional.cross_entropy(net(pixels), labels).backward()
            times.append(time.perf_counter() - started)
    timed = sorted(times[1:])
    return batch / float(timed[len(timed) // 2])


def resolve_time_budget(value: Any, *, strategy: str, on_gpu: bool, owner: str = "ImageClassifier") -> float | None:
    """``time_budget`` in seconds; ``"auto"`` is :data:`AUTO_BUDGET` when ``strategy`` is ``auto``, else no limit.

    >>> resolve_time_budget("auto", strategy="auto", on_gpu=False), resolve_time_budget("auto", strategy="fine_tune",
    ...                                                                                   on_gpu=False)
    (300.0, None)
    """
    budget = parse_time_budget(value, owner=owner)
    if budget == "auto":
        return AUTO_BUDGET["gpu" if on_gpu else "cpu"] if strategy == "auto" else None
    return budget  # type: ignore[return-value]


def fine_tune_within(budget: float, net: Any, *, strategy: str, reason: str, n_train: int, n_val: int,
                     input_size: int) -> tuple[str, str, dict[str, float]]:
    """``auto``'s ``strategy`` if :data:`MIN_TUNE_EPOCHS` unfrozen epochs of ``net`` fit in ``budget`` seconds on
    this CPU (with a fifth of it left for the frozen head stage), else ``linear_probe``; the reason, and the
    measured figures."""
    speed = training_images_per_second(net, input_size)
    epoch = epoch_seconds(1 / speed, n_train, n_val, 1)  # per image: "steps" of one image
    figures = {"train_images_per_second": round(speed, 2), "estimated_epoch_seconds": round(epoch, 1)}
    if MIN_TUNE_EPOCHS * epoch <= 0.8 * budget:
        return strategy, f"{reason}; an unfrozen epoch takes ~{format_seconds(epoch)} here", figures
    return "linear_probe", (
        f"{n_train} training images, but an unfrozen epoch would take ~{format_seconds(epoch)} here (measured:"
        f" {speed:.1f} images/s) and {MIN_TUNE_EPOCHS} must fit in the {format_seconds(budget)} budget: frozen"
        " backbone, linear head on cached features (--time-budget or --strategy fine_tune to fine-tune)"), figures
