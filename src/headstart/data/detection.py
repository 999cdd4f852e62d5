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
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numpy as np
import torch
from PIL import Image

from headstart.data.images import (
    IMAGE_EXTENSIONS,
    ImageDecodeError,
    SkippedFile,
    load_image,
)
from headstart.data.transforms import EpochSeededDataset
from headstart.errors import DataError, ParameterError

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

# Reasons a box is dropped (short and fixed, so the summary can count them).
REASON_COORDINATES = "coordinates missing or not numbers"
REASON_NO_NAME = "no class name"
REASON_AREA = "zero or negative area (x2 <= x1 or y2 <= y1)"
REASON_OUTSIDE = "entirely outside the image"
REASON_CLASS = "class not in the given classes"
REASON_CROWD = "crowd region (iscrowd=1)"
REASON_CATEGORY = "category id not in the file's categories"
REASON_IMAGE_ID = "image id not in the file's images"
# Reasons an annotation was adjusted (the boxes were kept).
CLIPPED = "clipped to the image"
SIZE_DIFFERS = "annotated size differs from the image"

_COCO_PARSE_LIMIT = 64 * 2**20  # larger JSON files are recognised from their first bytes only
_VOC_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG", ".bmp", ".tif", ".tiff", ".webp")

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Adjustment:
    """A change made to one image's annotation so it could be used; its boxes were kept."""

    reason: str  # CLIPPED or SIZE_DIFFERS
    detail: str  # e.g. "RBC (600.0, 10.0, 660.0, 50.0) -> (600.0, 10.0, 640.0, 50.0)"


@dataclass(eq=False)
class DetectionSample:
    """One image and its boxes.

    ``boxes`` is float32 (N, 4) ``x1, y1, x2, y2`` in pixels of the decoded image (``width`` x ``height``),
    ``labels`` int64 (N,) 0-based class indices; N may be 0. ``adjustments`` lists what was changed while
    reading (clipped boxes, a corrected image size).
    """

    image: Path
    boxes: np.ndarray
    labels: np.ndarray
    width: int
    height: int
    adjustments: tuple[Adjustment, ...] = ()


@dataclass
class DetectionSamples:
    """A list of :class:`DetectionSample`."""

    samples: list[DetectionSample] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> DetectionSample:
        return self.samples[index]

    def __iter__(self) -> Iterator[DetectionSample]:
        return iter(self.samples)

    def subset(self, indices: Iterable[int]) -> DetectionSamples:
        return DetectionSamples([self.samples[i] for i in indices])

    @property
    def n_boxes(self) -> int:
        return int(sum(len(sample.labels) for sample in self.samples))

    def class_counts(self, classes: Sequence[str]) -> dict[str, int]:
        """Boxes per class name (classes without a box count 0)."""
        counts = np.zeros(len(classes), dtype=np.int64)
        for sample in self.samples:
            counts += np.bincount(sample.labels, minlength=len(classes))[: len(classes)]
        return {name: int(count) for name, count in zip(classes, counts)}


@dataclass(frozen=True)
class DroppedBox:
    """A box left out of the dataset, and why. ``file`` is the annotation file (for COCO, with the image)."""

    file: str
    box: tuple[float, ...]  # as written in the annotation, x1, y1, x2, y2; () when unreadable
    label: str
    reason: str


