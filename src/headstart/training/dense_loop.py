"""The training loop for dense tasks (segmentation, detection): stages, epochs, checkpoints, resume.

The recipe is the classification one (fastai's ``fine_tune``): first the pretrained encoder is frozen and only
the new decoder / detection heads learn; then everything trains, the encoder at a lower learning rate
(``encoder_lr_mult`` of the head's). AdamW, linear warm-up then cosine decay within each stage
(:func:`headstart.training.loop.lr_factor`), the best epoch by the validation metric kept. The encoder's BatchNorm
layers keep their ImageNet statistics (batches of a few images would make them noise) unless the encoder starts
from random weights. After every epoch the model, optimizer and loop state go to ``checkpoints/`` so a killed
run resumes where it stopped; each epoch's augmentation and shuffling are seeded from (seed, epoch), so the
resumed run replays what the uninterrupted one would have done.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from torch import nn

from headstart.errors import ParameterError, ResumeError
from headstart.models.dense import freeze_batchnorm
from headstart.storage import (
    atomic_directory,
    atomic_save_tensors,
    atomic_write_json,
    flatten_optimizer_state,
    load_tensors,
    read_json,
    unflatten_optimizer_state,
)
from headstart.training.loop import lr_factor

__all__ = ["DenseStage", "DenseLoopState", "plan_dense_stages", "train_dense", "CHECKPOINT_DIR"]

CHECKPOINT_DIR = "checkpoints"


@dataclass(frozen=True)
class DenseStage:
    """One stage: ``epochs`` at head learning rate ``lr``; the encoder at ``lr * encoder_lr_mult`` (0 = frozen)."""

    name: str
    epochs: int
    lr: float
    encoder_lr_mult: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_dense_stages(*, epochs: int, frozen_epochs: int, lr: float, encoder_lr_mult: float,
                      pretrained: bool) -> list[DenseStage]:
    """Frozen encoder for ``frozen_epochs``, then all layers for the rest (a random encoder trains throughout).

    >>> [(s.name, s.epochs) for s in plan_dense_stages(epochs=10, frozen_epochs=3, lr=1e-3, encoder_lr_mult=0.1,
    ...                                                  pretrained=True)]
    [('frozen_encoder', 3), ('fine_tune', 7)]
    >>> [(s.name, s.epochs, s.encoder_lr_mult) for s in plan_dense_stages(epochs=10, frozen_epochs=3, lr=1e-3,
    ...                                                                    encoder_lr_mult=0.1, pretrained=False)]
    [('from_scratch', 10, 1.0)]
    """
    if not pretrained:
        return [DenseStage("from_scratch", epochs, lr, 1.0)]
    frozen = min(frozen_epochs, epochs)
    stages = [DenseStage("frozen_encoder", frozen, lr, 0.0)] if frozen else []
    if epochs > frozen:
        stages.append(DenseStage("fine_tune", epochs - frozen, lr, encoder_lr_mult))
    return stages


@dataclass
class DenseLoopState:
    """Where training is; saved in every checkpoint."""

    stage_index: int = 0
    epoch_in_stage: int = 0
    epoch: int = 0
    best_score: float | None = None
    best_epoch: int = 0
    stale: int = 0
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)


def _optimizer(net: nn.Module, encoder: nn.Module, stage: DenseStage, weight_decay: float) -> torch.optim.Optimizer:
    encoder_ids = {id(p) for p in encoder.parameters()}
    for parameter in encoder.parameters():
        parameter.requires_grad_(stage.encoder_lr_mult > 0)
    head = [p for p in net.parameters() if id(p) not in encoder_ids]
    groups = []
    for params, scale in ((head, 1.0), (list(encoder.parameters()) if stage.encoder_lr_mult > 0 else [], stage.encoder_lr_mult)):
        for members, decay in (([p for p in params if p.ndim > 1], weight_decay), ([p for p in params if p.ndim <= 1], 0.0)):
            if members:
                groups.append({"params": members, "lr": stage.lr * scale, "lr_scale": scale, "weight_decay": decay})
    return torch.optim.AdamW(groups, lr=stage.lr)


def _save_checkpoint(folder: Path, net: nn.Module, optimizer: torch.optim.Optimizer, state: DenseLoopState,
                     best: dict[str, torch.Tensor] | None, fingerprint: dict[str, Any]) -> None:
    with atomic_directory(folder) as temporary:
        atomic_save_tensors(temporary / "model.safetensors", net.state_dict())
        tensors, structure = flatten_optimizer_state(optimizer.state_dict())
        atomic_save_tensors(temporary / "optimizer.safetensors", tensors)
        if best is not None:
            atomic_save_tensors(temporary / "best.safetensors", best)
        atomic_write_json(temporary / "state.json", {"state": asdict(state), "optimizer": structure,
                                                     "fingerprint": fingerprint})


def _set_train_mode(net: nn.Module, encoder: nn.Module, *, frozen_batchnorm: bool) -> None:
    net.train()
    if frozen_batchnorm:
        freeze_batchnorm(encoder)


def train_dense(net: nn.Module, *, encoder: nn.Module, stages: list[DenseStage],
                batches: Callable[[int], Iterable[Any]], steps_per_epoch: int,
                loss: Callable[[nn.Module, Any], torch.Tensor], validate: Callable[[nn.Module], dict[str, float]],
                monitor: str, weight_decay: float = 1e-4, warmup_fraction: float = 0.1, patience: int | None = None,
                max_grad_norm: float = 10.0, frozen_batchnorm: bool = True, seed: int = 0,
                run_dir: Path | None = None, resume: bool = False, fingerprint: dict[str, Any] | None = None,
                console: Console, progress: bool = True) -> DenseLoopState:
    """Train ``net`` stage by stage; keep the epoch with the highest ``validate(net)[monitor]``.

    Args:
        encoder: the pretrained part of ``net`` (frozen in stages with ``encoder_lr_mult == 0``).
        batches: ``batches(epoch)`` gives that epoch's training batches (seeded from the epoch).
        loss: ``loss(net, batch)`` -> the scalar to minimise.
        validate: metrics on the validation data, higher ``monitor`` is better.
        run_dir: where ``checkpoints/`` is written after every epoch; ``resume`` continues from it.
        fingerprint: what must match for a resume (data, classes, settings); a mismatch is a ResumeError.

    Returns:
        The final loop state; ``net`` holds the best epoch's weights.
    """
    fingerprint = json.loads(json.dumps(fingerprint or {}))  # as saved: tuples become lists
    state = DenseLoopState()
    best_weights: dict[str, torch.Tensor] | None = None
    optimizer_state: dict[str, Any] | None = None
    folder = run_dir / CHECKPOINT_DIR if run_dir is not None else None
    if resume:
        if folder is None or not (folder / "state.json").is_file():
            raise ResumeError(f"No checkpoint to resume in {folder}.", fix="Start the run without --resume.")
        saved = read_json(folder / "state.json")
        if saved.get("fingerprint") != fingerprint:
            before, now = saved.get("fingerprint") or {}, fingerprint
            differ = sorted(k for k in set(before.get("params", {})) | set(now.get("params", {}))
                            if before.get("params", {}).get(k) != now.get("params", {}).get(k))
            differ += [k for k in ("classes", "n_train", "n_val") if before.get(k) != now.get(k)]
            raise ResumeError(f"The checkpoint in {folder} was written for other data or settings (differing: "
                              f"{', '.join(differ) or 'unknown'}).",
                              fix="Resume with the run's own settings, or start a new run.")
        state = DenseLoopState(**saved["state"])
        net.load_state_dict(load_tensors(folder / "model.safetensors"))
        if (folder / "best.safetensors").is_file():
            best_weights = load_tensors(folder / "best.safetensors")
        optimizer_state = unflatten_optimizer_state(load_tensors(folder / "optimizer.safetensors"), saved["optimizer"])
        console.print(f"Resuming after epoch {state.epoch} (stage {state.stage_index + 1}/{len(stages)}).",
                      highlight=False)
    while state.stage_index < len(stages) and not state.stopped_early:
        index = state.stage_index
        stage = stages[index]
        if stage.epochs < 1:
            state.stage_index += 1
            continue
        optimizer = _optimizer(net, encoder, stage, weight_decay)
        if optimizer_state is not None and state.epoch_in_stage > 0:  # mid-stage: the saved moments apply
            optimizer.load_state_dict(optimizer_state)
        optimizer_state = None
        total = max(1, stage.epochs * steps_per_epoch)
        warmup = int(warmup_fraction * total)
        trainable = [p for group in optimizer.param_groups for p in group["params"]]
        while state.stage_index == index and not state.stopped_early:
            epoch = state.epoch + 1
            torch.manual_seed(seed * 100_003 + epoch)
            _set_train_mode(net, encoder, frozen_batchnorm=frozen_batchnorm or stage.encoder_lr_mult == 0)
            started, losses = time.perf_counter(), []
            step = state.epoch_in_stage * steps_per_epoch
            with Progress(TextColumn(f"{stage.name} epoch {epoch}"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("{task.description}"), TimeRemainingColumn(), console=console,
                          disable=not progress, transient=True) as bar:
                task = bar.add_task("", total=steps_per_epoch)
                for batch in batches(epoch):
                    for group in optimizer.param_groups:
                        group["lr"] = stage.lr * group["lr_scale"] * lr_factor(step, total, warmup_steps=warmup)
                    value = loss(net, batch)
                    if not math.isfinite(value.item()):
                        raise ParameterError(f"The training loss became {value.item()} in epoch {epoch}: the"
                                             f" learning rate {stage.lr:g} is too high for this data.",
                                             fix="Lower the learning rate (--lr) and start again.")
                    optimizer.zero_grad(set_to_none=True)
                    value.backward()
                    torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
                    optimizer.step()
                    step += 1
                    losses.append(float(value.detach()))
                    bar.update(task, advance=1, description=f"loss {np.mean(losses[-20:]):.4f}")
            train_seconds = time.perf_counter() - started
            net.eval()
            with torch.no_grad():
                metrics = validate(net)
            record = {"epoch": epoch, "stage": stage.name, "train_loss": float(np.mean(losses)) if losses else None,
                      **{f"val_{k}": float(v) for k, v in metrics.items()},
                      "lr": stage.lr, "seconds": round(time.perf_counter() - started, 1),
                      "train_seconds": round(train_seconds, 1)}
            state.history.append(record)
            state.epoch, state.epoch_in_stage = epoch, state.epoch_in_stage + 1
            score = record[f"val_{monitor}"]
            if state.best_score is None or score > state.best_score:
                state.best_score, state.best_epoch, state.stale = score, epoch, 0
                best_weights = {k: v.detach().clone() for k, v in net.state_dict().items()}
            elif index == len(stages) - 1:  # patience counts in the last stage only (never skip the unfreeze)
                state.stale += 1
            shown = ", ".join(f"{k} {v:.4f}" for k, v in record.items() if k.startswith("val_"))
            console.print(f"epoch {epoch} ({stage.name}): train loss {record['train_loss']:.4f}, {shown}"
                          f" ({record['seconds']}s)", highlight=False)
            if patience is not None and state.stale >= patience:
                console.print(f"Early stopping: val {monitor} did not improve for {state.stale} epochs.")
                state.stopped_early = True
            if state.epoch_in_stage >= stage.epochs and not state.stopped_early:
                state.stage_index, state.epoch_in_stage = state.stage_index + 1, 0
            if folder is not None:
                _save_checkpoint(folder, net, optimizer, state, best_weights, fingerprint)
    if best_weights is not None:
        net.load_state_dict(best_weights)
        if state.best_epoch != state.epoch:
            console.print(f"Restored epoch {state.best_epoch} (best val {monitor} {state.best_score:.4f}).",
                          highlight=False)
    for parameter in net.parameters():
        parameter.requires_grad_(True)
    net.eval()
    return state
