"""Figures from a finished run: training curves and the confusion matrix (PNG, written atomically)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import (
    Figure,  # no pyplot: figures never touch the user's backend or need a display
)
from matplotlib.ticker import MaxNLocator

from headstart.storage import atomic_replace, temporary_sibling

__all__ = ["plot_training_curves", "plot_confusion_matrix", "plot_method_comparison"]


def _save(figure: Figure, path: Path) -> Path:
    temporary = temporary_sibling(path)
    try:
        figure.savefig(temporary, dpi=120, bbox_inches="tight", format="png")
        atomic_replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def plot_training_curves(history: Sequence[dict[str, Any]], path: str | os.PathLike[str], *,
                         best_epoch: int | None = None,
                         panels: Sequence[tuple[str, str | None, str | None]] | None = None) -> Path:
    """Per-epoch curves, train vs validation, with stage boundaries and the restored epoch marked.

    ``panels`` lists (title, train key, validation key) per plot (a key may be None); by default loss and
    accuracy of a classifier.
    """
    epochs = [h["epoch"] for h in history]
    panels = panels or (("Loss", "train_loss", "val_loss"), ("Accuracy", "train_accuracy", "val_accuracy"))
    figure = Figure(figsize=(5.5 * len(panels), 4))
    axes = np.atleast_1d(figure.subplots(1, len(panels)))
    for axis, (title, train_key, val_key) in zip(axes, panels):
        for key, label in ((train_key, "train"), (val_key, "validation")):
            if key is not None and all(h.get(key) is not None for h in history):
                axis.plot(epochs, [h[key] for h in history], "o-", label=label)
        for previous, current in zip(history, history[1:]):
            if previous["stage"] != current["stage"]:
                axis.axvline(previous["epoch"] + 0.5, color="grey", linestyle=":", linewidth=1)
                axis.text(previous["epoch"] + 0.55, axis.get_ylim()[1], "unfreeze", fontsize=8, va="top",
                          color="grey")
        if best_epoch is not None:
            axis.axvline(best_epoch, color="green", alpha=0.3, linewidth=6, label=f"restored epoch ({best_epoch})")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        axis.legend()
    return _save(figure, Path(path))


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], path: str | os.PathLike[str], *,
                          classes: Sequence[str], title: str = "Confusion matrix") -> Path:
    """Counts with row-normalised colour (rows = true class)."""
    counts = np.asarray(matrix)
    k = len(classes)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.6 * k + 2)
    figure = Figure(figsize=(size + 1, size))
    axis = figure.subplots()
    image = axis.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axis, fraction=0.046, label="share of true class")
    axis.set_xticks(range(k), classes, rotation=45, ha="right")
    axis.set_yticks(range(k), classes)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title)
    if k <= 30:
        for i in range(k):
            for j in range(k):
                axis.text(j, i, str(counts[i, j]), ha="center", va="center",
                          color="white" if rates[i, j] > 0.5 else "black", fontsize=9)
    return _save(figure, Path(path))


def plot_method_comparison(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Domain adaptation: each method's label-free target score (IM) and, where target labels exist, its target
    accuracy with the 95% interval; the selected method is starred."""
    names = [row["method"] + (" *" if row.get("selected") else "") for row in rows]
    has_accuracy = any(row.get("accuracy") is not None for row in rows)
    figure = Figure(figsize=(4.0 * (2 if has_accuracy else 1) + 1, 3.6))
    axes = figure.subplots(1, 2 if has_accuracy else 1, squeeze=False)[0]
    axes[0].barh(names, [row["im_score"] for row in rows], color="tab:blue")
    axes[0].set_xlabel("target IM score (no labels; higher is better)")
    axes[0].invert_yaxis()
    if has_accuracy:
        accuracy = [row.get("accuracy") or 0.0 for row in rows]
        errors = np.array([[a - (row.get("accuracy_ci") or (a, a))[0], (row.get("accuracy_ci") or (a, a))[1] - a]
                           for a, row in zip(accuracy, rows)]).T
        axes[1].barh(names, accuracy, xerr=errors, color="tab:green")
        axes[1].set_xlabel("target accuracy (labels used only here)")
        axes[1].set_xlim(0, 1)
        axes[1].invert_yaxis()
    figure.suptitle("Domain adaptation methods")
    return _save(figure, Path(path))
