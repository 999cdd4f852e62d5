"""``ImageClassifier``: the scikit-learn-style estimator that ties data, backbone, strategy and training together.

>>> from headstart import ImageClassifier
>>> ImageClassifier(strategy="linear_probe", epochs=3)
ImageClassifier(backbone='efficientnet_lite0', strategy='linear_probe', epochs=3)
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from rich.console import Console

from headstart.bundle import load_bundle, save_bundle, validation_reference
from headstart.data.images import DEFAULT_MAX_IMAGE_PIXELS, DatasetSplits, load_image_dataset, scan_image_folder
from headstart.errors import DataError, ParameterError, check_choice, check_integer
from headstart.estimators.base import restores_state_on_failure
from headstart.estimators.classification import ClassifierEstimator
from headstart.evaluation.calibration import apply_temperature
from headstart.evaluation.metrics import paired_accuracy_gain
from headstart.evaluation.report import print_splits
from headstart.features import (RUNTIMES, FeatureExtractor, FeatureStore, frozen_feature_size, frozen_view_features,
                                view_names)
from headstart.models import DEFAULT_BACKBONE, Preprocessing, create_backbone, get_backbone_spec
from headstart.models.heads import HEADS, FeatureMLP
from headstart.models.multilayer import (StageFeatures, check_feature_layers, describe_layer_choice, layer_plan,
                                         with_feature_layers)
from headstart.models.inference import predict_files
from headstart.storage import atomic_write_json
from headstart.training.budget import fine_tune_within, format_seconds, resolve_time_budget
from headstart.training.checkpoints import start_run_folder
from headstart.training.classification import (classification_scores, classification_step, inverse_frequency_weights,
                                               solve_linear_head)
from headstart.training.loop import StepOutput, TrainConfig, TrainingTask, TrainState, Validation, shuffled_batches
from headstart.training.partial import image_view_maps, partial_training_task, split_index
from headstart.training.recipes import IMAGE_STRATEGIES, Stage, choose_strategy, default_epochs, plan_stages

__all__ = ["ImageClassifier", "frozen_feature_size"]


class ImageClassifier(ClassifierEstimator):
    """Transfer learning for image classification from a folder of labelled images.

    Args:
        backbone: a name from ``headstart backbones`` or ``timm:<model>``.
        strategy: ``auto`` (chosen from the dataset size), ``linear_probe``, ``fine_tune``, ``gradual_unfreeze``,
            ``lp_ft``, ``full`` or ``partial`` (see :mod:`headstart.training.recipes`).
        head: ``linear`` (a linear layer; with a frozen backbone solved on cached features), or a scikit-learn
            head on frozen features: ``logistic``, ``linear_svm``, ``rbf_svm``, ``random_forest``, ``knn``
            (hyper-parameters chosen by cross-validation on the training images; implies ``linear_probe``).
        epochs: epochs of the main stage (``fine_tune``: unfrozen epochs, after one head stage); ``None``
            chooses from the dataset size. A frozen head on cached features is solved in one step.
        weights: ``auto`` (first reachable pretrained source), ``random``, or a checkpoint file.
        lr: peak learning rate of the head; ``None`` uses the strategy's default.
        batch_size: images per step (per process).
        image_size: square input side; ``None`` uses the backbone's pretrained resolution, scaled by
            :func:`~headstart.features.frozen_feature_size` for ``linear_probe``.
        drop_rate: dropout before the new classifier.
        label_smoothing: cross-entropy label smoothing.
        weight_decay: AdamW weight decay (not applied to biases and norm weights).
        patience: epochs without improvement before early stopping (``None`` disables it).
        monitor: picks the best epoch: ``val_calibrated_loss`` (log loss at each epoch's best temperature, fair to
            epochs trained with label smoothing against the head solved without), ``val_loss``, ``val_accuracy``.
        class_weights: weight the loss by inverse class frequency (imbalanced data).
        seed: makes splits, initialisation, shuffling and augmentation repeatable.
        val_fraction: share held out for validation when no validation data is given.
        devices, accelerator, precision: passed to Lightning Fabric (e.g. ``devices=2`` for two processes,
            ``precision="bf16-mixed"`` on a GPU).
        num_workers: image-decoding processes; ``None`` chooses from the machine.
        max_image_pixels: larger images are skipped as possible decompression bombs.
        allow_download: whether a hub download may be tried when no local weights exist.
        lr_mult: discriminative learning rates: each backbone layer group learns ``lr_mult`` times as fast as
            the group after it (``None``: the strategy's default).
        augmented_views: random augmented crops per training image cached (with the centre crop and its mirror)
            for heads on frozen features: augmentation without running the backbone every epoch.
        runtime: frozen-feature runtime: ``auto`` (fastest available, checked against torch), ``openvino``,
            ``onnxruntime`` or ``torch``.
        cache_dir: feature store folder; ``None``: ``$HEADSTART_CACHE`` or ``~/.cache/headstart``; ``"off"``:
            no caching.
        calibrate: fit a temperature on the validation predictions (temperature scaling); predicted
            probabilities are then calibrated (the predicted class never changes).
        time_budget: seconds the training stages may take (a number, or ``"10m"``, ``"1.5h"``): each stage's
            epoch time is measured on its first steps and only the epochs that fit run. ``"auto"``: with
            ``strategy="auto"``, 5 minutes on a CPU and 30 with a GPU (``auto`` then fine-tunes only when two
            unfrozen epochs fit, measured on this machine; :func:`~headstart.training.budget.fine_tune_within`);
            otherwise none. ``None``: no limit.
        feature_layers: what the linear head reads: ``"last"`` (the backbone's pooled last layer), ``"all"`` (it
            and the pooled output of every stage, Head2Toe; :mod:`headstart.models.multilayer`), k (the last layer
            and the last k stages) or ``"auto"``: for a frozen backbone (``linear_probe``), ``last`` or ``all``,
            whichever has the lower 5-fold CV log loss on the training images beyond its noise; else ``last``.
        tune_blocks: ``strategy="partial"``: the last blocks that train; the frozen blocks' output is computed once
            per view (centre, mirror and ``augmented_views`` random crops, 2 when 0) and epochs cycle through them.
        progress: show progress bars and per-epoch lines.
    """

    _fitted_attribute = "model_"

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        *,
        strategy: str = "auto",
        head: str = "linear",
        epochs: int | None = None,
        weights: str | os.PathLike[str] = "auto",
        lr: float | None = None,
        batch_size: int = 32,
        image_size: int | None = None,
        drop_rate: float = 0.2,
        label_smoothing: float = 0.1,
        weight_decay: float = 0.02,
        patience: int | None = 3,
        monitor: str = "val_calibrated_loss",
        class_weights: bool = False,
        seed: int = 0,
        val_fraction: float = 0.2,
        devices: int = 1,
        accelerator: str = "auto",
        precision: str = "32-true",
        num_workers: int | None = None,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        allow_download: bool = True,
        lr_mult: float | None = None,
        augmented_views: int = 0,
        runtime: str = "auto",
        cache_dir: str | os.PathLike[str] | None = None,
        calibrate: bool = True,
        time_budget: float | str | None = "auto",
        feature_layers: str | int = "auto",
        tune_blocks: int = 2,
        progress: bool = True,
    ) -> None:
        self.backbone = backbone
        self.strategy = strategy
        self.head = head
        self.epochs = epochs
        self.weights = weights
        self.lr = lr
        self.batch_size = batch_size
        self.image_size = image_size
        self.drop_rate = drop_rate
        self.label_smoothing = label_smoothing
        self.weight_decay = weight_decay
        self.patience = patience
        self.monitor = monitor
        self.class_weights = class_weights
        self.seed = seed
        self.val_fraction = val_fraction
        self.devices = devices
        self.accelerator = accelerator
        self.precision = precision
        self.num_workers = num_workers
        self.max_image_pixels = max_image_pixels
        self.allow_download = allow_download
        self.lr_mult = lr_mult
        self.augmented_views = augmented_views
        self.runtime = runtime
        self.cache_dir = cache_dir
        self.calibrate = calibrate
        self.time_budget = time_budget
        self.feature_layers = feature_layers
        self.tune_blocks = tune_blocks
        self.progress = progress

    # -- scikit-learn conventions -------------------------------------------------------------------------
    def _validate_params(self) -> None:
        check_choice("ImageClassifier", "strategy", self.strategy, ("auto", *IMAGE_STRATEGIES))
        check_choice("ImageClassifier", "head", self.head, HEADS)
        check_choice("ImageClassifier", "runtime", self.runtime, RUNTIMES)
        check_feature_layers(self.feature_layers)
        if self.head != "linear" and self.strategy not in ("auto", "linear_probe"):
            raise ParameterError(
                f"The head {self.head!r} is a scikit-learn model on frozen features, so it cannot be trained with"
                f" strategy={self.strategy!r} (which updates the backbone).",
                fix="Use strategy='linear_probe' (or 'auto') with a scikit-learn head, or head='linear'.")
        check_integer("ImageClassifier", "augmented_views", self.augmented_views, low=0, high=32)
        check_integer("ImageClassifier", "tune_blocks", self.tune_blocks, low=1)
        if self.lr_mult is not None and (not isinstance(self.lr_mult, (int, float)) or not 0 < self.lr_mult <= 1):
            raise self._bad("lr_mult", "a number in (0, 1] or None")
        get_backbone_spec(self.backbone)
        self._check_shared_params()
        check_integer("ImageClassifier", "max_image_pixels", self.max_image_pixels, low=1)
        check_integer("ImageClassifier", "num_workers", self.num_workers, low=0, optional=True)
        check_integer("ImageClassifier", "image_size", self.image_size, low=32, high=1024, optional=True)
        check_choice("ImageClassifier", "monitor", self.monitor, ("val_calibrated_loss", "val_loss", "val_accuracy"))
        self._train_config().validate("ImageClassifier")

    def _train_config(self) -> TrainConfig:
        return TrainConfig(batch_size=self.batch_size, weight_decay=self.weight_decay, patience=self.patience,
                           monitor=self.monitor, seed=self.seed, devices=self.devices, accelerator=self.accelerator,
                           precision=self.precision, adaptation_probe=self.strategy == "auto",
                           time_budget=resolve_time_budget(self.time_budget, strategy=self.strategy, on_gpu=self._on_gpu()))

    # -- training -------------------------------------------------------------------------------------------
    @restores_state_on_failure
    def fit(self, data: str | os.PathLike[str], *, val: str | os.PathLike[str] | None = None,
            out: str | os.PathLike[str] | None = None, resume: bool = False) -> "ImageClassifier":
        """Train on an image folder; with ``out``, write the run (config, checkpoints, metrics, plots, model).

        Args:
            data: a class-folder root, or a root with ``train/`` and ``val/`` (optionally ``test/``).
            val: validation class folders; default: ``data``'s own ``val/`` or a stratified hold-out.
            out: the run folder. The model is saved to ``out/model``.
            resume: continue the run in ``out`` from its last checkpoint.

        Returns:
            self, fitted: ``classes_``, ``model_``, ``preprocessing_``, ``history_``, ``metrics_`` (validation),
            ``strategy_``, ``epochs_``, ``skipped_``.

        Raises:
            ParameterError, DataError, WeightsNotFoundError, ResumeError.
        """
        from headstart.models.classifier_net import ClassifierNet
        from headstart.training.loop import process_rank, train

        self._validate_params()
        self.adaptation_ = None  # a refit model is no longer an adapted one
        config = self._train_config()
        if resume and out is None:
            raise ParameterError("resume=True needs the run folder, but out is None.",
                                 fix="Pass out=RUN_DIR, the folder of the run to continue.")
        started = time.perf_counter()
        console = Console(quiet=not self.progress or process_rank() != 0)
        run_dir = Path(out) if out is not None else None
        splits = load_image_dataset(data, val=val, val_fraction=self.val_fraction, seed=self.seed,
                                    max_pixels=self.max_image_pixels)
        print_splits(console, splits)
        spec = get_backbone_spec(self.backbone)
        torch.manual_seed(self.seed)
        model, source = create_backbone(self.backbone, len(splits.classes), weights=self.weights,
                                        drop_rate=self.drop_rate, allow_download=self.allow_download)
        net = ClassifierNet(model)  # its new head's initial weights are drawn here, once
        strategy, epochs, stages = self._plan(len(splits.train), console, net=net,
                                              n_val=len(splits.val), input_size=spec.preprocessing().input_size,
                                              budget=config.time_budget)
        model = with_feature_layers(model, self.feature_layers, strategy=strategy, head=self.head,
                                    num_classes=len(splits.classes))
        net = net if model is net.model else ClassifierNet(model)
        net.split = split_index(model, self.tune_blocks) if strategy == "partial" else None
        preprocessing = self._input_preprocessing(spec, strategy, console)
        console.print(f"[bold]Backbone[/bold] {spec.name} ({spec.timm_id}), weights from {source.description}; "
                      f"input {preprocessing.input_size}px.")
        views = view_names(self.augmented_views)
        extractor = self._feature_extractor(model, preprocessing, spec.architecture, console=console,
                                            cache_features=True)
        self.backbone_spec_ = {"name": spec.name, "timm_id": spec.timm_id, "architecture": spec.architecture,
                               "weights": source.description}
        if run_dir is not None and process_rank() == 0:
            self._start_run(run_dir, resume=resume, splits=splits, data=data, val=val, strategy=strategy,
                            epochs=epochs, stages=stages, preprocessing=preprocessing, config=config)
        self.head_ = None
        self._predict_extractor = None  # a refit must never predict with the previous model's extractor
        if self.head != "linear":
            state, validation = self._fit_sklearn_on_images(extractor, splits, views, console)
            payload = validation.payload
            model.reset_classifier(0)
            self.is_main_process_, self.processes_ = True, 1
        else:
            result = train(net, self._training_task(net, splits, preprocessing, extractor, views, console),
                           stages=stages, config=config, run_dir=run_dir, resume=resume, console=console,
                           progress=self.progress)
            state, payload = result.state, result.best_payload
            self.is_main_process_, self.processes_ = result.is_main_process, result.world_size
        self.features_report_, self.model_ = (extractor.report.to_dict() if extractor is not None else None,
                                              model.cpu().to(memory_format=torch.contiguous_format).eval())
        self.classes_, self.preprocessing_, self.skipped_ = list(splits.classes), preprocessing, list(splits.skipped)
        self.history_, self.best_epoch_ = state.history, state.best_epoch
        self.strategy_, self.epochs_ = strategy, epochs
        self.validation_ = validation_reference(splits.val.paths, splits.val.labels, kind="files")
        self.train_config_, self.stages_ = asdict(config), [s.to_dict() for s in stages]
        # The restored epoch's validation predictions are kept by the loop; recompute only after a resume.
        self.temperature_ = 1.0
        probabilities = payload if payload is not None else self.predict_proba(splits.val.paths)
        calibration = self._finish_fit(probabilities, np.asarray(splits.val.labels), monitor=config.monitor,
                                       console=console, started=started)
        if run_dir is not None and self.is_main_process_:
            self._write_run(run_dir, calibration=calibration, skipped=list(splits.skipped), console=console,
                            title=(f"backbone {spec.name} ({source.description}), strategy {strategy},"
                                   f" {len(self.history_)} of {epochs} epochs, best epoch {self.best_epoch_},"
                                   f" {self.fit_seconds_}s"),
                            extra={"processes": self.processes_, "features": self.features_report_,
                                   "plan": self.plan_, "time_budget": state.budget})
        return self

    def _plan(self, n_train: int, console: Console, *, net: Any = None, n_val: int = 0, input_size: int = 224,
              budget: float | None = None) -> tuple[str, int, list[Stage]]:
        """The strategy (``auto``: :func:`~headstart.training.recipes.choose_strategy`, then on a CPU under a time
        budget :func:`~headstart.training.budget.fine_tune_within`), its epochs and its stages."""
        strategy, epochs = self.strategy, self.epochs
        self.plan_ = {"strategy": self.strategy, "time_budget_seconds": budget}
        if strategy == "auto":
            strategy, reason = choose_strategy(n_train, pretrained=self.weights != "random", head=self.head)
            if strategy != "linear_probe" and budget is not None and net is not None and not self._on_gpu():
                strategy, reason, figures = fine_tune_within(
                    budget, net.to(memory_format=torch.channels_last), strategy=strategy, reason=reason,
                    n_train=n_train, n_val=n_val, input_size=input_size)
                self.plan_.update(figures)
            self.plan_.update({"chosen": strategy, "reason": reason})
            console.print(f"[bold]Strategy[/bold] {strategy} ({reason}).", highlight=False)
        if budget is not None:
            console.print(f"Time budget: {format_seconds(budget)} for training (--time-budget; 'none' for no limit).",
                          highlight=False)
        if epochs is None:
            epochs = default_epochs(strategy, n_train)
        if strategy == "linear_probe":
            if epochs != 1:
                console.print(f"Note: epochs={epochs} is ignored: the linear head is solved on cached features.")
                epochs = 1
            console.print("Linear probe: the head is solved on cached frozen features." if self.head == "linear" else
                          f"Frozen features + scikit-learn {self.head} head, chosen by cross-validation.")
        else:
            after = {"fine_tune": " unfrozen", "partial": f" of the last {self.tune_blocks} blocks, on their cached input"}
            console.print(f"Epochs: {epochs}{after.get(strategy, '')}"
                          + (", after one frozen head stage." if strategy in after else "."), highlight=False)
        return strategy, epochs, plan_stages(strategy, epochs, lr=self.lr, lr_mult=self.lr_mult)

    def _input_preprocessing(self, spec: Any, strategy: str, console: Console) -> Preprocessing:
        """The backbone's preprocessing at the input size: ``image_size``, or x1.29 for frozen features (FixRes)."""
        preprocessing = spec.preprocessing()
        image_size = self.image_size
        fixed_size = bool(getattr(timm.models.get_pretrained_cfg(spec.timm_id), "fixed_input_size", False))
        if fixed_size and image_size not in (None, preprocessing.input_size):
            raise ParameterError(
                f"Backbone {spec.name!r} ({spec.timm_id}) only accepts {preprocessing.input_size}px inputs."
                f" Got image_size={image_size}.",
                fix="Leave image_size unset for this backbone, or choose a convolutional backbone.")
        if image_size is None and strategy == "linear_probe" and self.weights != "random" and not fixed_size:
            image_size = frozen_feature_size(preprocessing.input_size)
            if image_size != preprocessing.input_size:
                console.print(f"Input {image_size}px for frozen features ({preprocessing.input_size}px x ~1.29, FixRes;"
                              " set image_size to override).")
        if image_size is None:
            return preprocessing
        return Preprocessing.from_dict({**preprocessing.to_dict(), "input_size": image_size})

    def _start_run(self, run_dir: Path, *, resume: bool, splits: DatasetSplits, data: Any, val: Any, strategy: str,
                   epochs: int, stages: list[Stage], preprocessing: Preprocessing, config: TrainConfig) -> None:
        """The run folder's config.json (a fresh run only; a resumed one keeps its own) and data.json."""
        start_run_folder(run_dir, resume=resume)  # a fresh run also drops an older run's checkpoints there
        if not resume:
            atomic_write_json(run_dir / "config.json", {
                "task": "image_classification", "params": self.plain_params(), "data": str(Path(data).resolve()),
                "val": None if val is None else str(Path(val).resolve()), "strategy": strategy, "epochs": epochs,
                "stages": [s.to_dict() for s in stages], "backbone": self.backbone_spec_,
                "preprocessing": preprocessing.to_dict(), "train_config": asdict(config)})
        atomic_write_json(run_dir / "data.json", splits.summary())

    def _training_task(self, net: Any, splits: DatasetSplits, preprocessing: Preprocessing,
                       extractor: FeatureExtractor | None, views: list[str], console: Console) -> TrainingTask:
        """The hooks of the image task: decoded, augmented images; the head solved on cached frozen features."""
        from headstart.data.transforms import ImageDataset, build_transform
        from headstart.models.inference import auto_num_workers, predict_dataset

        def images(paths: Any, labels: Any, **transform: bool) -> ImageDataset:
            return ImageDataset(paths, labels, build_transform(preprocessing, **transform),
                                max_pixels=self.max_image_pixels)

        train_set = images(splits.train.paths, splits.train.labels, train=True)
        val_set = images(splits.val.paths, splits.val.labels, train=False)
        # the frozen head is solved on cached features of two deterministic views: the centre crop, mirrored
        frozen_views = [images(splits.train.paths, splits.train.labels, train=False, flip=flip) for flip in (False, True)]
        weight = inverse_frequency_weights(list(splits.train.class_counts().values())) if self.class_weights else None

        def step(module: torch.nn.Module, batch: Any) -> StepOutput:
            pixels, labels = batch
            train_set.raise_for_failures(labels)
            if pixels.device.type == "cpu":
                pixels = pixels.contiguous(memory_format=torch.channels_last)
            return classification_step(module, pixels, labels, class_weight=weight,
                                       label_smoothing=self.label_smoothing)

        def validate(model: torch.nn.Module, device: torch.device) -> Validation:
            probabilities, labels = predict_dataset(model, val_set, batch_size=self.batch_size * 2,
                                                    num_workers=self.num_workers, device=device,
                                                    channels_last=device.type == "cpu")
            return Validation(classification_scores(probabilities, labels), payload=probabilities)

        def solve(model: Any, fabric: Any) -> Validation:
            features, labels, val_features, n_views = frozen_view_features(
                model, frozen_views, val_set, extractor=extractor if fabric.world_size == 1 and
                fabric.device.type == "cpu" else None, view_names=views, batch_size=self.batch_size,
                num_workers=self.num_workers, device=fabric.device, console=console, progress=self.progress)
            solved = solve_linear_head(model.model.get_classifier(), features, labels, val_features,
                                       torch.as_tensor(val_set.labels), n_views=n_views, class_weight=weight,
                                       seed=self.seed, layers=layer_plan(model.model, self.feature_layers),
                                       store=extractor.store if extractor is not None and extractor.cache_features else None)
            if line := describe_layer_choice(solved.record["head_selection"]):
                console.print(line, highlight=False)
            return solved

        task = TrainingTask(
            dataset=lambda epoch: train_set,
            batches=lambda epoch: shuffled_batches(len(train_set), self.batch_size, seed=self.seed, epoch=epoch),
            step=step, validate=validate, solve_head=solve, channels_last=True,
            num_workers=auto_num_workers(len(train_set)) if self.num_workers is None else self.num_workers,
            val_items=len(val_set), fingerprint=self._run_fingerprint(splits.classes, len(splits.train), len(splits.val)),
            gain_check=lambda head, tuned: paired_accuracy_gain(val_set.labels, head, tuned, seed=self.seed))
        if net.split is None:
            return task
        compute, views = image_view_maps(net, images, paths=splits.train.paths, labels=splits.train.labels,
                                         val_set=val_set, augmented_views=self.augmented_views or 2, seed=self.seed,
                                         batch_size=self.batch_size, num_workers=self.num_workers)
        return partial_training_task(  # partial fine-tuning: epochs of the top blocks on cached maps
            task, compute, views=views, labels=splits.train.labels, val_labels=val_set.labels,
            batch_size=self.batch_size, seed=self.seed, class_weight=weight, label_smoothing=self.label_smoothing,
            console=console)

    def _feature_extractor(self, model: torch.nn.Module, preprocessing: Preprocessing, architecture: str, *,
                           console: Console, cache_features: bool) -> FeatureExtractor | None:
        """Frozen features through the store and the fastest runtime (one CPU process only). With a GPU in use the
        torch loop runs instead, except for a scikit-learn head on ``accelerator="auto"``: the head runs on the CPU
        anyway, so its features do too (found on an H100: such a head was refused whenever a GPU was present)."""
        gpu = self._on_gpu()
        if self.devices > 1 or (gpu and (self.head == "linear" or self.accelerator != "auto")):
            return None
        store = FeatureStore.open(self.cache_dir)
        return FeatureExtractor(model, preprocessing=preprocessing, architecture=architecture, store=store,
                                cache_features=cache_features, runtime=self.runtime, batch_size=self.batch_size,
                                num_workers=self.num_workers, progress=self.progress, console=console,
                                max_pixels=self.max_image_pixels,
                                warn=lambda message: console.print(f"[yellow]Warning:[/yellow] {message}"))

    def _fit_sklearn_on_images(self, extractor: FeatureExtractor | None, splits: DatasetSplits, views: list[str],
                               console: Console) -> tuple[TrainState, Validation]:
        """Frozen features of every view -> a scikit-learn head chosen by CV; one history record."""
        if extractor is None:
            raise ParameterError(f"The scikit-learn head {self.head!r} runs on the CPU in one process.",
                                 fix="Use devices=1 and accelerator='cpu' with a scikit-learn head.")
        train = np.concatenate([extractor.extract(splits.train.paths, view=v) for v in views])
        val = extractor.extract(splits.val.paths)
        console.print(f"Frozen {extractor.report.describe()}; views {', '.join(views)}.", highlight=False)
        return self._fit_sklearn_head(train, np.asarray(splits.train.labels), val, np.asarray(splits.val.labels),
                                      n_views=len(views), console=console)

    # -- prediction and evaluation ---------------------------------------------------------------------------
    def predict_proba(self, images: Sequence[str | os.PathLike[str]], *, batch_size: int | None = None) -> np.ndarray:
        """Class probabilities, shape (len(images), len(classes_)); columns follow ``classes_``.

        Raises:
            NotFittedError: before fit/load.
            ImageDecodeError: a file that cannot be read (the message names it).
        """
        self._check_fitted("predict_proba")
        if isinstance(images, (str, os.PathLike)):
            images = [images]
        if len(images) == 0:
            return np.zeros((0, len(self.classes_)), dtype=np.float32)
        if getattr(self, "head_", None) is not None or self.strategy_ == "linear_probe":
            # the backbone is the frozen pretrained one: run it through the fast feature runtime
            if getattr(self, "_predict_extractor", None) is None:
                self._predict_extractor = self._feature_extractor(
                    self.model_, self.preprocessing_, self.backbone_spec_["architecture"],
                    console=Console(quiet=True), cache_features=False)
        else:
            self._predict_extractor = None
        if self._predict_extractor is not None:
            self._predict_extractor.batch_size = batch_size or self.batch_size
            features = self._predict_extractor.extract(list(images))
            if self.head_ is not None:
                probabilities = self.head_.predict_proba(features).astype(np.float32)
            else:
                with torch.no_grad():
                    logits = self.model_.get_classifier()(torch.from_numpy(features))
                probabilities = torch.softmax(logits.float(), dim=1).numpy()
        else:
            probabilities = predict_files(self.model_, list(images), preprocessing=self.preprocessing_,
                                          batch_size=batch_size or self.batch_size,
                                          num_workers=self.num_workers, max_pixels=self.max_image_pixels)
        temperature = getattr(self, "temperature_", 1.0)
        return probabilities if temperature == 1.0 else apply_temperature(probabilities, temperature).astype(np.float32)

    def evaluate(self, data: str | os.PathLike[str], *, out: str | os.PathLike[str] | None = None,
                 n_bootstrap: int = 1000) -> dict[str, Any]:
        """Metrics on a labelled class-folder (its classes must be among ``classes_``); with ``out``, write
        ``metrics.json``, ``confusion_matrix.png`` and ``predictions.json`` there.
        """
        self._check_fitted("evaluate")
        samples, skipped = scan_image_folder(data, classes=self.classes_, role="evaluation",
                                             max_pixels=self.max_image_pixels, require_all_classes=False)
        if len(samples) == 0:
            raise DataError(
                f"The evaluation folder {data} has no images in class subfolders named like the model's classes"
                f" {self.classes_}.",
                fix="Arrange labelled images as DATA/<class name>/<image>; use `predict` for unlabelled images.",
            )
        console = Console(quiet=not self.progress)
        self._print_evaluation_start(console, data, len(samples), skipped)
        probabilities = self.predict_proba(samples.paths)
        return self._report_evaluation(samples.labels, probabilities, names=[str(p) for p in samples.paths],
                                       name_key="path", data=Path(data).resolve(), skipped=skipped, out=out,
                                       n_bootstrap=n_bootstrap, console=console)

    # -- persistence ---------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the fitted model as a bundle folder (safetensors + config.json), atomically.

        On a non-zero rank of a multi-process run this does nothing (rank 0 writes).
        """
        self._check_fitted("save")
        if not getattr(self, "is_main_process_", True):
            return Path(path)
        params = self.plain_params()
        config = {
            "task": "image_classification",
            "architecture": self.backbone_spec_["architecture"],
            "backbone": self.backbone_spec_,
            "classes": self.classes_,
            "preprocessing": self.preprocessing_.to_dict(),
            "strategy": self.strategy_,
            "stages": self.stages_,
            "epochs": self.epochs_,
            "best_epoch": self.best_epoch_,
            "params": params,
            "training": self.train_config_,
            "history": self.history_,
            "metrics": getattr(self, "metrics_", None),
            "temperature": getattr(self, "temperature_", 1.0),
            "calibration": getattr(self, "calibration_", None),
            "head": self._head_config(),
            "adaptation": getattr(self, "adaptation_", None),
        }
        return save_bundle(path, self.model_, config, head=getattr(self, "head_", None),
                           validation=getattr(self, "validation_", None))

    def _head_config(self) -> dict[str, Any]:
        if getattr(self, "head_", None) is not None:
            return {"kind": "sklearn", "name": self.head, "backbone_classes": 0}
        classifier = self.model_.get_classifier()
        if isinstance(self.model_, StageFeatures):
            return {"kind": "linear", "feature_layers": "stages"}
        return classifier.config() if isinstance(classifier, FeatureMLP) else {"kind": "linear"}

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "ImageClassifier":
        """Load a model folder written by :meth:`save` or ``headstart train``; ready to predict/evaluate.

        Raises:
            BundleError: not a model folder, or damaged.
        """
        bundle = load_bundle(path)
        config = bundle.config
        known = set(inspect.signature(cls.__init__).parameters) - {"self"}
        classifier = cls(**{k: v for k, v in config.get("params", {}).items() if k in known})
        classifier.model_ = bundle.model
        classifier.classes_ = bundle.classes
        classifier.preprocessing_ = bundle.preprocessing
        classifier.history_ = config.get("history", [])
        classifier.strategy_ = config.get("strategy")
        classifier.stages_ = config.get("stages", [])
        classifier.epochs_ = config.get("epochs")
        classifier.best_epoch_ = config.get("best_epoch")
        classifier.backbone_spec_ = config["backbone"]
        classifier.train_config_ = config.get("training", {})
        classifier.metrics_ = config.get("metrics")
        classifier.temperature_ = float(config.get("temperature", 1.0))
        classifier.calibration_ = config.get("calibration")
        classifier.head_ = bundle.head
        classifier.validation_ = bundle.validation
        classifier.adaptation_ = config.get("adaptation")
        classifier.skipped_ = []
        classifier.is_main_process_ = True
        return classifier

    @classmethod
    def from_frozen_model(cls, model: torch.nn.Module, *, classes: Sequence[str], preprocessing: Preprocessing,
                          backbone_spec: dict[str, Any], params: dict[str, Any], metrics: dict[str, Any] | None,
                          history: list[dict[str, Any]], validation: dict[str, Any] | None,
                          adaptation: dict[str, Any] | None = None) -> "ImageClassifier":
        """A fitted linear-probe classifier from a frozen pretrained backbone whose classifier (a linear layer or a
        :class:`~headstart.models.heads.FeatureMLP`) was trained elsewhere on its pooled features, e.g. by domain
        adaptation. It predicts, evaluates and saves like one from :meth:`fit`."""
        known = set(inspect.signature(cls.__init__).parameters) - {"self"}
        classifier = cls(**{k: v for k, v in params.items() if k in known})
        classifier.model_ = model.eval()
        classifier.classes_ = list(classes)
        classifier.preprocessing_ = preprocessing
        classifier.history_ = history
        classifier.strategy_, classifier.stages_, classifier.epochs_, classifier.best_epoch_ = "linear_probe", [], 1, 1
        classifier.backbone_spec_ = backbone_spec
        classifier.train_config_, classifier.metrics_ = {}, metrics
        classifier.temperature_, classifier.calibration_, classifier.head_ = 1.0, None, None
        classifier.validation_, classifier.adaptation_ = validation, adaptation
        classifier.skipped_, classifier.is_main_process_ = [], True
        return classifier
