"""The time budget: parsing ``time_budget``, how many epochs of a stage fit (measured on its first steps), a stage
shortened or skipped inside the one training loop, and ``auto`` choosing the frozen head when fine-tuning would
not fit on this machine; the adaptation probe that continues after a solved head only on a gain beyond the noise."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import TINY_BACKBONE, tiny_params

from headstart import ImageClassifier, ParameterError
from headstart.models import create_backbone
from headstart.models.classifier_net import ClassifierNet
from headstart.training.budget import (
    MIN_TUNE_EPOCHS,
    decide_epochs,
    fine_tune_within,
    parse_time_budget,
    resolve_time_budget,
)
from headstart.training.classification import classification_scores, classification_step
from headstart.training.loop import TrainConfig, TrainingTask, Validation, shuffled_batches, train
from headstart.training.recipes import plan_stages

STEP_SECONDS = 0.1  # each training step sleeps this long, so an epoch's time is known to the test (and a
# loaded machine, which slows the tiny network's compute, changes it little)


@pytest.mark.parametrize("value", ["5 minutes", "-3", -3, True, float("nan"), [300]])
def test_a_bad_time_budget_names_the_parameter_and_the_fix(value: object) -> None:
    with pytest.raises(ParameterError, match="time_budget") as info:
        parse_time_budget(value)
    assert repr(value) in str(info.value) and info.value.fix


def test_time_budget_values() -> None:
    assert [parse_time_budget(v) for v in ("90", "90s", "2m", "2 min", "0.5h", 45, "none", 0, None)] == [
        90.0, 90.0, 120.0, 120.0, 1800.0, 45.0, None, None, None]
    assert resolve_time_budget("auto", strategy="auto", on_gpu=True) == 1800.0
    assert resolve_time_budget("10m", strategy="fine_tune", on_gpu=False) == 600.0
    decision = decide_epochs("all", 6, 100.0, 350.0, 600.0)
    assert decision.epochs == 3 and "shortened to 3 of 6" in decision.message()
    assert decide_epochs("all", 6, 0.0, 1.0, 600.0).epochs == 6
    with pytest.raises(ParameterError, match="time_budget"):
        ImageClassifier(**tiny_params(time_budget="soon")).fit(".")


def _net() -> ClassifierNet:
    torch.manual_seed(0)
    model, _ = create_backbone(TINY_BACKBONE, 2, weights="random")
    return ClassifierNet(model)


def _task(slow: bool) -> TrainingTask:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(80, 3, 32, 32, generator=generator)
    labels = torch.arange(80) % 2
    images[labels == 1] += 0.5
    train_set = torch.utils.data.TensorDataset(images[:64], labels[:64])

    def step(module: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]):  # noqa: ANN202
        if slow:
            time.sleep(STEP_SECONDS)
        return classification_step(module, *batch, class_weight=None, label_smoothing=0.0)

    def validate(module: torch.nn.Module, device: torch.device) -> Validation:
        module.eval()
        with torch.no_grad():
            probabilities = module(images[64:]).softmax(-1)
        return Validation(classification_scores(probabilities.numpy(), labels[64:].numpy()))

    return TrainingTask(dataset=lambda epoch: train_set,
                        batches=lambda epoch: shuffled_batches(len(train_set), 8, seed=0, epoch=epoch),
                        step=step, validate=validate, val_items=16)


def _config(budget: float | None) -> TrainConfig:
    return TrainConfig(batch_size=8, patience=None, accelerator="cpu", time_budget=budget)


def test_a_stage_is_shortened_to_the_epochs_that_fit() -> None:
    # an epoch is 8 steps of >= 100 ms: ~0.85 s; 6 planned epochs take >= 5 s, the budget allows 2-3
    budget = 3.0
    started = time.perf_counter()
    state = train(_net(), _task(slow=True), stages=plan_stages("full", 6), config=_config(budget),
                  progress=False).state
    seconds = time.perf_counter() - started
    decision = state.budget[0]
    assert decision["planned_epochs"] == 6 and 1 <= decision["epochs"] < 6, decision
    assert decision["epoch_seconds"] >= 8 * STEP_SECONDS * 0.9
    assert len(state.history) <= decision["epochs"]
    assert seconds < budget + 1.5  # the probe steps and one epoch's misestimate at most


def test_a_stage_that_cannot_fit_is_skipped_and_the_solved_head_kept() -> None:
    # a trained head stage of one ~0.85 s epoch fits in 1.6 s; four unfrozen epochs after it do not
    stages = [replace(plan_stages("linear_probe", 1)[0], solve=False, epochs=1), *plan_stages("full", 4)]
    state = train(_net(), _task(slow=True), stages=stages, config=_config(1.6), progress=False).state
    assert [record["stage"] for record in state.history] == [stages[0].name]  # only the head stage ran
    assert state.finished and state.best_epoch == 1 and state.budget[0] == {**state.budget[0], "epochs": 1}
    assert any(d.get("epochs") == 0 or "stopped_after_epoch" in d for d in state.budget[1:] + state.budget[:1])


def test_one_time_work_is_not_expected_again_by_the_budget() -> None:
    """Partial fine-tuning caches a view's maps on its first use: an epoch that did so is not the next epoch's
    cost. Here epoch 1 spends 2 s once (reported by one_time_seconds), the next epochs ~0.85 s each."""
    spent = {"seconds": 0.0, "done": False}
    base = _task(slow=True)

    def dataset(epoch: int):  # noqa: ANN202
        if epoch == 1 and not spent["done"]:  # epoch 0 is the budget's timing probe of epoch index 0
            time.sleep(2.0)
            spent["seconds"], spent["done"] = 2.0, True
        return base.dataset(epoch)

    def run(report: bool) -> list[dict]:
        spent.update(seconds=0.0, done=False)
        task = replace(base, dataset=dataset, one_time_seconds=(lambda: spent["seconds"]) if report else None)
        config = _config(6.5)  # after the slow epoch ~4.5 s have gone: room for a 1 s epoch, not a 3 s one
        return train(_net(), task, stages=[replace(plan_stages("full", 6)[0], epochs=6)], config=config,
                     progress=False).state.history

    counted = run(report=True)
    assert counted[1]["one_time_seconds"] == 2.0 and len(counted) >= 3, [r["seconds"] for r in counted]
    assert len(run(report=False)) < len(counted)  # without the report the 3 s epoch looked like the next one


def test_a_budget_that_fits_changes_nothing_about_the_run() -> None:
    def losses(budget: float | None) -> list[float]:
        history = train(_net(), _task(slow=False), stages=plan_stages("full", 2), config=_config(budget),
                        progress=False).state.history
        return [(record["train_loss"], record["val_loss"]) for record in history]

    assert losses(None) == losses(3600.0)


def test_auto_fine_tunes_only_when_two_unfrozen_epochs_fit() -> None:
    net = _net()
    before = {name: value.clone() for name, value in net.state_dict().items()}
    rng = torch.get_rng_state()
    strategy, reason, figures = fine_tune_within(1.0, net, strategy="fine_tune", reason="2000 images",
                                                 n_train=2000, n_val=500, input_size=64)
    assert strategy == "linear_probe" and "budget" in reason and figures["train_images_per_second"] > 0
    assert all(torch.equal(before[name], value) for name, value in net.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())
    seconds = MIN_TUNE_EPOCHS * figures["estimated_epoch_seconds"] / 0.8 + 60
    assert fine_tune_within(seconds, net, strategy="fine_tune", reason="x", n_train=2000, n_val=500,
                            input_size=64)[0] == "fine_tune"


def test_the_estimator_plan_records_the_budget_choice(sample_dir) -> None:  # noqa: ANN001
    from rich.console import Console

    classifier = ImageClassifier(**tiny_params(strategy="auto", time_budget=1, epochs=None))
    strategy, _, stages = classifier._plan(3000, Console(quiet=True), net=_net(), n_val=500, input_size=64,
                                           budget=classifier._train_config().time_budget)
    assert strategy == "linear_probe" and [s.solve for s in stages] == [True]
    assert classifier.plan_["chosen"] == "linear_probe" and classifier.plan_["time_budget_seconds"] == 1.0
    assert "budget" in classifier.plan_["reason"] and classifier.plan_["train_images_per_second"] > 0


@pytest.mark.parametrize(("head_right", "tuned_right", "trained_epochs"),
                         [(True, False, 2), (False, True, 3), (True, True, 2)])
def test_the_adaptation_probe_continues_only_on_a_gain_beyond_the_noise(head_right: bool, tuned_right: bool,
                                                                        trained_epochs: int) -> None:
    from headstart.evaluation.metrics import paired_accuracy_gain

    labels = np.array([0, 1] * 40)
    right, wrong = np.eye(2)[labels], np.eye(2)[1 - labels] * 0.98 + 0.01
    task = _task(slow=False)
    task.solve_head = lambda net, fabric: Validation({"val_loss": 0.5, "val_accuracy": 0.5},
                                                     payload=right if head_right else wrong)
    task.validate = lambda net, device: Validation({"val_loss": 0.4, "val_accuracy": 0.6},
                                                   payload=right if tuned_right else wrong)
    task.gain_check = lambda head, tuned: paired_accuracy_gain(labels, head, tuned)
    stages = [*plan_stages("linear_probe", 1), *plan_stages("full", 3)]
    config = replace(_config(None), adaptation_probe=True)
    state = train(_net(), task, stages=stages, config=config, progress=False).state
    assert [r["stage"] for r in state.history] == ["head"] + ["all"] * trained_epochs
    # a gain ends the probe and training goes on; without one (worse, or no difference) two probe epochs, then stop
    probes = [r["adaptation_probe"] for r in state.history if "adaptation_probe" in r]
    expected = 1 if tuned_right and not head_right else 2
    assert [p["epoch"] for p in probes] == list(range(1, expected + 1))
    gain = tuned_right and not head_right
    assert probes[0]["significant"] is gain and (probes[0]["gain"] > 0) is gain
    assert (probes[0]["ci95"][1] < 0) is (head_right and not tuned_right)
    plain = train(_net(), task, stages=stages, config=_config(None), progress=False).state
    assert len(plain.history) == 4  # without the probe (explicit strategies) every epoch runs
