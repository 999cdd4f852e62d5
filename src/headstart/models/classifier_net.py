"""The image classification network: a timm model with a new head, whose backbone can be frozen in groups."""

from __future__ import annotations

import torch
from timm.models import group_parameters
from torch import nn

from headstart.models.transfer import TransferMixin

__all__ = ["ClassifierNet", "layer_groups", "N_BACKBONE_GROUPS"]

# Number of backbone layer groups that get their own learning rate when the backbone is unfrozen.
N_BACKBONE_GROUPS = 3


class ClassifierNet(TransferMixin, nn.Module):
    """A timm model with a new head, that can run with its backbone frozen (:meth:`set_trainable`).

    When frozen, the backbone runs under ``no_grad`` and stays in eval mode (its BatchNorm statistics do not
    move); only the classifier trains. ``forward_features`` / ``forward_head`` are timm's head API.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        # partial fine-tuning (headstart.training.partial): the first trainable block; the pretrained part is then
        # two layer groups, the blocks before it and the rest, and forward takes {"maps": its cached input}
        self.split: int | None = None
        # timm's initialisations scale the classifier by 1/sqrt(num_classes) (EfficientNet: std 0.41 for two
        # classes), which starts a new head with confident random logits. A small init starts it near uniform.
        for module in model.get_classifier().modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """The backbone's parameters in :data:`N_BACKBONE_GROUPS` groups, earliest first (timm's group matcher);
        with a ``split``, two: the frozen blocks before it (with the stem) and the blocks from it on."""
        if self.split is not None:
            from headstart.models.split import top_modules

            top = {id(p) for module in top_modules(self.model, self.split) for p in module.parameters()}
            head = {id(p) for p in self.model.get_classifier().parameters()}
            pretrained = [p for p in self.model.parameters() if id(p) not in head]
            return [[p for p in pretrained if id(p) not in top], [p for p in pretrained if id(p) in top]]
        return layer_groups(self.model)[0]

    def pretrained_modules(self) -> list[nn.Module]:
        """Every module of the timm model but its root and its classifier: the root keeps its training flag so
        head dropout (which reads the root's ``.training``) still works with a frozen backbone."""
        classifier = set(self.model.get_classifier().modules())
        return [m for m in self.model.modules() if m is not self.model and m not in classifier]

    @torch.no_grad()
    def pooled_features(self, images: torch.Tensor) -> torch.Tensor:
        """What the frozen backbone feeds the classifier: pooled features, shape (batch, num_features)."""
        return self.model.forward_head(self.model.forward_features(images), pre_logits=True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits from images (batch, 3, H, W), from cached :meth:`pooled_features` (batch, features), or with a
        ``split`` from ``{"maps": the frozen blocks' cached output}``."""
        if isinstance(images, dict):
            from headstart.models.split import forward_top

            return forward_top(self.model, images["maps"], self.split)
        if images.ndim == 2:
            features = nn.functional.dropout(images, p=float(getattr(self.model, "drop_rate", 0.0)),
                                             training=self.training)
            return self.model.get_classifier()(features)
        if self.backbone_frozen:
            with torch.no_grad():
                features = self.model.forward_features(images)
            return self.model.forward_head(features)
        return self.model(images)


def layer_groups(model: nn.Module, n_groups: int = N_BACKBONE_GROUPS) -> tuple[list[list[nn.Parameter]], list[nn.Parameter]]:
    """Split a timm model's parameters into ``n_groups`` backbone groups (earliest first) and the head.

    Uses timm's coarse group matcher (stem, stages/blocks, head), merged into ``n_groups`` nearly equal runs.
    """
    from headstart.models.multilayer import StageFeatures

    if isinstance(model, StageFeatures):  # intermediate-layer features: the groups of the timm model inside
        return layer_groups(model.model, n_groups)[0], list(model.classifier.parameters())
    head = list(model.get_classifier().parameters())
    head_ids = {id(p) for p in head}
    named = dict(model.named_parameters())
    ordered: list[list[nn.Parameter]] = []
    for names in group_parameters(model, model.group_matcher(coarse=True)).values():
        members = [named[n] for n in names if id(named[n]) not in head_ids]
        if members:
            ordered.append(members)
    n_groups = max(1, min(n_groups, len(ordered)))
    bounds = [round(i * len(ordered) / n_groups) for i in range(n_groups + 1)]
    groups = [[p for chunk in ordered[bounds[i]:bounds[i + 1]] for p in chunk] for i in range(n_groups)]
    return groups, head
