"""Training end to end with a tiny random model: run outputs, bundle round trip in a fresh process,
resume after kill -9, and two-process data-parallel training on CPU."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, SAMPLE, TINY_BACKBONE, tiny_params

from headstart import ImageClassifier, NotFittedError, ParameterError
from headstart.bundle import load_bundle
from headstart.storage import OWNER_FILE, load_tensors
from headstart.training.checkpoints import RUN_MARKER, latest_checkpoint


def _cli(*args: str, **kwargs: object) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}
    return subprocess.Popen([sys.executable, "-m", "headstart", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def test_fit_writes_a_complete_run(tmp_path: Path, sample_dir: Path) -> None:
    run = tmp_path / "run"
    classifier = ImageClassifier(**tiny_params(epochs=3)).fit(sample_dir, out=run)
    for name in ("config.json", "data.json", "metrics.json", "history.json", "curves.png", "confusion_matrix.png",
                 "summary.txt", "model/model.safetensors", "model/config.json"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n_samples"] == 12 and 0 <= metrics["accuracy"]["value"] <= 1
    assert metrics["accuracy"]["ci95"][0] <= metrics["accuracy"]["value"] <= metrics["accuracy"]["ci95"][1]
    history = json.loads((run / "history.json").read_text())
    # the frozen head stage is solved once on cached features, then 3 unfrozen epochs
    assert [h["stage"] for h in history] == ["head", "all", "all", "all"]
    assert history[0]["l2"] > 0
    selection = history[0]["head_selection"]  # the CV table behind the chosen penalty is kept in the run
    assert selection["l2"] == history[0]["l2"] and len(selection["cv"]) == 7 and "fold" in selection["selection"]
    assert classifier.classes_ == ["ants", "bees"]
    # temporary files and replaced (.old) folders are dot-named: none may be left anywhere in the run (the owner
    # files that mark what headstart wrote are the only dot-named files)
    leftovers = [str(p.relative_to(run)) for p in run.rglob("*")
                 if p.name.startswith(".") and p.name not in (OWNER_FILE, RUN_MARKER)]
    assert not leftovers, f"temporary files left behind: {leftovers}"
    assert not list(run.rglob("*.pkl")) and not list(run.rglob("*.pt"))
    probabilities = classifier.predict_proba(sorted((sample_dir / "test" / "ants").glob("*.jpg")))
    assert probabilities.shape == (6, 2) and np.allclose(probabilities.sum(1), 1, atol=1e-5)


def test_bundle_loads_in_a_fresh_process(tmp_path: Path, sample_dir: Path) -> None:
    classifier = ImageClassifier(**tiny_params()).fit(sample_dir)
    classifier.save(tmp_path / "model")
    images = sorted(str(p) for p in (sample_dir / "test").rglob("*.jpg"))
    expected = classifier.predict_proba(images)
    code = (
        "import json, sys; from headstart import ImageClassifier; "
        "c = ImageClassifier.load(sys.argv[1]); print(json.dumps(c.predict_proba(sys.argv[2:]).tolist()))"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}
    output = subprocess.run([sys.executable, "-c", code, str(tmp_path / "model"), *images], env=env,
                            capture_output=True, text=True, check=True).stdout
    assert np.allclose(np.array(json.loads(output.strip().splitlines()[-1])), expected, atol=1e-5)
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    for key in ("architecture", "classes", "preprocessing", "strategy", "versions", "metrics", "backbone"):
        assert key in config
    assert config["versions"]["torch"] == importlib.metadata.version("torch")
    assert config["versions"]["timm"] == importlib.metadata.version("timm")


def test_unfitted_and_bad_parameters_fail_clearly(sample_dir: Path) -> None:
    with pytest.raises(NotFittedError, match="fit"):
        ImageClassifier().predict(["a.jpg"])
    with pytest.raises(ParameterError, match="'strategy'.*Got 'finetune'"):
        ImageClassifier(**tiny_params(strategy="finetune")).fit(sample_dir)
    with pytest.raises(ParameterError, match="'batch_size'"):
        ImageClassifier(**tiny_params(batch_size=0)).fit(sample_dir)


def test_same_seed_same_result(sample_dir: Path) -> None:
    first = ImageClassifier(**tiny_params()).fit(sample_dir)
    second = ImageClassifier(**tiny_params()).fit(sample_dir)
    assert [h["train_loss"] for h in first.history_] == pytest.approx([h["train_loss"] for h in second.history_])


def test_class_weights_and_early_stopping(sample_dir: Path) -> None:
    classifier = ImageClassifier(**tiny_params(epochs=12, patience=1, class_weights=True, lr=0.5)).fit(sample_dir)
    # a huge learning rate makes the validation loss worsen quickly, so training stops early
    assert len(classifier.history_) < 13
    monitor = classifier._train_config().monitor  # images: val_calibrated_loss
    best = min(h[monitor] for h in classifier.history_)
    assert classifier.history_[classifier.best_epoch_ - 1][monitor] == best


def test_class_weights_rebalance_an_imbalanced_training_set(tmp_path: Path, sample_dir: Path) -> None:
    """16 ants vs 4 bees: inverse-frequency class weights must change the head and raise P(bees).

    The frozen-backbone head is solved to convergence, so without weights the mean P(bees) on the balanced val
    images sits near the 4/20 training prior (~0.20) and with weights near 0.5 (checked over seeds 0-7: 0.20 vs
    0.45-0.52), hence the wide margin below.
    """
    data = tmp_path / "imbalanced"
    for name, count in (("ants", 16), ("bees", 4)):
        (data / name).mkdir(parents=True)
        for file in sorted((SAMPLE / "train" / name).glob("*.jpg"))[:count]:
            shutil.copy(file, data / name / file.name)
    assert len(list((data / "bees").iterdir())) == 4 and len(list((data / "ants").iterdir())) == 16
    val_images = sorted((sample_dir / "val").rglob("*.jpg"))
    heads, bees = [], []
    for class_weights in (False, True):
        classifier = ImageClassifier(**tiny_params(epochs=1, strategy="linear_probe", class_weights=class_weights))
        classifier.fit(data, val=sample_dir / "val")
        assert classifier.classes_ == ["ants", "bees"]
        heads.append(classifier.model_.get_classifier().weight.detach().clone())
        bees.append(float(classifier.predict_proba(val_images)[:, classifier.classes_.index("bees")].mean()))
    assert not torch.allclose(heads[0], heads[1]), "class_weights=True did not change the fitted head"
    assert bees[1] > bees[0] + 0.1, f"mean P(bees) without / with class weights: {bees}"


@pytest.mark.slow
def test_resume_after_kill_matches_uninterrupted_run(tmp_path: Path, sample_dir: Path) -> None:
    args = ["train", str(sample_dir), "--backbone", TINY_BACKBONE, "--weights", "random", "--strategy", "fine_tune",
            "--epochs", "5", "--image-size", "64", "--batch-size", "8", "--patience", "0", "--quiet"]
    reference = _cli(*args, "--out", str(tmp_path / "reference"))
    interrupted = _cli(*args, "--out", str(tmp_path / "killed"))
    # kill -9 in the middle of the unfrozen stage (stages: head solved in 1 step, then 5 unfrozen epochs)
    deadline = time.time() + 240
    while time.time() < deadline:
        checkpoint = latest_checkpoint(tmp_path / "killed")
        if checkpoint is not None and checkpoint.name >= "epoch-0003":
            break
        time.sleep(0.05)
    interrupted.send_signal(signal.SIGKILL)
    interrupted.wait()
    killed_at = latest_checkpoint(tmp_path / "killed")
    assert killed_at is not None and killed_at.name < "epoch-0006", "the run finished before it could be killed"
    assert not (tmp_path / "killed" / "model").exists()
    state = json.loads((killed_at / "state.json").read_text())["train_state"]
    assert state["stage_index"] == 1, "killed in the unfrozen stage"

    resumed = _cli("train", "--resume", str(tmp_path / "killed"), "--quiet")
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read()
    assert reference.wait(timeout=300) == 0, reference.stdout.read()
    a = load_tensors(tmp_path / "reference" / "model" / "model.safetensors")
    b = load_tensors(tmp_path / "killed" / "model" / "model.safetensors")
    assert max(float((a[k] - b[k]).abs().max()) for k in a if a[k].is_floating_point()) < 1e-4
    history_a = json.loads((tmp_path / "reference" / "history.json").read_text())
    history_b = json.loads((tmp_path / "killed" / "history.json").read_text())
    assert len(history_a) == len(history_b) == 6
    assert [h["val_loss"] for h in history_a] == pytest.approx([h["val_loss"] for h in history_b], abs=1e-4)


@pytest.mark.slow
def test_two_process_data_parallel_training_on_cpu(tmp_path: Path, sample_dir: Path) -> None:
    run = tmp_path / "ddp"
    process = _cli("train", str(sample_dir), "--backbone", TINY_BACKBONE, "--weights", "random", "--epochs", "2",
                   "--strategy", "fine_tune", "--image-size", "64", "--batch-size", "8", "--devices", "2",
                   "--accelerator", "cpu", "--num-workers", "0", "--quiet", "--out", str(run))
    assert process.wait(timeout=300) == 0, process.stdout.read()
    bundle = load_bundle(run / "model")
    assert bundle.classes == ["ants", "bees"]
    config = json.loads((run / "config.json").read_text())
    assert config["train_config"]["devices"] == 2
    history = json.loads((run / "history.json").read_text())
    # each process saw half the data per step; the logged train metrics are reduced over both
    assert len(history) == 3 and all(0 <= h["train_accuracy"] <= 1 for h in history)
    assert json.loads((run / "metrics.json").read_text())["processes"] == 2
    classifier = ImageClassifier.load(run / "model")
    assert classifier.predict_proba(sorted((sample_dir / "test").rglob("*.jpg"))).shape == (12, 2)


def test_mixed_precision_option_trains_on_cpu(sample_dir: Path) -> None:
    """precision is passed to Lightning Fabric; bf16 autocast also runs on a CPU."""
    classifier = ImageClassifier(**tiny_params(epochs=1, precision="bf16-mixed", accelerator="cpu")).fit(sample_dir)
    assert classifier.train_config_["precision"] == "bf16-mixed"
    assert classifier.predict_proba(sorted((sample_dir / "test").rglob("*.jpg"))).shape == (12, 2)
