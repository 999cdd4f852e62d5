"""The learning-rate range test: the sweep, the suggestion, the frozen backbone, and a network left as it was."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import TINY_BACKBONE
from PIL import Image
from torch.optim.optimizer import register_optimizer_step_pre_hook

from headstart.data import ImageDataset, build_transform, load_image_dataset
from headstart.errors import ParameterError
from headstart.models import Preprocessing, create_backbone, get_backbone_spec
from headstart.models.classifier_net import ClassifierNet
from headstart.training.lr_finder import (
    LRFinderResult,
    find_learning_rate,
    plot_lr_finder,
    suggest_learning_rate,
)
from headstart.training.recipes import Stage, plan_stages

# The frozen sweep goes to 10; the unfrozen one to 100, far enough for a random-weight network to diverge in 20 steps.
START_LR, END_LR, STEPS = 1e-5, 10.0, 20
UNFROZEN_END_LR = 100.0
HEAD_STAGE, ALL_STAGE = plan_stages("fine_tune", 1)  # frozen head; then everything, the earliest group 20x slower


def _dataset(sample_dir: Path) -> ImageDataset:
    """The sample's 32 training photos at 64 px, with the training augmentations."""
    splits = load_image_dataset(sample_dir)
    preprocessing = Preprocessing.from_dict({**get_backbone_spec(TINY_BACKBONE).preprocessing().to_dict(),
                                             "input_size": 64})
    return ImageDataset(splits.train.paths, splits.train.labels, build_transform(preprocessing, train=True))


def _net() -> ClassifierNet:
    torch.manual_seed(0)
    model, _ = create_backbone(TINY_BACKBONE, 2, weights="random")
    return ClassifierNet(model)


def _snapshot(net: ClassifierNet) -> dict[str, Any]:
    """Everything about ``net`` that the finder must give back unchanged."""
    return {
        "state": {k: v.detach().clone() for k, v in net.state_dict().items()},
        "requires_grad": {k: p.requires_grad for k, p in net.named_parameters()},
        "grads": {k: None if p.grad is None else p.grad.clone() for k, p in net.named_parameters()},
        "training": {k: m.training for k, m in net.named_modules()},
        "frozen": (net.backbone_frozen, net.batchnorm_frozen),
    }


