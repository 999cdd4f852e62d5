"""The HTTP prediction service: FastAPI + uvicorn around a :class:`headstart.deploy.predictor.Predictor`.

Endpoints: ``POST /predict`` (images or audio as multipart uploads, base64 JSON or a raw body; texts as JSON or
plain text) returns the top-k labels and probabilities of each item; ``GET /health``; ``GET /metadata`` (labels,
backbone, the bundle's validation metrics, limits); ``GET /shift`` (with ``--log-embeddings``); ``GET /`` a small
page to try the model; OpenAPI at ``/openapi.json`` and ``/docs``.

How a request flows: the body is read and parsed by :mod:`headstart.deploy.serve.requests` (size and time limits;
each item decoded in a thread, errors name the item), then the items join the
:class:`~headstart.deploy.serve.batching.MicroBatcher`, which runs requests arriving together as one batch.
Bad input of any kind is answered with a 4xx JSON error ``{"error": {"status", "code", "message", "fix"}}``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from headstart.deploy.predictor import Predictor, load_predictor, top_labels
from headstart.deploy.serve.access import default_allowed_hosts, exposure_warning
from headstart.deploy.serve.batching import MicroBatcher
from headstart.deploy.serve.config import ServeConfig
from headstart.deploy.serve.metrics import ServiceMetrics
from headstart.deploy.serve.requests import (
    ITEM_FIELDS,
    Admission,
    HeavyDecodes,
    RequestError,
    busy,
    check_items,
    decode_items,
    parse_request,
    read_body,
)
from headstart.errors import HeadstartError, ParameterError

__all__ = ["create_app", "prepare_backend", "run_server", "app_from_environment", "CONFIG_ENV",
           "NoDelayHttpProtocol", "default_allowed_hosts", "exposure_warning"]

CONFIG_ENV = "HEADSTART_SERVE_CONFIG"
ACCESS_LOG_ENV = "HEADSTART_SERVE_ACCESS_LOG"


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
    """The cached export folder of this bundle, keyed by the content of its weights, config and head."""
    import hashlib

    from headstart.features.store import default_cache_dir, file_digest

    digest = hashlib.sha256()
    for name in ("model.safetensors", "config.json", "head.skops"):
        file = predictor.bundle.path / name
        if file.is_file():
            digest.update(file_digest(file))
    return default_cache_dir() / "exports" / digest.hexdigest()[:32]


def _page() -> str:
    """The try-the-model page, read from the installed package (``deploy/web/index.html``, package data)."""
    return resources.files("headstart").joinpath("deploy/web/index.html").read_text(encoding="utf-8")


def _metadata(predictor: Predictor, config: ServeConfig, backend: str) -> dict[str, Any]:
    """The answer of ``GET /metadata``: what is served, how well it validated, and the request limits."""
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



@dataclass
class _Service:
    """What the routes of one app share: the model, its options, the batcher and the request counters."""

    config: ServeConfig
    predictor: Predictor
    backend: str
    metadata: dict[str, Any]
    batcher: MicroBatcher
    decode_pool: ThreadPoolExecutor
    embedding_log: Any
    state: dict[str, Any]
    admission: Admission
    metrics: ServiceMetrics
    heavy: HeavyDecodes


def _batch_runner(predictor: Predictor, embedding_log: Any, log: Callable[[str], None]
                  ) -> Callable[[list[Any]], np.ndarray]:
    """The inference thread's work: decoded items -> probabilities (and their embeddings logged for /shift)."""

    def run_batch(decoded: list[Any]) -> np.ndarray:
        arrays = predictor.collate(decoded)
        probabilities = predictor.run(arrays)
        if embedding_log is not None:
            try:
                embedding_log.add(arrays)
            except Exception as error:  # noqa: BLE001 - monitoring must never fail a prediction
                log(f"Warning: embedding for /shift failed ({type(error).__name__}: {error}); prediction unaffected.")
        return probabilities

    return run_batch


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
    state = {"decoding": 0, "requests": 0, "errors_4xx": 0, "started": time.time(), "draining": False}
    embedding_log = _embedding_log(predictor, config)
    admission = Admission(max_concurrent=config.max_concurrent, max_bytes=config.max_inflight_bytes)
    heavy = HeavyDecodes()
    batcher_box: list[MicroBatcher] = []
    metrics = ServiceMetrics({
        "headstart_queue_items": ("Decoded inputs waiting for a forward pass.", lambda: batcher_box[0].queue.qsize()),
        "headstart_admitted_requests": ("Prediction requests admitted and not yet answered.",
                                        lambda: admission.requests),
        "headstart_admitted_bytes": ("Request body bytes held by admitted requests.", lambda: admission.bytes),
        "headstart_refused_total": ("Requests answered 503 because the service was full.",
                                    lambda: admission.refused + heavy.refused),
        "headstart_decoding_requests": ("Requests being read or decoded.", lambda: state["decoding"]),
    })
    batcher = MicroBatcher(_batch_runner(predictor, embedding_log, log), max_batch=config.max_batch,
                           window_s=config.batch_window_ms / 1000.0, expecting=lambda: state["decoding"],
                           on_batch=metrics.batch_sizes.observe)
    batcher_box.append(batcher)
    decode_pool = ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)), thread_name_prefix="decode")
    service = _Service(config, predictor, backend, metadata, batcher, decode_pool, embedding_log, state, admission,
                       metrics, heavy)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        # graceful shutdown: /ready answers 503, new predictions are refused, what was admitted finishes
        state["draining"] = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + config.drain_seconds
        while admission.requests and loop.time() < deadline:
            await asyncio.sleep(0.02)
        await batcher.drain(max(0.0, deadline - loop.time()))
        await batcher.stop()
        decode_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title=f"headstart: {metadata['name']}", version="1",
                  description=f"{predictor.task} classifier over {len(predictor.classes)} classes"
                              f" ({', '.join(predictor.classes[:10])}{'...' if len(predictor.classes) > 10 else ''}).",
                  lifespan=lifespan)
    app.state.batcher, app.state.predictor, app.state.metadata = batcher, predictor, metadata
    _add_error_handlers(app, state, log)
    _add_predict_route(app, service)
    _add_status_routes(app, service)
    _add_guard(app, service, log)
    return app


