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
"""

from __future__ import annotations

import csv
import io
import os
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from headstart.data.images import (
    ImageDecodeError,
    SkippedFile,
    list_image_files,
    load_image,
)
from headstart.data.transforms import EpochSeededDataset
from headstart.errors import DataError, ParameterError, check_choice

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

IMAGE_FOLDER_NAMES = ("images", "image", "imgs", "img", "inputs")
MASK_FOLDER_NAMES = ("masks", "mask", "labels", "label", "annotations", "gt", "targets")
MASK_STEM_SUFFIXES = ("_mask", "_label", "_gt")
MASK_KINDS = ("index", "binary", "palette")
TABLE_EXTENSIONS = frozenset({".csv", ".tsv"})
_IMAGE_COLUMNS = ("image", "img", "input", "path")
_MASK_COLUMNS = ("mask", "label", "target", "gt")
_VAL_NAMES = ("val", "valid", "validation")
_MAX_PALETTE_COLOURS = 255  # class indices must stay below the usual ignore index
_LAYOUTS = (
    "ROOT/<images>/ + ROOT/<masks>/ with files paired by name (a.png with a.png or a_mask.png)",
    ("ROOT/train/<images>/ + ROOT/train/<masks>/, optionally ROOT/val/<images>/ + ROOT/val/<masks>/ and "
     "ROOT/test/<images>/ (masks optional)"),
    "a .csv or .tsv table with an image column and a mask column",
)
_FOLDER_NAMES_NOTE = (f"where <images> is one of {'/'.join(IMAGE_FOLDER_NAMES)} and <masks> one of "
                      f"{'/'.join(MASK_FOLDER_NAMES)}")
_FIXES = {
    "no mask": "Give every training image a mask with the same file name in the mask folder.",
    "no image": "Remove masks that have no image, or add their images.",
    "not an image file": "Keep only image files in the image and mask folders.",
    "duplicate": "Keep one image and one mask per name.",
    "missing file": "Fix the paths in the table (relative paths are resolved against the table's folder).",
    "unreadable image": "Remove or replace the unreadable images.",
    "unreadable mask": "Remove or replace the unreadable masks.",
    "size mismatch": "Save each mask at the size of its image.",
    "mask values": "Pass classes= with every class, or mask_format= matching the masks (index, binary or palette).",
    "mask colours": "Save masks with exactly one colour per class (PNG, not JPEG, which blends colours at edges).",
}


class MaskError(DataError):
    """One mask file cannot be used: unreadable, or values that are not classes; ``reason`` says why."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"Cannot use {path} as a mask: {reason}.",
                         fix="Replace the mask, or pass classes= / mask_format= that match it.")


