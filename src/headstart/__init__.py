"""headstart: transfer learning from pretrained models on small datasets.

>>> from headstart import ImageClassifier, list_backbones
>>> "efficientnet_lite0" in list_backbones()
True
"""

from headstart.adapt import DomainAdapter
from headstart.audio_classifier import AudioClassifier
from headstart.backbones import (
    DEFAULT_BACKBONE,
    create_backbone,
    get_backbone_spec,
    list_backbones,
)
from headstart.bundle import load_bundle
from headstart.classifier import ImageClassifier
from headstart.detector import Detector
from headstart.errors import (
    BundleError,
    DataError,
    HeadstartError,
    NotFittedError,
    ParameterError,
    ResumeError,
    WeightsNotFoundError,
)
from headstart.segmenter import Segmenter
from headstart.shift import measure_shift
from headstart.tasks import detect_task, load_model
from headstart.text_classifier import TextClassifier

__version__ = "0.1.0"

__all__ = [
    "AudioClassifier",
    "TextClassifier",
    "Segmenter",
    "Detector",
    "DomainAdapter",
    "measure_shift",
    "detect_task",
    "load_model",
    "DEFAULT_BACKBONE",
    "BundleError",
    "DataError",
    "HeadstartError",
    "ImageClassifier",
    "NotFittedError",
    "ParameterError",
    "ResumeError",
    "WeightsNotFoundError",
    "create_backbone",
    "get_backbone_spec",
    "list_backbones",
    "load_bundle",
    "__version__",
]
