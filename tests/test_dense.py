"""Segmenter and Detector end to end on real data (ISBI membranes, BCCD blood cells), kept tiny: the run folder,
predictions, bundles reloaded in a fresh process, resume, the CLI, ONNX / TorchScript exports compared with torch,
parameter checks, the networks and the Dice loss."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import BCCD_SPLITS, SEG_PAIRS, SEG_SIZE, TINY_BACKBONE
from PIL import Image
from typer.testing import CliRunner

from headstart import Detector, Segmenter, detect_task, load_model
from headstart.cli import app
from headstart.deploy.export import SIDECAR_FILE, export_bundle
from headstart.errors import ExportError, NotFittedError, ParameterError, ResumeError
from headstart.estimators.segmenter import dice_loss
from headstart.training.checkpoints import latest_checkpoint

runner = CliRunner()

RUN_FILES = ("config.json", "data.json", "metrics.json", "history.json", "curves.png", "summary.txt")
BUNDLE_FILES = ("config.json", "model.safetensors", "validation.json")
CHECKPOINT_FILES = ("model.safetensors", "optimizer.safetensors", "state.json")  # in checkpoints/epoch-NNNN/


def seg_params(**overrides: Any) -> dict[str, Any]:
    params: dict[str, Any] = dict(backbone=TINY_BACKBONE, weights="random", crop_size=64, crops_per_image=1, epochs=2,
                                  frozen_epochs=1, batch_size=2, val_fraction=0.34, progress=False)
    params.update(overrides)
    return params


def det_params(**overrides: Any) -> dict[str, Any]:
    params: dict[str, Any] = dict(backbone=TINY_BACKBONE, weights="random", min_size=128, max_size=160, epochs=2,
                                  batch_size=2, progress=False)
    params.update(overrides)
    return params


def _images(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.png"))


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Any:
    """One intra-op thread while this module runs: on a small, busy CPU two threads waiting on each other make
    these tiny networks several times slower (a 4-step epoch: 2 s with one thread, 18 s with two)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ----------------------------------------------------------------------------------------------------------
# Tiny copies of the real data sets, and the runs every test below shares


@pytest.fixture(scope="module")
def timm_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test_efficientnet checkpoint file, so the Segmenter is 'pretrained' (frozen stage, then fine-tuning).

    It keeps timm's 1000-class head (headless checkpoints load too: tests/test_backbones.py)."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet")
    path = tmp_path_factory.mktemp("checkpoint") / "test_efficientnet.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def segmenter_run(isbi_small: Path, timm_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
                  ) -> tuple[Segmenter, Path]:
    run = tmp_path_factory.mktemp("segmenter") / "run"
    segmenter = Segmenter(**seg_params(weights=str(timm_checkpoint))).fit(isbi_small, out=run)
    return segmenter, run


@pytest.fixture(scope="module")
def detector_run(bccd_small: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Detector, Path]:
    run = tmp_path_factory.mktemp("detector") / "run"
    detector = Detector(**det_params()).fit(bccd_small, out=run)
    return detector, run


def _check_run_folder(run: Path, report_suffix: str) -> None:
    for name in RUN_FILES:
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    for name in BUNDLE_FILES:
        assert (run / "model" / name).is_file(), name
    checkpoint = latest_checkpoint(run)
    assert checkpoint is not None and list((run / "checkpoints").glob("best-epoch-*.safetensors"))
    for name in CHECKPOINT_FILES:
        assert (checkpoint / name).is_file(), name
    samples = sorted((run / "samples").glob(f"*{report_suffix}"))
    assert samples, f"no {report_suffix} report images in {run / 'samples'}"
    for sample in samples:
        with Image.open(sample) as image:
            image.verify()


def _check_interval(value: float, interval: list[float]) -> None:
    assert isinstance(interval, list) and len(interval) == 2
    assert interval[0] - 1e-9 <= value <= interval[1] + 1e-9


# ----------------------------------------------------------------------------------------------------------
# 1. Segmenter on real ISBI images


