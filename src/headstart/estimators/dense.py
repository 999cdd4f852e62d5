"""What ``Segmenter`` and ``Detector`` share: the fit / save / load flow of a dense-task estimator.

``fit`` reads the data, builds the network on a pretrained registry backbone, trains it stage by stage
(:func:`headstart.training.dense_loop.train_dense`), measures it on the validation split, writes the run folder
(config, metrics, history, curves, sample images, summary) and saves the bundle in ``<run>/model``.
Subclasses say how data is read, how a batch is made and scored, and how predictions are measured and drawn.
Training and prediction run on the CPU in one process (no accelerator / data-parallel options yet, unlike the
image classifier).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import nn

from headstart.bundle import load_bundle, save_bundle
from headstart.errors import ParameterError, ResumeError
from headstart.estimators.base import EstimatorBase
from headstart.evaluation.plots import plot_training_curves
from headstart.evaluation.report import print_skipped
from headstart.models.dense import build_dense_net
from headstart.models.registry import create_backbone, get_backbone_spec
from headstart.storage import atomic_write_json, atomic_write_text
from headstart.training.dense_loop import CHECKPOINT_DIR, plan_dense_stages, train_dense

__all__ = ["DenseEstimator"]

FITTED_ATTRIBUTES = ("net_", "classes_", "config_", "history_", "metrics_")


class DenseEstimator(EstimatorBase):
    """The shared flow; subclasses set ``task``, ``monitor`` and the hooks below."""

    task = ""
    monitor = ""
    metric_panels: tuple[tuple[str, str | None, str | None], ...] = ()

    # -- hooks ------------------------------------------------------------------------------------------------
    def _validate(self) -> None:
        raise NotImplementedError

    def _load_splits(self, data: Any, val: Any) -> Any:
        raise NotImplementedError

    def _dense_config(self, splits: Any) -> dict[str, Any]:
        raise NotImplementedError

    def _train_batches(self, splits: Any, epoch: int) -> Iterable[Any]:
        raise NotImplementedError

    def _steps_per_epoch(self, splits: Any) -> int:
        raise NotImplementedError

    def _loss(self, net: nn.Module, batch: Any) -> torch.Tensor:
        raise NotImplementedError

    def _measure(self, samples: Any, *, n_bootstrap: int) -> tuple[dict[str, Any], list[Any]]:
        """Metrics on labelled samples with the current ``net_``, and the predictions (for report images)."""
        raise NotImplementedError

    def _quick_scores(self, metrics: dict[str, Any]) -> dict[str, float]:
        raise NotImplementedError

    def _write_report_images(self, samples: Any, predictions: list[Any], folder: Path) -> list[Path]:
        raise NotImplementedError

    def _format_metrics(self, metrics: dict[str, Any]) -> str:
        raise NotImplementedError

    def _default_epochs(self, splits: Any) -> int:
        raise NotImplementedError

    def _default_lr(self) -> float:
        raise NotImplementedError

    # -- shared checks ----------------------------------------------------------------------------------------
    def _validate_common(self) -> None:
        get_backbone_spec(self.backbone)
        if self.epochs is not None and (not isinstance(self.epochs, int) or self.epochs < 1):
            raise self._bad("epochs", "a positive integer or None")
        if self.frozen_epochs is not None and (not isinstance(self.frozen_epochs, int) or self.frozen_epochs < 0):
            raise self._bad("frozen_epochs", "an integer >= 0 or None")
        if self.lr is not None and (not isinstance(self.lr, (int, float)) or not 0 < self.lr < 1):
            raise self._bad("lr", "a number in (0, 1) or None")
        if not isinstance(self.encoder_lr_mult, (int, float)) or not 0 < self.encoder_lr_mult <= 1:
            raise self._bad("encoder_lr_mult", "a number in (0, 1]")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise self._bad("batch_size", "a positive integer")
        if self.patience is not None and (not isinstance(self.patience, int) or self.patience < 1):
            raise self._bad("patience", "a positive integer or None")
        if not isinstance(self.val_fraction, float) or not 0 < self.val_fraction < 1:
            raise self._bad("val_fraction", "a number in (0, 1)")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise self._bad("seed", "a non-negative integer")

    # -- fit --------------------------------------------------------------------------------------------------
    def fit(self, data: str | os.PathLike[str], *, val: str | os.PathLike[str] | None = None,
            out: str | os.PathLike[str] | None = None, resume: bool = False) -> DenseEstimator:
        """Train on ``data`` (validation: ``val``, the data's own split, or a seeded hold-out).

        Args:
            out: the run folder (config, metrics, curves, report images, ``model/``, checkpoints).
            resume: continue the run in ``out`` from its last checkpoint.

        Returns:
            self, fitted: ``net_``, ``classes_``, ``config_``, ``history_``, ``metrics_``.
        """
        fitted_before = {name: getattr(self, name) for name in FITTED_ATTRIBUTES if hasattr(self, name)}
        try:
            return self._fit(data, val=val, out=out, resume=resume)
        except BaseException:
            # an interrupted or failed fit leaves the estimator as it was, never half fitted
            for name in FITTED_ATTRIBUTES:
                if name in fitted_before:
                    setattr(self, name, fitted_before[name])
                elif hasattr(self, name):
                    delattr(self, name)
            raise

    def _fit(self, data: str | os.PathLike[str], *, val: str | os.PathLike[str] | None,
             out: str | os.PathLike[str] | None, resume: bool) -> DenseEstimator:
        self._validate()
        console = Console(quiet=not self.progress)
        started = time.perf_counter()
        torch.manual_seed(self.seed)
        splits = self._load_splits(data, val)
        print_skipped(console, splits.skipped)
        summary = splits.summary()
        console.print(f"[bold]{self.task.capitalize()} data[/bold] {data}: " + ", ".join(
            f"{k} {v}" for k, v in summary.items() if isinstance(v, (int, str))), highlight=False)
        spec = get_backbone_spec(self.backbone)
        encoder_model, source = create_backbone(self.backbone, 0, weights=self.weights,
                                                allow_download=self.allow_download)
        pretrained = source.kind != "random"
        console.print(f"[bold]Backbone[/bold] {self.backbone}: {source.description}", highlight=False)
        config = {
            "task": self.task, "backbone": self.backbone, "architecture": spec.architecture,
            "classes": list(splits.classes), "preprocessing": spec.preprocessing().to_dict(),
            "weights_source": source.description, "dense": self._dense_config(splits),
        }
        net = build_dense_net(config, encoder_model=encoder_model)
        epochs = self.epochs or self._default_epochs(splits)
        frozen = self.frozen_epochs if self.frozen_epochs is not None else max(1, epochs // 4)
        stages = plan_dense_stages(epochs=epochs, frozen_epochs=frozen, lr=self.lr or self._default_lr(),
                                   encoder_lr_mult=self.encoder_lr_mult, pretrained=pretrained)
        run_dir = Path(out) if out is not None else None
        params = self.plain_params()
        fingerprint = {"params": {k: v for k, v in params.items() if k != "progress"}, "classes": config["classes"],
                       "n_train": len(splits.train), "n_val": len(splits.val)}
        if resume and (run_dir is None or not (run_dir / CHECKPOINT_DIR / "state.json").is_file()):
            raise ResumeError(f"{run_dir} has no checkpoint to resume.", fix="Start the run without --resume.")
        if run_dir is not None and not resume:  # a resumed run keeps the config it was started with
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(run_dir / "config.json", {
                "task": self.task, "params": params, "data": str(Path(data).resolve()),
                "val": str(Path(val).resolve()) if val is not None else None,
                "stages": [s.to_dict() for s in stages], "backbone_weights": source.description})
            atomic_write_json(run_dir / "data.json", summary)
        self._splits = splits  # the hooks read it (batches, validation)
        self.config_, self.classes_ = config, list(splits.classes)
        state = train_dense(
            net, encoder=net.encoder if hasattr(net, "encoder") else net.backbone.encoder, stages=stages,
            batches=lambda epoch: self._train_batches(splits, epoch), steps_per_epoch=self._steps_per_epoch(splits),
            loss=self._loss, validate=lambda n: self._validation_scores(n, splits), monitor=self.monitor,
            patience=self.patience, frozen_batchnorm=pretrained, seed=self.seed, run_dir=run_dir, resume=resume,
            fingerprint=fingerprint, console=console, progress=self.progress)
        self.net_ = net
        self.history_ = state.history
        metrics, predictions = self._measure(splits.val, n_bootstrap=1000)
        metrics.update({"best_epoch": state.best_epoch, "epochs_run": state.epoch, "stopped_early": state.stopped_early,
                        "model_selection": f"best epoch by validation {self.monitor}",
                        "train_seconds": round(time.perf_counter() - started, 1)})
        self.metrics_ = metrics
        config["metrics"] = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        config["training"] = {"params": params, "stages": [s.to_dict() for s in stages], "history": state.history}
        if run_dir is not None:
            self.save(run_dir / "model")
            self._write_run(run_dir, metrics, predictions, splits, state.best_epoch, console)
        console.print(f"\n[bold]Validation[/bold] (best epoch {state.best_epoch})\n{self._format_metrics(metrics)}",
                      highlight=False)
        return self

    def _validation_scores(self, net: nn.Module, splits: Any) -> dict[str, float]:
        self.net_ = net
        metrics, _ = self._measure(splits.val, n_bootstrap=0)
        return self._quick_scores(metrics)

    def _write_run(self, run_dir: Path, metrics: dict[str, Any], predictions: list[Any], splits: Any,
                   best_epoch: int, console: Console) -> None:
        atomic_write_json(run_dir / "metrics.json", metrics)
        atomic_write_json(run_dir / "history.json", self.history_)
        plot_training_curves(self.history_, run_dir / "curves.png", best_epoch=best_epoch, panels=self.metric_panels)
        images = self._write_report_images(splits.val, predictions, run_dir / "samples")
        skipped = getattr(splits, "skipped", [])
        text = (f"headstart {self.task} run {run_dir}\nbackbone {self.backbone}\n"
                f"validation ({metrics['model_selection']}, epoch {best_epoch}):\n{self._format_metrics(metrics)}\n"
                f"skipped inputs: {len(skipped)}\n" + "".join(f"  {s.path}: {s.reason}\n" for s in skipped))
        atomic_write_text(run_dir / "summary.txt", text)
        console.print(f"\nModel: {run_dir / 'model'}\nRun folder: {run_dir} (config.json, metrics.json, history.json,"
                      f" curves.png, samples/ ({len(images)} images), summary.txt, data.json)", highlight=False)

    # -- persistence ------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the fitted model as a bundle folder (safetensors + config.json), atomically."""
        self._check_fitted("save")
        validation = None
        if hasattr(self, "_splits"):
            validation = {"kind": "files", "inputs": [str(Path(p).resolve()) for p in self._validation_files()],
                          "labels": []}
        return save_bundle(path, self.net_, {**self.config_, "params": self.plain_params()}, validation=validation)

    def _validation_files(self) -> list[Path]:
        raise NotImplementedError

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> DenseEstimator:
        """Rebuild a saved model (no network, no training code)."""
        bundle = load_bundle(path)
        if bundle.config.get("task") != cls.task:
            raise ParameterError(f"{path} holds a {bundle.config.get('task')} model, not a {cls.task} model.",
                                 fix="Load it with headstart.load_model(PATH), which picks the right class.")
        known = set(cls().get_params())
        estimator = cls(**{k: v for k, v in bundle.config.get("params", {}).items() if k in known})
        estimator.net_, estimator.classes_, estimator.config_ = bundle.model, bundle.classes, bundle.config
        estimator.history_ = bundle.config.get("training", {}).get("history", [])
        estimator.metrics_ = bundle.config.get("metrics", {})
        return estimator

    def _evaluate_samples(self, samples: Any, skipped: list[Any], *, out: str | os.PathLike[str] | None,
                          n_bootstrap: int) -> dict[str, Any]:
        """Metrics on read labelled samples; with ``out``: metrics.json and report images there."""
        metrics, predictions = self._measure(samples, n_bootstrap=n_bootstrap)
        metrics["skipped"] = [{"path": str(s.path), "reason": s.reason} for s in skipped]
        if out is not None:
            folder = Path(out)
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_json(folder / "metrics.json", metrics)
            self._write_report_images(samples, predictions, folder / "samples")
        return metrics

    def _tracked(self, items: Any, description: str) -> Any:
        """``items`` with a transient progress bar (when ``progress`` is on)."""
        from rich.progress import track

        return track(items, description=description, transient=True, disable=not self.progress)

    def _as_paths(self, images: Any) -> list[Path]:
        if isinstance(images, (str, os.PathLike)):
            images = [images]
        return [Path(p) for p in images]

    @staticmethod
    def _seeded(seed: int, epoch: int) -> np.random.Generator:
        return np.random.default_rng([seed, epoch])
