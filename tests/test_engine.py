"""The one training loop, seen from every task through ``headstart train``: a run killed with SIGKILL and resumed
ends where the uninterrupted run ends (text, audio, segmentation and detection here; images in test_train.py),
two gloo processes train a segmenter and a text model data-parallel on the CPU, and bf16 mixed precision runs
for every task."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import ROOT, TINY_BACKBONE

from headstart.bundle import load_bundle
from headstart.storage import load_tensors
from headstart.training.checkpoints import latest_checkpoint

pytestmark = pytest.mark.slow


def _cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "headstart", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


# -- tiny data of every task, as files the command line reads ---------------------------------------------------------
@pytest.fixture(scope="module")
def text_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """80 synthetic reviews whose label is told by its adjectives."""
    rng = random.Random(0)
    rows = ["text,label"]
    for label, words in (("positive", ("great", "excellent", "wonderful")), ("negative", ("awful", "terrible", "dull"))):
        for _ in range(40):
            tokens = [rng.choice(("the", "film", "plot", "was", "really", "quite")) for _ in range(4)]
            tokens += [rng.choice(words) for _ in range(2)]
            rng.shuffle(tokens)
            rows.append(f"{' '.join(tokens)},{label}")
    folder = tmp_path_factory.mktemp("text")
    (folder / "dev.csv").write_text("\n".join([rows[0], *rows[1:11], *rows[41:51]]) + "\n")  # 10 per class
    path = folder / "reviews.csv"
    path.write_text("\n".join([rows[0], *rows[11:41], *rows[51:]]) + "\n")
    return path


@pytest.fixture(scope="module")
def audio_folder(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Spoken 0s and 1s (FSDD, two speakers, takes 0-9) in class folders of symlinks."""
    source = shared_data / "audio" / "fsdd" / "recordings"
    root = tmp_path_factory.mktemp("audio")
    for digit in ("0", "1"):
        (root / digit).mkdir()
        for speaker in ("george", "jackson"):
            for take in range(10):
                name = f"{digit}_{speaker}_{take}.wav"
                (root / digit / name).symlink_to(source / name)
    return root


TINY_TEXT = ["--strategy", "fine_tune", "--batch-size", "8", "--max-length", "16", "--patience", "0",
             "--no-calibrate", "--cache-dir", "off", "--quiet"]
TINY_AUDIO = ["--backbone", f"logmel:{TINY_BACKBONE}", "--weights", "random", "--image-size", "64", "--clip-seconds",
              "0.8", "--strategy", "fine_tune", "--batch-size", "8", "--patience", "0", "--no-calibrate", "--cache-dir",
              "off", "--quiet"]
TINY_SEGMENTATION = ["--backbone", TINY_BACKBONE, "--weights", "random", "--crop-size", "64", "--crops-per-image", "2",
                     "--batch-size", "2", "--val-fraction", "0.34", "--quiet"]
TINY_DETECTION = ["--backbone", TINY_BACKBONE, "--weights", "random", "--min-size", "96", "--max-size", "128",
                  "--batch-size", "2", "--quiet"]


@pytest.fixture(scope="module")
def commands(text_csv: Path, tiny_bert: Path, audio_folder: Path, isbi_small: Path, bccd_small: Path
             ) -> dict[str, list[str]]:
    """``headstart train`` arguments (without --epochs / --out) of a tiny run of each task."""
    # text validates on its own table: a resumed run must read it again (config.json records --val)
    return {"text": [str(text_csv), "--val", str(text_csv.parent / "dev.csv"), "--backbone", str(tiny_bert),
                     *TINY_TEXT],
            "audio": [str(audio_folder), *TINY_AUDIO],
            "segmentation": [str(isbi_small), *TINY_SEGMENTATION],
            "detection": [str(bccd_small), *TINY_DETECTION]}


def _kill_after(process: subprocess.Popen, run: Path, epoch: int, *, timeout: float = 300) -> Path:
    """SIGKILL ``process`` as soon as the checkpoint of ``epoch`` exists; that checkpoint is returned."""
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        checkpoint = latest_checkpoint(run)
        if checkpoint is not None and checkpoint.name >= f"epoch-{epoch:04d}":
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = latest_checkpoint(run)
    assert killed_at is not None, process.stdout.read() if process.stdout else ""
    return killed_at


