"""Batched forward passes from image files to class probabilities (no training code here)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from headstart.data.transforms import ImageDataset, build_transform
from headstart.models.registry import Preprocessing

__all__ = ["auto_num_workers", "forward_batches", "predict_dataset", "predict_files"]


def auto_num_workers(n_items: int) -> int:
    """Decode images in one background process on small CPUs (the model needs the cores), more on big ones."""
    if n_items < 32:
        return 0
    cpus = os.cpu_count() or 1
    return 1 if cpus <= 4 else min(8, cpus // 2)


@torch.no_grad()  # not inference_mode: cached features may later feed a head that trains
def forward_batches(forward: Callable[[torch.Tensor], torch.Tensor], dataset: ImageDataset, *,
                    batch_size: int = 32, num_workers: int | None = None, device: torch.device | str = "cpu",
                    channels_last: bool = False, on_batch: Callable[[int], None] | None = None,
                    ) -> tuple[torch.Tensor, np.ndarray]:
    """Apply ``forward`` to every image of ``dataset`` in order: (outputs as float32 on the CPU, labels).

    The one loop behind prediction, validation and feature extraction. ``on_batch`` receives each batch's
    size (for progress bars).

    Raises:
        ImageDecodeError: a file cannot be decoded (the message names it).
    """
    workers = auto_num_workers(len(dataset)) if num_workers is None else num_workers
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    outputs: list[torch.Tensor] = []
    labels: list[np.ndarray] = []
    for images, batch_labels in loader:
        dataset.raise_for_failures(batch_labels)
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        outputs.append(forward(images).float().cpu())
        labels.append(np.asarray(batch_labels))
        if on_batch is not None:
            on_batch(len(batch_labels))
    if not outputs:
        return torch.zeros((0, 0)), np.zeros((0,), dtype=np.int64)
    return torch.cat(outputs), np.concatenate(labels)


def predict_dataset(model: nn.Module, dataset: ImageDataset, *, batch_size: int = 32, num_workers: int | None = None,
                    device: torch.device | str = "cpu", channels_last: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities (n, k) and labels (n,) of ``model`` in eval mode over ``dataset``."""
    was_training = model.training
    model.eval()
    try:
        logits, labels = forward_batches(model, dataset, batch_size=batch_size, num_workers=num_workers,
                                         device=device, channels_last=channels_last)
    finally:
        model.train(was_training)
    return torch.softmax(logits, dim=1).numpy(), labels


def predict_files(model: nn.Module, paths: Sequence[str | os.PathLike[str]], *, preprocessing: Preprocessing,
                  batch_size: int = 32, num_workers: int | None = None, device: torch.device | str = "cpu",
                  max_pixels: int | None = None) -> np.ndarray:
    """Class probabilities for image files, shape (len(paths), n_classes).

    Raises:
        ImageDecodeError: a file cannot be decoded (the message names it).
    """
    dataset_kwargs = {} if max_pixels is None else {"max_pixels": max_pixels}
    dataset = ImageDataset([Path(p) for p in paths], None, build_transform(preprocessing, train=False),
                           **dataset_kwargs)
    channels_last = torch.device(device).type == "cpu"
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    probabilities, _ = predict_dataset(model, dataset, batch_size=batch_size, num_workers=num_workers, device=device,
                                       channels_last=channels_last)
    return probabilities
