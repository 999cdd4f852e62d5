"""Networks for dense tasks: a timm backbone's multi-scale features feeding a U-Net / FPN decoder
(segmentation) or an FPN + Faster R-CNN (detection, torchvision).

Every registered backbone is a timm model, and timm models answer ``forward_intermediates``: the feature maps
after each stage (strides 2, 4, 8, 16, 32 for CNNs). That is the one contract the decoders rely on, so any
registry backbone with a pyramid of stages works. A bundle rebuilds its network with :func:`build_dense_net`
from ``config.json`` alone (no weights download, no training code).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import FasterRCNN

from headstart.errors import ParameterError
from headstart.models.transfer import TransferMixin

__all__ = ["MultiScaleEncoder", "SegmentationNet", "PyramidBackbone", "build_detector",
           "build_dense_net", "rebuild_dense_net", "DECODERS", "DetectionNet"]

DECODERS = ("unet", "fpn")
UNET_CHANNELS = (128, 64, 48, 32, 16)  # decoder widths from stride 16 up to stride 1 (light for CPUs)
FPN_CHANNELS = 128


class MultiScaleEncoder(nn.Module):
    """A timm model seen as its stages' feature maps, from the finest (stride 2) to the coarsest.

    Args:
        model: a timm model (its classifier, if any, is never run).
        indices: which stages to return (``feature_info`` positions); all of them by default.
    """

    def __init__(self, model: nn.Module, indices: tuple[int, ...] | None = None) -> None:
        super().__init__()
        info = getattr(model, "feature_info", None)
        if not info or not hasattr(model, "forward_intermediates"):
            raise ParameterError(
                f"The backbone {type(model).__name__} does not expose multi-scale features (timm feature_info +"
                " forward_intermediates), which segmentation and detection need.",
                fix="Choose a CNN backbone such as efficientnet_lite0 or timm:resnet18.")
        self.model = model
        self.indices = tuple(range(len(info))) if indices is None else tuple(indices)
        self.channels = tuple(int(info[i]["num_chs"]) for i in self.indices)
        self.reductions = tuple(int(info[i]["reduction"]) for i in self.indices)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return list(self.model.forward_intermediates(images, indices=list(self.indices), intermediates_only=True))


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class _UNetBlock(nn.Module):
    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(_conv_bn_relu(in_channels + skip_channels, out_channels),
                                   _conv_bn_relu(out_channels, out_channels))

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        size = skip.shape[-2:] if skip is not None else (x.shape[-2] * 2, x.shape[-1] * 2)
        x = F.interpolate(x, size=size, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.convs(x)


class UNetDecoder(nn.Module):
    """U-Net decoder (Ronneberger et al. 2015) over encoder stages: upsample, concatenate the skip, two 3x3
    convolutions; one block per stage, the last one (no skip) up to the input resolution.

    (A full-resolution skip of the input image into the last block was tried on ISBI membranes: validation
    mIoU 0.770 vs 0.774 without it, so it is not used; docs/benchmarks.md.)
    """

    def __init__(self, encoder_channels: tuple[int, ...], reductions: tuple[int, ...],
                 widths: tuple[int, ...] = UNET_CHANNELS) -> None:
        super().__init__()
        skips: list[int] = list(encoder_channels[:-1])[::-1]  # coarse to fine
        steps = len(skips) + (1 if reductions[0] > 1 else 0)  # one more block when the finest stage is stride 2+
        widths = tuple(widths[:steps]) + tuple(widths[-1:]) * max(0, steps - len(widths))
        blocks, channels = [], encoder_channels[-1]
        for i in range(steps):
            blocks.append(_UNetBlock(channels, skips[i] if i < len(skips) else 0, widths[i]))
            channels = widths[i]
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = channels
        self.n_skips = len(skips)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x, skips = features[-1], features[:-1][::-1]
        for i, block in enumerate(self.blocks):
            x = block(x, skips[i] if i < self.n_skips else None)
        return x


class FPNDecoder(nn.Module):
    """Feature-pyramid decoder (Kirillov et al. 2019, panoptic FPN): lateral 1x1 + top-down sum on the stride-4+
    stages, each level refined and upsampled to stride 4, summed, then upsampled to the input size."""

    def __init__(self, encoder_channels: tuple[int, ...], reductions: tuple[int, ...],
                 width: int = FPN_CHANNELS) -> None:
        super().__init__()
        self.keep = [i for i, r in enumerate(reductions) if r >= 4] or list(range(len(reductions)))
        self.lateral = nn.ModuleList(nn.Conv2d(encoder_channels[i], width, 1) for i in self.keep)
        self.smooth = nn.ModuleList(_conv_bn_relu(width, width // 2) for _ in self.keep)
        self.fuse = _conv_bn_relu(width // 2, width // 2)
        self.out_channels = width // 2

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        levels = [features[i] for i in self.keep]
        x = self.lateral[-1](levels[-1])
        merged = [x]
        for lateral, feature in zip(list(self.lateral)[-2::-1], levels[-2::-1]):
            x = lateral(feature) + F.interpolate(x, size=feature.shape[-2:], mode="nearest")
            merged.insert(0, x)
        size = merged[0].shape[-2:]
        total = sum(F.interpolate(smooth(m), size=size, mode="bilinear", align_corners=False)
                    for smooth, m in zip(self.smooth, merged))
        return self.fuse(total)


class SegmentationNet(TransferMixin, nn.Module):
    """Encoder + decoder + a 3x3 classifier giving per-pixel class logits at the input resolution.

    Inputs of any size work: they are padded to a multiple of the encoder's largest stride and the logits
    cropped back.
    """

    def __init__(self, encoder: MultiScaleEncoder, num_classes: int, *, decoder: str = "unet") -> None:
        super().__init__()
        if decoder not in DECODERS:
            raise ParameterError(f"The 'decoder' parameter must be one of {list(DECODERS)}. Got {decoder!r}.",
                                 fix="Use decoder='unet' or 'fpn'.")
        self.encoder = encoder
        self.decoder_name = decoder
        self.decoder = (UNetDecoder if decoder == "unet" else FPNDecoder)(encoder.channels, encoder.reductions)
        self.classifier = nn.Conv2d(self.decoder.out_channels, num_classes, 3, padding=1)
        self.stride = max(encoder.reductions)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        # always padded (by 0 when the size fits): a traced/exported graph must keep the step for other sizes
        images = F.pad(images, (0, (-width) % self.stride, 0, (-height) % self.stride))
        logits = self.classifier(self.decoder(self.encoder(images)))
        if logits.shape[-2:] != images.shape[-2:]:
            logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return logits[..., :height, :width]

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """The pretrained encoder as one group: it learns at ``lr_mult`` x the decoder's rate once unfrozen."""
        return [list(self.encoder.parameters())]

    def pretrained_modules(self) -> list[nn.Module]:
        return list(self.encoder.modules())


