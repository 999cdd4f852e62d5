"""The training loop: stages, epochs, warm-up + cosine schedule, early stopping, checkpoints, resume.

Built on Lightning Fabric, so the same loop runs on one CPU, one GPU with mixed precision, or several
processes with DistributedDataParallel (``devices=2`` on CPU uses gloo). Each epoch starts from a seed derived
from the run's seed and the epoch number, so a run resumed from its checkpoint after epoch N replays epochs
N+1... exactly as an uninterrupted run would.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
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
from torch.utils.data import (
    DataLoader,
    DistributedSampler,
    RandomSampler,
    TensorDataset,
)

from headstart.data.transforms import ImageDataset
from headstart.errors import ParameterError, ResumeError, check_choice
from headstart.evaluation.metrics import log_loss
from headstart.features import FeatureExtractor
from headstart.models.classifier_net import ClassifierNet
from headstart.models.inference import (
    auto_num_workers,
    forward_batches,
    predict_dataset,
)
from headstart.storage import (
    atomic_directory,
    atomic_save_tensors,
    atomic_write_json,
    flatten_optimizer_state,
    load_tensors,
    read_json,
    unflatten_optimizer_state,
)
from headstart.training.heads import fit_linear_head
from headstart.training.optim import parameter_groups
from headstart.training.recipes import Stage

__all__ = ["TrainConfig", "TrainState", "lr_factor", "train_classifier", "latest_checkpoint", "process_rank"]

MONITORS = {"val_loss": "min", "val_accuracy": "max"}
PRECISIONS = ("32-true", "16-mixed", "bf16-mixed")  # *-true half precision would also cast the eval path


@dataclass
class TrainConfig:
    """Knobs of the loop (the model and data are chosen elsewhere). Saved in every run and bundle."""

    batch_size: int = 32
    weight_decay: float = 0.02
    label_smoothing: float = 0.1
    warmup_fraction: float = 0.1
    patience: int | None = 3
    monitor: str = "val_loss"
    class_weights: bool = False
    seed: int = 0
    num_workers: int | None = None
    devices: int = 1
    accelerator: str = "auto"
    precision: str = "32-true"

    def validate(self) -> None:
        check_choice("ImageClassifier", "monitor", self.monitor, tuple(MONITORS))
        check_choice("ImageClassifier", "precision", self.precision, PRECISIONS)
        check_choice("ImageClassifier", "accelerator", self.accelerator, ("auto", "cpu", "cuda", "gpu", "mps"))
        if self.num_workers is not None and self.num_workers < 0:
            raise ParameterError(f"The 'num_workers' parameter must be >= 0 or None. Got {self.num_workers}.",
                                 fix="Pass --num-workers 0 or more, or leave it unset.")
        if self.seed < 0:
            raise ParameterError(f"The 'seed' parameter must be a non-negative integer. Got {self.seed}.",
                                 fix="Pass --seed 0 or another non-negative integer.")
        if self.batch_size < 1:
            raise ParameterError(f"The 'batch_size' parameter must be >= 1. Got {self.batch_size}.", fix="Pass --batch-size 1 or more.")
        if self.patience is not None and self.patience < 1:
            raise ParameterError(f"The 'patience' parameter must be >= 1 or None. Got {self.patience}.",
                                 fix="Pass --patience N with N >= 1, or 0 on the CLI (None in Python) to disable early stopping.")
        if self.devices < 1:
            raise ParameterError(f"The 'devices' parameter must be >= 1. Got {self.devices}.", fix="Pass --devices 1 or more.")


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


def lr_factor(step: int, total_steps: int, *, warmup_steps: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0, as a pure function of the step.

    >>> [round(lr_factor(s, 10, warmup_steps=2), 3) for s in (0, 1, 2, 6, 10)]
    [0.5, 1.0, 1.0, 0.5, 0.0]
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def process_rank() -> int:
    """This process's global rank in a data-parallel run (Fabric's launcher or torchrun set RANK/LOCAL_RANK);
    0 in a plain process. Valid before Fabric is created, so callers can decide who writes files."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


