"""Labelled texts and their train / validation / test splits; the order of class names.

Separate so that the readers, the loader, the estimator and the audio data (which orders its class names the
same way, with :func:`sort_class_names`) share these without importing the table readers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from headstart.data.images import LabelledSamples, Splits
from headstart.errors import DataError, ParameterError

__all__ = ["TextSamples", "TextSplits", "sort_class_names"]


@dataclass
class TextSamples(LabelledSamples):
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
class TextSplits(Splits):
    """Train / validation / optional test texts, every skipped row, how the split was made, and notes."""

    train: TextSamples
    val: TextSamples
    test: TextSamples | None = None

    def _summary_extra(self, parts: dict[str, Any]) -> dict[str, object]:
        return {"sizes": {role: None if part is None else len(part) for role, part in parts.items()}}


def sort_class_names(names: Iterable[str]) -> list[str]:
    """Sorted class names, numerically when every name is a number ("2" before "10").

    >>> sort_class_names(["10", "2", "1"])
    ['1', '2', '10']
    """
    names = list(names)
    if names and all(re.fullmatch(r"[+-]?\d+(\.\d+)?", name) for name in names):
        return sorted(names, key=lambda name: (float(name), name))
    return sorted(names)
