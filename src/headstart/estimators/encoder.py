"""What ``TextClassifier`` and ``AudioClassifier`` share: the image estimator's API over a pretrained encoder.

Both follow the same recipe, on the one training loop (:func:`headstart.training.loop.train`). Frozen features
of every training example are computed once (and cached in the feature store, keyed by the encoder's weights and
each text's or file's content); the linear head is solved on them by cross-validated L-BFGS, or a scikit-learn
head is fitted. ``linear_probe`` stops there. ``fine_tune`` then trains the whole encoder with layer-wise
learning-rate decay from that solved head; ``lora`` trains only low-rank adapters (peft) and the head; ``partial``
trains only the last ``tune_blocks`` blocks (transformer layers; a logmel CNN's blocks, trained on the cached
output of the frozen ones, :mod:`headstart.training.partial`). The run
folder, checkpoints, resume and the saved bundle are the same as for images.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress
from torch.utils.data import Dataset

from headstart.bundle import load_bundle, save_bundle, validation_reference
from headstart.errors import ParameterError, check_choice, check_integer
from headstart.estimators.base import restores_state_on_failure
from headstart.estimators.classification import ClassifierEstimator
from headstart.evaluation.calibration import apply_temperature
from headstart.evaluation.metrics import paired_accuracy_gain
from headstart.evaluation.report import print_splits
from headstart.features.store import FeatureKey, FeatureStore, weights_digest
from headstart.models.encoder_net import EncoderNet, apply_lora, merge_lora
from headstart.models.heads import HEADS
from headstart.storage import atomic_write_json
from headstart.training.budget import format_seconds, resolve_time_budget
from headstart.training.checkpoints import start_run_folder
from headstart.training.classification import (
    classification_scores,
    classification_step,
    inverse_frequency_weights,
    solve_linear_head,
)
from headstart.training.loop import (
    StepOutput,
    TrainConfig,
    TrainingTask,
    TrainState,
    Validation,
    process_rank,
    train,
)
from headstart.training.partial import VALIDATION, partial_training_task
from headstart.training.recipes import STRATEGIES, Recipe, choose_strategy, plan_stages

__all__ = ["EncoderClassifier", "ENCODER_STRATEGIES", "text_digest"]

ENCODER_STRATEGIES = STRATEGIES


def text_digest(text: str) -> bytes:
    """The feature-store identity of a text: BLAKE2b-16 of its UTF-8 bytes.

    >>> text_digest("hello").hex()[:8]
    '46fb7408'
    """
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


class _EpochItems(Dataset):
    """Training examples of one epoch: item ``i`` is ``make(items[i], rng(seed, epoch, i))`` with its label, so
    random crops do not depend on the batch order (a resumed run draws what the uninterrupted one drew)."""

    def __init__(self, items: list[Any], labels: np.ndarray, make: Any, *, seed: int, epoch: int) -> None:
        self.items, self.labels, self.make, self.seed, self.epoch = items, labels, make, seed, epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return self.make(self.items[index], rng), int(self.labels[index])


class EncoderClassifier(ClassifierEstimator):
    """What text and audio share; subclasses say how inputs are read, batched and identified."""

    task = ""
    modality = ""

    # -- scikit-learn conventions -------------------------------------------------------------------------
    def _validate_common(self) -> None:
        owner = type(self).__name__
        check_choice(owner, "strategy", self.strategy, ("auto", *self._strategies()))
        check_choice(owner, "head", self.head, HEADS)
        check_choice(owner, "monitor", self.monitor, ("val_loss", "val_accuracy"))
        if self.head != "linear" and self.strategy not in ("auto", "linear_probe"):
            raise ParameterError(
                f"The head {self.head!r} is a scikit-learn model on frozen features, so it cannot be trained with"
                f" strategy={self.strategy!r} (which updates the encoder).",
                fix="Use strategy='linear_probe' (or 'auto') with a scikit-learn head, or head='linear'.")
        self._check_shared_params()
        if not isinstance(self.layer_decay, (int, float)) or not 0 < self.layer_decay <= 1:
            raise self._bad("layer_decay", "a number in (0, 1]")
        check_integer(owner, "lora_rank", self.lora_rank, low=1, high=256)
        check_integer(owner, "tune_blocks", self.tune_blocks, low=1)
        self._train_config().validate(owner)

    def _train_config(self) -> TrainConfig:
        owner = type(self).__name__
        return TrainConfig(batch_size=self.batch_size, weight_decay=self.weight_decay, patience=self.patience,
                           monitor=self.monitor, max_grad_norm=1.0, seed=self.seed, devices=self.devices,
                           accelerator=self.accelerator, precision=self.precision,
                           adaptation_probe=self.strategy == "auto",
                           time_budget=resolve_time_budget(self.time_budget, strategy=self.strategy,
                                                           on_gpu=self._on_gpu(), owner=owner))

    # -- subclass hooks -----------------------------------------------------------------------------------------
    def _strategies(self) -> tuple[str, ...]:
        return ENCODER_STRATEGIES

    def _auto_strategy(self, n_train: int) -> tuple[str, str]:
        """``strategy="auto"``: the strategy and the reason (printed)."""
        return choose_strategy(n_train, task=self.modality, pretrained=self.weights != "random", head=self.head)

    def _augmented_views(self, train_items: list[Any]) -> int:
        """``strategy="partial"``: random training views cached besides the inference view of each item."""
        return 0

    def _load_splits(self, data: Any, val: Any) -> Any:
        raise NotImplementedError

    def _create_encoder(self, splits: Any, console: Console) -> tuple[torch.nn.Module, str]:
        raise NotImplementedError

    def _items(self, samples: Any) -> list[Any]:
        raise NotImplementedError

    def _digests(self, samples: Any) -> list[bytes]:
        raise NotImplementedError

    def _training_order(self, items: list[Any], *, epoch: int) -> list[list[int]]:
        """The batches of one training epoch, as lists of item indices."""
        raise NotImplementedError

    def _training_item(self, item: Any, rng: np.random.Generator) -> Any:
        """An item as training sees it (e.g. a random crop of a clip)."""
        return item

    def _inference_item(self, item: Any) -> Any:
        """An item as prediction sees it (e.g. the centre crop of a clip)."""
        return item

    def _prepare(self, items: list[Any]) -> dict[str, torch.Tensor]:
        """Prepared items -> the encoder's input tensors (tokens, waveforms)."""
        raise NotImplementedError

    def _default_lr(self, strategy: str) -> float:
        raise NotImplementedError

    def _default_epochs(self) -> int:
        raise NotImplementedError

    def _key_extra(self) -> dict[str, Any]:
        return {}

    # -- batches ------------------------------------------------------------------------------------------------
    def _inference_batches(self, items: list[Any], *, device: torch.device | str = "cpu"
                           ) -> Iterator[dict[str, torch.Tensor]]:
        """``items`` in order, prepared in batches of twice the training batch size, on ``device``."""
        size = self.batch_size * 2
        for start in range(0, len(items), size):
            batch = self._prepare([self._inference_item(x) for x in items[start:start + size]])
            yield {name: tensor.to(device) for name, tensor in batch.items()}

    def _collate(self, rows: list[tuple[Any, int]]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return self._prepare([item for item, _ in rows]), torch.tensor([label for _, label in rows])

    @torch.no_grad()
    def _probabilities(self, net: EncoderNet, items: list[Any], device: torch.device | str = "cpu") -> np.ndarray:
        net.eval()
        rows = [torch.softmax(net(batch).float(), dim=1).cpu().numpy() for batch in
                self._inference_batches(items, device=device)]
        return np.concatenate(rows) if rows else np.zeros((0, net.head.out_features), np.float32)

    # -- training -------------------------------------------------------------------------------------------------
    def _plan_strategy(self, n_train: int, console: Console) -> tuple[str, int]:
        strategy = self.strategy
        if strategy == "auto":
            strategy, reason = self._auto_strategy(n_train)
        else:
            reason = "as asked"
        console.print(f"[bold]Strategy[/bold] {strategy} ({reason}).", highlight=False)
        budget = self._train_config().time_budget
        self.plan_ = {"strategy": self.strategy, "chosen": strategy, "reason": reason, "time_budget_seconds": budget}
        if budget is not None:
            console.print(f"Time budget: {format_seconds(budget)} for training (--time-budget; 'none' for no limit).",
                          highlight=False)
        epochs = 1 if strategy == "linear_probe" else (self.epochs or self._default_epochs())
        return strategy, epochs

    def _features(self, items: list[Any], digests: list[bytes], *, console: Console, what: str,
                  device: torch.device | str = "cpu") -> np.ndarray:
        """Pooled features of ``items`` with the (still pretrained) encoder frozen; cached rows are read from the
        feature store, missing ones computed and added."""
        encoder, key = self._active_encoder, self._feature_key
        store = FeatureStore.open(self.cache_dir)
        found = store.lookup(key, digests) if store is not None else {}
        missing = [i for i, d in enumerate(digests) if d not in found]
        computed: dict[int, np.ndarray] = {}
        if missing:
            encoder.eval()
            rows: list[np.ndarray] = []
            started = time.perf_counter()
            with Progress(console=console, disable=not self.progress, transient=True) as bar, torch.no_grad():
                task = bar.add_task(f"features ({what})", total=len(missing))
                for batch in self._inference_batches([items[i] for i in missing], device=device):
                    rows.append(encoder(batch).float().cpu().numpy())
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

    @restores_state_on_failure
    def fit(self, data: Any, *, val: Any = None, out: str | os.PathLike[str] | None = None,
            resume: bool = False) -> "EncoderClassifier":
        """Train on labelled data; with ``out``, write the run folder (config, checkpoints, data, metrics, plots,
        model); ``resume`` continues the run in ``out`` from its last checkpoint.

        Returns:
            self, fitted: ``classes_``, ``net_``, ``history_``, ``metrics_`` (validation), ``strategy_``, ``skipped_``.

        Raises:
            ParameterError, DataError, WeightsNotFoundError, ResumeError.
        """
        self._validate()
        if resume and out is None:
            raise ParameterError("resume=True needs the run folder, but out is None.",
                                 fix="Pass out=RUN_DIR, the folder of the run to continue.")
        started = time.perf_counter()
        console = Console(quiet=not self.progress or process_rank() != 0)
        run_dir = Path(out) if out is not None else None
        splits = self._load_splits(data, val)
        print_splits(console, splits)
        self.classes_ = list(splits.classes)
        strategy, epochs = self._plan_strategy(len(splits.train), console)
        torch.manual_seed(self.seed)
        encoder, description = self._setup_encoder(splits, console)
        console.print(f"[bold]Backbone[/bold] {description}", highlight=False)
        net = EncoderNet(encoder, len(self.classes_), drop_rate=self.drop_rate)
        lr = self.lr if self.lr is not None else self._default_lr(strategy)
        self.encoder_description_ = {**encoder.describe(), "source": description}
        if run_dir is not None and process_rank() == 0:
            self._start_run(run_dir, data=data, val=val, splits=splits, strategy=strategy, epochs=epochs, lr=lr,
                            resume=resume)
        state, payload, lora_settings = self._train(net, splits, strategy=strategy, epochs=epochs, lr=lr,
                                                    run_dir=run_dir, resume=resume, console=console)
        self.net_ = net.cpu().eval()
        self.strategy_, self.epochs_, self.best_epoch_, self.history_ = strategy, epochs, state.best_epoch, state.history
        self.lr_ = lr
        self.lora_ = None if lora_settings is None else {"settings": lora_settings, "merged": bool(self.lora_merge)}
        self.skipped_ = list(splits.skipped)
        inputs = splits.val.texts if self.modality == "text" else splits.val.paths
        self.validation_ = validation_reference(inputs, splits.val.labels, kind="texts" if self.modality == "text"
                                                else "files")
        self.temperature_ = 1.0
        val_labels = np.asarray(splits.val.labels)
        probabilities = payload if payload is not None else self._predict_items(self._items(splits.val))
        calibration = self._finish_fit(probabilities, val_labels, monitor=self.monitor, console=console,
                                       started=started)
        if run_dir is not None and self.is_main_process_:
            self._write_run(run_dir, calibration=calibration, skipped=self.skipped_, console=console,
                            title=(f"{self.task}: backbone {description}, strategy {strategy}, {len(self.history_)}"
                                   f" epochs recorded, best epoch {self.best_epoch_}, {self.fit_seconds_}s"),
                            extra={"processes": self.processes_, "plan": self.plan_, "time_budget": state.budget})
        return self

    def _start_run(self, run_dir: Path, *, data: Any, val: Any, splits: Any, strategy: str, epochs: int, lr: float,
                   resume: bool) -> None:
        """config.json (a fresh run only: a resumed one keeps its own) and data.json."""
        start_run_folder(run_dir, resume=resume)  # a fresh run also drops an older run's checkpoints there
        if not resume:
            atomic_write_json(run_dir / "config.json", {
                "task": self.task, "params": self.plain_params(),
                "data": str(Path(data).resolve()) if isinstance(data, (str, os.PathLike)) else "samples",
                "val": str(Path(val).resolve()) if isinstance(val, (str, os.PathLike)) else None if val is None
                else "samples",
                "strategy": strategy, "epochs": epochs, "lr": lr, "encoder": self.encoder_description_})
        atomic_write_json(run_dir / "data.json", splits.summary())

    def _train(self, net: EncoderNet, splits: Any, *, strategy: str, epochs: int, lr: float, run_dir: Path | None,
               resume: bool, console: Console) -> tuple[TrainState, np.ndarray | None, dict[str, Any] | None]:
        """The solved (or scikit-learn) head, then the strategy's stages on the training loop."""
        train_items, val_items = self._items(splits.train), self._items(splits.val)
        train_labels, val_labels = np.asarray(splits.train.labels), np.asarray(splits.val.labels)
        self.head_ = None
        if self.head != "linear":
            train_features = self._features(train_items, self._digests(splits.train), console=console, what="train")
            val_features = self._features(val_items, self._digests(splits.val), console=console, what="validation")
            state, validation = self._fit_sklearn_head(train_features, train_labels, val_features, val_labels,
                                                       n_views=1, console=console)
            self.is_main_process_, self.processes_ = True, 1
            return state, validation.payload, None
        lora_settings = None
        if strategy == "lora":
            lora_settings = apply_lora(net, rank=self.lora_rank, alpha=2 * self.lora_rank, dropout=0.1)
            trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
            console.print(f"LoRA rank {self.lora_rank}: {trainable:,} trainable parameters (adapters + head).")
        if strategy == "partial":
            net.encoder.set_split(self.tune_blocks)
        stages = plan_stages(strategy, epochs, lr=lr, recipe=Recipe(default_lr=lr, lr_mult=self.layer_decay),
                             n_groups=len(net.layer_groups()), owner=type(self).__name__)
        task = self._training_task(splits, train_items, val_items, train_labels, val_labels, console)
        if strategy == "partial" and hasattr(net.encoder, "bottom"):  # a CNN's frozen blocks are cached
            task = self._partial_task(task, net, train_items, val_items, train_labels, val_labels, console)
        result = train(net, task, stages=stages, config=self._train_config(), run_dir=run_dir, resume=resume,
                       console=console, progress=self.progress)
        self.is_main_process_, self.processes_ = result.is_main_process, result.world_size
        if strategy == "lora" and self.lora_merge:
            merge_lora(net)
        return result.state, result.best_payload, lora_settings

    def _training_task(self, splits: Any, train_items: list[Any], val_items: list[Any], train_labels: np.ndarray,
                       val_labels: np.ndarray, console: Console) -> TrainingTask:
        """The hooks of a text or audio task: batches of prepared inputs, the head solved on cached features."""
        weight = self._class_weight(train_labels)

        def step(module: torch.nn.Module, batch: Any) -> StepOutput:
            inputs, labels = batch
            return classification_step(module, inputs, labels, class_weight=weight,
                                       label_smoothing=self.label_smoothing)

        def validate(net: EncoderNet, device: torch.device) -> Validation:
            probabilities = self._probabilities(net, val_items, device)
            return Validation(classification_scores(probabilities, val_labels), payload=probabilities)

        def solve(net: EncoderNet, fabric: Any) -> Validation:
            train_features = self._features(train_items, self._digests(splits.train), console=console, what="train",
                                            device=fabric.device)
            val_features = self._features(val_items, self._digests(splits.val), console=console, what="validation",
                                          device=fabric.device)
            validation = solve_linear_head(net.head, torch.from_numpy(train_features), torch.from_numpy(train_labels),
                                           torch.from_numpy(val_features), torch.from_numpy(val_labels),
                                           class_weight=weight, seed=self.seed,
                                           store=FeatureStore.open(self.cache_dir))
            console.print(f"Solved {self.head} head on frozen features: val acc"
                          f" {validation.scores['val_accuracy']:.4f}, val loss {validation.scores['val_loss']:.4f}",
                          highlight=False)
            return validation

        return TrainingTask(
            dataset=lambda epoch: _EpochItems(train_items, train_labels, self._training_item, seed=self.seed,
                                              epoch=epoch),
            batches=lambda epoch: self._training_order(train_items, epoch=epoch), collate=self._collate,
            step=step, validate=validate, solve_head=solve, find_unused_parameters=True, val_items=len(val_items),
            fingerprint=self._run_fingerprint(self.classes_, len(train_items), len(val_items)),
            gain_check=lambda head, tuned: paired_accuracy_gain(val_labels, head, tuned, seed=self.seed))

    def _class_weight(self, train_labels: np.ndarray) -> torch.Tensor | None:
        return inverse_frequency_weights(np.bincount(train_labels, minlength=len(self.classes_))) \
            if self.class_weights else None

    def _partial_task(self, base: TrainingTask, net: EncoderNet, train_items: list[Any], val_items: list[Any],
                      train_labels: np.ndarray, val_labels: np.ndarray, console: Console) -> TrainingTask:
        """``strategy="partial"``: epochs of the encoder's top blocks on the cached output of its frozen part for
        the inference view of every item and ``_augmented_views`` seeded training views
        (:mod:`headstart.training.partial`)."""
        views = ["center", *(f"augment-{k}" for k in range(self._augmented_views(train_items)))]
        size = self.batch_size * 2

        @torch.no_grad()
        def compute(view: str) -> torch.Tensor:
            items = val_items if view == VALIDATION else train_items
            if view.startswith("augment-"):
                seed = [self.seed, 7919, int(view.split("-")[1])]
                items = [self._training_item(x, np.random.default_rng([*seed, i])) for i, x in enumerate(items)]
            else:
                items = [self._inference_item(x) for x in items]
            device, was_training = next(net.parameters()).device, net.training
            net.eval()
            chunks = []
            with Progress(console=console, disable=not self.progress, transient=True) as bar:
                task = bar.add_task(f"frozen blocks ({view})", total=len(items))
                for start in range(0, len(items), size):
                    batch = self._prepare(items[start:start + size])
                    chunks.append(net.encoder.bottom({k: v.to(device) for k, v in batch.items()}).float().cpu())
                    bar.update(task, advance=len(chunks[-1]))
            net.train(was_training)
            return torch.cat(chunks)

        return partial_training_task(base, compute, views=views, labels=train_labels, val_labels=val_labels,
                                     batch_size=self.batch_size, seed=self.seed,
                                     class_weight=self._class_weight(train_labels),
                                     label_smoothing=self.label_smoothing, console=console)

    # -- prediction and evaluation ---------------------------------------------------------------------------------
    def _predict_items(self, items: list[Any]) -> np.ndarray:
        self._check_fitted("predict_proba")
        if not items:
            return np.zeros((0, len(self.classes_)), dtype=np.float32)
        self.net_.eval()
        if self.head_ is not None:
            with torch.no_grad():
                features = [self.net_.features(batch).float().numpy() for batch in self._inference_batches(items)]
            probabilities = self.head_.predict_proba(np.concatenate(features)).astype(np.float32)
        else:
            probabilities = self._probabilities(self.net_, items)
        temperature = getattr(self, "temperature_", 1.0)
        return probabilities if temperature == 1.0 else apply_temperature(probabilities, temperature).astype(np.float32)

    def _evaluate_samples(self, samples: Any, skipped: list[Any], *, data: Any, out: Any, n_bootstrap: int,
                          names: list[str]) -> dict[str, Any]:
        console = Console(quiet=not self.progress)
        data = data if isinstance(data, (str, os.PathLike)) else f"{type(data).__name__} ({len(samples)} examples)"
        self._print_evaluation_start(console, data, len(samples), skipped)
        probabilities = self._predict_items(self._items(samples))
        return self._report_evaluation(samples.labels, probabilities, names=names, name_key="input", data=data,
                                       skipped=skipped, out=out, n_bootstrap=n_bootstrap, console=console)

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