@dataclass(frozen=True)
class MaskFormat:
    """How mask pixels map to class indices; saved with a model so its masks are read the same way again.

    Attributes:
        kind: ``"index"``: single-channel masks whose values are class indices (for mode P the palette
            indices, not the colours); pixels equal to ``ignore_index`` are ignored. ``"binary"``: values 0 and
            255 (or 0 and 1) map to classes 0 and 1; nothing is ignored. ``"palette"``: RGB masks whose colour
            ``palette[i]`` is class ``i``; a colour outside the palette makes the mask unusable.
        palette: the RGB colour of each class (kind ``"palette"`` only).
        ignore_index: the label of pixels that are not scored (also used to pad augmented masks).

    >>> MaskFormat.from_dict(MaskFormat("palette", palette=((0, 0, 0), (255, 0, 0))).to_dict()).palette
    ((0, 0, 0), (255, 0, 0))
    """

    kind: str
    palette: tuple[tuple[int, int, int], ...] | None = None
    ignore_index: int = 255

    def __post_init__(self) -> None:
        check_choice("MaskFormat", "kind", self.kind, MASK_KINDS)
        if isinstance(self.ignore_index, bool) or not isinstance(self.ignore_index, (int, np.integer)):
            raise ParameterError(f"The 'ignore_index' parameter of MaskFormat must be an integer. "
                                 f"Got {self.ignore_index!r}.", fix="Use 255, the usual ignore label.")
        object.__setattr__(self, "ignore_index", int(self.ignore_index))
        if self.kind != "palette":
            if self.palette is not None:
                raise ParameterError(f"A palette is only used by MaskFormat kind 'palette'. Got kind {self.kind!r} "
                                     "with a palette.", fix="Pass kind='palette', or drop the palette.")
            return
        if not self.palette:
            raise ParameterError("MaskFormat kind 'palette' needs the RGB colour of every class. Got no palette.",
                                 fix="Pass palette=((r, g, b), ...) in class order, or mask_format='auto'.")
        colours: list[tuple[int, int, int]] = []
        for colour in self.palette:
            values = tuple(colour) if isinstance(colour, Iterable) else ()
            if len(values) != 3 or not all(isinstance(v, (int, np.integer)) and 0 <= v <= 255 for v in values):
                raise ParameterError(f"Each palette colour must be three integers 0..255 (r, g, b). Got {colour!r}.",
                                     fix="Write colours as (r, g, b) tuples, for example (255, 0, 0).")
            colours.append((int(values[0]), int(values[1]), int(values[2])))
        repeated = sorted({c for c in colours if colours.count(c) > 1})
        if repeated:
            raise ParameterError(f"Each palette colour must belong to one class. Got {repeated} more than once.",
                                 fix="Give every class its own colour.")
        object.__setattr__(self, "palette", tuple(colours))

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict that :meth:`from_dict` turns back into this format."""
        palette = None if self.palette is None else [list(colour) for colour in self.palette]
        return {"kind": self.kind, "palette": palette, "ignore_index": self.ignore_index}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> MaskFormat:
        """Rebuild a format from :meth:`to_dict` output.

        Raises:
            ParameterError: ``data`` has no ``kind`` or holds values a format cannot have.
        """
        if not isinstance(data, Mapping) or "kind" not in data:
            raise ParameterError(f"A mask format must be a dict with a 'kind' key. Got {data!r}.",
                                 fix="Use the dict written by MaskFormat.to_dict().")
        palette = data.get("palette")
        colours = None if palette is None else tuple(tuple(colour) for colour in palette)  # type: ignore[union-attr]
        return cls(kind=str(data["kind"]), palette=colours,  # type: ignore[arg-type]
                   ignore_index=data.get("ignore_index", 255))  # type: ignore[arg-type]


@dataclass
class SegmentationSamples:
    """Image files and their mask files: ``masks[i]`` belongs to ``images[i]`` (None: unlabelled)."""

    images: list[Path]
    masks: list[Path | None]

    def __len__(self) -> int:
        return len(self.images)

    @property
    def labelled_count(self) -> int:
        """How many images have a mask."""
        return sum(mask is not None for mask in self.masks)

    def subset(self, indices: Iterable[int]) -> SegmentationSamples:
        chosen = list(indices)
        return SegmentationSamples([self.images[i] for i in chosen], [self.masks[i] for i in chosen])


@dataclass
class SegmentationSplits:
    """Train / validation / optional test pairs, the classes, how masks are read, and every skipped file."""

    train: SegmentationSamples
    val: SegmentationSamples
    test: SegmentationSamples | None
    classes: list[str]
    mask_format: MaskFormat
    skipped: list[SkippedFile] = field(default_factory=list)
    split: str = "given"

    def summary(self) -> dict[str, object]:
        """Counts per split, classes, mask format and the skipped files, JSON-ready."""
        return {
            "classes": list(self.classes),
            "mask_format": self.mask_format.to_dict(),
            "split": self.split,
            "train": len(self.train),
            "val": len(self.val),
            "test": None if self.test is None else len(self.test),
            "test_labelled": None if self.test is None else self.test.labelled_count,
            "skipped_count": len(self.skipped),
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
        }


# ---------------------------------------------------------------------------------------------------------------
# Layout discovery


@dataclass(frozen=True)
class _Source:
    """Where one split's pairs come from: a folder pair, an image folder alone, or a table."""

    images: Path | None = None
    masks: Path | None = None
    table: Path | None = None


@dataclass(frozen=True)
class _Skip:
    category: str  # a key of _FIXES, for "most skipped because of ..."
    file: SkippedFile


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


# ---------------------------------------------------------------------------------------------------------------
# Pairing files


