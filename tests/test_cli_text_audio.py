"""Text and audio through the command line: detection, train, predict, evaluate, compare and rank."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from headstart.cli import app
from headstart.tasks import detect_task

runner = CliRunner()
POSITIVE = ["great", "excellent", "wonderful", "superb", "delightful"]
NEGATIVE = ["awful", "terrible", "boring", "dreadful", "dull"]
FILLER = ["the", "film", "was", "a", "story", "plot", "and", "acting", "movie", "really"]
TINY_AUDIO = ["--backbone", "logmel:timm:test_efficientnet", "--weights", "random", "--image-size", "64",
              "--batch-size", "8", "--no-calibrate"]


@pytest.fixture(autouse=True)
def _one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add overhead
    yield
    torch.set_num_threads(previous)


def _write_table(path: Path, n_per_class: int, seed: int, *, header: str = "review,sentiment") -> Path:
    rng = random.Random(seed)
    lines = [header]
    for label, words in (("pos", POSITIVE), ("neg", NEGATIVE)):
        for _ in range(n_per_class):
            tokens = [rng.choice(FILLER) for _ in range(4)] + [rng.choice(words) for _ in range(3)]
            rng.shuffle(tokens)
            lines.append(f"{' '.join(tokens)},{label}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def text_run(tmp_path: Path, tiny_bert: Path) -> Path:
    train = _write_table(tmp_path / "train.csv", 40, seed=1)
    val = _write_table(tmp_path / "val.csv", 10, seed=2)
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", str(train), "--val", str(val), "--out", str(run), "--backbone",
                                 str(tiny_bert), "--batch-size", "8", "--cache-dir", "off", "--quiet"])
    assert result.exit_code == 0, result.output
    return run


def test_detect_task(shared_data: Path, sample_dir: Path) -> None:
    assert detect_task(shared_data / "text" / "sst2") == "text"
    assert detect_task(shared_data / "text" / "sst2" / "sst2_dev.tsv") == "text"
    assert detect_task(shared_data / "audio" / "fsdd" / "recordings") == "audio"
    assert detect_task(sample_dir) == "image"


def test_cli_trains_text_and_predicts_texts_files_and_stdin(text_run: Path, tmp_path: Path) -> None:
    assert (text_run / "model" / "encoder" / "tokenizer.json").is_file()
    config = json.loads((text_run / "model" / "config.json").read_text())
    assert config["task"] == "text_classification" and config["classes"] == ["neg", "pos"]
    lines = tmp_path / "lines.txt"
    lines.write_text("a wonderful superb film\n\nboring dull and dreadful plot\n", encoding="utf-8")
    result = runner.invoke(app, ["predict", str(text_run / "model"), "great excellent acting", str(lines), "-",
                                 "--json", "--top-k", "1"], input="terrible awful movie\n")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert [r["text"] for r in rows] == ["great excellent acting", "a wonderful superb film",
                                         "boring dull and dreadful plot", "terrible awful movie"]
    assert [r["top_k"][0]["label"] for r in rows] == ["pos", "pos", "neg", "neg"]


def test_cli_evaluates_a_text_model_on_a_table(text_run: Path, tmp_path: Path) -> None:
    test = _write_table(tmp_path / "test.csv", 10, seed=3)
    result = runner.invoke(app, ["evaluate", str(text_run / "model"), str(test), "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["n_samples"] == 20 and metrics["accuracy"]["value"] >= 0.8


def test_cli_ambiguous_text_columns_name_the_fix(tmp_path: Path, tiny_bert: Path) -> None:
    table = _write_table(tmp_path / "t.csv", 10, seed=1, header="text,title")
    result = runner.invoke(app, ["train", str(table), "--task", "text", "--out", str(tmp_path / "r"),
                                 "--backbone", str(tiny_bert)])
    assert result.exit_code == 2
    assert "--text-col" in result.output and "title" in result.output
    assert "Traceback" not in result.output


def test_cli_compare_and_rank_on_text(tmp_path: Path, tiny_bert: Path) -> None:
    table = _write_table(tmp_path / "all.csv", 24, seed=4)
    out = tmp_path / "cmp"
    result = runner.invoke(app, ["compare", str(table), "--candidates", "linear,logistic", "--folds", "2",
                                 "--backbone", str(tiny_bert), "--cache-dir", str(tmp_path / "cache"), "--out",
                                 str(out)])
    assert result.exit_code == 0, result.output
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["task"] == "text"
    assert [c["name"] for c in comparison["candidates"]] == ["linear", "logistic"]
    assert all(len(c["runs"]) == 2 and 0 <= c["accuracy"] <= 1 for c in comparison["candidates"])
    ranking = tmp_path / "rank.json"
    result = runner.invoke(app, ["rank", str(table), "--backbones", f"{tiny_bert},{tiny_bert.parent}",
                                 "--cache-dir", str(tmp_path / "cache"), "--out", str(ranking)])
    assert result.exit_code == 0, result.output
    scores = {s["name"]: s for s in json.loads(ranking.read_text())}
    assert scores[str(tiny_bert)]["error"] is None and scores[str(tiny_bert)]["dim"] == 32
    assert "config.json" in scores[str(tiny_bert.parent)]["error"]  # not a model folder: listed with the reason


def test_cli_trains_audio_from_a_flat_folder_and_lists_bad_files(shared_data: Path, tmp_path: Path) -> None:
    source = shared_data / "audio" / "fsdd" / "recordings"
    folder = tmp_path / "clips"
    folder.mkdir()
    for digit in (0, 1):
        for speaker in ("george", "jackson", "lucas"):
            for take in range(6):
                name = f"{digit}_{speaker}_{take}.wav"
                shutil.copy(source / name, folder / name)
    (folder / "1_lucas_99.wav").write_bytes(b"RIFF not really audio")
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", str(folder), "--out", str(run), "--label-pattern", r"^(\d+)_",
                                 "--group-pattern", r"^\d+_([^_]+)_", "--cache-dir", "off", "--quiet", *TINY_AUDIO])
    assert result.exit_code == 0, result.output
    data = json.loads((run / "data.json").read_text())
    assert any("1_lucas_99.wav" in s["path"] for s in data["skipped"])
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["task"] == "audio_classification" and config["sample_rate"] == 8000
    result = runner.invoke(app, ["predict", str(run / "model"), str(folder), "--json", "--top-k", "2"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert len(rows) == 36 and all(len(r["top_k"]) == 2 for r in rows)
    assert "Skipped 1 file" in result.output  # the unreadable file is listed, not fatal
    assert "1_lucas_99.wav" in "".join(result.output.split())  # (rich may wrap the long path)
