"""Checkpoints that describe themselves: weights, optimizer moments, where training was, and what it was for.

After every epoch the loop writes ``checkpoints/epoch-NNNN/`` (``model.safetensors``, ``optimizer.safetensors``,
``state.json``) atomically, then removes the older one; the best epoch's weights sit beside it as
``best-epoch-NNNN.safetensors``. ``state.json`` holds the loop state and a fingerprint of the data and settings:
a resume with anything else would not replay the same run, so it is refused, naming what differs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from headstart.errors import ResumeError
from headstart.storage import (
    atomic_directory,
    atomic_save_tensors,
    atomic_write_json,
    flatten_optimizer_state,
    load_tensors,
    read_json,
    unflatten_optimizer_state,
)

__all__ = ["CHECKPOINT_DIR", "Checkpoint", "latest_checkpoint", "save_checkpoint", "save_best_weights",
           "load_best_weights", "load_checkpoint", "as_saved"]

CHECKPOINT_DIR = "checkpoints"


class Checkpoint:
    """A loaded checkpoint: the loop state (a dict), the model weights and the optimizer state (or None)."""

    def __init__(self, folder: Path, saved: dict[str, Any]) -> None:
        self.folder = folder
        self.state: dict[str, Any] = saved["train_state"]
        self.best_file: str | None = saved.get("best_file")
        self.fingerprint: dict[str, Any] = saved.get("fingerprint", {})
        self._optimizer_structure = saved.get("optimizer")

    def model_state(self) -> dict[str, torch.Tensor]:
        return load_tensors(self.folder / "model.safetensors")

    def ema_state(self) -> dict[str, torch.Tensor] | None:
        """The moving average of the weights (``TrainConfig.ema_decay``), when one was kept mid-stage."""
        path = self.folder / "ema.safetensors"
        return load_tensors(path) if path.is_file() else None

    def optimizer_state(self) -> dict[str, Any] | None:
        """None when the checkpoint closed a stage (the next stage builds a new optimizer)."""
        if self._optimizer_structure is None:
            return None
        return unflatten_optimizer_state(load_tensors(self.folder / "optimizer.safetensors"),
                                         self._optimizer_structure)


def as_saved(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), so fingerprints compare like for like."""
    return json.loads(json.dumps(value))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder of a run, or None."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    found = sorted(folder.glob("epoch-*[0-9]")) if folder.is_dir() else []
    return found[-1] if found else None


def save_checkpoint(run_dir: Path, *, epoch: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    state: dict[str, Any], best_file: str | None, fingerprint: dict[str, Any],
                    ema: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the checkpoint after ``epoch`` (with ``ema``, the weights' moving average); then drop older
    checkpoints and best-weight files."""
    folder = run_dir / CHECKPOINT_DIR
    tensors, structure = flatten_optimizer_state(optimizer.state_dict()) if optimizer is not None else ({}, None)
    name = f"epoch-{epoch:04d}"
    with atomic_directory(folder / name) as temporary:
        atomic_save_tensors(temporary / "model.safetensors", model.state_dict())
        atomic_save_tensors(temporary / "optimizer.safetensors", tensors)
        if ema:
            atomic_save_tensors(temporary / "ema.safetensors", ema)
        atomic_write_json(temporary / "state.json", {"train_state": state, "optimizer": structure,
                                                     "best_file": best_file, "fingerprint": fingerprint})
    for old in folder.glob("epoch-*[0-9]"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    for old in folder.glob("best-epoch-*.safetensors"):
        if old.name != best_file:
            old.unlink(missing_ok=True)
    return folder / name


def save_best_weights(run_dir: Path, epoch: int, weights: dict[str, torch.Tensor]) -> str:
    """Write the best epoch's weights (a state dict) beside the checkpoints; returns the file name."""
    name = f"best-epoch-{epoch:04d}.safetensors"
    atomic_save_tensors(run_dir / CHECKPOINT_DIR / name, weights)
    return name


def load_best_weights(run_dir: Path, name: str) -> dict[str, torch.Tensor]:
    return load_tensors(run_dir / CHECKPOINT_DIR / name)


def _differences(saved: Any, now: Any, prefix: str = "") -> list[str]:
    if isinstance(saved, dict) and isinstance(now, dict):
        return [item for key in sorted(set(saved) | set(now), key=str)
                for item in _differences(saved.get(key), now.get(key), f"{prefix}{key}.")]
    return [] if saved == now else [prefix.rstrip(".")]


def load_checkpoint(run_dir: Path, fingerprint: dict[str, Any]) -> Checkpoint | None:
    """The run's latest checkpoint, checked against ``fingerprint``; None when no epoch has ended yet.

    Raises:
        ResumeError: the checkpoint was written for other data or settings (the message names them).
    """
    folder = latest_checkpoint(run_dir)
    if folder is None:
        if (run_dir / CHECKPOINT_DIR / "state.json").is_file():
            raise ResumeError(f"{run_dir / CHECKPOINT_DIR} holds a checkpoint of an older headstart, which this one"
                              " cannot continue.", fix="Start the run again (`headstart train ... --overwrite`).")
        return None
    try:
        saved = read_json(folder / "state.json")
    except ValueError as error:
        raise ResumeError(f"{folder / 'state.json'} is damaged ({error}).",
                          fix="Start the run again with --overwrite (or another --out).") from None
    differ = _differences(saved.get("fingerprint", {}), as_saved(fingerprint))
    if differ:
        shown = ", ".join(differ[:8]) + (f" and {len(differ) - 8} more" if len(differ) > 8 else "")
        raise ResumeError(f"The checkpoint in {folder} was written for other data or settings (differing: {shown}).",
                          fix="Resume with the run's own data and settings (`headstart train --resume RUN_DIR` reuses"
                              " them), or start a new run in another --out.")
    return Checkpoint(folder, saved)
