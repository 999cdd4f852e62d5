"""Image/mask pairs for semantic segmentation -> checked samples, splits and joint augmentation.

Layouts accepted (folder names are matched case-insensitively):

- ``ROOT/<images>/`` and ``ROOT/<masks>/``, files paired by name (``a.jpg`` with ``a.png``, ``a_mask.png``,
  ``a_label.png`` or ``a_gt.png``; subfolders pair by their relative path);
- ``ROOT/train/<images>/`` + ``ROOT/train/<masks>/``, optionally ``ROOT/val/<images>/`` + ``ROOT/val/<masks>/``
  and ``ROOT/test/<images>/`` with or without ``ROOT/test/<masks>/`` (unlabelled test images are kept);
- a CSV/TSV table with an image column and a mask column, relative paths resolved against the table's folder.

``<images>`` is one of images/image/imgs/img/inputs and ``<masks>`` one of
masks/mask/labels/label/annotations/gt/targets. Every image and mask is decoded once while loading, so pairs
that cannot be used (no partner, unreadable, sizes that differ, values that are not classes) are skipped,
counted and listed before any training starts, like :func:`headstart.data.images.load_image_dataset` does.

One idea per file:

- :mod:`~headstart.data.segmentation.masks` - :class:`MaskFormat` and :func:`read_mask`: mask pixels -> class indices;
- :mod:`~headstart.data.segmentation.layouts` - which folders or table hold a dataset's splits;
- :mod:`~headstart.data.segmentation.pairing` - images paired with their masks by name or by table row;
- :mod:`~headstart.data.segmentation.samples` - :class:`SegmentationSamples` and :class:`SegmentationSplits`;
- :mod:`~headstart.data.segmentation.loading` - :func:`load_segmentation_dataset` and
  :func:`read_segmentation_pairs`: every pair decoded once, unusable ones skipped, the format and classes chosen;
- :mod:`~headstart.data.segmentation.transforms` - :class:`JointTransform` and :class:`SegmentationDataset`.
"""

from headstart.data.segmentation.layouts import (
    IMAGE_FOLDER_NAMES,
    MASK_FOLDER_NAMES,
    MASK_STEM_SUFFIXES,
    looks_like_segmentation_data,
)

# Not in __all__ (never was), but importable from here as before:
from headstart.data.segmentation.layouts import TABLE_EXTENSIONS as TABLE_EXTENSIONS
from headstart.data.segmentation.loading import (
    load_segmentation_dataset,
    read_segmentation_pairs,
)
from headstart.data.segmentation.masks import (
    MASK_KINDS,
    MaskError,
    MaskFormat,
    read_mask,
)
from headstart.data.segmentation.samples import SegmentationSamples, SegmentationSplits
from headstart.data.segmentation.transforms import (
    JointParams,
    JointTransform,
    SegmentationDataset,
)

__all__ = [
    "IMAGE_FOLDER_NAMES",
    "MASK_FOLDER_NAMES",
    "MASK_KINDS",
    "MASK_STEM_SUFFIXES",
    "JointParams",
    "JointTransform",
    "MaskError",
    "MaskFormat",
    "SegmentationDataset",
    "SegmentationSamples",
    "SegmentationSplits",
    "load_segmentation_dataset",
    "looks_like_segmentation_data",
    "read_mask",
    "read_segmentation_pairs",
]