OPEN_PATHS = frozenset({"/live", "/ready"})  # probes answer without the API key
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
ACCESS_LOG = logging.getLogger("headstart.serve.access")
_ERROR_LOG = logging.getLogger("headstart.serve")


def _add_guard(app: FastAPI, service: _Service, log: Callable[[str], None]) -> None:
    """Outermost layer of every request: request ID, Host check, API key, CORS, access log and metrics."""
    import hmac

    config, metrics = service.config, service.metrics
    allowed = config.allowed_hosts or ["*"]
    any_host = "*" in allowed
    key = config.api_key.encode() if config.api_key else None
    origins = set(config.cors_origins)

    def refuse(error: RequestError, request_id: str) -> JSONResponse:
        body = error.body()
        body["error"]["request_id"] = request_id
        return JSONResponse(body, status_code=error.status, headers=error.headers)

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Any]) -> Any:
        started = time.perf_counter()
        given = request.headers.get("x-request-id", "")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex[:16]
        request.state.request_id = request_id
        path = request.url.path
        origin = request.headers.get("origin")
        host = (request.headers.get("host") or "").lower()
        host_name = host[:host.rindex(":")] if host.count(":") == 1 or (host.startswith("[") and "]:" in host) \
            else host
        if not any_host and host_name not in allowed:
            response = refuse(RequestError(400, "bad_host", f"The Host header {host!r} is not one this service"
                                           " answers to (a guard against DNS rebinding).",
                                           f"Call it as one of {allowed}, or start it with --allowed-hosts."),
                              request_id)
        elif request.method == "OPTIONS" and origin and "access-control-request-method" in request.headers:
            response = JSONResponse({}, status_code=204 if origin in origins else 403)
        elif key is not None and path not in OPEN_PATHS and not _key_matches(request, key, hmac.compare_digest):
            response = refuse(RequestError(401, "unauthorized", "This service needs an API key.",
                                           "Send the header 'Authorization: Bearer KEY' (or 'X-API-Key: KEY')."),
                              request_id)
            response.headers["WWW-Authenticate"] = "Bearer"
        else:
            try:
                response = await call_next(request)
            except Exception as error:  # noqa: BLE001 - answered here so the 500 too carries the request ID
                response = internal_error(request_id, error, log)
        if origin and origin in origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
            if request.method == "OPTIONS":
                response.headers["Access-Control-Allow-Methods"] = "GET, POST"
                response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, X-API-Key"
        response.headers["X-Request-ID"] = request_id
        seconds = time.perf_counter() - started
        route = path if path in _ROUTES else "other"
        metrics.record(route, response.status_code, seconds)
        if ACCESS_LOG.isEnabledFor(logging.INFO):
            client = request.client.host if request.client else "-"
            ACCESS_LOG.info('%s "%s %s" %d %.1fms id=%s', client, request.method, path, response.status_code,
                            1000 * seconds, request_id)
        return response


_ROUTES = frozenset({"/predict", "/health", "/live", "/ready", "/metrics", "/metadata", "/shift", "/", "/docs",
                     "/openapi.json"})


