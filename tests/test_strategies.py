"""Strategies: stage plans, frozen backbones that keep BatchNorm statistics, discriminative learning rates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from headstart.backbones import create_backbone
from headstart.errors import ParameterError
from headstart.strategies import (
    ClassifierNet,
    choose_strategy,
    default_epochs,
    layer_groups,
    parameter_groups,
    plan_stages,
)
from headstart.train import lr_factor

from conftest import TINY_BACKBONE


def _net() -> ClassifierNet:
    torch.manual_seed(0)
    model, _ = create_backbone(TINY_BACKBONE, 3, weights="random")
    return ClassifierNet(model)


def test_stage_plans() -> None:
    assert [(s.name, s.freeze_backbone) for s in plan_stages("linear_probe", 5)] == [("head", True)]
    assert [(s.name, s.freeze_backbone) for s in plan_stages("full", 5)] == [("all", False)]
    head, everything = plan_stages("fine_tune", 12, lr=1e-3, head_epochs=2)
    assert head.freeze_backbone and not everything.freeze_backbone
    assert (head.epochs, everything.epochs) == (2, 12) and head.lr == 1e-3 and everything.lr < head.lr
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
    net.freeze_backbone(True)
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
    net.freeze_backbone(False)
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
    assert max(lr_of_first) == pytest.approx(stage.lr * stage.lr_ratio)
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

    from headstart.heads import fit_linear_head

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 150)
    features = rng.normal(size=(150, 20)) + 1.2 * np.eye(3, 20)[labels]
    fit = fit_linear_head(torch.tensor(features, dtype=torch.float32), torch.tensor(labels), n_classes=3, grid=(0.01,))
    # the same objective as scikit-learn's multinomial logistic regression with C = 1 / (n * l2)
    reference = LogisticRegression(C=1 / (150 * 0.01), max_iter=5000, tol=1e-10).fit(features, labels)
    assert np.allclose(fit.weight.numpy(), reference.coef_, atol=2e-3)
    chosen = fit_linear_head(torch.tensor(features, dtype=torch.float32), torch.tensor(labels), n_classes=3)
    assert len(chosen.cv) == 7 and chosen.l2 in [row["l2"] for row in chosen.cv]
    best = min(row["cv_log_loss"] for row in chosen.cv)
    row = next(r for r in chosen.cv if r["l2"] == chosen.l2)
    assert row["cv_log_loss"] <= best + max(r["standard_error"] for r in chosen.cv)
