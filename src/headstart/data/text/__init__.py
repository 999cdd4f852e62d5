"""Text tables and text folders -> labelled text samples and splits.

A dataset is a table (.csv .tsv .jsonl .json .parquet) whose text and label columns are found by name; a folder
with one subfolder of .txt files per class; or a folder with train/ and val/ (valid/, validation/, dev/), maybe
test/, subfolders, or with tables named for their split (sst2_train.tsv, sst2_dev.tsv). Files are decoded here
(UTF-8, BOM-marked UTF-8/16, else cp1252), cells stay strings, and unusable rows are listed, never fatal.

One idea per file:

- :mod:`~headstart.data.text.samples` - :class:`TextSamples`, :class:`TextSplits` and :func:`sort_class_names`;
- :mod:`~headstart.data.text.tables` - one file -> rows: decoding, CSV/TSV/JSON/Parquet records, choosing the
  text and label columns, duplicates; :func:`read_text_table` and :func:`read_text_lines`;
- :mod:`~headstart.data.text.layouts` - class folders of .txt files, split folders and split tables, and
  :func:`looks_like_text_data`;
- :mod:`~headstart.data.text.loading` - :func:`load_text_dataset` and :func:`read_labelled_texts`: sources ->
  splits indexed by the training classes.
"""

from headstart.data.text.layouts import looks_like_text_data
from headstart.data.text.loading import load_text_dataset, read_labelled_texts
from headstart.data.text.samples import TextSamples, TextSplits, sort_class_names
from headstart.data.text.tables import (
    LABEL_COLUMN_NAMES,
    TEXT_COLUMN_NAMES,
    TEXT_TABLE_SUFFIXES,
    read_text_lines,
    read_text_table,
)

# Not in __all__ (never was), but importable from here as before:
from headstart.data.text.tables import Records as Records
from headstart.data.text.tables import Row as Row

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
