"""One audio file (or upload) -> a float32 mono wave; the checks that make a file unusable; clip lengths.

Separate from the dataset readers because a deployed model decodes uploads with exactly these functions
(:func:`read_audio_bytes`, :func:`fit_length`) and never needs folders, tables or splits.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import soxr

from headstart.errors import DataError, ParameterError

__all__ = [
    "AUDIO_EXTENSIONS",
    "MIN_SECONDS",
    "MIN_SAMPLE_RATE",
    "MAX_SAMPLE_RATE",
    "MAX_CHANNELS",
    "MAX_SECONDS",
    "AudioDecodeError",
    "choose_clip_seconds",
    "fit_length",
    "inspect_audio",
    "read_audio",
    "read_audio_bytes",
]

_FORMAT_EXTENSIONS = {"WAV": {".wav"}, "WAVEX": {".wav"}, "FLAC": {".flac"}, "OGG": {".ogg", ".oga"},
                      "MP3": {".mp3"}, "AIFF": {".aiff", ".aif", ".aifc"}, "AU": {".au"}, "CAF": {".caf"},
                      "W64": {".w64"}, "RF64": {".rf64"}}
_FORMATS = soundfile.available_formats()
AUDIO_EXTENSIONS: frozenset[str] = frozenset(
    {ext for name, exts in _FORMAT_EXTENSIONS.items() if name in _FORMATS for ext in exts}
    | ({".opus"} if "OGG" in _FORMATS and "OPUS" in soundfile.available_subtypes("OGG") else set())
)
MIN_SECONDS = 0.05
# A file's header is read before any sample, and what it claims must lie inside these limits: a header claiming
# 1 Hz would make resampling to 16 kHz allocate thousands of times the decoded size (a decode bomb).
MIN_SAMPLE_RATE = 1_000
MAX_SAMPLE_RATE = 768_000
MAX_CHANNELS = 64
MAX_SECONDS = 600.0  # whole-file reads; a windowed read (prediction) decodes only the window, whatever the length
_WINDOW_MARGIN_SECONDS = 0.1  # read beyond the window on each side, so the resampler's edges fall outside it
_SILENT_PEAK = 1e-4
_FULL_SCALE = 0.999
_CLIPPED_SHARE = 0.01


class AudioDecodeError(DataError):
    """One file could not be used as audio; ``reason`` says why in a few words."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"Cannot use {path} as audio: {reason}.",
                         fix="Remove or replace the file; headstart skips such files when loading a dataset.")


def read_audio(path: str | os.PathLike[str], *, sample_rate: int, window_seconds: float | None = None) -> np.ndarray:
    """Decode a file into float32 mono samples in [-1, 1] at ``sample_rate`` Hz (channels averaged, soxr HQ).

    The header is checked first (rate, channels, duration within :data:`MIN_SAMPLE_RATE`..:data:`MAX_SAMPLE_RATE`,
    :data:`MAX_CHANNELS`, :data:`MAX_SECONDS`). With ``window_seconds`` only the centre window (and a 0.1 s margin
    each side) is decoded: what a centre crop of that length needs, at a cost independent of the file's length.

    Raises:
        ParameterError: ``sample_rate`` is not a positive integer.
        AudioDecodeError: the file is empty, not audio, truncated, holds no frames or non-finite samples, or its
            header is outside the limits.
    """
    _check_rate(sample_rate)
    path = Path(path)
    try:
        empty = path.stat().st_size == 0
    except OSError as error:
        raise AudioDecodeError(path, _library_reason(error)) from None
    if empty:
        raise AudioDecodeError(path, "the file is empty (0 bytes)")
    return _decode_audio(path, name=path, sample_rate=sample_rate, window_seconds=window_seconds)


def read_audio_bytes(data: bytes, *, name: str = "upload", sample_rate: int,
                     window_seconds: float | None = None) -> np.ndarray:
    """Decode audio held in memory (an upload) exactly like :func:`read_audio` decodes a file.

    Raises:
        AudioDecodeError: the bytes are empty or not decodable audio (the message names ``name``).
    """
    _check_rate(sample_rate)
    if not data:
        raise AudioDecodeError(name, "it is empty (0 bytes)")
    return _decode_audio(io.BytesIO(data), name=name, sample_rate=sample_rate, window_seconds=window_seconds)


