"""A torch module as an ONNX graph: export it, run it under ONNX Runtime, and measure how far it is from torch.

Three places turn a model into ONNX: the feature runtimes (a frozen backbone), the classification export (a whole
bundle) and the segmentation / detection export. They differ in what the graph computes and how close it must
stay to torch, not in how the file is written or run, so that part lives here once:

- :func:`export_onnx_graph` - ``torch.onnx.export`` with headstart's settings (the TorchScript-based exporter,
  opset :data:`ONNX_OPSET`, named dynamic axes), written atomically so a cache never holds half a file;
- :func:`create_session` - an ONNX Runtime CPU session with headstart's thread settings, and
  :meth:`OnnxSession.run` on named numpy arrays;
- :func:`measure_parity` - max |difference| and top-1 (argmax over axis 1) agreement against torch's outputs.

Each caller keeps its own threshold and its own error message. Only errors, storage, torch, onnx and onnxruntime
are imported (the last two when used), so ``features/`` and ``deploy/`` can both build on it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from headstart.storage import atomic_replace, temporary_sibling

__all__ = ["ONNX_OPSET", "OnnxSession", "Parity", "export_onnx_graph", "create_session", "inference_threads",
           "measure_parity"]

ONNX_OPSET = 17


def export_onnx_graph(module: nn.Module, path: str | os.PathLike[str], example: tuple[Any, ...], *,
                      input_names: Sequence[str], output_names: Sequence[str],
                      dynamic_axes: Mapping[str, Mapping[int, str]]) -> Path:
    """Write ``module`` (traced on ``example``) to ``path`` as ONNX, replacing any file there atomically.

    Args:
        module: the torch module; exported as it is (put it in ``eval()`` mode first).
        path: the ``.onnx`` file to write (its folder is created).
        example: the positional arguments one forward call takes (tensors, or lists of them).
        input_names, output_names: the graph's input and output names, in the module's order.
        dynamic_axes: for each named input / output, the axes whose size varies, by name (``{0: "batch"}``).

    Returns:
        ``path``.

    Raises:
        whatever the exporter raises for a module it cannot trace; callers decide whether that is fatal.

    The TorchScript-based exporter (``dynamo=False``) is the one every headstart export has been checked with;
    its deprecation and tracer warnings say nothing a user can act on, so they are hidden.
    """
    path = Path(path)
    temporary = temporary_sibling(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
            torch.onnx.export(module, example, str(temporary), dynamo=False, input_names=list(input_names),
                              output_names=list(output_names), opset_version=ONNX_OPSET,
                              dynamic_axes={name: dict(axes) for name, axes in dynamic_axes.items()})
        atomic_replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def inference_threads(threads: int | None = None) -> int:
    """Threads for one forward pass: ``threads`` when given, else torch's setting (the cores, or ``--threads``).

    >>> inference_threads(3)
    3
    """
    return threads or max(1, torch.get_num_threads())


@dataclass(frozen=True)
class OnnxSession:
    """An ONNX Runtime session on one graph file, and the input names it reads (made by :func:`create_session`)."""

    path: Path
    session: Any  # onnxruntime.InferenceSession; onnxruntime is imported only when a session is created
    input_names: tuple[str, ...]

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """All graph outputs, in order, for named arrays. Only the names the graph reads are fed, so callers can pass
        every array they prepared (an exporter may drop an input the graph never uses)."""
        return self.session.run(None, {name: inputs[name] for name in self.input_names})


def create_session(path: str | os.PathLike[str], *, threads: int | None = None, spinning: bool = True) -> OnnxSession:
    """An ONNX Runtime CPU session on ``path`` with headstart's settings.

    Args:
        path: an ``.onnx`` file.
        threads: intra-op threads (default :func:`inference_threads`: torch's setting). Inter-op parallelism stays
            at one thread: headstart's graphs are one chain of operators.
        spinning: ``False`` stops idle pool threads from spinning for work, which otherwise burns the cores a
            service needs to decode uploads between forward passes.

    Raises:
        ImportError: onnxruntime is not installed; onnxruntime's own errors for a file it cannot load.
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = inference_threads(threads)
    options.inter_op_num_threads = 1
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: its warnings are for a graph's author, not a user
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return OnnxSession(Path(path), session, tuple(i.name for i in session.get_inputs()))


@dataclass(frozen=True)
class Parity:
    """How closely one model's outputs follow another's over the same inputs (see :func:`measure_parity`).

    ``top1_agreement`` is the share of positions whose argmax over axis 1 (the class axis) is the same: one per
    row for (n, classes) probabilities, one per pixel for (n, classes, h, w) maps.
    """

    n_inputs: int
    max_abs_diff: float
    top1_agreement: float
    top1_identical: bool

    def to_dict(self) -> dict[str, Any]:
        return {"n_inputs": self.n_inputs, "max_abs_diff": self.max_abs_diff, "top1_agreement": self.top1_agreement,
                "top1_identical": self.top1_identical}


def measure_parity(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> Parity:
    """Max |got - expected| and argmax agreement over (expected, got) output pairs, batch by batch.

    Batches may differ in every size but the class axis (1); both sides are compared as float32.

    >>> p = measure_parity([(np.array([[0.9, 0.1], [0.4, 0.6]]), np.array([[0.8, 0.2], [0.4, 0.6]]))])
    >>> (p.n_inputs, round(p.max_abs_diff, 4), p.top1_agreement, p.top1_identical)
    (2, 0.1, 1.0, True)

    Raises:
        ValueError: no pairs, or a pair whose shapes differ.
    """
    n_inputs, worst, agreeing, compared = 0, 0.0, 0, 0
    for expected, got in pairs:
        expected, got = np.asarray(expected, dtype=np.float32), np.asarray(got, dtype=np.float32)
        if expected.shape != got.shape:
            raise ValueError(f"Outputs of shape {got.shape} cannot be compared with {expected.shape}.")
        n_inputs += len(expected)
        worst = float(np.maximum(worst, np.abs(expected - got).max()))  # NaN stays NaN, and fails any threshold
        same = expected.argmax(1) == got.argmax(1)
        agreeing, compared = agreeing + int(same.sum()), compared + int(same.size)
    if compared == 0:
        raise ValueError("measure_parity needs at least one pair of non-empty outputs.")
    return Parity(n_inputs, worst, agreeing / compared, agreeing == compared)
