"""The saved model: a folder with ``model.safetensors`` and ``config.json``, loadable by a fresh process.

``config.json`` carries everything that rebuilds the model (backbone architecture, number of classes,
preprocessing, labels) plus how it was trained and its validation metrics. Weights are safetensors, never
pickle. The folder is written atomically: a reader sees the old bundle or the new one, never half of one.
"""

from __future__ import annotations

import datetime
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn

from headstart.data.preprocessing import Preprocessing
from headstart.errors import BundleError
from headstart.models.heads import (
    load_sklearn_head,
    save_sklearn_head,
)
from headstart.storage import (
    written_before_markers,
    atomic_directory,
    atomic_save_tensors,
    atomic_write_json,
    load_tensors,
    read_json,
)
from headstart.tasks import resolve, task_of_bundle

__all__ = ["BUNDLE_FORMAT_VERSION", "Bundle", "is_bundle_folder", "save_bundle", "load_bundle", "library_versions",
           "validation_reference"]

BUNDLE_FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
HEAD_FILE = "head.skops"
VALIDATION_FILE = "validation.json"  # the validation inputs (file paths or texts) and labels: export checks on them
MAX_VALIDATION_ITEMS = 5000
ENCODER_DIR = "encoder"


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("headstart", "torch", "torchvision", "timm", "safetensors", "lightning-fabric", "numpy", "pillow",
                    "scikit-learn", "skops", "transformers", "peft", "soundfile", "soxr"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


@dataclass
class Bundle:
    """A loaded model folder."""

    path: Path
    model: nn.Module
    config: dict[str, Any]
    head: Any = None  # a scikit-learn head on the model's pooled features, when the bundle has one
    validation: dict[str, Any] | None = None  # {"kind": "files"|"texts", "inputs": [...], "labels": [...]}

    @property
    def classes(self) -> list[str]:
        return list(self.config["classes"])

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing.from_dict(self.config["preprocessing"])


def validation_reference(inputs: Sequence[Any], labels: Sequence[int], *, kind: str) -> dict[str, Any]:
    """What ``save_bundle(validation=...)`` stores: the validation split's file paths (absolute) or texts, and
    labels, at most :data:`MAX_VALIDATION_ITEMS` (an evenly spaced subset beyond that)."""
    step = max(1, -(-len(inputs) // MAX_VALIDATION_ITEMS))
    items = [str(Path(x).resolve()) if kind == "files" else str(x) for x in list(inputs)[::step]]
    return {"kind": kind, "inputs": items, "labels": [int(v) for v in list(labels)[::step]]}


def is_bundle_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` looks like a model folder (``config.json`` and ``model.safetensors``); not a validity check."""
    path = Path(path).expanduser()
    return (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


BUNDLE_ENTRIES = frozenset({WEIGHTS_FILE, CONFIG_FILE, HEAD_FILE, VALIDATION_FILE, ENCODER_DIR})


def is_legacy_bundle(folder: Path) -> bool:
    """A bundle folder written before folders carried their owner file: a headstart config and only bundle files."""
    return written_before_markers(folder, identity_file=CONFIG_FILE, format_name="headstart-bundle",
                                  entries=BUNDLE_ENTRIES)


def save_bundle(path: str | os.PathLike[str], model: nn.Module, config: dict[str, Any], *, head: Any = None,
                encoder_files: Callable[[Path], None] | None = None,
                validation: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (a timm classifier) and ``config`` to the folder ``path``, replacing it atomically.

    ``config`` must hold ``architecture``, ``classes`` and ``preprocessing``; format and library versions
    are added here. A scikit-learn ``head`` (on the backbone's pooled features; the model then has no
    classifier) is written as ``head.skops``: JSON and numpy arrays in a zip, no pickle. ``encoder_files``
    writes what rebuilds a text/audio encoder's structure (transformers config, tokenizer or feature extractor;
    no weights) into the bundle's ``encoder/`` folder. ``validation`` (from :func:`validation_reference`) is
    written as ``validation.json``: ``headstart export`` checks the exported model on those real inputs.
    """
    missing = [key for key in ("architecture", "classes", "preprocessing") if key not in config]
    if missing:
        raise BundleError(f"Cannot save a bundle without {missing} in its config.",
                          fix="Pass a config with architecture, classes and preprocessing.")
    full = {
        "format": "headstart-bundle",
        "format_version": BUNDLE_FORMAT_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **config,
        "versions": library_versions(),
    }
    with atomic_directory(path, kind="model", legacy=is_legacy_bundle) as temporary:
        atomic_save_tensors(temporary / WEIGHTS_FILE, model.state_dict(), metadata={"format": "pt"})
        if head is not None:
            save_sklearn_head(head, temporary / HEAD_FILE)
        if encoder_files is not None:
            (temporary / ENCODER_DIR).mkdir()
            encoder_files(temporary / ENCODER_DIR)
        if validation is not None:
            atomic_write_json(temporary / VALIDATION_FILE, validation)
        atomic_write_json(temporary / CONFIG_FILE, full)
    return Path(path)


def load_bundle(path: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> Bundle:
    """Rebuild the model saved at ``path`` (no network, no training code, no pickle).

    Raises:
        BundleError: the folder is not a headstart bundle, is incomplete, or from a newer format.
    """
    path = Path(path).expanduser()
    config_file, weights_file = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not path.exists():
        leftovers = sorted(path.parent.glob(f".{path.name}.*.old")) if path.parent.is_dir() else []
        if leftovers:
            # save_bundle moves the old folder aside for an instant before renaming the new one into place.
            raise BundleError(
                f"{path} does not exist, but {leftovers[-1]} does: a save was interrupted while replacing it.",
                fix=f"Rename {leftovers[-1]} to {path} to get the previous model back.",
            )
    if not path.is_dir() or not config_file.is_file() or not weights_file.is_file():
        raise BundleError(
            f"{path} is not a headstart model folder: expected {CONFIG_FILE} and {WEIGHTS_FILE} inside it.",
            fix="Pass the 'model' folder written by `headstart train` (e.g. runs/NAME/model) or by save().",
        )
    try:
        config = read_json(config_file)
    except ValueError as error:
        raise BundleError(f"{config_file} is not valid JSON ({error}).", fix="Re-save the model.") from None
    if config.get("format") != "headstart-bundle" or int(config.get("format_version", 0)) > BUNDLE_FORMAT_VERSION:
        raise BundleError(
            f"{config_file} has format {config.get('format')!r} version {config.get('format_version')!r}; this"
            f" headstart reads headstart-bundle up to version {BUNDLE_FORMAT_VERSION}.",
            fix="Upgrade headstart, or re-save the model with this version.",
        )
    missing = [key for key in ("architecture", "classes", "preprocessing", "backbone") if key not in config]
    if missing:
        raise BundleError(f"{config_file} lacks {missing}.", fix="Re-save the model; the config is incomplete.")
    head_config = config.get("head") or {"kind": "linear"}
    head = None
    if head_config.get("kind") == "sklearn":
        if not (path / HEAD_FILE).is_file():
            raise BundleError(f"{path} has a scikit-learn head in its config but no {HEAD_FILE}.",
                              fix="The folder is incomplete; re-save the model.")
        head = load_sklearn_head(path / HEAD_FILE)
    try:
        model = resolve(task_of_bundle(config).net_builder)(config, path / ENCODER_DIR)
        model.load_state_dict(load_tensors(weights_file))
    except (RuntimeError, OSError, ValueError, KeyError, SafetensorError) as error:
        raise BundleError(
            f"{weights_file} does not match a {config['architecture']} with {len(config['classes'])} classes:"
            f" {str(error).splitlines()[0][:300]}",
            fix="The folder may be damaged or mixed from two models; re-save it.",
        ) from None
    model.eval().to(device)
    validation = None
    if (path / VALIDATION_FILE).is_file():
        try:
            validation = read_json(path / VALIDATION_FILE)
        except ValueError:
            validation = None  # only export's default parity inputs depend on it; it then asks for --data
    return Bundle(path=path, model=model, config=config, head=head, validation=validation)
