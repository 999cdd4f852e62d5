"""Mask files -> class indices: the :class:`MaskFormat` saved with a model, and the checks on every mask.

Separate from loading because a trained model reads masks too (to evaluate), with a format it saved, while a
dataset is loaded only once. The inspection helpers at the end read a mask once for loading: its size and the
distinct values and colours that decide the format when it is ``"auto"``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from headstart.data.images import DEFAULT_MAX_IMAGE_PIXELS, IMAGE_FORMATS
from headstart.errors import DataError, ParameterError, check_choice

__all__ = ["MASK_KINDS", "MaskError", "MaskFormat", "read_mask"]

MASK_KINDS = ("index", "binary", "palette")


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
            with Image.open(path, formats=IMAGE_FORMATS) as image:
                if image.width * image.height > DEFAULT_MAX_IMAGE_PIXELS:
                    raise MaskError(path, f"{image.width}x{image.height} pixels exceeds the limit of"
                                          f" {DEFAULT_MAX_IMAGE_PIXELS} (possible decompression bomb)")
                image.load()
                upright = ImageOps.exif_transpose(image) or image
                upright.load()
                return upright
    except UnidentifiedImageError:
        raise MaskError(path, f"not an image format headstart reads ({', '.join(IMAGE_FORMATS)})") from None
    except MaskError:
        raise
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
