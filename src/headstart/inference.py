"""Batched forward passes from image files to class probabilities (no training code here)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from headstart.backbones.registry import Preprocessing
from headstart.data.transforms import ImageDataset, build_transform

__all__ = ["auto_num_workers", "predict_loader", "predict_files"]


def auto_num_workers(n_items: int) -> int:
    """Decode images in one background process on small CPUs (the model needs the cores), more on big ones."""
    if n_items < 32:
        return 0
    cpus = os.cpu_count() or 1
    return 1 if cpus <= 4 else min(8, cpus // 2)


@torch.inference_mode()
def predict_loader(model: nn.Module, loader: DataLoader, *, device: torch.device | str = "cpu",
                   channels_last: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Run ``model`` in eval mode over ``loader``; return (probabilities (n, k), labels (n,))."""
    was_training = model.training
    model.eval()
    probabilities: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    try:
        for images, batch_labels in loader:
            if isinstance(loader.dataset, ImageDataset):
                loader.dataset.raise_for_failures(batch_labels)
            images = images.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            logits = model(images).float()
            probabilities.append(torch.softmax(logits, dim=1).cpu().numpy())
            labels.append(np.asarray(batch_labels))
    finally:
        model.train(was_training)
    if not probabilities:
        return np.zeros((0, 0), dtype=np.float32), np.zeros((0,), dtype=np.int64)
    return np.concatenate(probabilities), np.concatenate(labels)


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
    workers = auto_num_workers(len(dataset)) if num_workers is None else num_workers
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    channels_last = torch.device(device).type == "cpu"
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    probabilities, _ = predict_loader(model, loader, device=device, channels_last=channels_last)
    return probabilities
