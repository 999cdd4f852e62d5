"""Export a bundle to ONNX or TorchScript, checked numerically against torch on real inputs.

``export_bundle`` writes a standalone folder: the model file (``model.onnx`` or ``model.pt``), a JSON sidecar
(``headstart-export.json``: labels, inputs, preprocessing, parity figures) and, for text and audio models, the
tokenizer / feature-extractor files. The graph takes the arrays :class:`headstart.deploy.predictor.Predictor` prepares
(uint8 pixels, token ids, waveforms) and returns class probabilities, normalisation and temperature included.

Every export runs a parity check: on real inputs (the bundle's validation split, or ``data``) the exported model's
probabilities must match torch's within :data:`PARITY_MAX_ABS_DIFF` with identical top-1, else the export fails
with the measured difference and nothing is written. ``quantize=True`` (ONNX) adds a dynamically quantised
int8 copy, reporting its accuracy change on the validation inputs and its speed against the float model.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from headstart.bundle import ENCODER_DIR, library_versions
from headstart.deploy.predictor import (
    OnnxBackend,
    Predictor,
    TorchBackend,
    as_tensors,
    load_predictor,
)
from headstart.errors import DataError, ExportError, HeadstartError, check_choice
from headstart.models.onnx import ONNX_OPSET, export_onnx_graph, measure_parity
from headstart.storage import (
    atomic_directory,
    atomic_write_json,
    check_replaceable,
    read_json,
    written_before_markers,
)
from headstart.tasks import DENSE_TASKS

__all__ = ["FORMATS", "PARITY_MAX_ABS_DIFF", "SIDECAR_FILE", "export_bundle", "reference_items", "parity_report",
           "export_onnx_file"]

FORMATS = ("onnx", "torchscript")
PARITY_MAX_ABS_DIFF = 1e-4
SIDECAR_FILE = "headstart-export.json"
MODEL_FILES = {"onnx": "model.onnx", "torchscript": "model.pt"}
QUANTIZED_FILE = "model.int8.onnx"
EXPORT_ENTRIES = frozenset({*MODEL_FILES.values(), QUANTIZED_FILE, SIDECAR_FILE, "preprocessor"})


def is_export_folder(folder: Path) -> bool:
    """An export folder written before folders carried their owner file: a headstart sidecar and only export files."""
    return written_before_markers(folder, identity_file=SIDECAR_FILE, format_name="headstart-export",
                                  entries=EXPORT_ENTRIES)


TRANSFORMER_QUANTIZE_OPS = ("MatMul", "Gemm")


def reference_items(predictor: Predictor, data: str | os.PathLike[str] | None = None, *, limit: int | None = None,
                    unlabelled_limit: int | None = None) -> tuple[list[bytes | str], np.ndarray | None, str]:
    """Real raw inputs for checks: from ``data`` (labelled like ``evaluate`` takes, or unlabelled files / a
    text file), else the validation split recorded in the bundle.

    Returns:
        The raw items (file bytes or texts), their labels (``None`` when unlabelled) and where they came from.

    Raises:
        ExportError: no usable real inputs.
    """
    if data is None:
        reference = predictor.bundle.validation
        if not reference or not reference.get("inputs"):
            raise ExportError(
                f"{predictor.bundle.path} records no validation inputs, and the parity check needs real inputs.",
                fix="Pass --data PATH (labelled data like `evaluate` takes, or a folder of inputs).")
        inputs, labels = list(reference["inputs"]), np.asarray(reference["labels"], dtype=np.int64)
        if reference.get("kind") == "files":
            present = [i for i, p in enumerate(inputs) if Path(p).is_file()]
            if not present:
                raise ExportError(f"The validation files recorded in {predictor.bundle.path} no longer exist"
                                  f" (first: {inputs[0]}).", fix="Pass --data PATH with real inputs.")
            inputs, labels = [inputs[i] for i in present], labels[present]
        source = f"the bundle's validation split ({len(inputs)} inputs)"
    else:
        inputs, labels = _read_data(predictor, data)
        if labels is None and unlabelled_limit is not None:
            inputs = inputs[:unlabelled_limit]  # unlabelled inputs serve the parity check only
        source = f"{data} ({len(inputs)} inputs{'' if labels is not None else ', unlabelled'})"
    if limit is not None:
        inputs = inputs[:limit]
        labels = None if labels is None else labels[:limit]
    try:
        return predictor.read_inputs(inputs), labels, source
    except OSError as error:
        raise ExportError(f"Cannot read a reference input: {error}.",
                          fix="Check the files' permissions, or pass --data PATH with readable inputs.") from None


def _read_data(predictor: Predictor, data: str | os.PathLike[str]) -> tuple[list[Any], np.ndarray | None]:
    path = Path(data).expanduser()
    if not path.exists():
        raise ExportError(f"--data {path} does not exist.", fix="Pass an existing folder or file of real inputs.")
    classes = predictor.classes
    try:
        if predictor.task == "image":
            from headstart.data.images import scan_image_folder

            samples, _ = scan_image_folder(path, classes=classes, role="evaluation", require_all_classes=False)
            if len(samples):
                return list(samples.paths), np.asarray(samples.labels)
        elif predictor.task == "text":
            from headstart.data.text import read_labelled_texts

            texts, _, _ = read_labelled_texts(path, classes=classes)
            return list(texts.texts), np.asarray(texts.labels)
        else:
            from headstart.data.audio import read_labelled_audio

            audio, _, _ = read_labelled_audio(path, classes=classes)
            return list(audio.paths), np.asarray(audio.labels)
    except DataError:
        pass  # not labelled data: fall back to unlabelled inputs below
    if predictor.task == "text":
        from headstart.data.text import read_text_lines

        return read_text_lines(path), None
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise ExportError(f"--data {path} holds no files.", fix="Pass a folder of real inputs.")
    return files, None


def _decode_all(predictor: Predictor, items: Sequence[bytes | str]) -> tuple[list[Any], list[int]]:
    decoded, kept = [], []
    for index, item in enumerate(items):
        try:
            decoded.append(predictor.decode(item, name=f"input {index}"))
            kept.append(index)
        except HeadstartError:
            continue  # an unreadable file among the references is not the exporter's concern
    return decoded, kept


def _batches(predictor: Predictor, decoded: list[Any], batch_size: int) -> list[dict[str, np.ndarray]]:
    return [predictor.collate(decoded[i:i + batch_size]) for i in range(0, len(decoded), batch_size)]


def parity_report(reference: Callable[[dict[str, np.ndarray]], np.ndarray],
                  candidate: Callable[[dict[str, np.ndarray]], np.ndarray],
                  batches: Sequence[dict[str, np.ndarray]]) -> dict[str, Any]:
    """Max |p_candidate - p_reference| and top-1 agreement over ``batches`` of prepared inputs
    (:func:`headstart.models.onnx.measure_parity` on each batch's outputs)."""
    return measure_parity((reference(b), candidate(b)) for b in batches).to_dict()


def _dynamic_axes(predictor: Predictor, output: str) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {output: {0: "batch"}}
    for spec in predictor.inputs:
        axes[spec.name] = {i: str(d) for i, d in enumerate(spec.shape) if isinstance(d, str)}
    return axes


def export_onnx_file(predictor: Predictor, path: Path, example: dict[str, np.ndarray]) -> Path:
    """Write the predictor's graph (inputs -> probabilities) to ``path`` as ONNX with dynamic batch axes."""
    output = "features" if predictor.head is not None else "probabilities"
    export_onnx_graph(predictor.module, path, as_tensors(example), input_names=predictor.input_names,
                      output_names=[output], dynamic_axes=_dynamic_axes(predictor, output))
    if predictor.head is not None:
        _append_sklearn_head(path, predictor.head, temperature=predictor.module.temperature)
    return path


def _append_sklearn_head(path: Path, head: Any, *, temperature: float) -> None:
    """Graft the scikit-learn head (converted by skl2onnx) onto the exported feature graph, then temperature."""
    import onnx
    from onnx import compose, helper
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    if type(head).__name__ == "CalibratedClassifierCV":
        # measured: skl2onnx 1.20 turns Platt-calibrated binary SVCs into flipped probabilities and refuses LinearSVC
        raise ExportError("This bundle's head is a Platt-calibrated SVM, which has no faithful ONNX conversion"
                          " (skl2onnx gives wrong probabilities for it).",
                          fix="Serve the bundle with the torch backend, or train with --head linear, logistic,"
                              " random_forest or knn to export it.")
    body = onnx.load(str(path))
    dim = body.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    try:
        head_model = convert_sklearn(head, initial_types=[("head_features", FloatTensorType([None, dim]))],
                                     options={type(head): {"zipmap": False}},
                                     target_opset={"": ONNX_OPSET, "ai.onnx.ml": 3})
    except Exception as error:  # noqa: BLE001 - skl2onnx raises many types for unsupported estimators
        raise ExportError(f"The scikit-learn head ({type(head).__name__}) cannot be converted to ONNX:"
                          f" {str(error).splitlines()[0][:300]}",
                          fix="Train with --head linear (exports everywhere), or serve the bundle with the torch"
                              " backend.") from None
    head_model.ir_version = body.ir_version
    head_model = compose.add_prefix(head_model, "hs_")  # its output "probabilities" is the name the graph ends on
    probability_output = [o.name for o in head_model.graph.output if "prob" in o.name][0]
    merged = compose.merge_models(body, head_model, io_map=[("features", "hs_head_features")],
                                  outputs=[probability_output])
    graph = merged.graph
    graph.node.extend([
        helper.make_node("Clip", [probability_output, "hs_eps"], ["hs_clipped"]),
        helper.make_node("Log", ["hs_clipped"], ["hs_log"]),
        helper.make_node("Mul", ["hs_log", "hs_inverse_temperature"], ["hs_scaled"]),
        helper.make_node("Softmax", ["hs_scaled"], ["probabilities"], axis=1),
    ])
    graph.initializer.extend([helper.make_tensor("hs_eps", onnx.TensorProto.FLOAT, [], [1e-12]),
                              helper.make_tensor("hs_inverse_temperature", onnx.TensorProto.FLOAT, [],
                                                 [1.0 / temperature])])
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("probabilities", onnx.TensorProto.FLOAT, ["batch", None]))
    onnx.checker.check_model(merged)
    onnx.save(merged, str(path))


