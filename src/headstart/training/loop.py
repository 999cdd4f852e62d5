"""The one training loop, on Lightning Fabric, for every task.

Image, text and audio classification, segmentation and detection all train here. A task hands over its data and
what differs as a :class:`TrainingTask` (a few small hooks); the loop does the rest the same way for all of
them: the stages of the recipe (:mod:`headstart.training.recipes`), AdamW with discriminative learning rates and
a warm-up + cosine schedule per stage (:mod:`headstart.training.optim`), mixed precision and data-parallel
processes through Fabric (``devices``, ``precision``, ``accelerator``), the best epoch by the monitored validation
score, patience counted in the last stage, and a checkpoint after every epoch (:mod:`headstart.training.checkpoints`).
With a ``time_budget``, each trained stage runs only the epochs that fit in what is left of it, measured on the
stage's first steps before it starts (:mod:`headstart.training.budget`).
Each epoch's shuffling and augmentation are seeded from (seed, epoch), so a run resumed after epoch N replays
epochs N+1... exactly as the uninterrupted run would.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning_fabric import Fabric
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch import nn
from torch.utils.data import DataLoader, Dataset

from headstart.errors import ParameterError, ResumeError, check_choice
from headstart.training.batches import process_rank, shard_batches, shuffled_batches
from headstart.training.budget import decide_epochs, epoch_seconds, format_seconds, left_as_it_was
from headstart.training.checkpoints import load_best_weights, load_checkpoint, save_best_weights, save_checkpoint
from headstart.training.ema import WeightAverage
from headstart.training.optim import lr_factor, parameter_groups
from headstart.training.recipes import Stage

__all__ = ["TrainConfig", "TrainState", "TrainingTask", "StepOutput", "Validation", "TrainResult", "train",
           "process_rank", "shard_batches", "shuffled_batches", "PRECISIONS"]

# the adaptation probe's epochs: a first epoch spent mostly in its learning-rate warm-up is a weak test of a gain
# (docs/benchmarks.md, issue 17: FSDD leave-one-speaker-out)
PROBE_EPOCHS = 2
PRECISIONS = ("32-true", "16-mixed", "bf16-mixed")  # *-true half precision would also cast the eval path
ACCELERATORS = ("auto", "cpu", "cuda", "gpu", "mps")


@dataclass
class TrainConfig:
    """Knobs of the loop (the model, data and loss are the task's). Saved in every run and bundle."""

    batch_size: int = 32
    weight_decay: float = 0.02
    warmup_fraction: float = 0.1
    # and, where pretrained weights train, at least this many epochs of warm-up: with a tenth of one epoch the first
    # unfrozen epoch after a solved head cost 0.020 of validation accuracy on chest X-rays, with half an epoch 0.002
    # (hymenoptera: +0.006 and -0.026, both inside the CI; docs/benchmarks.md)
    min_warmup_epochs: float = 0.5
    patience: int | None = 3
    monitor: str = "val_loss"
    max_grad_norm: float | None = None
    seed: int = 0
    devices: int = 1
    accelerator: str = "auto"
    precision: str = "32-true"
    time_budget: float | None = None  # seconds for the whole loop (None: no limit)
    adaptation_probe: bool = False  # continue after a solved head only if the next epoch's gain beats the noise
    ema_decay: float | None = None  # validate and keep a moving average of the weights (training/ema.py)

    @property
    def mode(self) -> str:
        """``min`` for a monitored loss, ``max`` for a score (accuracy, mIoU, mAP)."""
        return "min" if self.monitor.endswith("loss") else "max"

    def validate(self, owner: str = "TrainConfig") -> None:
        check_choice(owner, "precision", self.precision, PRECISIONS)
        check_choice(owner, "accelerator", self.accelerator, ACCELERATORS)
        for name, value, low in (("batch_size", self.batch_size, 1), ("devices", self.devices, 1),
                                 ("seed", self.seed, 0), ("patience", self.patience, 1)):
            if value is not None and (not isinstance(value, int) or value < low):
                extra = " or None (no early stopping)" if name == "patience" else ""
                raise ParameterError(f"The '{name}' parameter of {owner} must be an integer >= {low}{extra}."
                                     f" Got {value!r}.", fix=f"Pass --{name.replace('_', '-')} {max(low, 1)} or more.")
        if self.ema_decay is not None and not (isinstance(self.ema_decay, float) and 0 < self.ema_decay < 1):
            raise ParameterError(f"The 'ema_decay' of {owner}'s training loop must be a number in (0, 1) or None."
                                 f" Got {self.ema_decay!r}.", fix="Pass e.g. ema_decay=0.99, or None for no average.")
        if self.time_budget is not None and not (isinstance(self.time_budget, (int, float)) and self.time_budget > 0):
            raise ParameterError(f"The 'time_budget' of {owner}'s training loop must be a positive number of seconds"
                                 f" or None. Got {self.time_budget!r}.", fix="Pass e.g. --time-budget 600.")


@dataclass
class StepOutput:
    """What a training step reports: the loss to minimise, the batch size, and (classification) correct answers."""

    loss: torch.Tensor
    size: int
    correct: torch.Tensor | None = None


@dataclass
class Validation:
    """Validation scores (``val_*`` keys, the monitored one among them), the payload of the epoch (e.g. its
    validation probabilities, kept for the best epoch) and more fields for the history record."""

    scores: dict[str, float]
    payload: Any = None
    record: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainingTask:
    """What differs between tasks, as small hooks.

    Args:
        dataset: ``dataset(epoch)``: the training examples of that epoch (augmentation seeded by the epoch).
        batches: ``batches(epoch)``: that epoch's batches as lists of dataset indices, the same on every process
            (each process takes every ``world_size``-th batch).
        step: ``step(module, batch) -> StepOutput``: the forward pass and loss of one batch (on the device).
        validate: ``validate(net, device) -> Validation`` on the whole validation set.
        collate: how dataset items become a batch (default: torch's).
        solve_head: for stages with ``solve``: fit the head on frozen features in one step; ``(net, fabric)``.
        fingerprint: what must not change between a run and its resumption (data, classes, settings).
        num_workers: data-loading worker processes.
        find_unused_parameters: data-parallel runs of networks with parameters a loss never reaches.
        channels_last: move the network to channels-last memory on the CPU (image CNNs run faster).
        val_items: validation examples, for the time budget's estimate of an epoch's validation pass.
        gain_check: ``gain_check(head_payload, payload) -> {"gain", "ci95", "significant"}``: the validation gain
            of an epoch over the solved head (``TrainConfig.adaptation_probe``).
        one_time_seconds: ``one_time_seconds()``: the seconds spent so far on work done once and reused (partial
            fine-tuning's cached maps), so the time budget does not expect every epoch to repeat it.
    """

    dataset: Callable[[int], Dataset]
    batches: Callable[[int], list[list[int]]]
    step: Callable[[nn.Module, Any], StepOutput]
    validate: Callable[[nn.Module, torch.device], Validation]
    collate: Callable[[list[Any]], Any] | None = None
    solve_head: Callable[[nn.Module, Fabric], Validation] | None = None
    fingerprint: dict[str, Any] = field(default_factory=dict)
    num_workers: int = 0
    find_unused_parameters: bool = False
    channels_last: bool = False
    val_items: int = 0
    gain_check: Callable[[Any, Any], dict[str, Any]] | None = None
    one_time_seconds: Callable[[], float] | None = None


@dataclass
class TrainState:
    """Where training is; saved in every checkpoint."""

    stage_index: int = 0
    epoch_in_stage: int = 0  # epochs completed in the current stage
    epoch: int = 0  # epochs completed overall
    best_score: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_early: bool = False
    finished: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)
    budget: list[dict[str, Any]] = field(default_factory=list)  # the time budget's decisions, one per stage