@dataclass
class DetectionSplits:
    """Train / validation / optional test images with boxes, plus everything skipped, dropped or adjusted."""

    train: DetectionSamples
    val: DetectionSamples
    test: DetectionSamples | None
    classes: list[str]
    skipped: list[SkippedFile]
    dropped: list[DroppedBox]
    source: str  # "voc" or "coco"
    root: Path | None = None
    split: str = ""  # how the split was made, in words

    def _splits(self) -> dict[str, DetectionSamples | None]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def summary(self) -> dict[str, Any]:
        """A JSON-ready account of the data: images, boxes (per class) and images without boxes per split;
        every skipped file, dropped box and adjustment, with counts by reason."""

        def describe(samples: DetectionSamples | None) -> dict[str, Any] | None:
            if samples is None:
                return None
            return {
                "images": len(samples),
                "boxes": samples.n_boxes,
                "images_without_boxes": sum(1 for sample in samples if len(sample.labels) == 0),
                "boxes_per_class": samples.class_counts(self.classes),
            }

        adjusted = [
            {"image": str(sample.image), "reason": adjustment.reason, "detail": adjustment.detail}
            for samples in self._splits().values() if samples is not None
            for sample in samples for adjustment in sample.adjustments
        ]
        return {
            "source": self.source,
            "root": None if self.root is None else str(self.root),
            "split": self.split,
            "classes": list(self.classes),
            **{name: describe(samples) for name, samples in self._splits().items()},
            "skipped_count": len(self.skipped),
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
            "dropped_count": len(self.dropped),
            "dropped_reasons": dict(Counter(d.reason for d in self.dropped).most_common()),
            "dropped": [{"file": d.file, "box": list(d.box), "label": d.label, "reason": d.reason}
                        for d in self.dropped],
            "adjusted_count": len(adjusted),
            "adjusted_reasons": dict(Counter(a["reason"] for a in adjusted).most_common()),
            "adjusted": adjusted,
        }


# ----------------------------------------------------------------------------------------------------------
# Recognising the layouts


def _is_voc_folder(path: Path) -> bool:
    annotations = path / "Annotations"
    return annotations.is_dir() and (path / "JPEGImages").is_dir() and any(annotations.glob("*.xml"))


def _is_coco_json(path: Path) -> bool:
    if path.suffix.lower() != ".json" or not path.is_file() or path.name.startswith("."):
        return False
    try:
        if path.stat().st_size > _COCO_PARSE_LIMIT:
            with open(path, "rb") as handle:
                head = handle.read(4 * 2**20)
            return b'"images"' in head and (b'"annotations"' in head or path.name.startswith("instances"))
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and all(isinstance(data.get(key), list)
                                          for key in ("images", "annotations", "categories"))


def _find_coco_files(folder: Path) -> list[Path]:
    """COCO JSON files in ``folder`` or one level below it; ``instances_*`` only when there are some (the
    COCO release also has keypoint files with the same keys)."""
    candidates = sorted(folder.glob("*.json")) + sorted(folder.glob("*/*.json"))
    found = [path for path in candidates if not path.parent.name.startswith(".") and _is_coco_json(path)]
    instances = [path for path in found if path.name.startswith("instances")]
    return instances or found


def _has_images(folder: Path, depth: int = 2) -> bool:
    try:
        entries = list(folder.iterdir())
    except OSError:
        return False
    if any(entry.suffix.lower() in IMAGE_EXTENSIONS and entry.is_file() for entry in entries):
        return True
    return depth > 0 and any(_has_images(entry, depth - 1) for entry in entries
                             if entry.is_dir() and not entry.name.startswith("."))


