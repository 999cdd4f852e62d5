"""Partial ("surgical") fine-tuning: the top blocks on the frozen blocks' cached output give the same logits as
the whole network, only those blocks train, and bad settings are refused with a fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from conftest import TINY_BACKBONE, tiny_params

from headstart import ImageClassifier, ParameterError
from headstart.models import create_backbone
from headstart.models.classifier_net import ClassifierNet
from headstart.training.partial import forward_bottom, forward_top, split_index


def test_the_top_blocks_on_cached_maps_give_the_whole_networks_logits() -> None:
    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", num_classes=3).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for blocks in (1, 2, len(model.blocks)):
            split = split_index(model, blocks)
            net = ClassifierNet(model)
            net.split = split
            torch.testing.assert_close(net({"maps": forward_bottom(model, images, split)}), model(images))


def test_only_the_last_blocks_and_the_head_train() -> None:
    model, _ = create_backbone(TINY_BACKBONE, 2, weights="random")
    net = ClassifierNet(model)
    net.split = split_index(model, 2)
    net.set_trainable(trainable_groups=1, freeze_batchnorm=True)
    trainable = {name for name, p in net.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith(("model.blocks.3", "model.blocks.4", "model.conv_head", "model.bn2",
                                              "model.classifier")) for name in trainable), sorted(trainable)
    assert any(name.startswith("model.classifier") for name in trainable)
    assert not any(name.startswith(("model.conv_stem", "model.blocks.0", "model.blocks.2")) for name in trainable)


def test_a_partial_fit_changes_only_the_top_blocks(sample_dir: Path) -> None:
    # validated on its own training images, so that a trained epoch (not the solved head) is the best one kept
    params = tiny_params(strategy="partial", epochs=2, tune_blocks=1, lr=0.05)
    classifier = ImageClassifier(**params).fit(sample_dir / "train", val=sample_dir / "train")
    assert [r["stage"] for r in classifier.history_] == ["head", "top", "top"] and classifier.best_epoch_ > 1
    torch.manual_seed(classifier.seed)
    start, _ = create_backbone(TINY_BACKBONE, 2, weights="random")  # the fit's initial weights (same seed)
    trained = classifier.model_.state_dict()
    changed = {name for name, value in start.state_dict().items()
               if not name.startswith("classifier") and not torch.equal(value, trained[name])}
    assert changed and all(name.startswith(("blocks.4.", "conv_head", "bn2")) for name in changed), sorted(changed)
    again = ImageClassifier(**params).fit(sample_dir / "train", val=sample_dir / "train")
    assert [r["train_loss"] for r in again.history_] == [r["train_loss"] for r in classifier.history_]


def test_bad_partial_settings_name_the_fix(sample_dir: Path) -> None:
    with pytest.raises(ParameterError, match="tune_blocks") as info:
        ImageClassifier(**tiny_params(strategy="partial", tune_blocks=9)).fit(sample_dir)
    assert "--tune-blocks" in (info.value.fix or "")
    with pytest.raises(ParameterError, match="'tune_blocks'.*integer") as info:  # refused before any data is read
        ImageClassifier(**tiny_params(strategy="fine_tune", tune_blocks=0)).fit("no-such-folder")
    assert "--tune-blocks" in (info.value.fix or "")
    with pytest.raises(ParameterError, match="strategy='partial'") as info:
        ImageClassifier(**tiny_params(strategy="partial", feature_layers="all")).fit(sample_dir)
    assert "feature_layers='last'" in (info.value.fix or "")
    with pytest.raises(ParameterError, match="EfficientNet family") as info:
        ImageClassifier(**tiny_params(backbone="timm:test_vit", image_size=160, strategy="partial")).fit(sample_dir)
    assert "fine_tune" in (info.value.fix or "")
