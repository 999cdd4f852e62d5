"""Audio files -> labelled samples, with durations, groups (speakers) and splits that keep groups apart.

Sources: a folder with one subfolder per class, a flat folder whose file names carry the label (``label_pattern``),
a table (CSV/TSV/JSONL/Parquet) with a file-path column and a label column, or an :class:`AudioSamples`. Every
file is inspected once while loading (in parallel): unreadable, empty, too short and silent files are skipped and
listed before training starts; clipped files are kept and named in the notes. When groups are known (a speaker
in the file name or a table column), the validation split never shares a group with training.
"""

from __future__ import annotations

import io
import math
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import soundfile
import soxr

from headstart.data.images import SkippedFile, _is_hidden, stratified_split
from headstart.data.text import sort_class_names
from headstart.errors import DataError, ParameterError

if TYPE_CHECKING:
    import pandas

__all__ = [
    "AUDIO_EXTENSIONS",
    "MIN_SECONDS",
    "AudioDecodeError",
    "AudioSamples",
    "AudioSplits",
    "choose_clip_seconds",
    "fit_length",
    "group_from_pattern",
    "group_split",
    "inspect_audio",
    "load_audio_dataset",
    "read_labelled_audio",
    "looks_like_audio_data",
    "read_audio",
    "read_audio_bytes",
    "read_audio_table",
    "samples_from_pattern",
    "scan_audio_folder",
]

_FORMAT_EXTENSIONS = {"WAV": {".wav"}, "WAVEX": {".wav"}, "FLAC": {".flac"}, "OGG": {".ogg", ".oga"},
                      "MP3": {".mp3"}, "AIFF": {".aiff", ".aif", ".aifc"}, "AU": {".au"}, "CAF": {".caf"},
                      "W64": {".w64"}, "RF64": {".rf64"}}
_FORMATS = soundfile.available_formats()
AUDIO_EXTENSIONS: frozenset[str] = frozenset(
    {ext for name, exts in _FORMAT_EXTENSIONS.items() if name in _FORMATS for ext in exts}
    | ({".opus"} if "OGG" in _FORMATS and "OPUS" in soundfile.available_subtypes("OGG") else set())
)
MIN_SECONDS = 0.05
_SILENT_PEAK = 1e-4
_FULL_SCALE = 0.999
_CLIPPED_SHARE = 0.01
_TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".jsonl": None, ".ndjson": None, ".parquet": None,
                   ".pq": None}
_PATH_COLUMNS = ("path", "file", "filename", "audio", "wav", "filepath", "audio_path")
_LABEL_COLUMNS = ("label", "class", "category", "target", "y")
_GROUP_COLUMNS = ("speaker", "group", "speaker_id", "client_id", "subject")
_VAL_NAMES = ("val", "valid", "validation")