def looks_like_detection_data(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a Pascal VOC folder, a COCO JSON file, or a folder of COCO JSON file(s) plus images.

    Never raises: a missing path is simply not detection data.
    """
    path = Path(path).expanduser()
    if path.is_file():
        return _is_coco_json(path)
    if not path.is_dir():
        return False
    if _is_voc_folder(path):
        return True
    return bool(_find_coco_files(path)) and _has_images(path)


# ----------------------------------------------------------------------------------------------------------
# Reading annotations into records (one per image), before any image is opened


@dataclass
class _Record:
    annotation: str  # the annotation named in messages
    image: Path | None  # None: not found, ``missing`` says why
    missing: str
    size: tuple[int, int] | None  # (width, height) as annotated
    objects: list[tuple[str, Box | None]]  # class name, box (None: unreadable)


@dataclass
class _Groups:
    source: str
    groups: dict[str, list[_Record]]  # "train", "val", "test", "pool" (to be split), "unlisted" (VOC)
    skipped: list[SkippedFile]
    dropped: list[DroppedBox]
    categories: list[str] | None  # COCO: names in the order of category id
    described: str  # where the groups came from


def _finite_box(values: Sequence[Any]) -> Box | None:
    try:
        box = tuple(float(value) for value in values)
    except (TypeError, ValueError):
        return None
    if len(box) != 4 or not all(math.isfinite(value) for value in box):
        return None
    return box  # type: ignore[return-value]


def _voc_image(images: Path, filename: str, stem: str) -> tuple[Path | None, str]:
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]  # some tools write a full (even Windows) path
    candidates = ([images / name] if name else []) + [images / f"{stem}{suffix}" for suffix in _VOC_IMAGE_SUFFIXES]
    for candidate in candidates:
        if candidate.is_file():
            return candidate, ""
    return None, (f"its image {images.name}/{name or stem + '.jpg'} does not exist "
                  f"(also looked for {stem}.jpg, .jpeg, .png)")


def _read_voc_xml(xml_path: Path, images: Path) -> _Record | SkippedFile:
    try:
        root = ElementTree.parse(xml_path).getroot()
    except ElementTree.ParseError as error:
        return SkippedFile(str(xml_path), f"malformed XML ({error})")
    except OSError as error:
        return SkippedFile(str(xml_path), f"cannot read the file ({error})")
    if root.tag != "annotation":
        return SkippedFile(str(xml_path), f"not a Pascal VOC annotation (root element <{root.tag}>, "
                                          "expected <annotation>)")
    image, missing = _voc_image(images, (root.findtext("filename") or "").strip(), xml_path.stem)
    try:
        size: tuple[int, int] | None = (int(float(root.findtext("size/width") or "")),
                                        int(float(root.findtext("size/height") or "")))
    except ValueError:
        size = None
    if size is not None and min(size) <= 0:
        size = None  # labelImg writes 0x0 when it could not read the image: no claim to check
    objects: list[tuple[str, Box | None]] = []
    for node in root.findall("object"):
        bndbox = node.find("bndbox")
        box = None if bndbox is None else _finite_box(
            [bndbox.findtext(key) for key in ("xmin", "ymin", "xmax", "ymax")])
        # VOC coordinates are 1-based and inclusive; they are kept as written (x1 = xmin, x2 = xmax), which
        # makes a box at most one pixel wider than the pixels it covers: below what any detector resolves.
        # ``difficult`` objects are kept too: they are real objects, and training on them does no harm.
        objects.append(((node.findtext("name") or "").strip(), box))
    return _Record(str(xml_path), image, missing, size, objects)


def _read_id_list(path: Path) -> list[str]:
    ids = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        words = line.split()
        if words:
            ids.append(words[0])  # class lists ("<id> 1") hold the id first too
    return ids


def _voc_groups(root: Path) -> _Groups:
    annotations, images = root / "Annotations", root / "JPEGImages"
    all_ids = sorted(p.stem for p in annotations.glob("*.xml") if not p.name.startswith("."))
    lists_dir = root / "ImageSets" / "Main"
    lists = {name: _read_id_list(lists_dir / f"{name}.txt")
             for name in ("train", "val", "trainval", "test") if (lists_dir / f"{name}.txt").is_file()}
    ids: dict[str, list[str]] = {}
    if "train" in lists and "val" in lists:
        ids = {"train": lists["train"], "val": lists["val"]}
        described = "split lists ImageSets/Main/train.txt and val.txt"
    elif "trainval" in lists or "train" in lists:
        name = "trainval" if "trainval" in lists else "train"
        ids = {"pool": lists[name]}
        described = f"split list ImageSets/Main/{name}.txt"
    else:
        test = set(lists.get("test", ()))
        ids = {"pool": [i for i in all_ids if i not in test]}
        described = "every annotation file"
    if "test" in lists:
        ids["test"] = lists["test"]
        described += " (test: ImageSets/Main/test.txt)"
    listed = {i for members in ids.values() for i in members}
    ids["unlisted"] = [i for i in all_ids if i not in listed]

    existing = set(all_ids)
    skipped: list[SkippedFile] = []
    groups: dict[str, list[_Record]] = {}
    for group, members in ids.items():
        records = []
        for identifier in dict.fromkeys(members):  # a repeated id is one image
            xml_path = annotations / f"{identifier}.xml"
            if identifier not in existing:
                source = "trainval" if group == "pool" and "trainval" in lists else group
                skipped.append(SkippedFile(str(xml_path), f"listed in ImageSets/Main/{source}.txt but the "
                                                          "annotation file does not exist"))
                continue
            record = _read_voc_xml(xml_path, images)
            if isinstance(record, SkippedFile):
                skipped.append(record)
            else:
                records.append(record)
        groups[group] = records
    return _Groups("voc", groups, skipped, [], None, described)


def _split_of(name: str) -> str | None:
    lowered = name.lower()
    if "trainval" in lowered:
        return "pool"
    for word, split in (("test", "test"), ("val", "val"), ("train", "train")):
        if word in lowered:
            return split
    return None


def _load_coco_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as error:
        raise DataError(f"Cannot read the COCO annotation file {path}: {error}.",
                        fix="Check that the file is complete, valid JSON (export or download it again).") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(key), list)
                                             for key in ("images", "annotations", "categories")):
        found = sorted(data)[:10] if isinstance(data, dict) else type(data).__name__
        raise DataError(f"{path} is not a COCO detection file: expected a JSON object with the lists 'images', "
                        f"'annotations' and 'categories'. Found {found}.",
                        fix="Pass a COCO 'instances' JSON file, or a Pascal VOC folder.")
    return data


def _coco_image_folders(json_path: Path) -> list[Path]:
    """Where a COCO file's images may be: beside it, in images/, or in a folder named like its split."""
    here = json_path.parent
    stem = json_path.stem
    names = [stem, stem.removeprefix("instances_")]
    names += [word for word in re.split(r"[_\-.\s]+", stem) if _split_of(word) is not None]
    names += {"train": ["train"], "val": ["val", "valid", "validation"], "test": ["test"]}.get(
        _split_of(stem) or "", [])
    folders = [here, here / "images"]
    for base in (here, here.parent):
        for name in names:
            folders += [base / name, base / "images" / name]
    folders += [here.parent, here.parent / "images"]
    return [folder for folder in dict.fromkeys(folders) if folder.is_dir()]


def _coco_records(json_path: Path) -> tuple[list[_Record], list[SkippedFile], list[DroppedBox], dict[Any, str]]:
    data = _load_coco_json(json_path)
    categories = {entry["id"]: str(entry["name"]).strip() for entry in data["categories"]
                  if isinstance(entry, dict) and "id" in entry and "name" in entry}
    folders = _coco_image_folders(json_path)
    skipped: list[SkippedFile] = []
    dropped: list[DroppedBox] = []
    records: dict[Any, _Record] = {}
    for entry in data["images"]:
        file_name = entry.get("file_name") if isinstance(entry, dict) else None
        if not isinstance(file_name, str) or "id" not in entry:
            skipped.append(SkippedFile(str(json_path), f"an 'images' entry has no id or file_name: {str(entry)[:80]}"))
            continue
        image = None
        for relative in dict.fromkeys([file_name, file_name.replace("\\", "/").rsplit("/", 1)[-1]]):
            image = next((folder / relative for folder in folders if (folder / relative).is_file()), None)
            if image is not None:
                break
        try:
            size: tuple[int, int] | None = (int(entry["width"]), int(entry["height"]))
        except (KeyError, TypeError, ValueError):
            size = None
        where = ", ".join(str(folder) for folder in folders[:3]) or str(json_path.parent)
        records[entry["id"]] = _Record(f"{json_path} (image {file_name!r})", image,
                                       f"its image {file_name!r} was not found (looked in {where})", size, [])
    for annotation in data["annotations"]:
        if not isinstance(annotation, dict):
            continue
        bbox = annotation.get("bbox")
        xywh = _finite_box(bbox) if isinstance(bbox, list) else None
        box = None if xywh is None else (xywh[0], xywh[1], xywh[0] + xywh[2], xywh[1] + xywh[3])
        category = annotation.get("category_id")
        label = categories.get(category, f"category {category}")
        record = records.get(annotation.get("image_id"))
        if record is None:
            dropped.append(DroppedBox(str(json_path), box or (), label, REASON_IMAGE_ID))
        elif category not in categories:
            dropped.append(DroppedBox(record.annotation, box or (), label, REASON_CATEGORY))
        elif annotation.get("iscrowd"):
            dropped.append(DroppedBox(record.annotation, box or (), label, REASON_CROWD))
        else:
            record.objects.append((label, box))
    return list(records.values()), skipped, dropped, categories


def _coco_groups(path: Path) -> _Groups:
    files = [path] if path.is_file() else _find_coco_files(path)
    if not files:
        raise DataError(f"No COCO annotation file in {path}: expected a .json file with 'images', 'annotations' "
                        "and 'categories' here or one folder below.",
                        fix="Pass the COCO JSON file itself, or a Pascal VOC folder (Annotations/ + JPEGImages/).")
    if len(files) == 1:
        by_split = {"pool": files[0]}
    else:
        by_split = {}
        for file in files:
            split = _split_of(file.stem) or (_split_of(file.parent.name) if file.parent != path else None)
            if split is None or split in by_split:
                raise DataError(
                    f"Cannot tell the splits of the COCO files in {path}: {[str(f.relative_to(path)) for f in files]}"
                    + (f"; {file.name} names no split" if split is None else f"; two files for '{split}'") + ".",
                    fix="Name each file (or its folder) with train, val or test, or pass one JSON file.")
            by_split[split] = file
        if "train" in by_split and "pool" in by_split:
            raise DataError(f"{path} has both a train and a trainval COCO file: {sorted(map(str, files))}.",
                            fix="Remove one of them, or pass the JSON file to train on.")
        if "train" not in by_split and "pool" not in by_split:
            raise DataError(f"No training file among the COCO files of {path}: {[f.name for f in files]}.",
                            fix="Add a file whose name contains 'train', or pass one JSON file.")
    groups: dict[str, list[_Record]] = {}
    skipped: list[SkippedFile] = []
    dropped: list[DroppedBox] = []
    categories: dict[Any, str] = {}
    for split, file in by_split.items():
        records, file_skipped, file_dropped, file_categories = _coco_records(file)
        groups[split] = records
        skipped += file_skipped
        dropped += file_dropped
        for identifier, name in file_categories.items():
            categories.setdefault(identifier, name)
    order = sorted(categories, key=lambda identifier: (0, identifier, "") if isinstance(identifier, (int, float))
                   else (1, 0, str(identifier)))
    names = list(dict.fromkeys(categories[identifier] for identifier in order))
    described = ", ".join(f"{split if split != 'pool' else 'all'}: {file.name}" for split, file in by_split.items())
    return _Groups("coco", groups, skipped, dropped, names, described)


def _read_groups(path: Path) -> _Groups:
    if path.is_dir() and _is_voc_folder(path):
        return _voc_groups(path)
    if (path.is_file() and path.suffix.lower() == ".json") or (path.is_dir() and _find_coco_files(path)):
        return _coco_groups(path)
    if not path.exists():
        raise DataError(f"The detection data {path} does not exist.", fix="Check the path.")
    if (path / "Annotations").is_dir() and not (path / "JPEGImages").is_dir():
        raise DataError(f"{path} has Annotations/ but no JPEGImages/ folder: a Pascal VOC folder needs both.",
                        fix="Put the images in JPEGImages/ beside Annotations/.")
    raise DataError(
        f"{path} is not object-detection data: expected a Pascal VOC folder (Annotations/*.xml and JPEGImages/), "
        "a COCO JSON file, or a folder holding COCO JSON files and their images.",
        fix="Point at the dataset's root folder (the one that holds Annotations/ or the JSON annotations).")


# ----------------------------------------------------------------------------------------------------------
# Records -> samples: open every image once, check every box


def _inspect_image(path: Path) -> tuple[tuple[int, int] | None, str]:
    """The (width, height) load_image will produce, or the reason the file cannot be used."""
    try:
        load_image(path, draft_size=32)  # a cheap full decode: truncated files are found now, not mid-training
        with Image.open(path) as image:
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


# ----------------------------------------------------------------------------------------------------------
# Training transform and Dataset


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
