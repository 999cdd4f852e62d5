"""Atomic writes: every file headstart saves appears whole or not at all (temp file + rename).

Weights are safetensors, everything else JSON; nothing is pickled.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from headstart.errors import OverwriteError

__all__ = [
    "atomic_replace",
    "temporary_sibling",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_save_tensors",
    "atomic_directory",
    "check_replaceable",
    "written_before_markers",
    "remove_owned_directory",
    "TRASH_SUFFIX",
    "fault_point",
    "OWNER_FILE",
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
    fault_point("file-written")
    with open(temporary, "rb") as handle:
        os.fsync(handle.fileno())
    os.chmod(temporary, 0o666 & ~_UMASK)  # mkstemp makes 0600 files: give saved files the usual mode
    os.replace(temporary, path)
    fault_point("file-replaced")


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


OWNER_FILE = ".headstart-owned.json"  # in every folder atomic_directory writes: what it wrote, so only that is replaced


def _entries(folder: Path) -> list[str]:
    """Every file and folder under ``folder`` (relative POSIX paths; symbolic links are not followed)."""
    found = []
    for root, dirs, files in os.walk(folder):
        base = Path(root).relative_to(folder)
        found += [(base / name).as_posix() for name in dirs + files]
    return sorted(found)


def _describe(names: list[str]) -> str:
    shown = ", ".join(names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _inside(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_replaceable(path: str | os.PathLike[str], *, kind: str, legacy: Callable[[Path], bool] | None = None,
                      sources: Iterable[str | os.PathLike[str]] = ()) -> Path:
    """Refuse, before any work, to replace ``path`` unless it is absent, empty, or a ``kind`` folder headstart wrote.

    A folder headstart wrote carries :data:`OWNER_FILE` listing its entries; anything else found in it (a user's
    ``notes.txt``) makes it foreign. ``legacy(folder)`` recognises a ``kind`` folder from before the marker.
    ``sources`` (what the folder is made from) may be neither the target nor inside it, and neither may the
    current folder. Returns the absolute path.

    Raises:
        OverwriteError: naming the folder, what was found in it and the fix.
    """
    given = Path(path).expanduser()
    target = Path(os.path.abspath(given))
    choose = f"Choose a new or empty folder (for example {target / kind}), or move what is there out first."
    if given.is_symlink():
        raise OverwriteError(f"{given} is a symbolic link; headstart replaces the {kind} folder it names, which"
                             " would break the link.", fix=f"Pass the folder the link points to ({given.resolve()})"
                             " or a new folder.")
    for source in sources:
        source_path = Path(os.path.abspath(Path(source).expanduser()))
        if _inside(source_path, target) or _inside(source_path.resolve(), target.resolve()):
            raise OverwriteError(f"{given} is, or contains, {source_path}, which this {kind} is made from; replacing"
                                 " it would delete the source.", fix=f"Write the {kind} elsewhere, for example"
                                 f" {source_path.parent / (source_path.name + '-' + kind)}.")
    if _inside(Path.cwd().resolve(), target.resolve()) and target.exists():
        raise OverwriteError(f"{given} is, or contains, the current folder; headstart replaces a {kind} folder"
                             " whole, which would delete it.", fix=f"Pass a subfolder such as {given / kind}.")
    if not target.exists():
        return target
    if not target.is_dir():
        raise OverwriteError(f"{given} is a file, not a folder; writing the {kind} there would delete it.",
                             fix="Pass a folder path that does not exist yet.")
    entries = _entries(target)
    if not entries:
        return target
    marker = target / OWNER_FILE
    if marker.is_file():
        try:
            owned = read_json(marker)
            written = set(owned["entries"]) | {OWNER_FILE}
        except (ValueError, KeyError, TypeError):
            raise OverwriteError(f"{marker} is damaged, so headstart cannot tell what in {given} it wrote.",
                                 fix=choose) from None
        foreign = [name for name in entries if name not in written]
        if foreign:
            raise OverwriteError(f"{given} is a headstart {owned.get('kind', kind)} folder, but it also holds"
                                 f" {_describe(foreign)}, which headstart did not write; replacing the folder"
                                 " would delete them.", fix=choose)
        return target
    if legacy is not None and legacy(target):
        return target
    raise OverwriteError(f"{given} already holds {_describe(entries)}, and it is not a {kind} folder headstart"
                         " wrote; replacing it would delete them.", fix=choose)


def written_before_markers(folder: Path, *, identity_file: str, format_name: str,
                           entries: frozenset[str]) -> bool:
    """A folder headstart wrote before folders carried :data:`OWNER_FILE`: ``identity_file`` is JSON with
    ``"format": format_name`` and every entry's name is in ``entries``."""
    try:
        identity = read_json(folder / identity_file)
    except (OSError, ValueError):
        return False
    return (isinstance(identity, dict) and identity.get("format") == format_name
            and all(p.name in entries for p in folder.iterdir()))