class AudioDecodeError(DataError):
    """One file could not be used as audio; ``reason`` says why in a few words."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"Cannot use {path} as audio: {reason}.",
                         fix="Remove or replace the file; headstart skips such files when loading a dataset.")


@dataclass
class AudioSamples:
    """Labelled audio files: ``labels[i]`` indexes ``classes`` for ``paths[i]``; optional group and seconds each."""

    paths: list[Path]
    labels: list[int]
    classes: list[str]
    groups: list[str] | None = None
    durations: list[float] | None = None
    root: Path | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def class_counts(self) -> dict[str, int]:
        counts = Counter(self.labels)
        return {name: counts.get(index, 0) for index, name in enumerate(self.classes)}

    def subset(self, indices: Iterable[int]) -> AudioSamples:
        chosen = [int(i) for i in indices]
        pick = (lambda values: None if values is None else [values[i] for i in chosen])
        return AudioSamples(pick(self.paths), pick(self.labels), list(self.classes), pick(self.groups),
                            pick(self.durations), self.root)

    @classmethod
    def from_lists(cls, paths: Sequence[str | os.PathLike[str]], labels: Sequence[str], *,
                   classes: Sequence[str] | None = None, groups: Sequence[str] | None = None,
                   durations: Sequence[float] | None = None, root: Path | None = None) -> AudioSamples:
        """Build samples from parallel lists; ``classes`` defaults to the sorted distinct labels.

        >>> AudioSamples.from_lists(["a.wav", "b.wav"], ["yes", "no"]).labels
        [1, 0]

        Raises:
            ParameterError: the lists differ in length.
            DataError: a label is not in ``classes``.
        """
        for name, values in (("labels", labels), ("groups", groups), ("durations", durations)):
            if values is not None and len(values) != len(paths):
                raise ParameterError(f"AudioSamples.from_lists needs one '{name}' entry per path: got {len(values)} "
                                     f"for {len(paths)} paths.", fix="Pass lists of equal length.")
        names = [str(label) for label in labels]
        class_names = [str(c) for c in classes] if classes is not None else sort_class_names(set(names))
        unknown = sorted(set(names) - set(class_names))
        if unknown:
            raise DataError(f"Labels {unknown[:10]} are not among the classes {class_names}.",
                            fix="Add them to 'classes' or remove those samples.")
        index = {name: i for i, name in enumerate(class_names)}
        return cls([Path(p) for p in paths], [index[n] for n in names], class_names,
                   None if groups is None else [str(g) for g in groups],
                   None if durations is None else [float(d) for d in durations], root)


@dataclass
class AudioSplits:
    """Train / validation / optional test samples, every skipped file, how the split was made, and notes."""

    train: AudioSamples
    val: AudioSamples
    test: AudioSamples | None = None
    skipped: list[SkippedFile] = field(default_factory=list)
    split: str = "given"
    notes: list[str] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return self.train.classes

    def summary(self) -> dict[str, object]:
        parts = {"train": self.train, "val": self.val, "test": self.test}
        return {
            "classes": self.classes, "split": self.split,
            **{name: None if part is None else part.class_counts() for name, part in parts.items()},
            "seconds": {name: round(float(sum(part.durations)), 2) for name, part in parts.items()
                        if part is not None and part.durations is not None},
            "groups": {name: len(set(part.groups)) for name, part in parts.items()
                       if part is not None and part.groups is not None},
            "skipped_count": len(self.skipped),
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
            "notes": list(self.notes),
        }


def read_audio(path: str | os.PathLike[str], *, sample_rate: int) -> np.ndarray:
    """Decode a file into float32 mono samples in [-1, 1] at ``sample_rate`` Hz (channels averaged, soxr HQ).

    Raises:
        ParameterError: ``sample_rate`` is not a positive integer.
        AudioDecodeError: the file is empty, not audio, truncated, holds no frames or non-finite samples.
    """
    _check_rate(sample_rate)
    path = Path(path)
    try:
        empty = path.stat().st_size == 0
    except OSError as error:
        raise AudioDecodeError(path, _library_reason(error)) from None
    if empty:
        raise AudioDecodeError(path, "the file is empty (0 bytes)")
    return _decode_audio(path, name=path, sample_rate=sample_rate)


def read_audio_bytes(data: bytes, *, name: str = "upload", sample_rate: int) -> np.ndarray:
    """Decode audio held in memory (an upload) exactly like :func:`read_audio` decodes a file.

    Raises:
        AudioDecodeError: the bytes are empty or not decodable audio (the message names ``name``).
    """
    _check_rate(sample_rate)
    if not data:
        raise AudioDecodeError(name, "it is empty (0 bytes)")
    return _decode_audio(io.BytesIO(data), name=name, sample_rate=sample_rate)


def _check_rate(sample_rate: Any) -> None:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise ParameterError(f"The 'sample_rate' parameter must be a positive integer (Hz). Got {sample_rate!r}.",
                             fix="Pass sample_rate=16000, for example.")


def _decode_audio(source: Path | io.BytesIO, *, name: str | Path, sample_rate: int) -> np.ndarray:
    try:
        data, rate = soundfile.read(source, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, OSError, ValueError, EOFError, TypeError) as error:
        raise AudioDecodeError(name, _library_reason(error)) from None
    if data.shape[0] == 0:
        raise AudioDecodeError(name, "it holds no audio frames")
    if not np.isfinite(data).all():
        raise AudioDecodeError(name, "it holds NaN or infinite samples")
    wave = data.mean(axis=1)
    if rate != sample_rate:
        wave = soxr.resample(wave, rate, int(sample_rate), quality="HQ")
    return np.clip(wave, -1.0, 1.0).astype(np.float32, copy=False)


def _library_reason(error: BaseException) -> str:
    detail = (getattr(error, "error_string", "") or str(error) or type(error).__name__).strip().rstrip(".")
    if isinstance(error, FileNotFoundError):
        return "file not found"
    if "Format not recognised" in detail or "unknown format" in detail.lower():
        return f"not an audio format libsndfile can read ({detail})"
    return detail


def inspect_audio(path: str | os.PathLike[str]) -> tuple[float, str | None, str | None]:
    """Check one file without resampling: its duration, a problem that makes it unusable, and a warning.

    Returns:
        ``(seconds, problem, warning)``: problem is e.g. ``"too short (0.01 s)"`` or ``"silent"``; warning is
        e.g. ``"clipped (4.2% of samples at full scale)"``. Both are None for a good file.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return 0.0, "the file is empty (0 bytes)", None
        with soundfile.SoundFile(path) as audio:
            frames, rate = audio.frames, audio.samplerate
            seconds = frames / rate if rate else 0.0
            if frames <= 0:
                return 0.0, "too short (no audio frames)", None
            if seconds < MIN_SECONDS:
                return seconds, f"too short ({seconds:.2f} s)", None
            peak, clipped, total = 0.0, 0, 0
            for block in audio.blocks(blocksize=1 << 18, dtype="float32", always_2d=True):
                magnitude = np.abs(block)
                if not np.isfinite(magnitude).all():
                    return seconds, "it holds NaN or infinite samples", None
                peak = max(peak, float(magnitude.max(initial=0.0)))
                clipped += int(np.count_nonzero(magnitude >= _FULL_SCALE))
                total += magnitude.size
    except (soundfile.LibsndfileError, RuntimeError, OSError, ValueError, EOFError) as error:
        return 0.0, _library_reason(error), None
    if total == 0:
        return seconds, "too short (no audio frames could be decoded)", None
    if peak < _SILENT_PEAK:
        return seconds, "silent", None
    share = clipped / total
    warning = f"clipped ({share:.1%} of samples at full scale)" if share > _CLIPPED_SHARE else None
    return seconds, None, warning


