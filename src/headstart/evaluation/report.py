"""What every run reports, whatever the modality: the data table, calibration on validation, the run folder.

Shared by the image, text and audio estimators so their run folders read the same: ``config.json``,
``data.json``, ``metrics.json``, ``history.json``, ``curves.png``, ``confusion_matrix.png``,
``reliability.png`` (when calibrated) and ``summary.txt``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from headstart.evaluation.calibration import (
    apply_temperature,
    calibration_report,
    fit_temperature,
    plot_reliability_diagram,
)
from headstart.evaluation.metrics import format_summary
from headstart.evaluation.plots import plot_confusion_matrix, plot_training_curves
from headstart.storage import atomic_write_json, atomic_write_text

__all__ = ["MIN_CALIBRATION_EXAMPLES", "Calibration", "print_skipped", "print_splits", "calibrate_on_validation",
           "write_run_report"]

# Temperature scaling needs a validation set with some errors to say anything about confidence.
MIN_CALIBRATION_EXAMPLES = 30


def print_skipped(console: Console, skipped: list[Any]) -> None:
    """Print the skipped files or rows (the first 20) and their reasons."""
    if not skipped:
        return
    console.print(f"[yellow]Skipped {len(skipped)} file(s) or row(s) that cannot be used:[/yellow]")
    for item in skipped[:20]:
        console.print(f"  {item.path}: {item.reason}", markup=False, highlight=False)
    if len(skipped) > 20:
        console.print(f"  ... and {len(skipped) - 20} more (all listed in the run's data.json)")


def print_splits(console: Console, splits: Any) -> None:
    """The split description, a class x split count table, the skipped inputs and any data notes."""
    console.print(f"[bold]Data[/bold] {splits.split}", highlight=False)
    table = Table(show_edge=False)
    table.add_column("class")
    parts = [("train", splits.train), ("val", splits.val)] + ([("test", splits.test)] if splits.test is not None else [])
    for name, _ in parts:
        table.add_column(name, justify="right")
    counts = [samples.class_counts() for _, samples in parts]
    for name in splits.classes:
        table.add_row(name, *(str(c.get(name, 0)) for c in counts))
    console.print(table)
    print_skipped(console, list(splits.skipped))
    for note in getattr(splits, "notes", []) or []:
        console.print(f"[yellow]Note:[/yellow] {note}", highlight=False)


class Calibration:
    """Temperature scaling fitted on validation predictions, or the reason it was skipped."""

    def __init__(self, temperature: float = 1.0, report: dict[str, Any] | None = None,
                 before: np.ndarray | None = None, labels: np.ndarray | None = None) -> None:
        self.temperature, self.report, self.before, self.labels = temperature, report, before, labels


def calibrate_on_validation(probabilities: np.ndarray, labels: np.ndarray, *, enabled: bool,
                            console: Console) -> Calibration:
    """Fit a temperature on validation probabilities when that can say something about confidence.

    Skipped with fewer than :data:`MIN_CALIBRATION_EXAMPLES` examples or no validation error: with no error the
    NLL falls as the temperature falls, so the fit would only make the model more confident; with a handful of
    examples the fitted temperature is noise.
    """
    labels = np.asarray(labels)
    if not enabled:
        return Calibration()
    errors = int((probabilities.argmax(1) != labels).sum())
    if len(labels) < MIN_CALIBRATION_EXAMPLES or errors == 0:
        console.print(f"Calibration skipped: {len(labels)} validation examples, {errors} errors (needs >="
                      f" {MIN_CALIBRATION_EXAMPLES} examples and at least one error).", highlight=False)
        return Calibration()
    temperature = fit_temperature(probabilities, labels)
    report = calibration_report(probabilities, labels, temperature=temperature)
    report["fitted_on"] = "validation (the ECE after scaling is optimistic there; evaluate on a test set)"
    return Calibration(temperature, report, probabilities, labels)


def write_run_report(run_dir: Path, *, model_dir: Path, title: str, metrics: dict[str, Any],
                     extra_metrics: dict[str, Any], history: list[dict[str, Any]], best_epoch: int | None,
                     classes: list[str], calibration: Calibration, skipped: list[Any], console: Console) -> None:
    """Write metrics.json, history.json, curves, confusion matrix, reliability diagram and summary.txt."""
    atomic_write_json(run_dir / "metrics.json", {**metrics, **extra_metrics, "calibration": calibration.report})
    atomic_write_json(run_dir / "history.json", history)
    plot_training_curves(history, run_dir / "curves.png", best_epoch=best_epoch)
    plot_confusion_matrix(metrics["confusion_matrix"], run_dir / "confusion_matrix.png", classes=classes,
                          title="Confusion matrix (validation)")
    calibration_line = ""
    if calibration.report is not None and calibration.before is not None:
        plot_reliability_diagram(calibration.before, apply_temperature(calibration.before, calibration.temperature),
                                 calibration.labels, run_dir / "reliability.png", title="Reliability (validation)")
        report = calibration.report
        calibration_line = (f"calibration: temperature {calibration.temperature:.3f} fitted on validation; ECE"
                            f" {report['ece_before']:.4f} -> {report['ece_after']:.4f},"
                            f" NLL {report['nll_before']:.4f} -> {report['nll_after']:.4f}\n")
    summary = (
        f"headstart run {run_dir}\n{title}\n"
        f"validation ({metrics['model_selection']}):\n{format_summary(metrics)}\n"
        + calibration_line
        + f"skipped inputs: {len(skipped)}\n"
        + "".join(f"  {s.path}: {s.reason}\n" for s in skipped)
    )
    atomic_write_text(run_dir / "summary.txt", summary)
    console.print(f"\n[bold]Validation[/bold] (best epoch {best_epoch})\n{format_summary(metrics)}")
    if calibration_line:
        console.print(calibration_line.strip(), highlight=False)
    console.print(f"\nModel: {model_dir}\nRun folder: {run_dir} (config.json, metrics.json, history.json,"
                  f" curves.png, confusion_matrix.png, reliability.png, summary.txt, data.json)")