class PyramidBackbone(nn.Module):
    """The encoder's stride-4+ stages through torchvision's FeaturePyramidNetwork (+ a max-pooled extra level):
    the backbone torchvision's detectors expect (``out_channels`` attribute, an OrderedDict of maps)."""

    def __init__(self, encoder: MultiScaleEncoder, *, out_channels: int = FPN_CHANNELS, min_stride: int = 8) -> None:
        super().__init__()
        from torchvision.ops.feature_pyramid_network import (
            FeaturePyramidNetwork,
            LastLevelMaxPool,
        )

        self.encoder = encoder
        self.keep = [i for i, r in enumerate(encoder.reductions) if r >= min_stride]
        self.fpn = FeaturePyramidNetwork([encoder.channels[i] for i in self.keep], out_channels,
                                         extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    @property
    def n_levels(self) -> int:
        return len(self.keep) + 1

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features = self.encoder(images)
        return self.fpn(OrderedDict((str(n), features[i]) for n, i in enumerate(self.keep)))


class DetectionNet(TransferMixin, FasterRCNN):
    """torchvision's Faster R-CNN whose backbone's encoder is the pretrained part (same modules and weight names
    as :class:`FasterRCNN`, so saved detectors load either way)."""

    def forward(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None) -> Any:
        if targets is not None:
            # mixed precision casts every float input to bf16/fp16, the boxes too; torchvision's heads need float32
            targets = [{**target, "boxes": target["boxes"].float()} for target in targets]
        return super().forward(images, targets)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        return [list(self.backbone.encoder.parameters())]

    def pretrained_modules(self) -> list[nn.Module]:
        return list(self.backbone.encoder.modules())


def build_detector(encoder: MultiScaleEncoder, num_classes: int, *, min_size: int, max_size: int,
                   mean: tuple[float, ...], std: tuple[float, ...], anchor_sizes: tuple[int, ...] | None = None,
                   train_sizes: tuple[int, ...] = (), min_stride: int = 8, box_detections_per_img: int = 100,
                   box_score_thresh: float = 0.01) -> nn.Module:
    """A torchvision Faster R-CNN (Ren et al. 2015) on ``encoder`` + FPN, for ``num_classes`` object classes.

    torchvision resizes each image so its short side is ``min_size`` (long side at most ``max_size``) and
    normalises it with ``mean``/``std`` inside the model, and maps boxes back to the input image's pixels.
    ``train_sizes``: in training each batch's short side is drawn from these and ``min_size`` (multi-scale
    training: the boxes are resized with the image); evaluation always uses ``min_size``.
    """
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    backbone = PyramidBackbone(encoder, min_stride=min_stride)
    levels = backbone.n_levels
    sizes = anchor_sizes or tuple(4 * min_stride * 2 ** i for i in range(levels))
    if len(sizes) != levels:
        raise ParameterError(f"anchor_sizes needs one size per pyramid level ({levels}). Got {list(sizes)}.",
                             fix=f"Pass {levels} sizes, e.g. {[4 * min_stride * 2 ** i for i in range(levels)]}.")
    anchors = AnchorGenerator(sizes=tuple((s,) for s in sizes), aspect_ratios=((0.5, 1.0, 2.0),) * levels)
    pool = MultiScaleRoIAlign(featmap_names=[str(n) for n in range(levels - 1)], output_size=7, sampling_ratio=2)
    # Fewer proposals and sampled RoIs than torchvision's COCO defaults (2000 / 512): small datasets have tens
    # of objects per image, and on a CPU the RoI head's cost grows with them.
    return DetectionNet(backbone, num_classes=num_classes + 1, rpn_anchor_generator=anchors, box_roi_pool=pool,
                      min_size=(*[s for s in train_sizes if s != min_size], min_size),  # eval: the last one
                      max_size=max_size, image_mean=list(mean), image_std=list(std),
                      rpn_pre_nms_top_n_train=1000, rpn_post_nms_top_n_train=500, rpn_pre_nms_top_n_test=500,
                      rpn_post_nms_top_n_test=300, box_batch_size_per_image=128,
                      box_detections_per_img=box_detections_per_img, box_score_thresh=box_score_thresh)


def build_dense_net(config: dict[str, Any], encoder_model: nn.Module | None = None) -> nn.Module:
    """The network a dense-task bundle describes (random weights unless ``encoder_model`` carries them).

    Args:
        config: the bundle config (``task``, ``architecture``, ``classes``, ``dense``, ``preprocessing``).
        encoder_model: a timm model with loaded weights to use instead of a fresh one (training).
    """
    dense = config["dense"]
    model = encoder_model if encoder_model is not None else timm.create_model(
        config["architecture"], pretrained=False, num_classes=0)
    encoder = MultiScaleEncoder(model, tuple(dense["indices"]) if dense.get("indices") else None)
    classes = len(config["classes"])
    if config["task"] == "segmentation":
        return SegmentationNet(encoder, classes, decoder=dense.get("decoder", "unet"))
    if config["task"] == "detection":
        prep = config["preprocessing"]
        return build_detector(encoder, classes, min_size=int(dense["min_size"]), max_size=int(dense["max_size"]),
                              mean=tuple(prep["mean"]), std=tuple(prep["std"]),
                              anchor_sizes=tuple(dense["anchor_sizes"]) if dense.get("anchor_sizes") else None,
                              min_stride=int(dense.get("min_stride", 8)),
                              train_sizes=tuple(int(v) for v in dense.get("train_sizes", ())),
                              box_score_thresh=float(dense.get("box_score_thresh", 0.01)))
    raise ParameterError(f"Unknown dense task {config['task']!r}.", fix="Use segmentation or detection.")


def rebuild_dense_net(config: dict[str, Any], files: Any = None) -> nn.Module:
    """A saved segmenter's or detector's network (random weights) from its bundle config alone."""
    return build_dense_net(config)
