"""A saved bundle as a prediction function on raw inputs: decode -> batch arrays -> probabilities.

The one place that knows, for each task, how an upload (image bytes, a text, audio bytes) becomes the model's
input arrays. ``serve`` runs it behind HTTP; ``export`` feeds the same arrays to torch and to the exported model
for its parity check. Builds on the bundle only: no training code.

Three steps, split so a service can decode each request's items on its own (errors name the item) and batch
items of many requests together:

1. :meth:`Predictor.decode` - one raw item -> a decoded item (uint8 pixels, a checked text, a fixed-length wave).
2. :meth:`Predictor.collate` - decoded items -> named numpy arrays, the graph's inputs.
3. a backend - arrays -> probabilities: :class:`TorchBackend` (the bundle's own modules) or
   :class:`OnnxBackend` (an exported ``model.onnx`` under ONNX Runtime).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from headstart.bundle import Bundle, load_bundle
from headstart.errors import ParameterError
from headstart.evaluation.calibration import apply_temperature
from headstart.models.onnx import create_session
from headstart.tasks import task_of_bundle

__all__ = ["InputSpec", "ProbabilityModule", "Predictor", "TorchBackend", "OnnxBackend", "load_predictor",
           "top_labels", "as_tensors"]



@dataclass(frozen=True)
class InputSpec:
    """One named input of the prediction graph; ``shape`` entries are ints or axis names (``batch``...)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


def as_tensors(arrays: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    """The graph's positional inputs as torch tensors (sharing memory with contiguous arrays)."""
    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays.values())


def top_labels(probabilities: np.ndarray, classes: Sequence[str], k: int) -> list[dict[str, Any]]:
    """The ``k`` most probable classes of one row, most probable first (ties keep the class order).

    >>> top_labels(np.array([0.2, 0.5, 0.3]), ["a", "b", "c"], 2)
    [{'label': 'b', 'probability': 0.5}, {'label': 'c', 'probability': 0.3}]
    """
    order = np.argsort(-np.asarray(probabilities), kind="stable")[: max(1, min(k, len(classes)))]
    return [{"label": classes[int(i)], "probability": float(probabilities[i])} for i in order]