@dataclass
class TrainResult:
    """The final state, the payload of the restored epoch (None when that epoch ran before a resume) and the
    process this is (only the main process writes files)."""

    state: TrainState
    best_payload: Any
    is_main_process: bool
    world_size: int


def _seed_epoch(seed: int, epoch: int) -> int:
    value = seed * 10_007 + epoch
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)
    return value


def _launch(config: TrainConfig, task: TrainingTask) -> Fabric:
    strategy: Any = "auto"
    if config.devices > 1:
        from lightning_fabric.strategies import DDPStrategy

        strategy = DDPStrategy(find_unused_parameters=task.find_unused_parameters)
    try:
        fabric = Fabric(accelerator=config.accelerator, devices=config.devices, precision=config.precision,
                        strategy=strategy)
    except (ValueError, RuntimeError, TypeError) as error:  # e.g. accelerator="cuda" on a machine without GPU
        raise ParameterError(
            f"Cannot train with accelerator={config.accelerator!r}, devices={config.devices},"
            f" precision={config.precision!r} here: {str(error).splitlines()[0][:300]}",
            fix="Use --accelerator auto (or cpu) and as many --devices as this machine has.") from None
    fabric.launch()
    if fabric.device.type == "cuda":
        # the seed promises a repeatable run: cuDNN's autotuned, non-deterministic kernels broke that on an H100
        # (the same seed gave training losses 2e-4 apart after two epochs)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    return fabric


