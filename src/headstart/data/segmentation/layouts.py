"""Where a segmentation dataset's splits are: an image/mask folder pair, train/val/test folders, or a table.

Separate from pairing: this file only finds the sources of each split (and says which layouts exist when none
matches); :mod:`~headstart.data.segmentation.pairing` then pairs the files inside one source.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from headstart.errors import DataError

__all__ = [
    "IMAGE_FOLDER_NAMES",
    "MASK_FOLDER_NAMES",
    "MASK_STEM_SUFFIXES",
    "TABLE_EXTENSIONS",
    "looks_like_segmentation_data",
]

IMAGE_FOLDER_NAMES = ("images", "image", "imgs", "img", "inputs")
MASK_FOLDER_NAMES = ("masks", "mask", "labels", "label", "annotations", "gt", "targets")
MASK_STEM_SUFFIXES = ("_mask", "_label", "_gt")
TABLE_EXTENSIONS = frozenset({".csv", ".tsv"})
_IMAGE_COLUMNS = ("image", "img", "input", "path")
_MASK_COLUMNS = ("mask", "label", "target", "gt")
_VAL_NAMES = ("val", "valid", "validation")
_LAYOUTS = (
    "ROOT/<images>/ + ROOT/<masks>/ with files paired by name (a.png with a.png or a_mask.png)",
    ("ROOT/train/<images>/ + ROOT/train/<masks>/, optionally ROOT/val/<images>/ + ROOT/val/<masks>/ and "
     "ROOT/test/<images>/ (masks optional)"),
    "a .csv or .tsv table with an image column and a mask column",
)
_FOLDER_NAMES_NOTE = (f"where <images> is one of {'/'.join(IMAGE_FOLDER_NAMES)} and <masks> one of "
                      f"{'/'.join(MASK_FOLDER_NAMES)}")


@dataclass(frozen=True)
class _Source:
    """Where one split's pairs come from: a folder pair, an image folder alone, or a table."""

    images: Path | None = None
    masks: Path | None = None
    table: Path | None = None



def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name in {"__MACOSX", "__pycache__", "@eaDir"}


def _subfolders(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {entry.name.lower(): entry for entry in sorted(folder.iterdir())
            if entry.is_dir() and not _is_hidden(entry.name)}


def _first_named(folders: Mapping[str, Path], names: Sequence[str]) -> Path | None:
    return next((folders[name] for name in names if name in folders), None)


def _pair_in(folder: Path) -> _Source | None:
    folders = _subfolders(folder)
    images, masks = _first_named(folders, IMAGE_FOLDER_NAMES), _first_named(folders, MASK_FOLDER_NAMES)
    return _Source(images=images, masks=masks) if images is not None and masks is not None else None


def _table_columns(header: Sequence[str]) -> tuple[int | None, int | None]:
    names = [cell.strip().lower() for cell in header]

    def find(candidates: Sequence[str]) -> int | None:
        for candidate in candidates:
            variants = {candidate, f"{candidate}_path", f"{candidate}_file", f"{candidate} path", f"{candidate}path"}
            for index, name in enumerate(names):
                if name in variants:
                    return index
        return None

    return find(_IMAGE_COLUMNS), find(_MASK_COLUMNS)


def _read_table_rows(table: Path) -> list[list[str]]:
    try:
        text = table.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"Cannot read the table {table}: {error}.",
                        fix="Pass a UTF-8 CSV/TSV file with image and mask columns.") from None
    delimiter = "\t" if table.suffix.lower() == ".tsv" else ","
    return list(csv.reader(io.StringIO(text), delimiter=delimiter))


def looks_like_segmentation_data(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a segmentation dataset: an image/mask folder pair at its root or under ``train/``, or a
    CSV/TSV table with an image column and a mask column.

    >>> looks_like_segmentation_data("/nonexistent")
    False
    """
    path = Path(path).expanduser()
    if path.is_file():
        if path.suffix.lower() not in TABLE_EXTENSIONS:
            return False
        try:
            with open(path, encoding="utf-8-sig", newline="") as handle:
                header = next(csv.reader(handle, delimiter="\t" if path.suffix.lower() == ".tsv" else ","), [])
        except (OSError, UnicodeDecodeError, csv.Error):
            return False
        image_column, mask_column = _table_columns(header)
        return image_column is not None and mask_column is not None
    if not path.is_dir():
        return False
    train = _subfolders(path).get("train")
    return _pair_in(path) is not None or (train is not None and _pair_in(train) is not None)


def _describe_folder(folder: Path) -> str:
    folders = sorted(_subfolders(folder))
    files = sorted(entry.name for entry in folder.iterdir() if entry.is_file() and not _is_hidden(entry.name))
    parts = []
    if folders:
        parts.append(f"folders {folders[:8]}" + (" ..." if len(folders) > 8 else ""))
    if files:
        parts.append(f"files such as {files[:3]}")
    return " and ".join(parts) if parts else "an empty folder"


def _layout_error(root: Path, found: str) -> DataError:
    layouts = "\n".join(f"  - {layout}" for layout in _LAYOUTS)
    return DataError(
        f"{root} is not a segmentation dataset layout headstart recognises. Found {found}. Expected one of:\n"
        f"{layouts}\n  ({_FOLDER_NAMES_NOTE}).",
        fix="Put images in ROOT/images/ and their masks, with the same file names, in ROOT/masks/ "
            "(or pass a CSV with image and mask columns).",
    )


def _single_source(path: Path, role: str) -> _Source:
    """A labelled source given directly: a table, a folder pair, or a split folder whose train/ holds the pair."""
    if not path.exists():
        raise DataError(f"The {role} data {path} does not exist.", fix=f"Check the {role} path.")
    if path.is_file():
        if path.suffix.lower() in TABLE_EXTENSIONS:
            return _Source(table=path)
        raise _layout_error(path, f"a {path.suffix or 'extension-less'} file")
    pair = _pair_in(path)
    if pair is None:
        folders = _subfolders(path)
        found = _describe_folder(path)
        if _first_named(folders, IMAGE_FOLDER_NAMES) is not None:
            found += f" (an image folder but no mask folder named one of {list(MASK_FOLDER_NAMES)})"
        raise _layout_error(path, found)
    return pair


def _discover(root: Path) -> tuple[_Source, _Source | None, _Source | None]:
    """(train, val, test) sources of a dataset path; val/test are None when absent."""
    if root.is_file():
        return _single_source(root, "training"), None, None
    folders = _subfolders(root)
    pair = _pair_in(root)
    train_folder = folders.get("train")
    if pair is None and train_folder is not None:
        pair = _pair_in(train_folder)
    if pair is None:
        found = _describe_folder(root)
        if train_folder is not None:
            found += f"; train/ holds {_describe_folder(train_folder)}"
        raise _layout_error(root, found)
    val_folder = _first_named(folders, _VAL_NAMES)
    val = _single_source(val_folder, "validation") if val_folder is not None else None
    test = None
    if "test" in folders:
        test = _pair_in(folders["test"])
        if test is None:
            images = _first_named(_subfolders(folders["test"]), IMAGE_FOLDER_NAMES)
            if images is None:
                raise _layout_error(folders["test"], _describe_folder(folders["test"]) + " in the test folder")
            test = _Source(images=images)
    return pair, val, test
