"""Text dataset layouts: class folders of .txt files, train/ val/ test/ folders, tables named for their split.

Separate from the table readers: this file decides which files make up each split (and whether a path looks
like text data at all, so a command can pick the text pipeline); reading one file is left to
:mod:`~headstart.data.text.tables`.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from headstart.data.images import SkippedFile
from headstart.data.text.tables import (
    _ENCODING_NOTES,
    _LAYOUT_FIX,
    TEXT_COLUMN_NAMES,
    TEXT_TABLE_SUFFIXES,
    Row,
    _cell,
    _decode,
    _norm,
    _table_records,
)
from headstart.errors import DataError

__all__ = ["looks_like_text_data"]

_SPLIT_WORDS = {"train": ("train", "training"), "val": ("val", "valid", "validation", "dev"),
                "test": ("test", "testing")}
_AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac")
_SYSTEM_NAMES = frozenset({"__MACOSX", "__pycache__", "Thumbs.db", "desktop.ini", "@eaDir"})


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name in _SYSTEM_NAMES


def _class_folders(root: Path) -> list[Path]:
    return sorted(entry for entry in root.iterdir() if entry.is_dir() and not _is_hidden(entry.name))


def _walk_files(folder: Path) -> Iterable[Path]:
    for directory, subdirectories, files in os.walk(folder):
        subdirectories[:] = sorted(d for d in subdirectories if not _is_hidden(d))
        yield from (Path(directory) / name for name in sorted(files) if not _is_hidden(name))


def _rows_from_folder(root: Path, role: str) -> tuple[list[Row], list[SkippedFile], list[str]]:
    """One sample per .txt file (or file without extension) under ROOT/<class>/."""
    classes = _class_folders(root)
    if not classes:
        loose = [p.name for p in root.iterdir() if not _is_hidden(p.name)][:5]
        raise DataError(f"The {role} folder {root} holds no class subfolders" + (f" (found {loose})" if loose else "")
                        + ".", fix=_LAYOUT_FIX)
    rows: list[Row] = []
    skipped: list[SkippedFile] = []
    encodings: Counter[str] = Counter()
    for class_folder in classes:
        for file in _walk_files(class_folder):
            if file.suffix.lower() not in (".txt", ""):
                skipped.append(SkippedFile(str(file), f"extension {file.suffix!r} is not .txt"))
                continue
            try:
                text, encoding = _decode(file.read_bytes())
            except OSError as error:
                skipped.append(SkippedFile(str(file), f"cannot read: {error.strerror or error}"))
                continue
            encodings[encoding] += 1
            if text.strip():
                rows.append((text.strip(), class_folder.name, str(file)))
            else:
                skipped.append(SkippedFile(str(file), "empty text"))
    notes = [_ENCODING_NOTES[name].format(f"{count} files under {root}") for name, count in sorted(encodings.items())
             if name in _ENCODING_NOTES]
    return rows, skipped, notes


def _split_role(path: Path) -> str | None:
    tokens = set(re.split(r"[^a-z0-9]+", path.stem.lower()))
    roles = [role for role, words in _SPLIT_WORDS.items() if tokens & set(words)]
    return roles[0] if len(roles) == 1 else None


def _split_folders(root: Path) -> dict[str, Path]:
    """train/ val/ test/ subfolders, when train/ holds class folders (a class called "train" holds files)."""
    names = {entry.name.lower(): entry for entry in _class_folders(root)}
    if "train" not in names or not _class_folders(names["train"]):
        return {}
    found = {"train": names["train"]}
    for role in ("val", "test"):
        match = next((names[word] for word in _SPLIT_WORDS[role] if word in names), None)
        if match is not None:
            found[role] = match
    return found


def _split_tables(root: Path) -> dict[str, list[Path]]:
    tables = sorted(p for p in root.iterdir() if p.is_file() and not _is_hidden(p.name)
                    and p.suffix.lower() in TEXT_TABLE_SUFFIXES)
    return {role: [t for t in tables if _split_role(t) == role] for role in _SPLIT_WORDS}


def _split_sources(root: Path) -> dict[str, Path]:
    """The split layout of a folder ({} when it is a plain class folder). Raises when split tables are ambiguous."""
    folders = _split_folders(root)
    if folders:
        return folders
    tables = _split_tables(root)
    if not any(tables.values()):
        return {}
    problems = [f"several {role} tables {[t.name for t in found]}" for role, found in tables.items() if len(found) > 1]
    if problems or not tables["train"]:
        found = {role: [t.name for t in files] for role, files in tables.items() if files}
        raise DataError(f"The folder {root} holds tables named for splits, but "
                        + ("; ".join(problems) if problems else "none for train") + f". Found: {found}.",
                        fix="Keep one table per split with train, dev (or val) and test in its name, or pass the "
                            "train table itself and the validation table with --val.")
    return {role: found[0] for role, found in tables.items() if found}


def _table_looks_like_text(path: Path) -> bool:
    try:
        columns, records, _ = _table_records(path, head=True)
    except (DataError, OSError, ValueError):
        return False
    values = [_cell(value).strip().lower() for _, row, _ in records[:20] if row for value in row.values()]
    audio = any("audio" in _norm(c) for c in columns) or any(value.endswith(_AUDIO_SUFFIXES) for value in values)
    return not audio and any(_norm(c) in TEXT_COLUMN_NAMES for c in columns)


def _holds_text_files(root: Path) -> bool:
    files = [file for folder in _class_folders(root) for file in _walk_files(folder)]
    text_files = sum(file.suffix.lower() == ".txt" for file in files)
    return text_files > 0 and 2 * text_files >= len(files)


def looks_like_text_data(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` looks like a text dataset, so that a command can pick the text pipeline.

    True for a table with a text-named column and no audio-path column, a folder of class folders holding
    mostly .txt files, or a folder with train/ (class folders of .txt) or tables named for their splits.
    """
    path = Path(path).expanduser()
    try:
        if path.is_file():
            return path.suffix.lower() in TEXT_TABLE_SUFFIXES and _table_looks_like_text(path)
        if not path.is_dir():
            return False
        folders = _split_folders(path)
        if folders:
            return _holds_text_files(folders["train"])
        tables = [table for found in _split_tables(path).values() for table in found]
        if tables:
            return any(_table_looks_like_text(table) for table in tables)
        return _holds_text_files(path)
    except OSError:
        return False
