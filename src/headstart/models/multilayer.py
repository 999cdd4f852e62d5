"""Intermediate-layer features (Head2Toe): the pooled output of every stage of a backbone beside its last layer.

Evci et al., "Head2Toe: Utilizing Intermediate Representations for Better Transfer Learning" (ICML 2022): a
linear head on features pooled from every layer of a frozen backbone matches fine-tuning on far-domain tasks
at a linear probe's cost. :class:`StageFeatures` wraps a timm model so that its pooled features are the last
layer's (what timm's head sees) followed by the global average of every stage's output, all from one forward
pass (timm's ``forward_intermediates``). It keeps timm's head API (``forward_features`` / ``forward_head`` /
``get_classifier`` / ``num_features``), so feature extraction, the fast runtimes, bundles, ONNX export and the
service treat it as any other backbone.

Which layers the head uses is chosen on training data (:func:`headstart.training.classification.solve_linear_head`):
the head's weights on the layers not chosen are zero.

>>> import timm
>>> net = StageFeatures(timm.create_model("test_efficientnet", num_classes=0), num_classes=2)
>>> net.layer_sizes, net.num_features, tuple(net(torch.zeros(1, 3, 64, 64)).shape)
([256, 24, 16, 24, 32, 48, 64], 464, (1, 2))
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from headstart.errors import ParameterError

__all__ = ["StageFeatures", "FEATURE_LAYERS", "check_feature_layers", "layer_candidates", "layer_plan",
           "with_feature_layers", "describe_layer_choice"]

# ``feature_layers`` values: the last layer only, every stage, or chosen by cross-validation between the two
FEATURE_LAYERS = ("auto", "last", "all")


def check_feature_layers(value: Any, *, owner: str = "ImageClassifier") -> str | int:
    """``auto``, ``last``, ``all`` or a number k >= 1 (the last layer and the last k stages)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if value in FEATURE_LAYERS or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise ParameterError(
        f"The 'feature_layers' parameter of {owner} must be 'auto', 'last', 'all' or a number k >= 1 (the last"
        f" layer and the last k stages). Got {value!r}.",
        fix="Pass --feature-layers auto (chosen by cross-validation on training data), last or all.")


def layer_candidates(value: str | int, n_stages: int) -> dict[str, list[int]]:
    """The layer sets (indices into :attr:`StageFeatures.layer_sizes`, 0 = the last layer) to choose between.

    >>> layer_candidates("auto", 7), layer_candidates(2, 7)
    ({'last': [0], 'all': [0, 1, 2, 3, 4, 5, 6, 7]}, {'last+2': [0, 6, 7]})
    """
    every = list(range(n_stages + 1))
    if value == "auto":
        return {"last": [0], "all": every}
    if value == "all":
        return {"all": every}
    if value == "last":
        return {"last": [0]}
    k = min(int(value), n_stages)
    return {f"last+{k}": [0, *every[len(every) - k:]]}


def _pool(feature: torch.Tensor) -> torch.Tensor:
    """Global average of a stage output: (n, c, h, w) maps or (n, tokens, c) sequences -> (n, c)."""
    return feature.mean(dim=(2, 3)) if feature.ndim == 4 else feature.mean(dim=1)


