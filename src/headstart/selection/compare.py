"""Head-to-head comparison of strategies and heads on the same data: one table, JSON and a chart.

Every candidate sees the same split (same seed) and is scored on the same held-out images: the dataset's
``test/`` split when it has one, else the validation split (which fine-tuning strategies also use to pick
their best epoch: the table says which). Frozen-feature candidates share one feature extraction through the
feature store, done once up front and reported on its own line, so their train times are the heads' own.

Repeated evaluation: ``seeds`` re-runs everything with other seeds (another split when the data is not
pre-split) and reports mean and standard deviation; ``folds`` runs stratified k-fold cross-validation over all
labelled images (each image is held out exactly once; the CI is a bootstrap over the pooled out-of-fold
predictions).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from headstart.data.images import ImageSamples, load_image_dataset
from headstart.errors import DataError, ParameterError, check_choice
from headstart.evaluation.metrics import classification_metrics
from headstart.models import DEFAULT_BACKBONE
from headstart.models.heads import HEADS
from headstart.storage import atomic_write_json
from headstart.training.recipes import NON_LORA_STRATEGIES, STRATEGIES

__all__ = ["CANDIDATES", "ENCODER_CANDIDATES", "DEFAULT_CANDIDATES", "CandidateResult", "compare_candidates",
           "format_comparison", "plot_comparison"]

# "linear" is the solved linear probe; the other heads are scikit-learn models on frozen features; the
# strategies (except linear_probe, the same as "linear") train the network.
CANDIDATES = (*HEADS, *(s for s in NON_LORA_STRATEGIES if s != "linear_probe"))
# text and audio: the same heads and strategies, and LoRA of the encoder
ENCODER_CANDIDATES = (*HEADS, *(s for s in STRATEGIES if s != "linear_probe"))
DEFAULT_CANDIDATES = ("linear", "logistic", "linear_svm", "rbf_svm", "random_forest", "knn", "fine_tune")


def _candidate_params(name: str) -> dict[str, Any]:
    if name in HEADS:
        return {"strategy": "linear_probe", "head": name}
    return {"strategy": name, "head": "linear"}


@dataclass
class CandidateResult:
    """One candidate's scores over every run (seed or fold)."""

    name: str
    accuracy: float
    accuracy_ci95: tuple[float, float] | None
    accuracy_sd: float | None
    macro_f1: float
    macro_f1_ci95: tuple[float, float] | None
    train_seconds: float
    predict_ms_per_image: float
    runs: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "accuracy": self.accuracy, "accuracy_ci95": self.accuracy_ci95,
                "accuracy_sd": self.accuracy_sd, "macro_f1": self.macro_f1, "macro_f1_ci95": self.macro_f1_ci95,
                "train_seconds": self.train_seconds, "predict_ms_per_image": self.predict_ms_per_image,
                "runs": self.runs}


def _link_split(root: Path, parts: dict[str, tuple[list[Path], list[int]]], classes: Sequence[str]) -> Path:
    """A class-folder tree of symlinks (train/, val/) for one fold: the original files stay where they are."""
    for split, (paths, labels) in parts.items():
        for index, (path, label) in enumerate(zip(paths, labels)):
            target = root / split / classes[label] / f"{index:06d}-{path.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(path.resolve(), target)
    return root


