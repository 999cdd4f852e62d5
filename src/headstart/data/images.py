"""Image folders -> labelled samples.

A dataset is a folder with one subfolder per class, either already split (``train/`` plus ``val/``,
``valid/`` or ``validation/``, optionally ``test/``) or unsplit, in which case a stratified split with a fixed
seed is made. Every file is decoded once while scanning (in parallel, at reduced JPEG scale), so files that
cannot be used are skipped, counted and listed before any training starts, never crashing a run later.
"""

from __future__ import annotations

import io
import os
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from headstart.errors import DataError, ParameterError

__all__ = [
    "IMAGE_EXTENSIONS",
    "IMAGE_FORMATS",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "SkippedFile",
    "ImageSamples",
    "DatasetSplits",
    "ImageDecodeError",
    "load_image_bytes",
    "load_image",
    "scan_image_folder",
    "scan_unlabelled_images",
    "list_image_files",
    "load_image_dataset",
    "stratified_split",
]

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".jfif"}
)
# The Pillow formats headstart decodes (every other plugin is never tried: EPS would run Ghostscript, for one);
# JPEG includes MPO, the multi-picture JPEG many phone cameras write (Pillow opens it through the JPEG plugin).
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
# Pillow's own default limit; anything larger is refused as a possible decompression bomb.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
_SYSTEM_NAMES = frozenset({"__MACOSX", "__pycache__", "Thumbs.db", "desktop.ini", "@eaDir"})
_VAL_NAMES = ("val", "valid", "validation")



class ImageDecodeError(DataError):
    """One file could not be used as an image; ``reason`` says why in a few words."""

    def __init__(self, path: Path, reason: str, *, too_large: bool = False) -> None:
        self.path = Path(path)
        self.reason = reason
        self.too_large = too_large  # over the pixel limit (a service answers 413, not 422)
        super().__init__(
            f"Cannot use {path} as an image: {reason}.",
            fix="Remove or replace the file; headstart skips such files when scanning a folder.",
        )


@dataclass(frozen=True)
class SkippedFile:
    """A file left out of the dataset, and why."""

    path: str
    reason: str


class LabelledSamples:
    """What every modality's labelled samples share: class indices in ``labels`` naming ``classes``."""

    labels: list[int]
    classes: list[str]

    def class_counts(self) -> dict[str, int]:
        """Examples per class, for every class in ``classes`` (zero included), in that order."""
        counts = Counter(self.labels)
        return {name: counts.get(index, 0) for index, name in enumerate(self.classes)}


@dataclass
class ImageSamples(LabelledSamples):
    """Labelled image files: ``labels[i]`` indexes ``classes`` for ``paths[i]``."""

    paths: list[Path]
    labels: list[int]
    classes: list[str]
    root: Path | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: Iterable[int]) -> "ImageSamples":
        chosen = list(indices)
        return ImageSamples(
            [self.paths[i] for i in chosen], [self.labels[i] for i in chosen], list(self.classes), self.root
        )


@dataclass
class Splits:
    """Train / validation / optional test samples of any modality, every input that was skipped, how the split was
    made, and notes. The data of every task reads into one of these (``summary()`` is the run's ``data.json``)."""

    train: Any
    val: Any
    test: Any = None
    skipped: list[SkippedFile] = field(default_factory=list)
    split: str = "given"
    notes: list[str] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return self.train.classes

    def summary(self) -> dict[str, object]:
        """A JSON-serialisable account: classes, counts per class and split, the split, skipped inputs, notes."""
        parts = {"train": self.train, "val": self.val, "test": self.test}
        return {
            "classes": list(self.classes), "split": self.split,
            **{name: None if part is None else part.class_counts() for name, part in parts.items()},
            **self._summary_extra(parts),
            "skipped_count": len(self.skipped),
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
            "notes": list(self.notes),
        }

    def _summary_extra(self, parts: dict[str, Any]) -> dict[str, object]:
        """What a modality adds to the summary (durations, groups, sizes)."""
        return {}


