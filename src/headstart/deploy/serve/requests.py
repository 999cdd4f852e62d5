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
import json
from collections.abc import AsyncIterator
from typing import Any

from headstart.deploy.predictor import Predictor
from headstart.deploy.serve.config import ServeConfig
from headstart.errors import HeadstartError

__all__ = ["ITEM_FIELDS", "RequestError", "read_body", "parse_request", "check_items", "decode_items"]

_FORMATS = {"image": "a JPEG, PNG, WebP, GIF, BMP or TIFF file", "audio": "a WAV, FLAC, OGG or MP3 file",
            "text": "a non-empty string"}
ITEM_FIELDS = {"image": ("file", "files", "image", "images"), "audio": ("file", "files", "audio"),
               "text": ("text", "texts")}


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


async def read_body(request: Any, config: ServeConfig) -> bytes:
    """The whole request body, refused as soon as it passes ``max_upload_bytes`` or ``request_timeout``.

    The declared Content-Length is checked first, so an oversized upload is refused before it is read.

    Raises:
        RequestError: 400 (bad Content-Length), 408 (too slow) or 413 (too large).
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


async def parse_request(request: Any, body: bytes, predictor: Predictor, config: ServeConfig
                        ) -> list[tuple[str, bytes | str]]:
    """The request's items as (name, raw item) pairs, read the way its Content-Type says.

    Raises:
        RequestError: an empty or malformed body, unknown fields, or a Content-Type this model does not read (415).
    """
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


def decode_items(predictor: Predictor, items: list[tuple[str, bytes | str]]) -> list[Any]:
    """Every item decoded by the predictor; runs in a decoding thread, off the event loop.

    All items are tried, so one answer lists every unusable item (``details``), not just the first.

    Raises:
        RequestError: 413 when every failure is an oversized image, else 422.
    """
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