def _folds_of(samples: Any, k: int, seed: int) -> np.ndarray:
    """Stratified fold index of every sample; grouped (speakers) when the samples carry groups."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    fold = np.empty(len(samples), dtype=np.int64)
    groups = getattr(samples, "groups", None)
    splitter = (StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed) if groups else
                StratifiedKFold(n_splits=k, shuffle=True, random_state=seed))
    for index, (_, held) in enumerate(splitter.split(np.zeros(len(samples)), samples.labels, groups=groups)):
        fold[held] = index
    return fold


def _pool(parts: Sequence[Any]) -> Any:
    """One set of samples from several of the same kind (image, text or audio) sharing their classes."""
    from headstart.data.audio import AudioSamples
    from headstart.data.text import TextSamples

    first, labels = parts[0], [label for part in parts for label in part.labels]
    if isinstance(first, TextSamples):
        return TextSamples([t for part in parts for t in part.texts], labels, first.classes, first.source)
    paths = [path for part in parts for path in part.paths]
    if isinstance(first, AudioSamples):
        def joined(field_name: str) -> list[Any] | None:
            values = [getattr(part, field_name) for part in parts]
            return None if any(v is None for v in values) else [x for v in values for x in v]

        return AudioSamples(paths, labels, first.classes, groups=joined("groups"), durations=joined("durations"))
    return ImageSamples(paths, labels, first.classes)


# The frozen linear probe: fitted first in every run, so the features it extracts are cached for the others.
_PROBE = {"strategy": "linear_probe", "head": "linear"}


@dataclass
class _Estimators:
    """Builds any candidate's estimator with the options all candidates share."""

    task: str
    backbone: str | None
    weights: str
    image_size: int | None
    runtime: str
    epochs: int | None
    cache_dir: str | os.PathLike[str] | None
    options: dict[str, Any] | None

    def make(self, params: dict[str, Any], seed: int) -> Any:
        """An unfitted estimator of the task with the candidate's ``params`` (strategy and head)."""
        from headstart.estimators.image import ImageClassifier
        from headstart.tasks import estimator_class

        common = dict(epochs=self.epochs, seed=seed, cache_dir=self.cache_dir, progress=False, calibrate=False,
                      weights=self.weights, **params)
        if self.task == "image":
            return ImageClassifier(self.backbone or DEFAULT_BACKBONE, image_size=self.image_size,
                                   runtime=self.runtime, **common)
        extra = {**(self.options or {}), **({"image_size": self.image_size}
                                            if self.task == "audio" and self.image_size else {})}
        cls = estimator_class(self.task)
        return cls(self.backbone, **common, **extra) if self.backbone else cls(**common, **extra)

    def load_splits(self, data: str | os.PathLike[str], seed: int) -> Any:
        """The data's train / val / test splits, as the task's estimator reads them."""
        if self.task == "image":
            return load_image_dataset(data, seed=seed)
        return self.make(_PROBE, seed).load_splits(data)

    def inputs(self, samples: Any) -> list[Any]:
        """What ``predict_proba`` takes for these samples: texts, or file paths."""
        return list(samples.texts) if self.task == "text" else list(samples.paths)


@dataclass
class _Run:
    """One seed or fold: what every candidate trains on and the held-out samples it is scored on."""

    label: str
    train_data: Any
    val_data: Any  # None: the estimator takes its validation data from ``train_data``
    held: Any
    seed: int
    role: str  # what the held-out samples are, for the table and comparison.json


def _fold_runs(data: str | os.PathLike[str], estimators: _Estimators, *, folds: int, seed: int, root: Path
               ) -> list[_Run]:
    """One run per stratified fold over all labelled samples; images get symlinked class folders under ``root``."""
    splits = estimators.load_splits(data, seed)
    pooled = _pool([part for part in (splits.train, splits.val, splits.test) if part is not None])
    smallest = min(pooled.class_counts().items(), key=lambda item: item[1])
    if smallest[1] < folds:
        raise DataError(f"{folds}-fold cross-validation needs at least {folds} examples per class; class"
                        f" {smallest[0]!r} has {smallest[1]}.",
                        fix=f"Use --folds {max(2, smallest[1])} or fewer, or add examples to {smallest[0]!r}.")
    fold = _folds_of(pooled, folds, seed)
    role = "held-out fold (also the validation data of that fold's training)"
    runs = []
    for k in range(folds):
        train = pooled.subset(np.flatnonzero(fold != k))
        held = pooled.subset(np.flatnonzero(fold == k))
        if estimators.task == "image":
            fold_root = _link_split(root / f"fold-{k}", {"train": (train.paths, train.labels),
                                                         "val": (held.paths, held.labels)}, pooled.classes)
            runs.append(_Run(f"fold {k + 1}/{folds}", fold_root, None, held, seed, role))
        else:
            runs.append(_Run(f"fold {k + 1}/{folds}", train, held, held, seed, role))
    return runs


