"""Annotation records -> checked :class:`DetectionSplits`: every image opened once, every box checked, before training.

Separate from the annotation readers: this is where records meet pixels (missing or undecodable images skipped,
boxes dropped or clipped against the real image size) and where the train / validation / test split is made.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from headstart.data.detection.annotations import _read_groups, _Record
from headstart.data.detection.samples import (
    CLIPPED,
    REASON_AREA,
    REASON_CLASS,
    REASON_COORDINATES,
    REASON_NO_NAME,
    REASON_OUTSIDE,
    SIZE_DIFFERS,
    Adjustment,
    Box,
    DetectionSample,
    DetectionSamples,
    DetectionSplits,
    DroppedBox,
)
from headstart.data.images import IMAGE_FORMATS, ImageDecodeError, SkippedFile, load_image
from headstart.errors import DataError, ParameterError

__all__ = ["load_detection_dataset", "read_detection_annotations"]


def _inspect_image(path: Path) -> tuple[tuple[int, int] | None, str]:
    """The (width, height) load_image will produce, or the reason the file cannot be used."""
    try:
        load_image(path, draft_size=32)  # a cheap full decode: truncated files are found now, not mid-training
        with Image.open(path, formats=IMAGE_FORMATS) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112, 1)
    except ImageDecodeError as error:
        return None, error.reason
    except Exception as error:  # noqa: BLE001 - the file changed between the two reads; it is unusable either way
        return None, str(error) or type(error).__name__
    return ((height, width) if orientation in (5, 6, 7, 8) else (width, height)), ""


def _inspect_images(records: Iterable[_Record]) -> dict[Path, tuple[tuple[int, int] | None, str]]:
    paths = list(dict.fromkeys(record.image for record in records if record.image is not None))
    with ThreadPoolExecutor(max_workers=max(2, min(8, os.cpu_count() or 2))) as pool:
        return dict(zip(paths, pool.map(_inspect_image, paths)))


def _format_box(box: Sequence[float]) -> str:
    return "(" + ", ".join(f"{value:g}" for value in box) + ")"


def _build_samples(records: list[_Record], class_index: dict[str, int],
                   images: dict[Path, tuple[tuple[int, int] | None, str]]
                   ) -> tuple[DetectionSamples, list[SkippedFile], list[DroppedBox]]:
    samples: list[DetectionSample] = []
    skipped: list[SkippedFile] = []
    dropped: list[DroppedBox] = []
    for record in records:
        if record.image is None:
            skipped.append(SkippedFile(record.annotation, record.missing))
            continue
        size, reason = images[record.image]
        if size is None:
            skipped.append(SkippedFile(str(record.image), reason))
            continue
        width, height = size
        adjustments: list[Adjustment] = []
        if record.size is not None and record.size != size:
            adjustments.append(Adjustment(SIZE_DIFFERS, f"the annotation says {record.size[0]}x{record.size[1]}, "
                                                        f"the image is {width}x{height}; the image's size is used"))
        boxes: list[Box] = []
        labels: list[int] = []
        for name, box in record.objects:
            problem = None
            if box is None:
                problem = REASON_COORDINATES
            elif not name:
                problem = REASON_NO_NAME
            elif name not in class_index:
                problem = REASON_CLASS
            elif box[2] <= box[0] or box[3] <= box[1]:
                problem = REASON_AREA
            elif box[0] >= width or box[1] >= height or box[2] <= 0 or box[3] <= 0:
                problem = REASON_OUTSIDE
            if problem is not None:
                dropped.append(DroppedBox(record.annotation, box or (), name, problem))
                continue
            clipped = (max(box[0], 0.0), max(box[1], 0.0), min(box[2], float(width)), min(box[3], float(height)))
            if clipped != box:
                adjustments.append(Adjustment(CLIPPED, f"{name} {_format_box(box)} -> {_format_box(clipped)}"))
            boxes.append(clipped)
            labels.append(class_index[name])
        samples.append(DetectionSample(record.image, np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                                       np.asarray(labels, dtype=np.int64), width, height, tuple(adjustments)))
    return DetectionSamples(samples), skipped, dropped


def _check_classes(classes: Sequence[str]) -> list[str]:
    names = list(classes) if not isinstance(classes, str) else [classes]
    if not names or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise ParameterError(f"The 'classes' parameter must be a list of distinct, non-empty class names. "
                             f"Got {classes!r}.", fix="Pass classes=['cat', 'dog'], for example.")
    return names


def _nothing_usable(path: Path, what: str, skipped: list[SkippedFile], dropped: list[DroppedBox]) -> DataError:
    reasons = Counter(s.reason for s in skipped).most_common(3) + Counter(d.reason for d in dropped).most_common(3)
    listed = "; ".join(f"{count} x {reason}" for reason, count in reasons)
    return DataError(f"No usable {what} in {path}: {len(skipped)} files skipped, {len(dropped)} boxes dropped"
                     + (f" ({listed})" if listed else "") + ".",
                     fix="Fix the files named in the reasons, or check that the path is the dataset's root.")


def _hold_out(samples: DetectionSamples, *, val_fraction: float, seed: int, origin: str
              ) -> tuple[DetectionSamples, DetectionSamples]:
    if len(samples) < 2:
        raise DataError(f"Cannot hold out validation images from {origin}: it has {len(samples)} usable image.",
                        fix="Add images, or pass separate validation data with val=.")
    order = np.random.default_rng(seed).permutation(len(samples))
    n_val = min(max(round(len(samples) * val_fraction), 1), len(samples) - 1)
    return samples.subset(sorted(order[n_val:].tolist())), samples.subset(sorted(order[:n_val].tolist()))


def _concat(*parts: DetectionSamples | None) -> DetectionSamples:
    return DetectionSamples([sample for part in parts if part is not None for sample in part])


def _read_with_classes(path: Path, classes: list[str], *, prefer_test: bool
                       ) -> tuple[DetectionSamples, list[SkippedFile], list[DroppedBox]]:
    """Every image of ``path`` (or its test split when ``prefer_test`` and there is one), labelled by ``classes``."""
    read = _read_groups(path)
    keys = ["test"] if prefer_test and "test" in read.groups else list(read.groups)
    records = [record for key in keys for record in read.groups[key]]
    class_index = {name: index for index, name in enumerate(classes)}
    samples, skipped, dropped = _build_samples(records, class_index, _inspect_images(records))
    return samples, read.skipped + skipped, read.dropped + dropped


def read_detection_annotations(
    data: str | os.PathLike[str], *, classes: Sequence[str]
) -> tuple[DetectionSamples, list[SkippedFile], list[DroppedBox]]:
    """Read labelled detection data to evaluate a saved model on: a VOC folder's test list when it has one,
    otherwise every image (for COCO: the test file when a folder has one, otherwise every file).

    Args:
        data: a Pascal VOC folder, a COCO JSON file, or a folder of COCO JSON files.
        classes: the model's class names; boxes of other classes are dropped and reported.

    Returns:
        The samples (labels index ``classes``), the skipped files and the dropped boxes.

    Raises:
        DataError: the path is not detection data, or no image in it is usable.
        ParameterError: ``classes`` is empty or has repeated names.
    """
    root = Path(data).expanduser()
    samples, skipped, dropped = _read_with_classes(root, _check_classes(classes), prefer_test=True)
    if not len(samples):
        raise _nothing_usable(root, "image", skipped, dropped)
    return samples, skipped, dropped


def load_detection_dataset(
    data: str | os.PathLike[str],
    *,
    val: str | os.PathLike[str] | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    classes: Sequence[str] | None = None,
) -> DetectionSplits:
    """Load an object-detection dataset and its validation data, checking every image and box first.

    Splits: a VOC folder's ``ImageSets/Main/train.txt`` + ``val.txt`` are used as given; with only
    ``trainval.txt`` (or ``train.txt``) the validation images are a seeded hold-out of ``val_fraction`` of it;
    with no lists, of every image. ``test.txt`` becomes the test split. A COCO folder with several files takes
    the split from each file's name (or its folder's): train / val / test, with ``trainval`` or a single file
    split like an unlisted VOC folder. When ``val`` is given, it is the validation data and the training
    split is ``data``'s train and validation splits together (everything but its test split).

    Args:
        data: a Pascal VOC folder, a COCO JSON file, or a folder of COCO JSON files.
        val: separate validation data (VOC folder or COCO JSON), read whole.
        val_fraction: share held out for validation when the data has no validation split.
        seed: seed of that hold-out.
        classes: class names (in label order); boxes of other classes are dropped and reported. By default:
            VOC, the names found, sorted; COCO, the categories in the order of their id.

    Returns:
        The splits, classes, and everything skipped (files), dropped (boxes) or adjusted (on each sample).

    Raises:
        DataError: not detection data, or no usable image or box in the training or validation split.
        ParameterError: ``val_fraction`` not in (0, 1), or invalid ``classes``.

    >>> load_detection_dataset("no/such/folder")
    Traceback (most recent call last):
    ...
    headstart.errors.DataError: The detection data no/such/folder does not exist.
    Fix: Check the path.
    """
    # Over 80 lines only through its docstring (the split rules, a doctest); the code is 45 lines, records -> splits.
    if not 0.0 < val_fraction < 1.0:
        raise ParameterError(f"The 'val_fraction' parameter must be between 0 and 1 (exclusive). Got {val_fraction!r}.",
                             fix="Pass val_fraction=0.2, for example.")
    root = Path(data).expanduser()
    read = _read_groups(root)
    wanted = [record for key, records in read.groups.items() if key != "unlisted" for record in records]
    names = _check_classes(classes) if classes is not None else (
        read.categories if read.categories is not None
        else sorted({name for record in wanted for name, _ in record.objects if name}))
    skipped = list(read.skipped) + [SkippedFile(record.annotation, "not in any ImageSets/Main split list")
                                    for record in read.groups.get("unlisted", [])]
    dropped = list(read.dropped)
    if not names:
        raise _nothing_usable(root, "box (no class name found)", skipped, dropped)
    class_index = {name: index for index, name in enumerate(names)}
    images = _inspect_images(wanted)
    built: dict[str, DetectionSamples] = {}
    for key in ("train", "val", "pool", "test"):
        if key in read.groups:
            built[key], more_skipped, more_dropped = _build_samples(read.groups[key], class_index, images)
            skipped += more_skipped
            dropped += more_dropped
    test = built.get("test")
    if val is not None:
        val_root = Path(val).expanduser()
        val_samples, val_skipped, val_dropped = _read_with_classes(val_root, names, prefer_test=False)
        skipped += val_skipped
        dropped += val_dropped
        train = _concat(built.get("train"), built.get("val"), built.get("pool"))
        split = f"given: train = {read.described} of {root} except its test split; val = {val_root}"
    elif "train" in built and "val" in built:
        train, val_samples = built["train"], built["val"]
        split = f"given: {read.described}"
    else:
        pool = built.get("pool", built.get("train", DetectionSamples()))
        if not len(pool):
            raise _nothing_usable(root, "training image", skipped, dropped)
        train, val_samples = _hold_out(pool, val_fraction=val_fraction, seed=seed, origin=str(root))
        split = f"held out: {val_fraction:.0%} of {read.described} for validation (seed {seed})"
    if not len(train) or train.n_boxes == 0:
        raise _nothing_usable(root, "training image with a box" if len(train) else "training image", skipped, dropped)
    if not len(val_samples):
        raise _nothing_usable(Path(val) if val is not None else root, "validation image", skipped, dropped)
    return DetectionSplits(train=train, val=val_samples, test=test, classes=list(names), skipped=skipped,
                           dropped=dropped, source=read.source, root=root, split=split)
