"""Labelled audio files (with groups and durations when known), and the train / validation / test splits of them.

Separate so that the source readers, the loader, the estimator and the model comparison share these types.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headstart.data.images import LabelledSamples, Splits
from headstart.data.text import sort_class_names
from headstart.errors import DataError, ParameterError

__all__ = ["AudioSamples", "AudioSplits"]


@dataclass
class AudioSamples(LabelledSamples):
    """Labelled audio files: ``labels[i]`` indexes ``classes`` for ``paths[i]``; optional group and seconds each."""

    paths: list[Path]
    labels: list[int]
    classes: list[str]
    groups: list[str] | None = None
    durations: list[float] | None = None
    root: Path | None = None

    def __len__(self) -> int:
        return len(self.paths)

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
class AudioSplits(Splits):
    """Train / validation / optional test clips, every skipped file, how the split was made, and notes."""

    train: AudioSamples
    val: AudioSamples
    test: AudioSamples | None = None

    def _summary_extra(self, parts: dict[str, Any]) -> dict[str, object]:
        return {"seconds": {name: round(float(sum(part.durations)), 2) for name, part in parts.items()
                            if part is not None and part.durations is not None},
                "groups": {name: len(set(part.groups)) for name, part in parts.items()
                           if part is not None and part.groups is not None}}
