"""Audio sources: decoding and resampling, every kind of bad file, folders, tables, patterns, group-safe splits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile

from headstart.data.audio import (
    AUDIO_EXTENSIONS,
    AudioDecodeError,
    AudioSamples,
    choose_clip_seconds,
    fit_length,
    group_from_pattern,
    group_split,
    inspect_audio,
    load_audio_dataset,
    looks_like_audio_data,
    read_audio,
    read_audio_table,
    samples_from_pattern,
    scan_audio_folder,
)
from headstart.errors import DataError, ParameterError

FSDD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "audio" / "fsdd"
FSDD_LABEL, FSDD_SPEAKER = r"^(\d+)_", r"^\d+_([^_]+)_"


def _tone(seconds: float = 0.5, rate: int = 8000, hz: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def _write(path: Path, wave: np.ndarray, rate: int = 8000, **kwargs: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, wave, rate, **kwargs)
    return path


def _peak_hz(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / rate)[np.argmax(spectrum)])


def test_read_audio_mixes_stereo_and_resamples(tmp_path: Path) -> None:
    left = _tone(1.0, 44100, 440.0, 0.6)
    stereo = np.stack([left, np.zeros_like(left)], axis=1)  # mean of the channels halves the amplitude
    wave = read_audio(_write(tmp_path / "stereo.wav", stereo, 44100, subtype="PCM_16"), sample_rate=16000)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - 16000) <= 1
    assert abs(_peak_hz(wave, 16000) - 440.0) < 3.0
    assert 0.25 < np.abs(wave[2000:-2000]).max() < 0.35
    assert np.abs(wave).max() <= 1.0
    with pytest.raises(ParameterError, match="sample_rate"):
        read_audio(tmp_path / "stereo.wav", sample_rate=0)


@pytest.mark.parametrize("suffix, kwargs", [(".flac", {}), (".ogg", {"subtype": "VORBIS"})])
def test_compressed_round_trip(tmp_path: Path, suffix: str, kwargs: dict) -> None:
    if suffix not in AUDIO_EXTENSIONS:
        pytest.skip(f"libsndfile here cannot read {suffix}")
    tone = _tone(0.5, 16000, 1000.0)
    wave = read_audio(_write(tmp_path / f"tone{suffix}", tone, 16000, **kwargs), sample_rate=16000)
    assert abs(len(wave) - len(tone)) <= 64
    assert abs(_peak_hz(wave, 16000) - 1000.0) < 5.0
    if suffix == ".flac":  # lossless at 16 bits
        assert np.max(np.abs(wave - tone)) < 1e-3


def test_bad_files_are_named_and_skipped(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    good = _write(tmp_path / "yes" / "good.wav", _tone())
    (tmp_path / "yes" / "noise.wav").write_bytes(rng.bytes(2000))
    (tmp_path / "yes" / "empty.wav").write_bytes(b"")
    _write(tmp_path / "yes" / "silent.wav", np.zeros(4000, np.float32))
    _write(tmp_path / "yes" / "short.wav", _tone(0.01))
    clipped_wave, nearly_clean = _tone(), _tone(hz=300.0)  # 4000 samples each
    clipped_wave[::50] = 1.0  # 80 samples = 2% at full scale: kept, with a warning
    nearly_clean[::200] = -1.0  # 20 samples = 0.5%: under the 1% threshold
    _write(tmp_path / "no" / "clipped.wav", clipped_wave)
    _write(tmp_path / "no" / "fine.wav", nearly_clean)
    (tmp_path / "no" / "notes.txt").write_text("not audio")
    assert inspect_audio(good)[1:] == (None, None)
    assert inspect_audio(tmp_path / "yes" / "short.wav")[1] == "too short (0.01 s)"
    assert inspect_audio(tmp_path / "yes" / "silent.wav")[1] == "silent"
    seconds, problem, warning = inspect_audio(tmp_path / "no" / "clipped.wav")
    assert problem is None and warning == "clipped (2.0% of samples at full scale)"
    assert inspect_audio(tmp_path / "no" / "fine.wav")[1:] == (None, None)
    assert seconds == pytest.approx(0.5)
    with pytest.raises(AudioDecodeError, match="noise.wav") as caught:
        read_audio(tmp_path / "yes" / "noise.wav", sample_rate=8000)
    assert "format" in caught.value.reason.lower()

    samples, skipped, notes = scan_audio_folder(tmp_path)
    reasons = {Path(s.path).name: s.reason for s in skipped}
    assert sorted(p.name for p in samples.paths) == ["clipped.wav", "fine.wav", "good.wav"]
    assert samples.classes == ["no", "yes"] and samples.class_counts() == {"no": 2, "yes": 1}
    assert "format" in reasons["noise.wav"].lower() and "empty" in reasons["empty.wav"]
    assert reasons["silent.wav"] == "silent" and reasons["short.wav"].startswith("too short")
    assert "not an audio type" in reasons["notes.txt"]
    assert samples.durations == pytest.approx([0.5, 0.5, 0.5])
    assert [n for n in notes if "clipped" in n] == ["1 files are clipped (>1% of samples at full scale): clipped.wav"]


def test_class_folder_errors(tmp_path: Path) -> None:
    _write(tmp_path / "flat" / "0_a_1.wav", _tone())
    with pytest.raises(DataError, match="label-pattern"):
        scan_audio_folder(tmp_path / "flat")
    _write(tmp_path / "two" / "a" / "x.wav", _tone())
    (tmp_path / "two" / "b").mkdir()
    (tmp_path / "two" / "b" / "bad.wav").write_bytes(b"RIFF nonsense")
    with pytest.raises(DataError, match=r"\['b'\]"):
        scan_audio_folder(tmp_path / "two")
    with pytest.raises(DataError, match="not in training data"):
        scan_audio_folder(tmp_path / "two", classes=["a"], role="val")


def test_table_with_relative_paths_and_missing_file(tmp_path: Path) -> None:
    for name in ("a.wav", "b.wav", "c.flac", "d.wav"):
        _write(tmp_path / "clips" / name, _tone(hz=200.0 + 100 * len(name)))
    rows = [("clips/a.wav", "cat", "s1"), ("clips/b.wav", "dog", "s2"), ("clips/c.flac", "cat", "s2"),
            ("clips/missing.wav", "dog", "s1"), (str(tmp_path / "clips" / "d.wav"), "dog", "s3")]
    (tmp_path / "meta.csv").write_text("Filename,Category,speaker\n" + "\n".join(",".join(r) for r in rows))
    samples, skipped, notes = read_audio_table(tmp_path / "meta.csv")
    assert [p.name for p in samples.paths] == ["a.wav", "b.wav", "c.flac", "d.wav"]
    assert all(p.is_file() for p in samples.paths)
    assert samples.classes == ["cat", "dog"] and samples.labels == [0, 1, 0, 1]
    assert samples.groups == ["s1", "s2", "s2", "s3"]
    assert len(skipped) == 1 and skipped[0].path.endswith("missing.wav") and "not found" in skipped[0].reason
    assert any("column 'speaker'" in n for n in notes)
    jsonl = tmp_path / "meta.jsonl"
    jsonl.write_text("\n".join(json.dumps({"clip": r[0], "digit": i % 2}) for i, r in enumerate(rows)))
    with pytest.raises(DataError, match=r"--path-col.*\['clip', 'digit'\]"):
        read_audio_table(jsonl)
    samples, _, _ = read_audio_table(jsonl, path_column="clip", label_column="digit")
    assert samples.classes == ["0", "1"] and len(samples) == 4
    assert looks_like_audio_data(tmp_path / "meta.csv") and looks_like_audio_data(tmp_path / "clips")
    assert not looks_like_audio_data(jsonl.parent / "nothing-here")


def test_group_from_pattern() -> None:
    assert group_from_pattern("3_george_12.wav", FSDD_SPEAKER) == "george"
    assert group_from_pattern(Path("x") / "9_yweweler_0.wav", FSDD_SPEAKER) == "yweweler"
    with pytest.raises(DataError, match="george.wav.*pattern"):
        group_from_pattern("george.wav", FSDD_SPEAKER)
    for bad in (r"^\d+_[^_]+_", r"^(\d+)_([^_]+)_", "(["):
        with pytest.raises(ParameterError):
            group_from_pattern("3_george_12.wav", bad)


@pytest.mark.parametrize("seed", range(6))
def test_group_split_keeps_groups_apart(seed: int) -> None:
    rng = np.random.default_rng(seed)
    groups = [f"g{i}" for i in rng.integers(0, 25, size=400)]
    labels = rng.integers(0, 4, size=400).tolist()
    keep, holdout = group_split(labels, groups, fraction=0.2, seed=seed)
    assert sorted(np.concatenate([keep, holdout]).tolist()) == list(range(400))
    assert not {groups[i] for i in keep} & {groups[i] for i in holdout}
    assert 0.1 < len(holdout) / 400 < 0.3
    assert set(np.asarray(labels)[keep]) == {0, 1, 2, 3}


def test_group_split_errors() -> None:
    with pytest.raises(DataError, match="at least 2"):
        group_split([0, 1, 0], ["a", "a", "a"], fraction=0.2, seed=0)
    with pytest.raises(ParameterError, match="fraction"):
        group_split([0, 1], ["a", "b"], fraction=1.5, seed=0)


def test_load_dataset_split_folders_and_leakage(tmp_path: Path) -> None:
    for split, speakers in (("train", ("ann", "bob", "cy")), ("valid", ("bob", "dee"))):
        for label, hz in (("up", 300.0), ("down", 600.0)):
            for speaker in speakers:
                _write(tmp_path / split / label / f"{speaker}_{label}.wav", _tone(hz=hz))
    splits = load_audio_dataset(tmp_path, group_pattern=r"^([a-z]+)_")
    assert splits.classes == ["down", "up"] and len(splits.train) == 6 and len(splits.val) == 4
    assert splits.split.startswith("given")
    assert any("leakage" in n and "bob" in n for n in splits.notes)
    summary = json.loads(json.dumps(splits.summary()))
    assert summary["groups"] == {"train": 3, "val": 2} and summary["val"] == {"down": 2, "up": 2}
    samples = AudioSamples.from_lists(splits.train.paths, ["down", "up", "up", "down", "up", "down"],
                                      groups=splits.train.groups)
    grouped = load_audio_dataset(samples, val_fraction=0.34)
    assert not set(grouped.train.groups) & set(grouped.val.groups) and grouped.split.startswith("grouped")
    stratified = load_audio_dataset(tmp_path / "train", val_fraction=0.34)  # no groups: stratified by class
    assert stratified.split.startswith("stratified") and stratified.val.class_counts() == {"down": 1, "up": 1}
    _write(tmp_path / "other" / "sideways" / "x.wav", _tone())
    _write(tmp_path / "other" / "up" / "y.wav", _tone())
    with pytest.raises(DataError, match="sideways"):
        load_audio_dataset(tmp_path / "train", test=tmp_path / "other")


def test_load_fsdd_by_pattern_with_speaker_split() -> None:
    if not (FSDD / "recordings").is_dir():
        pytest.skip(f"the FSDD recordings are not beside this checkout ({FSDD})")
    splits = load_audio_dataset(FSDD / "recordings", label_pattern=FSDD_LABEL, group_pattern=FSDD_SPEAKER)
    assert len(splits.train) + len(splits.val) == 3000 and not splits.skipped
    assert splits.classes == [str(d) for d in range(10)]
    train_speakers, val_speakers = set(splits.train.groups), set(splits.val.groups)
    assert not train_speakers & val_speakers and len(train_speakers | val_speakers) == 6
    assert all(count > 0 for count in splits.val.class_counts().values())
    assert 0.14 <= min(splits.train.durations) and max(splits.train.durations) <= 2.3
    assert any("no group in two splits" in n for n in splits.notes)
    clip = choose_clip_seconds(splits.train.durations)
    assert 0.5 <= clip <= 1.5 and round(clip * 10) == clip * 10


def test_samples_from_pattern_skips_non_matching(tmp_path: Path) -> None:
    for name in ("1_ann_0.wav", "1_bob_0.wav", "2_ann_0.wav", "readme_ann_.wav"):
        _write(tmp_path / name, _tone())
    samples, skipped, notes = samples_from_pattern(tmp_path, label_pattern=FSDD_LABEL, group_pattern=FSDD_SPEAKER)
    assert samples.classes == ["1", "2"] and samples.groups == ["ann", "bob", "ann"]
    assert [Path(s.path).name for s in skipped] == ["readme_ann_.wav"]
    assert notes[0].startswith("labels: 2 classes") and any("groups: 2" in n for n in notes)
    with pytest.raises(DataError, match="group pattern"):
        samples_from_pattern(tmp_path, label_pattern=FSDD_LABEL, group_pattern=r"_(zed)_")


def test_choose_clip_seconds() -> None:
    durations = [0.3] * 90 + [1.23] * 10
    assert choose_clip_seconds(durations, quantile=0.95) == pytest.approx(1.3)
    assert choose_clip_seconds(durations, quantile=0.5) == pytest.approx(0.5)  # at least 0.5 s
    assert choose_clip_seconds([42.0]) == pytest.approx(10.0)
    with pytest.raises(ParameterError):
        choose_clip_seconds([])


def test_fit_length_pads_and_crops() -> None:
    wave = np.arange(10, dtype=np.float32)
    padded = fit_length(wave, 14)
    assert padded.tolist() == list(range(10)) + [0, 0, 0, 0] and padded.dtype == np.float32
    assert fit_length(wave, 4).tolist() == [3, 4, 5, 6]
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(50):
        crop = fit_length(wave, 4, rng=rng)
        assert len(crop) == 4 and np.all(np.diff(crop) == 1) and 0 <= crop[0] <= 6
        starts.add(int(crop[0]))
    assert len(starts) > 3
    with pytest.raises(ParameterError):
        fit_length(wave, 0)