def _file_key(path: Path, folder: Path) -> str:
    return path.relative_to(folder).with_suffix("").as_posix().lower()


def _display_stem(path: Path, folder: Path) -> str:
    return path.relative_to(folder).with_suffix("").as_posix()


def _strip_mask_suffix(stem: str) -> str:
    return next((stem[: -len(suffix)] for suffix in MASK_STEM_SUFFIXES if stem.lower().endswith(suffix)), stem)


def _pair_folder(source: _Source, *, labelled: bool) -> tuple[list[tuple[Path, Path | None]], list[_Skip]]:
    """Pair files of an image folder with the mask folder by name; unpaired files become skips."""
    if source.images is None:  # a table source never comes here
        return [], []
    images, not_images = list_image_files(source.images)
    skips = [_Skip("not an image file", s) for s in not_images]
    if source.masks is None:
        return [(image, None) for image in images], skips
    masks, not_masks = list_image_files(source.masks)
    skips += [_Skip("not an image file", s) for s in not_masks]
    mask_by_key: dict[str, Path] = {}
    for mask in masks:
        key = _file_key(mask, source.masks)
        if key in mask_by_key:
            skips.append(_Skip("duplicate", SkippedFile(
                str(mask), f"another mask has the same name ({mask_by_key[key].name}); expected one mask per image")))
        else:
            mask_by_key[key] = mask
    image_folder, mask_folder = source.images.name, source.masks.name
    used: dict[str, Path] = {}
    pairs: list[tuple[Path, Path | None]] = []
    for image in images:
        key = _file_key(image, source.images)
        match = next((k for k in (key, *(key + s for s in MASK_STEM_SUFFIXES)) if k in mask_by_key), None)
        if match is None:
            if labelled:
                stem = _display_stem(image, source.images)
                skips.append(_Skip("no mask", SkippedFile(
                    str(image), f"no mask found; expected {mask_folder}/{stem}.png (or {stem}_mask.png)")))
            else:
                pairs.append((image, None))
        elif match in used:
            skips.append(_Skip("duplicate", SkippedFile(
                str(image), f"another image with the same name ({used[match].name}) already uses the mask "
                            f"{mask_by_key[match].name}; expected one image per name")))
        else:
            used[match] = image
            pairs.append((image, mask_by_key[match]))
    for key, mask in mask_by_key.items():
        if key not in used:
            skips.append(_Skip("no image", SkippedFile(
                str(mask), f"no image found for this mask; expected {image_folder}/"
                           f"{_strip_mask_suffix(_display_stem(mask, source.masks))}.<image extension>")))
    return pairs, skips


def _pair_table(table: Path) -> tuple[list[tuple[Path, Path | None]], list[_Skip]]:
    rows = _read_table_rows(table)
    header = rows[0] if rows else []
    image_column, mask_column = _table_columns(header)
    if image_column is None or mask_column is None:
        raise DataError(
            f"The table {table} needs an image column and a mask column. Found columns {header}; expected an image "
            f"column named one of {list(_IMAGE_COLUMNS)} and a mask column named one of {list(_MASK_COLUMNS)}.",
            fix="Add a header row such as 'image,mask'.",
        )
    pairs: list[tuple[Path, Path | None]] = []
    skips: list[_Skip] = []
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        cells = [row[c].strip() if c < len(row) else "" for c in (image_column, mask_column)]
        image, mask = ((table.parent / Path(cell).expanduser()) if cell else None for cell in cells)
        where = f"row {number} of {table.name}"
        if image is None:
            skips.append(_Skip("missing file", SkippedFile(f"{table}:{number}", f"no image path in {where}")))
        elif not image.is_file():
            skips.append(_Skip("missing file", SkippedFile(
                str(image), f"image file not found ({where}); expected an existing file")))
        elif mask is None:
            skips.append(_Skip("no mask", SkippedFile(str(image), f"no mask found; expected a mask path in {where}")))
        elif not mask.is_file():
            skips.append(_Skip("missing file", SkippedFile(
                str(mask), f"mask file not found ({where}); expected an existing mask for {image.name}")))
        else:
            pairs.append((image, mask))
    return pairs, skips