def _export_torchscript(predictor: Predictor, path: Path, example: dict[str, np.ndarray]) -> Path:
    if predictor.head is not None:
        raise ExportError("This bundle's head is a scikit-learn model, which TorchScript cannot hold.",
                          fix="Export it with --format onnx (the head is converted into the graph).")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(predictor.module, as_tensors(example), check_trace=False, strict=False)
    traced.save(str(path))
    return path


def _torchscript_runner(path: Path, names: list[str]) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load's deprecation note
        loaded = torch.jit.load(str(path)).eval()

    def run(arrays: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            return loaded(*as_tensors({n: arrays[n] for n in names})).numpy()

    return run


def _throughput(run: Callable[[dict[str, np.ndarray]], np.ndarray], batch: dict[str, np.ndarray],
                single: dict[str, np.ndarray], *, seconds: float = 2.0) -> dict[str, float]:
    """Items per second on ``batch`` and median milliseconds for ``single`` (one item), after a warm-up."""
    run(batch), run(single)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or n == 0:
        run(batch)
        n += 1
    batch_rate = n * len(next(iter(batch.values()))) / (time.perf_counter() - start)
    timings = []
    for _ in range(15):
        tick = time.perf_counter()
        run(single)
        timings.append(time.perf_counter() - tick)
    return {"items_per_second": round(batch_rate, 2), "single_ms": round(1000 * float(np.median(timings)), 3)}


def _accuracy(run: Callable[[dict[str, np.ndarray]], np.ndarray], batches: list[dict[str, np.ndarray]],
              labels: np.ndarray) -> float:
    predicted = np.concatenate([np.asarray(run(b)).argmax(1) for b in batches])
    return float((predicted == labels).mean())


def _quantize(float_model: OnnxBackend, folder: Path, batches: list[dict[str, np.ndarray]], labels: np.ndarray | None,
              parity_batches: list[dict[str, np.ndarray]], *, ops: Sequence[str] | None) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source, target = folder / MODEL_FILES["onnx"], folder / QUANTIZED_FILE
    nodes = onnx.load(str(source), load_external_data=False).graph.node
    if ops is None:
        # measured: transformers gain from int8 MatMul (MiniLM 1.7x); quantising more of them changed little. A CNN
        # has almost nothing but Conv, so its ops are all quantised (4x smaller file), and the report says how slow.
        ops = () if any(node.op_type == "Conv" for node in nodes) else TRANSFORMER_QUANTIZE_OPS
    # the log-mel front end (a DFT as a convolution) stays in float: int8 spectra wrecked a FSDD model (0.84 -> 0.29)
    excluded = [node.name for node in nodes if "/frontend/" in node.name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)  # the quantiser logs shape-inference notes on the root logger
        try:
            quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8,
                             op_types_to_quantize=list(ops) or None, nodes_to_exclude=excluded)
        finally:
            logging.disable(logging.NOTSET)
    int8_model = OnnxBackend(target)
    report: dict[str, Any] = {"file": QUANTIZED_FILE, "method": "onnxruntime quantize_dynamic, int8 weights",
                              "ops": list(ops) or "all supported", "excluded_nodes": len(excluded),
                              "agreement_with_float": parity_report(float_model, int8_model, parity_batches)}
    if labels is not None:
        float_accuracy, int8_accuracy = _accuracy(float_model, batches, labels), _accuracy(int8_model, batches, labels)
        report.update({"n_validation": int(len(labels)), "float_accuracy": round(float_accuracy, 4),
                       "int8_accuracy": round(int8_accuracy, 4),
                       "accuracy_change": round(int8_accuracy - float_accuracy, 4)})
    else:
        report["accuracy_change"] = None
        report["note"] = "the reference inputs have no labels: accuracy change not measured (pass labelled --data)"
    batch, single = parity_batches[0], {k: v[:1] for k, v in parity_batches[0].items()}
    float_speed, int8_speed = _throughput(float_model, batch, single), _throughput(int8_model, batch, single)
    report.update({"float_speed": float_speed, "int8_speed": int8_speed,
                   "batch_speedup": round(int8_speed["items_per_second"] / float_speed["items_per_second"], 3),
                   "single_speedup": round(float_speed["single_ms"] / int8_speed["single_ms"], 3),
                   "size_mb": {"float": round(source.stat().st_size / 2**20, 2),
                               "int8": round(target.stat().st_size / 2**20, 2)}})
    return report


