"""Reading a prediction request: the body under size and time limits, parsed by content type, items decoded.

Accepted bodies: multipart uploads (fields named in :data:`ITEM_FIELDS`), JSON (base64 files or texts), a raw body
(``image/*``, ``audio/*``, ``application/octet-stream``) or ``text/plain`` for text models. Everything wrong with a
request becomes a :class:`RequestError`: the 4xx answer ``{"error": {"status", "code", "message", "fix"}}``, whose
message names the item at fault.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from headstart.deploy.predictor import Predictor
from headstart.deploy.serve.config import ServeConfig
from headstart.errors import HeadstartError

__all__ = ["ITEM_FIELDS", "RequestError", "Admission", "Ticket", "HeavyDecodes", "busy", "read_body", "parse_request", "check_items",
           "decode_items"]

_FORMATS = {"image": "a JPEG, PNG, WebP, GIF, BMP or TIFF file", "audio": "a WAV, FLAC, OGG or MP3 file",
            "text": "a non-empty string"}
ITEM_FIELDS = {"image": ("file", "files", "image", "images"), "audio": ("file", "files", "audio"),
               "text": ("text", "texts")}


class RequestError(Exception):
    """A 4xx answer (or 503 when the service is full): what was wrong with the request and how to fix it.

    ``retry_after`` (seconds) goes to the ``Retry-After`` header of a 503.
    """

    def __init__(self, status: int, code: str, message: str, fix: str, *, details: Any = None,
                 retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.fix, self.details = status, code, message, fix, details
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        return {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}

    def body(self) -> dict[str, Any]:
        error = {"status": self.status, "code": self.code, "message": self.message, "fix": self.fix}
        if self.details is not None:
            error["details"] = self.details
        return {"error": error}


def busy(message: str) -> RequestError:
    """The 503 a full service answers: the client should retry a little later."""
    return RequestError(503, "busy", message, "Retry after the Retry-After seconds; the service is at capacity.",
                        retry_after=1)


SMALL_BODY_BYTES = 2**20  # bodies up to this (declared) size are held in a lane of their own
SMALL_LANE_BYTES = 64 * 2**20


class Admission:
    """Bounds what the service holds for its requests: bodies' bytes while they arrive, then requests at work.

    Body bytes are counted as they arrive (:class:`Ticket`), in two lanes: bodies declared up to
    :data:`SMALL_BODY_BYTES` share :data:`SMALL_LANE_BYTES`, all others share ``max_bytes`` (so a flood of large
    uploads cannot starve ordinary requests). A request that would pass its lane is answered 503 at once. Once read,
    a request takes one of ``max_concurrent`` work slots (:meth:`enter`: decoding and inference) or gets 503.
    """

    def __init__(self, *, max_concurrent: int, max_bytes: int, small_lane_bytes: int = SMALL_LANE_BYTES) -> None:
        self.max_concurrent = max_concurrent
        self.limits = {"large": max_bytes, "small": small_lane_bytes}
        self.held = {"large": 0, "small": 0}
        self.requests = self.refused = 0

    @property
    def bytes(self) -> int:
        return self.held["large"] + self.held["small"]

    def ticket(self, declared: int | None) -> "Ticket":
        """A new request's share of the body lanes (by its declared Content-Length; none: the large lane)."""
        return Ticket(self, "small" if declared is not None and declared <= SMALL_BODY_BYTES else "large")

    def enter(self) -> None:
        """Take a work slot (503 when all ``max_concurrent`` are taken)."""
        if self.requests >= self.max_concurrent:
            self.refused += 1
            raise busy(f"The service is working on {self.requests} requests, its limit (--max-concurrent).")
        self.requests += 1

    def leave(self) -> None:
        self.requests -= 1

    def release(self, ticket: "Ticket") -> None:
        self.held[ticket.lane] -= ticket.held
        ticket.held = 0


class Ticket:
    """One request's body bytes in its :class:`Admission` lane."""

    def __init__(self, admission: Admission, lane: str) -> None:
        self.admission, self.lane, self.held = admission, lane, 0

    def hold(self, total: int) -> None:
        """Hold ``total`` body bytes for this request (503 when that passes its lane's limit)."""
        more = total - self.held
        if more <= 0:
            return
        admission = self.admission
        limit = admission.limits[self.lane]
        if admission.held[self.lane] + more > limit:
            admission.refused += 1
            raise busy(f"Requests being read hold {admission.held[self.lane]} body bytes; {more} more would pass the"
                       f" limit of {limit}" + (" (--max-inflight-bytes)." if self.lane == "large" else "."))
        admission.held[self.lane] += more
        self.held = total


class HeavyDecodes:
    """A CPU budget for decoding very large images (a 40-megapixel PNG costs about 0.5 s of a core).

    Images whose decode touches more than :data:`HEAVY_PIXELS` (JPEGs count at their draft-mode size) may use
    ``share`` of one core on average, from a bucket that holds at most ``burst`` seconds; one arriving while the
    bucket is empty is answered 503. Ordinary photos never wait for them.
    """

    def __init__(self, *, share: float = 0.25, burst: float = 2.0) -> None:
        import threading

        self.share, self.burst = share, burst
        self.tokens, self.updated = burst, time.monotonic()
        self.lock = threading.Lock()
        self.refused = 0

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.share)
        self.updated = now

    def admit(self, name: str) -> None:
        with self.lock:
            self._refill()
            if self.tokens <= 0:
                self.refused += 1
                raise busy(f"{name} is a very large image, and the share of the CPU for decoding those is in use.")

    def charge(self, seconds: float) -> None:
        with self.lock:
            self._refill()
            self.tokens -= seconds