def _source_pairs(source: _Source, *, labelled: bool) -> tuple[list[tuple[Path, Path | None]], list[_Skip]]:
    if source.table is not None:
        return _pair_table(source.table)
    return _pair_folder(source, labelled=labelled)


# ---------------------------------------------------------------------------------------------------------------
# Reading masks


def _open_mask(path: Path) -> Image.Image:
    """Decode a mask file, upright like :func:`load_image` makes its image; MaskError when unreadable."""
    try:
        empty = path.stat().st_size == 0
    except OSError as error:
        raise MaskError(path, str(error) or type(error).__name__) from None
    if empty:
        raise MaskError(path, "the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                upright = ImageOps.exif_transpose(image) or image
                upright.load()
                return upright
    except UnidentifiedImageError:
        raise MaskError(path, "not an image format Pillow can read") from None
    except Exception as error:  # noqa: BLE001 - Pillow plugins raise many types on damaged files; all mean "unusable"
        raise MaskError(path, (str(error) or type(error).__name__)[:300]) from None


def _native_array(image: Image.Image, path: Path) -> np.ndarray:
    """(H, W) stored values for single-channel masks (palette indices for mode P), (H, W, 3) for colour masks."""
    mode = image.mode
    if mode == "1":
        return np.asarray(image.convert("L"))
    if mode in {"L", "P", "I", "I;16", "I;16L", "I;16B", "I;16N"}:
        return np.asarray(image)
    if mode in {"LA", "PA"}:
        return np.asarray(image.getchannel(0))
    if mode == "F":
        values = np.asarray(image)
        if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
            raise MaskError(path, "it holds fractional values; expected whole-number class indices")
        return values.astype(np.int64)
    return np.asarray(image.convert("RGB"))


def _pack(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.uint32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _unpack(code: int) -> tuple[int, int, int]:
    return (code >> 16) & 255, (code >> 8) & 255, code & 255


def _distinct(values: np.ndarray) -> np.ndarray:
    if values.dtype == np.uint8:
        return np.flatnonzero(np.bincount(values.ravel(), minlength=256)).astype(np.int64)
    return np.unique(values).astype(np.int64)


def _is_gray(rgb: np.ndarray) -> bool:
    return bool(np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]))


def _short(items: Sequence[object], limit: int = 6) -> str:
    shown = ", ".join(str(item) for item in items[:limit])
    return f"[{shown}{', ...' if len(items) > limit else ''}]"


def _values_problem(values: np.ndarray, mask_format: MaskFormat, num_classes: int) -> str | None:
    """Why distinct single-channel ``values`` are not classes of ``mask_format`` (None: they are)."""
    if mask_format.kind == "binary":
        bad = values[~np.isin(values, (0, 1, 255))]
        if len(bad):
            return f"mask values {_short(bad.tolist())} are not binary; expected only 0 and 255 (or 0 and 1)"
        return None
    bad = values[((values < 0) | (values >= num_classes)) & (values != mask_format.ignore_index)]
    if len(bad):
        return (f"mask values {_short(bad.tolist())} are not class indices; expected 0..{num_classes - 1} "
                f"({num_classes} classes) or {mask_format.ignore_index} (ignored)")
    return None


def _palette_codes(mask_format: MaskFormat, num_classes: int) -> np.ndarray:
    palette = np.asarray(mask_format.palette or (), dtype=np.uint32).reshape(-1, 3)[:num_classes]
    return _pack(palette)


def _colours_problem(colours: np.ndarray, mask_format: MaskFormat, num_classes: int) -> str | None:
    codes = _palette_codes(mask_format, num_classes)
    bad = colours[~np.isin(colours, codes)]
    if len(bad):
        return (f"mask colours {_short([_unpack(int(c)) for c in bad])} are not in the palette; expected one of the "
                f"{len(codes)} class colours {_short([_unpack(int(c)) for c in codes], 4)}")
    return None


