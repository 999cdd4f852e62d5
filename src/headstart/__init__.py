"""headstart: transfer learning from pretrained models on small datasets.

The public names are loaded on first use (PEP 562), so ``import headstart`` is cheap and a process that only
deploys a model (``headstart serve``, loading a bundle to predict) never imports training code.

>>> from headstart import ImageClassifier, list_backbones
>>> "efficientnet_lite0" in list_backbones()
True
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_PUBLIC = {
    "ImageClassifier": "headstart.estimators.image",
    "TextClassifier": "headstart.estimators.text",
    "AudioClassifier": "headstart.estimators.audio",
    "Segmenter": "headstart.estimators.segmenter",
    "Detector": "headstart.estimators.detector",
    "DomainAdapter": "headstart.adapt",
    "measure_shift": "headstart.deploy.shift",
    "detect_task": "headstart.tasks",
    "load_model": "headstart.tasks",
    "load_bundle": "headstart.bundle",
    "DEFAULT_BACKBONE": "headstart.models",
    "create_backbone": "headstart.models",
    "get_backbone_spec": "headstart.models",
    "list_backbones": "headstart.models",
    "BundleError": "headstart.errors",
    "DataError": "headstart.errors",
    "HeadstartError": "headstart.errors",
    "NotFittedError": "headstart.errors",
    "ParameterError": "headstart.errors",
    "ResumeError": "headstart.errors",
    "WeightsNotFoundError": "headstart.errors",
}

__all__ = [
    "ImageClassifier",
    "TextClassifier",
    "AudioClassifier",
    "Segmenter",
    "Detector",
    "DomainAdapter",
    "measure_shift",
    "detect_task",
    "load_model",
    "load_bundle",
    "DEFAULT_BACKBONE",
    "create_backbone",
    "get_backbone_spec",
    "list_backbones",
    "BundleError",
    "DataError",
    "HeadstartError",
    "NotFittedError",
    "ParameterError",
    "ResumeError",
    "WeightsNotFoundError",
    "__version__",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load lazily below
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


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'headstart' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
