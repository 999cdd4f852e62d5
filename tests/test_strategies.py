"""Strategies: stage plans, frozen backbones that keep BatchNorm statistics, discriminative learning rates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_BACKBONE

from headstart.errors import ParameterError
from headstart.models import create_backbone
from headstart.models.classifier_net import ClassifierNet, layer_groups
from headstart.training.optim import lr_factor, parameter_groups
from headstart.training.recipes import (
    Recipe,
    choose_strategy,
    default_epochs,
    plan_stages,
)


def _net() -> ClassifierNet:
    torch.manual_seed(0)
    model, _ = create_backbone(TINY_BACKBONE, 3, weights="random")
    return ClassifierNet(model)


def test_stage_plans() -> None:
    assert [(s.name, s.freeze_backbone) for s in plan_stages("linear_probe", 5)] == [("head", True)]
    assert [(s.name, s.freeze_backbone) for s in plan_stages("full", 5)] == [("all", False)]
    head, everything = plan_stages("fine_tune", 12, lr=1e-3, head_epochs=2)
    assert head.freeze_backbone and not everything.freeze_backbone
    # a classifier's frozen head is solved in one step; a trained one (dense decoders) runs head_epochs
    assert (head.epochs, head.solve, everything.epochs) == (1, True, 12) and head.lr == 1e-3 and everything.lr < head.lr
    trained = plan_stages("fine_tune", 12, lr=1e-3, head_epochs=2, recipe=Recipe(default_lr=1e-3, solve_head=False))
    assert [(s.epochs, s.solve, s.lr) for s in trained] == [(2, False, 1e-3), (12, False, 1e-3)]
    with pytest.raises(ParameterError, match="'strategy'.*Got 'finetune'") as info:
        plan_stages("finetune", 5)
    assert "fine_tune" in (info.value.fix or "")
    with pytest.raises(ParameterError, match="at least 1"):
        plan_stages("fine_tune", 0)


def test_default_strategy_depends_on_dataset_size() -> None:
    assert choose_strategy(40)[0] == "linear_probe"
    assert choose_strategy(400)[0] == "linear_probe"
    assert choose_strategy(4000)[0] == "fine_tune"
    assert default_epochs("fine_tune", 40_000) < default_epochs("fine_tune", 400)


def test_frozen_backbone_keeps_batchnorm_statistics_and_trains_only_the_head() -> None:
    net = _net()
    net.set_trainable(freeze_backbone=True)
    net.train()
    bn = net.model.bn1
    before = bn.running_mean.clone()
    stem = net.model.conv_stem.weight.clone()
    optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    loss = net(torch.randn(4, 3, 64, 64) * 3 + 1).logsumexp(1).mean()
    loss.backward()
    optimizer.step()
    assert torch.equal(bn.running_mean, before), "frozen BatchNorm statistics moved"
    assert torch.equal(net.model.conv_stem.weight, stem)
    assert net.model.get_classifier().weight.grad is not None
    assert all(not p.requires_grad for n, p in net.model.named_parameters() if not n.startswith("classifier"))
    net.set_trainable()
    net.train()
    net(torch.randn(4, 3, 64, 64) * 3 + 1)
    assert not torch.equal(bn.running_mean, before), "unfrozen BatchNorm should update its statistics"


def test_new_head_starts_near_uniform() -> None:
    net = _net()
    net.eval()
    probabilities = torch.softmax(net(torch.randn(2, 3, 64, 64)), 1)
    assert torch.allclose(probabilities, torch.full_like(probabilities, 1 / 3), atol=0.05)


def test_discriminative_learning_rates_grow_towards_the_head() -> None:
    net = _net()
    backbone, head = layer_groups(net.model)
    assert len(backbone) == 3 and head
    total = sum(p.numel() for g in backbone for p in g) + sum(p.numel() for p in head)
    assert total == sum(p.numel() for p in net.model.parameters())
    stage = plan_stages("fine_tune", 8, lr=1e-3)[1]
    groups = parameter_groups(net, stage, weight_decay=0.05)
    first = {id(p) for p in backbone[0]}
    lr_of_first = {g["lr"] for g in groups if any(id(p) in first for p in g["params"])}
    lr_of_head = {g["lr"] for g in groups if any(p is head[0] for p in g["params"])}
    assert max(lr_of_first) == pytest.approx(stage.lr * stage.lr_mult ** len(backbone))
    assert lr_of_head == {stage.lr}
    assert all(g["weight_decay"] == 0 for g in groups if all(p.ndim == 1 for p in g["params"]))
    frozen_groups = parameter_groups(net, plan_stages("fine_tune", 8)[0], weight_decay=0.05)
    assert {id(p) for g in frozen_groups for p in g["params"]} == {id(p) for p in head}


def test_lr_schedule_warms_up_then_decays() -> None:
    values = [lr_factor(step, 100, warmup_steps=10) for step in range(101)]
    assert values[0] < values[5] < values[9] == 1.0
    assert all(a >= b for a, b in zip(values[10:], values[11:]))
    assert values[-1] == pytest.approx(0.0)


def test_linear_head_is_solved_with_a_cross_validated_penalty() -> None:
    from sklearn.linear_model import LogisticRegression

    from headstart.training.heads import fit_linear_head

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 150)
    features = rng.normal(size=(150, 20)) + 1.2 * np.eye(3, 20)[labels]
    fit = fit_linear_head(torch.tensor(features, dtype=torch.float32), torch.tensor(labels), n_classes=3, grid=(0.01,))
    # the same objective as scikit-learn's multinomial logistic regression with C = 1 / (n * l2)
    reference = LogisticRegression(C=1 / (150 * 0.01), max_iter=5000, tol=1e-10).fit(features, labels)
    assert np.allclose(fit.weight.numpy(), reference.coef_, atol=2e-3)
    # all-positive features far from the origin (as pooled CNN features are) and class weights: the solver
    # centres the features internally, and the bias it returns must undo that exactly
    shifted = features + 10.0
    class_weight = torch.tensor([1.0, 2.0, 0.5])
    fit = fit_linear_head(torch.tensor(shifted, dtype=torch.float32), torch.tensor(labels), n_classes=3,
                          grid=(0.01,), class_weight=class_weight)
    sample_weight = class_weight.numpy()[labels]
    reference = LogisticRegression(C=1 / (sample_weight.sum() * 0.01), max_iter=20000, tol=1e-10).fit(
        shifted, labels, sample_weight=sample_weight)
    probabilities = torch.softmax(torch.tensor(shifted, dtype=torch.float32) @ fit.weight.T + fit.bias, dim=1)
    assert np.allclose(fit.weight.numpy(), reference.coef_, atol=2e-3)
    assert np.abs(probabilities.numpy() - reference.predict_proba(shifted)).max() < 2e-3
    chosen = fit_linear_head(torch.tensor(features, dtype=torch.float32), torch.tensor(labels), n_classes=3)
    assert len(chosen.cv) == 7 and chosen.l2 in [row["l2"] for row in chosen.cv]
    best = min(row["cv_log_loss"] for row in chosen.cv)
    row = next(r for r in chosen.cv if r["l2"] == chosen.l2)
    assert row["cv_log_loss"] <= best + max(r["standard_error"] for r in chosen.cv)


def _trainable(net: ClassifierNet) -> set[str]:
    return {name for name, p in net.model.named_parameters() if p.requires_grad}


def test_gradual_unfreezing_opens_one_layer_group_per_stage() -> None:
    net = _net()
    backbone, head = layer_groups(net.model)
    names = {id(p): n for n, p in net.model.named_parameters()}
    group_names = [{names[id(p)] for p in group} for group in backbone]
    head_names = {names[id(p)] for p in head}
    stages = plan_stages("gradual_unfreeze", 4, lr=1e-3)
    assert [(s.name, s.epochs, s.trainable_groups) for s in stages] == [
        ("head", 1, None), ("top-1", 1, 1), ("top-2", 1, 2), ("all", 4, None)]
    expected = [head_names, head_names | group_names[2], head_names | group_names[1] | group_names[2],
                head_names | group_names[0] | group_names[1] | group_names[2]]
    for stage, wanted in zip(stages, expected):
        net.set_trainable(freeze_backbone=stage.freeze_backbone, freeze_batchnorm=stage.freeze_batchnorm,
                          trainable_groups=stage.trainable_groups)
        assert _trainable(net) == wanted, stage.name
        in_optimizer = {names[id(p)] for g in parameter_groups(net, stage, weight_decay=0.01) for p in g["params"]}
        assert in_optimizer == wanted, f"optimizer of stage {stage.name} must hold exactly the trainable parameters"
    # partially unfrozen stages keep BatchNorm statistics; earlier groups learn more slowly
    net.set_trainable(freeze_batchnorm=True, trainable_groups=1)
    net.train()
    before = net.model.bn1.running_mean.clone()
    net(torch.randn(4, 3, 64, 64) * 3 + 1)
    assert torch.equal(net.model.bn1.running_mean, before)


def test_lp_ft_solves_the_head_then_fine_tunes_everything_with_one_small_rate() -> None:
    head, everything = plan_stages("lp_ft", 3, lr=2e-3)
    assert head.freeze_backbone and not everything.freeze_backbone
    assert everything.lr == pytest.approx(2e-3 / 20) and everything.lr_mult == 1.0 and everything.freeze_batchnorm
    net = _net()
    net.set_trainable(freeze_batchnorm=True)
    assert _trainable(net) == {n for n, _ in net.model.named_parameters()}
    assert {g["lr_scale"] for g in parameter_groups(net, everything, weight_decay=0.01)} == {1.0}


def test_lr_mult_sets_the_per_group_ratio() -> None:
    stage = plan_stages("fine_tune", 2, lr=1e-3, lr_mult=0.5)[1]
    net = _net()
    scales = sorted({g["lr_scale"] for g in parameter_groups(net, stage, weight_decay=0.0)})
    assert scales == pytest.approx([0.125, 0.25, 0.5, 1.0])  # three groups below the head: 0.5, 0.5^2, 0.5^3
    with pytest.raises(ParameterError, match="lr_mult"):
        plan_stages("fine_tune", 2, lr_mult=1.5)


@pytest.mark.parametrize("strategy, stages", [("lp_ft", ["head", "all"]),
                                              ("gradual_unfreeze", ["head", "top-1", "top-2", "all"])])
def test_new_strategies_train_end_to_end(sample_dir, tmp_path, strategy: str, stages: list[str]) -> None:
    from conftest import tiny_params

    from headstart import ImageClassifier

    classifier = ImageClassifier(**tiny_params(strategy=strategy, epochs=1, calibrate=False)).fit(sample_dir)
    assert [record["stage"] for record in classifier.history_] == stages
    assert "l2" in classifier.history_[0], "the frozen head stage is solved on cached features"
    assert classifier.predict_proba(sorted((sample_dir / "test").rglob("*.jpg"))[:3]).shape == (3, 2)