class StageFeatures(nn.Module):
    """A timm model whose pooled features are its last layer's followed by every stage's global average.

    Args:
        model: the timm model (its classifier is removed).
        num_classes: outputs of the new linear head on the concatenated features (0: none, features only).

    Attributes:
        layer_sizes: widths of the concatenated parts: the last layer, then the stages, earliest first.
    """

    feature_tag = "+stages"  # part of the feature store's key: these features are not the last layer's alone

    def __init__(self, model: nn.Module, *, num_classes: int = 0) -> None:
        super().__init__()
        if not hasattr(model, "forward_intermediates"):
            raise ParameterError(
                f"The {type(model).__name__} backbone cannot give intermediate-layer features (timm has no"
                " forward_intermediates for it).", fix="Pass feature_layers='last' (--feature-layers last).")
        model.reset_classifier(0)
        self.model = model
        self.drop_rate = float(getattr(model, "drop_rate", 0.0))
        self.pretrained_cfg = {**copy.deepcopy(getattr(model, "pretrained_cfg", {}) or {}), "classifier": "classifier"}
        self.default_cfg = self.pretrained_cfg
        size = int(self.pretrained_cfg.get("input_size", (3, 224, 224))[-1])
        was_training = model.training
        with torch.no_grad():
            final, stages = self._intermediates(torch.zeros(1, 3, size, size), model.eval())
        model.train(was_training)
        self.layer_sizes = [int(model.forward_head(final, pre_logits=True).shape[1])] + [int(_pool(s).shape[1])
                                                                                        for s in stages]
        self.num_features = sum(self.layer_sizes)
        self.classifier: nn.Module = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    @staticmethod
    def _intermediates(images: torch.Tensor, model: nn.Module) -> tuple[torch.Tensor, list[torch.Tensor]]:
        try:
            return model.forward_intermediates(images, extra_blocks=True)
        except TypeError:  # models whose forward_intermediates has no extra_blocks: their feature stages
            return model.forward_intermediates(images)

    def layer_bounds(self) -> list[tuple[int, int]]:
        """Column ranges of each part of the pooled features, in :attr:`layer_sizes` order."""
        bounds, start = [], 0
        for size in self.layer_sizes:
            bounds.append((start, start + size))
            start += size
        return bounds

    def forward_features(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self._intermediates(images, self.model)

    def forward_head(self, features: tuple[torch.Tensor, list[torch.Tensor]], pre_logits: bool = False) -> torch.Tensor:
        final, stages = features
        pooled = torch.cat([self.model.forward_head(final, pre_logits=True), *(_pool(s) for s in stages)], dim=1)
        return pooled if pre_logits else self.classifier(pooled)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, *args: Any, **kwargs: Any) -> None:
        self.classifier = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()



def with_feature_layers(model: nn.Module, value: Any, *, strategy: str, head: str, num_classes: int) -> nn.Module:
    """``model``, or a :class:`StageFeatures` of it when ``feature_layers`` (``value``) asks for intermediate
    layers: ``auto`` does for a frozen backbone under a solved linear head (``strategy`` ``linear_probe``, the
    cheap candidate auto tries first); ``all`` or k does for any strategy with the linear head."""
    value = check_feature_layers(value)
    if value == "last" or (value == "auto" and (strategy != "linear_probe" or head != "linear")):
        return model
    if strategy == "partial":
        raise ParameterError(
            f"feature_layers={value!r} feeds intermediate layers to the head, but strategy='partial' trains the last"
            " blocks under a head on the last layer.",
            fix="Pass feature_layers='last' (or 'auto') with strategy='partial', or another strategy.")
    if head != "linear":
        raise ParameterError(
            f"feature_layers={value!r} feeds intermediate layers to the linear head, but the head is {head!r}.",
            fix="Pass head='linear' with feature_layers, or feature_layers='last' with a scikit-learn head.")
    return StageFeatures(model, num_classes=num_classes)


def layer_plan(model: nn.Module, value: Any) -> tuple[list[tuple[int, int]], dict[str, list[int]]] | None:
    """What :func:`~headstart.training.classification.solve_linear_head` chooses between for ``model``: its
    layers' column ranges and the candidate sets of ``feature_layers``; None for a plain backbone."""
    if not isinstance(model, StageFeatures):
        return None
    return model.layer_bounds(), layer_candidates(check_feature_layers(value), len(model.layer_sizes) - 1)


def describe_layer_choice(selection: dict[str, Any]) -> str | None:
    """One line on the layer set a solved head chose, with every candidate's CV log loss (None: no choice made).

    >>> describe_layer_choice({"feature_layers": {"chosen": "all", "candidates": [
    ...     {"layers": "last", "dim": 1280, "cv_log_loss": 0.125, "standard_error": 0.005},
    ...     {"layers": "all", "dim": 2096, "cv_log_loss": 0.1, "standard_error": 0.007}]}})
    'Feature layers: all (CV log loss: last 0.1250 ± 0.0050 (1280 features), all 0.1000 ± 0.0070 (2096 features)).'
    """
    choice = selection.get("feature_layers")
    if not choice:
        return None
    figures = ", ".join(f"{row['layers']} {row['cv_log_loss']:.4f} ± {row['standard_error']:.4f} ({row['dim']} features)"
                        if row["cv_log_loss"] is not None else f"{row['layers']} (no CV: too few images)"
                        for row in choice["candidates"])
    return f"Feature layers: {choice['chosen']} (CV log loss: {figures})."
