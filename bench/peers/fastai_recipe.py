"""Peer contestant (b): fastai's documented transfer-learning recipe (``vision_learner`` + ``fine_tune``) on
hymenoptera (train -> val), with headstart's default backbone and weights. Runs in the peers environment:

    bash bench/setup-peers.sh                                   # once: bench/.venv-peers with fastai
    bench/.venv-peers/bin/python bench/peers/fastai_recipe.py [--epochs 4] [--json bench/results/peer_fastai.json]
    bench/.venv-peers/bin/python bench/peers/fastai_recipe.py --epochs 1 --limit 32 --bs 16   # smoke test

The recipe (fastai docs / fastbook "Image Classification", presizing):
  - ``ImageDataLoaders.from_folder(path, train="train", valid="val", item_tfms=Resize(460),
    batch_tfms=aug_transforms(size=224, min_scale=0.75))``, fastai's defaults otherwise (bs=64, shuffled train
    loader with drop_last, num_workers = number of CPUs = 2 here). ``--recipe resize224`` switches to the
    quick-start variant ``item_tfms=Resize(224)`` with no batch augmentation;
  - ``vision_learner(dls, "tf_efficientnet_lite0", metrics=accuracy)``: fastai builds the timm body with
    ``timm.create_model(arch, pretrained=True, num_classes=0, **kwargs)`` and puts its own head on
    (concat pool, BatchNorm, dropout, Linear 2560->512, ReLU, BatchNorm, dropout, Linear 512->2);
  - ``learn.fine_tune(epochs)`` with its defaults: 1 frozen epoch (fit_one_cycle, base_lr=2e-3), then
    ``epochs`` unfrozen epochs (fit_one_cycle, slice(1e-5, 1e-3)); Adam, fastai's default weight decay.
Same weights as every contestant: the EfficientNet-Lite0 ImageNet weights that headstart loads offline
(``headstart.models.create_backbone("efficientnet_lite0", ...)``) are written to a temporary .pth file and
handed to timm through ``pretrained_cfg_overlay=dict(file=...)``, which ``vision_learner`` forwards to
``timm.create_model``; the script then asserts that every tensor of fastai's body equals headstart's.
Normalisation: fastai normalises a timm model with ``model.default_cfg`` mean/std, which for
tf_efficientnet_lite0 is mean = std = (0.5, 0.5, 0.5) -- the backbone's own; the script asserts it (no
ImageNet statistics anywhere).
Data as fastai reads it: ``get_image_files`` takes every file with an image MIME type, so unlike torchvision's
ImageFolder it also reads train/ants/imageNotFound.gif (converted to RGB): 245 train, 153 val images.
``--limit N`` (smoke tests only) builds a temporary folder of symlinks to N random images per split, so the
same ``from_folder`` call is used.

Timing: ``seconds`` in each epoch record is the wall time since the script started its work (after the imports:
weights, model creation and data set-up are included), at the end of that epoch's validation. The frozen epoch
is epoch 1 (``"phase": "frozen"``); ``--epochs N`` gives N + 1 records.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peer_common import DATA, Clock, backbone_preprocessing, create_lite0, finish, log_epoch, machine, summary  # noqa: I001

import torch
from fastai.callback.core import Callback
from fastai.learner import Recorder
from fastai.vision.all import (
    ImageDataLoaders, Normalize, Resize, accuracy, aug_transforms, get_image_files, set_seed, vision_learner,
)

CONTESTANT = "fastai-fine-tune"
ARCH = "tf_efficientnet_lite0"


class EpochLog(Callback):
    """Records val accuracy, losses and elapsed wall seconds after every epoch (after fastai's Recorder)."""

    order = Recorder.order + 1

    def __init__(self, clock: Clock) -> None:
        self.clock, self.records, self._started = clock, [], None

    def before_epoch(self) -> None:
        self._started = time.perf_counter()

    def after_epoch(self) -> None:
        train_loss, valid_loss, val_accuracy = (float(v) for v in self.learn.final_record[:3])
        # fine_tune runs fit_one_cycle(freeze_epochs=1) frozen, then fit_one_cycle(epochs) unfrozen.
        record = {"epoch": len(self.records) + 1, "phase": "frozen" if not self.records else "unfrozen", "train_loss": train_loss,
                  "val_loss": valid_loss, "val_accuracy": val_accuracy,
                  "lr": float(self.opt.hypers[-1]["lr"]),
                  "epoch_seconds": round(time.perf_counter() - self._started, 2), "seconds": round(self.clock(), 2)}
        self.records.append(record)
        log_epoch(record)


def limited_copy(data: Path, limit: int, seed: int, root: Path) -> Path:
    """A folder of symlinks to ``limit`` random images per split (same folder layout), for smoke tests."""
    rng = random.Random(seed)
    for split in ("train", "val"):
        files = sorted(get_image_files(data / split))
        for file in sorted(rng.sample(files, min(limit, len(files)))):
            target = root / file.relative_to(data)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(file)
    return root


def verify_weights(body: torch.nn.Module, reference: dict[str, torch.Tensor]) -> int:
    """Every tensor of fastai's timm body equals headstart's Lite0 tensor of the same name; returns the count."""
    state = body.state_dict()
    missing = [k for k in state if k not in reference]
    assert not missing, f"fastai body has tensors headstart's model lacks: {missing[:5]}"
    different = [k for k, v in state.items() if not torch.equal(v, reference[k])]
    assert not different, f"{len(different)} tensors differ from headstart's Lite0 weights, e.g. {different[:5]}"
    return len(state)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA, help="folder with train/ and val/")
    parser.add_argument("--epochs", type=int, default=4, help="unfrozen epochs of fine_tune (after 1 frozen epoch)")
    parser.add_argument("--recipe", choices=["presize", "resize224"], default="presize")
    parser.add_argument("--bs", type=int, default=64, help="batch size (fastai's default 64)")
    parser.add_argument("--num-workers", type=int, default=None, help="default: fastai's (number of CPUs)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="use only N images per split (smoke tests)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.limit is not None and args.bs > args.limit:
        parser.error("--bs must not exceed --limit: fastai drops the last incomplete training batch")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    set_seed(args.seed)

    with tempfile.TemporaryDirectory(prefix="peer-fastai-") as tmp:
        clock = Clock()
        preprocessing = backbone_preprocessing()
        # headstart's Lite0 (ImageNet head kept) -> a .pth file timm can load as the pretrained checkpoint.
        reference = {k: v.detach().clone() for k, v in create_lite0(1000).state_dict().items()}
        weights_file = Path(tmp) / "tf_efficientnet_lite0_headstart.pth"
        torch.save(reference, weights_file)

        data = args.data if args.limit is None else limited_copy(args.data, args.limit, args.seed, Path(tmp) / "data")
        if args.recipe == "presize":
            tfms = {"item_tfms": Resize(460), "batch_tfms": aug_transforms(size=224, min_scale=0.75)}
        else:
            tfms = {"item_tfms": Resize(224)}
        loader_kwargs = {} if args.num_workers is None else {"num_workers": args.num_workers}
        dls = ImageDataLoaders.from_folder(data, train="train", valid="val", bs=args.bs,
                                           **tfms, **loader_kwargs)

        learn = vision_learner(dls, ARCH, metrics=accuracy, pretrained=True,
                               pretrained_cfg_overlay={"file": str(weights_file)})
        n_checked = verify_weights(learn.model[0].model, reference)
        normalize = [t for t in dls.after_batch.fs if isinstance(t, Normalize)]
        assert len(normalize) == 1, dls.after_batch
        mean, std = (normalize[0].mean.flatten().tolist(), normalize[0].std.flatten().tolist())
        assert all(abs(a - b) < 1e-6 for a, b in zip(mean + std, list(preprocessing.mean) + list(preprocessing.std))), \
            f"fastai normalises with mean {mean} std {std}, not the backbone's {preprocessing.mean} {preprocessing.std}"
        n_train, n_val = len(dls.train_ds), len(dls.valid_ds)
        print(f"{CONTESTANT}: {n_train} train / {n_val} val images, classes {list(dls.vocab)}, recipe {args.recipe},"
              f" bs {args.bs}, {dls.train.fake_l.num_workers} workers, {torch.get_num_threads()} threads; weights: all"
              f" {n_checked} body tensors equal headstart's; Normalize mean {mean} std {std}; set-up {clock():.1f}s",
              flush=True)

        log = EpochLog(clock)
        learn.add_cb(log)
        with learn.no_bar(), learn.no_logging():
            learn.fine_tune(args.epochs)  # defaults: base_lr=2e-3, freeze_epochs=1, lr_mult=100, pct_start=0.3
        seconds_total = clock()

    results = summary(
        CONTESTANT, log.records, seconds_total, frozen_epochs=1,
        config={"arch": f"timm {ARCH} via vision_learner (fastai head)",
                "weights": "headstart efficientnet_lite0 packaged weights via pretrained_cfg_overlay(file=...),"
                           f" {n_checked} body tensors verified equal",
                "normalisation": {"mean": mean, "std": std},
                "item_tfms": "Resize(460)" if args.recipe == "presize" else "Resize(224)",
                "batch_tfms": "aug_transforms(size=224, min_scale=0.75)" if args.recipe == "presize" else None,
                "fine_tune": f"fine_tune({args.epochs}) defaults: base_lr=2e-3, freeze_epochs=1",
                "recipe": args.recipe, "bs": args.bs, "num_workers": dls.train.fake_l.num_workers, "seed": args.seed,
                "limit": args.limit, "n_train": n_train, "n_val": n_val,
                "fastai": __import__("fastai").__version__},
        machine=machine(),
    )
    finish(CONTESTANT, results, seconds_total, args.json)


if __name__ == "__main__":
    main()