def _check_rate(sample_rate: Any) -> None:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise ParameterError(f"The 'sample_rate' parameter must be a positive integer (Hz). Got {sample_rate!r}.",
                             fix="Pass sample_rate=16000, for example.")


def header_problem(rate: int, channels: int) -> str | None:
    """Why a header's sample rate or channel count is refused (None: within the limits)."""
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        return (f"its header claims a sample rate of {rate} Hz, outside the {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz"
                " headstart reads")
    if not 1 <= channels <= MAX_CHANNELS:
        return f"its header claims {channels} channels (headstart reads 1 to {MAX_CHANNELS})"
    return None


def _decode_audio(source: Path | io.BytesIO, *, name: str | Path, sample_rate: int,
                  window_seconds: float | None = None) -> np.ndarray:
    try:
        with soundfile.SoundFile(source) as audio:
            rate, channels, frames = int(audio.samplerate), int(audio.channels), int(audio.frames)
            problem = header_problem(rate, channels)
            if problem:
                raise AudioDecodeError(name, problem)
            span = _centre_span(frames, rate, sample_rate, window_seconds) if audio.seekable() else None
            if span is not None:
                first, count, crop = span
                audio.seek(first)
                data = audio.read(count, dtype="float32", always_2d=True)
            else:
                limit = int(MAX_SECONDS * rate)
                if frames > limit:
                    raise AudioDecodeError(name, f"it lasts {frames / rate:.0f} s, longer than the {MAX_SECONDS:.0f} s"
                                                 " headstart reads whole (split it into shorter clips)")
                data = audio.read(limit + 1, dtype="float32", always_2d=True)  # a header may understate its length
                if data.shape[0] > limit:
                    raise AudioDecodeError(name, f"it decodes to more than {MAX_SECONDS:.0f} s (split it into"
                                                 " shorter clips)")
    except AudioDecodeError:
        raise
    except (soundfile.LibsndfileError, RuntimeError, OSError, ValueError, EOFError, TypeError) as error:
        raise AudioDecodeError(name, _library_reason(error)) from None
    if data.shape[0] == 0:
        raise AudioDecodeError(name, "it holds no audio frames")
    if not np.isfinite(data).all():
        raise AudioDecodeError(name, "it holds NaN or infinite samples")
    wave = data.mean(axis=1)
    if rate != sample_rate:
        wave = soxr.resample(wave, rate, int(sample_rate), quality="HQ")
    if span is not None:
        wave = wave[crop[0]:crop[1]]
    return np.clip(wave, -1.0, 1.0).astype(np.float32, copy=False)


