"""Decode bombs and unwanted formats are refused from the header, before the costly work (issue 19)."""

from __future__ import annotations

import io
import struct
import time
import tracemalloc

import numpy as np
import pytest
import soundfile
from PIL import Image

from headstart.data.audio import AudioDecodeError, fit_length, read_audio, read_audio_bytes
from headstart.data.audio.waves import MAX_SECONDS
from headstart.data.images import IMAGE_FORMATS, ImageDecodeError, load_image_bytes


def wav_bytes(*, rate: int, channels: int = 1, frames: int = 16_000) -> bytes:
    """A PCM-16 WAV whose header says ``rate`` and ``channels`` (hand-built: a library would refuse to write it)."""
    data = np.zeros(frames * channels, dtype="<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * channels * 2, channels * 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def test_a_header_claiming_one_hertz_is_refused_before_resampling() -> None:
    bomb = wav_bytes(rate=1, frames=16_000)  # 4.4 hours "long": resampled to 16 kHz it would be 1 GB of floats
    with soundfile.SoundFile(io.BytesIO(bomb)) as audio:
        assert audio.samplerate == 1 and audio.frames == 16_000  # libsndfile itself accepts the header
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(AudioDecodeError, match="sample rate of 1 Hz"):
        read_audio_bytes(bomb, name="bomb.wav", sample_rate=16_000)
    seconds, (_, peak) = time.perf_counter() - started, tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert seconds < 1.0 and peak < 20e6


def test_too_many_channels_are_refused() -> None:
    with pytest.raises(AudioDecodeError, match="channels"):
        read_audio_bytes(wav_bytes(rate=16_000, channels=100, frames=10), name="wide.wav", sample_rate=16_000)


@pytest.fixture(scope="module")
def long_silence(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """Twenty minutes of FLAC silence: a few hundred KB that decode to 38 MB of float32."""
    path = tmp_path_factory.mktemp("silence") / "silence.flac"
    rate = 16_000
    with soundfile.SoundFile(path, "w", samplerate=rate, channels=1, format="FLAC") as audio:
        block = np.zeros(rate * 60, dtype="float32")
        for _ in range(20):
            audio.write(block)
    return path.read_bytes()


def test_long_compressed_silence_is_refused_whole_and_cheap_as_a_window(long_silence: bytes, tmp_path) -> None:
    assert len(long_silence) < 2e6
    with pytest.raises(AudioDecodeError, match=f"longer than the {MAX_SECONDS:.0f} s"):
        read_audio_bytes(long_silence, name="silence.flac", sample_rate=16_000)
    tracemalloc.start()
    wave = read_audio_bytes(long_silence, name="silence.flac", sample_rate=16_000, window_seconds=1.0)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert 16_000 <= len(wave) <= 16_000 * 1.3 and peak < 10e6  # the window, not the 20 minutes


@pytest.mark.parametrize("rate", [16_000, 8_000, 22_050, 48_000])
def test_a_window_read_gives_the_centre_crop_of_the_whole_read(tmp_path, rate: int) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "tone.wav"
    seconds = np.arange(int(rate * 7.3)) / rate
    soundfile.write(path, (0.3 * np.sin(2 * np.pi * 440 * seconds) + 0.01 * rng.standard_normal(len(seconds))),
                    rate)
    clip = 16_000 * 2  # 2 s at the model's 16 kHz
    whole = fit_length(read_audio(path, sample_rate=16_000), clip)
    window = fit_length(read_audio(path, sample_rate=16_000, window_seconds=2.0), clip)
    if rate == 16_000:
        np.testing.assert_array_equal(window, whole)  # no resampling: the same samples exactly
    else:
        assert np.abs(window - whole).max() < 1e-5  # read from a frame on the resampling grid, with a margin


EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\n"
       b"newpath 0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n")


def test_formats_outside_the_list_are_never_opened() -> None:
    with Image.open(io.BytesIO(EPS)) as image:  # Pillow alone takes it (and would run Ghostscript to load it)
        assert image.format == "EPS"
    with pytest.raises(ImageDecodeError, match="not an image format headstart reads"):
        load_image_bytes(EPS, name="drawing.eps")
    for name in ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF"):
        assert name in IMAGE_FORMATS
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 30)).save(buffer, format="WEBP", lossless=True)
    assert load_image_bytes(buffer.getvalue(), name="ok.webp").getpixel((0, 0)) == (10, 200, 30)
