"""The network for text and audio: a pretrained encoder, dropout and a linear head; LoRA adapters on it.

Structure only (no training code): the bundle loader rebuilds models with it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from headstart.errors import ParameterError
from headstart.models.transfer import TransferMixin

__all__ = ["EncoderNet", "apply_lora", "merge_lora", "build_encoder_net"]


class EncoderNet(TransferMixin, nn.Module):
    """Encoder -> dropout -> linear head; ``forward(batch)`` gives logits."""

    def __init__(self, encoder: nn.Module, n_classes: int, *, drop_rate: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(drop_rate)
        self.head = nn.Linear(int(encoder.feature_dim), n_classes)

    @property
    def encoder_input_name(self) -> str:
        """The name of the one tensor an audio encoder reads (``input_values`` or ``input_features``)."""
        return str(getattr(self.encoder, "input_name", "input_values"))

    def features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.encoder(batch)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.dropout(self.encoder(batch)))

    @property
    def keep_norm_statistics(self) -> bool:  # type: ignore[override]
        """An encoder may ask to keep its BatchNorm statistics in every stage: the head was solved on features
        computed with them, and batch statistics of inputs far from the pretraining data (spectrograms into an
        ImageNet CNN) would change every feature at the first step and wreck the solved head (LP-FT, Kumar et al.
        2022)."""
        return bool(getattr(self.encoder, "keep_norm_statistics", False))

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """The encoder's parameters from input to output (embeddings, one group per layer, the rest)."""
        if hasattr(self.encoder, "layer_groups"):
            return self.encoder.layer_groups()
        return [list(self.encoder.parameters())]

    def pretrained_modules(self) -> list[nn.Module]:
        return list(self.encoder.modules())

    def always_frozen(self) -> set[int]:
        """A transformers audio model's waveform encoder (when kept frozen) and, under LoRA, every base weight."""
        frozen = {id(p) for p in self.encoder.always_frozen()} if hasattr(self.encoder, "always_frozen") else set()
        model = getattr(self.encoder, "model", None)
        if model is not None and hasattr(model, "peft_config"):
            frozen |= {id(p) for name, p in model.named_parameters() if "lora_" not in name}
        return frozen


def _lora_targets(model: nn.Module) -> Any:
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as known,
    )

    return known.get(model.config.model_type, "all-linear")


def apply_lora(net: EncoderNet, *, rank: int = 8, alpha: int = 16, dropout: float = 0.1) -> dict[str, Any]:
    """Wrap the encoder's transformers model with LoRA adapters (peft); everything else in the encoder freezes.

    Returns:
        The LoRA settings (saved in the bundle so an unmerged model can be rebuilt).
    """
    from peft import LoraConfig, get_peft_model

    inner = getattr(net.encoder, "model", None)
    if inner is None or not hasattr(inner, "config"):
        raise ParameterError("LoRA needs a transformers encoder (a text backbone or a transformers audio model).",
                             fix="Use strategy='fine_tune' for logmel:<image backbone> audio encoders.")
    settings = {"r": rank, "lora_alpha": alpha, "lora_dropout": dropout, "target_modules": _lora_targets(inner)}
    net.set_trainable(freeze_backbone=True)
    net.encoder.model = get_peft_model(inner, LoraConfig(**settings))
    return settings


def merge_lora(net: EncoderNet) -> None:
    """Fold the adapters into the base weights: a plain model again, same predictions, no peft needed."""
    if hasattr(net.encoder.model, "merge_and_unload"):
        net.encoder.model = net.encoder.model.merge_and_unload()


def build_encoder_net(config: dict[str, Any], folder: Any) -> EncoderNet:
    """Rebuild a saved text/audio network's structure (random weights) from its bundle config and ``encoder/`` folder.

    LoRA models saved unmerged get their adapters back (peft), so the saved state dict loads key for key.
    """
    from pathlib import Path

    description = config["encoder"]
    folder = Path(folder)
    if description["kind"] == "transformers_text":
        from headstart.models.text import text_encoder_from_folder

        encoder: nn.Module = text_encoder_from_folder(folder, max_length=int(description["max_length"]),
                                                      pooling=description["pooling"])
    else:
        from headstart.models.audio import audio_encoder_from_description

        encoder = audio_encoder_from_description(description, folder)
    net = EncoderNet(encoder, len(config["classes"]), drop_rate=0.0)
    lora = config.get("lora")
    if lora and not lora.get("merged", True):
        from peft import LoraConfig, get_peft_model

        net.encoder.model = get_peft_model(net.encoder.model, LoraConfig(**lora["settings"]))
    return net.eval()