def _preprocessing(predictor: Predictor) -> dict[str, Any]:
    config = predictor.config
    if predictor.task == "image":
        prep = predictor.bundle.preprocessing
        return {"input": "RGB pixels, uint8, (batch, 3, height, width), channels first",
                "resize_shorter_side_to": int(round(prep.input_size / prep.crop_pct)),
                "jpeg_draft": "img.draft(img.mode, (resize_shorter_side_to,) * 2) right after opening: JPEGs at least"
                              " twice that size decode at 1/2-1/8 scale, as in training",
                "center_crop": prep.input_size, "interpolation": prep.interpolation,
                "normalisation": {"mean": list(prep.mean), "std": list(prep.std), "inside_graph": True}}
    if predictor.task == "text":
        encoder = predictor.module.model.encoder
        return {"input": "token ids and attention mask, int64, (batch, tokens)", "tokenizer": "preprocessor/",
                "max_length": encoder.max_length, "padding": "to the batch's longest text", "truncation": True}
    return {"input": f"{predictor.inputs[0].name}, float32, shape {list(predictor.inputs[0].shape)}",
            "sample_rate": predictor.sample_rate, "clip_samples": predictor.clip_samples, "mono": "channels averaged",
            "length": "centre crop or zero padding to clip_samples", "feature_extractor": (
                "preprocessor/" if config["encoder"]["kind"] == "transformers_audio" else "none: log-mel inside graph")}


