"""Text tables and text folders -> labelled text samples and splits.

A dataset is a table (.csv .tsv .jsonl .json .parquet) whose text and label columns are found by name; a folder
with one subfolder of .txt files per class; or a folder with train/ and val/ (valid/, validation/, dev/), maybe
test/, subfolders, or with tables named for their split (sst2_train.tsv, sst2_dev.tsv). Files are decoded here
(UTF-8, BOM-marked UTF-8/16, else cp1252), cells stay strings, and unusable rows are listed, never fatal.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from headstart.data.images import SkippedFile, stratified_split
from headstart.errors import DataError, ParameterError

__all__ = [
    "LABEL_COLUMN_NAMES",
    "TEXT_COLUMN_NAMES",
    "TEXT_TABLE_SUFFIXES",
    "TextSamples",
    "TextSplits",
    "load_text_dataset",
    "looks_like_text_data",
    "read_text_lines",
    "read_labelled_texts",
    "sort_class_names",
    "read_text_table",
]

TEXT_TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
TEXT_COLUMN_NAMES = ("text", "sentence", "review", "content", "document", "body", "comment", "message", "tweet",
                     "utterance", "question", "query", "title")
LABEL_COLUMN_NAMES = ("label", "labels", "class", "category", "target", "sentiment", "y", "intent", "topic")
_COLUMN_FIX = "Pass --text-col NAME / --label-col NAME (Python: text_column=..., label_column=...)."
_LAYOUT_FIX = ("Pass a table with a text and a label column, a folder with one subfolder of .txt files per class, "
               "or a folder with train/ and val/ subfolders or tables named *train*, *dev* (or *val*), *test*.")
_SPLIT_WORDS = {"train": ("train", "training"), "val": ("val", "valid", "validation", "dev"),
                "test": ("test", "testing")}
_AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac")
_SYSTEM_NAMES = frozenset({"__MACOSX", "__pycache__", "Thumbs.db", "desktop.ini", "@eaDir"})
_HEAD_BYTES = 256 * 1024  # enough of a file to see its columns and first rows
# Bytes 0x80-0x9F in cp1252, applied to a latin-1 decoding; 0x81, 0x8D, 0x8F, 0x90 and 0x9D are undefined in
# cp1252 and keep their latin-1 meaning, so decoding never fails.
_CP1252_FROM_LATIN1 = {b: bytes([b]).decode("cp1252") for b in range(0x80, 0xA0)
                       if b not in (0x81, 0x8D, 0x8F, 0x90, 0x9D)}
_ENCODING_NOTES = {"utf-8-sig": "{}: UTF-8 byte-order mark removed", "utf-16": "{}: UTF-16; decoded as such",
                   "cp1252": "{}: not UTF-8; read as cp1252"}

Row = tuple[str, "str | None", str]  # text, label, where ("FILE:LINE")


@dataclass
class TextSamples:
    """Labelled texts: ``labels[i]`` indexes ``classes`` for ``texts[i]``; ``source`` says where they came from.

    >>> samples = TextSamples.from_lists(["fine", "awful", "great"], ["10", "2", "10"])
    >>> samples.classes, samples.labels, samples.class_counts()
    (['2', '10'], [1, 0, 1], {'2': 1, '10': 2})
    """

    texts: list[str]
    labels: list[int]
    classes: list[str]
    source: str = ""

    def __len__(self) -> int:
        return len(self.texts)

    def class_counts(self) -> dict[str, int]:
        """Examples per class, for every class in ``classes`` (zero included), in that order."""
        counts = Counter(self.labels)
        return {name: counts.get(index, 0) for index, name in enumerate(self.classes)}

    def subset(self, indices: Iterable[int]) -> TextSamples:
        chosen = list(indices)
        return TextSamples([self.texts[i] for i in chosen], [self.labels[i] for i in chosen], list(self.classes),
                           self.source)

    @classmethod
    def from_lists(cls, texts: Sequence[str], labels: Sequence[str], *, classes: Sequence[str] | None = None,
                   source: str = "") -> TextSamples:
        """Build samples from texts and one label name per text.

        Args:
            classes: the class names in index order; by default the sorted label names (numerically when every
                name looks like a number: "2" before "10").
            source: where the texts came from, for messages.

        Raises:
            ParameterError: ``texts`` and ``labels`` differ in length.
            DataError: a label is not in ``classes``.
        """
        texts, names = [str(text) for text in texts], [str(label) for label in labels]
        if len(texts) != len(names):
            raise ParameterError(f"TextSamples.from_lists needs one label per text. Got {len(texts)} texts and "
                                 f"{len(names)} labels.", fix="Pass lists of the same length.")
        class_names = list(classes) if classes is not None else sort_class_names(set(names))
        index = {name: position for position, name in enumerate(class_names)}
        unknown = sorted(set(names) - set(index))
        if unknown:
            raise DataError(f"Labels {unknown} of {source or 'the texts'} are not among the classes {class_names}.",
                            fix="Add those labels to classes, or remove their rows.")
        return cls(texts, [index[name] for name in names], class_names, source)


@dataclass
class TextSplits:
    """Train / validation / optional test texts, every skipped row, how the split was made, and notes."""

    train: TextSamples
    val: TextSamples
    test: TextSamples | None = None
    skipped: list[SkippedFile] = field(default_factory=list)
    split: str = "given"
    notes: list[str] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return self.train.classes

    def summary(self) -> dict[str, object]:
        """A JSON-serialisable account of the splits: sizes and counts per class, the split, skipped rows, notes."""
        parts = {"train": self.train, "val": self.val, "test": self.test}
        return {
            "classes": list(self.classes), "split": self.split,
            "sizes": {role: None if part is None else len(part) for role, part in parts.items()},
            **{role: None if part is None else part.class_counts() for role, part in parts.items()},
            "skipped_count": len(self.skipped),
            "skipped": [{"path": item.path, "reason": item.reason} for item in self.skipped],
            "notes": list(self.notes),
        }


def sort_class_names(names: Iterable[str]) -> list[str]:
    """Sorted class names, numerically when every name is a number ("2" before "10").

    >>> sort_class_names(["10", "2", "1"])
    ['1', '2', '10']
    """
    names = list(names)
    if names and all(re.fullmatch(r"[+-]?\d+(\.\d+)?", name) for name in names):
        return sorted(names, key=lambda name: (float(name), name))
    return sorted(names)


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name in _SYSTEM_NAMES


def _decode(raw: bytes) -> tuple[str, str]:
    """Bytes -> (text, encoding used). Never raises: what is not UTF-8 is read as cp1252."""
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return raw.decode("utf-16", errors="replace"), "utf-16"
    encoding = "utf-8"
    if raw.startswith(codecs.BOM_UTF8):
        raw, encoding = raw[len(codecs.BOM_UTF8):], "utf-8-sig"
    try:
        return raw.decode("utf-8"), encoding
    except UnicodeDecodeError:
        return raw.decode("latin-1").translate(_CP1252_FROM_LATIN1), "cp1252"


def _cell(value: object) -> str:
    """A table cell as a string: missing -> "", 1.0 -> "1" (integer labels stored as floats with gaps)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


