"""Training an encoder + linear head (text and audio): one loop on one screen.

The network is ``EncoderNet``: a pretrained encoder (text or audio) giving one vector per example, dropout and
a linear head. The fine-tuning recipe: the head is first solved on frozen features (see
:func:`headstart.training.heads.fit_linear_head`), then the whole encoder trains with layer-wise learning-rate decay
(each layer learns ``layer_decay`` times as fast as the one above it; Howard & Ruder 2018, Clark et al. 2020),
AdamW, linear warm-up then cosine decay, and early stopping that restores the best epoch. With LoRA only the
low-rank adapters and the head train.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from headstart.errors import ParameterError
from headstart.evaluation.metrics import log_loss
from headstart.models.encoder_net import EncoderNet
from headstart.training.loop import MONITORS, lr_factor

__all__ = ["EncoderTrainConfig", "layerwise_parameter_groups", "train_encoder"]

Batches = Callable[[], Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]]
EpochBatches = Callable[[int], Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]]


def layerwise_parameter_groups(net: EncoderNet, *, lr: float, layer_decay: float,
                               weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: the head at ``lr``; encoder group i of n (input first) at ``lr * layer_decay ** (n - i)``.

    Only trainable parameters are included; biases and norm weights get no weight decay.
    """
    encoder_groups = net.encoder.layer_groups() if hasattr(net.encoder, "layer_groups") else [
        list(net.encoder.parameters())]
    scaled = [(1.0, list(net.head.parameters()))]
    n = len(encoder_groups)
    scaled += [(layer_decay ** (n - index), params) for index, params in enumerate(encoder_groups)]
    if any(p.requires_grad for p in net.encoder.parameters()) and hasattr(net.encoder, "model"):
        # LoRA adapters and anything else trainable that the layer groups do not list
        listed = {id(p) for _, params in scaled for p in params}
        extra = [p for p in net.encoder.parameters() if p.requires_grad and id(p) not in listed]
        if extra:
            scaled.append((1.0, extra))
    groups = []
    for scale, params in scaled:
        trainable = [p for p in params if p.requires_grad]
        for members, decay in (([p for p in trainable if p.ndim > 1], weight_decay),
                               ([p for p in trainable if p.ndim <= 1], 0.0)):
            if members:
                groups.append({"params": members, "lr": lr * scale, "lr_scale": scale, "weight_decay": decay})
    return groups


@dataclass
class EncoderTrainConfig:
    """How the encoder trains. ``epochs`` counts passes over the training data after the solved head."""

    epochs: int = 3
    lr: float = 5e-5
    layer_decay: float = 0.8
    weight_decay: float = 0.01
    label_smoothing: float = 0.0
    warmup_fraction: float = 0.1
    patience: int | None = 2
    monitor: str = "val_loss"
    max_grad_norm: float = 1.0
    seed: int = 0


def _evaluate(net: EncoderNet, batches: Batches) -> tuple[np.ndarray, np.ndarray]:
    net.eval()
    probabilities, labels = [], []
    with torch.no_grad():
        for batch, target in batches():
            probabilities.append(torch.softmax(net(batch).float(), dim=1).numpy())
            labels.append(target.numpy())
    return np.concatenate(probabilities), np.concatenate(labels)


def train_encoder(net: EncoderNet, train_batches: EpochBatches, val_batches: Batches, *, config: EncoderTrainConfig,
                  steps_per_epoch: int, class_weight: torch.Tensor | None = None, history: list[dict[str, Any]],
                  best_probabilities: np.ndarray | None, console: Console, progress: bool = True,
                  stage: str = "fine_tune") -> tuple[list[dict[str, Any]], int, np.ndarray]:
    """Train ``net``'s trainable parameters; keep the best epoch by ``config.monitor``.

    Args:
        train_batches: ``train_batches(epoch)`` gives that epoch's shuffled ``(inputs, labels)`` batches.
        val_batches: ``val_batches()`` gives the validation batches in order.
        history: records so far (the solved-head epoch); the best of those is the starting point to beat.
        best_probabilities: validation probabilities of the last record in ``history``.

    Returns:
        The full history, the best epoch (1-based), and that epoch's validation probabilities. ``net`` holds
        the best epoch's weights.
    """
    if config.monitor not in MONITORS:
        raise ParameterError(f"monitor must be one of {tuple(MONITORS)}. Got {config.monitor!r}.",
                             fix="Use monitor='val_loss' or 'val_accuracy'.")
    torch.manual_seed(config.seed)
    groups = layerwise_parameter_groups(net, lr=config.lr, layer_decay=config.layer_decay,
                                        weight_decay=config.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=config.lr)
    total = max(1, steps_per_epoch * config.epochs)
    warmup = int(config.warmup_fraction * total)
    sign = 1.0 if MONITORS[config.monitor] == "min" else -1.0
    best_epoch = len(history)
    best_score = sign * history[-1][config.monitor] if history else float("inf")
    best_state = copy.deepcopy({k: v for k, v in net.state_dict().items()}) if history else None
    stale, step = 0, 0
    for epoch in range(1, config.epochs + 1):
        net.train()
        started = time.perf_counter()
        losses, correct, seen = [], 0, 0
        with Progress(TextColumn(f"{stage} epoch {epoch}/{config.epochs}"), BarColumn(), TextColumn("{task.description}"),
                      TimeRemainingColumn(), console=console, disable=not progress, transient=True) as bar:
            task = bar.add_task("", total=steps_per_epoch)
            for batch, target in train_batches(epoch):
                for group in optimizer.param_groups:
                    group["lr"] = config.lr * group["lr_scale"] * lr_factor(step, total, warmup_steps=warmup)
                logits = net(batch)
                loss = F.cross_entropy(logits, target, weight=class_weight, label_smoothing=config.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], config.max_grad_norm)
                optimizer.step()
                step += 1
                losses.append(float(loss.detach()))
                correct += int((logits.argmax(1) == target).sum())
                seen += len(target)
                bar.update(task, advance=1, description=f"loss {np.mean(losses[-20:]):.4f}")
        probabilities, labels = _evaluate(net, val_batches)
        record = {"epoch": len(history) + 1, "stage": stage, "train_loss": float(np.mean(losses)),
                  "train_accuracy": correct / max(1, seen), "val_loss": log_loss(probabilities, labels),
                  "val_accuracy": float((probabilities.argmax(1) == labels).mean()),
                  "lr": config.lr, "seconds": round(time.perf_counter() - started, 1)}
        history.append(record)
        console.print(f"epoch {record['epoch']} ({stage}): train loss {record['train_loss']:.4f}, val loss"
                      f" {record['val_loss']:.4f}, val acc {record['val_accuracy']:.4f} ({record['seconds']}s)",
                      highlight=False)
        score = sign * record[config.monitor]
        if score < best_score:
            best_score, best_epoch, stale = score, record["epoch"], 0
            best_state = copy.deepcopy(net.state_dict())
            best_probabilities = probabilities
        else:
            stale += 1
            if config.patience is not None and stale >= config.patience:
                console.print(f"Early stopping: {config.monitor} did not improve for {stale} epochs.")
                break
    if best_state is not None and best_epoch != len(history):
        net.load_state_dict(best_state)
        console.print(f"Restored epoch {best_epoch} (best {config.monitor}).", highlight=False)
    net.eval()
    assert best_probabilities is not None  # at least one epoch ran or history was given
    return history, best_epoch, best_probabilities
