"""Frozen-backbone feature extraction (pooled embeddings), for classical heads and baselines."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from headstart.backbones import Preprocessing, create_backbone, get_backbone_spec
from headstart.data.transforms import ImageDataset, build_transform
from headstart.inference import forward_batches

__all__ = ["extract_features"]


def extract_features(
    backbone: str,
    paths: Sequence[str | os.PathLike[str]],
    *,
    weights: str = "auto",
    image_size: int | None = None,
    batch_size: int = 32,
) -> np.ndarray:
    """Pooled features of a frozen pretrained backbone for each image (eval transform), shape (n, dim).

    Raises:
        WeightsNotFoundError: no weights for the backbone; ImageDecodeError: an unreadable file.
    """
    preprocessing = get_backbone_spec(backbone).preprocessing()
    if image_size is not None:
        preprocessing = Preprocessing.from_dict({**preprocessing.to_dict(), "input_size": image_size})
    model, _ = create_backbone(backbone, 0, weights=weights)
    model.eval().to(memory_format=torch.channels_last)
    dataset = ImageDataset([Path(p) for p in paths], None, build_transform(preprocessing, train=False))
    features, _ = forward_batches(model, dataset, batch_size=batch_size, channels_last=True)
    return features.numpy() if len(features) else np.zeros((0, model.num_features), dtype=np.float32)
