"""Frozen forward passes through the fastest CPU inference runtime available, checked against torch.

A frozen backbone only ever runs forward, so it need not run in torch: exported once to ONNX (cached beside
the features), it runs 2-4x faster under ONNX Runtime or OpenVINO on a CPU. Speed is worth nothing if the
features change, so every engine is checked on the user's own first batch of images against torch: the
cosine similarity of every feature row must be >= :data:`PARITY_MIN_COSINE`, otherwise headstart warns and
uses torch.

Runtimes, in the order ``runtime="auto"`` tries them: ``openvino`` (when installed), ``onnxruntime``,
``torch`` (eager, channels_last). Exporting and the ONNX Runtime session come from :mod:`headstart.models.onnx`
(shared with ``headstart export``); what is OpenVINO's, and the cosine check, is here.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from headstart.errors import ParameterError, check_choice
from headstart.models.onnx import create_session, export_onnx_graph, inference_threads

__all__ = [
    "RUNTIMES",
    "PARITY_MIN_COSINE",
    "FeatureEngine",
    "PooledFeatures",
    "create_engine",
    "export_onnx",
    "available_runtimes",
    "row_cosine",
]

RUNTIMES = ("auto", "openvino", "onnxruntime", "torch")
PARITY_MIN_COSINE = 0.9999


class PooledFeatures(nn.Module):
    """A timm model's pooled, pre-logits features (what a new head sees) from uint8 pixels (n, 3, h, w).

    Normalisation ((pixels / 255 - mean) / std) is part of the module, so it is part of the exported graph.
    """

    def __init__(self, model: nn.Module, *, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("scale", (1.0 / (255.0 * torch.tensor(std))).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", (torch.tensor(mean) / torch.tensor(std)).view(1, 3, 1, 1), persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        images = pixels.float() * self.scale - self.shift
        if not torch.onnx.is_in_onnx_export():
            images = images.contiguous(memory_format=torch.channels_last)  # torch's fast CPU convolutions
        return self.model.forward_head(self.model.forward_features(images), pre_logits=True)


@dataclass
class FeatureEngine:
    """A callable from a uint8 pixel batch (n, 3, h, w) to features (n, dim), and what runs it.

    ``parity`` is the smallest cosine similarity to torch seen on real images (1.0 for torch itself).
    """

    name: str
    run: Callable[[np.ndarray], np.ndarray]
    parity: float = 1.0

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        if pixels.dtype != np.uint8:  # a float batch cast to uint8 would be garbage features, silently
            raise ParameterError(
                f"A feature engine takes uint8 pixels (n, 3, h, w); got dtype {pixels.dtype}.",
                fix="Build the transform with build_transform(..., as_uint8=True); engines normalise themselves.")
        return self.run(np.ascontiguousarray(pixels))


def available_runtimes() -> list[str]:
    """The runtimes importable in this environment, fastest first."""
    import importlib.util

    found = [name for name in ("openvino", "onnxruntime") if importlib.util.find_spec(name) is not None]
    return [*found, "torch"]


def row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows of two (n, d) arrays.

    >>> float(row_cosine(np.array([[1.0, 0.0]]), np.array([[2.0, 0.0]]))[0])
    1.0
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(norms, 1e-30)


def _torch_engine(module: nn.Module) -> FeatureEngine:
    module = module.eval().to(memory_format=torch.channels_last)

    def run(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            batch = torch.from_numpy(images).contiguous(memory_format=torch.channels_last)  # uint8
            return module(batch).float().numpy()

    return FeatureEngine("torch", run)


def export_onnx(module: nn.Module, path: Path, *, image_size: int) -> Path:
    """Export ``module`` (uint8 images -> features) to ONNX with a dynamic batch axis, atomically."""
    example = (torch.zeros(2, 3, image_size, image_size, dtype=torch.uint8),)
    return export_onnx_graph(module.eval(), path, example, input_names=["images"], output_names=["features"],
                             dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}})


def _onnxruntime_engine(onnx_path: Path) -> FeatureEngine:
    session = create_session(onnx_path)

    def run(images: np.ndarray) -> np.ndarray:
        return session.run({"images": images})[0]

    return FeatureEngine("onnxruntime", run)


def _openvino_engine(onnx_path: Path) -> FeatureEngine:
    import openvino

    core = openvino.Core()
    core.set_property({"CACHE_DIR": str(onnx_path.parent / "openvino")})  # compiled blobs reused across runs
    # LATENCY runs one request on all threads: measured faster than THROUGHPUT for one synchronous caller.
    compiled = core.compile_model(str(onnx_path), "CPU", {"PERFORMANCE_HINT": "LATENCY",
                                                          "INFERENCE_NUM_THREADS": inference_threads(),
                                                          "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()

    def run(images: np.ndarray) -> np.ndarray:
        return np.array(request.infer({0: images})[compiled.output(0)], copy=True)

    return FeatureEngine("openvino", run)


def create_engine(
    model: nn.Module,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    runtime: str = "auto",
    image_size: int,
    export_dir: Path | None,
    parity_images: np.ndarray | None,
    warn: Callable[[str], None] | None = None,
) -> FeatureEngine:
    """The engine for a frozen ``model``'s pooled features, checked against torch on ``parity_images``.

    Args:
        model: a timm model (its classifier is ignored; pooled pre-logits features are computed).
        mean, std: the backbone's normalisation (applied inside the engine to uint8 pixels).
        runtime: one of :data:`RUNTIMES`; ``auto`` takes the first available of openvino, onnxruntime, torch.
        image_size: the square input side (the ONNX graph is exported for it).
        export_dir: folder for the exported ONNX model (reused when present); ``None`` means torch only.
        parity_images: a real batch of uint8 pixels; a runtime whose features differ from torch's (any row's cosine
            similarity < :data:`PARITY_MIN_COSINE`) is not used. ``None`` skips the check (tests only).
        warn: called with a message when a runtime is unavailable, fails, or misses parity (default:
            :func:`warnings.warn`).

    Raises:
        ParameterError: unknown ``runtime``.
    """
    check_choice("extract_features", "runtime", runtime, RUNTIMES)
    warn = warn or (lambda message: warnings.warn(message, RuntimeWarning, stacklevel=3))
    module = PooledFeatures(model, mean=mean, std=std).eval()
    torch_engine = _torch_engine(module)
    if runtime == "torch" or export_dir is None:
        return torch_engine
    candidates = [name for name in available_runtimes() if name != "torch"] if runtime == "auto" else [runtime]
    if runtime != "auto" and runtime not in available_runtimes():
        warn(f"The runtime {runtime!r} is not installed; using torch. Fix: pip install {runtime}.")
        return torch_engine
    reference = torch_engine(parity_images) if parity_images is not None else None
    onnx_path = export_dir / "backbone.onnx"
    for name in candidates:
        try:
            if not onnx_path.is_file():
                export_onnx(module, onnx_path, image_size=image_size)
            engine = (_openvino_engine if name == "openvino" else _onnxruntime_engine)(onnx_path)
            if reference is not None:
                engine.parity = float(row_cosine(engine(parity_images), reference).min())
                if not engine.parity >= PARITY_MIN_COSINE:  # also catches nan
                    warn(f"{name} features differ from torch's on real images (min cosine similarity"
                         f" {engine.parity:.6f} < {PARITY_MIN_COSINE}); not using {name}.")
                    continue
            return engine
        except Exception as error:  # noqa: BLE001 - any runtime failure must fall back to torch, with a reason
            warn(f"{name} could not run this backbone ({type(error).__name__}: {str(error)[:200]}); "
                 "falling back.")
    return torch_engine