def _seed_epoch(seed: int, epoch: int) -> int:
    value = seed * 10_007 + epoch
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)
    return value


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder of a run, or None."""
    folder = Path(run_dir) / "checkpoints"
    found = sorted(folder.glob("epoch-*[0-9]")) if folder.is_dir() else []
    return found[-1] if found else None


def _fingerprint(stages: Sequence[Stage], config: TrainConfig, net: ClassifierNet, train_set: ImageDataset,
                 val_set: ImageDataset) -> dict[str, Any]:
    """What must not change between a run and its resumption (else the replay would not match)."""
    settings = asdict(config)
    settings.pop("num_workers")  # decoding processes do not change results
    return {"stages": [s.to_dict() for s in stages], "train_config": settings,
            "num_classes": int(net.model.num_classes), "train_images": len(train_set), "val_images": len(val_set)}


def _save_checkpoint(run_dir: Path, net: ClassifierNet, optimizer: torch.optim.Optimizer | None,
                     state: TrainState, best_file: str | None, fingerprint: dict[str, Any]) -> None:
    folder = run_dir / "checkpoints"
    tensors, structure = flatten_optimizer_state(optimizer.state_dict()) if optimizer is not None else ({}, None)
    with atomic_directory(folder / f"epoch-{state.epoch:04d}") as temporary:
        atomic_save_tensors(temporary / "model.safetensors", net.state_dict())
        atomic_save_tensors(temporary / "optimizer.safetensors", tensors)
        atomic_write_json(temporary / "state.json",
                          {"train_state": asdict(state), "optimizer": structure, "best_file": best_file,
                           "fingerprint": fingerprint})
    # Older checkpoints and best-weight files are no longer needed once the new checkpoint exists.
    for old in folder.glob("epoch-*[0-9]"):
        if old.name != f"epoch-{state.epoch:04d}":
            shutil.rmtree(old, ignore_errors=True)
    for old in folder.glob("best-epoch-*.safetensors"):
        if old.name != best_file:
            old.unlink(missing_ok=True)


def _make_loader(dataset: ImageDataset, config: TrainConfig, fabric: Fabric, *, shuffle_seed: int | None,
                 epoch: int) -> DataLoader:
    workers = auto_num_workers(len(dataset)) if config.num_workers is None else config.num_workers
    sampler: Any
    if shuffle_seed is None:
        sampler = None
    elif fabric.world_size > 1:
        sampler = DistributedSampler(dataset, num_replicas=fabric.world_size, rank=fabric.global_rank,
                                     shuffle=True, seed=shuffle_seed)
        sampler.set_epoch(epoch)
    else:
        generator = torch.Generator().manual_seed(shuffle_seed * 7919 + epoch)
        sampler = RandomSampler(dataset, generator=generator)
    generator = torch.Generator().manual_seed((shuffle_seed or 0) * 104_729 + epoch)
    loader = DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, shuffle=False, num_workers=workers,
                        generator=generator, drop_last=False, persistent_workers=False,
                        pin_memory=fabric.device.type == "cuda")
    return fabric.setup_dataloaders(loader, use_distributed_sampler=False, move_to_device=True)


def _cache_features(net: ClassifierNet, views: Sequence[ImageDataset], val_set: ImageDataset, config: TrainConfig,
                    fabric: Fabric, console: Console, show: bool, channels_last: bool,
                    extractor: FeatureExtractor | None, view_names: Sequence[str]) -> tuple[TensorDataset, TensorDataset]:
    """Frozen-backbone features of every training view and of the validation set, computed once.

    With an ``extractor`` (one CPU process) they come from the feature store and a fast runtime, so a later
    run on the same images computes nothing; otherwise the backbone runs here over ``views``.
    """
    started = time.perf_counter()
    if extractor is not None:
        train_paths = views[0].paths
        train = [torch.from_numpy(extractor.extract(train_paths, view=name)) for name in view_names]
        val = torch.from_numpy(extractor.extract(val_set.paths, view="center"))
        labels = torch.as_tensor(list(views[0].labels) * len(view_names), dtype=torch.long)
        if show:
            console.print(f"Frozen {extractor.report.describe()}; views {', '.join(view_names)}.", highlight=False)
        return (TensorDataset(torch.cat(train), labels),
                TensorDataset(val, torch.as_tensor(val_set.labels, dtype=torch.long)))
    total = sum(len(v) for v in views) + len(val_set)
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), console=console, transient=True, disable=not show)
    with bar:
        task = bar.add_task("frozen backbone: extracting features", total=total)
        net.eval()
        extracted = [
            forward_batches(net.pooled_features, dataset, batch_size=config.batch_size * 2,
                            num_workers=config.num_workers, device=fabric.device, channels_last=channels_last,
                            on_batch=lambda n: bar.update(task, advance=n))[0]
            for dataset in (*views, val_set)
        ]
        train, val = extracted[:-1], extracted[-1]
    labels = torch.as_tensor([label for view in views for label in view.labels], dtype=torch.long)
    if show:
        console.print(f"Cached frozen features of {total} images ({len(views)} views of the training images) in"
                      f" {time.perf_counter() - started:.1f}s; frozen epochs now train the head only.")
    return (TensorDataset(torch.cat(train), labels),
            TensorDataset(val, torch.as_tensor(val_set.labels, dtype=torch.long)))


def _val_scores(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {"val_loss": log_loss(probabilities, labels),
            "val_accuracy": float((probabilities.argmax(1) == labels).mean())}


@torch.no_grad()
def _predict_cached(net: ClassifierNet, features: TensorDataset) -> tuple[np.ndarray, np.ndarray]:
    net.eval()
    inputs, labels = features.tensors
    device = next(net.parameters()).device
    probabilities = torch.softmax(net(inputs.to(device)).float(), dim=1).cpu().numpy()
    return probabilities, labels.cpu().numpy()


def train_classifier(
    net: ClassifierNet,
    train_set: ImageDataset,
    *,
    val_set: ImageDataset,
    stages: Sequence[Stage],
    config: TrainConfig,
    run_dir: Path | None = None,
    resume: bool = False,
    class_counts: Sequence[int] | None = None,
    console: Console | None = None,
    progress: bool = True,
    after_epoch: Callable[[TrainState], None] | None = None,
    frozen_views: Sequence[ImageDataset] | None = None,
    extractor: FeatureExtractor | None = None,
    view_names: Sequence[str] = ("center", "mirror"),
) -> tuple[TrainState, Fabric, np.ndarray | None]:
    """Train ``net`` through ``stages``; restore the best epoch's weights at the end.

    Args:
        net: the model, its head already sized for the classes.
        train_set, val_set: datasets with train and eval transforms.
        stages: from :func:`headstart.training.recipes.plan_stages`.
        config: loop settings.
        run_dir: where checkpoints go (``run_dir/checkpoints``); None trains without checkpoints.
        resume: continue from the latest checkpoint in ``run_dir``.
        class_counts: training images per class, for ``config.class_weights``.
        console: where to print; progress bars are shown when ``progress``.
        after_epoch: called with the state after every epoch (after its checkpoint is written).
        frozen_views: deterministic views of the training images (e.g. centre crop and its mirror). When
            given, stages with a frozen backbone run it once per view and train the head on the cached
            features: each epoch then costs almost nothing, instead of a full backbone pass.

    Returns:
        The final state (history, best epoch), the Fabric object (rank, device), and the validation
        probabilities of the restored epoch (None when that epoch ran before a resume).

    Raises:
        ResumeError: ``resume`` without ``run_dir``. (A run folder without checkpoint starts from the beginning.)
    """
    config.validate()
    console = console or Console()
    try:
        fabric = Fabric(accelerator=config.accelerator, devices=config.devices, precision=config.precision,
                        strategy="ddp" if config.devices > 1 else "auto")
    except (ValueError, RuntimeError, TypeError) as error:  # e.g. accelerator="cuda" on a machine without GPU
        raise ParameterError(
            f"Cannot train with accelerator={config.accelerator!r}, devices={config.devices},"
            f" precision={config.precision!r} here: {str(error).splitlines()[0][:300]}",
            fix="Use --accelerator auto (or cpu) and as many --devices as this machine has.",
        ) from None
    fabric.launch()
    if fabric.device.type == "cuda":
        # the seed promises a repeatable run: cuDNN's autotuned, non-deterministic kernels broke that on an H100
        # (the same seed gave training losses 2e-4 apart after two epochs)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    show = progress and fabric.is_global_zero
    channels_last = fabric.device.type == "cpu"
    net.to(fabric.device)
    if channels_last:
        net.to(memory_format=torch.channels_last)

    state = TrainState()
    fingerprint = _fingerprint(stages, config, net, train_set, val_set)
    saved_optimizer: dict[str, Any] | None = None
    best_file: str | None = None
    best_weights: dict[str, torch.Tensor] | None = None  # kept in memory when there is no run folder
    best_probabilities: np.ndarray | None = None
    if resume and run_dir is None:
        raise ResumeError("Cannot resume without a run folder.", fix="Pass the run folder (out=RUN_DIR).")
    checkpoint = latest_checkpoint(run_dir) if resume and run_dir is not None else None
    if resume and checkpoint is None:
        # Killed before the first epoch ended: starting over is exactly what an uninterrupted run did.
        if fabric.is_global_zero:
            console.print(f"No checkpoint in {run_dir}/checkpoints yet: starting the run from the beginning.")
    elif checkpoint is not None:
        saved = read_json(checkpoint / "state.json")
        changed = sorted(key for key in fingerprint if saved.get("fingerprint", {}).get(key) != fingerprint[key])
        if changed:
            raise ResumeError(
                f"Cannot resume {run_dir}: {', '.join(changed)} differ from the run's checkpoint"
                f" (checkpoint: { {k: saved.get('fingerprint', {}).get(k) for k in changed} };"
                f" now: { {k: fingerprint[k] for k in changed} }).",
                fix="Resume with the same data and settings (`headstart train --resume RUN_DIR` reuses them),"
                    " or start a new run in another --out.",
            )
        state = TrainState(**saved["train_state"])
        best_file = saved.get("best_file")
        net.load_state_dict(load_tensors(checkpoint / "model.safetensors"))
        if saved["optimizer"] is not None:  # None when the checkpoint closed a stage
            saved_optimizer = unflatten_optimizer_state(load_tensors(checkpoint / "optimizer.safetensors"),
                                                        saved["optimizer"])
        if fabric.is_global_zero:
            console.print(f"Resuming from {checkpoint} (epoch {state.epoch}, stage {stages[min(state.stage_index, len(stages) - 1)].name}).")

    weight = None
    if config.class_weights and class_counts is not None:
        counts = torch.tensor(class_counts, dtype=torch.float32).clamp(min=1)
        weight = (counts.sum() / (len(counts) * counts)).to(fabric.device)
    criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing)
    direction = MONITORS[config.monitor]

    optimizer: Any = None

    def _end_epoch(record: dict[str, Any], probabilities: np.ndarray) -> bool:
        """Record an epoch, track the best one, checkpoint; return True when the current stage loop must end."""
        nonlocal best_file, best_weights, best_probabilities
        stage = stages[state.stage_index]
        # Rank 0's validation scores decide for every process, so early stopping and the best epoch can never
        # differ between ranks (GPU kernels need not give bit-identical scores).
        record = fabric.broadcast(record, src=0)
        state.history.append(record)
        state.epoch += 1
        state.epoch_in_stage += 1
        score = record[config.monitor]
        improved = state.best_score is None or (score < state.best_score if direction == "min"
                                                else score > state.best_score)
        if improved:
            state.best_score, state.best_epoch, state.bad_epochs = score, state.epoch, 0
            best_probabilities = probabilities
            if run_dir is None:
                best_weights = {k: v.detach().clone() for k, v in net.state_dict().items()}
            else:
                best_file = f"best-epoch-{state.epoch:04d}.safetensors"
                if fabric.is_global_zero:
                    atomic_save_tensors(run_dir / "checkpoints" / best_file, net.state_dict())
        elif state.stage_index == len(stages) - 1:
            # Patience counts only in the last stage: a frozen warm-up stage is never cut short.
            state.bad_epochs += 1
        if show:
            console.print(
                f"epoch {record['epoch']:>3} [{stage.name:>4}]  train loss {record['train_loss']:.4f}"
                f" acc {record['train_accuracy']:.3f} | val loss {record['val_loss']:.4f}"
                f" acc {record['val_accuracy']:.3f}  {record['seconds']:.1f}s" + ("  *" if improved else "")
                + (f"  (linear head solved, L2 {record['l2']:g} by CV)" if "l2" in record else ""),
                markup=False, highlight=False,
            )
        if config.patience is not None and state.bad_epochs >= config.patience:
            state.stopped_early = True
            state.finished = True
        stage_done = state.epoch_in_stage >= stage.epochs
        if stage_done and not state.finished:
            state.stage_index += 1
            state.epoch_in_stage = 0
        state.finished = state.finished or state.stage_index >= len(stages)
        if run_dir is not None and fabric.is_global_zero:
            # After a stage ends the next stage builds a new optimizer, so its state is not worth keeping.
            keep = optimizer if (optimizer is not None and not stage_done) else None
            _save_checkpoint(run_dir, net, keep, state, best_file, fingerprint)
        fabric.barrier()
        if after_epoch is not None:
            after_epoch(state)
        return state.finished or stage_done

    cached: tuple[TensorDataset, TensorDataset] | None = None
    while not state.finished and state.stage_index < len(stages):
        stage = stages[state.stage_index]
        net.freeze_backbone(stage.freeze_backbone, freeze_batchnorm=stage.freeze_batchnorm,
                           trainable_groups=stage.trainable_groups)
        use_cache = stage.freeze_backbone and bool(frozen_views)
        if use_cache:
            # Frozen backbone + cached features: the linear head is a convex problem, solved to convergence
            # in one step (penalty chosen by cross-validation on the training images), not over epochs.
            use_extractor = extractor is not None and fabric.world_size == 1 and fabric.device.type == "cpu"
            if cached is None:
                cached = _cache_features(net, frozen_views, val_set, config, fabric, console, show, channels_last,
                                         extractor if use_extractor else None, view_names)
            started = time.perf_counter()
            features, labels = cached[0].tensors
            n_views = len(view_names) if use_extractor else len(frozen_views)
            fit = fit_linear_head(features, labels, n_classes=net.model.num_classes, n_views=n_views,
                                  class_weight=None if weight is None else weight.cpu(), seed=config.seed)
            classifier = net.model.get_classifier()
            with torch.no_grad():
                classifier.weight.copy_(fit.weight.to(classifier.weight))
                classifier.bias.copy_(fit.bias.to(classifier.bias))
            train_probabilities, train_labels = _predict_cached(net, cached[0])
            probabilities, val_labels = _predict_cached(net, cached[1])
            record = {
                "epoch": state.epoch + 1, "stage": stage.name,
                "train_loss": log_loss(train_probabilities, train_labels),
                "train_accuracy": float((train_probabilities.argmax(1) == train_labels).mean()),
                **_val_scores(probabilities, val_labels), "lr": 0.0, "l2": fit.l2, "head_selection": fit.summary(),
                "seconds": round(time.perf_counter() - started, 2),
            }
            state.epoch_in_stage = stage.epochs - 1  # the stage is complete after this one step
            optimizer = None
            _end_epoch(record, probabilities)
            continue

        # A new DDP wrapper per stage: DDP only synchronises parameters that require grad when it is built.
        module = fabric.setup_module(net)
        optimizer = fabric.setup_optimizers(torch.optim.AdamW(parameter_groups(net, stage,
                                                                               weight_decay=config.weight_decay)))
        if saved_optimizer is not None:
            optimizer.load_state_dict(saved_optimizer)
            saved_optimizer = None
        steps_per_epoch = math.ceil(len(train_set) / (config.batch_size * fabric.world_size))
        total_steps = stage.epochs * steps_per_epoch
        warmup_steps = int(config.warmup_fraction * total_steps)

        while state.epoch_in_stage < stage.epochs:
            started = time.perf_counter()
            seed = _seed_epoch(config.seed, state.epoch)
            loader = _make_loader(train_set, config, fabric, shuffle_seed=seed, epoch=state.epoch)
            net.train()
            loss_sum = torch.zeros((), device=fabric.device)
            correct = torch.zeros((), device=fabric.device)
            seen = torch.zeros((), device=fabric.device)
            bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                           TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=console,
                           transient=True, disable=not show)
            with bar:
                task = bar.add_task(f"epoch {state.epoch + 1} [{stage.name}]", total=len(loader), info="")
                for step, (images, labels) in enumerate(loader):
                    train_set.raise_for_failures(labels)
                    factor = lr_factor(state.epoch_in_stage * steps_per_epoch + step, total_steps,
                                       warmup_steps=warmup_steps)
                    for group in optimizer.param_groups:
                        group["lr"] = stage.lr * group["lr_scale"] * factor
                    if channels_last:
                        images = images.contiguous(memory_format=torch.channels_last)
                    logits = module(images)
                    loss = criterion(logits, labels)
                    optimizer.zero_grad(set_to_none=True)
                    fabric.backward(loss)
                    optimizer.step()
                    loss_sum += loss.detach() * len(labels)
                    correct += (logits.detach().argmax(1) == labels).sum()
                    seen += len(labels)
                    bar.update(task, advance=1, info=f"loss {loss.item():.3f}")
            loss_sum, correct, seen = (fabric.all_reduce(t, reduce_op="sum") for t in (loss_sum, correct, seen))
            # Every rank scores the whole validation set on the unwrapped model, so early-stopping
            # decisions agree across processes without communication.
            probabilities, val_labels = predict_dataset(net, val_set, batch_size=config.batch_size * 2,
                                                        num_workers=config.num_workers, device=fabric.device,
                                                        channels_last=channels_last)
            record = {
                "epoch": state.epoch + 1, "stage": stage.name,
                "train_loss": float(loss_sum / seen), "train_accuracy": float(correct / seen),
                **_val_scores(probabilities, val_labels),
                "lr": stage.lr * factor, "seconds": round(time.perf_counter() - started, 2),
            }
            if _end_epoch(record, probabilities):
                break

    # Restore the best epoch. With checkpoints, every rank reads rank 0's file (after the barrier above).
    if run_dir is not None and best_file is not None:
        net.load_state_dict(load_tensors(run_dir / "checkpoints" / best_file))
    elif best_weights is not None:
        net.load_state_dict(best_weights)
    net.freeze_backbone(False)
    net.eval()
    if show and state.stopped_early:
        console.print(f"Early stopping: no {config.monitor} improvement for {config.patience} epochs.")
    if show:
        console.print(f"Restored the best epoch ({state.best_epoch}, {config.monitor} {state.best_score:.4f}).")
    return state, fabric, best_probabilities
