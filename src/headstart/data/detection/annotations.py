"""Detection annotation files -> one record per image: Pascal VOC XML, COCO JSON, and recognising either layout.

Separate from loading because nothing here opens an image: records name the image file, its annotated size and
its objects as written, and loading then checks them against the pixels. Boxes the file itself rules out (an
unknown image id or category, a crowd region) are dropped here.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from headstart.data.detection.samples import (
    REASON_CATEGORY,
    REASON_CROWD,
    REASON_IMAGE_ID,
    Box,
    DroppedBox,
)
from headstart.data.images import IMAGE_EXTENSIONS, SkippedFile
from headstart.errors import DataError

__all__ = ["looks_like_detection_data"]

_COCO_PARSE_LIMIT = 64 * 2**20  # larger JSON files are recognised from their first bytes only
_VOC_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG", ".bmp", ".tif", ".tiff", ".webp")


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