def _key_matches(request: Request, key: bytes, compare: Callable[[bytes, bytes], bool]) -> bool:
    header = request.headers.get("authorization", "")
    given = header[7:].strip() if header[:7].lower() == "bearer " else request.headers.get("x-api-key", "")
    return compare(given.encode(), key)


def _add_error_handlers(app: FastAPI, state: dict[str, Any], log: Callable[[str], None]) -> None:
    """Every failure answers as JSON ``{"error": {...}}`` with the request ID; the 4xx ones are counted for
    /health. An unexpected error answers a generic 500: its details go to the log under the request ID only."""

    def error_response(request: Request, error: RequestError) -> JSONResponse:
        if error.status < 500:
            state["errors_4xx"] += 1
        body = error.body()
        body["error"]["request_id"] = getattr(request.state, "request_id", None)
        return JSONResponse(body, status_code=error.status, headers=error.headers)

    @app.exception_handler(RequestError)
    async def request_error(request: Request, error: RequestError) -> JSONResponse:
        return error_response(request, error)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', []))}: {e.get('msg')}" for e in error.errors())
        return error_response(request, RequestError(422, "invalid_parameter",
                                                    f"Invalid request parameters: {problems}.",
                                                    "See /docs for the parameters of this endpoint."))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return error_response(request, RequestError(
            error.status_code, code, str(error.detail),
            "Endpoints: POST /predict, GET /health, /live, /ready, /metrics, /metadata, /shift, /, /docs."))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        return internal_error(getattr(request.state, "request_id", None), error, log)


def internal_error(request_id: str | None, error: BaseException, log: Callable[[str], None]) -> JSONResponse:
    """The generic 500: nothing of the exception in the answer; its details go to the log under the request ID."""
    log(f"Internal error (request {request_id}): {type(error).__name__}: {error}")
    _ERROR_LOG.error("internal error, request %s", request_id, exc_info=error)
    body = {"error": {"status": 500, "code": "internal_error", "request_id": request_id,
                      "message": "The service failed on this request; the details are in its log under the"
                                 " request ID.",
                      "fix": "Retry; if it persists, report the request ID with the service's log."}}
    return JSONResponse(body, status_code=500)