def _seed_runs(data: str | os.PathLike[str], estimators: _Estimators, seeds: Sequence[int]) -> list[_Run]:
    """One run per seed on the data's own split, scored on its test split, else its validation split."""
    runs = []
    for seed in seeds:
        splits = estimators.load_splits(data, seed)
        held = splits.test if splits.test is not None else splits.val
        role = "test split" if splits.test is not None else "validation split (also used to pick fine-tuning epochs)"
        runs.append(_Run(f"seed {seed}", data, None, held, seed, role))
    return runs


def _extract_shared_features(run: _Run, estimators: _Estimators, console: Console) -> dict[str, Any]:
    """Fit the linear probe once so the frozen features (train views + validation) are cached for every frozen
    candidate; returns how long that took and the extraction report."""
    started = time.perf_counter()
    warm = estimators.make(_PROBE, run.seed).fit(run.train_data, val=run.val_data)
    report = getattr(warm, "features_report_", None) or {}
    warmup = {"run": run.label, "seconds": round(time.perf_counter() - started, 2), "features": report}
    console.print(f"  shared frozen features: {warmup['seconds']:.1f}s"
                  + (f" ({report.get('computed', 0)} computed with {report.get('runtime')},"
                     f" {report.get('cached', 0)} from the cache)" if report else ""), highlight=False)
    return warmup


def _score_candidate(name: str, run: _Run, estimators: _Estimators, *, n_bootstrap: int, console: Console
                     ) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray]]:
    """Train one candidate for one run and score it on the held-out samples: its record for the run, and its
    (labels, probabilities) for pooling."""
    held = run.held
    classifier = estimators.make(_candidate_params(name), run.seed)
    started = time.perf_counter()
    classifier.fit(run.train_data, val=run.val_data)
    train_seconds = time.perf_counter() - started
    classifier.predict_proba(estimators.inputs(held)[:2])  # warm-up: runtime start and parity check, not per item
    started = time.perf_counter()
    probabilities = classifier.predict_proba(estimators.inputs(held))
    predict_seconds = time.perf_counter() - started
    metrics = classification_metrics(held.labels, probabilities, classes=held.classes,
                                     n_bootstrap=n_bootstrap, seed=run.seed)
    record = {
        "run": run.label, "accuracy": metrics["accuracy"]["value"], "accuracy_ci95": metrics["accuracy"]["ci95"],
        "macro_f1": metrics["macro_f1"]["value"], "train_seconds": round(train_seconds, 2),
        "predict_ms_per_image": round(1000 * predict_seconds / max(1, len(held)), 2),
        "n_held_out": len(held), "strategy": classifier.strategy_, "head": classifier.head,
    }
    console.print(f"  {name:<16} accuracy {metrics['accuracy']['value']:.3f}  macro-F1"
                  f" {metrics['macro_f1']['value']:.3f}  train {train_seconds:.1f}s  predict"
                  f" {record['predict_ms_per_image']:.1f} ms/img", highlight=False)
    return record, (np.asarray(held.labels), probabilities)