def _task_of(bundle: str | os.PathLike[str]) -> str | None:
    config = Path(bundle).expanduser() / "config.json"
    try:
        return read_json(config).get("task") if config.is_file() else None
    except (ValueError, AttributeError):
        return None  # load_bundle reports the damaged folder


def _export_checked(predictor: Predictor, model_path: Path, format: str, parity_batches: list[dict[str, np.ndarray]],
                    *, source: str) -> tuple[Callable[[dict[str, np.ndarray]], np.ndarray], dict[str, Any]]:
    """Write the model file, then hold it against torch on ``parity_batches``.

    Returns:
        The exported model as a runner (arrays -> probabilities) and the parity figures for the sidecar.

    Raises:
        ExportError: the exporter fails (its first line is quoted), or the file does not match torch.
    """
    try:
        if format == "onnx":
            export_onnx_file(predictor, model_path, parity_batches[0])
            exported: Callable[[dict[str, np.ndarray]], np.ndarray] = OnnxBackend(model_path)
        else:
            _export_torchscript(predictor, model_path, parity_batches[0])
            exported = _torchscript_runner(model_path, predictor.input_names)
    except HeadstartError:
        raise
    except Exception as error:  # noqa: BLE001 - exporters fail in many ways; the user needs the first line
        raise ExportError(f"Exporting {predictor.bundle.path} to {format} failed: {type(error).__name__}:"
                          f" {str(error).splitlines()[0][:300] if str(error) else ''}",
                          fix="Try the other --format, or report the model type.") from None
    parity = parity_report(TorchBackend(predictor.module, head=predictor.head), exported, parity_batches)
    parity.update({"max_allowed": PARITY_MAX_ABS_DIFF, "inputs": source})
    if not (parity["max_abs_diff"] <= PARITY_MAX_ABS_DIFF and parity["top1_identical"]):
        raise ExportError(
            f"The {format} model does not match torch on {parity['n_inputs']} real inputs: max |difference| of"
            f" probabilities {parity['max_abs_diff']:.3g} (allowed {PARITY_MAX_ABS_DIFF:g}), top-1 agreement"
            f" {parity['top1_agreement']:.3f}. Nothing was written.",
            fix="Try the other --format; report the model type if both fail.")
    return exported, parity