def read_mask(path: str | os.PathLike[str], mask_format: MaskFormat, *, num_classes: int) -> np.ndarray:
    """Read a mask file into class indices.

    Args:
        path: the mask image.
        mask_format: how its pixels map to classes (see :class:`MaskFormat`).
        num_classes: the number of classes; values at or above it (other than the ignore index) are errors.

    Returns:
        An (H, W) int64 array of class indices, with ``mask_format.ignore_index`` where pixels are ignored.

    Raises:
        MaskError: the file is unreadable, or holds values / colours that are not classes.

    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "m.png"
    >>> Image.fromarray(np.array([[0, 255], [255, 0]], dtype=np.uint8)).save(target)
    >>> read_mask(target, MaskFormat("binary"), num_classes=2).tolist()
    [[0, 1], [1, 0]]
    """
    path = Path(path)
    image = _open_mask(path)
    if mask_format.kind == "palette":
        colours = _pack(np.asarray(image.convert("RGB")))
        codes = _palette_codes(mask_format, num_classes)
        order = np.argsort(codes)
        positions = np.clip(np.searchsorted(codes[order], colours), 0, len(codes) - 1)
        known = codes[order][positions] == colours
        if not known.all():
            raise MaskError(path, _colours_problem(np.unique(colours[~known]), mask_format, num_classes) or "")
        return order[positions].astype(np.int64)
    values = _native_array(image, path)
    if values.ndim == 3:
        if not _is_gray(values):
            raise MaskError(path, f"it has colours (RGB); expected a single-channel mask for format "
                                  f"{mask_format.kind!r} (use mask_format='palette' for colour masks)")
        values = values[..., 0]
    problem = _values_problem(_distinct(values), mask_format, num_classes)
    if problem is not None:
        raise MaskError(path, problem)
    labels = values.astype(np.int64)
    return (labels != 0).astype(np.int64) if mask_format.kind == "binary" else labels


@dataclass(frozen=True)
class _MaskInfo:
    """What loading needs to know about one mask, read once: its size, and distinct values and colours."""

    size: tuple[int, int]
    rgb: bool  # stored with colour channels
    values: np.ndarray | None  # distinct single-channel values (None: channels that differ)
    colours: np.ndarray | None  # distinct packed 0xRRGGBB colours (None: values above 255)


def _inspect_mask(path: Path) -> _MaskInfo:
    image = _open_mask(path)
    native = _native_array(image, path)
    if native.ndim == 3:
        gray = _is_gray(native)
        return _MaskInfo(image.size, True, _distinct(native[..., 0]) if gray else None, np.unique(_pack(native)))
    values = _distinct(native)
    if image.mode in {"P", "PA"}:
        colours: np.ndarray | None = np.unique(_pack(np.asarray(image.convert("RGB"))))
    elif values.min() >= 0 and values.max() <= 255:
        colours = values * 0x010101
    else:
        colours = None
    return _MaskInfo(image.size, False, values, colours)


def _mask_problem(info: _MaskInfo, mask_format: MaskFormat, num_classes: int) -> tuple[str, str] | None:
    """(category, reason) when a mask read as ``mask_format`` holds something that is not a class."""
    if mask_format.kind == "palette":
        if info.colours is None:
            return "mask values", "mask values above 255 cannot be colours; expected an RGB mask of class colours"
        problem = _colours_problem(info.colours, mask_format, num_classes)
        return None if problem is None else ("mask colours", problem)
    if info.values is None:
        return "mask colours", (f"the mask has colours (RGB); expected a single-channel mask for format "
                                f"{mask_format.kind!r} (use mask_format='palette' for colour masks)")
    problem = _values_problem(info.values, mask_format, num_classes)
    return None if problem is None else ("mask values", problem)


# ---------------------------------------------------------------------------------------------------------------
# Loading a dataset


@dataclass
class _Pair:
    image: Path
    mask: Path | None
    info: _MaskInfo | None = None


def _inspect_pair(pair: _Pair) -> _Skip | None:
    """Decode the image and mask once; a skip when either cannot be used or their sizes differ."""
    partner = f"; its mask {pair.mask.name} is left out too" if pair.mask is not None else ""
    try:
        size = load_image(pair.image).size
    except ImageDecodeError as error:
        return _Skip("unreadable image", SkippedFile(str(pair.image), f"the image cannot be read: {error.reason}"
                                                                      f"{partner}"))
    if pair.mask is None:
        return None
    try:
        info = _inspect_mask(pair.mask)
    except MaskError as error:
        return _Skip("unreadable mask", SkippedFile(
            str(pair.mask), f"the mask cannot be read: {error.reason}; its image {pair.image.name} is left out too"))
    if info.size != size:
        return _Skip("size mismatch", SkippedFile(
            str(pair.image), f"image {size[0]}x{size[1]} but mask {info.size[0]}x{info.size[1]} ({pair.mask.name}); "
                             "expected a mask the size of its image"))
    pair.info = info
    return None


