"""Which backbone should I fine-tune? Rank candidates by how well their frozen features fit the training labels.

:func:`rank_backbones` runs each candidate backbone once over the training images (centre crop, no head),
scores the pooled features with LogME and a cross-validated linear probe (:mod:`headstart.selection.transferability`)
and sorts the candidates by LogME. The features go through :class:`~headstart.features.FeatureExtractor`
and its store, so ranking again -- with other candidates, or before training the winner, whose frozen stage
reads the same cached features -- costs only the scoring. Validation images are never looked at: they stay
an honest measure of whichever backbone is chosen.

A candidate that cannot run (no weights offline, a checkpoint that does not fit) is listed with the reason
instead of stopping the ranking; :func:`format_ranking` turns the result into a table.
"""

from __future__ import annotations

import difflib
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from headstart.data.images import DatasetSplits, load_image_dataset
from headstart.errors import HeadstartError, ParameterError, check_choice
from headstart.features import RUNTIMES, FeatureExtractor, FeatureStore
from headstart.models import (
    Preprocessing,
    create_backbone,
    get_backbone_spec,
    list_backbones,
)
from headstart.selection.transferability import cv_linear_probe_accuracy, logme_score

__all__ = ["BackboneScore", "format_ranking", "rank_backbones"]


@dataclass
class BackboneScore:
    """How one candidate backbone scored on the training images, and what it cost.

    Args:
        name: the backbone as given (registered name or ``timm:<model>``).
        logme: LogME of its centre-crop features (higher is better; ``nan`` when ``error`` is set).
        cv_accuracy: cross-validated accuracy of a logistic-regression probe on the same features.
        feature_seconds: wall time to create the backbone and extract (or read cached) features.
        score_seconds: wall time of LogME plus the cross-validated probe.
        cached: every feature came from the feature store (nothing was computed).
        n_images: training images scored.
        dim: feature dimension.
        weights: where the weights came from (or the weights asked for, when the candidate failed).
        error: why the candidate could not be scored, with the fix; ``None`` when it was.
    """

    name: str
    logme: float = math.nan
    cv_accuracy: float = math.nan
    feature_seconds: float = 0.0
    score_seconds: float = 0.0
    cached: bool = False
    n_images: int = 0
    dim: int = 0
    weights: str = ""
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (``nan`` scores become ``None``)."""
        values = asdict(self)
        for name in ("logme", "cv_accuracy"):
            if not math.isfinite(values[name]):
                values[name] = None
        return values


def _validate(backbones: Sequence[str], *, weights: Mapping[str, str], n_folds: int, seed: int,
              image_size: int | None, runtime: str, task: str = "image") -> list[str]:
    """The candidate names, after every check that needs no image and no model."""
    if isinstance(backbones, str):
        raise ParameterError(
            f"The 'backbones' parameter of rank_backbones must be a sequence of names. Got the string {backbones!r}.",
            fix=f"Wrap a single name in a list: [{backbones!r}].",
        )
    names = list(backbones)
    if not names:
        raise ParameterError(
            "The 'backbones' parameter of rank_backbones must name at least one backbone. Got an empty list.",
            fix="Pass candidates such as ['efficientnet_lite0', 'efficientnet_lite1'] (see `headstart backbones`).",
        )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ParameterError(
            f"The 'backbones' parameter of rank_backbones must name each backbone once. Got {repeated} more than once.",
            fix="To compare the same architecture with other weights, add it under its timm name, e.g."
                " 'timm:tf_efficientnet_lite0' with weights={'timm:tf_efficientnet_lite0': 'random'}.",
        )
    for name in names if task == "image" else ():  # text/audio names are folders or hub ids: checked when loaded
        try:
            get_backbone_spec(name)
        except ParameterError as error:
            close = difflib.get_close_matches(name, list_backbones(), n=1, cutoff=0.6)
            if not close:
                raise
            raise ParameterError(
                f"The 'backbones' parameter of rank_backbones got {name!r}, which is neither a registered backbone"
                " nor a timm model name.",
                fix=f"Did you mean {close[0]!r}? The registered backbones are {list_backbones()}.",
            ) from error
    unknown_weights = sorted(set(weights) - set(names))
    if unknown_weights:
        raise ParameterError(
            f"The 'weights' parameter of rank_backbones has entries for {unknown_weights}, which are not among the"
            f" candidates {names}.",
            fix="Key 'weights' by the exact candidate names passed in 'backbones'.",
        )
    if isinstance(n_folds, bool) or not isinstance(n_folds, int) or n_folds < 2:
        raise ParameterError(
            f"The 'n_folds' parameter of rank_backbones must be an integer >= 2. Got {n_folds!r}.",
            fix="Use n_folds=5 (the default), or at least 2.",
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ParameterError(f"The 'seed' parameter of rank_backbones must be an integer. Got {seed!r}.",
                             fix="Pass seed=0, for example.")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int)
                                   or not 32 <= image_size <= 1024):
        raise ParameterError(
            f"The 'image_size' parameter of rank_backbones must be an integer in [32, 1024] or None."
            f" Got {image_size!r}.",
            fix="Leave image_size unset to use each backbone's pretrained resolution.",
        )
    check_choice("rank_backbones", "runtime", runtime, RUNTIMES)
    return names


def _score_one(name: str, paths: list[Any], labels: np.ndarray, *, weights: str, store: FeatureStore | None,
               runtime: str, seed: int, n_folds: int, image_size: int | None, allow_download: bool,
               progress: bool, console: Console, warn: Callable[[str], None] | None,
               encoder_features: Callable[[str, str], tuple[np.ndarray, str]] | None = None) -> BackboneScore:
    """Extract and score one candidate; any failure becomes the ``error`` of its row.

    ``encoder_features(name, weights)`` gives a text/audio candidate's features and weights source instead.
    """
    score = BackboneScore(name=name, n_images=len(paths), weights=str(weights))
    started = time.perf_counter()
    try:
        if encoder_features is not None:
            features, score.weights = encoder_features(name, weights)
            score.feature_seconds = time.perf_counter() - started
            score.dim = int(features.shape[1])
            scoring = time.perf_counter()
            score.logme = logme_score(features, labels)
            score.cv_accuracy = cv_linear_probe_accuracy(features, labels, n_folds=n_folds, seed=seed)
            score.score_seconds = time.perf_counter() - scoring
            return score
        spec = get_backbone_spec(name)
        preprocessing = spec.preprocessing()
        if image_size is not None:
            preprocessing = Preprocessing.from_dict({**preprocessing.to_dict(), "input_size": image_size})
        # Random weights drawn from the seed, so that a second ranking finds the same features in the store;
        # fork_rng keeps the caller's own random state untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model, source = create_backbone(name, 0, weights=weights, allow_download=allow_download)
        score.weights = source.description
        extractor = FeatureExtractor(model, preprocessing=preprocessing, architecture=spec.architecture, store=store,
                                     runtime=runtime, progress=progress, console=console, warn=warn)
        features = extractor.extract(paths, view="center")
        score.feature_seconds = time.perf_counter() - started
        score.cached = extractor.report.computed == 0 and extractor.report.cached > 0
        score.dim = int(features.shape[1])
        del model, extractor
        scoring = time.perf_counter()
        score.logme = logme_score(features, labels)
        score.cv_accuracy = cv_linear_probe_accuracy(features, labels, n_folds=n_folds, seed=seed)
        score.score_seconds = time.perf_counter() - scoring
    except HeadstartError as error:
        score.error = error.message + (f" Fix: {error.fix}" if error.fix else "")
    except Exception as error:  # noqa: BLE001 - one broken candidate (e.g. input too small for it) must not end the ranking
        score.error = f"{type(error).__name__}: {str(error).strip()[:300]}"
    if score.error is not None:
        score.feature_seconds = score.feature_seconds or time.perf_counter() - started
        score.logme = score.cv_accuracy = math.nan
    return score


def rank_backbones(
    data: str | os.PathLike[str] | DatasetSplits,
    backbones: Sequence[str],
    *,
    task: str = "image",
    options: Mapping[str, Any] | None = None,
    store: FeatureStore | None = None,
    runtime: str = "auto",
    seed: int = 0,
    n_folds: int = 5,
    image_size: int | None = None,
    weights: Mapping[str, str] | None = None,
    val_fraction: float = 0.2,
    allow_download: bool = True,
    progress: bool = False,
    console: Console | None = None,
) -> list[BackboneScore]:
    """Score candidate backbones on the training images and sort them, most promising first.

    For each candidate: create it without a head, extract pooled centre-crop features of every training image
    through the feature store, then compute LogME (:func:`~headstart.selection.transferability.logme_score`) and the
    cross-validated accuracy of a logistic-regression probe
    (:func:`~headstart.selection.transferability.cv_linear_probe_accuracy`) on them. Only the training split is used:
    with ``train/`` + ``val/`` folders, ``train/``; with plain class folders, the part that training with the
    same ``seed`` and ``val_fraction`` would train on. Validation images are never read.

    Args:
        data: a class-folder root or a root with ``train/`` and ``val/``; or splits from
            :func:`~headstart.data.load_image_dataset` (their ``train`` is used). With ``task`` ``text`` or
            ``audio``: data as :class:`~headstart.TextClassifier` / :class:`~headstart.AudioClassifier` read it,
            and candidates are their backbones (``minilm``, transformers folders or hub ids;
            ``logmel:<image backbone>``).
        task: ``image``, ``text``, ``audio`` or ``auto`` (detected from ``data``).
        options: further text/audio estimator arguments (``text_column``, ``label_pattern``, ...).
        backbones: candidate names (registered, or ``timm:<model>``), each at most once.
        store: feature store; features computed once are reused by later rankings and by training (a fine-tune
            at the same image size reads them for its frozen head stage; ``FeatureStore()`` is the store
            :class:`~headstart.ImageClassifier` uses by default). ``None`` caches nothing.
        runtime: frozen-feature runtime: ``auto``, ``openvino``, ``onnxruntime`` or ``torch``.
        seed: seed of the hold-out split (plain class folders), of the CV folds and of ``"random"`` weights.
        n_folds: folds of the cross-validated probe (fewer when the smallest class is smaller).
        image_size: input side for every candidate; ``None``: each backbone's pretrained resolution.
        weights: per-candidate weights, ``"random"`` or a checkpoint file, keyed by candidate name; others
            use ``"auto"`` (see :func:`~headstart.models.create_backbone`).
        val_fraction: share held out when ``data`` has no validation folder (those images are not scored).
        allow_download: whether a candidate without local weights may download them (online only); when it
            may not, or the download fails, the candidate is listed with the reason.
        progress: show extraction progress and one line per candidate on ``console``.
        console: where progress and runtime warnings go (default: stdout when ``progress``; with neither,
            runtime warnings are Python warnings).

    Returns:
        One :class:`BackboneScore` per candidate, sorted by LogME (highest first); candidates that could not
        be scored come last, in the order given, with ``error`` set.

    Raises:
        ParameterError: an empty or repeated candidate list, an unknown backbone name (with the closest
            registered name), ``weights`` keys that are not candidates, or bad ``n_folds`` / ``seed`` / ``image_size`` /
            ``runtime``.
        DataError: ``data`` is not a usable labelled image folder.

    Example (``tests/test_rank.py`` runs the same call on the repository's sample)::

        from headstart.selection.rank import format_ranking, rank_backbones
        scores = rank_backbones("examples/hymenoptera_sample", ["timm:test_efficientnet", "resnet18"],
                                image_size=64, weights={"timm:test_efficientnet": "random"})
        rich.print(format_ranking(scores))  # resnet18 last, with the reason: no weights offline
    """
    from headstart.tasks import TASKS, detect_task, estimator_class

    check_choice("rank_backbones", "task", task, ("auto", *TASKS))
    if task == "auto":
        task = "image" if isinstance(data, DatasetSplits) else detect_task(data)
    weights = dict(weights or {})
    names = _validate(backbones, weights=weights, n_folds=n_folds, seed=seed, image_size=image_size,
                      runtime=runtime, task=task)
    shown = console if console is not None else Console()

    def warn_on_console(message: str) -> None:
        shown.print(f"[yellow]Warning:[/yellow] {message}")

    warn = warn_on_console if console is not None or progress else None
    encoder_features = None
    if task == "image":
        splits = data if isinstance(data, DatasetSplits) else load_image_dataset(data, val_fraction=val_fraction,
                                                                                 seed=seed)
    else:
        def estimator(name: str, weights_of: str) -> Any:
            return estimator_class(task)(name, weights=weights_of, seed=seed, val_fraction=val_fraction,
                                         cache_dir=store.root if store is not None else "off", progress=False,
                                         allow_download=allow_download, **dict(options or {}))

        splits = estimator(names[0], "auto").load_splits(data)

        def encoder_features(name: str, weights_of: str) -> tuple[np.ndarray, str]:
            return estimator(name, weights_of).pretrained_features(splits, console=shown if progress else None)

    train = splits.train
    paths = list(getattr(train, "paths", None) or getattr(train, "texts", []))
    labels = np.asarray(train.labels, dtype=np.int64)
    if progress:
        shown.print(f"Ranking {len(names)} backbone(s) on {len(paths)} training examples, {len(train.classes)} classes"
                    " (validation examples are not used).", highlight=False)
    scores: list[BackboneScore] = []
    for name in names:
        score = _score_one(name, paths, labels, weights=weights.get(name, "auto"), store=store, runtime=runtime,
                           seed=seed, n_folds=n_folds, image_size=image_size, allow_download=allow_download,
                           progress=progress, console=shown, warn=warn, encoder_features=encoder_features)
        if progress and score.error is None:
            shown.print(f"  {name}: LogME {score.logme:.4f}, CV accuracy {score.cv_accuracy:.3f}"
                        f" ({'cached' if score.cached else f'{score.feature_seconds:.1f}s'} features,"
                        f" {score.score_seconds:.1f}s scoring)", highlight=False)
        elif progress:
            shown.print(f"  {name}: [yellow]not scored[/yellow]: {score.error}", highlight=False)
        scores.append(score)
    ranked = sorted((s for s in scores if s.error is None), key=lambda s: s.logme, reverse=True)
    return ranked + [s for s in scores if s.error is not None]


def format_ranking(scores: Sequence[BackboneScore]) -> Table:
    """The ranking as a rich table: rank, backbone, LogME, CV accuracy, costs, cache use and a note.

    Args:
        scores: the result of :func:`rank_backbones` (already sorted).

    Returns:
        A :class:`rich.table.Table`, one row per candidate; a failed candidate shows no rank and its error
        as the note.

    >>> table = format_ranking([BackboneScore("a", logme=0.5, cv_accuracy=0.9, n_images=10, dim=8),
    ...                         BackboneScore("b", error="No weights.")])
    >>> table.row_count, [column.header for column in table.columns][:3]
    (2, ['rank', 'backbone', 'LogME'])
    """
    table = Table(title="Backbone ranking (training images only; higher LogME first)")
    for header, justify in (("rank", "right"), ("backbone", "left"), ("LogME", "right"), ("CV acc", "right"),
                            ("features s", "right"), ("scoring s", "right"), ("cached", "center"),
                            ("note", "left")):
        table.add_column(header, justify=justify)  # type: ignore[arg-type]
    position = 0
    for score in scores:
        if score.error is None:
            position += 1
            table.add_row(str(position), score.name, f"{score.logme:.4f}", f"{score.cv_accuracy:.3f}",
                          f"{score.feature_seconds:.1f}", f"{score.score_seconds:.1f}", "yes" if score.cached else "no",
                          f"{score.n_images} images, dim {score.dim}, {score.weights}")
        else:
            # the full message (with its fix) was printed while ranking; the table keeps its first sentence
            table.add_row("-", score.name, "-", "-", f"{score.feature_seconds:.1f}", "-", "-",
                          score.error.split(". ")[0])
    return table
