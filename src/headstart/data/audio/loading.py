"""Audio sources -> :class:`AudioSplits`: the training, validation and test data, split so that groups stay apart.

Separate from the source readers: here the splits are found (train/ val/ test/ folders), read against the
training classes, checked for shared groups, and, without validation data, held out by whole groups.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from headstart.data.audio.samples import AudioSamples, AudioSplits
from headstart.data.audio.sources import (
    read_audio_table,
    samples_from_pattern,
    scan_audio_folder,
)
from headstart.data.images import SkippedFile, _is_hidden, stratified_split
from headstart.errors import DataError, ParameterError

__all__ = ["group_split", "load_audio_dataset", "read_labelled_audio"]

_VAL_NAMES = ("val", "valid", "validation")


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
