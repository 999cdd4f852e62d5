"""The on-disk feature store: frozen-backbone features computed once per file, reused by every later run.

Layout under the cache root (``$HEADSTART_CACHE``, else ``~/.cache/headstart``)::

    features/<key digest>/key.json            what the features are: architecture, weights digest,
                                              preprocessing, view (centre crop, mirror, augmented view k)
    features/<key digest>/shard-*.safetensors  rows of features + the content digest of each row's file
    heads/<solve digest>.safetensors           a solved linear head (weights + how it was chosen), keyed by the
                                              digest of everything the solve reads (features, labels, options)

A file is identified by the digest of its bytes, not its path: renaming or copying a file reuses its features,
and editing it (same path, new bytes) computes new ones. Every shard is written whole under a unique name
(temp file + rename), so two runs extracting at once never corrupt each other: each adds its own shards, and
a reader merges whatever complete shards it finds. Many small shards are merged into one now and then; the
merged shard is in place before the shards it replaces are removed, so readers never lose rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError

from headstart.errors import ParameterError
from headstart.storage import (
    atomic_save_tensors,
    atomic_write_json,
    load_tensors,
    load_tensors_and_metadata,
    read_json,
)

__all__ = [
    "FeatureKey",
    "FeatureStore",
    "default_cache_dir",
    "file_digest",
    "weights_digest",
]

DIGEST_BYTES = 16
STORE_FORMAT = 1
# Merge shards once a key has more than this many (each run of a growing folder adds one).
MAX_SHARDS = 16


def default_cache_dir() -> Path:
    """``$HEADSTART_CACHE`` if set, else ``~/.cache/headstart`` (``$XDG_CACHE_HOME`` respected)."""
    explicit = os.environ.get("HEADSTART_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "headstart"


def file_digest(path: str | os.PathLike[str]) -> bytes:
    """BLAKE2b digest (16 bytes) of a file's bytes.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.bin"; _ = p.write_bytes(b"abc")
    >>> file_digest(p).hex()
    'cf4ab791c62b8d2b2109c90275287816'
    """
    digest = hashlib.blake2b(digest_size=DIGEST_BYTES)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.digest()


def weights_digest(model: torch.nn.Module) -> str:
    """Digest of a backbone's parameters and buffers (names, shapes, dtypes, values), in hex.

    Two models with the same architecture and the same backbone weights get the same digest, whichever file or
    package the weights came from. A timm model's classifier is left out: pooled features do not depend on it.
    """
    digest = hashlib.blake2b(digest_size=DIGEST_BYTES)
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    skip = {id(t) for t in classifier.state_dict(keep_vars=True).values()} if isinstance(classifier, torch.nn.Module) else set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in skip:
            continue
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class FeatureKey:
    """What a set of cached features is: the same key means interchangeable features.

    Args:
        architecture: the timm architecture (``tf_efficientnet_lite0``).
        weights: :func:`weights_digest` of the backbone.
        preprocessing: the backbone's preprocessing as a dict (input size, mean, std, crop, interpolation).
        view: ``center``, ``mirror`` or ``augment-<k>`` (the k-th seeded random augmentation of each file).
    """

    architecture: str
    weights: str
    preprocessing: dict[str, Any]
    view: str = "center"

    def to_dict(self) -> dict[str, Any]:
        return {"format": STORE_FORMAT, **asdict(self)}

    def digest(self) -> str:
        text = json.dumps(self.to_dict(), sort_keys=True, default=list)
        return hashlib.blake2b(text.encode(), digest_size=DIGEST_BYTES).hexdigest()


class FeatureStore:
    """Features of files under a :class:`FeatureKey`, on disk, safe for concurrent writers.

    Args:
        root: the cache root; default :func:`default_cache_dir`.

    >>> import tempfile
    >>> store = FeatureStore(tempfile.mkdtemp())
    >>> key = FeatureKey("arch", "w0", {"input_size": 8})
    >>> store.add(key, [b"a" * 16, b"b" * 16], np.eye(2, 3, dtype=np.float32))
    >>> found = store.lookup(key, [b"b" * 16, b"c" * 16])
    >>> sorted(found), found[b"b" * 16].tolist()
    ([b'bbbbbbbbbbbbbbbb'], [0.0, 1.0, 0.0])
    """

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()

    @classmethod
    def open(cls, cache_dir: str | os.PathLike[str] | None) -> FeatureStore | None:
        """The store a ``cache_dir`` parameter names: None for ``"off"`` (no caching), else the folder (None: the
        default, :func:`default_cache_dir`).

        >>> FeatureStore.open("off") is None, FeatureStore.open("/tmp/x").root.name
        (True, 'x')
        """
        return None if str(cache_dir) == "off" else cls(cache_dir)

    @property
    def features_dir(self) -> Path:
        return self.root / "features"

    def _key_dir(self, key: FeatureKey) -> Path:
        return self.features_dir / key.digest()

    def _shards(self, directory: Path) -> list[Path]:
        return sorted(directory.glob("shard-*.safetensors"))

    def _read(self, directory: Path) -> dict[bytes, np.ndarray]:
        rows: dict[bytes, np.ndarray] = {}
        for _attempt in range(5):
            try:
                for shard in self._shards(directory):
                    tensors = load_tensors(shard)
                    digests = tensors["digests"].numpy()
                    features = tensors["features"].numpy()
                    for digest, row in zip(digests, features):
                        rows[digest.tobytes()] = row
                return rows
            except FileNotFoundError:  # a concurrent merge removed a shard after it was listed: list again
                rows.clear()
                time.sleep(0.05)
        return rows

    def lookup(self, key: FeatureKey, digests: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        """The cached feature rows among ``digests`` (missing ones are simply absent)."""
        directory = self._key_dir(key)
        if not directory.is_dir():
            return {}
        wanted = set(digests)
        return {d: row for d, row in self._read(directory).items() if d in wanted}

    def add(self, key: FeatureKey, digests: Sequence[bytes], features: np.ndarray) -> None:
        """Store rows of ``features`` (n, dim) for the files with content ``digests`` (n,) as one new shard.

        Raises:
            ParameterError: ``digests`` and ``features`` differ in length, or a digest has the wrong size.
        """
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or len(digests) != len(features):
            raise ParameterError(
                f"FeatureStore.add needs one feature row per digest; got {len(digests)} digests and features of"
                f" shape {features.shape}.", fix="Pass features of shape (len(digests), dim).")
        if any(len(d) != DIGEST_BYTES for d in digests):
            raise ParameterError(f"FeatureStore.add: every digest must have {DIGEST_BYTES} bytes (file_digest).",
                                 fix="Compute digests with headstart.features.file_digest.")
        if not len(digests):
            return
        directory = self._key_dir(key)
        directory.mkdir(parents=True, exist_ok=True)
        if not (directory / "key.json").exists():
            atomic_write_json(directory / "key.json", key.to_dict())
        digest_array = np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(len(digests), DIGEST_BYTES)
        name = f"shard-{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.safetensors"
        atomic_save_tensors(directory / name, {"digests": torch.from_numpy(digest_array.copy()),
                                               "features": torch.from_numpy(features)})
        if len(self._shards(directory)) > MAX_SHARDS:
            self._merge(directory)

    def _merge(self, directory: Path) -> None:
        shards = self._shards(directory)
        rows: dict[bytes, np.ndarray] = {}
        for shard in shards:
            try:
                tensors = load_tensors(shard)
            except FileNotFoundError:  # another process is merging the same shards
                return
            for digest, row in zip(tensors["digests"].numpy(), tensors["features"].numpy()):
                rows[digest.tobytes()] = row
        digests = list(rows)
        merged = f"shard-{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}-merged.safetensors"
        atomic_save_tensors(directory / merged, {
            "digests": torch.from_numpy(np.frombuffer(b"".join(digests), dtype=np.uint8)
                                        .reshape(len(digests), DIGEST_BYTES).copy()),
            "features": torch.from_numpy(np.stack([rows[d] for d in digests]).astype(np.float32)),
        })
        for shard in shards:
            shard.unlink(missing_ok=True)

    @property
    def heads_dir(self) -> Path:
        return self.root / "heads"

    def lookup_head(self, digest: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """A solved head stored under ``digest`` (its tensors and metadata), or None. An unreadable entry (a
        format change, a truncated disk) counts as absent: the head is solved again and the entry replaced."""
        path = self.heads_dir / f"{digest}.safetensors"
        if not path.is_file():
            return None
        try:
            tensors, strings = load_tensors_and_metadata(path)
            metadata = json.loads(strings.get("headstart", "null"))
        except (OSError, ValueError, RuntimeError, SafetensorError):
            return None
        return (tensors, metadata) if isinstance(metadata, dict) else None

    def add_head(self, digest: str, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
        """Store a solved head under ``digest`` (atomically; a concurrent writer of the same solve writes the
        same bytes)."""
        self.heads_dir.mkdir(parents=True, exist_ok=True)
        atomic_save_tensors(self.heads_dir / f"{digest}.safetensors", tensors,
                            metadata={"headstart": json.dumps(metadata)})

    def info(self) -> list[dict[str, Any]]:
        """One entry per cached key: what it is, how many files, how many bytes on disk."""
        entries = []
        if not self.features_dir.is_dir():
            return entries
        for directory in sorted(p for p in self.features_dir.iterdir() if p.is_dir()):
            key_file = directory / "key.json"
            try:
                key = read_json(key_file)
            except (FileNotFoundError, json.JSONDecodeError):
                key = {}
            rows = self._read(directory)
            size = sum(p.stat().st_size for p in directory.iterdir() if p.is_file())
            dim = len(next(iter(rows.values()))) if rows else 0
            entries.append({"key": directory.name, "architecture": key.get("architecture", "?"),
                            "weights": key.get("weights", "?"),
                            "input_size": key.get("preprocessing", {}).get("input_size"),
                            "view": key.get("view", "?"), "files": len(rows), "dim": dim, "bytes": size})
        return entries

    def clear(self, *, architecture: str | None = None) -> int:
        """Remove cached features (all, or those of one ``architecture``); returns how many keys were removed."""
        removed = 0
        for entry in self.info():
            if architecture is None or entry["architecture"] == architecture:
                shutil.rmtree(self.features_dir / entry["key"], ignore_errors=True)
                removed += 1
        if architecture is None:
            shutil.rmtree(self.root / "runtimes", ignore_errors=True)
            shutil.rmtree(self.heads_dir, ignore_errors=True)
        return removed

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in _walk(self.root)) if self.root.is_dir() else 0


def _walk(root: Path) -> Iterable[Path]:
    for path in root.rglob("*"):
        if path.is_file():
            yield path