Records = list[tuple[str, "dict[str, object] | None", str]]  # (where, values or None, problem)


def _delimited_records(text: str, where: str, delimiter: str) -> tuple[list[str], Records]:
    # TSV has no quoting convention: quote characters are text ("a `` quoted '' word"), so quoting is off.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    header: list[str] | None = None
    records: Records = []
    next_line = 1
    old_limit = csv.field_size_limit(2**31 - 1)  # long documents exceed the default 128 KiB per field
    try:
        for fields in reader:
            line, next_line = next_line, reader.line_num + 1
            if not any(value.strip() for value in fields):
                continue
            if header is None:
                header = [value.strip() for value in fields]
                continue
            while len(fields) > len(header) and not fields[-1].strip():
                fields.pop()  # trailing delimiters
            if len(fields) != len(header):
                hint = " (an unclosed quote?)" if any("\n" in value for value in fields) else ""
                records.append((f"{where}:{line}", None, f"expected {len(header)} fields, found {len(fields)}{hint}"))
            else:
                records.append((f"{where}:{line}", dict(zip(header, fields)), ""))
    except csv.Error as error:
        raise DataError(f"Cannot parse {where} near line {reader.line_num}: {error}.",
                        fix="Fix that line of the file (or save it again from a spreadsheet as CSV).") from None
    finally:
        csv.field_size_limit(old_limit)
    return header or [], records