def _inspect_files(candidates: list[tuple[Path, str, str | None]], root: Path, role: str, *,
                   classes: list[str] | None = None, required: set[str] | None = None,
                   group_pattern: str | None = None) -> tuple[AudioSamples, list[SkippedFile], list[str]]:
    """Inspect (path, label, group) triples in parallel -> usable samples, skipped files, notes.

    Raises:
        DataError: no usable file, a ``required`` class (default: every label) with no usable file, fewer than
            two training classes, or a name that ``group_pattern`` does not match.
    """
    if group_pattern is not None:
        groups = _groups_from_names([file for file, _, _ in candidates], group_pattern, role)
        candidates = [(file, label, group) for (file, label, _), group in zip(candidates, groups)]
    with ThreadPoolExecutor(max_workers=min(16, 4 * (os.cpu_count() or 2))) as pool:
        results = list(pool.map(lambda item: inspect_audio(item[0]), candidates))
    kept = [(c, r[0]) for c, r in zip(candidates, results) if r[1] is None]
    skipped = [SkippedFile(str(c[0]), r[1]) for c, r in zip(candidates, results) if r[1] is not None]
    clipped = [c[0].name for c, r in zip(candidates, results) if r[1] is None and r[2] is not None]
    required = {label for _, label, _ in candidates} if required is None else required
    samples = AudioSamples.from_lists(
        [c[0] for c, _ in kept], [c[1] for c, _ in kept], classes=classes or sort_class_names(required),
        groups=[c[2] for c, _ in kept] if any(c[2] is not None for c in candidates) else None,
        durations=[seconds for _, seconds in kept], root=root)
    empty = sorted(name for name, count in samples.class_counts().items() if count == 0 and name in required)
    if not kept or empty:
        raise DataError(f"The {role} data {root} has " + (f"classes with no usable audio file: {empty}" if kept
                        else "no usable audio file") + f" ({len(skipped)} files skipped, e.g. "
                        f"{[(Path(s.path).name, s.reason) for s in skipped[:3]]}).",
                        fix="Add readable audio files (.wav, .flac, .ogg, ...) or remove the empty classes.")
    if role == "training" and len(samples.classes) < 2:
        raise DataError(f"The {role} data {root} has one class {samples.classes}; at least two are needed.",
                        fix="Add files of a second class.")
    notes = []
    if clipped:
        notes.append(f"{len(clipped)} files are clipped (>{_CLIPPED_SHARE:.0%} of samples at full scale): "
                     + ", ".join(clipped[:5]) + (f" and {len(clipped) - 5} more" if len(clipped) > 5 else ""))
    if samples.groups is not None and group_pattern is not None:
        notes.append(f"groups: {len(set(samples.groups))} from pattern {group_pattern!r} on {role} file names")
    return samples, skipped, notes


