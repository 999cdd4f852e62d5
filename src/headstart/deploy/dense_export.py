"""ONNX / TorchScript export of segmentation and detection bundles, checked against torch on real images.

Segmentation: the graph takes uint8 pixels (batch, 3, height, width; any size) and returns per-pixel class
probabilities (batch, classes, height, width), normalisation inside; the check is max |Δp| <= 1e-4 over every
pixel of the reference images. Detection: torchvision's Faster R-CNN exports to ONNX (one image per call, float
pixels in [0, 1], resizing and box decoding inside the graph) returning boxes, labels and scores; the check asks
for the same detections (count and labels) with boxes within 0.01 px and scores within 1e-4.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from headstart.bundle import Bundle, library_versions, load_bundle
from headstart.data.images import ImageDecodeError, list_image_files, load_image
from headstart.deploy.export import SIDECAR_FILE, is_export_folder
from headstart.errors import ExportError, HeadstartError
from headstart.models.onnx import (
    ONNX_OPSET,
    create_session,
    export_onnx_graph,
    measure_parity,
)
from headstart.storage import atomic_directory, atomic_write_json

__all__ = ["export_dense_bundle", "SegmentationGraph", "BOX_MAX_ABS_DIFF"]

PARITY_MAX_ABS_DIFF = 1e-4
BOX_MAX_ABS_DIFF = 1e-2


class SegmentationGraph(nn.Module):
    """uint8 pixels (batch, 3, H, W) -> class probabilities (batch, classes, H, W)."""

    def __init__(self, bundle: Bundle) -> None:
        super().__init__()
        prep = bundle.preprocessing
        self.net = bundle.model.eval()
        self.register_buffer("scale", (1.0 / (255.0 * torch.tensor(prep.std))).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", (torch.tensor(prep.mean) / torch.tensor(prep.std)).view(1, 3, 1, 1),
                             persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(images.float() * self.scale - self.shift), dim=1)


def _reference_images(bundle: Bundle, data: str | os.PathLike[str] | None, limit: int) -> tuple[list[Any], str]:
    if data is not None:
        path = Path(data)
        files = list_image_files(path)[0] if path.is_dir() else [path]
        source = str(path)
    else:
        files = [Path(p) for p in (bundle.validation or {}).get("inputs", [])]
        source = "the validation images recorded in the model"
    images = []
    for file in files:
        if len(images) >= limit:
            break
        try:
            images.append(load_image(file))
        except ImageDecodeError:
            continue
    if not images:
        raise ExportError(f"No readable reference images for the parity check (from {source}).",
                          fix="Pass --data with a folder of images like the training ones.")
    return images, source


def _pixels(image: Any) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)[None].copy()


def _export_segmentation(bundle: Bundle, folder: Path, images: list[Any], format: str) -> tuple[Path, dict[str, Any]]:
    graph = SegmentationGraph(bundle).eval()
    example = torch.from_numpy(_pixels(images[0]))
    path = folder / ("model.onnx" if format == "onnx" else "model.pt")
    if format == "onnx":
        export_onnx_graph(graph, path, (example,), input_names=["images"], output_names=["probabilities"],
                          dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"},
                                        "probabilities": {0: "batch", 2: "height", 3: "width"}})
        session = create_session(path)
        run = lambda x: session.run({"images": x})[0]
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(torch.jit.trace(graph, example, check_trace=False), str(path))
        loaded = torch.jit.load(str(path)).eval()

        def run(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return loaded(torch.from_numpy(x)).numpy()

    def outputs(image: Any) -> tuple[np.ndarray, np.ndarray]:
        pixels = _pixels(image)
        with torch.inference_mode():
            expected = graph(torch.from_numpy(pixels)).numpy()
        return expected, run(pixels)

    # plus an odd-sized crop: the graph must pad and crop for sizes the example did not have
    first = images[0]
    odd = first.crop((0, 0, max(33, first.width - 37), max(33, first.height - 21)))
    measured = measure_parity(outputs(image) for image in [*images, odd])  # agreement: per pixel
    worst = measured.max_abs_diff
    parity = {"n_inputs": measured.n_inputs, "max_abs_diff": worst, "pixel_agreement": measured.top1_agreement,
              "max_allowed": PARITY_MAX_ABS_DIFF}
    if not worst <= PARITY_MAX_ABS_DIFF:  # also catches NaN
        raise ExportError(f"The {format} model does not match torch on {len(images)} real images: max |difference| of"
                          f" pixel probabilities {worst:.3g} (allowed {PARITY_MAX_ABS_DIFF:g}). Nothing was written.",
                          fix="Try the other --format; report the backbone if both fail.")
    return path, parity


def _detection_tensor(image: Any) -> torch.Tensor:
    return torch.from_numpy(_pixels(image)[0]).float() / 255.0


def _export_detection(bundle: Bundle, folder: Path, images: list[Any], format: str) -> tuple[Path, dict[str, Any]]:
    if format != "onnx":
        raise ExportError("Detection models export to ONNX only (torchvision's Faster R-CNN is not traceable to"
                          " TorchScript with its image-list input).", fix="Use --format onnx.")
    model = bundle.model.eval()
    path = folder / "model.onnx"
    example = _detection_tensor(images[0])
    export_onnx_graph(model, path, ([example],), input_names=["image"], output_names=["boxes", "labels", "scores"],
                      dynamic_axes={"image": {1: "height", 2: "width"}, "boxes": {0: "detections"},
                                    "labels": {0: "detections"}, "scores": {0: "detections"}})
    session = create_session(path)
    box_diff = score_diff = 0.0
    same = True
    n_boxes = 0
    for image in images:
        tensor = _detection_tensor(image)
        with torch.inference_mode():
            expected = model([tensor])[0]
        boxes, labels, scores = session.run({"image": tensor.numpy()})
        if len(boxes) != len(expected["boxes"]) or not np.array_equal(labels, expected["labels"].numpy()):
            same = False
            break
        n_boxes += len(boxes)
        if len(boxes):
            box_diff = max(box_diff, float(np.abs(boxes - expected["boxes"].numpy()).max()))
            score_diff = max(score_diff, float(np.abs(scores - expected["scores"].numpy()).max()))
    parity = {"n_inputs": len(images), "n_boxes": n_boxes, "max_box_diff_px": box_diff, "max_score_diff": score_diff,
              "same_detections": same, "max_allowed": {"box_px": BOX_MAX_ABS_DIFF, "score": PARITY_MAX_ABS_DIFF}}
    if not same or box_diff > BOX_MAX_ABS_DIFF or score_diff > PARITY_MAX_ABS_DIFF:
        raise ExportError(
            f"The ONNX detector does not match torch on {len(images)} real images: "
            + ("different detections (count or labels)" if not same else
               f"box difference {box_diff:.3g} px (allowed {BOX_MAX_ABS_DIFF}), score difference {score_diff:.3g}"
               f" (allowed {PARITY_MAX_ABS_DIFF})") + ". Nothing was written.",
            fix="Serve the bundle with torch (headstart predict) instead; report the backbone.")
    return path, parity


def export_dense_bundle(bundle: str | os.PathLike[str] | Bundle, out: str | os.PathLike[str], *, format: str = "onnx",
                        data: str | os.PathLike[str] | None = None, max_parity_items: int = 8) -> dict[str, Any]:
    """Export a segmentation or detection bundle to ``out`` and check it against torch on real images.

    Returns:
        The sidecar written to ``out/headstart-export.json``.

    Raises:
        ExportError: the export fails, or the exported model does not match torch (nothing is written).
    """
    bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    images, source = _reference_images(bundle, data, max_parity_items)
    task = bundle.config["task"]
    started = time.perf_counter()
    with atomic_directory(out, kind="export", legacy=is_export_folder, sources=[bundle.path]) as folder:
        try:
            exporter = _export_segmentation if task == "segmentation" else _export_detection
            path, parity = exporter(bundle, folder, images, format)
        except HeadstartError:
            raise
        except Exception as error:
            raise ExportError(f"Exporting {bundle.path} to {format} failed: {type(error).__name__}:"
                              f" {str(error).splitlines()[0][:300] if str(error) else ''}",
                              fix="Try the other --format, or report the backbone.") from None
        parity["inputs"] = source
        prep = bundle.preprocessing
        if task == "segmentation":
            inputs = [{"name": "images", "dtype": "uint8", "shape": ["batch", 3, "height", "width"]}]
            outputs = [{"name": "probabilities", "dtype": "float32",
                        "shape": ["batch", len(bundle.classes), "height", "width"]}]
            preprocessing = {"pixels": "RGB uint8, channels first, any size", "normalisation": "inside the graph",
                             "mean": list(prep.mean), "std": list(prep.std)}
        else:
            inputs = [{"name": "image", "dtype": "float32", "shape": [3, "height", "width"]}]
            outputs = [{"name": "boxes", "dtype": "float32", "shape": ["detections", 4]},
                       {"name": "labels", "dtype": "int64", "shape": ["detections"],
                        "note": "1-based: label i is classes[i - 1]"},
                       {"name": "scores", "dtype": "float32", "shape": ["detections"]}]
            preprocessing = {"pixels": "RGB float32 in [0, 1], channels first, one image per call",
                             "resizing": "inside the graph (short side min_size, long side at most max_size);"
                                         " boxes come back in the input image's pixels",
                             **{k: bundle.config["dense"][k] for k in ("min_size", "max_size")}}
        sidecar = {
            "format": "headstart-export", "format_version": 1, "model_format": format, "file": path.name,
            "task": task, "classes": bundle.classes, "inputs": inputs, "outputs": outputs,
            "preprocessing": preprocessing, "parity": parity, "opset": ONNX_OPSET if format == "onnx" else None,
            "bundle": str(bundle.path.resolve()), "backbone": bundle.config.get("backbone"),
            "metrics": {k: (bundle.config.get("metrics") or {}).get(k) for k in ("miou", "dice", "map_50", "map_50_95")},
            "versions": library_versions(), "export_seconds": round(time.perf_counter() - started, 2),
        }
        atomic_write_json(folder / SIDECAR_FILE, sidecar)
    return sidecar
