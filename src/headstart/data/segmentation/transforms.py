"""Joint augmentation of an image and its mask, and the torch Dataset that applies it.

Separate from loading: this is the only part that runs during training (per item, in DataLoader workers), and
the only part that needs torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from headstart.data.images import load_image
from headstart.data.segmentation.masks import MaskFormat, read_mask
from headstart.data.segmentation.samples import SegmentationSamples
from headstart.data.transforms import EpochSeededDataset
from headstart.errors import DataError, ParameterError, check_choice

__all__ = ["JointParams", "JointTransform", "SegmentationDataset"]


@dataclass(frozen=True)
class JointParams:
    """One draw of training geometry; :meth:`JointTransform.apply_params` is a pure function of it.

    Attributes:
        resized: (width, height) after the random rescale.
        crop: (left, top) of the ``crop_size`` square in the rescaled image (may lie partly outside: padding),
            or None for no crop.
        hflip, vflip: mirror left-right / top-bottom.
        rotate90: quarter turns counter-clockwise (0 or 1).
    """

    resized: tuple[int, int]
    crop: tuple[int, int] | None
    hflip: bool
    vflip: bool
    rotate90: int


_PIL_FILTERS = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
                "bicubic": Image.Resampling.BICUBIC}


def _crop_or_pad(array: np.ndarray, left: int, top: int, size: int, fill: int) -> np.ndarray:
    """The size x size window at (left, top) of ``array``; outside the array it holds ``fill``."""
    out = np.full((size, size, *array.shape[2:]), fill, dtype=array.dtype)
    height, width = array.shape[:2]
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + size, height), min(left + size, width)
    if y1 > y0 and x1 > x0:
        out[y0 - top:y1 - top, x0 - left:x1 - left] = array[y0:y1, x0:x1]
    return out


class JointTransform:
    """Augment an image and its mask with the same geometry, then normalise the image.

    Training: random rescale by a factor drawn from ``scale``, a random ``crop_size`` square (the image is padded
    with black and the mask with ``ignore_index`` where the square leaves the image), then a left-right flip,
    top-bottom flip and a quarter turn, each with probability 0.5 when enabled. The mask is always resized with
    nearest neighbour. Evaluation: the full image at its own size.

    Args:
        train: random training geometry (True) or none (False).
        crop_size: side of the training crop; None keeps the whole rescaled image.
        scale: range of the random rescale factor.
        hflip, vflip, rotate90: which random flips / quarter turns to draw.
        mean, std: per-channel normalisation of pixels in [0, 1] (the backbone's).
        ignore_index: the mask label of padded pixels.
        interpolation: image resampling: "bilinear", "bicubic" or "nearest".

    >>> t = JointTransform(train=True, crop_size=4, mean=(0.5,) * 3, std=(0.5,) * 3)
    >>> image, mask = t(Image.new("L", (8, 6)), np.zeros((6, 8), dtype=np.int64), np.random.default_rng(0))
    >>> tuple(image.shape), tuple(mask.shape), image.dtype, mask.dtype
    ((3, 4, 4), (4, 4), torch.float32, torch.int64)
    """

    def __init__(self, *, train: bool, crop_size: int | None = None, scale: tuple[float, float] = (0.75, 1.25),
                 hflip: bool = True, vflip: bool = False, rotate90: bool = False, mean: Sequence[float],
                 std: Sequence[float], ignore_index: int = 255, interpolation: str = "bilinear") -> None:
        check_choice("JointTransform", "interpolation", interpolation, tuple(_PIL_FILTERS))
        if crop_size is not None and (isinstance(crop_size, bool) or not isinstance(crop_size, int) or crop_size < 1):
            raise ParameterError(f"The 'crop_size' parameter of JointTransform must be a positive integer or None. "
                                 f"Got {crop_size!r}.", fix="Pass crop_size=512, for example.")
        low, high = (float(v) for v in scale)
        if not 0 < low <= high:
            raise ParameterError(f"The 'scale' parameter of JointTransform must be (low, high) with 0 < low <= high. "
                                 f"Got {scale!r}.", fix="Pass scale=(0.75, 1.25), or (1.0, 1.0) for no rescale.")
        mean_values, std_values = [float(v) for v in mean], [float(v) for v in std]
        if len(mean_values) not in (1, 3) or len(std_values) not in (1, 3) or min(std_values) <= 0:
            raise ParameterError(f"JointTransform needs 1 or 3 mean values and 1 or 3 positive std values. Got mean "
                                 f"{mean!r}, std {std!r}.", fix="Pass the backbone's preprocessing mean and std.")
        self.train = train
        self.crop_size = crop_size
        self.scale = (low, high)
        self.hflip = hflip
        self.vflip = vflip
        self.rotate90 = rotate90
        self.mean = torch.tensor(mean_values * (3 // len(mean_values)), dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std_values * (3 // len(std_values)), dtype=torch.float32).view(3, 1, 1)
        self.ignore_index = ignore_index
        self.interpolation = interpolation

    def sample_params(self, width: int, height: int, rng: np.random.Generator) -> JointParams:
        """Draw the training geometry for an image of ``width`` x ``height``."""
        low, high = self.scale
        factor = float(rng.uniform(low, high)) if high > low else low
        resized = (max(1, round(width * factor)), max(1, round(height * factor)))
        crop = None
        if self.crop_size is not None:
            # The square may start before the image (negative) or end after it: that part is padding, and the
            # image lands anywhere inside a larger square rather than always in its top-left corner.
            spans = [resized[0] - self.crop_size, resized[1] - self.crop_size]
            left, top = (int(rng.integers(min(0, s), max(0, s) + 1)) for s in spans)
            crop = (left, top)
        hflip = bool(self.hflip and rng.random() < 0.5)
        vflip = bool(self.vflip and rng.random() < 0.5)
        rotate90 = int(self.rotate90 and rng.random() < 0.5)
        return JointParams(resized=resized, crop=crop, hflip=hflip, vflip=vflip, rotate90=rotate90)

    def apply_params(self, image: Image.Image, mask: np.ndarray | None, params: JointParams
                     ) -> tuple[np.ndarray, np.ndarray | None]:
        """Apply ``params`` to the image ((H, W, 3) uint8 out) and mask ((H, W) int64 out) alike."""
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        if rgb.size != params.resized:
            rgb = rgb.resize(params.resized, _PIL_FILTERS[self.interpolation])
        pixels = np.asarray(rgb)
        labels = None
        if mask is not None:
            labels = np.asarray(mask)
            if labels.shape != (image.height, image.width):
                raise DataError(f"image {image.width}x{image.height} but mask {labels.shape[1]}x{labels.shape[0]}; "
                                "expected a mask the size of its image.", fix="Save each mask at its image's size.")
            if (labels.shape[1], labels.shape[0]) != params.resized:
                # Through the same Pillow resize as the image, so pixel centres line up exactly.
                resized = Image.fromarray(labels.astype(np.int32)).resize(
                    params.resized, Image.Resampling.NEAREST)
                labels = np.asarray(resized)
            labels = labels.astype(np.int64)
        if params.crop is not None and self.crop_size is not None:
            left, top = params.crop
            pixels = _crop_or_pad(pixels, left, top, self.crop_size, 0)
            if labels is not None:
                labels = _crop_or_pad(labels, left, top, self.crop_size, self.ignore_index)
        for apply, axis in ((params.hflip, 1), (params.vflip, 0)):
            if apply:
                pixels = np.flip(pixels, axis=axis)
                labels = None if labels is None else np.flip(labels, axis=axis)
        if params.rotate90:
            pixels = np.rot90(pixels, k=params.rotate90, axes=(0, 1))
            labels = None if labels is None else np.rot90(labels, k=params.rotate90, axes=(0, 1))
        # Copies: contiguous and writable (Pillow's arrays are read-only), as torch.from_numpy wants.
        return np.array(pixels), None if labels is None else np.array(labels)

    def __call__(self, image: Image.Image, mask: np.ndarray | None, rng: np.random.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return the normalised float (3, H, W) image and the int64 (H, W) mask (None when ``mask`` is None)."""
        if self.train:
            pixels, labels = self.apply_params(image, mask, self.sample_params(image.width, image.height, rng))
        else:
            identity = JointParams(resized=image.size, crop=None, hflip=False, vflip=False, rotate90=0)
            pixels, labels = self.apply_params(image, mask, identity)
        tensor = torch.from_numpy(pixels).permute(2, 0, 1).float().div_(255.0)
        tensor = (tensor - self.mean) / self.std
        return tensor, None if labels is None else torch.from_numpy(labels)


class SegmentationDataset(EpochSeededDataset):
    """Image/mask files -> (image tensor, mask tensor) through a :class:`JointTransform`.

    Each item's random draws come from ``(seed, epoch, index)``: augmentation differs per epoch (call
    :meth:`set_epoch` before each) yet an epoch replays exactly. DataLoader workers see ``set_epoch`` only when
    they are started after it (the default, ``persistent_workers=False``). An unlabelled sample's mask is
    ``ignore_index`` everywhere.

    Args:
        samples: the image and mask files.
        mask_format: how masks are read.
        num_classes: number of classes (for checking mask values).
        transform: called as ``transform(image, mask, rng)``, usually a :class:`JointTransform`.
        seed: base seed of the augmentation.

    Raises:
        ParameterError: the transform pads masks with another ignore index than ``mask_format``'s.
    """

    def __init__(self, samples: SegmentationSamples, mask_format: MaskFormat, num_classes: int,
                 transform: Callable[[Image.Image, np.ndarray | None, np.random.Generator],
                                     tuple[torch.Tensor, torch.Tensor | None]], *, seed: int = 0) -> None:
        padding = getattr(transform, "ignore_index", mask_format.ignore_index)
        if padding != mask_format.ignore_index:
            raise ParameterError(f"The transform pads masks with {padding} but the mask format ignores "
                                 f"{mask_format.ignore_index}; expected the same ignore index in both.",
                                 fix=f"Build the JointTransform with ignore_index={mask_format.ignore_index}.")
        super().__init__(samples, seed=seed)
        self.mask_format = mask_format
        self.num_classes = num_classes
        self.transform = transform

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = self.item_rng(index)
        image = load_image(self.samples.images[index])
        mask_path = self.samples.masks[index]
        mask = None if mask_path is None else read_mask(mask_path, self.mask_format, num_classes=self.num_classes)
        tensor, labels = self.transform(image, mask, rng)
        if labels is None:
            labels = torch.full(tensor.shape[-2:], self.mask_format.ignore_index, dtype=torch.int64)
        return tensor, labels