@dataclass
class DatasetSplits(Splits):
    """Image class folders split into train / validation / optional test."""

    train: ImageSamples
    val: ImageSamples
    test: ImageSamples | None = None


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name in _SYSTEM_NAMES


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB: high bit depths are scaled, transparency is composited on white."""
    mode = image.mode
    if mode in {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}:
        array = np.asarray(image, dtype=np.float64)
        if mode == "F":
            low, high = float(array.min()), float(array.max())
            array = (array - low) / (high - low or 1.0) * 255.0
        elif array.max() > 255:
            array = array / 257.0  # 16-bit range to 8-bit
        return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), mode="L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in {"RGBA", "LA", "PA", "RGBa", "La"}:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "RGB":
        return image
    return image.convert("RGB")


def load_image(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
               draft_size: int | None = None) -> Image.Image:
    """Decode one file into an 8-bit RGB image, upright according to its EXIF orientation.

    Args:
        path: the image file.
        max_pixels: images with more pixels are refused as possible decompression bombs.
        draft_size: when set, JPEGs may be decoded at a reduced scale (1/2, 1/4 or 1/8) whose sides stay >= this
            (evaluation transforms, :func:`headstart.data.transforms.draft_size`; fast file checks).

    Raises:
        ImageDecodeError: the file is empty, not an image, truncated, too large, or otherwise unreadable.
    """
    path = Path(path)
    try:
        empty = path.stat().st_size == 0
    except OSError as error:
        raise ImageDecodeError(path, str(error) or type(error).__name__) from None
    if empty:
        raise ImageDecodeError(path, "the file is empty (0 bytes)")
    return _decode_image(path, name=path, max_pixels=max_pixels, draft_size=draft_size)


def load_image_bytes(data: bytes, *, name: str = "upload", max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                     draft_size: int | None = None) -> Image.Image:
    """Decode an image held in memory (an upload) exactly like :func:`load_image` decodes a file.

    Raises:
        ImageDecodeError: the bytes are empty, not an image, truncated or too large (the message names ``name``).
    """
    if not data:
        raise ImageDecodeError(name, "it is empty (0 bytes)")
    return _decode_image(io.BytesIO(data), name=name, max_pixels=max_pixels, draft_size=draft_size)


def _decode_image(source: Path | io.BytesIO, *, name: str | Path, max_pixels: int, draft_size: int | None
                  ) -> Image.Image:
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise DataError("Pillow's ImageFile.LOAD_TRUNCATED_IMAGES is True in this process, so truncated images"
                        " would be padded silently instead of skipped.",
                        fix="Set PIL.ImageFile.LOAD_TRUNCATED_IMAGES = False before using headstart.")
    if max_pixels > (Image.MAX_IMAGE_PIXELS or 0):
        # Pillow refuses images above its own global limit; headstart's max_pixels check below is the one
        # that applies, so a larger limit asked for here must lift Pillow's.
        Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source, formats=IMAGE_FORMATS) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageDecodeError(
                        name, f"{width}x{height} pixels exceeds the limit of {max_pixels} (possible decompression bomb)",
                        too_large=True)
                if draft_size is not None and image.format == "JPEG":
                    image.draft(image.mode, (draft_size, draft_size))
                image.load()
                rgb = _to_rgb(ImageOps.exif_transpose(image) or image)
                rgb.load()
                return rgb
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError(name, f"not an image format headstart reads ({', '.join(IMAGE_FORMATS)})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageDecodeError(name, f"possible decompression bomb ({error})", too_large=True) from None
    except Exception as error:  # noqa: BLE001 - Pillow plugins raise many types on hostile bytes; all mean "unusable"
        message = str(error) or type(error).__name__
        if "truncated" in message:
            message = f"the file is truncated ({message})"
        raise ImageDecodeError(name, message[:300]) from None


def _check_file(path: Path, max_pixels: int) -> str | None:
    try:
        load_image(path, max_pixels=max_pixels, draft_size=32)
    except ImageDecodeError as error:
        return error.reason
    return None


def list_image_files(folder: Path) -> tuple[list[Path], list[SkippedFile]]:
    """Every non-hidden file under ``folder`` (recursively, sorted), split into image-like and skipped."""
    images: list[Path] = []
    skipped: list[SkippedFile] = []
    for directory, subdirectories, files in os.walk(folder):
        subdirectories[:] = sorted(d for d in subdirectories if not _is_hidden(d))
        for name in sorted(files):
            if _is_hidden(name):
                continue
            file = Path(directory) / name
            if file.suffix.lower() in IMAGE_EXTENSIONS:
                images.append(file)
            else:
                skipped.append(SkippedFile(str(file), f"extension {file.suffix or '(none)'!r} is not an image type"))
    return images, skipped


def scan_image_folder(
    root: str | os.PathLike[str],
    *,
    classes: Sequence[str] | None = None,
    check_images: bool = True,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    role: str = "data",
    require_all_classes: bool = True,
) -> tuple[ImageSamples, list[SkippedFile]]:
    """Read a folder with one subfolder per class.

    Args:
        root: the folder.
        classes: the expected class names (for a validation or test folder). Differences are an error.
        require_all_classes: with ``classes``, whether every class must be present (False: a subset is fine,
            as when evaluating a model on some of its classes).
        check_images: decode every file once and skip those that cannot be used.
        max_pixels: see :func:`load_image`.
        role: a word for messages ("train", "val", "test").

    Returns:
        The usable samples and the skipped files.

    Raises:
        DataError: the folder is missing, has fewer than two classes, a class without usable image, or
            classes that differ from ``classes``.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(
            f"The {role} folder {root} does not exist or is not a folder.",
            fix="Pass a folder that holds one subfolder of images per class.",
        )
    found = sorted(entry.name for entry in root.iterdir() if entry.is_dir() and not _is_hidden(entry.name))
    if classes is not None and (set(found) - set(classes) or (require_all_classes and set(found) != set(classes))):
        missing, extra = sorted(set(classes) - set(found)), sorted(set(found) - set(classes))
        raise DataError(
            f"The {role} folder {root} has different classes from the training data: "
            + (f"missing {missing}" if missing else "")
            + ("; " if missing and extra else "")
            + (f"not in training data {extra}" if extra else "")
            + f". Expected {sorted(classes)}.",
            fix="Give every split the same class subfolders (rename or add folders so the names match).",
        )
    class_names = list(classes) if classes is not None else found
    if classes is None and len(class_names) < 2:
        loose = [p.name for p in root.iterdir() if p.is_file() and not _is_hidden(p.name)][:3]
        raise DataError(
            f"The {role} folder {root} must hold one subfolder per class, at least two classes. Found "
            + (f"one class folder {class_names}" if class_names else "no class folders")
            + (f" and loose files such as {loose}" if loose else "")
            + ".",
            fix="Arrange images as ROOT/<class name>/<image>, with two or more class folders.",
        )
    skipped: list[SkippedFile] = []
    candidates: list[tuple[Path, int]] = []
    for index, name in enumerate(class_names):
        if not (root / name).is_dir():
            continue  # a class absent from a subset evaluation folder
        files, not_images = list_image_files(root / name)
        skipped.extend(not_images)
        candidates.extend((file, index) for file in files)
    if check_images and candidates:
        with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
            reasons = list(pool.map(lambda item: _check_file(item[0], max_pixels), candidates))
    else:
        reasons = [None] * len(candidates)
    paths: list[Path] = []
    labels: list[int] = []
    for (file, label), reason in zip(candidates, reasons):
        if reason is None:
            paths.append(file)
            labels.append(label)
        else:
            skipped.append(SkippedFile(str(file), reason))
    samples = ImageSamples(paths, labels, class_names, root)
    empty = [name for name, count in samples.class_counts().items() if count == 0 and (root / name).is_dir()]
    if empty:
        raise DataError(
            f"The {role} folder {root} has class folders with no usable image: {empty}"
            + (f" ({len(skipped)} files were skipped as unreadable)" if skipped else "")
            + ".",
            fix="Add images to those folders or remove the folders.",
        )
    return samples, skipped