HEAVY_PIXELS = 4_000_000


async def read_body(request: Any, config: ServeConfig, ticket: Ticket | None = None) -> bytes:
    """The whole request body, refused as soon as it passes ``max_upload_bytes`` or ``request_timeout``.

    The declared Content-Length is checked first, so an oversized upload is refused before it is read; the bytes
    are held on the request's ``ticket`` as they arrive (a slow client holds only what it has sent).

    Raises:
        RequestError: 400 (bad Content-Length), 408 (too slow), 413 (too large) or 503 (the service is full).
    """
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
            if ticket is not None:
                ticket.hold(total)
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


async def _parse_multipart(headers: Any, body: bytes, predictor: Predictor, config: ServeConfig
                           ) -> list[tuple[str, bytes | str]]:
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def stream() -> AsyncIterator[bytes]:
        yield body

    parser = MultiPartParser(headers, stream(), max_files=config.max_items, max_fields=config.max_items,
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


async def parse_request(request: Any, body: bytes, predictor: Predictor, config: ServeConfig,
                        executor: Any = None) -> list[tuple[str, bytes | str]]:
    """The request's items as (name, raw item) pairs, read the way its Content-Type says.

    Raises:
        RequestError: an empty or malformed body, unknown fields, or a Content-Type this model does not read (415).
    """
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    if not body:
        raise RequestError(400, "empty_body", "The request body is empty.",
                           "Send the input: multipart files (curl -F file=@FILE URL) or JSON.")
    loop = asyncio.get_running_loop()
    # parsing a large body is CPU work: it runs in ``executor`` (a thread), so the event loop keeps serving
    if media == "multipart/form-data":
        return await loop.run_in_executor(
            executor, lambda: asyncio.run(_parse_multipart(request.headers, body, predictor, config)))
    if media == "application/json":
        return await loop.run_in_executor(executor, _parse_json, body, predictor)
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


def check_items(items: list[tuple[str, bytes | str]], config: ServeConfig) -> None:
    """Refuse requests without items, with more than ``max_items``, or with a text over ``max_text_chars``."""
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


def _header_pixels(value: bytes, draft_size: int | None) -> tuple[int, int]:
    """An image's width x height from its header alone, and the pixels its decode touches (a JPEG decodes in draft
    mode at down to 1/8 of its size); ``(0, 0)`` when the header cannot be read: decoding says why."""
    from PIL import Image

    from headstart.data.images import IMAGE_FORMATS

    try:
        with Image.open(io.BytesIO(value), formats=IMAGE_FORMATS) as image:
            pixels = int(image.width) * int(image.height)
            if image.format == "JPEG" and draft_size:
                scale = min(8, max(1, min(image.width, image.height) // draft_size))
                return pixels, pixels // (scale * scale)
            return pixels, pixels
    except Exception:  # noqa: BLE001 - the decode that follows reports the item as unusable
        return 0, 0


def decode_items(predictor: Predictor, items: list[tuple[str, bytes | str]], *, deadline: float | None = None,
                 max_request_pixels: int | None = None, heavy: HeavyDecodes | None = None) -> list[Any]:
    """Every item decoded by the predictor; runs in a decoding thread, off the event loop.

    All items are tried, so one answer lists every unusable item (``details``), not just the first. Image requests
    whose images together pass ``max_request_pixels`` (read from their headers) are refused before any decoding;
    past ``deadline`` (``time.monotonic()``), the items not yet decoded are not started (503); very large images
    draw on ``heavy`` (503 when its CPU share is spent).

    Raises:
        RequestError: 413 when every failure is an oversized image or the request's pixels pass the budget, 503
            at the deadline, else 422.
    """
    touched = [0] * len(items)
    if predictor.task == "image":
        sizes = [_header_pixels(value, getattr(predictor, "_draft_size", None))
                 if isinstance(value, (bytes, bytearray)) else (0, 0) for _, value in items]
        touched = [decoded_pixels for _, decoded_pixels in sizes]
        pixels = sum(pixels for pixels, _ in sizes)
        if max_request_pixels is not None and pixels > max_request_pixels:
            raise RequestError(413, "request_too_many_pixels", f"The request's images hold {pixels} pixels together;"
                               f" this server decodes at most {max_request_pixels} per request.",
                               "Send fewer or smaller images per request, or raise --max-request-pixels.")
    decoded, errors = [], []
    for index, (name, value) in enumerate(items):
        if deadline is not None and time.monotonic() > deadline:
            raise busy(f"Decoding did not reach {name} in time: the service is overloaded.")
        heavy_image = heavy is not None and touched[index] > HEAVY_PIXELS
        if heavy_image:
            heavy.admit(name)
        started = time.perf_counter()
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
        finally:
            if heavy_image:
                heavy.charge(time.perf_counter() - started)
    if errors:
        too_big = all(e["too_large"] for e in errors)
        raise RequestError(413 if too_big else 422, "image_too_large" if too_big else "undecodable_input",
                           f"{len(errors)} of {len(items)} inputs cannot be used: "
                           + "; ".join(f"{e['name']}: {e['message']}" for e in errors[:5]),
                           errors[0]["fix"] or "Send valid files.", details=errors)
    return decoded
