"""The HTTP prediction service: FastAPI + uvicorn around a :class:`headstart.deploy.predictor.Predictor`.

Endpoints: ``POST /predict`` (images or audio as multipart uploads, base64 JSON or a raw body; texts as JSON or
plain text) returns the top-k labels and probabilities of each item; ``GET /health``; ``GET /metadata`` (labels,
backbone, the bundle's validation metrics, limits); ``GET /`` a small page to try the model; OpenAPI at
``/openapi.json`` and ``/docs``.

How a request flows: the body is read under a size limit and a time limit, parsed by its content type, each item
is decoded in a thread (errors name the item), then the items join a queue. One worker takes everything queued
(up to ``max_batch`` items, waiting at most ``batch_window_ms`` for requests still being decoded) and runs it as
one batch in the inference thread, so requests arriving together share a forward pass without changing any result.
Bad input of any kind is answered with a 4xx JSON error ``{"error": {"status", "code", "message", "fix"}}``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from headstart.deploy.predictor import Predictor, load_predictor, top_labels
from headstart.errors import HeadstartError, ParameterError

__all__ = ["ServeConfig", "MicroBatcher", "create_app", "prepare_backend", "run_server", "BACKENDS"]

BACKENDS = ("auto", "onnxruntime", "torch")
MAX_LOGGED_EMBEDDINGS = 100_000
_FORMATS = {"image": "a JPEG, PNG, WebP, GIF, BMP or TIFF file", "audio": "a WAV, FLAC, OGG or MP3 file",
            "text": "a non-empty string"}
ITEM_FIELDS = {"image": ("file", "files", "image", "images"), "audio": ("file", "files", "audio"),
               "text": ("text", "texts")}


@dataclass
class ServeConfig:
    """Everything the service is configured with (CLI options map one to one).

    Args:
        bundle: the model folder to serve.
        backend: ``auto`` (ONNX Runtime when the exported graph passes its parity check, else torch),
            ``onnxruntime`` or ``torch``.
        data: real inputs for the export's parity check when the bundle records no validation inputs.
        max_upload_bytes: largest request body accepted (413 above).
        max_image_pixels: images with more pixels (width x height) are refused (413).
        max_items: most items in one request (413 above).
        max_text_chars: longest text accepted (413 above).
        request_timeout: seconds for reading a body and for its prediction (408 / 504 beyond).
        max_batch: most items in one forward pass. Measured on EfficientNet-Lite0 (2 CPU cores): a forward pass
            costs about the same per image at batch 1, 8 or 32, so batches beyond 8 only add waiting (32
            concurrent clients: 52 images/s with batches of 8 against 43 with batches of 32).
        batch_window_ms: how long a batch may wait for requests still being decoded.
        top_k: labels returned per item unless the request asks for another number.
        threads: inference threads (default: torch's setting, i.e. the cores).
        log_embeddings: image models: keep the backbone embeddings of the last N predicted images, and answer
            ``GET /shift`` with their shift from the training data (see :mod:`headstart.deploy.shift`). Costs one more
            backbone pass per image (torch); 0 (default) turns it off.
    """

    bundle: str
    backend: str = "auto"
    data: str | None = None
    max_upload_bytes: int = 20 * 2**20
    max_image_pixels: int = 40_000_000
    max_items: int = 64
    max_text_chars: int = 20_000
    request_timeout: float = 30.0
    max_batch: int = 8
    batch_window_ms: float = 4.0
    top_k: int = 5
    threads: int | None = None
    log_embeddings: int = 0
    export_dir: str | None = field(default=None, repr=False)

    def validate(self) -> None:
        from headstart.errors import check_choice

        check_choice("serve", "backend", self.backend, BACKENDS)
        positive = {"max_upload_bytes": self.max_upload_bytes, "max_image_pixels": self.max_image_pixels,
                    "max_items": self.max_items, "max_text_chars": self.max_text_chars, "max_batch": self.max_batch,
                    "top_k": self.top_k, "request_timeout": self.request_timeout}
        for name, value in positive.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ParameterError(f"The '{name}' option of serve must be a positive number. Got {value!r}.",
                                     fix=f"Pass --{name.replace('_', '-')} with a value > 0.")
        if (not isinstance(self.log_embeddings, int) or isinstance(self.log_embeddings, bool)
                or not (self.log_embeddings == 0 or 10 <= self.log_embeddings <= MAX_LOGGED_EMBEDDINGS)):
            raise ParameterError(
                f"The 'log_embeddings' option must be 0 (off) or an integer in [10, {MAX_LOGGED_EMBEDDINGS}] (the"
                f" shift statistic needs 10 images; each kept embedding takes a few KB). Got {self.log_embeddings!r}.",
                fix="Pass --log-embeddings 1000 to keep the last 1000 images' embeddings (0: off).")
        if not isinstance(self.batch_window_ms, (int, float)) or self.batch_window_ms < 0:
            raise ParameterError(f"The 'batch_window_ms' option must be >= 0. Got {self.batch_window_ms!r}.",
                                 fix="Pass --batch-window-ms 4 (or 0 to never wait).")


class RequestError(Exception):
    """A 4xx answer: what was wrong with the request and how to fix it."""

    def __init__(self, status: int, code: str, message: str, fix: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.fix, self.details = status, code, message, fix, details

    def body(self) -> dict[str, Any]:
        error = {"status": self.status, "code": self.code, "message": self.message, "fix": self.fix}
        if self.details is not None:
            error["details"] = self.details
        return {"error": error}


class MicroBatcher:
    """Queue decoded items from concurrent requests and run them together in one inference thread.

    ``run`` maps a list of decoded items to probabilities (n, k). A batch is dispatched as soon as the worker is
    free; it waits up to ``window_s`` only while other requests are still being decoded (``expecting()`` > 0), so a
    lone request never waits and requests arriving together share a forward pass.
    """

    def __init__(self, run: Callable[[list[Any]], np.ndarray], *, max_batch: int, window_s: float,
                 expecting: Callable[[], int] = lambda: 0) -> None:
        self.run, self.max_batch, self.window_s, self.expecting = run, max_batch, window_s, expecting
        self.queue: asyncio.Queue[tuple[Any, asyncio.Future[np.ndarray]]] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="headstart-inference")
        self.batches = 0
        self.items = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._work())

    def failed(self) -> bool:
        """True when the worker task has ended (it only ends on a bug); /health then reports it."""
        return self._task is not None and self._task.done()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, decoded: Sequence[Any]) -> np.ndarray:
        """Probabilities for ``decoded`` items (rows in order), computed in batches shared with other requests."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in decoded]
        for item, future in zip(decoded, futures):
            self.queue.put_nowait((item, future))
        rows = await asyncio.gather(*futures)
        return np.stack(rows)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.window_s
            while len(batch) < self.max_batch:
                if not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0 or self.expecting() == 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except (TimeoutError, asyncio.TimeoutError):
                    break
            live = [(item, future) for item, future in batch if not future.done()]  # timed-out requests drop out
            if not live:
                continue
            try:
                probabilities = await loop.run_in_executor(self.executor, self.run, [item for item, _ in live])
            except Exception as error:  # noqa: BLE001 - handed to every waiting request, the worker keeps going
                for _, future in live:
                    if not future.done():
                        future.set_exception(error)
                continue
            self.batches += 1
            self.items += len(live)
            for row, (_, future) in zip(probabilities, live):
                if not future.done():
                    future.set_result(row)


def prepare_backend(predictor: Predictor, config: ServeConfig, *, log: Callable[[str], None] = print) -> str:
    """Switch ``predictor`` to ONNX Runtime when asked or possible (exported once, cached, parity-checked).

    Returns:
        The backend in use, ``onnxruntime`` or ``torch``.

    Raises:
        ExportError: ``backend="onnxruntime"`` and the export or its parity check fails.
    """
    if config.backend == "torch":
        return "torch"
    from headstart.deploy.export import MODEL_FILES, SIDECAR_FILE, export_bundle
    from headstart.errors import ExportError

    folder = Path(config.export_dir) if config.export_dir else _export_cache(predictor)
    try:
        if not (folder / SIDECAR_FILE).is_file():
            log(f"Exporting the model to ONNX in {folder} (once; checked against torch on real inputs)")
            export_bundle(predictor, folder, format="onnx", data=config.data)
        # measured (bench/serve_load.py): without spinning the service used 31-37 ms of CPU per image instead of 43-49
        predictor.use_onnx(folder / MODEL_FILES["onnx"], threads=config.threads, spinning=False)
        return "onnxruntime"
    except ExportError as error:
        if config.backend == "onnxruntime":
            raise
        log(f"Serving with torch: ONNX export unavailable ({error.message})")
        return "torch"
    except Exception as error:  # noqa: BLE001 - onnxruntime missing or refusing a cached file: torch still serves
        if config.backend == "onnxruntime":
            raise ExportError(f"ONNX Runtime cannot run {folder / MODEL_FILES['onnx']}: {type(error).__name__}:"
                              f" {str(error)[:200]}", fix="pip install onnxruntime, or use --backend torch.") from None
        log(f"Serving with torch: ONNX Runtime unavailable ({type(error).__name__}: {str(error)[:200]})")
        return "torch"


def _export_cache(predictor: Predictor) -> Path:
    import hashlib

    from headstart.features.store import default_cache_dir, file_digest

    digest = hashlib.sha256()
    for name in ("model.safetensors", "config.json", "head.skops"):
        file = predictor.bundle.path / name
        if file.is_file():
            digest.update(file_digest(file))
    return default_cache_dir() / "exports" / digest.hexdigest()[:32]


def _page() -> str:
    return resources.files("headstart").joinpath("deploy/web/index.html").read_text(encoding="utf-8")


def _metadata(predictor: Predictor, config: ServeConfig, backend: str) -> dict[str, Any]:
    bundle_config = predictor.config
    metrics = bundle_config.get("metrics") or None
    if isinstance(metrics, dict):
        metrics = {k: v for k, v in metrics.items() if k not in ("per_class", "confusion_matrix")}
    return {
        "name": predictor.bundle.path.name if predictor.bundle.path.name != "model" else
        f"{predictor.bundle.path.parent.name}/model",
        "task": predictor.task, "classes": predictor.classes, "backend": backend,
        "backbone": bundle_config.get("backbone"), "architecture": bundle_config.get("architecture"),
        "strategy": bundle_config.get("strategy"), "created": bundle_config.get("created"), "metrics": metrics,
        "temperature": bundle_config.get("temperature", 1.0),
        "inputs": [spec.to_dict() for spec in predictor.inputs], "top_k": min(config.top_k, len(predictor.classes)),
        "limits": {"max_upload_bytes": config.max_upload_bytes, "max_image_pixels": config.max_image_pixels,
                   "max_items": config.max_items, "max_text_chars": config.max_text_chars,
                   "request_timeout_s": config.request_timeout, "max_batch": config.max_batch,
                   "batch_window_ms": config.batch_window_ms},
        "versions": bundle_config.get("versions"),
    }


async def _read_body(request: Any, config: ServeConfig) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise RequestError(400, "bad_content_length", f"Content-Length {declared!r} is not a number.",
                               "Send a valid Content-Length header (HTTP clients do this for you).") from None
        if size > config.max_upload_bytes:
            raise _too_large(size, config)
    chunks, total = [], 0

    async def read() -> None:
        nonlocal total
        async for chunk in request.stream():
            total += len(chunk)
            if total > config.max_upload_bytes:
                raise _too_large(total, config)
            chunks.append(chunk)

    try:
        await asyncio.wait_for(read(), config.request_timeout)
    except (TimeoutError, asyncio.TimeoutError):
        raise RequestError(408, "request_timeout", f"The request body did not arrive within {config.request_timeout:g} s.",
                           "Send the body faster, or raise the server's --request-timeout.") from None
    return b"".join(chunks)


def _too_large(size: int, config: ServeConfig) -> RequestError:
    return RequestError(413, "payload_too_large",
                        f"The request body has {size} bytes or more; this server accepts at most"
                        f" {config.max_upload_bytes}.",
                        "Send fewer or smaller files, or start the server with a larger --max-upload-bytes.")


async def _parse_multipart(request: Any, body: bytes, predictor: Predictor, config: ServeConfig
                           ) -> list[tuple[str, bytes | str]]:
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def stream() -> AsyncIterator[bytes]:
        yield body

    parser = MultiPartParser(request.headers, stream(), max_files=config.max_items, max_fields=config.max_items,
                             max_part_size=config.max_text_chars * 4 + 1024)
    try:
        form = await parser.parse()
    except MultiPartException as error:
        raise RequestError(400, "malformed_multipart", f"The multipart body cannot be parsed: {error.message}.",
                           "Send multipart/form-data with a boundary, e.g. curl -F file=@photo.jpg URL.") from None
    except Exception as error:  # noqa: BLE001 - python-multipart raises assorted errors on hostile bodies
        raise RequestError(400, "malformed_multipart", f"The multipart body cannot be parsed ({type(error).__name__}).",
                           "Send multipart/form-data with a boundary, e.g. curl -F file=@photo.jpg URL.") from None
    accepted = ITEM_FIELDS[predictor.task]
    items: list[tuple[str, bytes | str]] = []
    try:
        for key, value in form.multi_items():
            if key not in accepted:
                raise RequestError(422, "unknown_field", f"The form field {key!r} is not one this {predictor.task}"
                                   f" model reads (accepted: {list(accepted)}).",
                                   f"Send each {predictor.task} in a field named {accepted[0]!r}.")
            if isinstance(value, UploadFile):
                items.append((value.filename or f"item {len(items)}", await value.read()))
            elif predictor.task == "text":
                items.append((f"text {len(items)}", value))
            else:
                raise RequestError(422, "not_a_file", f"The form field {key!r} holds text, not an uploaded file.",
                                   f"Upload the file itself, e.g. curl -F {accepted[0]}=@FILE URL.")
    finally:
        await form.close()
    return items


def _parse_json(body: bytes, predictor: Predictor) -> list[tuple[str, bytes | str]]:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise RequestError(400, "malformed_json", f"The body is not valid JSON ({str(error)[:120]}).",
                           "Send a JSON object, e.g. {\"texts\": [\"...\"]} or {\"images\": [\"<base64>\"]}.") from None
    task = predictor.task
    plural = {"image": "images", "audio": "audio", "text": "texts"}[task]
    singular = {"image": "image", "audio": "audio", "text": "text"}[task]
    example = '{"texts": ["a first text", "a second"]}' if task == "text" else f'{{"{plural}": ["<base64 file>"]}}'
    if not isinstance(payload, dict):
        raise RequestError(422, "bad_json_shape", f"The JSON body is a {type(payload).__name__}, not an object.",
                           f"Send {example}.")
    unknown = sorted(set(payload) - {plural, singular})
    if unknown or not payload:
        raise RequestError(422, "unknown_field", f"The JSON keys {unknown or '(none)'} are not ones this {task} model"
                           f" reads (accepted: {sorted({plural, singular})}).", f"Send {example}.")
    if plural in payload and singular in payload and plural != singular:
        raise RequestError(422, "ambiguous_fields", f"The JSON body has both {singular!r} and {plural!r}.",
                           f"Send only {plural!r} with a list.")
    values = payload.get(plural, payload.get(singular))
    values = values if isinstance(values, list) else [values]
    items: list[tuple[str, bytes | str]] = []
    for index, value in enumerate(values):
        if not isinstance(value, str):
            raise RequestError(422, "bad_item_type", f"Item {index} is a {type(value).__name__}, not a string.",
                               f"Send {example}.")
        if task == "text":
            items.append((f"text {index}", value))
            continue
        try:
            items.append((f"item {index}", base64.b64decode(value.split(",", 1)[-1] if value.startswith("data:")
                                                            else value, validate=True)))
        except (binascii.Error, ValueError):
            raise RequestError(400, "bad_base64", f"Item {index} is not valid base64.",
                               "Encode the file's bytes with base64 (e.g. base64 -w0 FILE).") from None
    return items


async def _parse_request(request: Any, body: bytes, predictor: Predictor, config: ServeConfig
                         ) -> list[tuple[str, bytes | str]]:
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    if not body:
        raise RequestError(400, "empty_body", "The request body is empty.",
                           "Send the input: multipart files (curl -F file=@FILE URL) or JSON.")
    if media == "multipart/form-data":
        return await _parse_multipart(request, body, predictor, config)
    if media == "application/json":
        return _parse_json(body, predictor)
    task = predictor.task
    if task == "text" and media == "text/plain":
        try:
            return [("text 0", body.decode("utf-8"))]
        except UnicodeDecodeError:
            raise RequestError(400, "bad_encoding", "The text/plain body is not UTF-8.",
                               "Send UTF-8 text, or JSON {\"texts\": [...]}.") from None
    if task != "text" and (media.startswith(f"{task}/") or media == "application/octet-stream"):
        return [("body", body)]
    accepted = ["multipart/form-data", "application/json"] + (
        ["text/plain"] if task == "text" else [f"{task}/*", "application/octet-stream"])
    raise RequestError(415, "unsupported_media_type", f"Content-Type {content_type or '(none)'!r} is not accepted"
                       f" by this {task} model (accepted: {accepted}).",
                       "Send multipart/form-data (curl -F file=@FILE URL) or JSON with the right Content-Type.")


def _check_items(items: list[tuple[str, bytes | str]], config: ServeConfig) -> None:
    if not items:
        raise RequestError(422, "no_items", "The request holds no inputs.",
                           "Send at least one file or text in the accepted fields.")
    if len(items) > config.max_items:
        raise RequestError(413, "too_many_items", f"The request holds {len(items)} inputs; at most {config.max_items}"
                           " are accepted per request.", "Split the inputs over several requests.")
    for name, value in items:
        if isinstance(value, str) and len(value) > config.max_text_chars:
            raise RequestError(413, "text_too_long", f"{name} has {len(value)} characters; at most"
                               f" {config.max_text_chars} are accepted.", "Shorten the text or raise --max-text-chars.")


def _decode_items(predictor: Predictor, items: list[tuple[str, bytes | str]]) -> list[Any]:
    decoded, errors = [], []
    for index, (name, value) in enumerate(items):
        try:
            decoded.append(predictor.decode(value, name=name))
        except HeadstartError as error:
            too_large = bool(getattr(error, "too_large", False))
            errors.append({"index": index, "name": name, "message": error.message, "too_large": too_large,
                           "fix": f"Send a smaller {predictor.task} or raise --max-image-pixels." if too_large else
                           f"Send a valid {predictor.task} input ({_FORMATS[predictor.task]}) in its place."})
        except Exception as error:  # noqa: BLE001 - hostile bytes can break decoders in unplanned ways: still a 4xx
            errors.append({"index": index, "name": name, "too_large": False,
                           "message": f"cannot be decoded ({type(error).__name__})",
                           "fix": f"Send a valid {predictor.task} input ({_FORMATS[predictor.task]})."})
    if errors:
        too_big = all(e["too_large"] for e in errors)
        raise RequestError(413 if too_big else 422, "image_too_large" if too_big else "undecodable_input",
                           f"{len(errors)} of {len(items)} inputs cannot be used: "
                           + "; ".join(f"{e['name']}: {e['message']}" for e in errors[:5]),
                           errors[0]["fix"] or "Send valid files.", details=errors)
    return decoded


def _embedding_log(predictor: Predictor, config: ServeConfig) -> Any:
    """The service's :class:`~headstart.deploy.shift.EmbeddingLog` when ``--log-embeddings`` is on (image models)."""
    if not config.log_embeddings:
        return None
    from headstart.deploy.shift import (
        EmbeddingLog,
        bundle_reference_images,
        embed_images,
    )

    if predictor.task != "image":
        raise ParameterError(f"--log-embeddings measures shift on image embeddings; this is a {predictor.task} model.",
                             fix="Leave --log-embeddings at 0 for text and audio models.")

    def reference() -> np.ndarray:
        # the same torch module as the logged embeddings; in-process (no decoding workers), nothing cached
        bundle = predictor.bundle
        return embed_images(bundle_reference_images(config.bundle, bundle.validation), bundle.model,
                            bundle.preprocessing, bundle.config["architecture"], runtime="torch", cache_dir="off",
                            num_workers=0)

    return EmbeddingLog(config.log_embeddings, embed=predictor.embed, reference=reference)


def create_app(config: ServeConfig, *, predictor: Predictor | None = None, log: Callable[[str], None] = print) -> Any:
    """The FastAPI application serving ``config.bundle`` (loaded here unless ``predictor`` is given).

    Raises:
        ParameterError: bad limits; BundleError: not a model folder; ExportError: ``backend="onnxruntime"`` fails.
    """
    config.validate()
    predictor = predictor or load_predictor(config.bundle)
    predictor.max_image_pixels = config.max_image_pixels
    # run_server prepares the backend once before uvicorn starts; worker processes only load the cached export
    backend = "onnxruntime" if predictor.backend.name == "onnxruntime" else prepare_backend(predictor, config, log=log)
    metadata = _metadata(predictor, config, backend)
    state = {"decoding": 0, "requests": 0, "errors_4xx": 0, "started": time.time()}
    embedding_log = _embedding_log(predictor, config)

    def run_batch(decoded: list[Any]) -> np.ndarray:
        arrays = predictor.collate(decoded)
        probabilities = predictor.run(arrays)
        if embedding_log is not None:
            try:
                embedding_log.add(arrays)
            except Exception as error:  # noqa: BLE001 - monitoring must never fail a prediction
                log(f"Warning: embedding for /shift failed ({type(error).__name__}: {error}); prediction unaffected.")
        return probabilities

    batcher = MicroBatcher(run_batch, max_batch=config.max_batch,
                           window_s=config.batch_window_ms / 1000.0, expecting=lambda: state["decoding"])
    decode_pool = ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)), thread_name_prefix="decode")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await batcher.stop()
        decode_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title=f"headstart: {metadata['name']}", version="1",
                  description=f"{predictor.task} classifier over {len(predictor.classes)} classes"
                              f" ({', '.join(predictor.classes[:10])}{'...' if len(predictor.classes) > 10 else ''}).",
                  lifespan=lifespan)
    app.state.batcher, app.state.predictor, app.state.metadata = batcher, predictor, metadata

    def error_response(error: RequestError) -> JSONResponse:
        state["errors_4xx"] += 1
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(RequestError)
    async def request_error(_: Request, error: RequestError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', []))}: {e.get('msg')}" for e in error.errors())
        return error_response(RequestError(422, "invalid_parameter", f"Invalid request parameters: {problems}.",
                                           "See /docs for the parameters of this endpoint."))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return error_response(RequestError(error.status_code, code, str(error.detail),
                                           "Endpoints: POST /predict, GET /health, GET /metadata, GET /shift, GET /, GET /docs."))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, error: Exception) -> JSONResponse:
        log(f"Internal error: {type(error).__name__}: {error}")
        body = {"error": {"status": 500, "code": "internal_error", "message": f"{type(error).__name__}: {error}"[:300],
                          "fix": "This is a bug in headstart's service; please report it with the request."}}
        return JSONResponse(body, status_code=500)

    request_body = {
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "properties": {
                ITEM_FIELDS[predictor.task][0]: {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
            "application/json": {"schema": {"type": "object", "properties": {
                ("texts" if predictor.task == "text" else {"image": "images", "audio": "audio"}[predictor.task]): {
                    "type": "array", "items": {"type": "string",
                                               "description": "text" if predictor.task == "text" else "base64 file"}}}}},
        },
        "required": True,
    }

    @app.post("/predict", openapi_extra={"requestBody": request_body},
              summary="Top-k labels and probabilities for each uploaded item")
    async def predict(request: Request, top_k: int = Query(default=metadata["top_k"], ge=1, le=10_000, description=(
                          "labels returned per item (at most the number of classes)"))) -> JSONResponse:
        started = time.perf_counter()
        top_k = min(top_k, len(predictor.classes))
        state["decoding"] += 1
        try:
            body = await _read_body(request, config)
            items = await _parse_request(request, body, predictor, config)
            _check_items(items, config)
            loop = asyncio.get_running_loop()
            decoded = await loop.run_in_executor(decode_pool, _decode_items, predictor, items)
        finally:
            state["decoding"] -= 1
        decoded_at = time.perf_counter()
        try:
            probabilities = await asyncio.wait_for(batcher.submit(decoded), config.request_timeout)
        except (TimeoutError, asyncio.TimeoutError):
            raise RequestError(504, "prediction_timeout", f"The prediction took longer than {config.request_timeout:g} s.",
                               "Retry with fewer inputs, or raise the server's --request-timeout.") from None
        state["requests"] += 1
        predictions = []
        for (name, _), row in zip(items, probabilities):
            top = top_labels(row, predictor.classes, top_k)
            predictions.append({"name": name, "label": top[0]["label"], "probability": top[0]["probability"],
                                "top_k": top})
        finished = time.perf_counter()
        return JSONResponse({"predictions": predictions, "backend": backend, "timing_ms": {
            "decode": round(1000 * (decoded_at - started), 2), "inference": round(1000 * (finished - decoded_at), 2),
            "total": round(1000 * (finished - started), 2)}})

    @app.get("/health", summary="Liveness and counters")
    async def health() -> Any:
        if batcher.failed():
            return JSONResponse({"status": "failed", "reason": "the inference worker stopped"}, status_code=503)
        return {"status": "ok", "model": metadata["name"], "task": predictor.task, "backend": backend,
                "uptime_s": round(time.time() - state["started"], 1), "requests": state["requests"],
                "rejected_4xx": state["errors_4xx"], "batches": batcher.batches, "batched_items": batcher.items,
                "queue": batcher.queue.qsize()}

    @app.get("/shift", summary="Shift of the recently predicted images from the training data (--log-embeddings)")
    async def shift(permutations: int = Query(default=200, ge=19, le=5000, description="MMD permutation-test"
                                                                                     " shuffles")) -> Any:
        if embedding_log is None:
            raise RequestError(409, "shift_logging_off", "This service does not log embeddings, so it cannot measure"
                               " shift.", "Start it with `headstart serve MODEL --log-embeddings 1000` (image models).")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(None, lambda: embedding_log.report(permutations=permutations))
        except HeadstartError as error:  # too few logged images, reference images missing or unreadable
            raise RequestError(409, "shift_unavailable", error.message, error.fix) from None

    @app.get("/metadata", summary="Labels, backbone, validation metrics and limits of the served model")
    async def get_metadata() -> dict[str, Any]:
        return metadata

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(_page())

    return app


CONFIG_ENV = "HEADSTART_SERVE_CONFIG"


try:  # the C parser when installed (requirements.txt pins it), else uvicorn's pure-Python h11 parser
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _HttpProtocol
except ImportError:  # pragma: no cover - depends on the installation
    from uvicorn.protocols.http.h11_impl import H11Protocol as _HttpProtocol


class NoDelayHttpProtocol(_HttpProtocol):  # type: ignore[misc, valid-type]
    """uvicorn's HTTP protocol with TCP_NODELAY set on every connection.

    With several workers uvicorn 0.54 creates its listening socket with protocol 0, so asyncio never sets
    TCP_NODELAY on accepted connections and each keep-alive response waits for the client's delayed ACK (measured:
    +40 ms per request with --workers 2; uvicorn issue #3149). Harmless with one worker. A module-level class, so
    worker processes started by spawn can import it.
    """

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        import socket

        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        super().connection_made(transport)


def app_from_environment() -> Any:
    """The app factory uvicorn's worker processes call (the config travels as JSON in an environment variable)."""
    config = ServeConfig(**json.loads(os.environ[CONFIG_ENV]))
    if config.threads:
        import torch

        torch.set_num_threads(config.threads)
    return create_app(config)


def run_server(config: ServeConfig, *, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
               log_level: str = "warning") -> None:
    """Serve until interrupted. The ONNX export (if any) is prepared once here, before workers start."""
    import uvicorn

    config.validate()
    predictor = load_predictor(config.bundle, max_image_pixels=config.max_image_pixels)
    if config.log_embeddings and workers > 1:
        raise ParameterError(f"--log-embeddings keeps the embeddings inside one process; with {workers} workers each"
                             " would answer /shift from its own share of the requests.",
                             fix="Use --workers 1 with --log-embeddings, or turn the logging off.")
    _embedding_log(predictor, config)  # refuses non-image models before any worker starts
    config.backend = prepare_backend(predictor, config)
    if config.backend == "onnxruntime":
        config.export_dir = str(predictor.backend.path.parent)  # type: ignore[union-attr]
    print(f"headstart: serving {config.bundle} ({config.backend} backend) on http://{host}:{port}"
          f" with {workers} worker(s); docs at http://{host}:{port}/docs", flush=True)
    options = {"host": host, "port": port, "log_level": log_level, "timeout_keep_alive": 5, "limit_concurrency": 1024,
               "http": NoDelayHttpProtocol}
    if workers == 1:
        uvicorn.run(create_app(config, predictor=predictor), **options)
        return
    del predictor  # each worker process loads its own
    os.environ[CONFIG_ENV] = json.dumps(asdict(config))  # each worker process rebuilds the app from it
    # Each worker imports torch and loads the bundle before it answers the supervisor's pings; uvicorn's default
    # 5 s health check killed and respawned them in a loop on a loaded 2-core machine (measured in CI).
    uvicorn.run("headstart.deploy.serve:app_from_environment", factory=True, workers=workers,
                timeout_worker_healthcheck=120, **options)
