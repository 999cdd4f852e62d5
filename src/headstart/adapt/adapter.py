"""``DomainAdapter``: train on a labelled source folder, adapt to an unlabelled target folder, save an ordinary
image-classifier bundle.

The flow: source images (class folders) and target images (any layout) -> frozen backbone features, two views each
(cached) -> the chosen methods (:data:`METHODS`) -> each scored by the information-maximisation score of its
target predictions (no target labels) -> the best-scoring one becomes the model. When the target folder has class
folders named like the source classes, their labels are read *after* fitting, only to report each method's target
accuracy, macro-F1 and confusion matrix; the target images are ordered by content, not by folder, so moving them
between folders (relabelling) cannot change what is learned.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from headstart.adapt.adversarial import fit_cdan, fit_dann
from headstart.adapt.common import AdaptedHead, DomainFeatures, target_probabilities
from headstart.adapt.coral import fit_coral
from headstart.adapt.mmd import fit_mmd
from headstart.adapt.self_training import fit_self_training
from headstart.adapt.source_only import fit_source_only
from headstart.bundle import validation_reference
from headstart.data.images import (
    DEFAULT_MAX_IMAGE_PIXELS,
    ImageSamples,
    SkippedFile,
    scan_image_folder,
    scan_unlabelled_images,
)
from headstart.errors import DataError, ParameterError, check_choice, check_integer
from headstart.estimators.base import EstimatorBase, restores_state_on_failure
from headstart.estimators.image import ImageClassifier
from headstart.evaluation.metrics import classification_metrics
from headstart.evaluation.plots import plot_confusion_matrix, plot_method_comparison
from headstart.evaluation.report import print_skipped
from headstart.features import (
    RUNTIMES,
    FeatureExtractor,
    FeatureStore,
    file_digest,
    frozen_feature_size,
)
from headstart.models import DEFAULT_BACKBONE, Preprocessing, get_backbone_spec
from headstart.models.heads import set_classifier
from headstart.storage import atomic_write_json, atomic_write_text

__all__ = ["METHODS", "DomainAdapter"]

# name -> fit(data, l2 from source CV, seed, steps); one readable module per method
METHODS: dict[str, Callable[[DomainFeatures, float, int, int], AdaptedHead]] = {
    "source_only": lambda data, l2, seed, steps: fit_source_only(data, seed=seed),
    "coral": lambda data, l2, seed, steps: fit_coral(data, l2=l2, seed=seed),
    "mmd": lambda data, l2, seed, steps: fit_mmd(data, seed=seed, steps=steps),
    "dann": lambda data, l2, seed, steps: fit_dann(data, seed=seed, steps=steps),
    "cdan": lambda data, l2, seed, steps: fit_cdan(data, seed=seed, steps=steps),
    "self_training": lambda data, l2, seed, steps: fit_self_training(data, l2=l2, seed=seed),
}
SELECTION = ("information-maximisation score of the target predictions, H(mean p) - mean H(p), on the unlabelled"
             " target images (no target labels)")
MIN_TARGET_IMAGES = 10


class DomainAdapter(EstimatorBase):
    """Unsupervised domain adaptation for image classification on frozen pretrained features.

    Args:
        backbone: a name from ``headstart backbones`` or ``timm:<model>``.
        method: one of :data:`METHODS`, a comma-separated list of them, or ``all`` (every method, the best by the
            label-free score is kept).
        weights: ``auto`` (first reachable pretrained source) or a checkpoint file.
        image_size: input side; ``None``: the backbone's pretrained size x1.29 (as for linear probes).
        steps: training steps of the bottleneck methods (mmd, dann, cdan).
        seed: makes every method repeatable.
        batch_size, num_workers, runtime, cache_dir, max_image_pixels, allow_download: feature extraction, as for
            :class:`~headstart.ImageClassifier`.
        n_bootstrap: bootstrap resamples for the target metrics' confidence intervals.
        progress: show progress and the comparison table.

    >>> DomainAdapter(method="coral")
    DomainAdapter(backbone='efficientnet_lite0', method='coral')
    """

    _fitted_attribute = "classifier_"
    _unfitted_fix = "Call fit(SOURCE, TARGET) first, or ImageClassifier.load(MODEL_FOLDER) for a saved adapted model."

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        *,
        method: str = "all",
        weights: str | os.PathLike[str] = "auto",
        image_size: int | None = None,
        steps: int = 2000,
        seed: int = 0,
        batch_size: int = 32,
        num_workers: int | None = None,
        runtime: str = "auto",
        cache_dir: str | os.PathLike[str] | None = None,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        allow_download: bool = True,
        n_bootstrap: int = 1000,
        progress: bool = True,
    ) -> None:
        self.backbone = backbone
        self.method = method
        self.weights = weights
        self.image_size = image_size
        self.steps = steps
        self.seed = seed
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.runtime = runtime
        self.cache_dir = cache_dir
        self.max_image_pixels = max_image_pixels
        self.allow_download = allow_download
        self.n_bootstrap = n_bootstrap
        self.progress = progress

    # -- checks -----------------------------------------------------------------------------------------------
    def _methods(self) -> list[str]:
        names = list(METHODS) if self.method == "all" else [m.strip() for m in str(self.method).split(",") if m.strip()]
        unknown = [m for m in names if m not in METHODS]
        if unknown or not names:
            raise ParameterError(
                f"The 'method' parameter of DomainAdapter must be 'all' or names from {list(METHODS)}"
                f" (comma-separated). Got {self.method!r}.",
                fix="Use e.g. --method all, --method self_training or --method source_only,coral,dann.")
        return list(dict.fromkeys(names))

    def _validate_params(self) -> list[str]:
        methods = self._methods()
        if self.weights == "random":
            raise self._bad("weights", "'auto' or a checkpoint file (adaptation works on pretrained features)")
        get_backbone_spec(self.backbone)
        for name in ("steps", "batch_size", "max_image_pixels"):
            check_integer("DomainAdapter", name, getattr(self, name), low=1)
        check_integer("DomainAdapter", "image_size", self.image_size, low=32, high=1024, optional=True)
        for name in ("n_bootstrap", "seed"):
            check_integer("DomainAdapter", name, getattr(self, name), low=0)
        check_choice("DomainAdapter", "runtime", self.runtime, RUNTIMES)
        return methods

    # -- data ---------------------------------------------------------------------------------------------------
    def _read_target(self, target: Path, console: Console) -> tuple[list[Path], list[SkippedFile]]:
        """Usable target images ordered by content digest (not by folder, so not by label), and what was skipped."""
        paths, skipped = scan_unlabelled_images(target, max_pixels=self.max_image_pixels, role="target")
        by_digest: dict[bytes, Path] = {}
        for path in paths:
            by_digest.setdefault(file_digest(path), path)  # identical files count once
        ordered = [by_digest[d] for d in sorted(by_digest)]
        if len(ordered) < MIN_TARGET_IMAGES:
            raise DataError(f"The target folder {target} has {len(ordered)} distinct usable images; adaptation needs"
                            f" at least {MIN_TARGET_IMAGES} (a few hundred is typical).",
                            fix="Point --target at the folder of unlabelled images from the new domain.")
        console.print(f"[bold]Target[/bold] {target}: {len(ordered)} images, used without labels.", highlight=False)
        return ordered, skipped

    @staticmethod
    def _target_labels(target: Path, paths: list[Path], classes: list[str]) -> dict[Path, int]:
        """Labels of the target images that sit in folders named like source classes: read after fitting, for the
        report only."""
        index = {name: i for i, name in enumerate(classes)}
        labels: dict[Path, int] = {}
        for path in paths:
            relative = path.relative_to(target)
            if len(relative.parts) >= 2 and relative.parts[0] in index:
                labels[path] = index[relative.parts[0]]
        return labels

    # -- training -----------------------------------------------------------------------------------------------
    @restores_state_on_failure
    def fit(self, source: str | os.PathLike[str], target: str | os.PathLike[str], *,
            out: str | os.PathLike[str] | None = None) -> "DomainAdapter":
        """Learn from the labelled ``source`` class folders and the unlabelled ``target`` images.

        Args:
            source: a folder with one subfolder of images per class.
            target: a folder of images from the new domain, in any subfolders. Images in subfolders named like
                source classes are scored against those labels after fitting (never used to fit or choose).
            out: the run folder (config.json, data.json, metrics.json, history.json, comparison.png,
                confusion_matrix.png, summary.txt, model/).

        Returns:
            self, with ``classifier_`` (an :class:`~headstart.ImageClassifier`), ``method_`` (the chosen method),
            ``results_`` (per-method scores and target metrics), ``heads_`` (each method's
            :class:`~headstart.adapt.AdaptedHead`), ``target_paths_`` (target images in the order the heads saw
            them), ``classes_``.

        Raises:
            ParameterError, DataError, WeightsNotFoundError.
        """
        from headstart.models import create_backbone

        methods = self._validate_params()
        started = time.perf_counter()
        console = Console(quiet=not self.progress)
        source, target = Path(source).expanduser(), Path(target).expanduser()
        samples, source_skipped = scan_image_folder(source, max_pixels=self.max_image_pixels, role="source")
        classes = samples.classes
        console.print(f"[bold]Source[/bold] {source}: {len(samples)} labelled images, {len(classes)} classes.",
                      highlight=False)
        target_paths, target_skipped = self._read_target(target, console)
        print_skipped(console, source_skipped + target_skipped)

        spec = get_backbone_spec(self.backbone)
        preprocessing = spec.preprocessing()
        size = self.image_size or frozen_feature_size(preprocessing.input_size)
        preprocessing = Preprocessing.from_dict({**preprocessing.to_dict(), "input_size": size})
        torch.manual_seed(self.seed)
        model, weights_source = create_backbone(self.backbone, len(classes), weights=self.weights,
                                                allow_download=self.allow_download)
        model.eval()
        console.print(f"[bold]Backbone[/bold] {spec.name} ({spec.timm_id}), weights from"
                      f" {weights_source.description}; frozen features at {size}px.", highlight=False)
        data = self._frozen_features(model, preprocessing, spec.architecture, samples, target_paths, console)
        results = self._fit_methods(methods, data, console)
        chosen = max((name for name in methods), key=lambda name: results[name].score)

        # Target labels are read only now, after every method has been fitted and chosen.
        target_labels = self._target_labels(target, target_paths, classes)
        console.print(f"Target labels: {len(target_labels)} images in class folders, scored for the report only."
                      if target_labels else "Target labels: none (no class folders named like the source classes).",
                      highlight=False)
        evaluation = self._evaluate_methods(results, data, target_paths, target_labels, classes)
        set_classifier(model, results[chosen].module)
        self.classes_ = classes
        self.method_ = chosen
        self.heads_ = results  # every method's AdaptedHead (modules, histories, checkpoint predictions)
        self.target_paths_ = target_paths  # the order of the target rows in the heads' predictions
        self.results_ = {name: {"im_score": result.score, "seconds": round(result.seconds, 2),
                                "params": result.params, "target": evaluation.get(name)}
                         for name, result in results.items()}
        self.data_ = {"source": str(source.resolve()), "target": str(target.resolve()),
                      "source_images": len(samples), "target_images": len(target_paths),
                      "target_labelled": len(target_labels),
                      "skipped": [{"path": s.path, "reason": s.reason} for s in source_skipped + target_skipped]}
        adaptation = {"method": chosen, "selection": SELECTION, "methods": list(results), "data": self.data_,
                      "scores": {name: round(result.score, 4) for name, result in results.items()}}
        self.classifier_ = ImageClassifier.from_frozen_model(
            model, classes=classes, preprocessing=preprocessing,
            backbone_spec={"name": spec.name, "timm_id": spec.timm_id, "architecture": spec.architecture,
                           "weights": weights_source.description},
            params={"backbone": self.backbone, "strategy": "linear_probe", "weights": str(self.weights),
                    "image_size": size, "seed": self.seed, "runtime": self.runtime, "batch_size": self.batch_size,
                    "cache_dir": None if self.cache_dir is None else str(self.cache_dir), "calibrate": False,
                    "max_image_pixels": self.max_image_pixels, "num_workers": self.num_workers,
                    "progress": self.progress},
            metrics=None if evaluation.get(chosen) is None else {**evaluation[chosen], "split": "target"},
            history=results[chosen].history,
            validation=validation_reference(samples.paths, samples.labels, kind="files"),
            adaptation=adaptation)
        self.fit_seconds_ = round(time.perf_counter() - started, 1)
        self._print_table(console)
        if out is not None:
            self._write_run(Path(out), results, console)
        return self

    def _frozen_features(self, model: torch.nn.Module, preprocessing: Preprocessing, architecture: str,
                         samples: ImageSamples, target_paths: list[Path], console: Console) -> DomainFeatures:
        """Frozen backbone features of the source and target images, two views each (centre, mirror), through the
        feature store unless ``cache_dir`` is ``off``."""
        store = FeatureStore.open(self.cache_dir)
        extractor = FeatureExtractor(model, preprocessing=preprocessing, architecture=architecture, store=store,
                                     runtime=self.runtime, batch_size=self.batch_size, num_workers=self.num_workers,
                                     progress=self.progress, console=console, max_pixels=self.max_image_pixels,
                                     warn=lambda message: console.print(f"[yellow]Warning:[/yellow] {message}"))
        views = ("center", "mirror")
        data = DomainFeatures(
            source=np.stack([extractor.extract(samples.paths, view=v) for v in views]),
            source_labels=np.asarray(samples.labels, dtype=np.int64),
            target=np.stack([extractor.extract(target_paths, view=v) for v in views]),
            n_classes=len(samples.classes))
        console.print(f"Frozen {extractor.report.describe()}.", highlight=False)
        return data

    def _fit_methods(self, methods: list[str], data: DomainFeatures, console: Console) -> dict[str, AdaptedHead]:
        """Fit ``source_only`` and every requested method on the features, each printed with its target IM score."""
        results: dict[str, AdaptedHead] = {}
        # source-only first: its cross-validated penalty is reused by the linear methods
        order = ["source_only"] + [m for m in methods if m != "source_only"]
        l2 = 0.0
        bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                       console=console, transient=True, disable=not self.progress)
        with bar:
            task = bar.add_task("adapting", total=len(order))
            for name in order:
                bar.update(task, description=f"adapting: {name}")
                results[name] = METHODS[name](data, l2, self.seed, self.steps)
                if name == "source_only":
                    l2 = float(results[name].params["l2"])
                console.print(f"{name}: target IM score {results[name].score:.3f} ({results[name].seconds:.1f}s)",
                              highlight=False)
                bar.advance(task)
        return results

    def _evaluate_methods(self, results: dict[str, AdaptedHead], data: DomainFeatures, target_paths: list[Path],
                          target_labels: dict[Path, int], classes: list[str]) -> dict[str, dict[str, Any]]:
        """Target metrics per method on the labelled target images, predicted as the saved model will: centre
        view only."""
        if not target_labels:
            return {}
        rows = [i for i, path in enumerate(target_paths) if path in target_labels]
        labels = np.asarray([target_labels[target_paths[i]] for i in rows])
        centre = data.target[:1, rows]  # the centre view alone, as the saved model sees an image
        return {name: classification_metrics(labels, target_probabilities(result.module, centre), classes=classes,
                                             n_bootstrap=self.n_bootstrap, seed=self.seed)
                for name, result in results.items()}

    # -- reporting ----------------------------------------------------------------------------------------------
    def comparison_rows(self) -> list[dict[str, Any]]:
        """One row per method: label-free score, seconds, and (when known) target accuracy / macro-F1 with CIs."""
        self._check_fitted("comparison_rows")
        rows = []
        for name, result in self.results_.items():
            target = result["target"] or {}
            accuracy, f1 = target.get("accuracy") or {}, target.get("macro_f1") or {}
            rows.append({"method": name, "selected": name == self.method_, "im_score": round(result["im_score"], 4),
                         "seconds": result["seconds"], "accuracy": accuracy.get("value"),
                         "accuracy_ci": accuracy.get("ci95"), "macro_f1": f1.get("value")})
        return rows

    def _print_table(self, console: Console) -> None:
        table = Table(title="Domain adaptation: methods side by side (selected by the target IM score, no labels)")
        for column in ("method", "IM score", "target accuracy [95% CI]", "target macro-F1", "seconds"):
            table.add_column(column)
        for row in self.comparison_rows():
            accuracy = "-" if row["accuracy"] is None else (
                f"{row['accuracy']:.3f}" + (f" [{row['accuracy_ci'][0]:.3f}, {row['accuracy_ci'][1]:.3f}]"
                                            if row["accuracy_ci"] else ""))
            f1 = "-" if row["macro_f1"] is None else f"{row['macro_f1']:.3f}"
            table.add_row(row["method"] + (" *" if row["selected"] else ""), f"{row['im_score']:.3f}", accuracy, f1,
                          f"{row['seconds']:.1f}")
        console.print(table)
        console.print(f"Selected: [bold]{self.method_}[/bold] (highest IM score).", highlight=False)

    def _write_run(self, run_dir: Path, results: dict[str, AdaptedHead], console: Console) -> None:
        model_dir = self.classifier_.save(run_dir / "model")
        atomic_write_json(run_dir / "config.json", {"adapter": self.plain_params(), "methods": list(results),
                                                    "selection": SELECTION})
        atomic_write_json(run_dir / "data.json", self.data_)
        metrics: dict[str, Any] = {name: {**(row["target"] or {}), "im_score": row["im_score"],
                                          "seconds": row["seconds"], "params": row["params"]}
                                   for name, row in self.results_.items()}
        metrics.update({"selected_method": self.method_, "selection": SELECTION,
                        "target_labelled": self.data_["target_labelled"], "fit_seconds": self.fit_seconds_})
        atomic_write_json(run_dir / "metrics.json", metrics)
        atomic_write_json(run_dir / "history.json", {name: result.history for name, result in results.items()})
        rows = self.comparison_rows()
        plot_method_comparison(rows, run_dir / "comparison.png")
        chosen = self.results_[self.method_]["target"]
        if chosen is not None:
            plot_confusion_matrix(chosen["confusion_matrix"], run_dir / "confusion_matrix.png", classes=self.classes_,
                                  title=f"Confusion matrix (target, {self.method_})")
        else:
            (run_dir / "confusion_matrix.png").unlink(missing_ok=True)  # an earlier run's, in an overwritten folder
        lines = [f"headstart adapt run {run_dir}", f"source {self.data_['source']} ({self.data_['source_images']}"
                 f" images) -> target {self.data_['target']} ({self.data_['target_images']} images,"
                 f" {self.data_['target_labelled']} labelled for evaluation only)",
                 f"selected: {self.method_} by the {SELECTION}", "method  im_score  target_accuracy  macro_f1  seconds"]
        for row in rows:
            lines.append(f"{row['method']}{' *' if row['selected'] else ''}  {row['im_score']:.4f}  "
                         f"{'-' if row['accuracy'] is None else format(row['accuracy'], '.4f')}  "
                         f"{'-' if row['macro_f1'] is None else format(row['macro_f1'], '.4f')}  {row['seconds']}")
        lines.append(f"skipped inputs: {len(self.data_['skipped'])}")
        lines += [f"  {s['path']}: {s['reason']}" for s in self.data_["skipped"]]
        atomic_write_text(run_dir / "summary.txt", "\n".join(lines) + "\n")
        console.print(f"\nModel: {model_dir}\nRun folder: {run_dir} (config.json, data.json, metrics.json,"
                      " history.json, comparison.png, " + ("confusion_matrix.png, " if chosen else "") + "summary.txt)")

    # -- the adapted model --------------------------------------------------------------------------------------
    def predict_proba(self, images: Sequence[str | os.PathLike[str]]) -> np.ndarray:
        """Class probabilities of the adapted model, (len(images), len(classes_))."""
        self._check_fitted("predict_proba")
        return self.classifier_.predict_proba(images)

    def predict(self, images: Sequence[str | os.PathLike[str]]) -> list[str]:
        """The most probable class name for each image."""
        self._check_fitted("predict")
        return self.classifier_.predict(images)

    def evaluate(self, data: str | os.PathLike[str], *, out: str | os.PathLike[str] | None = None) -> dict[str, Any]:
        """Metrics of the adapted model on a labelled class-folder (see :meth:`ImageClassifier.evaluate`)."""
        self._check_fitted("evaluate")
        return self.classifier_.evaluate(data, out=out, n_bootstrap=self.n_bootstrap)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the adapted model as an ordinary bundle (load it with ``ImageClassifier.load``)."""
        self._check_fitted("save")
        return self.classifier_.save(path)
