"""The command line through typer's runner: each command, and errors printed without tracebacks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from headstart.cli import app

from conftest import TINY_BACKBONE

runner = CliRunner()
TINY = ["--backbone", TINY_BACKBONE, "--weights", "random", "--image-size", "64", "--batch-size", "8", "--quiet"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> Path:
    run = tmp_path_factory.mktemp("cli") / "run"
    result = runner.invoke(app, ["train", str(sample_dir), "--out", str(run), "--epochs", "2", *TINY])
    assert result.exit_code == 0, result.output
    return run


def test_train_writes_model_and_metrics(trained_run: Path) -> None:
    assert (trained_run / "model" / "model.safetensors").is_file()
    assert json.loads((trained_run / "metrics.json").read_text())["strategy"] == "linear_probe"  # 32 images -> auto


def test_train_refuses_to_overwrite_a_run(trained_run: Path, sample_dir: Path) -> None:
    result = runner.invoke(app, ["train", str(sample_dir), "--out", str(trained_run), *TINY])
    assert result.exit_code == 2
    assert "already holds a run" in result.output and "--resume" in result.output
    # CliRunner catches exceptions into result.exception (they never reach result.output): only a clean exit is ok
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output


def test_evaluate_writes_metrics_and_figure(trained_run: Path, sample_dir: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["evaluate", str(trained_run / "model"), str(sample_dir / "test"), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["n_samples"] == 12 and "ci95" in metrics["accuracy"]
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 1000
    assert len(json.loads((tmp_path / "predictions.json").read_text())) == 12


def test_predict_files_and_folders_with_top_k(trained_run: Path, sample_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    shutil.copytree(sample_dir / "test" / "ants", folder)
    (folder / "broken.jpg").write_bytes(b"nope")
    one = next((sample_dir / "test" / "bees").glob("*.jpg"))
    result = runner.invoke(app, ["predict", str(trained_run / "model"), str(one), str(folder), "--top-k", "2", "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 7 and all(len(r["top_k"]) == 2 for r in rows)
    assert all(abs(sum(t["probability"] for t in r["top_k"]) - 1) < 1e-4 for r in rows)
    assert "broken.jpg" in result.output  # listed as skipped


def test_errors_are_messages_not_tracebacks(
    tmp_path: Path, sample_dir: Path, empty_weight_caches: tuple[Path, Path]
) -> None:
    cases = [
        ["train", str(tmp_path / "missing"), *TINY],
        ["train", str(sample_dir), "--strategy", "finetune", "--out", str(tmp_path / "x"), *TINY],
        ["evaluate", str(tmp_path), str(sample_dir / "test")],
        ["predict", str(tmp_path), str(sample_dir)],
        ["train", str(sample_dir), "--backbone", "vgg16", "--out", str(tmp_path / "y"), "--quiet"],
    ]
    for args in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert "Error:" in result.output and "Fix:" in result.output, result.output
        # CliRunner catches exceptions into result.exception (they never reach result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit), (args, repr(result.exception))
        assert "Traceback" not in result.output


def test_backbones_lists_every_family_and_availability(empty_weight_caches: tuple[Path, Path]) -> None:
    result = runner.invoke(app, ["backbones"])
    assert result.exit_code == 0, result.output
    for name in ("efficientnet_lite0", "vgg16", "resnet50", "mobilenetv3_large", "densenet121", "inception_v3",
                 "nasnet_large"):
        assert name in result.output
    rows = {line.split()[0]: line for line in result.output.splitlines() if line.strip()}
    assert "package" in rows["efficientnet_lite0"]  # lite0 weights come from the installed package
    assert "missing" in rows["vgg16"]  # offline, with an empty cache
    assert "138.4M" in rows["vgg16"] and "331px" in rows["nasnet_large"]


def test_resume_refuses_extra_options(trained_run: Path) -> None:
    result = runner.invoke(app, ["train", "--resume", str(trained_run), "--devices", "2", "--epochs", "9"])
    assert result.exit_code == 2
    assert "--devices" in result.output and "--epochs" in result.output and "Fix:" in result.output