def _list_audio_files(folder: Path) -> tuple[list[Path], list[SkippedFile]]:
    audio, skipped = [], []
    for directory, subdirectories, files in os.walk(folder):
        subdirectories[:] = sorted(d for d in subdirectories if not _is_hidden(d))
        for file in (Path(directory) / name for name in sorted(files) if not _is_hidden(name)):
            if file.suffix.lower() in AUDIO_EXTENSIONS:
                audio.append(file)
            else:
                skipped.append(SkippedFile(str(file), f"extension {file.suffix or '(none)'!r} is not an audio type"))
    return audio, skipped


def _compile_group_pattern(pattern: str) -> re.Pattern[str]:
    try:
        compiled = re.compile(pattern)
    except re.error as error:
        raise ParameterError(f"The pattern {pattern!r} is not a valid regular expression ({error}).",
                             fix=r"Use one capture group, e.g. r'^\d+_([^_]+)_'.") from None
    if compiled.groups != 1:
        raise ParameterError(f"The pattern {pattern!r} must have exactly one capture group (the part to keep). "
                             f"Found {compiled.groups}.", fix=r"Use one pair of parentheses, e.g. r'^\d+_([^_]+)_'.")
    return compiled


def group_from_pattern(path: str | os.PathLike[str], pattern: str) -> str:
    r"""The part of a file's name that ``pattern``'s single capture group matches (``re.search``).

    >>> group_from_pattern("recordings/3_george_12.wav", r"^\d+_([^_]+)_")
    'george'

    Raises:
        ParameterError: the pattern is invalid or does not have exactly one capture group.
        DataError: the name does not match, or the group matches nothing.
    """
    match = _compile_group_pattern(pattern).search(Path(path).name)
    if match is None or not match.group(1):
        raise DataError(f"The file name {Path(path).name!r} ({path}) does not match the pattern {pattern!r}"
                        " (or its capture group is empty).",
                        fix="Change the pattern so its capture group matches every file name, or rename the file.")
    return match.group(1)


def _groups_from_names(paths: Sequence[Path], pattern: str, role: str) -> list[str]:
    compiled = _compile_group_pattern(pattern)
    matches = [compiled.search(p.name) for p in paths]
    failed = [p.name for p, m in zip(paths, matches) if m is None or not m.group(1)]
    if failed:
        raise DataError(f"{len(failed)} of {len(paths)} {role} file names do not match the group pattern {pattern!r},"
                        f" e.g. {failed[:3]}.", fix="Change --group-pattern so its capture group matches every name.")
    return [m.group(1) for m in matches]  # type: ignore[union-attr]


def scan_audio_folder(root: str | os.PathLike[str], *, classes: Sequence[str] | None = None, role: str = "training",
                      group_pattern: str | None = None, require_all_classes: bool = True
                      ) -> tuple[AudioSamples, list[SkippedFile], list[str]]:
    """Read a folder with one subfolder of audio files per class.

    Args:
        root: the folder.
        classes: the training classes, for validation or test data; other class folders are an error.
        role: a word for messages ("training", "val", "test").
        group_pattern: a regex whose one capture group gives each file's group (speaker) from its name.
        require_all_classes: with ``classes``, whether every class must have a folder.

    Returns:
        The usable samples (with durations), the skipped files, and notes (clipped files, groups).

    Raises:
        DataError: the folder is missing, has fewer than two class folders, a class with no usable file, or
            classes that differ from ``classes``.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"The {role} folder {root} does not exist or is not a folder.",
                        fix="Pass a folder that holds one subfolder of audio files per class.")
    found = sort_class_names(e.name for e in root.iterdir() if e.is_dir() and not _is_hidden(e.name))
    if classes is not None:
        missing, extra = sorted(set(classes) - set(found)), sorted(set(found) - set(classes))
        if extra or (require_all_classes and missing):
            raise DataError(f"The {role} folder {root} has different classes from the training data: missing "
                            f"{missing}, not in training data {extra}. Expected {list(classes)}.",
                            fix="Give every split the same class subfolders.")
    elif len(found) < 2:
        loose = [p.name for p in root.iterdir() if p.suffix.lower() in AUDIO_EXTENSIONS][:3]
        raise DataError(f"The {role} folder {root} must hold one subfolder per class, at least two. Found "
                        f"{found or 'no class folders'}" + (f" and loose audio files such as {loose}" if loose else "")
                        + ".", fix="Arrange files as ROOT/<class>/<file>.wav, or for labels in the file names pass "
                        r"--label-pattern (e.g. '^(\d+)_').")
    candidates: list[tuple[Path, str, str | None]] = []
    skipped: list[SkippedFile] = []
    for name in found:
        files, others = _list_audio_files(root / name)
        skipped += others
        candidates += [(file, name, None) for file in files]
    samples, bad, notes = _inspect_files(candidates, root, role, classes=list(classes or found), required=set(found),
                                         group_pattern=group_pattern)
    return samples, skipped + bad, notes


def samples_from_pattern(folder: str | os.PathLike[str], *, label_pattern: str, group_pattern: str | None = None,
                         role: str = "training") -> tuple[AudioSamples, list[SkippedFile], list[str]]:
    r"""Read a flat folder whose file names carry the label (and optionally the group), e.g. FSDD's
    ``3_george_12.wav`` with ``label_pattern=r"^(\d+)_"`` and ``group_pattern=r"^\d+_([^_]+)_"``.

    Audio files whose names do not match ``label_pattern`` are skipped and listed.

    Raises:
        ParameterError: a pattern is invalid or has not exactly one capture group.
        DataError: the folder is missing, fewer than two labels match, or a name does not match ``group_pattern``.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DataError(f"The folder {root} does not exist or is not a folder.", fix="Check the data path.")
    compiled = _compile_group_pattern(label_pattern)
    files, skipped = _list_audio_files(root)
    candidates: list[tuple[Path, str, str | None]] = []
    for file in files:
        match = compiled.search(file.name)
        if match is None or not match.group(1):
            skipped.append(SkippedFile(str(file), f"file name does not match the label pattern {label_pattern!r}"))
        else:
            candidates.append((file, match.group(1), None))
    samples, bad, notes = _inspect_files(candidates, root, role, group_pattern=group_pattern)
    notes.insert(0, f"labels: {len(samples.classes)} classes from pattern {label_pattern!r} on file names")
    return samples, skipped + bad, notes