def _assert_same(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert before["state"].keys() == after["state"].keys()
    changed = [k for k in before["state"] if not torch.equal(before["state"][k], after["state"][k])]
    assert not changed, f"weights or buffers changed by the finder: {changed[:5]}"
    assert before["requires_grad"] == after["requires_grad"]
    assert before["training"] == after["training"]
    assert before["frozen"] == after["frozen"]
    for name, grad in before["grads"].items():
        other = after["grads"][name]
        if grad is None:
            assert other is None, name
        else:
            assert other is not None and torch.equal(grad, other), name


@dataclass
class Sweep:
    """One finder run, with what was seen inside it (at every forward pass and optimizer step)."""

    net: ClassifierNet
    stage: Stage
    end_lr: float
    before: dict[str, Any]
    after: dict[str, Any]
    result: LRFinderResult
    rng_unchanged: bool
    backbone_changed: list[bool] = field(default_factory=list)  # per forward: backbone weights/buffers moved
    backbone_grads: list[bool] = field(default_factory=list)  # per forward: a backbone parameter has a gradient
    head_changed: list[bool] = field(default_factory=list)
    group_lrs: list[list[tuple[float, float]]] = field(default_factory=list)  # per step: (lr, lr_scale) per group


def _sweep(net: ClassifierNet, dataset: ImageDataset, stage: Stage, *, end_lr: float) -> Sweep:
    before = _snapshot(net)
    classifier = net.model.get_classifier()
    head_names = {f"model.{name}" for name in ("classifier.weight", "classifier.bias")}
    assert {k for k, p in net.named_parameters() if any(p is q for q in classifier.parameters())} == head_names
    backbone_state = [k for k in before["state"] if k not in head_names]
    parameters = dict(net.named_parameters())
    seen: dict[str, list[Any]] = {"backbone_changed": [], "backbone_grads": [], "head_changed": [], "group_lrs": []}

    def inspect_before_head(*_: Any) -> None:  # runs inside every forward pass of the sweep
        state = net.state_dict()
        seen["backbone_changed"].append(any(not torch.equal(state[k], before["state"][k]) for k in backbone_state))
        seen["backbone_grads"].append(any(parameters[k].grad is not None for k in parameters if k not in head_names))
        seen["head_changed"].append(not torch.equal(classifier.weight, before["state"]["model.classifier.weight"]))

    def record_lrs(optimizer: torch.optim.Optimizer, *_: Any) -> None:
        seen["group_lrs"].append([(group["lr"], group["lr_scale"]) for group in optimizer.param_groups])

    rng = torch.get_rng_state()
    handles = [classifier.register_forward_pre_hook(inspect_before_head), register_optimizer_step_pre_hook(record_lrs)]
    try:
        result = find_learning_rate(net, dataset, stage=stage, start_lr=START_LR, end_lr=end_lr, num_steps=STEPS,
                                    batch_size=8)
    finally:
        for handle in handles:
            handle.remove()
    return Sweep(net, stage, end_lr, before, _snapshot(net), result, torch.equal(rng, torch.get_rng_state()), **seen)


@pytest.fixture(scope="module")
def dataset(sample_dir: Path) -> ImageDataset:
    return _dataset(sample_dir)


@pytest.fixture(scope="module")
def unfrozen_sweep(dataset: ImageDataset) -> Sweep:
    """The whole network swept with discriminative learning rates, starting from a frozen net in eval mode with a
    gradient on its head: all three must come back."""
    net = _net()
    net.set_trainable(freeze_backbone=True)
    net.eval()
    net.model.get_classifier().weight.grad = torch.full_like(net.model.get_classifier().weight, 0.5)
    return _sweep(net, dataset, ALL_STAGE, end_lr=UNFROZEN_END_LR)


@pytest.fixture(scope="module")
def frozen_sweep(dataset: ImageDataset) -> Sweep:
    """The head swept with the backbone frozen, starting from an unfrozen net in train mode."""
    net = _net()
    net.train()
    return _sweep(net, dataset, HEAD_STAGE, end_lr=END_LR)


@pytest.mark.parametrize("which", ["unfrozen_sweep", "frozen_sweep"])
def test_network_is_restored(which: str, request: pytest.FixtureRequest) -> None:
    sweep: Sweep = request.getfixturevalue(which)
    # The sweep really trained (else "unchanged afterwards" would prove nothing) ...
    assert any(sweep.head_changed)
    if not sweep.stage.freeze_backbone:
        assert any(sweep.backbone_changed)  # weights and BatchNorm statistics moved
    # ... and everything is back: weights, buffers, requires_grad, train/eval flags, frozen state, gradients.
    _assert_same(sweep.before, sweep.after)
    assert sweep.rng_unchanged, "the finder reseeded the caller's global torch random state"


def test_learning_rates_are_exponentially_spaced(unfrozen_sweep: Sweep, frozen_sweep: Sweep) -> None:
    for sweep in (unfrozen_sweep, frozen_sweep):
        result, factor = sweep.result, (sweep.end_lr / START_LR) ** (1 / (STEPS - 1))
        lrs = result.learning_rates
        assert len(lrs) == len(result.losses) == len(result.smoothed_losses) >= 10
        assert lrs[0] == pytest.approx(START_LR, rel=1e-12)
        assert [b / a for a, b in itertools.pairwise(lrs)] == pytest.approx([factor] * (len(lrs) - 1), rel=1e-9)
        if result.stopped_early:
            assert len(lrs) < STEPS
        else:
            assert len(lrs) == STEPS and lrs[-1] == pytest.approx(sweep.end_lr, rel=1e-9)


def test_losses_are_smoothed_with_bias_correction(unfrozen_sweep: Sweep) -> None:
    result = unfrozen_sweep.result
    average, expected = 0.0, []
    for step, loss in enumerate(result.losses):
        average = 0.98 * average + 0.02 * loss
        expected.append(average / (1 - 0.98 ** (step + 1)))
    assert result.smoothed_losses == pytest.approx(expected, rel=1e-9)
    assert result.smoothed_losses[0] == pytest.approx(result.losses[0])  # bias-corrected: not pulled towards 0
    assert len(set(result.losses)) > 1 and result.smoothed_losses != result.losses


def test_unfrozen_sweep_diverges_and_stops_early(unfrozen_sweep: Sweep) -> None:
    # Up to 100 the whole random-weight network blows up: the sweep stops once the smoothed loss passes 4x its best.
    result = unfrozen_sweep.result
    assert result.stopped_early and len(result.learning_rates) < STEPS
    assert result.smoothed_losses[-1] > 4 * min(result.smoothed_losses)
    assert all(s <= 4 * min(result.smoothed_losses[:i + 1]) for i, s in enumerate(result.smoothed_losses[:-1]))


@pytest.mark.parametrize("which", ["unfrozen_sweep", "frozen_sweep"])
def test_suggestion_is_in_range_where_the_loss_falls(which: str, request: pytest.FixtureRequest) -> None:
    sweep: Sweep = request.getfixturevalue(which)
    result = sweep.result
    assert START_LR <= result.suggestion <= sweep.end_lr
    assert result.suggestion in result.learning_rates
    assert result.suggestion == suggest_learning_rate(result.learning_rates, result.smoothed_losses)
    index = result.learning_rates.index(result.suggestion)
    smoothed = result.smoothed_losses
    # Inside the descent: some earlier point is higher, some later point is lower, and it comes before the minimum.
    assert max(smoothed[:index], default=-math.inf) > smoothed[index] > min(smoothed[index + 1:], default=math.inf)
    assert index < smoothed.index(min(smoothed))


def test_frozen_backbone_is_untouched_while_sweeping(frozen_sweep: Sweep) -> None:
    assert len(frozen_sweep.backbone_changed) == len(frozen_sweep.result.learning_rates) >= 10
    assert not any(frozen_sweep.backbone_changed), "a frozen backbone's weights or BatchNorm statistics moved"
    assert not any(frozen_sweep.backbone_grads), "a frozen backbone parameter received a gradient"
    assert any(frozen_sweep.head_changed)
    # Only the head is in the optimizer.
    assert all(scale == 1.0 for step in frozen_sweep.group_lrs for _, scale in step)
    assert len(frozen_sweep.group_lrs[0]) == 2  # head weight (decayed) and bias (not)


def test_unfrozen_sweep_keeps_discriminative_ratios(unfrozen_sweep: Sweep) -> None:
    result = unfrozen_sweep.result
    assert len(unfrozen_sweep.group_lrs) == len(result.learning_rates)
    for lr, groups in zip(result.learning_rates, unfrozen_sweep.group_lrs, strict=True):
        assert [group_lr for group_lr, _ in groups] == pytest.approx([lr * scale for _, scale in groups], rel=1e-12)
    scales = {round(scale, 6) for _, scale in unfrozen_sweep.group_lrs[0]}
    # head 1, last backbone group (1/20)^(1/3), ..., earliest group (1/20)^(3/3) = 1/20
    assert max(scales) == 1.0 and min(scales) == pytest.approx(ALL_STAGE.lr_mult ** 3) == pytest.approx(1 / 20) and len(scales) == 4


def test_same_seed_same_curve(dataset: ImageDataset, frozen_sweep: Sweep) -> None:
    runs = [find_learning_rate(_net(), dataset, stage=HEAD_STAGE, num_steps=10, batch_size=8, seed=3)
            for _ in range(2)]
    assert runs[0].losses == runs[1].losses and runs[0].suggestion == runs[1].suggestion
    # The frozen sweep used seed 0 on the same initial network and batch size: its first loss, measured before any
    # update, differs only because another seed drew other images and other augmentations.
    assert frozen_sweep.result.losses[0] != runs[0].losses[0]


def test_suggestion_of_known_curves() -> None:
    lrs = [10 ** (-7 + i / 10) for i in range(81)]  # 1e-7 ... 10
    # Flat until 1e-5, falls (with wiggles) to its minimum at 1e-1, then climbs steeply.
    curve = [1.0 if lr <= 1e-5 else
             1.0 - 0.1 * math.log10(lr / 1e-5) + 0.01 * math.sin(7 * i) if lr <= 1e-1 else
             0.6 + 5 * (lr - 1e-1) for i, lr in enumerate(lrs)]
    suggestion = suggest_learning_rate(lrs, curve)
    assert 1e-4 <= suggestion <= 1e-2  # half-way down the valley (1e-3 on the log axis), far below the minimum
    # A curve that only rises: nothing was safe, so the smallest learning rate that was read.
    rising = [1.0 + i for i in range(len(lrs))]
    assert suggest_learning_rate(lrs, rising) == lrs[len(lrs) // 10]
    # Points that are not finite are ignored.
    assert suggest_learning_rate(lrs, [math.nan] * 5 + curve[5:]) == suggestion
    with pytest.raises(ParameterError, match="same length"):
        suggest_learning_rate(lrs, curve[:-1])
    with pytest.raises(ParameterError, match="no finite loss"):
        suggest_learning_rate(lrs[:3], [math.inf] * 3)


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"start_lr": 1e-3, "end_lr": 1e-3}, "end_lr"),
        ({"start_lr": 1.0, "end_lr": 0.1}, "end_lr"),
        ({"start_lr": 0.0}, "start_lr"),
        ({"start_lr": -1e-5}, "start_lr"),
        ({"num_steps": 9}, "num_steps"),
        ({"batch_size": 0}, "batch_size"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
    ],
)
def test_bad_options_raise_parameter_error(options: dict[str, Any], name: str, dataset: ImageDataset) -> None:
    net = _net()
    before = _snapshot(net)
    with pytest.raises(ParameterError, match=f"'{name}'") as info:
        find_learning_rate(net, dataset, stage=HEAD_STAGE, **options)
    assert info.value.fix
    _assert_same(before, _snapshot(net))


