"""One text file -> rows of (text, label, where): decoding, table formats, column choice, duplicates.

Separate from the folder layouts: everything here reads a single file (a table, or a .txt of texts to predict
on), so prediction needs nothing else. Files are decoded as UTF-8, BOM-marked UTF-8/16, else cp1252; cells stay
strings; unusable rows are listed, never fatal.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
import os
from pathlib import Path

from headstart.data.images import SkippedFile
from headstart.data.text.samples import sort_class_names
from headstart.errors import DataError

__all__ = ["LABEL_COLUMN_NAMES", "TEXT_COLUMN_NAMES", "TEXT_TABLE_SUFFIXES", "read_text_lines", "read_text_table"]

TEXT_TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
TEXT_COLUMN_NAMES = ("text", "sentence", "review", "content", "document", "body", "comment", "message", "tweet",
                     "utterance", "question", "query", "title")
LABEL_COLUMN_NAMES = ("label", "labels", "class", "category", "target", "sentiment", "y", "intent", "topic")
_COLUMN_FIX = "Pass --text-col NAME / --label-col NAME (Python: text_column=..., label_column=...)."
_LAYOUT_FIX = ("Pass a table with a text and a label column, a folder with one subfolder of .txt files per class, "
               "or a folder with train/ and val/ subfolders or tables named *train*, *dev* (or *val*), *test*.")
_HEAD_BYTES = 256 * 1024  # enough of a file to see its columns and first rows
# Bytes 0x80-0x9F in cp1252, applied to a latin-1 decoding; 0x81, 0x8D, 0x8F, 0x90 and 0x9D are undefined in
# cp1252 and keep their latin-1 meaning, so decoding never fails.
_CP1252_FROM_LATIN1 = {b: bytes([b]).decode("cp1252") for b in range(0x80, 0xA0)
                       if b not in (0x81, 0x8D, 0x8F, 0x90, 0x9D)}
_ENCODING_NOTES = {"utf-8-sig": "{}: UTF-8 byte-order mark removed", "utf-16": "{}: UTF-16; decoded as such",
                   "cp1252": "{}: not UTF-8; read as cp1252"}

Row = tuple[str, "str | None", str]  # text, label, where ("FILE:LINE")


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
