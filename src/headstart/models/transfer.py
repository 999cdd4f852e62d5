"""What every network headstart trains shares: a pretrained part in layer groups, a new part, and freezing.

The image classifier, the text/audio classifier, the segmenter and the detector all mix this in. The pretrained
part is split into layer groups, earliest first (:meth:`TransferMixin.layer_groups`); every other parameter is
the new part (head, decoder, detection heads) and always trains. A training stage freezes the pretrained part,
or all but its last ``k`` groups, and may keep its BatchNorm statistics; the one optimiser builder
(:func:`headstart.training.optim.parameter_groups`) reads the same groups to give earlier layers lower learning
rates. Structure only: no training code here.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

__all__ = ["TransferMixin", "keep_batchnorm_statistics"]


def keep_batchnorm_statistics(modules: Iterable[nn.Module]) -> None:
    """Put the BatchNorm layers among ``modules`` in eval mode: they keep their stored statistics.

    Fine-tuning on a few images in small batches would otherwise replace ImageNet statistics by noisy ones.
    """
    for module in modules:
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


class TransferMixin:
    """Mixed into an ``nn.Module`` (before it in the bases): layer groups and stage-wise freezing.

    Subclasses implement :meth:`layer_groups` and :meth:`pretrained_modules`; they may set
    ``keep_norm_statistics`` (the pretrained BatchNorm layers never update, in any stage) and override
    :meth:`always_frozen` (pretrained parameters that never train, e.g. a waveform encoder, or a model's base
    weights under LoRA).
    """

    keep_norm_statistics: bool = False
    backbone_frozen: bool = False
    batchnorm_frozen: bool = False

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """The pretrained parameters in groups, from the input side to the output side."""
        raise NotImplementedError

    def pretrained_modules(self) -> list[nn.Module]:
        """The modules holding the pretrained part (frozen ones are kept in eval mode)."""
        raise NotImplementedError

    def always_frozen(self) -> set[int]:
        """Ids of pretrained parameters that never train."""
        return set()

    def set_trainable(self, *, freeze_backbone: bool = False, trainable_groups: int | None = None,
                      freeze_batchnorm: bool = False) -> None:
        """Freeze the pretrained part (``freeze_backbone``) or all but its last ``trainable_groups`` groups; the
        new part always trains. ``freeze_batchnorm`` keeps the pretrained BatchNorm statistics while training."""
        groups = self.layer_groups()
        chosen = [] if freeze_backbone else groups if trainable_groups is None else \
            groups[len(groups) - trainable_groups:]
        frozen_for_good = self.always_frozen()
        trains = {id(p) for group in chosen for p in group if id(p) not in frozen_for_good}
        pretrained = {id(p) for group in groups for p in group}
        for parameter in self.parameters():  # type: ignore[attr-defined]
            parameter.requires_grad_(id(parameter) in trains or id(parameter) not in pretrained)
        self.backbone_frozen = freeze_backbone
        self.batchnorm_frozen = freeze_batchnorm
        self.train(self.training)  # type: ignore[attr-defined]

    def train(self, mode: bool = True):  # type: ignore[no-untyped-def]
        """Train mode, except for the frozen pretrained modules (and kept BatchNorm statistics)."""
        super().train(mode)  # type: ignore[misc]
        if mode and self.backbone_frozen:
            for module in self.pretrained_modules():
                module.training = False
        elif mode and (self.batchnorm_frozen or self.keep_norm_statistics):
            keep_batchnorm_statistics(self.pretrained_modules())
        return self
