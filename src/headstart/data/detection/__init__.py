"""Object-detection datasets -> images with boxes; splits; the training transform and torch Dataset.

Two layouts are read:

* **Pascal VOC**: a folder with ``Annotations/*.xml`` and ``JPEGImages/``, optionally split lists in
  ``ImageSets/Main/{train,val,trainval,test}.txt``.
* **COCO**: one JSON file with ``images``, ``annotations`` and ``categories``, or a folder holding such
  files (``annotations/instances_train2017.json`` + ``instances_val2017.json``, or ``train/`` ``valid/``
  ``test/`` folders each with a JSON beside its images), the split read from each file's name (or folder).

Boxes are ``x1, y1, x2, y2`` in pixels of the image as headstart decodes it (EXIF orientation applied: for
almost every dataset, the image as stored). Everything wrong with an annotation is decided while reading,
before any training starts, and reported, never silently kept or silently lost:

* an image file that is missing or cannot be decoded: the image is skipped (:class:`SkippedFile`);
* a box with zero or negative area, entirely outside the image, of a class outside ``classes``, or (COCO)
  marked ``iscrowd``: the box is dropped (:class:`DroppedBox`);
* a box partly outside the image: clipped to it, and an :class:`Adjustment` is attached to the sample;
* an annotated image size that differs from the real one: the real size is used, and an
  :class:`Adjustment` says so.

Images without any box are kept (they teach the detector what background looks like) and counted in
:meth:`DetectionSplits.summary`.

One idea per file:

- :mod:`~headstart.data.detection.samples` - the samples, splits and reports (:class:`DroppedBox`,
  :class:`Adjustment`) and the fixed reasons they carry;
- :mod:`~headstart.data.detection.annotations` - recognising the layouts and reading VOC XML / COCO JSON into
  one record per image, before any image is opened;
- :mod:`~headstart.data.detection.loading` - records -> samples (every image opened once, every box checked),
  splits: :func:`load_detection_dataset`, :func:`read_detection_annotations`;
- :mod:`~headstart.data.detection.transforms` - :class:`DetectionTransform`, :class:`DetectionDataset` and
  :func:`collate_detection`, the parts that run during training.
"""

from headstart.data.detection.annotations import looks_like_detection_data
from headstart.data.detection.loading import (
    load_detection_dataset,
    read_detection_annotations,
)
from headstart.data.detection.samples import (
    CLIPPED,
    REASON_AREA,
    REASON_CATEGORY,
    REASON_CLASS,
    REASON_COORDINATES,
    REASON_CROWD,
    REASON_IMAGE_ID,
    REASON_NO_NAME,
    REASON_OUTSIDE,
    SIZE_DIFFERS,
    Adjustment,
    DetectionSample,
    DetectionSamples,
    DetectionSplits,
    DroppedBox,
)

# Not in __all__ (never was), but importable from here as before:
from headstart.data.detection.samples import Box as Box
from headstart.data.detection.transforms import (
    DetectionDataset,
    DetectionTransform,
    collate_detection,
)

__all__ = [
    "DetectionSample",
    "DetectionSamples",
    "DroppedBox",
    "Adjustment",
    "DetectionSplits",
    "looks_like_detection_data",
    "load_detection_dataset",
    "read_detection_annotations",
    "DetectionTransform",
    "DetectionDataset",
    "collate_detection",
    "REASON_COORDINATES",
    "REASON_NO_NAME",
    "REASON_AREA",
    "REASON_OUTSIDE",
    "REASON_CLASS",
    "REASON_CROWD",
    "REASON_CATEGORY",
    "REASON_IMAGE_ID",
    "CLIPPED",
    "SIZE_DIFFERS",
]