def _json_records(text: str, where: str) -> tuple[list[str], Records]:
    columns: dict[str, None] = {}
    records: Records = []
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataError(f"{where} is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}.",
                            fix="Fix the file, or write it as JSON Lines (one object per line) so that a bad row "
                                "is skipped instead.") from None
        numbered = [(f"{where}:item {number}", item, "") for number, item in enumerate(items, 1)]
    else:  # JSON Lines; split on "\n" only, since U+2028 and friends may sit inside JSON strings
        numbered = []
        for number, line in enumerate(text.split("\n"), 1):
            if line.strip():
                try:
                    numbered.append((f"{where}:{number}", json.loads(line), ""))
                except json.JSONDecodeError as error:
                    numbered.append((f"{where}:{number}", None, f"not valid JSON ({error.msg})"))
    for location, value, problem in numbered:
        if isinstance(value, dict):
            columns.update(dict.fromkeys(str(key) for key in value))
            records.append((location, {str(key): item for key, item in value.items()}, ""))
        else:
            records.append((location, None, problem or f"expected a JSON object, found {type(value).__name__}"))
    if records and not columns:
        raise DataError(f"{where} holds no JSON objects: expected JSON Lines (one object per line) or a JSON array "
                        f"of objects; found at {records[0][0]}: {records[0][2]}.",
                        fix='Write one object per row, like {"text": "...", "label": "..."}.')
    return list(columns), records


def _parquet_records(path: Path, head: bool) -> tuple[list[str], Records]:
    try:
        from pyarrow import parquet

        table = parquet.ParquetFile(path)
        columns = list(table.schema_arrow.names)
        rows = [] if head else table.read().to_pylist()  # the head of a Parquet file is its schema
    except ImportError:
        raise DataError(f"Reading {path} needs pyarrow, which is not installed.", fix="pip install pyarrow") from None
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid / ArrowIOError derive from these
        raise DataError(f"Cannot read {path} as Parquet: {error}.",
                        fix="Check that the file is a Parquet table.") from None
    return columns, [(f"{path}:row {number}", row, "") for number, row in enumerate(rows, 1)]