class ProbabilityModule(nn.Module):
    """The bundle's network from the prepared input tensors (positional, in ``input_names`` order) to class
    probabilities with the bundle's temperature applied; or, when the bundle has a scikit-learn head, to the pooled
    features that head reads (``outputs == "features"``). This is the graph that ``export`` writes."""

    def __init__(self, bundle: Bundle) -> None:
        super().__init__()
        config = bundle.config
        self.task = task_of_bundle(config).modality
        self.outputs = "features" if bundle.head is not None else "probabilities"
        self.temperature = float(config.get("temperature", 1.0) or 1.0)
        self.model = bundle.model
        if self.task == "image":
            prep = bundle.preprocessing
            self.register_buffer("scale", (1.0 / (255.0 * torch.tensor(prep.std))).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("shift", (torch.tensor(prep.mean) / torch.tensor(prep.std)).view(1, 3, 1, 1),
                                 persistent=False)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.task == "image":
            outputs = self.model(inputs[0].float() * self.scale - self.shift)
        else:
            names = ("input_ids", "attention_mask") if self.task == "text" else (self.model.encoder_input_name,)
            batch = dict(zip(names, inputs))
            outputs = self.model.features(batch) if self.outputs == "features" else self.model(batch)
        if self.outputs == "features":
            return outputs.float()
        return torch.softmax(outputs.float() / self.temperature, dim=1)


class TorchBackend:
    """Arrays -> probabilities with the bundle's torch modules (and its scikit-learn head, when it has one)."""

    name = "torch"

    def __init__(self, module: ProbabilityModule, *, head: Any = None) -> None:
        self.module = module.eval()
        self.head = head

    def __call__(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            outputs = self.module(*as_tensors(arrays)).numpy()
        if self.head is None:
            return outputs
        probabilities = self.head.predict_proba(outputs)
        if self.module.temperature == 1.0:
            return probabilities.astype(np.float32)
        return apply_temperature(probabilities, self.module.temperature).astype(np.float32)


class OnnxBackend:
    """Arrays -> probabilities with an exported ``model.onnx`` under ONNX Runtime (CPU).

    The session and its thread settings are :func:`headstart.models.onnx.create_session`'s, as in every other
    place headstart runs an ONNX graph; ``spinning=False`` suits a process that decodes uploads between passes.
    """

    name = "onnxruntime"

    def __init__(self, onnx_path: str | os.PathLike[str], *, threads: int | None = None, spinning: bool = True) -> None:
        self.graph = create_session(onnx_path, threads=threads, spinning=spinning)
        self.path = self.graph.path
        self.session = self.graph.session  # bench/serve_load.py reads its thread count
        self.input_names = list(self.graph.input_names)

    def __call__(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        return self.graph.run(arrays)[0]


class Predictor:
    """A loaded bundle, ready to turn raw items into probabilities.

    Args:
        bundle: a loaded bundle (:func:`headstart.bundle.load_bundle`).
        max_image_pixels: images with more pixels are refused (decompression-bomb guard).

    Example (``tests/test_export.py`` and ``tests/test_serve.py`` run the same calls)::

        predictor = load_predictor("runs/hymenoptera/model")
        probabilities = predictor.predict([open("ant.jpg", "rb").read()])   # (1, n_classes)
    """

    def __init__(self, bundle: Bundle, *, max_image_pixels: int | None = None) -> None:
        from headstart.data.images import DEFAULT_MAX_IMAGE_PIXELS

        self.bundle = bundle
        self.config = bundle.config
        self.classes = bundle.classes
        self.module = ProbabilityModule(bundle).eval()
        self.task = self.module.task
        self.max_image_pixels = int(max_image_pixels or DEFAULT_MAX_IMAGE_PIXELS)
        self.backend: TorchBackend | OnnxBackend = TorchBackend(self.module, head=bundle.head)
        if self.task == "image":
            from headstart.data.transforms import build_transform, draft_size

            self._transform = build_transform(bundle.preprocessing, train=False, as_uint8=True)
            self._draft_size = draft_size(self._transform)  # decoded like the training images
            size = bundle.preprocessing.input_size
            self.inputs = (InputSpec("images", "uint8", ("batch", 3, size, size)),)
        elif self.task == "text":
            self.inputs = (InputSpec("input_ids", "int64", ("batch", "tokens")),
                           InputSpec("attention_mask", "int64", ("batch", "tokens")))
        else:
            from headstart.models.audio import clip_samples

            self.sample_rate = int(self.config["sample_rate"])
            self.clip_samples = clip_samples(float(self.config["clip_seconds"]), self.sample_rate)
            name = self.module.model.encoder_input_name
            probe = self.collate([np.zeros(self.clip_samples, dtype=np.float32)])[name]
            self.inputs = (InputSpec(name, "float32", ("batch", *probe.shape[1:])),)

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.inputs]

    @property
    def head(self) -> Any:
        return self.bundle.head

    def decode(self, item: bytes | str, *, name: str = "item") -> Any:
        """One raw item -> a decoded item. Images and audio are bytes (an uploaded file); texts are strings.

        Raises:
            ImageDecodeError / AudioDecodeError / ParameterError: the item is unusable (the message names ``name``).
        """
        if self.task == "image":
            from headstart.data.images import load_image_bytes

            if not isinstance(item, (bytes, bytearray)):
                raise ParameterError(f"{name}: an image model needs image file bytes; got {type(item).__name__}.",
                                     fix="Send the image file itself (multipart upload or base64).")
            image = load_image_bytes(bytes(item), name=name, max_pixels=self.max_image_pixels,
                                     draft_size=self._draft_size)
            return self._transform(image).numpy()
        if self.task == "text":
            if not isinstance(item, str):
                raise ParameterError(f"{name}: a text model needs a string; got {type(item).__name__}.",
                                     fix='Send JSON such as {"texts": ["first text", "second text"]}.')
            if not item.strip():
                raise ParameterError(f"{name}: the text is empty.", fix="Send at least one non-blank character.")
            return item
        from headstart.data.audio import fit_length, read_audio_bytes

        if not isinstance(item, (bytes, bytearray)):
            raise ParameterError(f"{name}: an audio model needs audio file bytes; got {type(item).__name__}.",
                                 fix="Send the audio file itself (multipart upload or base64).")
        # only the centre window is decoded: an hour of compressed silence costs what one clip costs
        wave = read_audio_bytes(bytes(item), name=name, sample_rate=self.sample_rate,
                                window_seconds=self.clip_samples / self.sample_rate)
        return fit_length(wave, self.clip_samples, rng=None)

    def collate(self, decoded: Sequence[Any]) -> dict[str, np.ndarray]:
        """Decoded items -> the graph's named input arrays (texts padded to the batch's longest)."""
        if self.task == "image":
            return {"images": np.ascontiguousarray(np.stack(decoded))}
        encoder = self.module.model.encoder
        if self.task == "text":
            batch = encoder.tokenize(list(decoded))
            return {name: batch[name].numpy().astype(np.int64) for name in ("input_ids", "attention_mask")}
        batch = encoder.prepare(list(decoded))
        return {name: tensor.numpy().astype(np.float32) for name, tensor in batch.items()}

    def run(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """Probabilities (n, k) float32 for collated ``arrays``, with the current backend."""
        return np.asarray(self.backend(arrays), dtype=np.float32)

    def predict(self, items: Sequence[bytes | str]) -> np.ndarray:
        """Probabilities (n, k) for raw items (all must be usable; errors name the item by index)."""
        if len(items) == 0:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        return self.run(self.collate([self.decode(item, name=f"item {i}") for i, item in enumerate(items)]))

    def embed(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """Image models: the backbone's pooled features (n, dim) of collated ``arrays`` (what shift compares)."""
        if self.task != "image":
            raise ParameterError(f"embed() is for image models; this is a {self.task} model.",
                                 fix="Measure shift with an image classifier's bundle.")
        if getattr(self, "_pooled", None) is None:
            from headstart.features.runtime import PooledFeatures

            prep = self.bundle.preprocessing
            self._pooled = PooledFeatures(self.bundle.model, mean=prep.mean, std=prep.std).eval()
        with torch.inference_mode():
            return self._pooled(torch.from_numpy(arrays["images"])).float().numpy()

    def read_inputs(self, paths_or_texts: Sequence[str | os.PathLike[str]]) -> list[bytes | str]:
        """Raw items from files (images, audio) or the texts themselves (text models)."""
        if self.task == "text":
            return [str(t) for t in paths_or_texts]
        return [Path(p).read_bytes() for p in paths_or_texts]

    def use_onnx(self, onnx_path: str | os.PathLike[str], *, threads: int | None = None, spinning: bool = True) -> None:
        """Run the graph with ONNX Runtime from now on (the file must come from ``export`` of this bundle);
        ``spinning=False`` suits a process that does other work between forward passes (a service)."""
        self.backend = OnnxBackend(onnx_path, threads=threads, spinning=spinning)


def load_predictor(path: str | os.PathLike[str], *, max_image_pixels: int | None = None) -> Predictor:
    """Load a bundle folder as a :class:`Predictor` (torch backend).

    Raises:
        BundleError: not a headstart model folder, or damaged.
        ParameterError: a segmentation or detection model (they predict masks / boxes, not class probabilities).
    """
    bundle = load_bundle(path)
    if bundle.config.get("task") in ("segmentation", "detection"):
        raise ParameterError(
            f"{path} is a {bundle.config['task']} model; the HTTP service serves classification models only.",
            fix="Use `headstart predict MODEL IMAGES --out DIR`, or `headstart export MODEL --out DIR` and run the"
                " ONNX model yourself.")
    return Predictor(bundle, max_image_pixels=max_image_pixels)