@pytest.mark.parametrize("task", ["text", "audio", "segmentation", "detection"])
def test_a_killed_run_resumes_where_the_uninterrupted_run_ends(task: str, commands: dict[str, list[str]],
                                                               tmp_path: Path) -> None:
    epochs = 6
    arguments = ["train", *commands[task], "--epochs", str(epochs)]
    reference = _cli(*arguments, "--out", str(tmp_path / "reference"))
    interrupted = _cli(*arguments, "--out", str(tmp_path / "killed"))
    killed_at = _kill_after(interrupted, tmp_path / "killed", 3)
    state = json.loads((killed_at / "state.json").read_text())["train_state"]
    assert not state["finished"] and not (tmp_path / "killed" / "model").exists(), \
        f"the {task} run finished before it could be killed"
    resumed = _cli("train", "--resume", str(tmp_path / "killed"), "--quiet")
    assert resumed.wait(timeout=600) == 0, resumed.stdout.read()
    assert reference.wait(timeout=600) == 0, reference.stdout.read()
    history = [json.loads((tmp_path / run / "history.json").read_text()) for run in ("reference", "killed")]
    assert [h["epoch"] for h in history[0]] == [h["epoch"] for h in history[1]]
    for mine, theirs in zip(*history):
        scores = [k for k in mine if k.startswith(("train_loss", "val_"))]
        assert {k: mine[k] for k in scores} == pytest.approx({k: theirs[k] for k in scores}, abs=1e-4), mine["epoch"]
    a = load_tensors(tmp_path / "reference" / "model" / "model.safetensors")
    b = load_tensors(tmp_path / "killed" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    assert max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point()) < 1e-4


@pytest.mark.parametrize("task", ["segmentation", "text"])
def test_two_gloo_processes_train_data_parallel_on_the_cpu(task: str, commands: dict[str, list[str]],
                                                         tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    process = _cli("train", *commands[task], "--epochs", "2", "--devices", "2", "--accelerator", "cpu",
                   "--out", str(run))
    output = process.communicate(timeout=600)[0]
    assert process.returncode == 0, output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["processes"] == 2
    history = json.loads((run / "history.json").read_text())
    assert len(history) >= 2 and all(torch.isfinite(torch.tensor(h["train_loss"])) for h in history if "lr" in h)
    config = json.loads((run / "config.json").read_text())
    assert config["params"]["devices"] == 2
    assert load_bundle(run / "model").classes  # rank 0 wrote a bundle a fresh loader reads


def _fit_bf16(task: str, data: Any, **extra: Any) -> Any:
    from headstart.tasks import estimator_class

    estimator = estimator_class(task)(precision="bf16-mixed", accelerator="cpu", progress=False, **extra)
    return estimator.fit(data)


@pytest.mark.parametrize("task", ["text", "segmentation", "detection"])
def test_bf16_mixed_precision_trains_every_task_on_the_cpu(task: str, text_csv: Path, tiny_bert: Path,
                                                          isbi_small: Path, bccd_small: Path) -> None:
    """precision goes to Lightning Fabric for every task; bf16 autocast also runs on a CPU."""
    if task == "text":
        fitted = _fit_bf16("text", text_csv, backbone=str(tiny_bert), strategy="fine_tune", epochs=1, batch_size=16,
                           max_length=16, cache_dir="off", calibrate=False)
    elif task == "segmentation":
        fitted = _fit_bf16("segmentation", isbi_small, backbone=TINY_BACKBONE, weights="random", crop_size=64,
                           crops_per_image=1, epochs=1, batch_size=2, val_fraction=0.34)
    else:
        fitted = _fit_bf16("detection", bccd_small, backbone=TINY_BACKBONE, weights="random", min_size=96,
                           max_size=128, epochs=1, batch_size=2)
    trained = [h for h in fitted.history_ if h.get("lr")]
    assert trained and all(torch.isfinite(torch.tensor(h["train_loss"])) for h in trained)
