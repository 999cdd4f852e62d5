"""Shared helpers for the benchmark scripts: a measured linear-probe baseline and result printing."""

from __future__ import annotations

import json
import platform
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from headstart.evaluation.metrics import classification_metrics
from headstart.features import extract_features

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def linear_probe_baseline(train_paths: list[Path], train_labels: list[int], eval_paths: list[Path],
                          eval_labels: list[int], classes: list[str], *, class_weight: str | None = None) -> dict[str, Any]:
    """Frozen EfficientNet-Lite0 features (224 px, eval transform) + scikit-learn logistic regression."""
    started = time.perf_counter()
    train = extract_features("efficientnet_lite0", train_paths)
    evaluation = extract_features("efficientnet_lite0", eval_paths)
    head = LogisticRegression(max_iter=5000, class_weight=class_weight).fit(train, train_labels)
    metrics = classification_metrics(eval_labels, head.predict_proba(evaluation), classes=classes)
    metrics["seconds"] = round(time.perf_counter() - started, 1)
    return metrics


def show(label: str, metrics: dict[str, Any]) -> str:
    acc, f1 = metrics["accuracy"], metrics["macro_f1"]
    return (f"{label:<44} accuracy {acc['value']:.3f} [{acc['ci95'][0]:.3f}, {acc['ci95'][1]:.3f}]"
            f"  macro-F1 {f1['value']:.3f} [{f1['ci95'][0]:.3f}, {f1['ci95'][1]:.3f}]"
            f"  errors {round((1 - acc['value']) * metrics['n_samples'])}/{metrics['n_samples']}")


def machine() -> str:
    return f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def write_results(path: Path | None, results: dict[str, Any]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")
        print(f"results written to {path}")


def errors(metrics: dict[str, Any]) -> int:
    return int(round((1 - metrics["accuracy"]["value"]) * metrics["n_samples"]))


def pretrained_vs_random(results: dict[str, Any], metric: str, goal: float, label: str) -> None:
    """Print (and store in ``results``) the pretrained - random margin of ``metric`` and whether the goal is met."""
    runs = results["runs"]
    if "pretrained" in runs and "random" in runs:
        margin = runs["pretrained"]["test"][metric] - runs["random"]["test"][metric]
        results[f"margin_{metric}"] = round(margin, 4)
        print(f"\npretrained - random {label}: {margin:+.4f}")
    value = runs.get("pretrained", {}).get("test", {}).get(metric)
    if value is not None:
        print(f"goal {label} >= {goal:.2f} (pretrained): {'reached' if value >= goal else 'NOT reached'} ({value:.4f})")


__all__ = ["SHARED", "linear_probe_baseline", "show", "machine", "write_results", "errors", "np",
           "pretrained_vs_random"]


def build_folders(source: Path, root: Path, *, per_class_train: int, per_class_val: int, seed: int) -> None:
    for label in ("NORMAL", "PNEUMONIA"):
        files = sorted((source / label).glob("*.jpeg")) + sorted((source / label).glob("*.jpg"))
        random.Random(seed).shuffle(files)
        for split, chosen in (("train", files[:per_class_train]),
                              ("val", files[per_class_train:per_class_train + per_class_val])):
            folder = root / split / label
            folder.mkdir(parents=True)
            for path in chosen:
                (folder / path.name).symlink_to(path)


def train_val_folders(dataset: str, root: Path) -> tuple[Path, Path]:
    """hymenoptera's train/ and val/, or a chest_xray subset (500 + 500 training images of chest_xray/train and
    250 + 250 more for validation, seed 0; its test/ is never read) built as symlinks under ``root``."""
    if dataset == "hymenoptera":
        return SHARED / "images" / "hymenoptera" / "train", SHARED / "images" / "hymenoptera" / "val"
    build_folders(SHARED / "images" / "chest_xray" / "train", root / "data", per_class_train=500, per_class_val=250,
                  seed=0)
    return root / "data" / "train", root / "data" / "val"
