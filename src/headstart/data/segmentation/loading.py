"""Image/mask pairs -> checked :class:`SegmentationSplits`: every pair decoded once, before any training starts.

Pairs that cannot be used (unreadable, sizes that differ, values that are not classes) are skipped, counted and
listed; the mask format (when ``"auto"``) and the class names are chosen from all the masks read.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from headstart.data.images import ImageDecodeError, SkippedFile, load_image
from headstart.data.segmentation.layouts import (
    _VAL_NAMES,
    _discover,
    _pair_in,
    _single_source,
    _Source,
    _subfolders,
)
from headstart.data.segmentation.masks import (
    MASK_KINDS,
    MaskError,
    MaskFormat,
    _inspect_mask,
    _mask_problem,
    _MaskInfo,
    _short,
    _unpack,
)
from headstart.data.segmentation.pairing import _Skip, _source_pairs
from headstart.data.segmentation.samples import SegmentationSamples, SegmentationSplits
from headstart.errors import DataError, ParameterError, check_choice

__all__ = ["load_segmentation_dataset", "read_segmentation_pairs"]

_MAX_PALETTE_COLOURS = 255  # class indices must stay below the usual ignore index
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


def _read_pairs(sources: Mapping[str, _Source | None]) -> dict[str, tuple[list[_Pair], list[_Skip]]]:
    """Each split's image/mask pairs (test images may lack a mask) and the files that could not be paired."""
    splits: dict[str, tuple[list[_Pair], list[_Skip]]] = {}
    for role, source in sources.items():
        if source is not None:
            pairs, skips = _source_pairs(source, labelled=role != "test")
            splits[role] = ([_Pair(image, mask) for image, mask in pairs], skips)
    return splits


def _choose_format_and_classes(infos: list[_MaskInfo], requested: str | MaskFormat, *, ignore_index: int,
                               given_classes: list[str] | None) -> tuple[MaskFormat, list[str]]:
    """The mask format and class names of a dataset, checked against each other before any pair is kept."""
    chosen = _resolve_format(infos, requested, ignore_index=ignore_index,
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
    return chosen, class_names


def _hold_out(train: SegmentationSamples, root: Path, *, val_fraction: float, seed: int
              ) -> tuple[SegmentationSamples, SegmentationSamples, str]:
    """A seeded random ``val_fraction`` of the training pairs (at least one, never all) held out for validation."""
    if len(train) < 2:
        raise DataError(f"Cannot hold out validation images: {root} has {len(train)} usable image/mask pair.",
                        fix="Add pairs, or pass separate validation data with val=.")
    order = np.random.default_rng(seed).permutation(len(train))
    n_val = min(max(1, round(len(train) * val_fraction)), len(train) - 1)
    train, val_samples = train.subset(sorted(order[n_val:])), train.subset(sorted(order[:n_val]))
    split = f"random: {n_val} of {n_val + len(train)} training pairs held out for validation (seed {seed})"
    return train, val_samples, split


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
        data: a dataset folder or a CSV/TSV table (see :mod:`headstart.data.segmentation` for the layouts).
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

    splits = _read_pairs({"train": train_source, "val": val_source, "test": test_source})
    every_pair = [pair for pairs, _ in splits.values() for pair in pairs]
    problems = _inspect_all(every_pair)

    infos = [pair.info for pair in every_pair if pair.info is not None and problems[id(pair)] is None]
    chosen, class_names = _choose_format_and_classes(infos, mask_format, ignore_index=ignore_index,
                                                     given_classes=given_classes)

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
        train, val_samples, split = _hold_out(train, root, val_fraction=val_fraction, seed=seed)
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
