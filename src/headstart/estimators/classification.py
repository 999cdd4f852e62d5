"""What the image, text and audio classifiers share around training: the scikit-learn head on frozen features,
the end of ``fit`` (metrics with CIs, calibration, the run folder), ``predict`` and the evaluation tail.

Each classifier says how its inputs are read and turned into features; from the validation probabilities on,
they do the same thing, here, once.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from headstart.estimators.base import EstimatorBase
from headstart.evaluation.metrics import classification_metrics, format_summary
from headstart.evaluation.plots import plot_confusion_matrix
from headstart.evaluation.report import (
    Calibration,
    calibrate_on_validation,
    print_skipped,
    write_run_report,
)
from headstart.storage import atomic_write_json
from headstart.training.classification import head_record
from headstart.training.heads import fit_sklearn_head
from headstart.training.loop import TrainState, Validation

__all__ = ["ClassifierEstimator"]


class ClassifierEstimator(EstimatorBase):
    """The shared part of :class:`~headstart.ImageClassifier`, :class:`~headstart.TextClassifier` and
    :class:`~headstart.AudioClassifier`; subclasses provide ``predict_proba``."""

    def _fit_sklearn_head(self, train: np.ndarray, train_labels: np.ndarray, val: np.ndarray, val_labels: np.ndarray,
                          *, n_views: int, console: Console) -> tuple[TrainState, Validation]:
        """Frozen features (``n_views`` views per training example, view-major) -> the scikit-learn head chosen
        by cross-validation (``self.head_``), recorded as one epoch."""
        started = time.perf_counter()
        fit = fit_sklearn_head(self.head, train, np.tile(train_labels, n_views), n_views=n_views,
                               class_weight=self.class_weights, seed=self.seed)
        self.head_ = fit.estimator
        validation = head_record(fit.estimator.predict_proba(train[: len(train_labels)]), train_labels,
                                 fit.estimator.predict_proba(val).astype(np.float32), val_labels,
                                 selection=fit.summary())
        record = {"epoch": 1, "stage": "head", **validation.record, **validation.scores, "lr": 0.0,
                  "seconds": round(time.perf_counter() - started, 2)}
        console.print(f"{self.head} head: {fit.params or 'defaults'} ({fit.summary()['selection']});"
                      f" val acc {record['val_accuracy']:.3f}", highlight=False)
        return TrainState(epoch=1, best_epoch=1, history=[record], finished=True), validation

    def _finish_fit(self, probabilities: np.ndarray, labels: np.ndarray, *, monitor: str, console: Console,
                    started: float) -> Calibration:
        """Validation metrics (with bootstrap CIs) and the temperature, from the restored epoch's predictions."""
        labels = np.asarray(labels)
        self.metrics_ = classification_metrics(labels, probabilities, classes=self.classes_, seed=self.seed)
        calibration = calibrate_on_validation(probabilities, labels, enabled=self.calibrate, console=console)
        self.temperature_, self.calibration_ = calibration.temperature, calibration.report
        self.metrics_["split"] = "validation"
        history = self.history_
        self.metrics_["model_selection"] = (
            f"best epoch ({self.best_epoch_} of {len(history)}) chosen by {monitor} on this validation data; for an"
            " unbiased estimate evaluate on a separate test set" if len(history) > 1 else
            "none on this validation data (one epoch; a solved head's penalty is chosen by cross-validation on the"
            " training examples)")
        self.fit_seconds_ = round(time.perf_counter() - started, 1)
        return calibration

    def _write_run(self, run_dir: Path, *, calibration: Calibration, skipped: list[Any], console: Console,
                   title: str, extra: dict[str, Any]) -> None:
        """The model bundle in ``run_dir/model`` and the run report beside it."""
        model_dir = self.save(run_dir / "model")
        write_run_report(run_dir, model_dir=model_dir, metrics=self.metrics_, history=self.history_,
                         best_epoch=self.best_epoch_, classes=self.classes_, calibration=calibration, skipped=skipped,
                         console=console, title=title,
                         extra_metrics={"strategy": self.strategy_, "epochs": self.epochs_,
                                        "best_epoch": self.best_epoch_, "fit_seconds": self.fit_seconds_,
                                        "skipped_count": len(skipped), **extra})

    def predict(self, inputs: Any) -> list[str]:
        """The most probable class name for each input."""
        probabilities = self.predict_proba(inputs)  # type: ignore[attr-defined]
        return [self.classes_[i] for i in probabilities.argmax(axis=1)]

    def _report_evaluation(self, labels: Any, probabilities: np.ndarray, *, names: list[str], name_key: str,
                           data: Any, skipped: list[Any], out: str | os.PathLike[str] | None, n_bootstrap: int,
                           console: Console) -> dict[str, Any]:
        """Metrics with CIs on labelled examples; with ``out``: metrics.json, confusion_matrix.png and
        predictions.json there."""
        metrics = classification_metrics(labels, probabilities, classes=self.classes_, n_bootstrap=n_bootstrap,
                                         seed=self.seed)
        metrics.update({"split": "evaluation", "data": str(data), "skipped_count": len(skipped),
                        "skipped": [{"path": str(s.path), "reason": s.reason} for s in skipped]})
        if out is not None:
            out = Path(out)
            atomic_write_json(out / "metrics.json", metrics)
            plot_confusion_matrix(metrics["confusion_matrix"], out / "confusion_matrix.png", classes=self.classes_,
                                  title=f"Confusion matrix ({Path(str(data)).name})")
            atomic_write_json(out / "predictions.json", [
                {name_key: name, "true": self.classes_[t], "predicted": self.classes_[int(np.argmax(row))],
                 "probability": float(np.max(row))}
                for name, t, row in zip(names, labels, probabilities)])
        console.print(format_summary(metrics))
        return metrics

    @staticmethod
    def _print_evaluation_start(console: Console, data: Any, count: int, skipped: list[Any]) -> None:
        console.print(f"[bold]Evaluation[/bold] on {data} ({count} examples)", highlight=False)
        print_skipped(console, skipped)