def scan_unlabelled_images(root: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                           role: str = "data") -> tuple[list[Path], list[SkippedFile]]:
    """Every usable image under ``root`` (recursively, class folders or not), each decoded once; files that are not
    images or cannot be decoded are returned as skipped.

    Raises:
        DataError: ``root`` is not a folder.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"The {role} folder {root} does not exist or is not a folder.",
                        fix="Pass a folder of images (in any subfolders).")
    files, skipped = list_image_files(root)
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        reasons = list(pool.map(lambda file: _check_file(file, max_pixels), files))
    skipped = skipped + [SkippedFile(str(f), reason) for f, reason in zip(files, reasons) if reason is not None]
    return [f for f, reason in zip(files, reasons) if reason is None], skipped


def stratified_split(
    samples: ImageSamples, *, val_fraction: float, seed: int
) -> tuple[ImageSamples, ImageSamples]:
    """Split samples into train and validation, keeping each class's proportion, reproducibly.

    Every class keeps at least one training sample and gets at least one validation sample when it has two
    or more.

    Raises:
        ParameterError: ``val_fraction`` is not in (0, 1).
    """
    if not 0.0 < val_fraction < 1.0:
        raise ParameterError(f"The 'val_fraction' parameter must be between 0 and 1 (exclusive). Got {val_fraction!r}.",
                             fix="Pass --val-fraction 0.2, for example.")
    rng = np.random.default_rng(seed)
    labels = np.asarray(samples.labels)
    train_indices: list[int] = []
    val_indices: list[int] = []
    for label in range(len(samples.classes)):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        count = len(members)
        n_val = int(round(count * val_fraction))
        n_val = min(max(n_val, 1 if count >= 2 else 0), count - 1)
        val_indices.extend(members[:n_val].tolist())
        train_indices.extend(members[n_val:].tolist())
    return samples.subset(sorted(train_indices)), samples.subset(sorted(val_indices))


def _find_split_folders(root: Path) -> dict[str, Path]:
    names = {entry.name.lower(): entry for entry in root.iterdir() if entry.is_dir()} if root.is_dir() else {}
    found: dict[str, Path] = {}
    # A split folder holds class folders; a class that happens to be called "train" holds images.
    if "train" in names and any(entry.is_dir() and not _is_hidden(entry.name) for entry in names["train"].iterdir()):
        found["train"] = names["train"]
        for candidate in _VAL_NAMES:
            if candidate in names:
                found["val"] = names[candidate]
                break
        if "test" in names:
            found["test"] = names["test"]
    return found


def load_image_dataset(
    path: str | os.PathLike[str],
    *,
    val: str | os.PathLike[str] | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    check_images: bool = True,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> DatasetSplits:
    """Load a labelled image dataset and its validation data, before any training starts.

    ``path`` is either a class-folder root or a root with ``train/`` and ``val/``/``valid/``/``validation/``
    (and optionally ``test/``). When no validation data exists, ``val_fraction`` of ``path`` is held out
    with a stratified split seeded by ``seed``.

    Raises:
        DataError: see :func:`scan_image_folder`; also when a split has too few images.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"The data folder {root} does not exist.", fix="Check the path passed to train/fit.")
    splits = _find_split_folders(root)
    train_root = splits.get("train", root)
    train, skipped = scan_image_folder(train_root, check_images=check_images, max_pixels=max_pixels, role="train")
    test = None
    if "test" in splits:
        test, test_skipped = scan_image_folder(
            splits["test"], classes=train.classes, check_images=check_images, max_pixels=max_pixels, role="test"
        )
        skipped += test_skipped
    val_root = Path(val).expanduser() if val is not None else splits.get("val")
    if val_root is not None:
        val_samples, val_skipped = scan_image_folder(
            val_root, classes=train.classes, check_images=check_images, max_pixels=max_pixels, role="val"
        )
        skipped += val_skipped
        split = f"given: train={train_root} val={val_root}"
    else:
        small = [name for name, count in train.class_counts().items() if count < 2]
        if small:
            raise DataError(
                f"Cannot hold out validation images: classes {small} in {train_root} have fewer than 2 usable images.",
                fix="Add images to those classes, or pass separate validation data with --val.",
            )
        train, val_samples = stratified_split(train, val_fraction=val_fraction, seed=seed)
        split = f"stratified: {val_fraction:.0%} of {train_root} held out for validation (seed {seed})"
    return DatasetSplits(train=train, val=val_samples, test=test, skipped=skipped, split=split)