def _inspect_all(pairs: list[_Pair]) -> dict[int, _Skip | None]:
    """Inspect every pair in parallel (decoding releases the GIL): ``id(pair)`` -> its skip or None."""
    with ThreadPoolExecutor(max_workers=max(2, min(8, os.cpu_count() or 2))) as pool:
        return dict(zip(map(id, pairs), pool.map(_inspect_pair, pairs)))


def _usable(pairs: list[_Pair], problems: Mapping[int, _Skip | None], skips: list[_Skip], mask_format: MaskFormat,
            num_classes: int) -> SegmentationSamples:
    """The pairs without problem whose masks hold only classes of ``mask_format``; the others go to ``skips``."""
    kept: list[_Pair] = []
    for pair in pairs:
        problem = problems[id(pair)]
        if problem is None and pair.info is not None:
            reason = _mask_problem(pair.info, mask_format, num_classes)
            if reason is not None:
                problem = _Skip(reason[0], SkippedFile(str(pair.mask), f"{reason[1]}; its image {pair.image.name} "
                                                                       "is left out too"))
        if problem is None:
            kept.append(pair)
        else:
            skips.append(problem)
    return SegmentationSamples([pair.image for pair in kept], [pair.mask for pair in kept])


def _read_classes_file(folder: Path) -> list[str] | None:
    path = folder / "classes.txt"
    if not path.is_file():
        return None
    names = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if len(names) < 2 or repeated:
        raise DataError(f"{path} must list two or more distinct class names, one per line in index order. Found "
                        + (f"{names}" if len(names) < 2 else f"{repeated} more than once") + ".",
                        fix="Write one class name per line; line 1 is class 0.")
    return names


def _resolve_format(infos: list[_MaskInfo], requested: str | MaskFormat, *, ignore_index: int,
                    class_count: int | None) -> MaskFormat:
    if isinstance(requested, MaskFormat):
        return requested
    kind = requested
    if kind == "auto":
        seen = set().union(*(info.values.tolist() for info in infos if info.values is not None))
        binary = bool(seen) and (seen <= {0, 1} or seen <= {0, 255}) and class_count in (None, 2)
        gray = all(info.values is not None for info in infos)  # RGB files too: black and white saved as RGB
        if infos and sum(info.rgb for info in infos) * 2 > len(infos) and not (binary and gray):
            kind = "palette"
        else:
            kind = "binary" if binary else "index"
    if kind != "palette":
        return MaskFormat(kind, ignore_index=ignore_index)
    codes = sorted(set().union(*(info.colours.tolist() for info in infos if info.colours is not None)))
    if not codes:
        raise DataError("No mask colours to build a palette from: no mask could be read as colours.",
                        fix="Pass mask_format=MaskFormat('palette', palette=(...)) with the class colours.")
    if len(codes) > _MAX_PALETTE_COLOURS:
        raise DataError(
            f"The colour masks hold {len(codes)} distinct colours; expected a few, one per class (at most "
            f"{_MAX_PALETTE_COLOURS}). Masks saved as JPEG or resized smoothly get blended colours at edges.",
            fix="Save masks as PNG with exactly one colour per class, or pass mask_format='index'.")
    return MaskFormat("palette", palette=tuple(_unpack(code) for code in codes), ignore_index=ignore_index)


def _resolve_classes(infos: list[_MaskInfo], mask_format: MaskFormat, given: list[str] | None) -> list[str]:
    if given is not None:
        return given
    if mask_format.kind == "binary":
        return ["background", "foreground"]
    if mask_format.kind == "palette":
        return [str(i) for i in range(len(mask_format.palette or ()))]
    seen = [v for info in infos if info.values is not None for v in info.values.tolist()
            if v >= 0 and v != mask_format.ignore_index]
    return [str(i) for i in range(max(seen, default=0) + 1)]


