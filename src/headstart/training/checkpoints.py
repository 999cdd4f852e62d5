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

from headstart.errors import OverwriteError, ResumeError
from headstart.storage import (
    TRASH_SUFFIX,
    atomic_directory,
    atomic_save_tensors,
    atomic_write_json,
    flatten_optimizer_state,
    load_tensors,
    read_json,
    remove_owned_directory,
    unflatten_optimizer_state,
)

__all__ = ["CHECKPOINT_DIR", "RUN_FILES", "RUN_MARKER", "start_run_folder", "is_run_folder", "Checkpoint", "latest_checkpoint",
           "save_checkpoint", "save_best_weights", "load_best_weights", "load_checkpoint", "as_saved",
           "clear_checkpoints"]

CHECKPOINT_DIR = "checkpoints"
RUN_MARKER = ".headstart-run.json"
# what a run writes into its folder; a fresh run in a folder that is not a headstart run refuses to replace them
RUN_FILES = ("checkpoints", "model", "config.json", "data.json", "metrics.json", "history.json", "curves.png",
             "confusion_matrix.png", "reliability.png", "summary.txt", "samples", "comparison.png")


def is_run_folder(run_dir: Path) -> bool:
    """Whether ``run_dir`` is a headstart run folder (its marker, or the config.json a run writes)."""
    if (run_dir / RUN_MARKER).is_file():
        return True
    try:
        config = read_json(run_dir / "config.json")
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and ("params" in config or "adapter" in config)


def start_run_folder(run_dir: str | Path, *, resume: bool = False) -> Path:
    """Create or claim ``run_dir`` for a run; a fresh run also drops an earlier run's checkpoints there.

    A folder of the user's own may hold the run (their files stay), unless it already has a file a run writes
    (``config.json``, ``model``, ...) that a headstart run did not write: that is refused, not replaced.

    Raises:
        OverwriteError: naming the folder, the clashing entries and the fix.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise OverwriteError(f"The run folder {run_dir} is a file.", fix="Pass a folder path as --out / out.")
    if not resume and run_dir.is_dir() and not is_run_folder(run_dir):
        clashing = [name for name in RUN_FILES if (run_dir / name).exists()]
        if clashing:
            raise OverwriteError(f"{run_dir} is not a headstart run folder but holds {', '.join(clashing)}, which a"
                                 " run would replace.", fix=f"Train into a new folder, for example {run_dir / 'run'}.")
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        clear_checkpoints(run_dir)
    if not (run_dir / RUN_MARKER).is_file():
        atomic_write_json(run_dir / RUN_MARKER, {"format": "headstart-run", "files": list(RUN_FILES)})
    return run_dir


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
    with atomic_directory(folder / name, kind="checkpoint", legacy=_is_checkpoint_folder) as temporary:
        atomic_save_tensors(temporary / "model.safetensors", model.state_dict())
        atomic_save_tensors(temporary / "optimizer.safetensors", tensors)
        if ema:
            atomic_save_tensors(temporary / "ema.safetensors", ema)
        atomic_write_json(temporary / "state.json", {"train_state": state, "optimizer": structure,
                                                     "best_file": best_file, "fingerprint": fingerprint})
    _remove_checkpoints(folder, keep={name, best_file})
    return folder / name


_CHECKPOINT_ENTRIES = frozenset({"model.safetensors", "optimizer.safetensors", "ema.safetensors", "state.json"})


def _is_checkpoint_folder(folder: Path) -> bool:
    """A checkpoint written before folders carried their owner file."""
    return (folder / "state.json").is_file() and all(p.name in _CHECKPOINT_ENTRIES for p in folder.iterdir())


def _remove_checkpoints(folder: Path, *, keep: set[str | None]) -> None:
    """Delete the checkpoints and best-weight files in ``folder`` except ``keep``: only those headstart wrote."""
    for old in folder.glob("epoch-*[0-9]"):
        if old.name not in keep and old.is_dir():
            remove_owned_directory(old, kind="checkpoint", legacy=_is_checkpoint_folder)
    for old in folder.glob("best-epoch-*.safetensors"):
        if old.name not in keep:
            old.unlink(missing_ok=True)


def clear_checkpoints(run_dir: Path) -> None:
    """Remove an earlier run's checkpoints from ``run_dir`` (a fresh run must never resume them); a checkpoints
    folder holding anything else is refused, not deleted."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return
    _remove_checkpoints(folder, keep=set())
    left = sorted(p.name for p in folder.iterdir() if not p.name.endswith(TRASH_SUFFIX))
    if left:
        raise OverwriteError(f"{folder} holds {', '.join(left[:5])}, which headstart did not write; a run in"
                             f" {run_dir} keeps its checkpoints there.",
                             fix="Move those files out, or train into another --out folder.")
    shutil.rmtree(folder)  # empty but for trash a killed deletion left


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
