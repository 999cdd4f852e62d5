"""Text sources -> :class:`TextSplits`: training, validation and test data read against the training classes.

Separate from the readers: here the splits are found, duplicates and conflicting labels dropped per split,
labels checked against the training classes, and, without validation data, a stratified share held out.
"""

from __future__ import annotations

import os
from pathlib import Path

from headstart.data.images import SkippedFile, stratified_split
from headstart.data.text.layouts import _rows_from_folder, _split_sources
from headstart.data.text.samples import TextSamples, TextSplits, sort_class_names
from headstart.data.text.tables import (
    _check_table_path,
    _drop_duplicates,
    _rows_from_table,
)
from headstart.errors import DataError

__all__ = ["load_text_dataset", "read_labelled_texts"]


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
