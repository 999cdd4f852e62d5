"""The detection training transform, the torch Dataset and its collate function: the parts that run per item.

Separate from loading: only this file needs torch, and it runs in DataLoader workers during training.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from headstart.data.detection.samples import DetectionSample, DetectionSamples
from headstart.data.images import load_image
from headstart.data.transforms import EpochSeededDataset
from headstart.errors import DataError, ParameterError

__all__ = ["DetectionTransform", "DetectionDataset", "collate_detection"]


class DetectionTransform:
    """Image + boxes -> tensors, with a random horizontal flip and rescale for training.

    The image comes out as float (3, H, W) in [0, 1], not normalised: torchvision's detectors normalise (and
    resize) inside the model. The geometry is a pure function of the parameters :meth:`draw` returns, applied
    by :meth:`apply`, so a test can check boxes against pixels for any draw.

    Args:
        train: random flip and rescale when True; the image unchanged when False.
        hflip: whether training flips (p=0.5).
        scale: range of the training rescale factor (both sides of the image, boxes alike).

    >>> import numpy as np
    >>> from PIL import Image
    >>> transform = DetectionTransform(train=True)
    >>> image, boxes, labels = transform.apply(Image.new("RGB", (100, 50)), np.array([[10, 5, 30, 25]]),
    ...                                        np.array([1]), flip=True, factor=2.0)
    >>> tuple(image.shape), boxes.tolist()
    ((3, 100, 200), [[140.0, 10.0, 180.0, 50.0]])
    """

    def __init__(self, *, train: bool, hflip: bool = True, scale: tuple[float, float] = (0.8, 1.2)) -> None:
        low, high = (float(value) for value in scale)
        if not 0.0 < low <= high:
            raise ParameterError(f"The 'scale' parameter of DetectionTransform must be (low, high) with "
                                 f"0 < low <= high. Got {scale!r}.", fix="Pass scale=(0.8, 1.2), for example.")
        self.train = train
        self.hflip = hflip
        self.scale = (low, high)

    def draw(self, rng: np.random.Generator) -> tuple[bool, float]:
        """The random parameters of one call: (flip, factor). Eval: (False, 1.0), drawing nothing."""
        if not self.train:
            return False, 1.0
        flip = bool(rng.random() < 0.5)  # drawn even when hflip is off, so the factor stream stays the same
        factor = float(rng.uniform(*self.scale)) if self.scale[0] < self.scale[1] else self.scale[0]
        return flip and self.hflip, factor

    def apply(self, image: Image.Image, boxes: np.ndarray, labels: np.ndarray, *, flip: bool, factor: float
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rescale by ``factor`` then mirror when ``flip``; boxes follow the pixels and stay inside the image."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
        width, height = image.size
        if factor != 1.0:
            new_width, new_height = max(1, round(width * factor)), max(1, round(height * factor))
            image = image.resize((new_width, new_height), Image.Resampling.BILINEAR)
            # The exact ratio of the rounded size, so box edges land where the resized pixels are.
            boxes *= np.array([new_width / width, new_height / height] * 2)
            width, height = new_width, new_height
        if flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            boxes[:, [0, 2]] = width - boxes[:, [2, 0]]
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
        pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy())
        return (pixels.permute(2, 0, 1).float().div_(255.0), torch.from_numpy(boxes.astype(np.float32)),
                torch.from_numpy(np.asarray(labels, dtype=np.int64).reshape(-1).copy()))

    def __call__(self, image: Image.Image, boxes: np.ndarray, labels: np.ndarray, rng: np.random.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        flip, factor = self.draw(rng)
        return self.apply(image, boxes, labels, flip=flip, factor=factor)


class DetectionDataset(EpochSeededDataset):
    """Samples -> ``(image tensor, {"boxes": (N, 4) float32, "labels": (N,) int64})`` for torchvision detectors.

    Labels stay 0-based class indices: torchvision's detectors reserve label 0 for the background, so the
    model code adds 1 before its loss and subtracts it from predictions.

    Each item's randomness comes from ``(seed, epoch, index)``, so a run is reproducible whatever the number
    of DataLoader workers; call :meth:`set_epoch` before each epoch (with non-persistent workers, which copy
    the dataset at the start of each epoch).
    """

    def __init__(self, samples: DetectionSamples | Sequence[DetectionSample], transform: DetectionTransform, *,
                 seed: int = 0) -> None:
        super().__init__(samples, seed=seed)
        self.transform = transform

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        sample = self.samples[index]
        image = load_image(sample.image)
        if image.size != (sample.width, sample.height):
            raise DataError(f"{sample.image} is {image.size[0]}x{image.size[1]} pixels, but it was "
                            f"{sample.width}x{sample.height} when the dataset was read: the file changed.",
                            fix="Load the dataset again.")
        rng = self.item_rng(index)
        pixels, boxes, labels = self.transform(image, sample.boxes, sample.labels, rng)
        return pixels, {"boxes": boxes, "labels": labels}


def collate_detection(batch: Sequence[tuple[torch.Tensor, dict[str, torch.Tensor]]]
                      ) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """A batch of ``DetectionDataset`` items -> (list of images, list of targets): images differ in size."""
    return [image for image, _ in batch], [target for _, target in batch]
