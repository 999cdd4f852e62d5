"""Atomic writes: every file headstart saves appears whole or not at all (temp file + rename).

Weights are safetensors, everything else JSON; nothing is pickled.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

__all__ = [
    "atomic_replace",
    "temporary_sibling",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_save_tensors",
    "atomic_directory",
    "read_json",
    "load_tensors",
    "load_tensors_and_metadata",
    "flatten_optimizer_state",
    "unflatten_optimizer_state",
]


def temporary_sibling(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    return Path(name)


def _read_umask() -> int:
    # os.umask is the only portable reader and it also sets: do it once, at import, not per write (setting it
    # to 0 even briefly would let files created meanwhile by other threads come out world-writable).
    current = os.umask(0o022)
    os.umask(current)
    return current


_UMASK = _read_umask()


def atomic_replace(temporary: Path, path: Path) -> None:
    with open(temporary, "rb") as handle:
        os.fsync(handle.fileno())
    os.chmod(temporary, 0o666 & ~_UMASK)  # mkstemp makes 0600 files: give saved files the usual mode
    os.replace(temporary, path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    path = Path(path)
    temporary = temporary_sibling(path)
    try:
        temporary.write_text(text, encoding="utf-8")
        atomic_replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def atomic_save_tensors(path: str | os.PathLike[str], tensors: dict[str, torch.Tensor], *,
                        metadata: dict[str, str] | None = None) -> Path:
    """Save tensors as safetensors (contiguous CPU copies; shared storage is broken apart)."""
    path = Path(path)
    temporary = temporary_sibling(path)
    try:
        save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}, str(temporary),
                  metadata=metadata)
        atomic_replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def load_tensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    return load_file(str(path), device="cpu")


def load_tensors_and_metadata(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors of a safetensors file and its string metadata (``{}`` when it has none)."""
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}, dict(handle.metadata() or {})


@contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder to fill; on success it replaces ``path`` (an older folder is removed).

    Readers never see a half-written folder: the new folder is complete before it is renamed into place.
    The old folder is moved aside (``.NAME.*.old``) just before; a crash in the instant between the two renames
    leaves only that copy, which :func:`headstart.bundle.load_bundle` points to.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(temporary, 0o777 & ~_UMASK)  # mkdtemp makes 0700 folders
    try:
        yield temporary
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            old.rmdir()
            os.replace(path, old)
        os.replace(temporary, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)


def flatten_optimizer_state(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split a torch optimizer state dict into tensors (for safetensors) and JSON-ready structure."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state_dict["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], structure: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten_optimizer_state`."""
    state: dict[int, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = tensor
    for index, values in structure.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": structure["param_groups"]}
