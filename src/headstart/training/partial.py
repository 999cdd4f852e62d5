"""Partial ("surgical") fine-tuning: only the last k blocks of the backbone train, on cached inputs.

Lee et al., "Surgical Fine-Tuning Improves Adaptation to Distribution Shifts" (ICLR 2023): tuning a few blocks
can match or beat tuning all of them. When the first blocks are frozen (eval mode, no gradients) their output for
an input never changes, so it is computed once per view of each training example and kept in memory; an epoch
then runs only the top blocks on the cached maps, epoch ``e`` reading view ``e mod n_views``. Validation reads
the cached maps of the validation examples.

Images (:func:`image_view_maps`): the views are the centre crop, its mirror and ``augmented_views`` seeded random
crops. Audio (``logmel:`` CNN encoders, :class:`headstart.AudioClassifier`): the centre crop of each clip and,
where clips are longer than the model's window, seeded random crops.

The network stays whole: its ``split`` (:class:`~headstart.models.classifier_net.ClassifierNet`, or the logmel
encoder's) marks the first trainable block, it takes ``{"maps": ...}`` in place of its usual input, and what is
saved, exported and served is the ordinary model. Supported: timm's EfficientNet family (EfficientNet,
EfficientNet-Lite, MobileNetV2, MNASNet, ...), whose blocks are one sequence.
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

__all__ = ["split_index", "forward_bottom", "forward_top", "partial_training_task", "image_view_maps"]

VALIDATION = "validation"


class _Maps:
    """The frozen part's output per view, computed on first use by ``compute(view)`` and kept as float16."""

    def __init__(self, compute: Callable[[str], torch.Tensor], console: Console) -> None:
        self.compute, self.console = compute, console
        self.maps: dict[str, torch.Tensor] = {}
        self.seconds = 0.0

    @torch.no_grad()
    def __getitem__(self, view: str) -> torch.Tensor:
        if view not in self.maps:
            started = time.perf_counter()
            maps = self.compute(view)
            self.maps[view] = maps.half()
            self.seconds += time.perf_counter() - started
            self.console.print(f"Cached the frozen blocks' output for view {view!r}: {tuple(maps.shape)} in"
                               f" {time.perf_counter() - started:.1f}s.", highlight=False)
        return self.maps[view]


def image_view_maps(net: nn.Module, images: Callable[..., Any], *, paths: Sequence[Any], labels: Sequence[int],
                    val_set: Any, augmented_views: int, seed: int, batch_size: int, num_workers: int | None
                    ) -> tuple[Callable[[str], torch.Tensor], list[str]]:
    """An image network's views (``images(paths, labels, **transform)`` makes each view's dataset) and the
    function computing one view's maps: the stem and frozen blocks of ``net`` (a ClassifierNet with a split)."""
    datasets = {"center": images(paths, labels, train=False), "mirror": images(paths, labels, train=False, flip=True),
                **{f"augment-{k}": images(paths, labels, train=True) for k in range(augmented_views)}}
    names = list(datasets)
    datasets[VALIDATION] = val_set

    @torch.no_grad()
    def compute(view: str) -> torch.Tensor:
        from headstart.models.inference import forward_batches

        model, split = net.model, net.split
        device = next(net.parameters()).device
        was_training = model.training
        model.eval()
        with torch.random.fork_rng(devices=[]):  # seeded random crops: the same maps on every run
            torch.manual_seed(seed * 7919 + sorted(datasets).index(view))
            maps, _ = forward_batches(lambda batch: forward_bottom(model, batch, split), datasets[view],
                                      batch_size=batch_size * 2, num_workers=num_workers, device=device,
                                      channels_last=device.type == "cpu")
        model.train(was_training)
        return maps

    return compute, names


def partial_training_task(base: TrainingTask, compute: Callable[[str], torch.Tensor], *, views: Sequence[str],
                          labels: Sequence[int], val_labels: Sequence[int], batch_size: int, seed: int,
                          class_weight: torch.Tensor | None, label_smoothing: float, console: Console,
                          channels_last: bool = True) -> TrainingTask:
    """``base`` (the task: its solved head stage) with epochs on the cached maps of the training views
    (``compute(view)`` gives one view's maps, ``compute("validation")`` the validation examples'), cycling through
    ``views``, and validation on the cached validation maps. The network takes ``{"maps": ...}``."""
    cache = _Maps(compute, console)
    names = list(views)
    targets = torch.as_tensor(list(labels), dtype=torch.long)
    val_targets = np.asarray(val_labels)

    def dataset(epoch: int) -> torch.utils.data.Dataset:
        return torch.utils.data.TensorDataset(cache[names[epoch % len(names)]], targets)

    def as_input(maps: torch.Tensor) -> dict[str, torch.Tensor]:
        maps = maps.float()
        if channels_last and maps.device.type == "cpu" and maps.ndim == 4:
            maps = maps.contiguous(memory_format=torch.channels_last)
        return {"maps": maps}

    def step(module: nn.Module, batch: Any) -> StepOutput:
        maps, batch_labels = batch
        return classification_step(module, as_input(maps), batch_labels, class_weight=class_weight,
                                   label_smoothing=label_smoothing)

    @torch.no_grad()
    def validate(module: nn.Module, device: torch.device) -> Validation:
        module.eval()
        maps = cache[VALIDATION]
        chunks = [torch.softmax(module(as_input(maps[i:i + batch_size * 2].to(device))).float(), dim=1)
                  for i in range(0, len(maps), batch_size * 2)]
        probabilities = torch.cat(chunks).cpu().numpy() if chunks else np.zeros((0, 0), dtype=np.float32)
        return Validation(classification_scores(probabilities, val_targets), payload=probabilities)

    return TrainingTask(dataset=dataset, collate=None,
                        batches=lambda epoch: shuffled_batches(len(targets), batch_size, seed=seed, epoch=epoch),
                        step=step, validate=validate, solve_head=base.solve_head, channels_last=channels_last,
                        num_workers=0, val_items=0, fingerprint=base.fingerprint, gain_check=base.gain_check,
                        one_time_seconds=lambda: cache.seconds)
