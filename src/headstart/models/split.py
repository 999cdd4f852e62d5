"""A network cut in two for partial fine-tuning (:mod:`headstart.training.partial`): the frozen blocks, whose
output is cached, and the blocks after them, which train on it. Supported: timm's EfficientNet family
(EfficientNet, EfficientNet-Lite, MobileNetV2, MNASNet, ...), whose blocks are one sequence.
"""

from __future__ import annotations

import torch
from torch import nn

from headstart.errors import ParameterError

__all__ = ["split_index", "forward_bottom", "forward_top", "top_modules", "supports_partial"]


def supports_partial(timm_id: str) -> bool:
    """Whether a timm architecture can be split here (timm's EfficientNet family).

    >>> supports_partial("tf_efficientnet_lite0"), supports_partial("mobilenetv2_100"), supports_partial("resnet50")
    (True, True, False)
    """
    from timm.models import is_model_in_modules

    return bool(is_model_in_modules(timm_id, ["efficientnet"]))


def _efficientnet_blocks(model: nn.Module) -> nn.Sequential:
    from timm.models.efficientnet import EfficientNet

    if not isinstance(model, EfficientNet):
        raise ParameterError(
            f"strategy='partial' trains the last blocks of timm's EfficientNet family (EfficientNet, -Lite,"
            f" MobileNetV2, MNASNet); this backbone is a {type(model).__name__}.",
            fix="Use strategy='fine_tune' or 'gradual_unfreeze' with this backbone, or choose efficientnet_lite0.")
    return model.blocks


def split_index(model: nn.Module, tune_blocks: int) -> int:
    """Index of the first block that trains when the last ``tune_blocks`` blocks of ``model`` do.

    >>> import timm
    >>> split_index(timm.create_model("test_efficientnet"), 2)
    3
    """
    blocks = _efficientnet_blocks(model)
    if not isinstance(tune_blocks, int) or isinstance(tune_blocks, bool) or not 1 <= tune_blocks <= len(blocks):
        raise ParameterError(f"The 'tune_blocks' parameter must be an integer in [1, {len(blocks)}] (this backbone"
                             f" has {len(blocks)} blocks). Got {tune_blocks!r}.", fix="Pass --tune-blocks 2.")
    return len(blocks) - tune_blocks


def forward_bottom(model: nn.Module, images: torch.Tensor, split: int) -> torch.Tensor:
    """The frozen part: stem and blocks ``[:split]``."""
    return _efficientnet_blocks(model)[:split](model.bn1(model.conv_stem(images)))


def top_modules(model: nn.Module, split: int) -> list[nn.Module]:
    """The pretrained modules :func:`forward_top` runs: blocks ``[split:]`` and the head convolution with its norm
    (the classifier is the new part, not among them)."""
    return [*_efficientnet_blocks(model)[split:], model.conv_head, model.bn2]


def forward_top(model: nn.Module, maps: torch.Tensor, split: int) -> torch.Tensor:
    """Logits from the frozen part's output: blocks ``[split:]``, the head convolution and the classifier."""
    for module in top_modules(model, split):
        maps = module(maps)
    return model.forward_head(maps)