def _summarise_candidate(name: str, rows: list[dict[str, Any]], predictions: list[tuple[np.ndarray, np.ndarray]],
                         classes: Sequence[str], *, cross_validated: bool, n_bootstrap: int) -> CandidateResult:
    """One candidate's result over its runs: a pooled bootstrap CI, or the mean and spread of repeated seeds."""
    accuracy_sd = float(np.std([r["accuracy"] for r in rows], ddof=1)) if len(rows) > 1 else None
    if cross_validated or len(rows) == 1:
        # one prediction per held-out image: a bootstrap CI over the pooled predictions
        labels = np.concatenate([p[0] for p in predictions])
        probabilities = np.concatenate([p[1] for p in predictions])
        pooled_metrics = classification_metrics(labels, probabilities, classes=classes, n_bootstrap=n_bootstrap)
        accuracy, accuracy_ci = pooled_metrics["accuracy"]["value"], tuple(pooled_metrics["accuracy"]["ci95"])
        f1, f1_ci = pooled_metrics["macro_f1"]["value"], tuple(pooled_metrics["macro_f1"]["ci95"])
    else:  # repeated seeds: the same images may be held out in several runs, so report mean and spread
        accuracy, accuracy_ci = float(np.mean([r["accuracy"] for r in rows])), None
        f1, f1_ci = float(np.mean([r["macro_f1"] for r in rows])), None
    return CandidateResult(
        name=name, accuracy=accuracy, accuracy_ci95=accuracy_ci, accuracy_sd=accuracy_sd, macro_f1=f1,
        macro_f1_ci95=f1_ci, train_seconds=float(np.mean([r["train_seconds"] for r in rows])),
        predict_ms_per_image=float(np.mean([r["predict_ms_per_image"] for r in rows])), runs=rows)


def compare_candidates(
    data: str | os.PathLike[str],
    candidates: Sequence[str] = DEFAULT_CANDIDATES,
    *,
    task: str = "auto",
    backbone: str | None = None,
    weights: str = "auto",
    image_size: int | None = None,
    runtime: str = "auto",
    epochs: int | None = None,
    seeds: Sequence[int] = (0,),
    folds: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    n_bootstrap: int = 1000,
    console: Console | None = None,
    progress: bool = True,
    options: dict[str, Any] | None = None,
) -> list[CandidateResult]:
    """Train every candidate on the same split(s) and score it on the same held-out examples.

    Args:
        data: an image folder (class folders, or train/ + val/ [+ test/]), or text / audio data as
            :class:`~headstart.TextClassifier` / :class:`~headstart.AudioClassifier` read it.
        candidates: names from :data:`CANDIDATES` (images): heads (``linear``, ``logistic``, ``linear_svm``,
            ``rbf_svm``, ``random_forest``, ``knn``) and strategies (``fine_tune``, ``gradual_unfreeze``,
            ``lp_ft``, ``full``); text and audio: :data:`ENCODER_CANDIDATES` (the same, and ``lora``).
        task: ``auto`` (detected from ``data``), ``image``, ``text`` or ``audio``.
        backbone: the backbone every candidate uses (default: the task's default); ``weights``, ``image_size``
            and ``runtime`` as in :class:`~headstart.ImageClassifier`.
        options: further constructor arguments of the text/audio estimator (e.g. ``text_column``,
            ``label_pattern``, ``group_pattern``).
        epochs: epochs of the training strategies (default: chosen from the data size).
        seeds: one run per seed; more than one reports the spread.
        folds: k-fold cross-validation over all labelled images instead of the data's own split.
        cache_dir: feature store folder (see :class:`headstart.ImageClassifier`).
        out: folder for ``comparison.json`` and ``comparison.png``.

    Returns:
        One :class:`CandidateResult` per candidate, in the order given.

    Raises:
        ParameterError: unknown candidate, no candidates, bad ``seeds``/``folds``.
    """
    from headstart.tasks import TASKS, detect_task

    console = console or Console(quiet=not progress)
    check_choice("compare", "task", task, ("auto", *TASKS))
    task = detect_task(data) if task == "auto" else task
    allowed = CANDIDATES if task == "image" else ENCODER_CANDIDATES
    if not candidates:
        raise ParameterError("compare needs at least one candidate.", fix=f"Pass some of {', '.join(allowed)}.")
    for name in candidates:
        check_choice("compare", "candidates", name, allowed)
    estimators = _Estimators(task=task, backbone=backbone, weights=weights, image_size=image_size, runtime=runtime,
                             epochs=epochs, cache_dir=cache_dir, options=options)
    if not seeds:
        raise ParameterError("compare needs at least one seed.", fix="Pass seeds=(0,) or --seeds 0,1,2.")
    if folds is not None and (folds < 2 or len(seeds) > 1):
        raise ParameterError(f"folds must be >= 2 and used with a single seed. Got folds={folds}, seeds={list(seeds)}.",
                             fix="Use --folds 5 alone, or --seeds 0,1,2 alone.")

    temporary = tempfile.TemporaryDirectory(prefix="headstart-compare-")
    if folds is not None:
        runs = _fold_runs(data, estimators, folds=folds, seed=seeds[0], root=Path(temporary.name))
    else:
        runs = _seed_runs(data, estimators, seeds)

    records: dict[str, list[dict[str, Any]]] = {name: [] for name in candidates}
    pooled_predictions: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {name: [] for name in candidates}
    warmup: list[dict[str, Any]] = []
    try:
        for run in runs:
            console.print(f"[bold]{run.label}[/bold]: {len(run.held)} held-out examples ({run.role})", highlight=False)
            warmup.append(_extract_shared_features(run, estimators, console))
            for name in candidates:
                record, predictions = _score_candidate(name, run, estimators, n_bootstrap=n_bootstrap,
                                                       console=console)
                pooled_predictions[name].append(predictions)
                records[name].append(record)
    finally:
        temporary.cleanup()

    classes = runs[0].held.classes
    results = [_summarise_candidate(name, records[name], pooled_predictions[name], classes,
                                    cross_validated=folds is not None, n_bootstrap=n_bootstrap)
               for name in candidates]
    if out is not None:
        out = Path(out)
        atomic_write_json(out / "comparison.json", {
            "data": str(Path(data).resolve()), "task": task, "backbone": backbone, "epochs": epochs,
            "seeds": list(seeds), "folds": folds, "evaluated_on": runs[0].role, "shared_feature_extraction": warmup,
            "candidates": [r.to_dict() for r in results]})
        plot_comparison(results, out / "comparison.png", title=f"{Path(data).name} ({backbone or task + ' default'})")
    return results


