"""What the first trained epoch after a solved head costs, variant by variant (issue 17, item 1).

    .venv/bin/python bench/ablate_first_epoch.py --dataset chest_xray [--variants JSON] [--json out.json]

Each variant is ImageClassifier parameters (224 px unless ``image_size`` says otherwise) with no time budget and
no early stopping, plus bench-only switches: ``crop_scale`` (the random-resized-crop scale range),
``freeze_batchnorm`` (true: the unfrozen stage keeps the pretrained BatchNorm statistics; false: they update),
``warmup_fraction`` and ``min_warmup_epochs`` (the warm-up, with a linearly rising learning rate, lasts that share
of the stage's steps but at least that many epochs; the loop's defaults 0.1 and 0.5),
``ema_decay`` (validate and keep the moving average of the weights, ``TrainConfig.ema_decay``) and ``l2_sp`` (alpha of Li et al. 2018's penalty alpha/2 * ||w - w0||^2 on the pretrained weights w, w0 their
values at the stage's first step, added to the loss; the recorded train loss includes it). Default variants:
the table in docs/benchmarks.md. chest_xray uses 500 + 500 images of chest_xray/train for training and 250 + 250
more for validation (seed 0; test/ is never read); hymenoptera its train/ and val/. One feature store is shared by
the variants (the solved head's features are computed once).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, train_val_folders, write_results  # noqa: E402

import headstart.data.transforms as transforms  # noqa: E402
import headstart.estimators.image as image_module  # noqa: E402
from headstart import ImageClassifier  # noqa: E402
from headstart.training.classification import classification_step  # noqa: E402
from headstart.training.recipes import plan_stages  # noqa: E402

VARIANTS = {
    "fine_tune, BatchNorm statistics update (the earlier default)": {"strategy": "fine_tune", "epochs": 1,
                                                                     "freeze_batchnorm": False},
    "fine_tune, statistics update, label smoothing 0": {"strategy": "fine_tune", "epochs": 1, "freeze_batchnorm": False,
                                                        "label_smoothing": 0.0},
    "fine_tune, statistics update, lr / 10": {"strategy": "fine_tune", "epochs": 1, "freeze_batchnorm": False,
                                              "lr": 2e-4, "label_smoothing": 0.0},
    "fine_tune, statistics update, RRC scale 0.8-1": {"strategy": "fine_tune", "epochs": 1, "freeze_batchnorm": False,
                                                      "label_smoothing": 0.0, "crop_scale": [0.8, 1.0]},
    "fine_tune, statistics kept (the default now)": {"strategy": "fine_tune", "epochs": 1, "freeze_batchnorm": True},
    "fine_tune, statistics kept, label smoothing 0": {"strategy": "fine_tune", "epochs": 1, "freeze_batchnorm": True,
                                                      "label_smoothing": 0.0},
    "lp_ft, label smoothing 0": {"strategy": "lp_ft", "epochs": 1, "label_smoothing": 0.0},
    "partial, 2 epochs": {"strategy": "partial", "epochs": 2},
    "partial, 2 epochs, label smoothing 0": {"strategy": "partial", "epochs": 2, "label_smoothing": 0.0},
}


# item 1's other levers (docs/benchmarks.md): `--variants levers`. "A tenth" is the loop's warm-up before
# min_warmup_epochs (0.5) was adopted from this table.
TENTH = {"strategy": "fine_tune", "epochs": 1, "freeze_batchnorm": True, "min_warmup_epochs": 0.0}
LEVERS = {
    "warm-up a tenth of the epoch": TENTH,
    "warm-up over half the epoch (the default now)": {**TENTH, "min_warmup_epochs": 0.5},
    "L2-SP alpha 0.1": {**TENTH, "l2_sp": 0.1},
    "L2-SP alpha 1": {**TENTH, "l2_sp": 1.0},
    "EMA of the weights 0.95": {**TENTH, "ema_decay": 0.95},
    "EMA of the weights 0.99": {**TENTH, "ema_decay": 0.99},
    "288 px head and training": {**TENTH, "image_size": 288},
}


def l2_sp_step(alpha: float):
    """classification_step plus alpha/2 * ||w - w0||^2 over the trainable pretrained weights (w0: at the first step)."""
    anchors: dict[int, torch.Tensor] = {}

    def step(module, images, labels, **kwargs):
        output = classification_step(module, images, labels, **kwargs)
        weights = [p for name, p in module.named_parameters() if p.requires_grad and "classifier" not in name]
        for weight in weights:
            anchors.setdefault(id(weight), weight.detach().clone())
        penalty = sum(((w - anchors[id(w)]) ** 2).sum() for w in weights)
        return dataclasses.replace(output, loss=output.loss + 0.5 * alpha * penalty)

    return step


def run_variant(train: Path, val: Path, cache: Path, change: dict) -> list[tuple]:
    change = dict(change)
    transforms.TRAIN_CROP_SCALE = tuple(change.pop("crop_scale", (0.35, 1.0)))
    frozen = change.pop("freeze_batchnorm", None)

    def stages(*args: object, **kwargs: object) -> list:
        planned = plan_stages(*args, **kwargs)
        if frozen is None:
            return planned
        return [dataclasses.replace(s, freeze_batchnorm=frozen) if s.name == "all" else s for s in planned]

    loop = {k: change.pop(k) for k in ("warmup_fraction", "min_warmup_epochs", "ema_decay") if k in change}
    alpha = change.pop("l2_sp", None)
    config = ImageClassifier._train_config
    image_module.plan_stages = stages
    if loop:
        ImageClassifier._train_config = lambda self: dataclasses.replace(config(self), **loop)
    if alpha is not None:
        image_module.classification_step = l2_sp_step(alpha)
    try:
        classifier = ImageClassifier(**{"image_size": 224, **change}, patience=None, time_budget=None, cache_dir=cache,
                                     progress=False).fit(train, val=val)
    finally:
        image_module.plan_stages, transforms.TRAIN_CROP_SCALE = plan_stages, (0.35, 1.0)
        ImageClassifier._train_config, image_module.classification_step = config, classification_step
    return [(r["stage"], round(r["train_loss"], 4), round(r["val_loss"], 4), round(r["val_accuracy"], 4))
            for r in classifier.history_]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=("hymenoptera", "chest_xray"), default="chest_xray")
    parser.add_argument("--variants", default=None,
                        help="'levers' (item 1's other levers), or a JSON object: name -> parameters (default: the table)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    variants = LEVERS if args.variants == "levers" else json.loads(args.variants) if args.variants else VARIANTS
    results: dict[str, object] = {"machine": machine(), "dataset": args.dataset,
                                  "columns": ["stage", "train_loss", "val_loss", "val_accuracy"]}
    with tempfile.TemporaryDirectory(prefix="headstart-ablate-") as folder:
        root = Path(folder)
        train, val = train_val_folders(args.dataset, root)
        for name, change in variants.items():
            results[name] = rows = run_variant(train, val, root / "cache", change)
            print(f"{name}: " + ", ".join(f"{stage} val acc {acc:.4f} loss {loss:.4f}" for stage, _, loss, acc in rows),
                  flush=True)
    write_results(args.json, results)


if __name__ == "__main__":
    main()
