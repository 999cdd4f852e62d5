"""The moving average of the weights (``TrainConfig.ema_decay``): what is validated and kept is the average, the
raw weights go on training, and a run killed mid-stage resumes the average where it was."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY_BACKBONE

from headstart import ParameterError
from headstart.models import create_backbone
from headstart.models.classifier_net import ClassifierNet
from headstart.training.classification import classification_scores, classification_step
from headstart.training.loop import TrainConfig, TrainingTask, Validation, shuffled_batches, train
from headstart.training.recipes import Stage


def _net() -> ClassifierNet:
    torch.manual_seed(0)
    model, _ = create_backbone(TINY_BACKBONE, 2, weights="random")
    return ClassifierNet(model)


def _task() -> TrainingTask:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(48, 3, 32, 32, generator=generator)
    labels = torch.arange(48) % 2
    images[labels == 1] += 0.5
    train_set = torch.utils.data.TensorDataset(images[:32], labels[:32])

    def step(module: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]):  # noqa: ANN202
        return classification_step(module, *batch, class_weight=None, label_smoothing=0.0)

    def validate(module: torch.nn.Module, device: torch.device) -> Validation:
        module.eval()
        with torch.no_grad():
            probabilities = module(images[32:]).softmax(-1)
        return Validation(classification_scores(probabilities.numpy(), labels[32:].numpy()))

    return TrainingTask(dataset=lambda epoch: train_set,
                        batches=lambda epoch: shuffled_batches(len(train_set), 8, seed=0, epoch=epoch),
                        step=step, validate=validate, val_items=16)


STAGES = [Stage("all", 3, 1e-2)]


def _run(decay: float | None, run_dir: Path | None = None, *, resume: bool = False,
         stop_after: int | None = None) -> dict[str, torch.Tensor]:
    net = _net()

    def kill(state) -> None:  # noqa: ANN001
        if stop_after is not None and state.epoch == stop_after:
            raise KeyboardInterrupt

    config = TrainConfig(batch_size=8, patience=None, accelerator="cpu", monitor="val_accuracy", ema_decay=decay)
    try:
        train(net, _task(), stages=STAGES, config=config, run_dir=run_dir, resume=resume, progress=False,
              after_epoch=kill)
    except KeyboardInterrupt:
        return {}
    return {k: v.clone() for k, v in net.state_dict().items()}


def _distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return sum(float((a[k].float() - b[k].float()).abs().sum()) for k in a if k.endswith("weight"))


def test_the_kept_weights_are_the_average() -> None:
    start = {k: v.clone() for k, v in _net().state_dict().items()}
    plain = _run(None)
    assert _distance(plain, start) > 1.0, "the network did not train"
    # an average that barely moves keeps the starting weights; one that follows at once is the plain run
    assert _distance(_run(1 - 1e-9), start) < 1e-3 * _distance(plain, start)
    assert _distance(_run(1e-9), plain) < 1e-4 * _distance(plain, start)
    halfway = _run(0.9)
    assert 0 < _distance(halfway, start) and _distance(halfway, plain) > 1e-3 * _distance(plain, start)


def test_a_killed_run_resumes_its_average(tmp_path: Path) -> None:
    whole = _run(0.9, tmp_path / "whole")
    _run(0.9, tmp_path / "killed", stop_after=1)
    assert (next((tmp_path / "killed" / "checkpoints").glob("epoch-*")) / "ema.safetensors").is_file()
    resumed = _run(0.9, tmp_path / "killed", resume=True)
    for name, tensor in whole.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("decay", [0.0, 1.0, 1, "0.9"])
def test_a_bad_decay_names_the_parameter(decay: object) -> None:
    with pytest.raises(ParameterError, match="ema_decay"):
        TrainConfig(ema_decay=decay).validate()  # type: ignore[arg-type]