def _read_table(path: Path) -> pandas.DataFrame:
    import pandas as pd

    suffix = path.suffix.lower()
    if suffix not in _TABLE_SUFFIXES:
        raise DataError(f"{path} is not a table headstart can read (suffix {suffix!r}).",
                        fix=f"Use one of {sorted(_TABLE_SUFFIXES)}.")
    try:
        if suffix in {".parquet", ".pq"}:
            return pd.read_parquet(path)
        if suffix in {".jsonl", ".ndjson"}:
            return pd.read_json(path, lines=True, dtype=False)
        return pd.read_csv(path, sep=_TABLE_SUFFIXES[suffix], dtype=str, keep_default_na=False)
    except (OSError, ValueError, ImportError) as error:
        raise DataError(f"Cannot read the table {path}: {error}.", fix="Check that the file is a valid table.") from None


def _find_column(columns: list[str], given: str | None, names: Sequence[str], what: str, option: str,
                 path: Path, required: bool = True) -> str | None:
    if given is not None:
        if given not in columns:
            raise DataError(f"The table {path} has no column {given!r} (the {what} column). Columns: {columns}.",
                            fix=f"Pass {option} with one of {columns}.")
        return given
    by_name = {str(c).strip().lower(): c for c in columns}
    for name in names:
        if name in by_name:
            return by_name[name]
    if required:
        raise DataError(f"Cannot tell which column of {path} holds the {what}: expected one named one of "
                        f"{list(names)}. Columns: {columns}.", fix=f"Pass {option} NAME (one of {columns}).")
    return None