def _table_records(path: Path, *, head: bool = False) -> tuple[list[str], Records, list[str]]:
    """Columns, records and encoding notes of a table file; ``head``: only its first rows."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return (*_parquet_records(path, head), [])
    try:
        with open(path, "rb") as handle:
            raw = handle.read(_HEAD_BYTES if head and suffix != ".json" else -1)
    except OSError as error:
        raise DataError(f"Cannot read {path}: {error}.", fix="Check the path and its permissions.") from None
    if head and len(raw) == _HEAD_BYTES:
        raw = raw[: raw.rfind(b"\n") + 1] or raw
    text, encoding = _decode(raw)
    notes = [_ENCODING_NOTES[encoding].format(path)] if encoding in _ENCODING_NOTES else []
    if suffix in (".csv", ".tsv"):
        return (*_delimited_records(text, str(path), "\t" if suffix == ".tsv" else ","), notes)
    return (*_json_records(text, str(path)), notes)


def _norm(name: object) -> str:
    return str(name).strip().lower()


def _find_column(columns: list[str], name: str, role: str, where: str) -> str:
    matches = [c for c in columns if c == name] or [c for c in columns if _norm(c) == _norm(name)]
    if not matches:
        flag = "--text-col" if role == "text" else "--label-col"
        raise DataError(f"{where} has no column {name!r} (asked for as the {role} column). Columns: {columns}.",
                        fix=f"Pass one of {columns} with {flag}.")
    return matches[0]


def _choose_columns(columns: list[str], where: str, text_column: str | None, label_column: str | None,
                    require_labels: bool) -> tuple[str, str | None]:
    text = _find_column(columns, text_column, "text", where) if text_column else None
    label = _find_column(columns, label_column, "label", where) if label_column else None
    texts = [text] if text else [c for c in columns if _norm(c) in TEXT_COLUMN_NAMES and c != label]
    labels = [label] if label else [c for c in columns if _norm(c) in LABEL_COLUMN_NAMES and c != text]
    # A single column is the text; in a two-column table, one role found unambiguously gives the other column the
    # other role ("review,stars").
    if not texts and (len(columns) == 1 or (len(columns) == 2 and len(labels) == 1)):
        texts = [c for c in columns if c not in labels]
    if not labels and len(columns) == 2 and len(texts) == 1:
        labels = [c for c in columns if c != texts[0]]
    for role, options, names, needed in (("texts", texts, TEXT_COLUMN_NAMES, True),
                                         ("labels", labels, LABEL_COLUMN_NAMES, require_labels)):
        if needed and len(options) != 1:
            found = f"several columns could: {options}" if options else f"none has a known name ({', '.join(names)})"
            raise DataError(f"Cannot tell which column of {where} holds the {role}: {found}. Columns: {columns}.",
                            fix=_COLUMN_FIX)
    return texts[0], labels[0] if len(labels) == 1 else None


def _rows_from_table(path: Path, *, text_column: str | None, label_column: str | None,
                     require_labels: bool) -> tuple[list[Row], list[SkippedFile], list[str]]:
    columns, records, notes = _table_records(path)
    if not columns:
        raise DataError(f"{path} holds no table: expected a header row and records, found none.", fix=_LAYOUT_FIX)
    text_key, label_key = _choose_columns(columns, str(path), text_column, label_column, require_labels)
    rows: list[Row] = []
    skipped: list[SkippedFile] = []
    for where, values, problem in records:
        if values is None:
            skipped.append(SkippedFile(where, problem))
            continue
        text = _cell(values.get(text_key)).strip()
        label = _cell(values.get(label_key)).strip() if label_key else ""
        if not text:
            skipped.append(SkippedFile(where, "empty text"))
        elif require_labels and not label:
            skipped.append(SkippedFile(where, "missing label"))
        else:
            rows.append((text, label or None, where))
    return rows, skipped, notes


def _drop_duplicates(rows: list[Row], source: str) -> tuple[list[Row], list[SkippedFile], list[str]]:
    """Keep the first of identical (text, label) rows; drop every copy of a text that carries different labels."""
    labels_of: dict[str, set[str | None]] = {}
    for text, label, _ in rows:
        labels_of.setdefault(text, set()).add(label)
    kept: list[Row] = []
    skipped: list[SkippedFile] = []
    seen: set[str] = set()
    for text, label, where in rows:
        if len(labels_of[text]) > 1:
            names = ", ".join(sort_class_names(str(name) for name in labels_of[text]))
            skipped.append(SkippedFile(where, f"same text with different labels: {names}"))
        elif text not in seen:
            seen.add(text)
            kept.append((text, label, where))
    notes = []
    duplicates = len(rows) - len(kept) - len(skipped)
    if duplicates:
        notes.append(f"{source}: {duplicates} duplicate rows dropped (same text and label; the first is kept)")
    conflicting = sum(len(labels) > 1 for labels in labels_of.values())
    if conflicting:
        notes.append(f"{source}: {conflicting} texts have different labels in different rows; all {len(skipped)} "
                     "of those rows skipped")
    return kept, skipped, notes


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


def _check_table_path(path: Path, role: str) -> None:
    if not path.is_file():
        raise DataError(f"The {role} file {path} does not exist.", fix="Check the path.")
    if path.suffix.lower() not in TEXT_TABLE_SUFFIXES:
        raise DataError(f"The {role} file {path} is not a table headstart reads: expected one of "
                        f"{list(TEXT_TABLE_SUFFIXES)}, found {path.suffix or 'no extension'!r}.", fix=_LAYOUT_FIX)


def read_text_table(path: str | os.PathLike[str], *, text_column: str | None = None, label_column: str | None = None,
                    require_labels: bool = True) -> tuple[list[str], list[str | None], list[SkippedFile], list[str]]:
    """Read the texts and labels of one table file; unusable rows are skipped and listed, never fatal.

    Args:
        path: a ``.csv``, ``.tsv``, ``.jsonl``, ``.json`` (lines or array of objects) or ``.parquet`` file.
        text_column: the column of texts; found by name when None.
        label_column: the column of labels; found by name when None.
        require_labels: when False, rows without a label are kept (label None), the label column may be absent,
            and duplicates are kept.

    Returns:
        ``(texts, labels, skipped, notes)``: stripped texts, their labels, skipped rows ("FILE:LINE" and why),
        and notes (encoding, duplicates dropped, conflicting labels).

    Raises:
        DataError: the file is missing, not a table, unparseable, or its columns cannot be told apart.

    >>> import tempfile
    >>> folder = tempfile.TemporaryDirectory()
    >>> table = Path(folder.name) / "reviews.csv"
    >>> _ = table.write_text('review,stars\\n"Great, really",5\\n,1\\nDull,1\\nDull,1\\n', encoding="utf-8")
    >>> texts, labels, skipped, notes = read_text_table(table)
    >>> texts, labels, [item.reason for item in skipped], len(notes)
    (['Great, really', 'Dull'], ['5', '1'], ['empty text'], 1)
    >>> folder.cleanup()
    """
    path = Path(path).expanduser()
    _check_table_path(path, "data")
    rows, skipped, notes = _rows_from_table(path, text_column=text_column, label_column=label_column,
                                            require_labels=require_labels)
    if require_labels:
        rows, conflicts, duplicate_notes = _drop_duplicates(rows, str(path))
        skipped, notes = skipped + conflicts, notes + duplicate_notes
    return [row[0] for row in rows], [row[1] for row in rows], skipped, notes


def read_text_lines(path: str | os.PathLike[str], *, text_column: str | None = None) -> list[str]:
    """Texts to predict on: a ``.txt`` file (one text per non-empty line) or a table's text column.

    Rows with an empty text are left out; labels are not needed; duplicates are kept.

    Raises:
        DataError: the file is missing, not .txt or a table, or holds no text.
    """
    path = Path(path).expanduser()
    if path.is_file() and path.suffix.lower() == ".txt":
        texts = [line.strip() for line in _decode(path.read_bytes())[0].split("\n") if line.strip()]
    else:
        _check_table_path(path, "input")
        rows, _, _ = _rows_from_table(path, text_column=text_column, label_column=None, require_labels=False)
        texts = [row[0] for row in rows]
    if not texts:
        raise DataError(f"{path} holds no text: every line or row is empty.", fix="Pass a file with one text per line.")
    return texts


def _read_samples(source: str | os.PathLike[str] | TextSamples, role: str, classes: list[str] | None,
                  text_column: str | None, label_column: str | None
                  ) -> tuple[TextSamples, list[SkippedFile], list[str]]:
    """One split from a path or from samples; with ``classes``, labels outside them are an error."""
    skipped: list[SkippedFile] = []
    notes: list[str] = []
    if isinstance(source, TextSamples):
        if classes is None:
            return source, skipped, notes
        where = source.source or f"the {role} samples"
        texts, names = source.texts, [source.classes[label] for label in source.labels]
    else:
        path = Path(source).expanduser()
        where = str(path)
        if path.is_dir():
            rows, skipped, notes = _rows_from_folder(path, role)
        else:
            _check_table_path(path, role)
            rows, skipped, notes = _rows_from_table(path, text_column=text_column, label_column=label_column,
                                                    require_labels=True)
        rows, conflicts, duplicate_notes = _drop_duplicates(rows, where)
        skipped, notes = skipped + conflicts, notes + duplicate_notes
        if not rows:
            first = f" (first: {skipped[0].path}: {skipped[0].reason})" if skipped else ""
            raise DataError(f"The {role} data {where} has no usable text: {len(skipped)} rows or files skipped{first}.",
                            fix="Check the file's columns (--text-col, --label-col) and that rows have a text and a "
                                "label.")
        texts, names = [row[0] for row in rows], [str(row[1]) for row in rows]
    if classes is not None:
        unseen = sort_class_names(set(names) - set(classes))
        if unseen:
            raise DataError(f"The {role} data {where} has labels that are not in the training data: {unseen}. "
                            f"Training classes: {classes}.",
                            fix=f"Remove the {role} rows with those labels, or add examples of them to the training "
                                "data.")
    return TextSamples.from_lists(texts, names, classes=classes, source=where), skipped, notes


def read_labelled_texts(source: str | os.PathLike[str] | TextSamples, *, classes: list[str],
                        text_column: str | None = None, label_column: str | None = None
                        ) -> tuple[TextSamples, list[SkippedFile], list[str]]:
    """Labelled texts for evaluation (a table or a folder of .txt class folders), indexed by a model's ``classes``.

    Raises:
        DataError: unreadable data, or labels that are not among ``classes``.
    """
    return _read_samples(source, "evaluation", list(classes), text_column, label_column)


def load_text_dataset(data: str | os.PathLike[str] | TextSamples, *,
                      val: str | os.PathLike[str] | TextSamples | None = None,
                      test: str | os.PathLike[str] | TextSamples | None = None,
                      text_column: str | None = None, label_column: str | None = None,
                      val_fraction: float = 0.2, seed: int = 0) -> TextSplits:
    """Load a labelled text dataset and its validation (and test) data, before any training starts.

    Args:
        data: a table, a folder of class folders of .txt files, a folder with train/val(/test) subfolders or
            tables named for their splits, or :class:`TextSamples`.
        val: validation data (same kinds); by default the folder's own, else ``val_fraction`` of ``data`` is
            held out with a stratified split seeded by ``seed``.
        test: test data (same kinds); by default the folder's own, if any.
        text_column: the column of texts in tables; found by name when None.
        label_column: the column of labels in tables; found by name when None.
        val_fraction: the share of each class held out when no validation data is given.
        seed: the seed of that split.

    Returns:
        The splits; class indices follow the training data's sorted labels.

    Raises:
        DataError: unreadable or ambiguous data, fewer than 2 classes, a class with fewer than 2 examples when a
            split is needed, or validation/test labels absent from the training data.
        ParameterError: ``val_fraction`` is not in (0, 1) when a split is needed.
    """
    splits: dict[str, Path] = {}
    if not isinstance(data, TextSamples):
        root = Path(data).expanduser()
        if not root.exists():
            raise DataError(f"The data {root} does not exist.", fix="Check the path passed to train/fit.")
        splits = _split_sources(root) if root.is_dir() else {}
    val = val if val is not None else splits.get("val")
    test = test if test is not None else splits.get("test")
    train, skipped, notes = _read_samples(splits.get("train", data), "train", None, text_column, label_column)
    present = [name for name, count in train.class_counts().items() if count > 0]
    if len(present) < 2:
        raise DataError(f"The training data {train.source} has {len(present)} class {present}; a classifier needs "
                        "at least 2.", fix="Check the label column (--label-col), or add examples of other classes.")
    parts: dict[str, TextSamples] = {}
    for role, source in (("val", val), ("test", test)):
        if source is not None:
            parts[role], more_skipped, more_notes = _read_samples(source, role, train.classes, text_column,
                                                                  label_column)
            skipped, notes = skipped + more_skipped, notes + more_notes
    if "val" in parts:
        split = f"given: train={train.source} val={parts['val'].source}"
    else:
        small = {name: count for name, count in train.class_counts().items() if count < 2}
        if small:
            raise DataError(f"Cannot hold out validation texts from {train.source}: classes with fewer than 2 "
                            f"examples: {small}.",
                            fix="Add examples to those classes, or pass validation data with --val.")
        train, parts["val"] = stratified_split(train, val_fraction=val_fraction, seed=seed)  # type: ignore[arg-type]
        split = f"stratified: {val_fraction:.0%} of {train.source} held out for validation (seed {seed})"
    train_texts = set(train.texts)
    for role, word in (("val", "validation"), ("test", "test")):
        shared = sum(text in train_texts for text in parts[role].texts) if role in parts else 0
        if shared:
            notes.append(f"{shared} {word} texts also appear in train")
    return TextSplits(train=train, val=parts["val"], test=parts.get("test"), skipped=skipped, split=split, notes=notes)


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