def export_bundle(bundle: str | os.PathLike[str] | Predictor, out: str | os.PathLike[str], *, format: str = "onnx",
                  data: str | os.PathLike[str] | None = None, quantize: bool = False,
                  quantize_ops: Sequence[str] | None = None, max_parity_items: int = 64, batch_size: int = 16
                  ) -> dict[str, Any]:
    """Export the model folder ``bundle`` to ``out`` and check it against torch.

    Args:
        bundle: a headstart model folder, or one already loaded as a :class:`Predictor` (checked against
            its torch modules whatever its current backend).
        out: the export folder (replaced atomically; nothing is written when the check fails).
        format: ``onnx`` or ``torchscript``.
        data: real inputs for the checks (default: the validation split recorded in the bundle).
        quantize: also write ``model.int8.onnx`` (ONNX only) with its accuracy change and speed-up.
        quantize_ops: the ONNX operator types to quantise; empty means every type ONNX Runtime supports; ``None``
            chooses: MatMul and Gemm for graphs without convolutions (transformers), everything for CNNs. Measured
            here on EfficientNet-Lite0: dynamically quantised Conv (ConvInteger) ran 12x slower than float under
            ONNX Runtime's CPU kernels, for a 4x smaller file; the report gives the figures of each export.
        max_parity_items: how many real inputs the parity check runs.
        batch_size: inputs per batch in the checks (a dynamic batch axis is checked with full and partial batches).

    Returns:
        The sidecar written to ``out/headstart-export.json``.

    Raises:
        ExportError: the export fails, the parity check fails (the message gives the measured difference), or
            no real inputs are available.
        BundleError: ``bundle`` is not a model folder.
    """
    check_choice("export", "format", format, FORMATS)
    # refuse a foreign or source-holding --out now, before minutes of export work (checked again at the swap)
    source = bundle.bundle.path if isinstance(bundle, Predictor) else getattr(bundle, "path", bundle)
    check_replaceable(out, kind="export", legacy=is_export_folder, sources=[source])
    if not isinstance(bundle, Predictor) and _task_of(bundle) in DENSE_TASKS:
        if quantize:
            raise ExportError("int8 quantisation is available for classification exports only.",
                              fix="Export without --quantize.")
        from headstart.deploy.dense_export import export_dense_bundle

        return export_dense_bundle(bundle, out, format=format, data=data)
    if quantize and format != "onnx":
        raise ExportError("int8 quantisation is available for ONNX exports only.", fix="Use --format onnx --quantize.")
    predictor = bundle if isinstance(bundle, Predictor) else load_predictor(bundle)
    # the whole validation split only for the int8 accuracy; the parity check reads max_parity_items inputs
    items, labels, source = reference_items(predictor, data, limit=None if quantize else max_parity_items,
                                            unlabelled_limit=max_parity_items)
    decoded, kept = _decode_all(predictor, items)
    if not decoded:
        raise ExportError(f"None of the reference inputs from {source} could be read.",
                          fix="Pass --data PATH with readable inputs.")
    labels = None if labels is None else labels[kept]
    parity_decoded = decoded[:max_parity_items]
    # a partial last batch exercises the dynamic batch axis
    parity_batches = _batches(predictor, parity_decoded, min(batch_size, max(1, len(parity_decoded) - 1)))
    started = time.perf_counter()
    with atomic_directory(out, kind="export", legacy=is_export_folder, sources=[predictor.bundle.path]) as folder:
        model_path = folder / MODEL_FILES[format]
        exported, parity = _export_checked(predictor, model_path, format, parity_batches, source=source)
        if (predictor.bundle.path / ENCODER_DIR).is_dir() and predictor.task in ("text", "audio"):
            shutil.copytree(predictor.bundle.path / ENCODER_DIR, folder / "preprocessor")
        sidecar: dict[str, Any] = {
            "format": "headstart-export", "format_version": 1, "model_format": format, "file": model_path.name,
            "task": predictor.task, "classes": predictor.classes,
            "inputs": [spec.to_dict() for spec in predictor.inputs],
            "outputs": [{"name": "probabilities", "dtype": "float32", "shape": ["batch", len(predictor.classes)]}],
            "preprocessing": _preprocessing(predictor),
            "temperature": {"value": predictor.module.temperature, "inside_graph": True},
            "parity": parity, "opset": ONNX_OPSET if format == "onnx" else None,
            "bundle": str(predictor.bundle.path.resolve()), "backbone": predictor.config.get("backbone"),
            "metrics": {k: (predictor.config.get("metrics") or {}).get(k) for k in ("accuracy", "macro_f1")},
            "versions": library_versions(), "export_seconds": round(time.perf_counter() - started, 2),
        }
        if quantize:
            sidecar["quantized"] = _quantize(exported, folder, _batches(predictor, decoded, batch_size), labels,
                                             parity_batches, ops=quantize_ops)
        atomic_write_json(folder / SIDECAR_FILE, sidecar)
    return sidecar