def test_empty_or_unlabelled_dataset_raises(dataset: ImageDataset) -> None:
    empty = ImageDataset([], [], dataset.transform)
    with pytest.raises(ParameterError, match="'dataset'.*no images"):
        find_learning_rate(_net(), empty, stage=HEAD_STAGE)
    unlabelled = ImageDataset(dataset.paths[:4], None, dataset.transform)
    with pytest.raises(ParameterError, match="'dataset'.*labelled"):
        find_learning_rate(_net(), unlabelled, stage=HEAD_STAGE)


def test_result_to_dict_is_json(unfrozen_sweep: Sweep) -> None:
    data = json.loads(json.dumps(unfrozen_sweep.result.to_dict()))
    assert data["stage"] == "all" and data["suggestion"] == unfrozen_sweep.result.suggestion
    assert set(data) == {"learning_rates", "losses", "smoothed_losses", "suggestion", "stopped_early", "stage"}
    assert LRFinderResult(**data) == unfrozen_sweep.result


def test_plot_is_a_png(unfrozen_sweep: Sweep, tmp_path: Path) -> None:
    target = tmp_path / "plots" / "lr_find.png"
    written = plot_lr_finder(unfrozen_sweep.result, target, title="range test")
    assert written == target
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(target) as image:
        image.verify()
    with Image.open(target) as image:
        assert image.format == "PNG" and image.width > 300 and image.height > 200
    assert sorted(p.name for p in target.parent.iterdir()) == ["lr_find.png"]  # no temporary file left behind
