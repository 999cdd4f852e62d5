"""Audio encoders, two routes to a pretrained model:

(a) ``logmel:<image backbone>`` — a log-mel spectrogram drawn as a 3-channel picture and fed to a pretrained
    image CNN from the registry (``logmel:efficientnet_lite0`` works offline). Pretrained ImageNet filters
    transfer to spectrograms surprisingly well; SpecAugment-style time and frequency masks are applied
    while training.
(b) a transformers audio model by hub id or local folder (wav2vec 2.0, HuBERT, AST, Whisper's encoder), with
    its convolutional feature encoder frozen by default.

Both take a batch of fixed-length mono waveforms at the encoder's ``sample_rate`` and return one pooled vector
per clip.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from headstart.errors import ParameterError, WeightsNotFoundError

__all__ = [
    "DEFAULT_AUDIO_BACKBONE",
    "LogMelSpectrogram",
    "LogMelImageEncoder",
    "TransformersAudioEncoder",
    "create_audio_encoder",
    "audio_encoder_from_description",
]

DEFAULT_AUDIO_BACKBONE = "logmel:efficientnet_lite0"


class LogMelSpectrogram(nn.Module):
    """Waveforms (batch, samples) -> log-mel power in dB scaled to [0, 1] (batch, n_mels, frames).

    The dB range is fixed (``top_db`` below each clip's peak), so loudness differences between recordings do
    not change the picture's contrast. Part of the model: the saved bundle needs no separate preprocessing.
    """

    def __init__(self, *, sample_rate: int = 16000, n_mels: int = 64, top_db: float = 80.0) -> None:
        super().__init__()
        from transformers.audio_utils import mel_filter_bank

        # ~32 ms windows every 10 ms, the usual speech analysis frame, whatever the sample rate
        n_fft = 2 ** math.ceil(math.log2(0.032 * sample_rate))
        hop_length = sample_rate // 100
        self.sample_rate, self.n_fft, self.hop_length, self.n_mels, self.top_db = (
            sample_rate, n_fft, hop_length, n_mels, top_db)
        bank = mel_filter_bank(num_frequency_bins=n_fft // 2 + 1, num_mel_filters=n_mels, min_frequency=20.0,
                               max_frequency=sample_rate / 2, sampling_rate=sample_rate, norm="slaney",
                               mel_scale="slaney")
        self.register_buffer("mel_bank", torch.from_numpy(bank.astype(np.float32)), persistent=False)
        # The short-time Fourier transform as one strided convolution with Hann-windowed cosine and sine kernels:
        # the same numbers as torch.stft(center=True, reflect padding), but made of operations ONNX can export.
        n_freq = n_fft // 2 + 1
        time = torch.arange(n_fft, dtype=torch.float64)
        angle = 2.0 * math.pi * torch.outer(torch.arange(n_freq, dtype=torch.float64), time) / n_fft
        window = torch.hann_window(n_fft, dtype=torch.float64)
        kernels = torch.cat([torch.cos(angle) * window, -torch.sin(angle) * window]).unsqueeze(1)
        self.register_buffer("dft_kernels", kernels.float(), persistent=False)  # (2 * n_freq, 1, n_fft)

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        padded = F.pad(waves.float().unsqueeze(1), (self.n_fft // 2, self.n_fft // 2), mode="reflect")
        parts = F.conv1d(padded, self.dft_kernels, stride=self.hop_length)  # (batch, 2 * freq, frames)
        real, imaginary = parts.chunk(2, dim=1)
        spectrum = real.pow(2) + imaginary.pow(2)  # (batch, freq, frames)
        mel = torch.einsum("bft,fm->bmt", spectrum, self.mel_bank)
        decibels = 10.0 * torch.log10(mel.clamp_min(1e-10))
        peak = decibels.amax(dim=(1, 2), keepdim=True)
        return ((decibels - peak + self.top_db).clamp_min(0.0) / self.top_db)


def spec_augment(spectrogram: torch.Tensor, *, generator: torch.Generator | None = None, time_masks: int = 2,
                 freq_masks: int = 2, max_time: float = 0.1, max_freq: float = 0.15) -> torch.Tensor:
    """SpecAugment (Park et al. 2019) masking: zero random bands of time frames and mel channels, per clip.

    >>> x = torch.ones(2, 64, 100)
    >>> bool((spec_augment(x, generator=torch.Generator().manual_seed(0)) == 0).any())
    True
    """
    out = spectrogram.clone()
    batch, n_mels, frames = out.shape
    for index in range(batch):
        for _ in range(time_masks):
            width = int(torch.randint(0, max(1, int(frames * max_time)) + 1, (1,), generator=generator))
            start = int(torch.randint(0, max(1, frames - width + 1), (1,), generator=generator))
            out[index, :, start:start + width] = 0.0
        for _ in range(freq_masks):
            width = int(torch.randint(0, max(1, int(n_mels * max_freq)) + 1, (1,), generator=generator))
            start = int(torch.randint(0, max(1, n_mels - width + 1), (1,), generator=generator))
            out[index, start:start + width, :] = 0.0
    return out


class LogMelImageEncoder(nn.Module):
    """Route (a): log-mel spectrogram -> resized 3-channel picture -> pretrained image CNN -> pooled features.

    Args:
        cnn: a timm model without classifier (``num_classes=0``).
        mean, std: the CNN's input normalisation (the [0, 1] spectrogram is normalised like an image).
        image_size: the picture's side (mel axis and time axis both resized to it).
        spec_augment: mask random time/frequency bands while training.
    """

    def __init__(self, cnn: nn.Module, *, architecture: str, mean: tuple[float, ...], std: tuple[float, ...],
                 sample_rate: int = 16000, n_mels: int = 64, image_size: int = 160, spec_augment: bool = True) -> None:
        super().__init__()
        self.cnn = cnn
        self.architecture = architecture
        self.frontend = LogMelSpectrogram(sample_rate=sample_rate, n_mels=n_mels)
        self.sample_rate, self.n_mels, self.image_size = sample_rate, n_mels, image_size
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.register_buffer("_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)
        self.spec_augment = spec_augment
        self.feature_dim = int(cnn.num_features)
        self.keep_norm_statistics = True  # see EncoderNet.train: BatchNorm keeps its statistics while fine-tuning
        self.input_name = "input_values"
        # partial fine-tuning (headstart.training.partial): the CNN's first trainable block; forward then also
        # takes {"maps": the frozen blocks' cached output}, and the CNN is two layer groups
        self.split: int | None = None

    def prepare(self, waves: list[np.ndarray]) -> dict[str, torch.Tensor]:
        return {"input_values": torch.from_numpy(np.stack(waves).astype(np.float32))}

    def pictures(self, waves: torch.Tensor) -> torch.Tensor:
        spectrogram = self.frontend(waves)
        if self.training and self.spec_augment:
            spectrogram = spec_augment(spectrogram)
        # low frequencies at the bottom, like a plotted spectrogram; the CNN does not care, people reading it do
        picture = F.interpolate(spectrogram.flip(1).unsqueeze(1), size=(self.image_size, self.image_size),
                                mode="bilinear", align_corners=False).expand(-1, 3, -1, -1)
        return (picture - self._mean) / self._std

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "maps" in batch:
            from headstart.models.split import forward_top

            return forward_top(self.cnn, batch["maps"], self.split)
        return self.cnn(self.pictures(batch["input_values"]))

    def bottom(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The frozen part under a ``split``: spectrogram, picture, the CNN's stem and blocks before the split."""
        from headstart.models.split import forward_bottom

        return forward_bottom(self.cnn, self.pictures(batch["input_values"]), self.split)

    def set_split(self, tune_blocks: int | None) -> None:
        """Train only the CNN's last ``tune_blocks`` blocks (None: the whole CNN again)."""
        from headstart.models.split import split_index

        self.split = None if tune_blocks is None else split_index(self.cnn, tune_blocks)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        if self.split is not None:
            from headstart.models.split import top_modules

            top = {id(p) for module in top_modules(self.cnn, self.split) for p in module.parameters()}
            return [[p for p in self.cnn.parameters() if id(p) not in top],
                    [p for p in self.cnn.parameters() if id(p) in top]]
        from headstart.models.classifier_net import layer_groups

        groups, _ = layer_groups(self.cnn, n_groups=6)
        return groups

    def cost_key(self) -> dict[str, Any]:
        return {"modality": "audio", "route": "logmel", "sample_rate": self.sample_rate, "n_mels": self.n_mels,
                "image_size": self.image_size, "mean": list(self.mean), "std": list(self.std)}

    def describe(self) -> dict[str, Any]:
        return {"kind": "logmel_cnn", "architecture": self.architecture, "sample_rate": self.sample_rate,
                "n_mels": self.n_mels, "image_size": self.image_size, "mean": list(self.mean), "std": list(self.std),
                "spec_augment": self.spec_augment}

    def save_files(self, folder: Path) -> None:
        """Nothing beyond the description: timm rebuilds the CNN from its architecture name."""


class TransformersAudioEncoder(nn.Module):
    """Route (b): a transformers audio model (wav2vec2, HuBERT, AST, Whisper encoder) with mean pooling over time.

    Args:
        model: the base model (for encoder-decoder models such as Whisper, only the encoder is kept).
        feature_extractor: its transformers feature extractor (raw waveform -> model inputs).
        freeze_feature_encoder: keep the convolutional waveform encoder frozen (wav2vec2/HuBERT), the usual
            recipe: it is generic and costly to train on little data.
    """

    def __init__(self, model: nn.Module, feature_extractor: Any, *, freeze_feature_encoder: bool = True) -> None:
        super().__init__()
        if getattr(model.config, "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
            model = model.get_encoder()
        self.model = model
        self.feature_extractor = feature_extractor
        self.sample_rate = int(getattr(feature_extractor, "sampling_rate", 16000))
        self.freeze_feature_encoder = freeze_feature_encoder
        names = list(getattr(feature_extractor, "model_input_names", None) or ["input_values"])
        self.input_name = "input_features" if "input_features" in names else "input_values"
        self.feature_dim = int(getattr(model.config, "hidden_size", 0) or model.config.d_model)
        self.apply_freezing()

    def always_frozen(self) -> list[nn.Parameter]:
        """The convolutional waveform encoder's parameters when it is kept frozen (every training stage)."""
        if not self.freeze_feature_encoder:
            return []
        modules = [getattr(self.model, name, None) for name in ("feature_extractor", "conv1", "conv2")]
        return [p for module in modules if isinstance(module, nn.Module) for p in module.parameters()]

    def apply_freezing(self) -> None:
        for parameter in self.always_frozen():
            parameter.requires_grad_(False)

    def prepare(self, waves: list[np.ndarray]) -> dict[str, torch.Tensor]:
        inputs = self.feature_extractor([w.astype(np.float32) for w in waves], sampling_rate=self.sample_rate,
                                        return_tensors="pt")
        return {self.input_name: inputs[self.input_name]}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(**batch).last_hidden_state.mean(dim=1)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        from headstart.models.text import _layer_list

        layers = _layer_list(self.model)
        if layers is None:
            return [list(self.model.parameters())]
        layer_ids = {id(p) for p in layers.parameters()}
        before, after, seen_layers = [], [], False
        for name, parameter in self.model.named_parameters():
            if id(parameter) in layer_ids:
                seen_layers = True
            elif seen_layers and not any(k in name for k in ("feature", "conv", "embed", "pos")):
                after.append(parameter)
            else:
                before.append(parameter)
        groups = [before] + [list(layer.parameters()) for layer in layers] + [after]
        return [g for g in groups if g]

    def cost_key(self) -> dict[str, Any]:
        return {"modality": "audio", "route": "transformers", "sample_rate": self.sample_rate,
                "feature_extractor": self.feature_extractor.to_dict() if hasattr(self.feature_extractor, "to_dict")
                else type(self.feature_extractor).__name__}

    def describe(self) -> dict[str, Any]:
        return {"kind": "transformers_audio", "model_type": self.model.config.model_type,
                "sample_rate": self.sample_rate, "freeze_feature_encoder": self.freeze_feature_encoder}

    def save_files(self, folder: Path) -> None:
        self.model.config.save_pretrained(folder)
        self.feature_extractor.save_pretrained(folder)


def _logmel_encoder(image_backbone: str, *, weights: str, allow_download: bool, image_size: int | None,
                    spec_augment: bool, sample_rate: int) -> tuple[LogMelImageEncoder, str]:
    from headstart.models import create_backbone, get_backbone_spec

    spec = get_backbone_spec(image_backbone)
    cnn, source = create_backbone(image_backbone, 0, weights=weights, allow_download=allow_download)
    prep = spec.preprocessing()
    encoder = LogMelImageEncoder(cnn, architecture=spec.architecture, mean=prep.mean, std=prep.std,
                                 sample_rate=sample_rate, image_size=image_size or 160, spec_augment=spec_augment)
    return encoder, f"log-mel spectrogram -> {spec.name} ({spec.architecture}), weights from {source.description}"


def create_audio_encoder(name: str = DEFAULT_AUDIO_BACKBONE, *, weights: str = "auto", allow_download: bool = True,
                         image_size: int | None = None, spec_augment: bool = True, sample_rate: int = 16000,
                         freeze_feature_encoder: bool = True) -> tuple[nn.Module, str]:
    """Build an audio encoder: ``logmel:<image backbone>`` (route a) or a transformers model id/folder (route b).

    Returns:
        The encoder and a one-line description of where its weights came from.

    Raises:
        WeightsNotFoundError: no weights reachable offline; ParameterError: an unusable folder or name.
    """
    if name.startswith("logmel:"):
        return _logmel_encoder(name.split(":", 1)[1], weights=weights, allow_download=allow_download,
                               image_size=image_size, spec_augment=spec_augment, sample_rate=sample_rate)
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModel
    from transformers.utils import logging as hf_logging

    from headstart.models.text import resolve_text_source

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    source = resolve_text_source(name, allow_download=allow_download)
    local_only = source.kind != "hub"
    try:
        extractor = AutoFeatureExtractor.from_pretrained(source.location, local_files_only=local_only)
        if weights == "random":
            model = AutoModel.from_config(AutoConfig.from_pretrained(source.location, local_files_only=local_only))
            description = f"{name}: random initialisation"
        else:
            model = AutoModel.from_pretrained(source.location, local_files_only=local_only)
            description = f"{name}: {source.description}"
    except (OSError, ValueError) as error:
        raise WeightsNotFoundError(
            f"Cannot load audio backbone {name!r} from {source.location}: {str(error).splitlines()[0][:300]}",
            fix="Pass a folder saved with save_pretrained() holding config.json, preprocessor_config.json and the"
                " weights, or use backbone='logmel:efficientnet_lite0' (offline).") from None
    if not hasattr(model.config, "hidden_size") and not hasattr(model.config, "d_model"):
        raise ParameterError(f"{name!r} ({model.config.model_type}) does not look like an audio encoder.",
                             fix="Use a wav2vec2 / HuBERT / AST / Whisper model, or a logmel:<image backbone>.")
    return TransformersAudioEncoder(model, extractor, freeze_feature_encoder=freeze_feature_encoder), description


def audio_encoder_from_description(description: dict[str, Any], folder: Path) -> nn.Module:
    """Rebuild an encoder's structure (random weights) from a bundle's description and ``encoder/`` folder."""
    if description["kind"] == "logmel_cnn":
        import timm

        cnn = timm.create_model(description["architecture"], pretrained=False, num_classes=0)
        return LogMelImageEncoder(cnn, architecture=description["architecture"], mean=tuple(description["mean"]),
                                  std=tuple(description["std"]), sample_rate=int(description["sample_rate"]),
                                  n_mels=int(description["n_mels"]), image_size=int(description["image_size"]),
                                  spec_augment=bool(description.get("spec_augment", True)))
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    model = AutoModel.from_config(AutoConfig.from_pretrained(folder, local_files_only=True))
    extractor = AutoFeatureExtractor.from_pretrained(folder, local_files_only=True)
    return TransformersAudioEncoder(model, extractor,
                                    freeze_feature_encoder=bool(description.get("freeze_feature_encoder", True)))


def clip_samples(seconds: float, sample_rate: int) -> int:
    """Samples in a clip of ``seconds`` at ``sample_rate``, a multiple of 160 (10 ms at 16 kHz).

    >>> clip_samples(1.0, 16000)
    16000
    """
    return int(math.ceil(seconds * sample_rate / 160) * 160)