def _centre_span(frames: int, rate: int, target: int, window_seconds: float | None
                 ) -> tuple[int, int, tuple[int, int]] | None:
    """What to decode for the centre ``window_seconds`` of a ``frames``-long file: ``(first frame, frame count,
    (start, stop) in the resampled read)``, chosen so the result equals the centre crop of the whole file resampled
    (exactly at equal rates; near the edges, within the resampler's filter, otherwise). None: read it whole."""
    if window_seconds is None or frames <= 0:
        return None
    window = int(round(float(window_seconds) * target))
    whole = frames if rate == target else int(round(frames * target / rate))  # soxr's output length
    if whole <= window + 1:
        return None
    start = (whole - window) // 2  # fit_length's centre crop, in the resampled timeline
    step = rate // math.gcd(rate, target)  # source frames that map to a whole number of output samples
    out_step = target // math.gcd(rate, target)
    margin = 0 if rate == target else int(math.ceil(_WINDOW_MARGIN_SECONDS * target))
    first = max(0, (start - margin) * rate // target) // step * step
    offset = first // step * out_step  # the output index of the first frame read
    last = min(frames, int(math.ceil((start + window + margin) * rate / target)) + step)
    return first, last - first, (start - offset, start - offset + window)


def _library_reason(error: BaseException) -> str:
    detail = (getattr(error, "error_string", "") or str(error) or type(error).__name__).strip().rstrip(".")
    if isinstance(error, FileNotFoundError):
        return "file not found"
    if "Format not recognised" in detail or "unknown format" in detail.lower():
        return f"not an audio format libsndfile can read ({detail})"
    return detail


def inspect_audio(path: str | os.PathLike[str]) -> tuple[float, str | None, str | None]:
    """Check one file without resampling: its duration, a problem that makes it unusable, and a warning.

    Returns:
        ``(seconds, problem, warning)``: problem is e.g. ``"too short (0.01 s)"`` or ``"silent"``; warning is
        e.g. ``"clipped (4.2% of samples at full scale)"``. Both are None for a good file.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return 0.0, "the file is empty (0 bytes)", None
        with soundfile.SoundFile(path) as audio:
            frames, rate = audio.frames, audio.samplerate
            seconds = frames / rate if rate else 0.0
            problem = header_problem(int(rate), int(audio.channels))
            if problem:
                return seconds, problem, None
            if seconds > MAX_SECONDS:
                return seconds, f"longer than {MAX_SECONDS:.0f} s ({seconds:.0f} s; split it into shorter clips)", None
            if frames <= 0:
                return 0.0, "too short (no audio frames)", None
            if seconds < MIN_SECONDS:
                return seconds, f"too short ({seconds:.2f} s)", None
            peak, clipped, total = 0.0, 0, 0
            for block in audio.blocks(blocksize=1 << 18, dtype="float32", always_2d=True):
                magnitude = np.abs(block)
                if not np.isfinite(magnitude).all():
                    return seconds, "it holds NaN or infinite samples", None
                peak = max(peak, float(magnitude.max(initial=0.0)))
                clipped += int(np.count_nonzero(magnitude >= _FULL_SCALE))
                total += magnitude.size
    except (soundfile.LibsndfileError, RuntimeError, OSError, ValueError, EOFError) as error:
        return 0.0, _library_reason(error), None
    if total == 0:
        return seconds, "too short (no audio frames could be decoded)", None
    if peak < _SILENT_PEAK:
        return seconds, "silent", None
    share = clipped / total
    warning = f"clipped ({share:.1%} of samples at full scale)" if share > _CLIPPED_SHARE else None
    return seconds, None, warning


def choose_clip_seconds(durations: Sequence[float], *, quantile: float = 0.95, max_seconds: float = 10.0) -> float:
    """A clip length covering ``quantile`` of the clips, rounded up to 0.1 s, at least 0.5 s, at most ``max_seconds``.

    >>> choose_clip_seconds([0.3, 0.41, 0.62, 0.8], quantile=1.0)
    0.8
    >>> choose_clip_seconds([30.0], max_seconds=10.0)
    10.0

    Raises:
        ParameterError: no durations, or ``quantile``/``max_seconds`` out of range.
    """
    if len(durations) == 0:
        raise ParameterError("choose_clip_seconds needs at least one duration. Got none.", fix="Pass the clip lengths.")
    if not 0.0 < quantile <= 1.0 or max_seconds <= 0:
        raise ParameterError(f"'quantile' must be in (0, 1] and 'max_seconds' > 0. Got {quantile!r} and {max_seconds!r}.",
                             fix="Pass quantile=0.95, max_seconds=10.0, for example.")
    covered = float(np.quantile(np.asarray(durations, dtype=np.float64), quantile))
    rounded = math.ceil(round(covered * 10, 6)) / 10
    return round(min(max(rounded, 0.5), float(max_seconds)), 3)


def fit_length(wave: np.ndarray, n_samples: int, *, rng: np.random.Generator | None = None) -> np.ndarray:
    """Zero-pad at the end or crop a 1-D wave to ``n_samples``: a centre crop, or a random one when ``rng`` is given.

    >>> fit_length(np.arange(5.0), 3).tolist(), fit_length(np.ones(2), 4).tolist()
    ([1.0, 2.0, 3.0], [1.0, 1.0, 0.0, 0.0])

    Raises:
        ParameterError: ``n_samples`` < 1 or ``wave`` is not 1-D.
    """
    wave = np.asarray(wave)
    if wave.ndim != 1 or int(n_samples) < 1:
        raise ParameterError(f"fit_length needs a 1-D wave and n_samples >= 1. Got shape {wave.shape} and "
                             f"n_samples={n_samples!r}.", fix="Mix to mono first and pass a positive length.")
    extra = len(wave) - int(n_samples)
    if extra <= 0:
        return np.pad(wave, (0, -extra))
    start = extra // 2 if rng is None else int(rng.integers(0, extra + 1))
    return wave[start:start + int(n_samples)]