def _request_body_schema(task: str) -> dict[str, Any]:
    """The OpenAPI description of /predict's body (FastAPI cannot infer it: the route reads the raw request)."""
    return {
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "properties": {
                ITEM_FIELDS[task][0]: {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
            "application/json": {"schema": {"type": "object", "properties": {
                ("texts" if task == "text" else {"image": "images", "audio": "audio"}[task]): {
                    "type": "array", "items": {"type": "string",
                                               "description": "text" if task == "text" else "base64 file"}}}}},
        },
        "required": True,
    }


def _add_predict_route(app: FastAPI, service: _Service) -> None:
    """``POST /predict``: read, parse and decode the items, then wait for their rows from the shared batches."""
    config, predictor, state, batcher = service.config, service.predictor, service.state, service.batcher

    @app.post("/predict", openapi_extra={"requestBody": _request_body_schema(predictor.task)},
              summary="Top-k labels and probabilities for each uploaded item")
    async def predict(request: Request, top_k: int = Query(default=service.metadata["top_k"], ge=1, le=10_000,
                      description="labels returned per item (at most the number of classes)")) -> JSONResponse:
        started = time.perf_counter()
        top_k = min(top_k, len(predictor.classes))
        if state["draining"]:
            raise busy("The service is shutting down.")
        admission = service.admission
        ticket = admission.ticket(_declared_length(request))
        state["decoding"] += 1
        entered = False
        try:
            try:
                body = await read_body(request, config, ticket)  # 503 as soon as its byte lane is full
                admission.enter()  # a work slot, or 503 at once
                entered = True
                loop = asyncio.get_running_loop()
                items = await parse_request(request, body, predictor, config, service.decode_pool)
                del body  # the items hold the bytes now: still counted on the ticket until they are decoded
                check_items(items, config)
                deadline = time.monotonic() + config.request_timeout
                decoded = await loop.run_in_executor(
                    service.decode_pool, functools.partial(decode_items, predictor, items, deadline=deadline,
                                                           max_request_pixels=config.max_request_pixels,
                                                           heavy=service.heavy))
                names = [name for name, _ in items]
                del items  # the raw bytes are not held while the request waits for its batch
            finally:
                state["decoding"] -= 1
                admission.release(ticket)
            decoded_at = time.perf_counter()
            try:
                probabilities = await asyncio.wait_for(batcher.submit(decoded), config.request_timeout)
            except (TimeoutError, asyncio.TimeoutError):
                raise RequestError(503, "prediction_timeout",
                                   f"The prediction took longer than {config.request_timeout:g} s: the service is"
                                   " overloaded.", "Retry after the Retry-After seconds, with fewer inputs, or raise"
                                   " the server's --request-timeout.", retry_after=1) from None
        finally:
            if entered:
                admission.leave()
        state["requests"] += 1
        predictions = []
        for name, row in zip(names, probabilities):
            top = top_labels(row, predictor.classes, top_k)
            predictions.append({"name": name, "label": top[0]["label"], "probability": top[0]["probability"],
                                "top_k": top})
        finished = time.perf_counter()
        return JSONResponse({"predictions": predictions, "backend": service.backend, "timing_ms": {
            "decode": round(1000 * (decoded_at - started), 2), "inference": round(1000 * (finished - decoded_at), 2),
            "total": round(1000 * (finished - started), 2)}})


def _declared_length(request: Request) -> int | None:
    try:
        return int(request.headers["content-length"])
    except (KeyError, ValueError):
        return None


def _add_status_routes(app: FastAPI, service: _Service) -> None:
    """``GET /health``, ``/shift``, ``/metadata`` and the page at ``/``."""
    predictor, state, batcher, metadata = service.predictor, service.state, service.batcher, service.metadata
    backend, embedding_log = service.backend, service.embedding_log

    @app.get("/live", summary="Liveness: the process answers (no API key needed)")
    async def live() -> Any:
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness: the model is loaded and the worker runs (no API key needed)")
    async def ready() -> Any:
        if batcher.failed() or state["draining"]:
            reason = "shutting down" if state["draining"] else "the inference worker stopped"
            return JSONResponse({"status": "not ready", "reason": reason}, status_code=503)
        return {"status": "ready"}

    @app.get("/metrics", summary="Prometheus metrics: requests, latency and batch-size histograms, queue depth")
    async def prometheus() -> Any:
        from fastapi.responses import PlainTextResponse

        return PlainTextResponse(service.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/health", summary="Liveness and counters")
    async def health() -> Any:
        if batcher.failed():
            return JSONResponse({"status": "failed", "reason": "the inference worker stopped"}, status_code=503)
        return {"status": "ok", "model": metadata["name"], "task": predictor.task, "backend": backend,
                "uptime_s": round(time.time() - state["started"], 1), "requests": state["requests"],
                "rejected_4xx": state["errors_4xx"], "refused_busy": service.admission.refused + service.heavy.refused,
                "batches": batcher.batches, "batched_items": batcher.items, "queue": batcher.queue.qsize(),
                "admitted": service.admission.requests}

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


def _log_access() -> None:
    """One line per request on stderr: client, method, path, status, milliseconds, request ID."""
    if not ACCESS_LOG.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        ACCESS_LOG.addHandler(handler)
    ACCESS_LOG.setLevel(logging.INFO)
    ACCESS_LOG.propagate = False


def app_from_environment() -> Any:
    """The app factory uvicorn's worker processes call (the config travels as JSON in an environment variable)."""
    config = ServeConfig(**json.loads(os.environ[CONFIG_ENV]))
    if os.environ.get(ACCESS_LOG_ENV) == "1":
        _log_access()
    if config.threads:
        import torch

        torch.set_num_threads(config.threads)
    return create_app(config)


def run_server(config: ServeConfig, *, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
               log_level: str = "warning", access_log: bool = True) -> None:
    """Serve until interrupted. The ONNX export (if any) is prepared once here, before workers start."""
    import uvicorn

    config.validate()
    if config.allowed_hosts is None:
        config.allowed_hosts = default_allowed_hosts(host)
    warning = exposure_warning(host, config.api_key)
    if warning:
        print(f"headstart: WARNING: {warning}", file=sys.stderr, flush=True)
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
    if access_log:
        _log_access()
        os.environ[ACCESS_LOG_ENV] = "1"  # for worker processes
    # uvicorn stops accepting on SIGTERM and waits drain_seconds for open requests; the lifespan then drains the queue
    options = {"host": host, "port": port, "log_level": log_level, "timeout_keep_alive": 5, "limit_concurrency": 1024,
               "http": NoDelayHttpProtocol, "timeout_graceful_shutdown": config.drain_seconds, "access_log": False}
    if workers == 1:
        uvicorn.run(create_app(config, predictor=predictor), **options)
        return
    del predictor  # each worker process loads its own
    os.environ[CONFIG_ENV] = json.dumps(asdict(config))  # each worker process rebuilds the app from it
    # Each worker imports torch and loads the bundle before it answers the supervisor's pings; uvicorn's default
    # 5 s health check killed and respawned them in a loop on a loaded 2-core machine (measured in CI).
    uvicorn.run("headstart.deploy.serve:app_from_environment", factory=True, workers=workers,
                timeout_worker_healthcheck=120, **options)