def format_comparison(results: Sequence[CandidateResult]) -> Table:
    """The comparison as a rich table, best accuracy first."""
    table = Table(show_edge=False)
    for column in ("candidate", "accuracy", "95% CI / sd", "macro-F1", "train s", "predict ms/img"):
        table.add_column(column, justify="left" if column == "candidate" else "right")
    for result in sorted(results, key=lambda r: -r.accuracy):
        spread = (f"[{result.accuracy_ci95[0]:.3f}, {result.accuracy_ci95[1]:.3f}]" if result.accuracy_ci95
                  else f"± {result.accuracy_sd:.3f}" if result.accuracy_sd is not None else "")
        table.add_row(result.name, f"{result.accuracy:.3f}", spread, f"{result.macro_f1:.3f}",
                      f"{result.train_seconds:.1f}", f"{result.predict_ms_per_image:.1f}")
    return table


def plot_comparison(results: Sequence[CandidateResult], path: str | os.PathLike[str], *, title: str | None = None) -> Path:
    """Accuracy (with 95% CI or ±sd) and train time per candidate, side by side."""
    from matplotlib.figure import Figure

    from headstart.evaluation.plots import _save

    ordered = sorted(results, key=lambda r: r.accuracy)
    names = [r.name for r in ordered]
    accuracy = np.array([r.accuracy for r in ordered])
    low = np.array([r.accuracy - (r.accuracy_ci95[0] if r.accuracy_ci95 else r.accuracy - (r.accuracy_sd or 0))
                    for r in ordered])
    high = np.array([(r.accuracy_ci95[1] if r.accuracy_ci95 else r.accuracy + (r.accuracy_sd or 0)) - r.accuracy
                     for r in ordered])
    figure = Figure(figsize=(10, 0.5 * len(names) + 1.8))
    left, right = figure.subplots(1, 2, sharey=True)
    left.barh(names, accuracy, xerr=[low, high], color="#4c72b0", capsize=3)
    left.set_xlim(max(0.0, float((accuracy - low).min()) - 0.05), 1.0)
    left.set_xlabel("held-out accuracy (95% CI)")
    right.barh(names, [r.train_seconds for r in ordered], color="#dd8452")
    right.set_xscale("log")
    right.set_xlabel("train seconds (log)")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return _save(figure, Path(path))
