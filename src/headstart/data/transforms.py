"""Train and eval transforms derived from a backbone's preprocessing config, and the torch Dataset."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T

from headstart.data.images import DEFAULT_MAX_IMAGE_PIXELS, ImageDecodeError, load_image
from headstart.data.preprocessing import Preprocessing

__all__ = ["build_transform", "draft_size", "DECODING", "ImageDataset", "EpochSeededDataset"]

_INTERPOLATION = {
    "bicubic": T.InterpolationMode.BICUBIC,
    "bilinear": T.InterpolationMode.BILINEAR,
    "nearest": T.InterpolationMode.NEAREST,
}

# fastai's default for small-data fine-tuning: crops keep at least 35% of the image area, so the object of
# a photo usually stays in view (timm's ImageNet default of 8% is tuned for 1.2M images, not 200).
TRAIN_CROP_SCALE = (0.35, 1.0)


def build_transform(preprocessing: Preprocessing, *, train: bool, flip: bool = False, as_uint8: bool = False
                    ) -> T.Compose:
    """The transform for training (random resized crop + horizontal flip) or evaluation (resize + centre crop;
    ``flip`` mirrors it, the second view cached for frozen-feature training).

    ``as_uint8`` ends with the uint8 pixels (3, H, W) instead of the normalised float tensor: the feature
    runtimes normalise inside the model, which spares the decoding processes that work and sends a quarter of
    the bytes between processes.

    >>> from headstart.models import get_backbone_spec
    >>> build_transform(get_backbone_spec("efficientnet_lite0").preprocessing(), train=False).transforms[1]
    CenterCrop(size=(224, 224))
    """
    size = preprocessing.input_size
    interpolation = _INTERPOLATION.get(preprocessing.interpolation, T.InterpolationMode.BICUBIC)
    normalize = [T.PILToTensor()] if as_uint8 else [T.ToTensor(), T.Normalize(preprocessing.mean, preprocessing.std)]
    if train:
        return T.Compose(
            [T.RandomResizedCrop(size, scale=TRAIN_CROP_SCALE, interpolation=interpolation),
             T.RandomHorizontalFlip(), *normalize]
        )
    resize = int(round(size / preprocessing.crop_pct))
    mirror = [T.RandomHorizontalFlip(p=1.0)] if flip else []
    return T.Compose([T.Resize(resize, interpolation=interpolation), T.CenterCrop(size), *mirror, *normalize])


# how evaluation images are decoded (part of the feature-store key): JPEG draft decoding to the resize target
DECODING = "jpeg-draft"


def draft_size(transform: T.Compose) -> int | None:
    """The side a JPEG may be decoded down to for ``transform``: the shorter-side target of an evaluation
    transform's first ``Resize`` (None for training transforms, whose random crops zoom in).

    JPEG draft decoding (``Image.draft``) reduces the image by 2, 4 or 8 inside the decoder while both sides stay
    >= that target, so a 2,000-pixel photo is not decoded whole to be shrunk to 256 pixels at once; images less
    than twice the target decode as before. Every evaluation path decodes this way (training views, validation,
    ``predict``, the service), so features are computed alike everywhere.

    >>> from headstart.models import get_backbone_spec
    >>> preprocessing = get_backbone_spec("efficientnet_lite0").preprocessing()
    >>> draft_size(build_transform(preprocessing, train=False)), draft_size(build_transform(preprocessing, train=True))
    (256, None)
    """
    first = transform.transforms[0] if transform.transforms else None
    if not isinstance(first, T.Resize):
        return None
    size = first.size
    size = size if isinstance(size, int) else size[0] if len(size) == 1 else min(size)
    return int(size)


class ImageDataset(Dataset):
    """Files (and optional labels) -> (tensor, label) pairs; label is -1 when unknown.

    A file that cannot be decoded yields a zero image with label ``-(index + 2)`` instead of raising inside a
    DataLoader worker (where the error would lose its type and message); :meth:`raise_for_failures` in the
    main process turns it back into an :class:`ImageDecodeError` naming the file. JPEGs much larger than an
    evaluation transform needs are decoded at a reduced scale (:func:`draft_size`).
    """

    def __init__(self, paths: Sequence[Path], labels: Sequence[int] | None, transform: T.Compose, *,
                 max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> None:
        self.paths = list(paths)
        self.labels = list(labels) if labels is not None else [-1] * len(self.paths)
        self.transform = transform
        self.max_pixels = max_pixels
        self.draft_size = draft_size(transform)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        try:
            image = load_image(self.paths[index], max_pixels=self.max_pixels, draft_size=self.draft_size)
        except ImageDecodeError:
            placeholder = self.transform(Image.new("RGB", (8, 8)))  # right shape for collation
            return torch.zeros_like(placeholder), -(index + 2)
        return self.transform(image), self.labels[index]

    def raise_for_failures(self, labels: torch.Tensor) -> None:
        """Raise the decode error of the first failed item in a batch's ``labels``, if any."""
        failed = (labels <= -2).nonzero()
        if len(failed):
            path = self.paths[-int(labels[failed[0, 0]]) - 2]
            load_image(path, max_pixels=self.max_pixels)  # raises ImageDecodeError with the reason
            raise ImageDecodeError(path, "it could not be decoded while loading a batch")


class EpochSeededDataset(Dataset):
    """A dataset whose item ``i`` in epoch ``e`` draws its augmentation from ``rng(seed, e, i)``.

    The draws do not depend on the number of DataLoader workers or on the order items are asked for, so a run
    resumed at epoch ``e`` replays what the uninterrupted run would have drawn. Call :meth:`set_epoch` before each
    epoch (with non-persistent workers, which copy the dataset at the start of each epoch).
    """

    def __init__(self, samples: Sequence[object], *, seed: int = 0) -> None:
        self.samples = samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the random draws of ``epoch`` from now on."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def item_rng(self, index: int) -> "np.random.Generator":
        return np.random.default_rng([self.seed, self.epoch, index])
