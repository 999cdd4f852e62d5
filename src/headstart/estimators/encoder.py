"""What ``TextClassifier`` and ``AudioClassifier`` share: the image estimator's API over a pretrained encoder.

Both follow the same recipe. Frozen features of every training example are computed once (and cached in the
feature store, keyed by the encoder's weights and each text's or file's content); the linear head is solved on
them by cross-validated L-BFGS, or a scikit-learn head is fitted. ``linear_probe`` stops there. ``fine_tune``
then trains the whole encoder with layer-wise learning-rate decay from that solved head; ``lora`` trains only
low-rank adapters (peft) and the head. The run folder and the saved bundle are the same as for images.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress

from headstart.bundle import load_bundle, save_bundle, validation_reference
from headstart.errors import ParameterError, check_choice
from headstart.estimators.base import EstimatorBase
from headstart.evaluation.calibration import apply_temperature
from headstart.evaluation.metrics import (
    classification_metrics,
    format_summary,
    log_loss,
)
from headstart.evaluation.report import (
    calibrate_on_validation,
    print_skipped,
    print_splits,
    write_run_report,
)
from headstart.features.store import FeatureKey, FeatureStore, weights_digest
from headstart.models.encoder_net import EncoderNet, apply_lora, merge_lora
from headstart.models.heads import HEADS
from headstart.storage import atomic_write_json
from headstart.training.heads import fit_linear_head, fit_sklearn_head

__all__ = ["EncoderClassifier", "ENCODER_STRATEGIES", "text_digest"]

ENCODER_STRATEGIES = ("linear_probe", "fine_tune", "lora")
# Below this many training examples the solved linear head is the default: fine-tuning a whole encoder on a
# few hundred examples rarely beats it and costs minutes per epoch on a CPU.
FINE_TUNE_MIN_EXAMPLES = 1000


def text_digest(text: str) -> bytes:
    """The feature-store identity of a text: BLAKE2b-16 of its UTF-8 bytes.

    >>> text_digest("hello").hex()[:8]
    '46fb7408'
    """
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


class EncoderClassifier(EstimatorBase):
    """What text and audio share; subclasses say how inputs are read, batched and identified."""

    task = ""
    modality = ""

    # -- scikit-learn conventions -------------------------------------------------------------------------
    def _validate_common(self) -> None:
        owner = type(self).__name__
        check_choice(owner, "strategy", self.strategy, ("auto", *ENCODER_STRATEGIES))
        check_choice(owner, "head", self.head, HEADS)
        check_choice(owner, "monitor", self.monitor, ("val_loss", "val_accuracy"))
        if self.head != "linear" and self.strategy not in ("auto", "linear_probe"):
            raise ParameterError(
                f"The head {self.head!r} is a scikit-learn model on frozen features, so it cannot be trained with"
                f" strategy={self.strategy!r} (which updates the encoder).",
                fix="Use strategy='linear_probe' (or 'auto') with a scikit-learn head, or head='linear'.")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise self._bad("batch_size", "a positive integer")
        if self.epochs is not None and (not isinstance(self.epochs, int) or self.epochs < 1):
            raise self._bad("epochs", "a positive integer or None")
        if self.lr is not None and (not isinstance(self.lr, (int, float)) or not 0 < self.lr < 1):
            raise self._bad("lr", "a number in (0, 1) or None")
        if not isinstance(self.layer_decay, (int, float)) or not 0 < self.layer_decay <= 1:
            raise self._bad("layer_decay", "a number in (0, 1]")
        if not isinstance(self.lora_rank, int) or not 1 <= self.lora_rank <= 256:
            raise self._bad("lora_rank", "an integer in [1, 256]")
        if not isinstance(self.val_fraction, float) or not 0 < self.val_fraction < 1:
            raise self._bad("val_fraction", "a number in (0, 1)")
        for name, low, high in (("drop_rate", 0.0, 0.95), ("label_smoothing", 0.0, 0.5), ("weight_decay", 0.0, 1.0)):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not low <= value <= high:
                raise self._bad(name, f"a number in [{low}, {high}]")

    # -- subclass hooks -----------------------------------------------------------------------------------------
    def _load_splits(self, data: Any, val: Any) -> Any:
        raise NotImplementedError

    def _create_encoder(self, splits: Any, console: Console) -> tuple[torch.nn.Module, str]:
        raise NotImplementedError

    def _items(self, samples: Any) -> list[Any]:
        raise NotImplementedError

    def _digests(self, samples: Any) -> list[bytes]:
        raise NotImplementedError

    def _batches(self, items: list[Any], labels: np.ndarray | None, *, shuffle_seed: int | None,
                 batch_size: int) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        raise NotImplementedError

    def _default_lr(self, strategy: str) -> float:
        raise NotImplementedError

    def _default_epochs(self) -> int:
        raise NotImplementedError

    def _key_extra(self) -> dict[str, Any]:
        return {}

    # -- training -------------------------------------------------------------------------------------------------
    def _choose_strategy(self, n_train: int, console: Console) -> tuple[str, int]:
        strategy = self.strategy
        if strategy == "auto" and self.head != "linear":
            strategy, reason = "linear_probe", f"the {self.head} head works on frozen features"
        elif strategy == "auto":
            strategy = "fine_tune" if n_train >= FINE_TUNE_MIN_EXAMPLES else "linear_probe"
            reason = (f"{n_train} training examples {'>=' if strategy == 'fine_tune' else '<'}"
                      f" {FINE_TUNE_MIN_EXAMPLES}")
        else:
            reason = "as asked"
        console.print(f"[bold]Strategy[/bold] {strategy} ({reason}).", highlight=False)
        epochs = 1 if strategy == "linear_probe" else (self.epochs or self._default_epochs())
        return strategy, epochs

    def _features(self, items: list[Any], digests: list[bytes], *, console: Console, what: str) -> np.ndarray:
        """Pooled features of ``items`` with the (still pretrained) encoder frozen; cached rows are read from the
        feature store, missing ones computed and added."""
        encoder, key = self._active_encoder, self._feature_key
        store = None if str(self.cache_dir) == "off" else FeatureStore(self.cache_dir)
        found = store.lookup(key, digests) if store is not None else {}
        missing = [i for i, d in enumerate(digests) if d not in found]
        computed: dict[int, np.ndarray] = {}
        if missing:
            encoder.eval()
            rows: list[np.ndarray] = []
            started = time.perf_counter()
            with Progress(console=console, disable=not self.progress, transient=True) as bar, torch.no_grad():
                task = bar.add_task(f"features ({what})", total=len(missing))
                subset = [items[i] for i in missing]
                for batch, _ in self._batches(subset, None, shuffle_seed=None, batch_size=self.batch_size * 2):
                    rows.append(encoder(batch).float().numpy())
                    bar.update(task, advance=len(rows[-1]))
            block = np.concatenate(rows)
            computed = dict(zip(missing, block))
            if store is not None:
                store.add(key, [digests[i] for i in missing], block)
            rate = len(missing) / max(1e-9, time.perf_counter() - started)
            console.print(f"Features ({what}): {len(missing)} computed ({rate:.0f}/s), {len(found)} from the cache.",
                          highlight=False)
        elif items:
            console.print(f"Features ({what}): all {len(items)} from the cache.", highlight=False)
        return np.stack([found[d] if i not in computed else computed[i] for i, d in enumerate(digests)]) if items \
            else np.zeros((0, int(encoder.feature_dim)), np.float32)

    def load_splits(self, data: Any, *, val: Any = None) -> Any:
        """The train/validation(/test) splits ``fit`` would use for ``data`` (same seed, columns and patterns)."""
        self._validate()
        return self._load_splits(data, val)

    def _setup_encoder(self, splits: Any, console: Console) -> tuple[torch.nn.Module, str]:
        """Create the pretrained encoder; it batches inputs, and its weights digest keys the feature store."""
        encoder, description = self._create_encoder(splits, console)
        self._active_encoder = encoder
        self._feature_key = FeatureKey(f"{self.modality}:{encoder.describe()['kind']}:{self.backbone}",
                                       weights_digest(encoder), {**encoder.cost_key(), **self._key_extra()}, "center")
        return encoder, description

    def pretrained_features(self, splits: Any, *, console: Console | None = None) -> tuple[np.ndarray, str]:
        """Frozen features of ``splits.train`` from the pretrained encoder (through the feature store), for
        ranking backbones before any training. Returns the features and where the weights came from."""
        self._validate()
        console = console or Console(quiet=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)  # "random" weights drawn from the seed: a second ranking hits the cache
            _, description = self._setup_encoder(splits, console)
        features = self._features(self._items(splits.train), self._digests(splits.train), console=console,
                                  what="train")
        return features, description

    def fit(self, data: Any, *, val: Any = None, out: str | os.PathLike[str] | None = None) -> "EncoderClassifier":
        """Train on labelled data; with ``out``, write the run folder (config, data, metrics, plots, model).

        Returns:
            self, fitted: ``classes_``, ``net_``, ``history_``, ``metrics_`` (validation), ``strategy_``, ``skipped_``.

        Raises:
            ParameterError, DataError, WeightsNotFoundError.
        """
        from headstart.training.encoder_loop import EncoderTrainConfig, train_encoder

        self._validate()
        started = time.perf_counter()
        console = Console(quiet=not self.progress)
        run_dir = Path(out) if out is not None else None
        splits = self._load_splits(data, val)
        print_splits(console, splits)
        classes = list(splits.classes)
        strategy, epochs = self._choose_strategy(len(splits.train), console)
        torch.manual_seed(self.seed)
        encoder, description = self._setup_encoder(splits, console)
        console.print(f"[bold]Backbone[/bold] {description}", highlight=False)
        net = EncoderNet(encoder, len(classes), drop_rate=self.drop_rate)
        train_items, val_items = self._items(splits.train), self._items(splits.val)
        train_labels, val_labels = np.asarray(splits.train.labels), np.asarray(splits.val.labels)

        head_started = time.perf_counter()
        train_features = self._features(train_items, self._digests(splits.train), console=console, what="train")
        val_features = self._features(val_items, self._digests(splits.val), console=console, what="validation")
        class_weight = None
        if self.class_weights:
            counts = np.bincount(train_labels, minlength=len(classes)).astype(np.float64)
            class_weight = torch.tensor(counts.sum() / (len(classes) * np.maximum(counts, 1)), dtype=torch.float32)
        self.head_ = None
        if self.head != "linear":
            fit = fit_sklearn_head(self.head, train_features, train_labels, class_weight=self.class_weights,
                                   seed=self.seed)
            self.head_ = fit.estimator
            train_probabilities = fit.estimator.predict_proba(train_features)
            probabilities = fit.estimator.predict_proba(val_features).astype(np.float32)
            selection = fit.summary()
        else:
            fit = fit_linear_head(torch.from_numpy(train_features), torch.from_numpy(train_labels),
                                  n_classes=len(classes), class_weight=class_weight, seed=self.seed)
            with torch.no_grad():
                net.head.weight.copy_(fit.weight.float())
                net.head.bias.copy_(fit.bias.float())
                train_probabilities = torch.softmax(net.head(torch.from_numpy(train_features)), 1).numpy()
                probabilities = torch.softmax(net.head(torch.from_numpy(val_features)), 1).numpy()
            selection = fit.summary()
        history = [{"epoch": 1, "stage": "head", "train_loss": log_loss(train_probabilities, train_labels),
                    "train_accuracy": float((train_probabilities.argmax(1) == train_labels).mean()),
                    "val_loss": log_loss(probabilities, val_labels),
                    "val_accuracy": float((probabilities.argmax(1) == val_labels).mean()), "lr": 0.0,
                    "head_selection": selection, "seconds": round(time.perf_counter() - head_started, 1)}]
        console.print(f"Solved {self.head} head on frozen features: val acc {history[0]['val_accuracy']:.4f},"
                      f" val loss {history[0]['val_loss']:.4f}", highlight=False)
        best_epoch, lora_settings = 1, None
        lr = self.lr if self.lr is not None else self._default_lr(strategy)
        if strategy in ("fine_tune", "lora"):
            if strategy == "lora":
                lora_settings = apply_lora(net, rank=self.lora_rank, alpha=2 * self.lora_rank, dropout=0.1)
                trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
                console.print(f"LoRA rank {self.lora_rank}: {trainable:,} trainable parameters (adapters + head).")
            else:
                net.freeze_encoder(False)
            config = EncoderTrainConfig(epochs=epochs, lr=lr, layer_decay=self.layer_decay,
                                        weight_decay=self.weight_decay, label_smoothing=self.label_smoothing,
                                        patience=self.patience, monitor=self.monitor, seed=self.seed)
            steps = -(-len(train_items) // self.batch_size)
            history, best_epoch, probabilities = train_encoder(
                net, lambda epoch: self._batches(train_items, train_labels, shuffle_seed=self.seed * 1000 + epoch,
                                                 batch_size=self.batch_size),
                lambda: self._batches(val_items, val_labels, shuffle_seed=None, batch_size=self.batch_size * 2),
                config=config, steps_per_epoch=steps, class_weight=class_weight, history=history,
                best_probabilities=probabilities, console=console, progress=self.progress, stage=strategy)
            if strategy == "lora" and self.lora_merge:
                merge_lora(net)
        net.eval()
        self.net_ = net
        self.classes_ = classes
        self.strategy_, self.epochs_, self.best_epoch_, self.history_ = strategy, epochs, best_epoch, history
        self.lr_ = lr
        self.lora_ = None if lora_settings is None else {"settings": lora_settings, "merged": bool(self.lora_merge)}
        self.encoder_description_ = {**encoder.describe(), "source": description}
        self.skipped_ = list(splits.skipped)
        if self.modality == "text":
            self.validation_ = validation_reference(splits.val.texts, splits.val.labels, kind="texts")
        else:
            self.validation_ = validation_reference(splits.val.paths, splits.val.labels, kind="files")
        self.metrics_ = classification_metrics(val_labels, probabilities, classes=classes, seed=self.seed)
        calibration = calibrate_on_validation(probabilities, val_labels, enabled=self.calibrate, console=console)
        self.temperature_, self.calibration_ = calibration.temperature, calibration.report
        self.metrics_["split"] = "validation"
        self.metrics_["model_selection"] = (
            f"best epoch ({best_epoch} of {len(history)}) chosen by {self.monitor} on this validation data; for an"
            " unbiased estimate evaluate on a separate test set" if len(history) > 1 else
            "none on this validation data (a solved head's penalty is chosen by cross-validation on the training"
            " examples)")
        self.fit_seconds_ = round(time.perf_counter() - started, 1)
        if run_dir is not None:
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(run_dir / "config.json", {
                "task": self.task, "params": self.plain_params(), "data": str(data) if not hasattr(data, "labels")
                else "samples", "strategy": strategy, "epochs": epochs, "lr": lr, "encoder": self.encoder_description_,
                "lora": self.lora_})
            atomic_write_json(run_dir / "data.json", splits.summary())
            model_dir = self.save(run_dir / "model")
            write_run_report(
                run_dir, model_dir=model_dir, metrics=self.metrics_, history=history, best_epoch=best_epoch,
                classes=classes, calibration=calibration, skipped=self.skipped_, console=console,
                title=(f"{self.task}: backbone {description}, strategy {strategy}, {len(history)} epochs recorded,"
                       f" best epoch {best_epoch}, {self.fit_seconds_}s"),
                extra_metrics={"strategy": strategy, "epochs": epochs, "best_epoch": best_epoch,
                               "fit_seconds": self.fit_seconds_, "skipped_count": len(self.skipped_)})
        return self

    # -- prediction and evaluation ---------------------------------------------------------------------------------
    def _predict_items(self, items: list[Any]) -> np.ndarray:
        self._check_fitted("predict_proba")
        if not items:
            return np.zeros((0, len(self.classes_)), dtype=np.float32)
        self.net_.eval()
        rows = []
        with torch.no_grad():
            for batch, _ in self._batches(items, None, shuffle_seed=None, batch_size=self.batch_size * 2):
                if self.head_ is not None:
                    rows.append(self.head_.predict_proba(self.net_.features(batch).float().numpy()).astype(np.float32))
                else:
                    rows.append(torch.softmax(self.net_(batch).float(), dim=1).numpy())
        probabilities = np.concatenate(rows)
        temperature = getattr(self, "temperature_", 1.0)
        return probabilities if temperature == 1.0 else apply_temperature(probabilities, temperature).astype(np.float32)

    def predict(self, inputs: Sequence[Any]) -> list[str]:
        """The most probable class name for each input."""
        probabilities = self.predict_proba(inputs)
        return [self.classes_[i] for i in probabilities.argmax(axis=1)]

    def _evaluate_samples(self, samples: Any, skipped: list[Any], *, data: Any, out: Any, n_bootstrap: int,
                          names: list[str]) -> dict[str, Any]:
        from headstart.evaluation.plots import plot_confusion_matrix

        console = Console(quiet=not self.progress)
        data = data if isinstance(data, (str, os.PathLike)) else f"{type(data).__name__} ({len(samples)} examples)"
        console.print(f"[bold]Evaluation[/bold] on {data} ({len(samples)} examples)", highlight=False)
        print_skipped(console, skipped)
        probabilities = self._predict_items(self._items(samples))
        metrics = classification_metrics(samples.labels, probabilities, classes=self.classes_,
                                         n_bootstrap=n_bootstrap, seed=self.seed)
        metrics.update({"split": "evaluation", "data": str(data), "skipped_count": len(skipped),
                        "skipped": [{"path": str(s.path), "reason": s.reason} for s in skipped]})
        if out is not None:
            out = Path(out)
            atomic_write_json(out / "metrics.json", metrics)
            plot_confusion_matrix(metrics["confusion_matrix"], out / "confusion_matrix.png", classes=self.classes_,
                                  title=f"Confusion matrix ({Path(str(data)).name})")
            atomic_write_json(out / "predictions.json", [
                {"input": name, "true": self.classes_[t], "predicted": self.classes_[int(np.argmax(row))],
                 "probability": float(np.max(row))}
                for name, t, row in zip(names, samples.labels, probabilities)])
        console.print(format_summary(metrics))
        return metrics

    # -- persistence -------------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the fitted model as a bundle folder (safetensors + config.json + encoder/ files), atomically."""
        self._check_fitted("save")
        config = {
            "task": self.task, "modality": self.modality, "architecture": self.encoder_description_["kind"],
            "backbone": {"name": self.backbone, "weights": self.encoder_description_["source"]},
            "encoder": self.encoder_description_, "preprocessing": self.encoder_description_,
            "classes": self.classes_, "strategy": self.strategy_, "epochs": self.epochs_, "best_epoch": self.best_epoch_,
            "lr": self.lr_, "lora": self.lora_, "params": self.plain_params(), "history": self.history_,
            "metrics": getattr(self, "metrics_", None), "temperature": getattr(self, "temperature_", 1.0),
            "calibration": getattr(self, "calibration_", None), **self._extra_config(),
            "head": {"kind": "linear"} if self.head_ is None else {"kind": "sklearn", "name": self.head},
        }
        return save_bundle(path, self.net_, config, head=self.head_, encoder_files=self.net_.encoder.save_files,
                           validation=getattr(self, "validation_", None))

    def _extra_config(self) -> dict[str, Any]:
        return {}

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "EncoderClassifier":
        """Load a model folder written by :meth:`save` or ``headstart train``; ready to predict/evaluate.

        Raises:
            BundleError: not a model folder of this modality, or damaged.
        """
        from headstart.errors import BundleError

        bundle = load_bundle(path)
        config = bundle.config
        if config.get("task") != cls.task:
            raise BundleError(f"{path} holds a {config.get('task', 'image_classification')} model, not {cls.task}.",
                              fix="Load it with headstart.load_model(PATH), which picks the right class.")
        known = set(inspect.signature(cls.__init__).parameters) - {"self"}
        classifier = cls(**{k: v for k, v in config.get("params", {}).items() if k in known})
        classifier.net_ = bundle.model
        classifier._active_encoder = bundle.model.encoder
        classifier.classes_ = bundle.classes
        classifier.head_ = bundle.head
        classifier.validation_ = bundle.validation
        classifier.strategy_, classifier.epochs_ = config.get("strategy"), config.get("epochs")
        classifier.best_epoch_, classifier.history_ = config.get("best_epoch"), config.get("history", [])
        classifier.lr_, classifier.lora_ = config.get("lr"), config.get("lora")
        classifier.encoder_description_ = config["encoder"]
        classifier.metrics_, classifier.calibration_ = config.get("metrics"), config.get("calibration")
        classifier.temperature_ = float(config.get("temperature", 1.0))
        classifier.skipped_ = []
        classifier._restore_extra(config)
        return classifier

    def _restore_extra(self, config: dict[str, Any]) -> None:
        pass