def _as_text(value: object) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == "":
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def read_audio_table(path: str | os.PathLike[str], *, path_column: str | None = None, label_column: str | None = None,
                     group_column: str | None = None, group_pattern: str | None = None, role: str = "training"
                     ) -> tuple[AudioSamples, list[SkippedFile], list[str]]:
    """Read a CSV/TSV/JSONL/Parquet table with a file-path column, a label column and optionally a group column.

    Columns are found by name unless given. Relative paths are resolved against the table's folder. Rows whose
    file is missing, unreadable or has no label are skipped and listed. ``group_pattern`` (applied to file names)
    replaces a group column.

    Returns:
        The usable samples (with durations, and groups when a group column exists), skipped rows, notes.

    Raises:
        DataError: the table cannot be read, a column cannot be found, or no row is usable.
    """
    table_path = Path(path).expanduser()
    frame = _read_table(table_path)
    columns = [str(c) for c in frame.columns]
    file_col = _find_column(columns, path_column, _PATH_COLUMNS, "file paths", "--path-col", table_path)
    label_col = _find_column(columns, label_column, _LABEL_COLUMNS, "labels", "--label-col", table_path)
    group_col = None if group_pattern is not None else _find_column(
        columns, group_column, _GROUP_COLUMNS, "groups", "--group-col", table_path, required=False)
    candidates: list[tuple[Path, str, str | None]] = []
    skipped: list[SkippedFile] = []
    for row, record in enumerate(frame.to_dict("records"), start=2):
        where = f"{table_path}:{row}"
        file_text, label = _as_text(record[file_col]), _as_text(record[label_col])
        group = _as_text(record[group_col]) if group_col is not None else None
        if file_text is None or label is None or (group_col is not None and group is None):
            skipped.append(SkippedFile(file_text or where, f"row {row} has an empty path, label or group"))
            continue
        file = Path(file_text).expanduser()
        file = file if file.is_absolute() else table_path.parent / file
        if not file.is_file():
            skipped.append(SkippedFile(str(file), f"file not found (row {row} of {table_path.name})"))
            continue
        candidates.append((file, label, group))
    samples, bad, notes = _inspect_files(candidates, table_path, role, group_pattern=group_pattern)
    samples.root = table_path.parent
    if group_col is not None:
        notes.append(f"groups: {len(set(samples.groups or []))} from column {group_col!r} of {table_path.name}")
    return samples, skipped + bad, notes