def test_segmenter_trains_on_real_isbi_and_writes_the_run(segmenter_run: tuple[Segmenter, Path], isbi_small: Path,
                                                           timm_checkpoint: Path, shared_data: Path,
                                                           tmp_path: Path) -> None:
    segmenter, run = segmenter_run
    assert detect_task(isbi_small) == "segmentation"
    _check_run_folder(run, "_overlay.png")
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert [h["stage"] for h in history] == ["head", "all"]  # pretrained from a checkpoint file: fine_tune
    assert all(np.isfinite(h["train_loss"]) and 0 <= h["val_miou"] <= 1 for h in history)
    config = json.loads((run / "config.json").read_text())
    assert config["strategy"] == "fine_tune"
    assert [(s["name"], s["epochs"]) for s in config["stages"]] == [("head", 1), ("all", 1)]
    assert str(timm_checkpoint) in config["backbone_weights"]
    # a pretrained encoder keeps its BatchNorm statistics (tiny batches would make them noise)
    from safetensors.torch import load_file

    original = load_file(str(timm_checkpoint))
    encoder_state = segmenter.net_.encoder.model.state_dict()
    running = [k for k in original if k.endswith(("running_mean", "running_var")) and k in encoder_state]
    assert running and all(torch.equal(encoder_state[k], original[k]) for k in running)
    # ... while its weights learned in the fine_tune stage (the last epoch's checkpoint; the model keeps the best)
    last = load_file(str(latest_checkpoint(run) / "model.safetensors"))
    assert any(not torch.equal(last[f"encoder.model.{k}"], original[k]) for k in original
               if k.endswith("weight") and f"encoder.model.{k}" in last)

    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("miou", "dice", "pixel_accuracy"):
        assert 0 <= metrics[key] <= 1, key
        _check_interval(metrics[key], metrics[f"{key}_ci"])
    assert [c["class"] for c in metrics["per_class"]] == ["background", "foreground"]
    for row in metrics["per_class"]:
        if row["iou"] is not None:
            _check_interval(row["iou"], row["iou_ci"])
            _check_interval(row["dice"], row["dice_ci"])
    assert metrics["epochs_run"] == 2 and metrics["best_epoch"] in (1, 2)
    assert metrics["n_pixels"] == metrics["n_images"] * SEG_SIZE[0] * SEG_SIZE[1]

    # predictions: one mask per image at the image's own size (a shrunk copy, and a full 512x512 unlabelled test
    # image), class indices only, agreeing with the probabilities
    full_size = shared_data / "segmentation" / "isbi_membrane" / "test" / "image" / "2.png"
    images = [_images(isbi_small / "images")[1], full_size]
    masks = segmenter.predict(images)
    probabilities = segmenter.predict_proba(images)
    assert len(masks) == len(probabilities) == 2
    for path, mask, proba in zip(images, masks, probabilities):
        with Image.open(path) as image:
            width, height = image.size
        assert mask.shape == (height, width) and np.issubdtype(mask.dtype, np.integer)
        assert set(np.unique(mask)) <= {0, 1}
        assert proba.shape == (2, height, width)
        np.testing.assert_allclose(proba.sum(0), 1.0, atol=1e-5)
        np.testing.assert_array_equal(proba.argmax(0), mask)
    written = segmenter.predict_masks(images, tmp_path / "masks")
    assert written == [tmp_path / "masks" / name for name in ("1.png", "2.png")]
    for path, mask in zip(written, masks):
        with Image.open(path) as saved:
            assert saved.mode == "P"  # viewable, and the pixel values are the class indices
            np.testing.assert_array_equal(np.asarray(saved), mask)


# ----------------------------------------------------------------------------------------------------------
# 2. Bundles reload alone in a fresh process and predict the same


FRESH_PROCESS_SCRIPT = '''
import hashlib, json, sys
import numpy as np
import torch
torch.set_num_threads(1)  # as in the test process
import headstart
seg_model, det_model, out, *files = sys.argv[1:]
seg_images, det_images = files[:2], files[2:]
segmenter, detector = headstart.load_model(seg_model), headstart.load_model(det_model)
masks = segmenter.predict(seg_images)
proba = segmenter.predict_proba(seg_images)
found = detector.predict(det_images)
arrays = {f"mask{i}": m for i, m in enumerate(masks)}
arrays.update({f"proba{i}": p for i, p in enumerate(proba)})
for i, f in enumerate(found):
    arrays.update({f"{k}{i}": v for k, v in f.items()})
np.savez(out, **arrays)
digest = hashlib.sha256(b"".join(m.astype(np.int64).tobytes() for m in masks)).hexdigest()
print(json.dumps({"classes": [type(segmenter).__name__, type(detector).__name__], "mask_digest": digest}))
'''


