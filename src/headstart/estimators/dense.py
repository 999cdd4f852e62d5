"""What ``Segmenter`` and ``Detector`` share: the fit / save / load flow of a dense-task estimator.

``fit`` reads the data, builds the network on a pretrained registry backbone, trains it stage by stage on the
one training loop (:func:`headstart.training.loop.train`: devices, precision, checkpoints and resume as for every
task), measures it on the validation split, writes the run folder (config, metrics, history, curves, sample
images, summary) and saves the bundle in ``<run>/model``. Subclasses say how data is read, how a batch is made
and scored, and how predictions are measured and drawn.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import nn
from torch.utils.data import Dataset

from headstart.bundle import load_bundle, save_bundle
from headstart.errors import ParameterError, check_choice, check_integer
from headstart.estimators.base import EstimatorBase, restores_state_on_failure
from headstart.evaluation.plots import plot_training_curves
from headstart.evaluation.report import print_skipped
from headstart.models.dense import build_dense_net
from headstart.models.registry import create_backbone, get_backbone_spec
from headstart.storage import atomic_write_json, atomic_write_text
from headstart.training.checkpoints import start_run_folder
from headstart.training.loop import (
    StepOutput,
    TrainConfig,
    TrainingTask,
    Validation,
    process_rank,
    shuffled_batches,
    train,
)
from headstart.training.recipes import (
    NON_LORA_STRATEGIES,
    Recipe,
    Stage,
    choose_strategy,
    plan_stages,
)

__all__ = ["DenseEstimator"]

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

    def _train_dataset(self, splits: Any, epoch: int) -> Dataset:
        """The training examples of ``epoch`` (0-based), their augmentation seeded by it."""
        raise NotImplementedError

    _collate: Any = None  # how dataset items become a batch (torch's default)

    def _loss(self, net: nn.Module, batch: Any) -> torch.Tensor:
        raise NotImplementedError

    def _measure(self, samples: Any, *, n_bootstrap: int, net: nn.Module | None = None
                 ) -> tuple[dict[str, Any], list[Any]]:
        """Metrics on labelled samples with ``net`` (default ``net_``), and the predictions (for report images)."""
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
        self._check_shared_params()
        check_integer(type(self).__name__, "frozen_epochs", self.frozen_epochs, low=0, optional=True)
        if not isinstance(self.encoder_lr_mult, (int, float)) or not 0 < self.encoder_lr_mult <= 1:
            raise self._bad("encoder_lr_mult", "a number in (0, 1]")
        check_choice(type(self).__name__, "strategy", self.strategy, ("auto", *NON_LORA_STRATEGIES))
        self._train_config().validate(type(self).__name__)

    # -- fit --------------------------------------------------------------------------------------------------
    @restores_state_on_failure
    def fit(self, data: str | os.PathLike[str], *, val: str | os.PathLike[str] | None = None,
            out: str | os.PathLike[str] | None = None, resume: bool = False) -> DenseEstimator:
        """Train on ``data`` (validation: ``val``, the data's own split, or a seeded hold-out).

        Args:
            out: the run folder (config, metrics, curves, report images, ``model/``, checkpoints).
            resume: continue the run in ``out`` from its last checkpoint.

        Returns:
            self, fitted: ``net_``, ``classes_``, ``config_``, ``history_``, ``metrics_``.
        """
        return self._fit(data, val=val, out=out, resume=resume)

    def _train_config(self) -> TrainConfig:
        return TrainConfig(batch_size=self.batch_size, weight_decay=1e-4, patience=self.patience,
                           monitor=f"val_{self.monitor}", max_grad_norm=10.0, seed=self.seed, devices=self.devices,
                           accelerator=self.accelerator, precision=self.precision)

    def _plan(self, splits: Any, *, pretrained: bool, console: Console) -> tuple[str, list[Stage]]:
        """The strategy (``auto``: fine_tune, or full for random weights) and its stages: ``frozen_epochs`` with
        the encoder frozen (default a quarter of ``epochs``), the rest with it at ``encoder_lr_mult`` x the lr."""
        epochs = self.epochs or self._default_epochs(splits)
        strategy, reason = (self.strategy, "as asked") if self.strategy != "auto" else \
            choose_strategy(len(splits.train), task=self.task, pretrained=pretrained)
        frozen = min(epochs, self.frozen_epochs if self.frozen_epochs is not None else max(1, epochs // 4))
        if strategy in ("fine_tune", "gradual_unfreeze", "lp_ft") and frozen in (0, epochs):
            # no frozen epochs asked for: everything trains from the start; no epochs left: the decoder alone
            strategy, reason = ("full", f"frozen_epochs={frozen}") if frozen == 0 else \
                ("linear_probe", f"frozen_epochs={frozen} covers every epoch")
        console.print(f"[bold]Strategy[/bold] {strategy} ({reason}).", highlight=False)
        recipe = Recipe(default_lr=self._default_lr(), lr_mult=self.encoder_lr_mult, solve_head=False)
        main = epochs if strategy in ("full", "linear_probe") else epochs - frozen
        stages = plan_stages(strategy, main, lr=self.lr, lr_mult=self.encoder_lr_mult if pretrained else None,
                             head_epochs=max(1, frozen), recipe=recipe, n_groups=1, owner=type(self).__name__)
        return strategy, stages

    def _fit(self, data: str | os.PathLike[str], *, val: str | os.PathLike[str] | None,
             out: str | os.PathLike[str] | None, resume: bool) -> DenseEstimator:
        self._validate()
        console = Console(quiet=not self.progress or process_rank() != 0)
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
        net.keep_norm_statistics = pretrained  # batches of a few images would make BatchNorm statistics noise
        strategy, stages = self._plan(splits, pretrained=pretrained, console=console)
        run_dir = Path(out) if out is not None else None
        params = self.plain_params()
        if run_dir is not None and not resume and process_rank() == 0:  # a resumed run keeps its own config
            start_run_folder(run_dir)  # a fresh run also drops an older run's checkpoints there
            atomic_write_json(run_dir / "config.json", {
                "task": self.task, "params": params, "data": str(Path(data).resolve()),
                "val": str(Path(val).resolve()) if val is not None else None, "strategy": strategy,
                "stages": [s.to_dict() for s in stages], "backbone_weights": source.description})
            atomic_write_json(run_dir / "data.json", summary)
        self._splits = splits  # the hooks read it (batches, validation)
        self.config_, self.classes_ = config, list(splits.classes)
        result = train(net, self._training_task(splits), stages=stages, config=self._train_config(), run_dir=run_dir,
                       resume=resume, console=console, progress=self.progress)
        state = result.state
        self.net_ = net.cpu().eval()
        self.history_ = state.history
        metrics, predictions = self._measure(splits.val, n_bootstrap=1000)
        metrics.update({"best_epoch": state.best_epoch, "epochs_run": state.epoch, "stopped_early": state.stopped_early,
                        "model_selection": f"best epoch by validation {self.monitor}", "strategy": strategy,
                        "processes": result.world_size, "train_seconds": round(time.perf_counter() - started, 1)})
        self.metrics_ = metrics
        config["metrics"] = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        config["training"] = {"params": params, "strategy": strategy, "stages": [s.to_dict() for s in stages],
                              "history": state.history}
        if run_dir is not None and result.is_main_process:
            self.save(run_dir / "model")
            self._write_run(run_dir, metrics, predictions, splits, state.best_epoch, console)
        console.print(f"\n[bold]Validation[/bold] (best epoch {state.best_epoch})\n{self._format_metrics(metrics)}",
                      highlight=False)
        return self

    def _training_task(self, splits: Any) -> TrainingTask:
        """The hooks of a dense task: the subclass's epoch datasets, loss and validation scores."""
        n_items = len(self._train_dataset(splits, 0))

        def validate(net: nn.Module, device: torch.device) -> Validation:
            metrics, _ = self._measure(splits.val, n_bootstrap=0, net=net)
            return Validation({f"val_{k}": float(v) for k, v in self._quick_scores(metrics).items()})

        return TrainingTask(
            dataset=lambda epoch: self._train_dataset(splits, epoch),
            batches=lambda epoch: shuffled_batches(n_items, self.batch_size, seed=self.seed, epoch=epoch),
            collate=self._collate, step=lambda module, batch: StepOutput(self._loss(module, batch), len(batch[0])),
            validate=validate, find_unused_parameters=True,  # e.g. the encoder's classifier-side layers
            fingerprint=self._run_fingerprint(self.classes_, len(splits.train), len(splits.val)))

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

        return track(items, description=description, transient=True, disable=not self.progress or process_rank() != 0)

    def _as_paths(self, images: Any) -> list[Path]:
        if isinstance(images, (str, os.PathLike)):
            images = [images]
        return [Path(p) for p in images]

    @staticmethod
    def _seeded(seed: int, epoch: int) -> np.random.Generator:
        return np.random.default_rng([seed, epoch])
