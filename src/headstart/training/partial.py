"""Partial ("surgical") fine-tuning: only the last k blocks of the backbone train, on cached inputs.

Lee et al., "Surgical Fine-Tuning Improves Adaptation to Distribution Shifts" (ICLR 2023): tuning a few blocks
can match or beat tuning all of them. When the first blocks are frozen (eval mode, no gradients) their output for
an image never changes, so it is computed once per view of each training image (the centre crop, its mirror and
``augmented_views`` seeded random crops) and kept in memory; an epoch then runs only the top blocks on the
cached maps, epoch ``e`` reading view ``e mod n_views``. Validation reads the cached maps of the centre crops.

The network (:class:`~headstart.models.classifier_net.ClassifierNet`) stays whole: its ``split`` marks the first
trainable block, it takes ``{"maps": ...}`` in place of images, and what is saved, exported and served is the
ordinary model. Supported: timm's EfficientNet family (EfficientNet, EfficientNet-Lite, MobileNetV2, MNASNet,
...), whose blocks are one sequence.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import nn

from headstart.models.split import forward_bottom, forward_top, split_index
from headstart.training.classification import classification_scores, classification_step
from headstart.training.loop import StepOutput, TrainingTask, Validation, shuffled_batches

__all__ = ["split_index", "forward_bottom", "forward_top", "partial_training_task"]


class _Maps:
    """The frozen part's output per view, computed on first use (float16 on the CPU)."""

    def __init__(self, net: nn.Module, datasets: dict[str, Any], *, seed: int, batch_size: int,
                 num_workers: int | None, console: Console) -> None:
        self.net, self.datasets, self.seed, self.batch_size = net, datasets, seed, batch_size
        self.num_workers, self.console = num_workers, console
        self.maps: dict[str, torch.Tensor] = {}
        self.seconds = 0.0

    @torch.no_grad()
    def __getitem__(self, view: str) -> torch.Tensor:
        if view not in self.maps:
            from headstart.models.inference import forward_batches

            started = time.perf_counter()
            model, split = self.net.model, self.net.split
            device = next(self.net.parameters()).device
            was_training = model.training
            model.eval()
            with torch.random.fork_rng(devices=[]):  # seeded random crops: the same maps on every run
                torch.manual_seed(self.seed * 7919 + sorted(self.datasets).index(view))
                maps, _ = forward_batches(lambda images: forward_bottom(model, images, split), self.datasets[view],
                                          batch_size=self.batch_size * 2, num_workers=self.num_workers,
                                          device=device, channels_last=device.type == "cpu")
            model.train(was_training)
            self.maps[view] = maps.half()
            self.seconds += time.perf_counter() - started
            self.console.print(f"Cached the frozen blocks' output for view {view!r}: {tuple(maps.shape)} in"
                               f" {time.perf_counter() - started:.1f}s.", highlight=False)
        return self.maps[view]


def partial_training_task(base: TrainingTask, net: nn.Module, images: Callable[..., Any], *, paths: Sequence[Any],
                          labels: Sequence[int], val_set: Any, augmented_views: int, batch_size: int, seed: int,
                          class_weight: torch.Tensor | None, label_smoothing: float, num_workers: int | None,
                          console: Console) -> TrainingTask:
    """``base`` (the image task: its solved head stage) with epochs on the cached maps of the training images'
    views (the centre crop, its mirror and ``augmented_views`` random crops; ``images(paths, labels, **transform)``
    makes each view's dataset) and validation on the cached maps of ``val_set``."""
    train_views = {"center": images(paths, labels, train=False), "mirror": images(paths, labels, train=False, flip=True),
                   **{f"augment-{k}": images(paths, labels, train=True) for k in range(augmented_views)}}
    cache = _Maps(net, {**train_views, "validation": val_set}, seed=seed, batch_size=batch_size,
                  num_workers=num_workers, console=console)
    names = list(train_views)
    targets = torch.as_tensor(list(labels), dtype=torch.long)
    val_labels = np.asarray(val_set.labels)

    def dataset(epoch: int) -> torch.utils.data.Dataset:
        return torch.utils.data.TensorDataset(cache[names[epoch % len(names)]], targets)

    def step(module: nn.Module, batch: Any) -> StepOutput:
        maps, batch_labels = batch
        maps = maps.float()
        if maps.device.type == "cpu":
            maps = maps.contiguous(memory_format=torch.channels_last)
        return classification_step(module, {"maps": maps}, batch_labels, class_weight=class_weight,
                                   label_smoothing=label_smoothing)

    @torch.no_grad()
    def validate(module: nn.Module, device: torch.device) -> Validation:
        module.eval()
        maps = cache["validation"]
        chunks = [torch.softmax(module({"maps": maps[i:i + batch_size * 2].float().to(device)}).float(), dim=1)
                  for i in range(0, len(maps), batch_size * 2)]
        probabilities = torch.cat(chunks).cpu().numpy() if chunks else np.zeros((0, 0), dtype=np.float32)
        return Validation(classification_scores(probabilities, val_labels), payload=probabilities)

    return TrainingTask(dataset=dataset, collate=None,
                        batches=lambda epoch: shuffled_batches(len(targets), batch_size, seed=seed, epoch=epoch),
                        step=step, validate=validate, solve_head=base.solve_head, channels_last=True, num_workers=0,
                        val_items=0, fingerprint=base.fingerprint, gain_check=base.gain_check)
