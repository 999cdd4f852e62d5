"""Images paired with their masks: by file name across an image and a mask folder, or by the rows of a table.

Separate from the layouts (which only find the folders) and from loading (which decodes the pairs): every file
that cannot be paired becomes a :class:`_Skip` here, with the category that loading counts and names a fix for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from headstart.data.images import SkippedFile, list_image_files
from headstart.data.segmentation.layouts import (
    _IMAGE_COLUMNS,
    _MASK_COLUMNS,
    MASK_STEM_SUFFIXES,
    _read_table_rows,
    _Source,
    _table_columns,
)
from headstart.errors import DataError

__all__: list[str] = []


@dataclass(frozen=True)
class _Skip:
    category: str  # a key of loading._FIXES, for "most skipped because of ..."
    file: SkippedFile


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
