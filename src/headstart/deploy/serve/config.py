"""What the HTTP service is configured with: one dataclass, checked before the service starts.

The CLI options of ``headstart serve`` map one to one onto :class:`ServeConfig`; ``run_server`` sends it as JSON to
each worker process, so it holds plain values only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from headstart.errors import ParameterError, check_choice

__all__ = ["ServeConfig", "BACKENDS", "MAX_LOGGED_EMBEDDINGS"]

BACKENDS = ("auto", "onnxruntime", "torch")
MAX_LOGGED_EMBEDDINGS = 100_000


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
        max_concurrent: prediction requests at work at once (read, being decoded or predicted); one more is
            answered 503 with ``Retry-After`` at once.
        max_inflight_bytes: body bytes that requests being read may hold together, counted as they arrive
            (bodies declared up to 1 MiB have a 64 MiB lane of their own); a request that would pass it: 503.
        max_request_pixels: image pixels (width x height, summed over a request's images, from their headers)
            decoded for one request; more: 413 before any is decoded.
        api_key: when set, every endpoint but ``/live`` and ``/ready`` needs ``Authorization: Bearer KEY`` (or
            ``X-API-Key: KEY``); 401 otherwise.
        allowed_hosts: Host header values accepted (DNS-rebinding guard; 400 otherwise); ``["*"]`` accepts any.
            Default: the names of the interface served on (localhost names for 127.0.0.1).
        cors_origins: origins allowed to call the service from a browser page (none by default).
        drain_seconds: on shutdown, how long requests already admitted may take to finish.
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
    max_concurrent: int = 32
    max_inflight_bytes: int = 128 * 2**20
    max_request_pixels: int = 120_000_000
    api_key: str | None = field(default=None, repr=False)
    allowed_hosts: list[str] | None = None
    cors_origins: list[str] = field(default_factory=list)
    drain_seconds: float = 10.0
    export_dir: str | None = field(default=None, repr=False)

    def validate(self) -> None:
        """Refuse unusable options before anything is loaded.

        Raises:
            ParameterError: an unknown backend, a limit that is not positive, or a bad ``log_embeddings``.
        """
        check_choice("serve", "backend", self.backend, BACKENDS)
        positive = {"max_upload_bytes": self.max_upload_bytes, "max_image_pixels": self.max_image_pixels,
                    "max_items": self.max_items, "max_text_chars": self.max_text_chars, "max_batch": self.max_batch,
                    "top_k": self.top_k, "request_timeout": self.request_timeout,
                    "max_concurrent": self.max_concurrent, "max_inflight_bytes": self.max_inflight_bytes,
                    "max_request_pixels": self.max_request_pixels, "drain_seconds": self.drain_seconds}
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
        if self.api_key is not None and (not isinstance(self.api_key, str) or len(self.api_key) < 16
                                         or not self.api_key.isprintable() or " " in self.api_key):
            raise ParameterError("The API key must be at least 16 printable characters without spaces.",
                                 fix="Generate one: python -c 'import secrets; print(secrets.token_urlsafe(32))'.")
        if self.max_inflight_bytes < self.max_upload_bytes:
            raise ParameterError(f"max_inflight_bytes ({self.max_inflight_bytes}) is below max_upload_bytes"
                                 f" ({self.max_upload_bytes}): the largest allowed request could never be admitted.",
                                 fix="Raise --max-inflight-bytes or lower --max-upload-bytes.")
        if not isinstance(self.batch_window_ms, (int, float)) or self.batch_window_ms < 0:
            raise ParameterError(f"The 'batch_window_ms' option must be >= 0. Got {self.batch_window_ms!r}.",
                                 fix="Pass --batch-window-ms 4 (or 0 to never wait).")
