"""Data sources -> labelled samples, splits, transforms."""

from headstart.data.images import (
    DEFAULT_MAX_IMAGE_PIXELS,
    IMAGE_EXTENSIONS,
    DatasetSplits,
    ImageDecodeError,
    ImageSamples,
    SkippedFile,
    list_image_files,
    load_image,
    load_image_dataset,
    scan_image_folder,
    stratified_split,
)
from headstart.data.transforms import ImageDataset, build_transform

__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "IMAGE_EXTENSIONS",
    "DatasetSplits",
    "ImageDataset",
    "ImageDecodeError",
    "ImageSamples",
    "SkippedFile",
    "build_transform",
    "list_image_files",
    "load_image",
    "load_image_dataset",
    "scan_image_folder",
    "stratified_split",
]