def _mark(folder: Path, kind: str) -> None:
    atomic_write_json(folder / OWNER_FILE, {"format": "headstart-owned", "kind": kind,
                                            "entries": [e for e in _entries(folder) if e != OWNER_FILE]})


@contextmanager
def atomic_directory(path: str | os.PathLike[str], *, kind: str, legacy: Callable[[Path], bool] | None = None,
                     sources: Iterable[str | os.PathLike[str]] = ()) -> Iterator[Path]:
    """Yield a temporary folder to fill; on success it replaces ``path``, which may only be absent, empty or a
    ``kind`` folder headstart wrote (:func:`check_replaceable`, checked before the work and again before the swap).

    Readers never see a half-written folder: the new folder is complete before it is renamed into place.
    The old folder is moved aside (``.NAME.*.old``) just before; a crash in the instant between the two renames
    leaves only that copy, which :func:`headstart.bundle.load_bundle` points to.
    """
    sources = list(sources)
    path = check_replaceable(path, kind=kind, legacy=legacy, sources=sources)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(temporary, 0o777 & ~_UMASK)  # mkdtemp makes 0700 folders
    try:
        yield temporary
        _mark(temporary, kind)
        check_replaceable(path, kind=kind, legacy=legacy, sources=sources)  # nothing foreign arrived meanwhile
        fault_point("directory-written")
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            old.rmdir()
            os.replace(path, old)
            fault_point("directory-moved-aside")
        os.replace(temporary, path)
        if old is not None:
            fault_point("directory-replaced")
            shutil.rmtree(old, ignore_errors=True)
        for leftover in path.parent.glob(f".{path.name}.*.old"):  # a copy an interrupted earlier swap left aside
            if (leftover / OWNER_FILE).is_file() or (legacy is not None and legacy(leftover)):
                shutil.rmtree(leftover, ignore_errors=True)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)


def remove_owned_directory(path: str | os.PathLike[str], *, kind: str,
                           legacy: Callable[[Path], bool] | None = None) -> bool:
    """Delete ``path`` only if it is a ``kind`` folder headstart wrote (or empty); returns whether it was removed.

    Raises:
        OverwriteError: ``path`` holds something headstart did not write.
    """
    path = Path(path)
    _empty_trash(path.parent)
    if not path.exists():
        return False
    check_replaceable(path, kind=kind, legacy=legacy)
    # renamed away first, in one step: a kill during the deletion leaves a trash folder (emptied next time), never
    # a half-deleted folder under the old name that no longer carries its owner file
    trash = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TRASH_SUFFIX, dir=path.parent))
    trash.rmdir()
    os.replace(path, trash)
    fault_point("directory-trashed")
    shutil.rmtree(trash, ignore_errors=True)
    return True


TRASH_SUFFIX = ".headstart-trash"


def _empty_trash(folder: Path) -> None:
    """Finish deletions a killed process left (only the trash folders :func:`remove_owned_directory` names)."""
    if folder.is_dir():
        for leftover in folder.glob(f".*{TRASH_SUFFIX}"):
            shutil.rmtree(leftover, ignore_errors=True)


_FAULT_COUNT = 0


def fault_point(name: str) -> None:
    """Fault injection for the crash-safety tests: with ``HEADSTART_FAULT_AT=N`` the process kills itself (SIGKILL,
    as ``kill -9`` would) at the Nth fault point it passes; ``HEADSTART_FAULT_TRACE=FILE`` lists the points passed.
    A no-op otherwise. The points sit between the steps of every write, so a test can crash a command at each."""
    global _FAULT_COUNT
    at, trace = os.environ.get("HEADSTART_FAULT_AT"), os.environ.get("HEADSTART_FAULT_TRACE")
    if not at and not trace:
        return
    _FAULT_COUNT += 1
    if trace:  # every point passed, one line each: a run without a kill counts them
        with open(trace, "a", encoding="utf-8") as handle:
            handle.write(f"{os.getpid()} {_FAULT_COUNT} {name}\n")
    if at and _FAULT_COUNT == int(at):
        os.kill(os.getpid(), signal.SIGKILL)


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
