"""Which task a dataset or a saved model is (image, text or audio classification, segmentation, detection), and
the estimator that handles it.

>>> from pathlib import Path
>>> detect_task(Path(__file__).parents[2] / "examples" / "hymenoptera_sample")
'image'
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from headstart.errors import DataError, ParameterError
from headstart.storage import read_json

__all__ = ["TASKS", "detect_task", "estimator_class", "load_model"]

TASKS = ("image", "text", "audio", "segmentation", "detection")
_BUNDLE_TASKS = {"image_classification": "image", "text_classification": "text", "audio_classification": "audio",
                 "segmentation": "segmentation", "detection": "detection"}


def detect_task(data: str | os.PathLike[str]) -> str:
    """The task of a dataset path, from what its files are.

    A table whose path column points to audio files, or a folder of mostly audio files, is audio; a table with a
    text column, a folder of .txt class folders or of split tables is text; a Pascal VOC folder or COCO JSON is
    detection; image/mask folder pairs (or a table of pairs) are segmentation; anything else is an image folder.

    Raises:
        DataError: the path does not exist, or is a file that is none of these.
    """
    from headstart.data.audio import looks_like_audio_data
    from headstart.data.detection import looks_like_detection_data
    from headstart.data.segmentation import looks_like_segmentation_data
    from headstart.data.text import TEXT_TABLE_SUFFIXES, looks_like_text_data

    path = Path(data).expanduser()
    if not path.exists():
        raise DataError(f"The data {path} does not exist.", fix="Check the path.")
    if looks_like_detection_data(path):
        return "detection"
    if looks_like_segmentation_data(path):
        return "segmentation"
    if looks_like_audio_data(path):
        return "audio"
    if looks_like_text_data(path):
        return "text"
    if path.is_file():
        kind = "a table without a recognisable text column" if path.suffix.lower() in TEXT_TABLE_SUFFIXES else \
            f"a {path.suffix or 'extension-less'} file"
        raise DataError(f"Cannot tell what {path} holds: it is {kind}.",
                        fix="Pass --task text with --text-col/--label-col, --task audio with --path-col, or an"
                            " image folder.")
    return "image"


def estimator_class(task: str) -> type:
    """The estimator class for ``task`` (one of :data:`TASKS`)."""
    if task == "image":
        from headstart.estimators.image import ImageClassifier

        return ImageClassifier
    if task == "text":
        from headstart.estimators.text import TextClassifier

        return TextClassifier
    if task == "audio":
        from headstart.estimators.audio import AudioClassifier

        return AudioClassifier
    if task == "segmentation":
        from headstart.estimators.segmenter import Segmenter

        return Segmenter
    if task == "detection":
        from headstart.estimators.detector import Detector

        return Detector
    raise ParameterError(f"The task must be one of {TASKS}. Got {task!r}.",
                         fix="Use --task image, text, audio, segmentation or detection.")


def load_model(path: str | os.PathLike[str]) -> Any:
    """Load any saved headstart model folder with the estimator class of its task.

    Raises:
        BundleError: not a headstart model folder.
    """
    config_file = Path(path).expanduser() / "config.json"
    task = "image"
    if config_file.is_file():
        try:
            task = _BUNDLE_TASKS.get(read_json(config_file).get("task", "image_classification"), "image")
        except (ValueError, AttributeError):
            task = "image"  # the image loader reports the damaged config with its fix
    return estimator_class(task).load(path)