def group_split(labels: Sequence[int], groups: Sequence[str], *, fraction: float, seed: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (keep, holdout) so that no group is on both sides, stratified by label where possible.

    StratifiedGroupKFold with ``round(1 / fraction)`` folds is run and the fold whose share of samples is closest
    to ``fraction`` (preferring folds that leave every class in ``keep``) becomes the holdout.

    Raises:
        ParameterError: ``fraction`` not in (0, 1) or lengths differ.
        DataError: fewer than two distinct groups.
    """
    from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

    if not 0.0 < fraction < 1.0:
        raise ParameterError(f"The 'fraction' parameter must be between 0 and 1 (exclusive). Got {fraction!r}.",
                             fix="Pass 0.2, for example.")
    y, g = np.asarray(labels), np.asarray([str(x) for x in groups])
    if len(y) != len(g):
        raise ParameterError(f"group_split needs one group per label: got {len(g)} groups for {len(y)} labels.",
                             fix="Pass lists of equal length.")
    n_groups = len(set(g.tolist()))
    if n_groups < 2:
        raise DataError(f"Cannot hold out whole groups: found {n_groups} distinct group(s), at least 2 are needed.",
                        fix="Pass separate validation data (--val), or a group pattern/column that finds more groups.")
    n_splits = min(max(2, round(1 / fraction)), n_groups)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns when a class has fewer members than folds
        try:
            folds = [held for _, held in StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed).split(y, y, g)]
        except ValueError:
            folds = []
    folds = [f for f in folds if 0 < len(f) < len(y)] or [
        held for _, held in GroupShuffleSplit(n_splits, test_size=fraction, random_state=seed).split(y, y, g)]
    # Prefer a fold that leaves every class some training samples, then the share closest to `fraction`.
    holdout = np.sort(min(folds, key=lambda held: (len(set(y.tolist()) - set(np.delete(y, held).tolist())),
                                                   abs(len(held) / len(y) - fraction))))
    keep = np.setdiff1d(np.arange(len(y)), holdout)
    return keep, holdout


def _find_split_folders(root: Path) -> dict[str, Path]:
    names = {e.name.lower(): e for e in root.iterdir() if e.is_dir()} if root.is_dir() else {}
    found: dict[str, Path] = {}
    others = {n for n, e in names.items() if not _is_hidden(e.name)} - {"train", "test", *_VAL_NAMES}
    if "train" in names and (names.keys() & {"test", *_VAL_NAMES} or not others):
        found["train"] = names["train"]
        for key in (*_VAL_NAMES, "test"):
            if key in names:
                found.setdefault("test" if key == "test" else "val", names[key])
    return found


def _load_source(source: str | os.PathLike[str] | AudioSamples, role: str, classes: list[str] | None,
                 options: dict[str, str | None]) -> tuple[AudioSamples, list[SkippedFile], list[str]]:
    """Any kind of source -> samples whose labels index ``classes`` (the training classes) when given."""
    if isinstance(source, AudioSamples):
        samples, skipped, notes = source, [], []
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise DataError(f"The {role} data {path} does not exist.", fix="Check the path passed for the data.")
        pattern = options.pop("label_pattern")
        if path.is_file():
            samples, skipped, notes = read_audio_table(path, **options, role=role)
        elif pattern is not None:
            samples, skipped, notes = samples_from_pattern(path, label_pattern=pattern,
                                                           group_pattern=options["group_pattern"], role=role)
        else:
            return scan_audio_folder(path, classes=classes, role=role, group_pattern=options["group_pattern"],
                                     require_all_classes=False)
    extra = sorted({samples.classes[i] for i in samples.labels} - set(classes or samples.classes))
    if extra:
        raise DataError(f"The {role} data has classes that are not in the training data: {extra}. Training classes:"
                        f" {classes}.", fix=f"Remove those samples from the {role} data or add them to training.")
    return AudioSamples.from_lists(samples.paths, [samples.classes[i] for i in samples.labels],
                                   classes=classes or samples.classes, groups=samples.groups,
                                   durations=samples.durations, root=samples.root), skipped, notes


def read_labelled_audio(source: str | os.PathLike[str] | AudioSamples, *, classes: list[str],
                        path_column: str | None = None, label_column: str | None = None,
                        label_pattern: str | None = None) -> tuple[AudioSamples, list[SkippedFile], list[str]]:
    """Labelled audio for evaluation (class folders, a flat folder with ``label_pattern``, a table), indexed by a
    model's ``classes``.

    Raises:
        DataError: unreadable data, or labels that are not among ``classes``.
    """
    options = {"path_column": path_column, "label_column": label_column, "group_column": None,
               "group_pattern": None, "label_pattern": label_pattern}
    return _load_source(source, "evaluation", list(classes), options)


def load_audio_dataset(data: str | os.PathLike[str] | AudioSamples, *,
                       val: str | os.PathLike[str] | AudioSamples | None = None,
                       test: str | os.PathLike[str] | AudioSamples | None = None, path_column: str | None = None,
                       label_column: str | None = None, group_column: str | None = None,
                       group_pattern: str | None = None, label_pattern: str | None = None, val_fraction: float = 0.2,
                       seed: int = 0) -> AudioSplits:
    """Load labelled audio and its validation (and test) data, before any training starts.

    ``data`` is a folder of class folders, a folder with ``train/`` and ``val/``/``valid/``/``validation/``
    (optionally ``test/``), a flat folder with ``label_pattern``, a table file, or :class:`AudioSamples`; ``val``
    and ``test`` likewise. Without validation data, ``val_fraction`` is held out: by whole groups when groups are
    known (:func:`group_split`), else stratified by class. Groups shared by given splits are reported in the notes.

    Raises:
        DataError: see the source readers; also when a class has too few samples to hold any out.
    """
    options = {"path_column": path_column, "label_column": label_column, "group_column": group_column,
               "group_pattern": group_pattern, "label_pattern": label_pattern}
    splits = {} if isinstance(data, AudioSamples) else _find_split_folders(Path(data).expanduser())
    train, skipped, notes = _load_source(splits.get("train", data), "training", None, dict(options))
    if len(train.classes) < 2 or min(train.class_counts().values()) == 0:
        raise DataError(f"The training samples need at least two classes, each with a sample. Found "
                        f"{train.class_counts()}.", fix="Pass samples of two or more classes.")
    parts: dict[str, AudioSamples | None] = {"val": None, "test": None}
    for role, given in (("val", val), ("test", test)):
        source = given if given is not None else splits.get(role)
        if source is not None:
            part, part_skipped, part_notes = _load_source(source, role, train.classes, dict(options))
            skipped += part_skipped
            notes += part_notes
            absent = [name for name, count in part.class_counts().items() if count == 0]
            if absent:
                notes.append(f"{role} has no samples of classes {absent}")
            if train.groups is not None and part.groups is not None:
                shared = sorted(set(train.groups) & set(part.groups))
                if shared:
                    notes.append(f"leakage warning: {len(shared)} groups are in both training and {role} data "
                                 f"(e.g. {shared[:5]}), so {role} scores may be optimistic")
            parts[role] = part
    if parts["val"] is not None:
        split = f"given: val from {val if val is not None else splits['val']}"
    elif train.groups is not None:
        keep, holdout = group_split(train.labels, train.groups, fraction=val_fraction, seed=seed)
        n_groups, n_held = len(set(train.groups)), len({train.groups[i] for i in holdout})
        train, parts["val"] = train.subset(keep), train.subset(holdout)
        missing = [name for name, count in train.class_counts().items() if count == 0]
        if missing:
            raise DataError(f"Holding out whole groups leaves classes {missing} with no training sample (each is "
                            "found in too few groups).", fix="Pass separate validation data with --val.")
        split = f"grouped: {len(holdout) / (len(keep) + len(holdout)):.0%} of samples held out (seed {seed})"
        notes.append(f"group split: {n_held} of {n_groups} groups held out for validation; no group in two splits")
    else:
        small = [name for name, count in train.class_counts().items() if count < 2]
        if small:
            raise DataError(f"Cannot hold out validation samples: classes {small} have fewer than 2 usable files.",
                            fix="Add files to those classes, or pass separate validation data with --val.")
        train, parts["val"] = stratified_split(train, val_fraction=val_fraction, seed=seed)  # type: ignore[arg-type]
        split = f"stratified: {val_fraction:.0%} held out for validation (seed {seed})"
    return AudioSplits(train=train, val=parts["val"], test=parts["test"], skipped=skipped, split=split, notes=notes)


def choose_clip_seconds(durations: Sequence[float], *, quantile: float = 0.95, max_seconds: float = 10.0) -> float:
    """A clip length covering ``quantile`` of the clips, rounded up to 0.1 s, at least 0.5 s, at most ``max_seconds``.

    >>> choose_clip_seconds([0.3, 0.41, 0.62, 0.8], quantile=1.0)
    0.8
    >>> choose_clip_seconds([30.0], max_seconds=10.0)
    10.0

    Raises:
        ParameterError: no durations, or ``quantile``/``max_seconds`` out of range.
    """
    if len(durations) == 0:
        raise ParameterError("choose_clip_seconds needs at least one duration. Got none.", fix="Pass the clip lengths.")
    if not 0.0 < quantile <= 1.0 or max_seconds <= 0:
        raise ParameterError(f"'quantile' must be in (0, 1] and 'max_seconds' > 0. Got {quantile!r} and {max_seconds!r}.",
                             fix="Pass quantile=0.95, max_seconds=10.0, for example.")
    covered = float(np.quantile(np.asarray(durations, dtype=np.float64), quantile))
    rounded = math.ceil(round(covered * 10, 6)) / 10
    return round(min(max(rounded, 0.5), float(max_seconds)), 3)


def fit_length(wave: np.ndarray, n_samples: int, *, rng: np.random.Generator | None = None) -> np.ndarray:
    """Zero-pad at the end or crop a 1-D wave to ``n_samples``: a centre crop, or a random one when ``rng`` is given.

    >>> fit_length(np.arange(5.0), 3).tolist(), fit_length(np.ones(2), 4).tolist()
    ([1.0, 2.0, 3.0], [1.0, 1.0, 0.0, 0.0])

    Raises:
        ParameterError: ``n_samples`` < 1 or ``wave`` is not 1-D.
    """
    wave = np.asarray(wave)
    if wave.ndim != 1 or int(n_samples) < 1:
        raise ParameterError(f"fit_length needs a 1-D wave and n_samples >= 1. Got shape {wave.shape} and "
                             f"n_samples={n_samples!r}.", fix="Mix to mono first and pass a positive length.")
    extra = len(wave) - int(n_samples)
    if extra <= 0:
        return np.pad(wave, (0, -extra))
    start = extra // 2 if rng is None else int(rng.integers(0, extra + 1))
    return wave[start:start + int(n_samples)]


def looks_like_audio_data(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder of mostly audio files (first ~200 looked at) or a table of audio file paths."""
    path = Path(path).expanduser()
    try:
        if path.is_dir():
            names: list[str] = []
            for directory, subdirectories, files in os.walk(path):
                subdirectories[:] = sorted(d for d in subdirectories if not _is_hidden(d))
                names += [n for n in sorted(files) if not _is_hidden(n)][: 200 - len(names)]
                if len(names) >= 200:
                    break
            audio = sum(Path(n).suffix.lower() in AUDIO_EXTENSIONS for n in names)
            return audio > 0 and audio * 2 > len(names)
        if path.is_file() and path.suffix.lower() in _TABLE_SUFFIXES:
            frame = _read_table(path)
            column = _find_column([str(c) for c in frame.columns], None, _PATH_COLUMNS, "paths", "", path, False)
            values = [str(v) for v in frame[column].head(200)] if column is not None else []
            audio = sum(Path(v).suffix.lower() in AUDIO_EXTENSIONS for v in values)
            return audio > 0 and audio * 2 > len(values)
    except (OSError, DataError, ValueError, KeyError):
        return False
    return False
