"""Misuse and damage: each gets a headstart error (what, found, fix) instead of a library traceback."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_BACKBONE, tiny_params

from headstart import BundleError, ImageClassifier, ParameterError, ResumeError
from headstart.data import load_image_dataset
from headstart.models.classifier_net import ClassifierNet
from headstart.models.inference import predict_dataset
from headstart.training.classification import classification_scores, classification_step
from headstart.training.loop import (
    TrainConfig,
    TrainingTask,
    Validation,
    shuffled_batches,
    train,
)
from headstart.training.recipes import plan_stages


@pytest.mark.parametrize("change", [dict(precision="fp16"), dict(seed=-1), dict(num_workers=-2),
                                    dict(monitor="accuracy"), dict(accelerator="tpu")])
def test_bad_loop_settings(sample_dir: Path, change: dict) -> None:
    with pytest.raises(ParameterError) as info:
        ImageClassifier(**tiny_params(**change)).fit(sample_dir)
    assert repr(next(iter(change.values()))) in str(info.value) and info.value.fix


def test_fixed_size_backbone_refuses_another_size(sample_dir: Path) -> None:
    with pytest.raises(ParameterError, match="only accepts 160px"):
        ImageClassifier(**tiny_params(backbone="timm:test_vit", image_size=96)).fit(sample_dir)


def test_resume_with_other_settings_is_refused(tmp_path: Path, sample_dir: Path) -> None:
    run = tmp_path / "run"
    ImageClassifier(**tiny_params(epochs=1)).fit(sample_dir, out=run)
    with pytest.raises(ResumeError, match="stages") as info:
        ImageClassifier(**tiny_params(epochs=3)).fit(sample_dir, out=run, resume=True)
    assert "--resume" in (info.value.fix or "")


def test_bf16_autocast_really_runs(sample_dir: Path) -> None:
    """precision="bf16-mixed" must put the forward pass under autocast (checked from inside the model)."""
    from headstart.data import ImageDataset, build_transform
    from headstart.models import Preprocessing, create_backbone, get_backbone_spec

    splits = load_image_dataset(sample_dir)
    preprocessing = Preprocessing.from_dict({**get_backbone_spec(TINY_BACKBONE).preprocessing().to_dict(),
                                             "input_size": 64})
    model, _ = create_backbone(TINY_BACKBONE, 2, weights="random")
    net = ClassifierNet(model)
    seen: list[bool] = []
    net.model.conv_stem.register_forward_hook(lambda *_: seen.append(torch.is_autocast_enabled("cpu")))
    train_set = ImageDataset(splits.train.paths, splits.train.labels, build_transform(preprocessing, train=True))
    val_set = ImageDataset(splits.val.paths, splits.val.labels, build_transform(preprocessing, train=False))

    def validate(model: torch.nn.Module, device: torch.device) -> Validation:
        probabilities, labels = predict_dataset(model, val_set, num_workers=0, device=device)
        return Validation(classification_scores(probabilities, labels), payload=probabilities)

    task = TrainingTask(dataset=lambda epoch: train_set,
                        batches=lambda epoch: shuffled_batches(len(train_set), 8, seed=0, epoch=epoch),
                        step=lambda module, batch: classification_step(module, *batch, class_weight=None,
                                                                       label_smoothing=0.0),
                        validate=validate)
    config = TrainConfig(batch_size=8, precision="bf16-mixed", accelerator="cpu", patience=None)
    state = train(net, task, stages=plan_stages("full", 1), config=config, progress=False).state
    assert len(state.history) == 1 and any(seen)


def test_damaged_bundles(tmp_path: Path, sample_dir: Path) -> None:
    classifier = ImageClassifier(**tiny_params(epochs=1)).fit(sample_dir)
    model = classifier.save(tmp_path / "model")
    mode = stat.S_IMODE(os.stat(model / "model.safetensors").st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask, oct(mode)  # not the 0600 of a temp file
    assert stat.S_IMODE(os.stat(model).st_mode) == 0o777 & ~umask
    damaged = tmp_path / "damaged"
    shutil.copytree(model, damaged)
    (damaged / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(BundleError, match="does not match"):
        ImageClassifier.load(damaged)
    (damaged / "config.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        ImageClassifier.load(damaged)
    with pytest.raises(BundleError, match="not a headstart model folder"):
        ImageClassifier.load(tmp_path)


def test_a_class_called_train_is_a_class(tmp_path: Path, sample_dir: Path) -> None:
    root = tmp_path / "vehicles"
    shutil.copytree(sample_dir / "train" / "ants", root / "train")  # a class of trains, not a split
    shutil.copytree(sample_dir / "train" / "bees", root / "bus")
    splits = load_image_dataset(root)
    assert splits.classes == ["bus", "train"] and splits.split.startswith("stratified")


def test_evaluate_a_folder_without_class_folders(tmp_path: Path, sample_dir: Path) -> None:
    from headstart import DataError

    classifier = ImageClassifier(**tiny_params(epochs=1)).fit(sample_dir)
    flat = tmp_path / "flat"
    shutil.copytree(sample_dir / "test" / "ants", flat)  # loose images, no class subfolders
    with pytest.raises(DataError, match="no images in class subfolders") as info:
        classifier.evaluate(flat)
    assert "predict" in (info.value.fix or "")
    (flat / "wasps").mkdir()  # a class the model does not know
    shutil.copy(next(flat.glob("*.jpg")), flat / "wasps")
    with pytest.raises(DataError, match=r"not in training data \['wasps'\]"):
        classifier.evaluate(flat)


def test_interrupted_bundle_replacement_points_to_the_old_copy(tmp_path: Path, sample_dir: Path) -> None:
    classifier = ImageClassifier(**tiny_params(epochs=1)).fit(sample_dir)
    model = classifier.save(tmp_path / "model")
    model.rename(tmp_path / ".model.abc123.old")  # what a crash between save_bundle's two renames leaves
    with pytest.raises(BundleError, match="interrupted") as info:
        ImageClassifier.load(tmp_path / "model")
    assert ".model.abc123.old" in (info.value.fix or "")


def test_a_loss_that_becomes_infinite_stops_training_with_the_fix(sample_dir: Path) -> None:
    from headstart.data import ImageDataset, build_transform
    from headstart.models import Preprocessing, create_backbone, get_backbone_spec
    from headstart.training.loop import StepOutput

    splits = load_image_dataset(sample_dir)
    preprocessing = Preprocessing.from_dict({**get_backbone_spec(TINY_BACKBONE).preprocessing().to_dict(),
                                             "input_size": 64})
    net = ClassifierNet(create_backbone(TINY_BACKBONE, 2, weights="random")[0])
    train_set = ImageDataset(splits.train.paths, splits.train.labels, build_transform(preprocessing, train=True))

    def step(module: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> StepOutput:
        return StepOutput(loss=module(batch[0]).sum() * float("inf"), size=len(batch[1]))

    task = TrainingTask(dataset=lambda epoch: train_set,
                        batches=lambda epoch: shuffled_batches(len(train_set), 8, seed=0, epoch=epoch), step=step,
                        validate=lambda model, device: Validation({"val_loss": 0.0}))
    with pytest.raises(ParameterError, match="became -?inf in epoch 1") as info:
        train(net, task, stages=plan_stages("full", 1), config=TrainConfig(batch_size=8), progress=False)
    assert "--lr" in (info.value.fix or "")


def test_a_failed_refit_leaves_the_previous_model(sample_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A refit that fails half way (here: interrupted in the loop) leaves the estimator fitted as before."""
    import headstart.training.loop as loop

    classifier = ImageClassifier(**tiny_params(strategy="linear_probe", epochs=1, calibrate=False)).fit(sample_dir)
    before = classifier.predict_proba(sorted((sample_dir / "test").rglob("*.jpg")))
    state = (classifier.classes_, classifier.backbone_spec_, classifier.model_)

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "train", interrupted)
    classifier.set_params(backbone="timm:test_resnet")
    with pytest.raises(KeyboardInterrupt):
        classifier.fit(sample_dir / "train", val=sample_dir / "val")
    assert (classifier.classes_, classifier.backbone_spec_, classifier.model_) == state
    assert classifier.backbone == "timm:test_resnet"  # the parameter the user set stays set
    np.testing.assert_allclose(classifier.predict_proba(sorted((sample_dir / "test").rglob("*.jpg"))), before)
