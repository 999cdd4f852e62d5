"""Where labelled audio comes from -> :class:`AudioSamples`: class folders, label patterns on file names, tables.

Separate from loading (which combines sources into splits): each reader here turns one source into samples,
inspects every file once in parallel and lists the skipped ones; groups come from a pattern or a table column.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from headstart.data.audio.samples import AudioSamples
from headstart.data.audio.waves import _CLIPPED_SHARE, AUDIO_EXTENSIONS, inspect_audio
from headstart.data.images import SkippedFile, _is_hidden
from headstart.data.text import sort_class_names
from headstart.errors import DataError, ParameterError

if TYPE_CHECKING:
    import pandas

__all__ = [
    "group_from_pattern",
    "looks_like_audio_data",
    "read_audio_table",
    "samples_from_pattern",
    "scan_audio_folder",
]

_TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".jsonl": None, ".ndjson": None, ".parquet": None,
                   ".pq": None}
_PATH_COLUMNS = ("path", "file", "filename", "audio", "wav", "filepath", "audio_path")
_LABEL_COLUMNS = ("label", "class", "category", "target", "y")
_GROUP_COLUMNS = ("speaker", "group", "speaker_id", "client_id", "subject")


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
