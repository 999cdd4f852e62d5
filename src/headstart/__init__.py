"""headstart: transfer learning from pretrained models on small datasets.

>>> from headstart import ImageClassifier, list_backbones
>>> "efficientnet_lite0" in list_backbones()
True
"""

from headstart.adapt import DomainAdapter
from headstart.bundle import load_bundle
from headstart.deploy.shift import measure_shift
from headstart.errors import (
    BundleError,
    DataError,
    HeadstartError,
    NotFittedError,
    ParameterError,
    ResumeError,
    WeightsNotFoundError,
)
from headstart.estimators.audio import AudioClassifier
from headstart.estimators.detector import Detector
from headstart.estimators.image import ImageClassifier
from headstart.estimators.segmenter import Segmenter
from headstart.estimators.text import TextClassifier
from headstart.models import (
    DEFAULT_BACKBONE,
    create_backbone,
    get_backbone_spec,
    list_backbones,
)
from headstart.tasks import detect_task, load_model

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