def _progress(console: Console, show: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=console, transient=True,
                    disable=not show)


class _Trainer:
    """One run of :func:`train`; its methods are the steps of the loop."""

    def __init__(self, net: nn.Module, task: TrainingTask, stages: Sequence[Stage], config: TrainConfig,
                 fabric: Fabric, run_dir: Path | None, console: Console, show: bool,
                 after_epoch: Callable[[TrainState], None] | None) -> None:
        self.net, self.task, self.stages, self.config, self.fabric = net, task, list(stages), config, fabric
        self.run_dir, self.console, self.show, self.after_epoch = run_dir, console, show, after_epoch
        self.state = TrainState()
        self.fingerprint = {"stages": [s.to_dict() for s in stages], "train_config": asdict(config),
                            **task.fingerprint}
        self.best_file: str | None = None
        self.best_weights: dict[str, torch.Tensor] | None = None  # kept in memory when there is no run folder
        self.best_payload: Any = None
        self.saved_optimizer: dict[str, Any] | None = None
        self.average: WeightAverage | None = None  # config.ema_decay: the weights' moving average in this stage
        self.saved_average: dict[str, torch.Tensor] | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.started, self.seconds_before = time.perf_counter(), 0.0  # elapsed = before a resume + since
        self.solved_payload: Any = None  # the solved head's validation payload, for the adaptation probe
        self.probe_epochs = 0

    # -- resume ------------------------------------------------------------------------------------------------
    def resume(self) -> None:
        if self.run_dir is None:
            raise ResumeError("Cannot resume without a run folder.", fix="Pass the run folder (out=RUN_DIR).")
        checkpoint = load_checkpoint(self.run_dir, self.fingerprint)
        if checkpoint is None:
            if not (self.run_dir / "config.json").is_file():
                raise ResumeError(f"{self.run_dir} has no checkpoint to resume (no run was started there).",
                                  fix="Start the run without --resume.")
            # Killed before the first epoch ended: starting over is exactly what an uninterrupted run did.
            if self.show:
                self.console.print(f"No checkpoint in {self.run_dir} yet: starting the run from the beginning.")
            return
        self.state = TrainState(**checkpoint.state)
        self.seconds_before = sum(float(record.get("seconds", 0.0)) for record in self.state.history)
        for decision in self.state.budget:  # stages the budget shortened stay shortened
            index = int(decision["index"])
            self.stages[index] = replace(self.stages[index], epochs=max(1, int(decision["epochs"])))
        self.best_file = checkpoint.best_file
        self.net.load_state_dict(checkpoint.model_state())
        self.saved_optimizer = checkpoint.optimizer_state()
        self.saved_average = checkpoint.ema_state()
        if self.show:
            stage = self.stages[min(self.state.stage_index, len(self.stages) - 1)]
            self.console.print(f"Resuming from {checkpoint.folder} (epoch {self.state.epoch}, stage {stage.name}).",
                               highlight=False)

    # -- the loop ----------------------------------------------------------------------------------------------
    def run(self) -> None:
        while not self.state.finished and self.state.stage_index < len(self.stages):
            stage = self.stages[self.state.stage_index]
            self.net.set_trainable(freeze_backbone=stage.freeze_backbone,  # type: ignore[operator]
                                   trainable_groups=stage.trainable_groups, freeze_batchnorm=stage.freeze_batchnorm)
            if stage.solve:
                self._solve_stage(stage)
            elif self._fits_budget(stage):
                self._train_stage(self.stages[self.state.stage_index])
            else:
                self.state.finished = True

    # -- the time budget -----------------------------------------------------------------------------------------
    def _elapsed(self) -> float:
        return self.seconds_before + time.perf_counter() - self.started

    def _fits_budget(self, stage: Stage) -> bool:
        """At a stage's start under a budget: measure its epoch time, shorten it to the epochs that fit; False
        when not one does (the stage and those after it are skipped)."""
        budget = self.config.time_budget
        index = self.state.stage_index
        if budget is None or self.state.epoch_in_stage > 0 or any(d["index"] == index for d in self.state.budget):
            return True
        seconds = float(self.fabric.broadcast(self._measure_epoch_seconds(), src=0))
        decision = decide_epochs(stage.name, stage.epochs, seconds, budget - self._elapsed(), budget)
        self.state.budget.append({"index": index, **decision.to_dict()})
        if self.show:
            self.console.print(decision.message(), highlight=False, markup=False)
        if decision.epochs == 0:
            return False
        self.stages[index] = replace(stage, epochs=decision.epochs)
        return True

    def _measure_epoch_seconds(self, probe_steps: int = 3) -> float:
        """An epoch's seconds, from timing the first ``probe_steps`` forward + backward steps of the stage's real
        batches (no optimizer step; :func:`~headstart.training.budget.left_as_it_was` puts everything back)."""
        times: list[float] = []
        with left_as_it_was(self.net):
            loader, steps = self._loader(self.state.epoch)
            self.net.train()
            started = time.perf_counter()
            for step, batch in enumerate(loader):
                with self.fabric.autocast():
                    output = self.task.step(self.net, batch)
                output.loss.backward()
                now = time.perf_counter()
                times.append(now - started)
                started = now
                if step + 1 >= probe_steps:
                    break
            del loader
        if not times:
            return 0.0
        per_step = float(np.mean(times[1:])) if len(times) > 1 else times[0]
        # the first step (worker start-up, first allocations) counted as it was
        return times[0] - per_step + epoch_seconds(per_step, steps, self.task.val_items, self.config.batch_size)

    def _one_time_seconds(self) -> float:
        return float(self.task.one_time_seconds()) if self.task.one_time_seconds is not None else 0.0

    def _over_budget_after(self, record: dict[str, Any]) -> bool:
        """Between epochs: True (and printed) when another epoch like the last one (without its one-time work)
        would overrun the budget."""
        budget = self.config.time_budget
        another = float(record["seconds"]) - float(record.get("one_time_seconds", 0.0))
        if budget is None or self._elapsed() + another <= budget:
            return False
        if self.show:
            self.console.print(f"Time budget: stopping after epoch {record['epoch']}: another would take"
                               f" ~{format_seconds(another)} and {format_seconds(max(0, budget - self._elapsed()))}"
                               f" of the {format_seconds(budget)} budget are left (--time-budget).", highlight=False)
        self.state.budget.append({"index": self.state.stage_index, "stage": record["stage"], "stopped_after_epoch":
                                  record["epoch"], "epochs": self.state.epoch_in_stage + 1})
        return True

    def _adaptation_pays(self, record: dict[str, Any], payload: Any) -> bool:
        """With ``adaptation_probe``, after each of the first :data:`PROBE_EPOCHS` trained epochs that follow a
        solved head: whether to go on. A validation gain over the head beyond the bootstrap noise ends the probe
        (``task.gain_check``; kept in the record); without one, training stops after the last probe epoch (a first
        epoch spent mostly in warm-up fell below the head and then gained, on FSDD). False ends training; the best
        epoch so far is what the run keeps."""
        if not self.config.adaptation_probe or self.task.gain_check is None or self.solved_payload is None:
            return True
        check = {**self.task.gain_check(self.solved_payload, payload), "epoch": self.probe_epochs + 1}
        self.probe_epochs += 1
        record["adaptation_probe"] = check
        last = self.probe_epochs >= PROBE_EPOCHS
        if check["significant"] or last:
            self.solved_payload = None  # the probe is over
        if self.show:
            verdict = "continuing" if check["significant"] else "stopping: the solved head is kept unless this epoch" \
                " beat it" if last else f"no clear gain yet, probing one more epoch (of {PROBE_EPOCHS})"
            self.console.print(f"Adaptation probe: validation accuracy {check['gain']:+.4f} over the solved head"
                               f" (95% CI {check['ci95'][0]:+.4f} to {check['ci95'][1]:+.4f}, paired bootstrap);"
                               f" {verdict}.", highlight=False)
        return bool(check["significant"]) or not last

    def _solve_stage(self, stage: Stage) -> None:
        """A frozen head solved to convergence on cached features: one step, recorded as one epoch."""
        if self.task.solve_head is None:
            raise ParameterError(f"Stage {stage.name!r} solves its head, but this task cannot.",
                                 fix="Plan the stage with solve=False.")
        started = time.perf_counter()
        validation = self.task.solve_head(self.net, self.fabric)
        self.solved_payload, self.probe_epochs = validation.payload, 0
        record = {"epoch": self.state.epoch + 1, "stage": stage.name, **validation.record, **validation.scores,
                  "lr": 0.0, "seconds": round(time.perf_counter() - started, 2)}
        self.state.epoch_in_stage = stage.epochs - 1  # the stage is complete after this one step
        self.optimizer = None
        self._end_epoch(record, validation.payload)

    def _train_stage(self, stage: Stage) -> None:
        # A new DDP wrapper per stage: DDP only synchronises parameters that require grad when it is built.
        module = self.fabric.setup_module(self.net)
        optimizer = torch.optim.AdamW(parameter_groups(self.net, stage, weight_decay=self.config.weight_decay))
        self.optimizer = self.fabric.setup_optimizers(optimizer)
        if self.saved_optimizer is not None:
            self.optimizer.load_state_dict(self.saved_optimizer)
            self.saved_optimizer = None
        self.average = None if self.config.ema_decay is None else WeightAverage(self.net, self.config.ema_decay)
        if self.average is not None and self.saved_average is not None:
            self.average.load_state_dict(self.saved_average)
        self.saved_average = None
        steps = math.ceil(len(self.task.batches(self.state.epoch)) / self.fabric.world_size)
        shortest = 0.0 if stage.freeze_backbone else min(self.config.min_warmup_epochs, stage.epochs)
        warmup = max(self.config.warmup_fraction * stage.epochs, shortest)
        schedule = (stage.epochs * steps, int(warmup * steps))
        while self.state.epoch_in_stage < stage.epochs:
            started, once = time.perf_counter(), self._one_time_seconds()
            record = self._train_epoch(module, self.optimizer, stage, steps, schedule)
            averaged = None
            with self.average.applied(self.net) if self.average is not None else nullcontext():
                validation = self.task.validate(self.net, self.fabric.device)
                if self.average is not None:  # the epoch's weights are the average's: kept if best
                    averaged = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
            record.update({**validation.record, **validation.scores,
                           "seconds": round(time.perf_counter() - started, 2)})
            if self.task.one_time_seconds is not None:
                record["one_time_seconds"] = round(self._one_time_seconds() - once, 2)
            # decided before the epoch is recorded, so that its checkpoint knows the run is over
            stop = bool(self.fabric.broadcast(not self._adaptation_pays(record, validation.payload)
                                              or self._over_budget_after(record), src=0))
            self.state.finished = self.state.finished or stop
            if self._end_epoch(record, validation.payload, averaged) or stop:
                break

    def _train_epoch(self, module: nn.Module, optimizer: Any, stage: Stage, steps: int,
                     schedule: tuple[int, int]) -> dict[str, Any]:
        epoch, fabric = self.state.epoch, self.fabric
        loader, n_batches = self._loader(epoch)
        self.net.train()
        totals = torch.zeros(3, device=fabric.device)  # loss sum, correct answers, examples
        counted = False
        factor = 1.0
        with _progress(self.console, self.show) as bar:
            task = bar.add_task(f"epoch {epoch + 1} [{stage.name}]", total=n_batches, info="")
            for step, batch in enumerate(loader):
                factor = lr_factor(self.state.epoch_in_stage * steps + step, schedule[0], warmup_steps=schedule[1])
                for group in optimizer.param_groups:
                    group["lr"] = stage.lr * group["lr_scale"] * factor
                output = self.task.step(module, batch)
                value = float(output.loss.detach())
                if not self._all_finite(value):
                    raise ParameterError(f"The training loss became {value} in epoch {epoch + 1}: the learning"
                                         f" rate {stage.lr:g} is too high for this data.",
                                         fix="Lower the learning rate (--lr) and start again.")
                optimizer.zero_grad(set_to_none=True)
                fabric.backward(output.loss)
                if self.config.max_grad_norm is not None:
                    fabric.clip_gradients(module, optimizer, max_norm=self.config.max_grad_norm)
                optimizer.step()
                if self.average is not None:
                    self.average.update(self.net)
                totals[0] += output.loss.detach().float() * output.size
                totals[2] += output.size
                if output.correct is not None:
                    totals[1] += output.correct
                    counted = True
                bar.update(task, advance=1, info=f"loss {value:.3f}")
        totals = fabric.all_reduce(totals, reduce_op="sum")
        record = {"epoch": epoch + 1, "stage": stage.name, "train_loss": float(totals[0] / totals[2].clamp(min=1))}
        if counted:
            record["train_accuracy"] = float(totals[1] / totals[2].clamp(min=1))
        record["lr"] = stage.lr * factor
        return record

    def _loader(self, epoch: int) -> tuple[Any, int]:
        """This process's batches of ``epoch`` (seeded by it), on the device, and how many there are."""
        fabric = self.fabric
        seed = _seed_epoch(self.config.seed, epoch)
        batches = shard_batches(self.task.batches(epoch), fabric.global_rank, fabric.world_size)
        loader = DataLoader(self.task.dataset(epoch), batch_sampler=batches, collate_fn=self.task.collate,
                            num_workers=self.task.num_workers, generator=torch.Generator().manual_seed(seed),
                            pin_memory=fabric.device.type == "cuda")
        return fabric.setup_dataloaders(loader, use_distributed_sampler=False, move_to_device=True), len(batches)

    def _all_finite(self, value: float) -> bool:
        """Whether every process's loss is finite: they must stop together, or the others would wait forever
        for this one's gradients."""
        if self.fabric.world_size == 1:
            return math.isfinite(value)
        flag = torch.tensor(0.0 if math.isfinite(value) else 1.0, device=self.fabric.device)
        return float(self.fabric.all_reduce(flag, reduce_op="sum")) == 0.0

    def _improved(self, score: float) -> bool:
        best = self.state.best_score
        return best is None or (score < best if self.config.mode == "min" else score > best)

    def _end_epoch(self, record: dict[str, Any], payload: Any, weights: dict[str, torch.Tensor] | None = None) -> bool:
        """Record an epoch, track the best one (its ``weights``: the network's unless given), checkpoint; True when
        the current stage loop must end."""
        state, stage, fabric = self.state, self.stages[self.state.stage_index], self.fabric
        # Rank 0's scores decide for every process, so early stopping and the best epoch never differ between
        # ranks (GPU kernels need not give bit-identical scores).
        record = fabric.broadcast(record, src=0)
        state.history.append(record)
        state.epoch += 1
        state.epoch_in_stage += 1
        if self.config.monitor not in record:
            raise ParameterError(f"The monitored score {self.config.monitor!r} is not among this task's validation"
                                 f" scores {sorted(k for k in record if k.startswith('val_'))}.",
                                 fix="Pass one of those as monitor.")
        improved = self._improved(record[self.config.monitor])
        if improved:
            state.best_score, state.best_epoch, state.bad_epochs = record[self.config.monitor], state.epoch, 0
            self.best_payload = payload
            weights = weights or {k: v.detach().clone() for k, v in self.net.state_dict().items()}
            if self.run_dir is None:
                self.best_weights = weights
            else:
                self.best_file = f"best-epoch-{state.epoch:04d}.safetensors"
                if fabric.is_global_zero:
                    save_best_weights(self.run_dir, state.epoch, weights)
        elif state.stage_index == len(self.stages) - 1:
            state.bad_epochs += 1  # patience counts only in the last stage: a frozen warm-up is never cut short
        self._print_epoch(record, improved)
        if self.config.patience is not None and state.bad_epochs >= self.config.patience:
            state.stopped_early = state.finished = True
        stage_done = state.epoch_in_stage >= stage.epochs
        if stage_done and not state.finished:
            state.stage_index, state.epoch_in_stage = state.stage_index + 1, 0
        state.finished = state.finished or state.stage_index >= len(self.stages)
        if self.run_dir is not None and fabric.is_global_zero:
            # after a stage ends the next one builds a new optimizer, so its state is not worth keeping
            save_checkpoint(self.run_dir, epoch=state.epoch, model=self.net,
                            optimizer=None if stage_done else self.optimizer, state=asdict(state),
                            best_file=self.best_file, fingerprint=self.fingerprint,
                            ema=None if stage_done or self.average is None else self.average.state_dict())
        fabric.barrier()
        if self.after_epoch is not None:
            self.after_epoch(state)
        return state.finished or stage_done

    def _print_epoch(self, record: dict[str, Any], improved: bool) -> None:
        if not self.show:
            return
        train = f"train loss {record['train_loss']:.4f}" + (
            f" acc {record['train_accuracy']:.3f}" if "train_accuracy" in record else "")
        val = ", ".join(f"{k[4:]} {v:.4f}" for k, v in record.items() if k.startswith("val_") and
                        isinstance(v, float))
        solved = f"  (linear head solved, L2 {record['l2']:g} by CV)" if "l2" in record else ""
        self.console.print(f"epoch {record['epoch']:>3} [{record['stage']:>4}]  {train} | val {val}"
                           f"  {record['seconds']:.1f}s" + ("  *" if improved else "") + solved,
                           markup=False, highlight=False)

    def finish(self) -> TrainResult:
        """Restore the best epoch. With checkpoints, every rank reads rank 0's file (after the last barrier)."""
        if self.run_dir is not None and self.best_file is not None:
            self.net.load_state_dict(load_best_weights(self.run_dir, self.best_file))
        elif self.best_weights is not None:
            self.net.load_state_dict(self.best_weights)
        self.net.set_trainable(freeze_backbone=False)  # type: ignore[operator]
        self.net.eval()
        if self.show and self.state.stopped_early:
            self.console.print(f"Early stopping: no {self.config.monitor} improvement for {self.config.patience}"
                               " epochs.")
        if self.show and self.state.best_score is not None:
            self.console.print(f"Restored the best epoch ({self.state.best_epoch}, {self.config.monitor}"
                               f" {self.state.best_score:.4f}).", highlight=False)
        return TrainResult(self.state, self.best_payload, self.fabric.is_global_zero, self.fabric.world_size)


