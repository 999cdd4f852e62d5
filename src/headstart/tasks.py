"""The one table of tasks: for each, its name, how its data is recognised, its estimator, how a saved model's
network is rebuilt, and the tag its bundles carry.

Everything else asks this table (``headstart train`` to detect a task, :func:`load_model` to pick the estimator,
the bundle loader to rebuild a network, the predictor to know the inputs). Entries name their code as
``"module:attribute"`` strings, imported only when used, so reading the table loads nothing: a process that only
serves a model never imports training code. A new task is one row here plus its data reader, network and
estimator (docs/architecture.md).

>>> from pathlib import Path
>>> detect_task(Path(__file__).parents[2] / "examples" / "hymenoptera_sample")
'image'
>>> task_of_bundle({"task": "text_classification"}).name
'text'
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headstart.errors import DataError, ParameterError
from headstart.storage import read_json

__all__ = ["TaskSpec", "TASK_TABLE", "TASKS", "CLASSIFICATION_TASKS", "DENSE_TASKS", "get_task", "task_of_bundle",
           "detect_task", "estimator_class", "load_model", "resolve"]


@dataclass(frozen=True)
class TaskSpec:
    """One task.

    Args:
        name: what users type (``--task image``).
        bundle_tag: the ``task`` field of its saved models' ``config.json``.
        estimator: ``"module:Class"`` of its estimator.
        net_builder: ``"module:function"`` rebuilding a saved network from ``(config, bundle_folder)``.
        sniffer: ``"module:function"`` telling from a path whether it holds this task's data (None: the default).
        modality: the inputs a prediction takes (``image``, ``text``, ``audio``).
    """

    name: str
    bundle_tag: str
    estimator: str
    net_builder: str
    sniffer: str | None
    modality: str

    @property
    def is_classification(self) -> bool:
        return self.bundle_tag.endswith("_classification")


# Data is recognised in this order (a VOC folder also holds images; a table of audio paths also has a text column).
TASK_TABLE: tuple[TaskSpec, ...] = (
    TaskSpec("detection", "detection", "headstart.estimators.detector:Detector", "headstart.models.dense:rebuild_dense_net",
             "headstart.data.detection:looks_like_detection_data", "image"),
    TaskSpec("segmentation", "segmentation", "headstart.estimators.segmenter:Segmenter",
             "headstart.models.dense:rebuild_dense_net", "headstart.data.segmentation:looks_like_segmentation_data",
             "image"),
    TaskSpec("audio", "audio_classification", "headstart.estimators.audio:AudioClassifier",
             "headstart.models.encoder_net:build_encoder_net", "headstart.data.audio:looks_like_audio_data", "audio"),
    TaskSpec("text", "text_classification", "headstart.estimators.text:TextClassifier",
             "headstart.models.encoder_net:build_encoder_net", "headstart.data.text:looks_like_text_data", "text"),
    TaskSpec("image", "image_classification", "headstart.estimators.image:ImageClassifier",
             "headstart.models.heads:rebuild_image_classifier", None, "image"),
)
TASKS = ("image", "text", "audio", "segmentation", "detection")
CLASSIFICATION_TASKS = tuple(t.name for t in TASK_TABLE if t.is_classification)
DENSE_TASKS = tuple(t.name for t in TASK_TABLE if not t.is_classification)
_BY_NAME = {t.name: t for t in TASK_TABLE}
_BY_TAG = {t.bundle_tag: t for t in TASK_TABLE}


def resolve(reference: str) -> Any:
    """The object a ``"module:attribute"`` reference names (imported now)."""
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)


def get_task(name: str) -> TaskSpec:
    """The task called ``name``.

    Raises:
        ParameterError: not one of :data:`TASKS`.
    """
    if name not in _BY_NAME:
        raise ParameterError(f"The task must be one of {TASKS}. Got {name!r}.",
                             fix="Use --task image, text, audio, segmentation or detection.")
    return _BY_NAME[name]


def task_of_bundle(config: dict[str, Any]) -> TaskSpec:
    """The task of a saved model from its ``config.json`` (image classification for older bundles without a tag)."""
    return _BY_TAG.get(str(config.get("task", "image_classification")), _BY_NAME["image"])


def detect_task(data: str | os.PathLike[str]) -> str:
    """The task of a dataset path, from what its files are.

    A Pascal VOC folder or COCO JSON is detection; image/mask folder pairs (or a table of pairs) are
    segmentation; a table whose path column points to audio files, or a folder of mostly audio files, is audio;
    a table with a text column, a folder of .txt class folders or of split tables is text; anything else is an
    image folder.

    Raises:
        DataError: the path does not exist, or is a file that is none of these.
    """
    path = Path(data).expanduser()
    if not path.exists():
        raise DataError(f"The data {path} does not exist.", fix="Check the path.")
    for task in TASK_TABLE:
        if task.sniffer is not None and resolve(task.sniffer)(path):
            return task.name
    if path.is_file():
        from headstart.data.text import TEXT_TABLE_SUFFIXES

        kind = "a table without a recognisable text column" if path.suffix.lower() in TEXT_TABLE_SUFFIXES else \
            f"a {path.suffix or 'extension-less'} file"
        raise DataError(f"Cannot tell what {path} holds: it is {kind}.",
                        fix="Pass --task text with --text-col/--label-col, --task audio with --path-col, or an"
                            " image folder.")
    return "image"


def estimator_class(task: str) -> type:
    """The estimator class for ``task`` (one of :data:`TASKS`)."""
    return resolve(get_task(task).estimator)


def load_model(path: str | os.PathLike[str]) -> Any:
    """Load any saved headstart model folder with the estimator class of its task.

    Raises:
        BundleError: not a headstart model folder.
    """
    config_file = Path(path).expanduser() / "config.json"
    task = _BY_NAME["image"]
    if config_file.is_file():
        try:
            task = task_of_bundle(read_json(config_file))
        except (ValueError, AttributeError):
            pass  # the image loader reports the damaged config with its fix
    return resolve(task.estimator).load(path)