def _check_classes(classes: Sequence[str] | None) -> list[str] | None:
    if classes is None:
        return None
    names = [classes] if isinstance(classes, str) else list(classes)
    if len(names) < 2 or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise ParameterError(f"The 'classes' parameter of load_segmentation_dataset must list two or more distinct "
                             f"class names in index order. Got {classes!r}.",
                             fix="Pass classes=['background', 'cell'], for example, or leave it out.")
    return names


def _source_path(source: _Source | None, root: Path) -> Path:
    if source is None:
        return root
    if source.table is not None:
        return source.table
    return source.images.parent if source.images is not None else root


def _nothing_usable(where: Path, role: str, skips: list[_Skip]) -> DataError:
    if not skips:
        return DataError(f"The {role} data {where} holds no image/mask pairs.",
                         fix="Add images and their masks.")
    category, count = Counter(skip.category for skip in skips).most_common(1)[0]
    example = next(skip.file for skip in skips if skip.category == category)
    return DataError(
        f"No usable image/mask pair in the {role} data {where}: {len(skips)} files were skipped, most often "
        f"because of {category} ({count}), e.g. {example.path}: {example.reason}.",
        fix=_FIXES.get(category, "See the reasons above."),
    )


def load_segmentation_dataset(
    data: str | os.PathLike[str],
    *,
    val: str | os.PathLike[str] | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    classes: Sequence[str] | None = None,
    mask_format: str | MaskFormat = "auto",
    ignore_index: int = 255,
) -> SegmentationSplits:
    """Load a segmentation dataset (image/mask pairs) and its validation data, before any training starts.

    Args:
        data: a dataset folder or a CSV/TSV table (see the module docstring for the layouts).
        val: validation data (folder pair or table). Default: ``ROOT/val/`` if present, else a seeded random
            ``val_fraction`` of the labelled training pairs (at least one).
        val_fraction: the share held out when no validation data is given.
        seed: seed of that hold-out.
        classes: class names in index order. Default: ``classes.txt`` in the data folder (one name per line),
            else ``["background", "foreground"]`` for binary masks, else ``"0"`` .. ``"K-1"``.
        mask_format: ``"auto"``, ``"index"``, ``"binary"``, ``"palette"`` or a :class:`MaskFormat`. ``"auto"``
            looks at every mask: values all within {0, 255} or all within {0, 1} (single-channel, or RGB with
            equal channels) -> binary (unless 3+ classes are named); else mostly RGB masks -> palette; otherwise
            index. An automatic
            palette is the sorted list of the distinct colours found, so class i is the i-th colour in
            (r, g, b) order; pass a :class:`MaskFormat` to fix the colours of each class instead.
        ignore_index: the label of ignored pixels (string formats only; a :class:`MaskFormat` carries its own).

    Returns:
        The splits, classes, the mask format used and the skipped files.

    Raises:
        DataError: a missing path, an unrecognised layout, or no usable pair in the training or validation data.
        ParameterError: ``val_fraction`` outside (0, 1), an unknown ``mask_format``, bad ``classes``, or an
            ``ignore_index`` that is also a class index.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ParameterError(f"The 'val_fraction' parameter must be between 0 and 1 (exclusive). Got {val_fraction!r}.",
                             fix="Pass val_fraction=0.2, for example.")
    if not isinstance(mask_format, MaskFormat):
        check_choice("load_segmentation_dataset", "mask_format", mask_format, ("auto", *MASK_KINDS))
    given_classes = _check_classes(classes)
    root = Path(data).expanduser()
    if not root.exists():
        raise DataError(f"The data path {root} does not exist.", fix="Check the path passed to train/fit.")
    train_source, val_source, test_source = _discover(root)
    if val is not None:
        val_source = _single_source(Path(val).expanduser(), "validation")
    if given_classes is None:
        given_classes = _read_classes_file(root if root.is_dir() else root.parent)

    splits: dict[str, tuple[list[_Pair], list[_Skip]]] = {}
    for role, source in (("train", train_source), ("val", val_source), ("test", test_source)):
        if source is not None:
            pairs, skips = _source_pairs(source, labelled=role != "test")
            splits[role] = ([_Pair(image, mask) for image, mask in pairs], skips)
    every_pair = [pair for pairs, _ in splits.values() for pair in pairs]
    problems = _inspect_all(every_pair)

    infos = [pair.info for pair in every_pair if pair.info is not None and problems[id(pair)] is None]
    chosen = _resolve_format(infos, mask_format, ignore_index=ignore_index,
                             class_count=None if given_classes is None else len(given_classes))
    class_names = _resolve_classes(infos, chosen, given_classes)
    if chosen.kind == "palette" and given_classes is not None and len(chosen.palette or ()) != len(given_classes):
        raise DataError(f"The masks hold {len(chosen.palette or ())} distinct colours {_short(chosen.palette or ())} "
                        f"but {len(given_classes)} classes are named {given_classes}; expected one colour per class.",
                        fix="Pass mask_format=MaskFormat('palette', palette=(...)) with each class's colour in order.")
    if 0 <= chosen.ignore_index < len(class_names):
        raise ParameterError(f"The ignore index {chosen.ignore_index} is also a class index (classes 0.."
                             f"{len(class_names) - 1}); expected a value outside that range.",
                             fix="Use ignore_index=255 (or -1).")

    samples: dict[str, SegmentationSamples] = {}
    skipped: list[SkippedFile] = []
    for role, (pairs, skips) in splits.items():
        kept = _usable(pairs, problems, skips, chosen, len(class_names))
        skipped += [skip.file for skip in skips]
        if len(kept) == 0 and role != "test":
            source = train_source if role == "train" else val_source
            raise _nothing_usable(_source_path(source, root), "training" if role == "train" else "validation", skips)
        samples[role] = kept

    train = samples["train"]
    if "val" in samples:
        val_samples = samples["val"]
        split = "given: validation from " + str(val if val is not None else "the val/ folder")
    else:
        if len(train) < 2:
            raise DataError(f"Cannot hold out validation images: {root} has {len(train)} usable image/mask pair.",
                            fix="Add pairs, or pass separate validation data with val=.")
        order = np.random.default_rng(seed).permutation(len(train))
        n_val = min(max(1, round(len(train) * val_fraction)), len(train) - 1)
        train, val_samples = train.subset(sorted(order[n_val:])), train.subset(sorted(order[:n_val]))
        split = f"random: {n_val} of {n_val + len(train)} training pairs held out for validation (seed {seed})"
    return SegmentationSplits(train=train, val=val_samples, test=samples.get("test"), classes=class_names,
                              mask_format=chosen, skipped=skipped, split=split)


def read_segmentation_pairs(
    data: str | os.PathLike[str],
    *,
    mask_format: MaskFormat,
    classes: Sequence[str],
) -> tuple[SegmentationSamples, list[SkippedFile]]:
    """The labelled pairs of ``data``, read with a known mask format and classes (to evaluate a trained model).

    ``data`` is a table, a folder holding an image/mask folder pair, or a split root: its ``test/`` pair is
    used, else its ``val/`` pair (in that order). Pairs that cannot be used are skipped as in
    :func:`load_segmentation_dataset`, including masks with values or colours that are not among ``classes``.

    Raises:
        DataError: a missing path, an unrecognised layout, or no usable pair.
    """
    root = Path(data).expanduser()
    if not root.exists():
        raise DataError(f"The data path {root} does not exist.", fix="Check the path passed to evaluate.")
    source: _Source | None = None
    if root.is_dir() and _pair_in(root) is None:
        folders = _subfolders(root)
        source = next((pair for pair in (_pair_in(folders[name]) for name in ("test", *_VAL_NAMES) if name in folders)
                       if pair is not None), None)
    source = source or _single_source(root, "evaluation")
    found, skips = _source_pairs(source, labelled=True)
    pairs = [_Pair(image, mask) for image, mask in found]
    samples = _usable(pairs, _inspect_all(pairs), skips, mask_format, len(classes))
    if len(samples) == 0:
        raise _nothing_usable(_source_path(source, root), "evaluation", skips)
    return samples, [skip.file for skip in skips]


# ---------------------------------------------------------------------------------------------------------------
# Joint augmentation and the torch Dataset


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