def test_bundles_predict_the_same_in_a_fresh_process(segmenter_run: tuple[Segmenter, Path],
                                                      detector_run: tuple[Detector, Path], isbi_small: Path,
                                                      bccd_small: Path, tmp_path: Path) -> None:
    segmenter, seg_run = segmenter_run
    detector, det_run = detector_run
    seg_images = _images(isbi_small / "images")[:2]
    det_images = sorted((bccd_small / "JPEGImages").glob("*.jpg"))[:2]
    out = tmp_path / "fresh.npz"
    result = subprocess.run([sys.executable, "-c", FRESH_PROCESS_SCRIPT, str(seg_run / "model"), str(det_run / "model"),
                             str(out), *map(str, seg_images + det_images)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    assert printed["classes"] == ["Segmenter", "Detector"]
    fresh = np.load(out)
    for i, proba in enumerate(segmenter.predict_proba(seg_images)):
        np.testing.assert_allclose(fresh[f"proba{i}"], proba, atol=1e-5)
    masks = segmenter.predict(seg_images)
    for i, mask in enumerate(masks):
        np.testing.assert_array_equal(fresh[f"mask{i}"], mask)
    assert printed["mask_digest"] == hashlib.sha256(b"".join(m.astype(np.int64).tobytes() for m in masks)).hexdigest()
    found = detector.predict(det_images)
    assert sum(len(f["boxes"]) for f in found) > 0  # at score_threshold 0.01 an untrained detector finds boxes
    for i, expected in enumerate(found):
        assert fresh[f"boxes{i}"].shape == expected["boxes"].shape, i
        np.testing.assert_allclose(fresh[f"scores{i}"], expected["scores"], atol=1e-5)
        np.testing.assert_array_equal(fresh[f"labels{i}"], expected["labels"])
        np.testing.assert_allclose(fresh[f"boxes{i}"], expected["boxes"], atol=1e-3)
        np.testing.assert_allclose(fresh[f"scores{i}"], expected["scores"], atol=1e-5)


# ----------------------------------------------------------------------------------------------------------
# 3. Detector on real BCCD images


def test_detector_trains_on_real_bccd_and_predicts_boxes(detector_run: tuple[Detector, Path], bccd_small: Path,
                                                         tmp_path: Path) -> None:
    detector, run = detector_run
    assert detect_task(bccd_small) == "detection"
    _check_run_folder(run, "_boxes.jpg")
    assert len(list((run / "samples").glob("*_boxes.jpg"))) == BCCD_SPLITS["val"]
    assert detector.classes_ == ["Platelets", "RBC", "WBC"]
    history = json.loads((run / "history.json").read_text())
    assert [(h["epoch"], h["stage"]) for h in history] == [(1, "all"), (2, "all")]  # random weights: full
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("map_50", "map_50_95"):
        assert 0 <= metrics[key] <= 1, key
    assert [c["class"] for c in metrics["per_class"]] == ["Platelets", "RBC", "WBC"]
    assert metrics["n_images"] == BCCD_SPLITS["val"]
    data = json.loads((run / "data.json").read_text())
    assert (data["train"]["images"], data["val"]["images"], data["test"]["images"]) == (4, 2, 2)

    images = sorted((bccd_small / "JPEGImages").glob("*.jpg"))[:3]
    found = detector.predict(images)
    assert len(found) == 3 and sum(len(f["boxes"]) for f in found) > 0
    for path, result in zip(images, found):
        with Image.open(path) as image:
            width, height = image.size
        boxes, scores, labels = result["boxes"], result["scores"], result["labels"]
        assert boxes.shape == (len(scores), 4) and labels.shape == scores.shape
        assert np.all(boxes[:, 0] >= 0) and np.all(boxes[:, 1] >= 0)
        assert np.all(boxes[:, 2] <= width + 1e-3) and np.all(boxes[:, 3] <= height + 1e-3)
        assert np.all(boxes[:, 2] >= boxes[:, 0]) and np.all(boxes[:, 3] >= boxes[:, 1])
        assert np.all((labels >= 0) & (labels < 3))
        assert np.all(np.diff(scores) <= 0), "scores are not sorted highest first"
        assert np.all((scores >= detector.score_threshold) & (scores <= 1))

    threshold = float(np.median(np.concatenate([f["scores"] for f in found])))
    report = detector.predict_to_folder(images, tmp_path / "pred", score_threshold=threshold)
    entries = json.loads(report.read_text())
    assert report.name == "detections.json" and [e["image"] for e in entries] == [str(p) for p in images]
    for entry, result in zip(entries, found):
        assert len(entry["detections"]) == int((result["scores"] >= threshold).sum())
        for box in entry["detections"]:
            assert box["label"] in detector.classes_ and box["score"] >= round(threshold, 4) - 1e-4
            assert len(box["box"]) == 4
    for path in images:
        drawn = tmp_path / "pred" / f"{path.stem}_boxes.jpg"
        with Image.open(drawn) as image, Image.open(path) as original:
            assert image.format == "JPEG" and image.size == original.size


def test_detector_resumes_its_own_finished_run(detector_run: tuple[Detector, Path], bccd_small: Path,
                                               tmp_path: Path) -> None:
    """Resuming a run whose checkpoint is after its last epoch just finishes it (nothing left to train).

    The default ``scale=(0.8, 1.2)`` is a tuple: the fingerprint saved in state.json holds the JSON list [0.8, 1.2],
    and the comparison with the in-memory fingerprint must not tell them apart."""
    detector, run = detector_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    resumed = Detector(**det_params()).fit(bccd_small, out=copy, resume=True)
    assert [h["epoch"] for h in resumed.history_] == [1, 2]
    assert resumed.metrics_["map_50"] == pytest.approx(detector.metrics_["map_50"], abs=1e-6)


# ----------------------------------------------------------------------------------------------------------
# 4. Resume: an interrupted run continued from its checkpoint equals the uninterrupted run


class _StopsAfterFirstEpoch(Segmenter):
    """Interrupted the moment epoch 2 would start, i.e. after epoch 1's checkpoint was written."""

    def _train_dataset(self, splits: Any, epoch: int) -> Any:
        if epoch >= 1:  # epochs count from 0
            raise KeyboardInterrupt
        return super()._train_dataset(splits, epoch)


@pytest.fixture(scope="module")
def resumed_runs(isbi_small: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("resume")
    params = seg_params()  # random weights: one full stage, so the resume lands mid-stage (optimizer state)
    with pytest.raises(KeyboardInterrupt):
        _StopsAfterFirstEpoch(**params).fit(isbi_small, out=folder / "interrupted")
    state = json.loads((latest_checkpoint(folder / "interrupted") / "state.json").read_text())
    config_before = (folder / "interrupted" / "config.json").read_text()
    resumed = Segmenter(**params).fit(isbi_small, out=folder / "interrupted", resume=True)
    straight = Segmenter(**params).fit(isbi_small)  # no run folder: nothing to checkpoint
    return {"folder": folder, "state_after_interrupt": state, "config_before": config_before, "resumed": resumed,
            "straight": straight}


def test_resumed_segmenter_equals_the_uninterrupted_run(resumed_runs: dict[str, Any]) -> None:
    state = resumed_runs["state_after_interrupt"]["train_state"]
    assert (state["epoch"], state["stage_index"], state["epoch_in_stage"]) == (1, 0, 1)
    resumed, straight = resumed_runs["resumed"], resumed_runs["straight"]
    assert [h["stage"] for h in straight.history_] == ["all", "all"]
    assert [h["epoch"] for h in resumed.history_] == [1, 2]
    for mine, theirs in zip(resumed.history_, straight.history_):
        for key in ("train_loss", "val_miou", "val_dice", "val_pixel_accuracy"):
            assert mine[key] == pytest.approx(theirs[key], abs=1e-5), (mine["epoch"], key)
    mine, theirs = resumed.net_.state_dict(), straight.net_.state_dict()
    assert mine.keys() == theirs.keys()
    worst = max(float((mine[k].double() - theirs[k].double()).abs().max()) for k in mine if mine[k].numel())
    assert worst <= 1e-5
    assert resumed.metrics_["miou"] == pytest.approx(straight.metrics_["miou"], abs=1e-5)
    assert (resumed_runs["folder"] / "interrupted" / "model" / "model.safetensors").is_file()


def test_resume_without_checkpoint_or_with_other_settings_is_refused(resumed_runs: dict[str, Any], isbi_small: Path,
                                                                      tmp_path: Path) -> None:
    with pytest.raises(ResumeError, match="no checkpoint"):
        Segmenter(**seg_params()).fit(isbi_small, out=tmp_path / "empty", resume=True)
    copy = tmp_path / "run"
    shutil.copytree(resumed_runs["folder"] / "interrupted", copy)
    with pytest.raises(ResumeError, match="other data or settings"):
        Segmenter(**seg_params(batch_size=3)).fit(isbi_small, out=copy, resume=True)


def test_a_checkpoint_of_the_older_format_is_refused_not_restarted(resumed_runs: dict[str, Any], isbi_small: Path,
                                                                    tmp_path: Path) -> None:
    """Before the one training loop, dense runs kept checkpoints/state.json directly: resuming one must say so
    rather than silently train from epoch 1 again."""
    copy = tmp_path / "run"
    shutil.copytree(resumed_runs["folder"] / "interrupted", copy)
    shutil.rmtree(copy / "checkpoints")
    (copy / "checkpoints").mkdir()
    (copy / "checkpoints" / "state.json").write_text("{}")
    with pytest.raises(ResumeError, match="older headstart"):
        Segmenter(**seg_params()).fit(isbi_small, out=copy, resume=True)


def test_a_refused_resume_leaves_the_run_config_alone(resumed_runs: dict[str, Any], isbi_small: Path,
                                                      tmp_path: Path) -> None:
    """`headstart train --resume RUN` rebuilds the estimator from RUN/config.json: a resume refused for other
    settings must not have rewritten it with those settings, or the run can no longer be resumed."""
    copy = tmp_path / "run"
    shutil.copytree(resumed_runs["folder"] / "interrupted", copy)
    before = (copy / "config.json").read_text()
    with pytest.raises(ResumeError):
        Segmenter(**seg_params(batch_size=3)).fit(isbi_small, out=copy, resume=True)
    assert json.loads((copy / "config.json").read_text())["params"]["batch_size"] == 2
    assert (copy / "config.json").read_text() == before


# ----------------------------------------------------------------------------------------------------------
# 5. The command line


CLI_TINY = ["--backbone", TINY_BACKBONE, "--weights", "random", "--crop-size", "64", "--batch-size", "4", "--quiet"]


@pytest.fixture(scope="module")
def cli_segmentation_run(isbi_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("cli-seg") / "run"
    result = runner.invoke(app, ["train", str(isbi_small), "--task", "auto", "--out", str(run), "--epochs", "1",
                                 *CLI_TINY])
    assert result.exit_code == 0, result.output
    assert "segmentation (detected)" in result.output
    return run


def test_cli_train_evaluate_predict(cli_segmentation_run: Path, isbi_small: Path, tmp_path: Path) -> None:
    run = cli_segmentation_run
    assert (run / "model" / "model.safetensors").is_file() and (run / "metrics.json").is_file()
    config = json.loads((run / "config.json").read_text())
    assert config["task"] == "segmentation" and config["params"]["crop_size"] == 64
    assert config["params"]["decoder"] == "unet" and config["params"]["batch_size"] == 4

    evaluated = runner.invoke(app, ["evaluate", str(run / "model"), str(isbi_small), "--out", str(tmp_path / "eval")])
    assert evaluated.exit_code == 0, evaluated.output
    assert "mIoU" in evaluated.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["n_images"] == SEG_PAIRS and 0 <= metrics["miou"] <= 1 and metrics["skipped"] == []
    assert len(list((tmp_path / "eval" / "samples").glob("*_overlay.png"))) == SEG_PAIRS

    images = _images(isbi_small / "images")[:2]
    predicted = runner.invoke(app, ["predict", str(run / "model"), *map(str, images), "--out", str(tmp_path / "pred"),
                                    "--json"])
    assert predicted.exit_code == 0, predicted.output
    rows = [json.loads(line) for line in predicted.stdout.splitlines() if line.startswith("{")]
    assert [Path(r["image"]).name for r in rows] == [p.name for p in images]
    expected = Segmenter.load(run / "model").predict(images)
    for image, mask in zip(images, expected):
        with Image.open(tmp_path / "pred" / image.name) as saved:
            np.testing.assert_array_equal(np.asarray(saved), mask)

    missing_out = runner.invoke(app, ["predict", str(run / "model"), str(images[0])])
    assert missing_out.exit_code == 2 and "--out" in missing_out.output
    assert "Traceback" not in missing_out.output


def _torch_probabilities_and_pixels(model: Path, image: Path) -> tuple[np.ndarray, np.ndarray]:
    expected = Segmenter.load(model).predict_proba([image])[0]
    with Image.open(image) as opened:
        pixels = np.asarray(opened.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)[None].copy()
    return expected, pixels


def test_cli_export_onnx_matches_torch(cli_segmentation_run: Path, isbi_small: Path, tmp_path: Path) -> None:
    import onnxruntime

    model = cli_segmentation_run / "model"
    expected, pixels = _torch_probabilities_and_pixels(model, _images(isbi_small / "images")[0])

    exported = runner.invoke(app, ["export", str(model), "--out", str(tmp_path / "onnx"), "--format", "onnx"])
    assert exported.exit_code == 0, exported.output
    assert "Parity with torch on" in exported.output
    sidecar = json.loads((tmp_path / "onnx" / SIDECAR_FILE).read_text())
    assert sidecar["task"] == "segmentation" and sidecar["file"] == "model.onnx"
    assert sidecar["parity"]["max_abs_diff"] <= 1e-4 and sidecar["parity"]["n_inputs"] >= 1
    session = onnxruntime.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": pixels})[0]
    assert got.shape == (1, 2, SEG_SIZE[1], SEG_SIZE[0])
    np.testing.assert_allclose(got[0], expected, atol=1e-4)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_cli_export_torchscript_matches_torch(cli_segmentation_run: Path, isbi_small: Path, tmp_path: Path) -> None:
    model = cli_segmentation_run / "model"
    expected, pixels = _torch_probabilities_and_pixels(model, _images(isbi_small / "images")[0])
    scripted = runner.invoke(app, ["export", str(model), "--out", str(tmp_path / "ts"), "--format", "torchscript"])
    assert scripted.exit_code == 0, scripted.output
    assert "Parity with torch on" in scripted.output
    sidecar = json.loads((tmp_path / "ts" / SIDECAR_FILE).read_text())
    assert sidecar["file"] == "model.pt" and sidecar["parity"]["max_abs_diff"] <= 1e-4
    module = torch.jit.load(str(tmp_path / "ts" / "model.pt"))
    np.testing.assert_allclose(module(torch.from_numpy(pixels)).detach().numpy()[0], expected, atol=1e-4)


@pytest.mark.parametrize(("option", "value", "parameter"), [("--crop-size", "100", "crop_size"),
                                                            ("--decoder", "foo", "decoder")])
def test_cli_bad_segmentation_options_name_the_parameter(isbi_small: Path, tmp_path: Path, option: str, value: str,
                                                         parameter: str) -> None:
    result = runner.invoke(app, ["train", str(isbi_small), "--out", str(tmp_path / "run"), "--epochs", "1",
                                 *CLI_TINY, option, value])
    assert result.exit_code == 2, result.output
    assert parameter in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run" / "config.json").exists()


# ----------------------------------------------------------------------------------------------------------
# 6. Detection export: ONNX with a parity check, or a clear ExportError; never TorchScript


def test_detection_onnx_export_matches_torch(detector_run: tuple[Detector, Path], bccd_small: Path,
                                            tmp_path: Path) -> None:
    detector, run = detector_run
    out = tmp_path / "onnx"
    sidecar = export_bundle(run / "model", out, format="onnx")
    # the sidecar's parity block, and the graph run by onnxruntime alone gives the torch detections
    parity = sidecar["parity"]
    assert parity["same_detections"] and parity["n_inputs"] == BCCD_SPLITS["val"]
    assert parity["max_box_diff_px"] <= 1e-2 and parity["max_score_diff"] <= 1e-4
    assert json.loads((out / SIDECAR_FILE).read_text())["task"] == "detection"
    import onnxruntime

    image = min((bccd_small / "JPEGImages").glob("*.jpg"))
    with Image.open(image) as opened:
        tensor = np.asarray(opened.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    boxes, labels, scores = session.run(None, {"image": tensor})
    expected = detector.predict([image])[0]
    np.testing.assert_array_equal(labels - 1, expected["labels"])  # the graph's labels are 1-based
    np.testing.assert_allclose(boxes, expected["boxes"], atol=1e-2)
    np.testing.assert_allclose(scores, expected["scores"], atol=1e-4)
    with pytest.raises(ExportError, match="ONNX only"):
        export_bundle(run / "model", tmp_path / "ts", format="torchscript")
    assert not (tmp_path / "ts").exists()


# ----------------------------------------------------------------------------------------------------------
# 7. Parameter checks, unfitted use, loading with the wrong class


def test_bad_parameters_are_refused_before_reading_data(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-data"  # reading it would raise DataError, so a ParameterError came first
    with pytest.raises(ParameterError, match="'decoder' parameter of Segmenter"):
        Segmenter(**seg_params(decoder="foo")).fit(missing)
    with pytest.raises(ParameterError, match="'crop_size' parameter of Segmenter"):
        Segmenter(**seg_params(crop_size=100)).fit(missing)
    with pytest.raises(ParameterError, match="'min_size' parameter of Detector"):
        Detector(**det_params(min_size=10)).fit(missing)
    with pytest.raises(ParameterError, match="'max_size' parameter of Detector"):
        Detector(**det_params(min_size=256, max_size=128)).fit(missing)
    assert not missing.exists()


def test_unfitted_and_wrongly_loaded_models(segmenter_run: tuple[Segmenter, Path],
                                            detector_run: tuple[Detector, Path], isbi_small: Path,
                                            tmp_path: Path) -> None:
    image = _images(isbi_small / "images")[0]
    with pytest.raises(NotFittedError, match="fit"):
        Segmenter().predict([image])
    with pytest.raises(NotFittedError, match="fit"):
        Detector().predict([image])
    with pytest.raises(NotFittedError):
        Segmenter().save(tmp_path / "nothing")
    seg_model, det_model = segmenter_run[1] / "model", detector_run[1] / "model"
    with pytest.raises(ParameterError, match="segmentation model"):
        Detector.load(seg_model)
    with pytest.raises(ParameterError, match="detection model"):
        Segmenter.load(det_model)
    assert isinstance(load_model(seg_model), Segmenter) and isinstance(load_model(det_model), Detector)


# ----------------------------------------------------------------------------------------------------------
# 8. The networks


@pytest.mark.parametrize("decoder", ["unet", "fpn"])
def test_segmentation_net_keeps_odd_input_sizes_and_depends_on_its_input(decoder: str) -> None:
    import timm

    from headstart.models.dense import MultiScaleEncoder, SegmentationNet

    torch.manual_seed(0)
    net = SegmentationNet(MultiScaleEncoder(timm.create_model("test_efficientnet", num_classes=0)), 3,
                          decoder=decoder).eval()
    first, second = torch.randn(2, 3, 100, 130), torch.randn(2, 3, 100, 130)
    with torch.no_grad():
        logits = net(first)
        other = net(second)
        odd = net(torch.randn(1, 3, 33, 65))
    assert logits.shape == (2, 3, 100, 130) and odd.shape == (1, 3, 33, 65)
    assert float((logits - other).abs().max()) > 1e-4  # the logits follow the input ...
    assert float((logits[0] - logits[1]).abs().max()) > 1e-4  # ... image by image
    assert float(logits.std(dim=(2, 3)).min()) > 0  # and vary over the pixels


def test_segmentation_net_refuses_unknown_decoder() -> None:
    import timm

    from headstart.models.dense import MultiScaleEncoder, SegmentationNet

    with pytest.raises(ParameterError, match="decoder"):
        SegmentationNet(MultiScaleEncoder(timm.create_model("test_efficientnet", num_classes=0)), 2, decoder="foo")


# ----------------------------------------------------------------------------------------------------------
# 9. Dice loss


def test_dice_loss_perfect_wrong_and_ignored_pixels() -> None:
    masks = torch.tensor([[[0, 1, 2, 1], [2, 2, 0, 1]]])  # 1 image, 2x4 pixels, 3 classes
    perfect = torch.nn.functional.one_hot(masks, 3).permute(0, 3, 1, 2).float() * 40 - 20
    wrong = torch.nn.functional.one_hot((masks + 1) % 3, 3).permute(0, 3, 1, 2).float() * 40 - 20
    assert float(dice_loss(perfect, masks, ignore_index=255)) == pytest.approx(0.0, abs=1e-6)
    assert float(dice_loss(wrong, masks, ignore_index=255)) > 0.8
    uniform = torch.zeros_like(perfect)
    assert float(dice_loss(perfect, masks, ignore_index=255)) < float(dice_loss(uniform, masks, ignore_index=255)) \
        < float(dice_loss(wrong, masks, ignore_index=255))

    # ignored pixels do not count, whatever the logits there say: ignoring the last column equals dropping it
    ignored = masks.clone()
    ignored[..., -1] = 255
    mixed = perfect.clone()
    mixed[..., -1] = wrong[..., -1]
    expected = dice_loss(perfect[..., :-1], masks[..., :-1], ignore_index=255)
    torch.testing.assert_close(dice_loss(mixed, ignored, ignore_index=255), expected)
    torch.testing.assert_close(dice_loss(wrong, ignored, ignore_index=255),
                               dice_loss(wrong[..., :-1], masks[..., :-1], ignore_index=255))
    assert float(dice_loss(mixed, masks, ignore_index=255)) > float(expected) + 0.05  # not ignored: it counts
    # every pixel ignored: nothing is scored and the (smoothed) loss is 0, not NaN
    assert float(dice_loss(wrong, torch.full_like(masks, 255), ignore_index=255)) == pytest.approx(0.0, abs=1e-6)


def test_flip_tta_is_flip_equivariant_and_differs_from_one_pass(segmenter_run: tuple[Segmenter, Path],
                                                                isbi_small: Path, tmp_path: Path) -> None:
    from PIL import Image

    model, _ = segmenter_run
    image_path = _images(isbi_small / "images")[0]
    flipped_path = tmp_path / "flipped.png"
    Image.open(image_path).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(flipped_path)
    model.tta = False
    single = model.predict_proba([image_path])[0]
    model.tta = True
    try:
        averaged, averaged_flipped = model.predict_proba([image_path, flipped_path])
    finally:
        model.tta = False
    # the mean over the flip group gives the mirrored answer for the mirrored image
    np.testing.assert_allclose(averaged_flipped, averaged[:, :, ::-1], atol=1e-5)
    np.testing.assert_allclose(averaged.sum(0), 1.0, atol=1e-5)
    assert np.abs(averaged - single).max() > 1e-4  # four passes, not one


def test_cli_refuses_options_a_task_would_ignore(isbi_small: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    # --precision and --devices now apply to every task; a classifier's --head and a detector's --min-size do not
    result = runner.invoke(app, ["train", str(isbi_small), "--out", str(tmp_path / "a"), "--precision",
                                 "bf16-mixed", "--head", "rbf_svm", "--min-size", "500", "--quiet"])
    assert result.exit_code == 2
    assert "--head" in result.output and "--min-size" in result.output and "segmentation" in result.output
    assert "--precision" not in result.output
    result = runner.invoke(app, ["train", str(isbi_small), "--task", "image", "--out", str(tmp_path / "b"),
                                 "--crop-size", "128", "--quiet"])
    assert result.exit_code == 2 and "--crop-size" in result.output and "image training" in result.output


def test_detector_trains_from_coco_json(bccd_small: Path, tmp_path: Path) -> None:
    """The same real images and boxes written as COCO JSON train a Detector, with the classes in category order."""
    from headstart.data.detection import load_detection_dataset

    splits = load_detection_dataset(bccd_small)
    categories = [{"id": 10 * (i + 1), "name": name} for i, name in enumerate(splits.classes)]
    images_dir = tmp_path / "coco" / "images"
    images_dir.mkdir(parents=True)
    for part, samples in (("train", splits.train), ("val", splits.val)):
        document: dict[str, Any] = {"images": [], "annotations": [], "categories": categories}
        for index, sample in enumerate(samples):
            target = images_dir / sample.image.name
            if not target.exists():
                target.symlink_to(sample.image)
            document["images"].append({"id": index, "file_name": sample.image.name, "width": sample.width,
                                       "height": sample.height})
            for box, label in zip(sample.boxes.tolist(), sample.labels.tolist()):
                x1, y1, x2, y2 = box
                document["annotations"].append({"id": len(document["annotations"]), "image_id": index,
                                                "category_id": 10 * (label + 1), "bbox": [x1, y1, x2 - x1, y2 - y1],
                                                "iscrowd": 0, "area": (x2 - x1) * (y2 - y1)})
        (tmp_path / "coco" / f"instances_{part}.json").write_text(json.dumps(document))
    assert detect_task(tmp_path / "coco") == "detection"
    detector = Detector(**det_params(epochs=1)).fit(tmp_path / "coco", out=tmp_path / "run")
    assert detector.classes_ == splits.classes
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["n_images"] == len(splits.val) and metrics["n_true_boxes"] == splits.val.n_boxes