def train(net: nn.Module, task: TrainingTask, *, stages: Sequence[Stage], config: TrainConfig,
          run_dir: Path | None = None, resume: bool = False, console: Console | None = None, progress: bool = True,
          after_epoch: Callable[[TrainState], None] | None = None) -> TrainResult:
    """Train ``net`` (a :class:`~headstart.models.transfer.TransferMixin` network) through ``stages``; restore the
    best epoch's weights at the end.

    Args:
        net: the network, its new part already sized for the task.
        task: the task's data and hooks.
        stages: from :func:`headstart.training.recipes.plan_stages`.
        config: loop settings (``devices``, ``precision``, ``accelerator`` go to Lightning Fabric).
        run_dir: where checkpoints go (``run_dir/checkpoints``); None trains without checkpoints.
        resume: continue from the latest checkpoint in ``run_dir`` (a run folder without one starts over).
        console: where to print; progress bars and epoch lines are shown when ``progress``.
        after_epoch: called with the state after every epoch (after its checkpoint is written).

    Raises:
        ResumeError: nothing to resume, or a checkpoint written for other data or settings.
        ParameterError: settings Fabric cannot run here, or a loss that became infinite.
    """
    config.validate()
    console = console or Console()
    fabric = _launch(config, task)
    net.to(fabric.device)
    if task.channels_last and fabric.device.type == "cpu":
        net.to(memory_format=torch.channels_last)
    trainer = _Trainer(net, task, stages, config, fabric, run_dir, console, progress and fabric.is_global_zero,
                       after_epoch)
    if resume:
        trainer.resume()
    trainer.run()
    return trainer.finish()
