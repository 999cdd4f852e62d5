"""ISBI 2012 membrane segmentation with Segmenter: pretrained vs random encoder, same decoder and recipe.

    .venv/bin/python bench/segmentation.py [--epochs 30] [--crops-per-image 3] [--crop-size 256] [--decoder unet]

EM slices have no "up": training uses the dihedral flips (vertical flips, 90-degree turns) as well.

The 30 labelled slices are split once (seed 0): 6 held-out test slices, read only by evaluate(); of the other
24, a seeded 4 are the validation slices that choose the best epoch, 20 train. Reported: per-class IoU and
Dice with 95% bootstrap intervals over the 6 test images, mIoU over both classes (membrane, cell interior),
and wall time. Goal (issue 6): mIoU >= 0.80 with the pretrained encoder and a clear margin over the random one.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, machine, pretrained_vs_random, write_results

DATA = SHARED / "segmentation" / "isbi_membrane" / "train"
CLASSES = ["membrane", "cell_interior"]  # mask value 0 = membrane, 255 = cell interior (SOURCE.txt)


def make_split(root: Path, seed: int = 0, n_test: int = 6) -> tuple[Path, Path]:
    import numpy as np

    stems = sorted((p.stem for p in (DATA / "image").glob("*.png")), key=int)
    test = set(np.random.default_rng(seed).choice(stems, n_test, replace=False).tolist())
    for part, chosen in (("train", [s for s in stems if s not in test]), ("test", sorted(test, key=int))):
        for kind in ("image", "label"):
            folder = root / part / kind
            folder.mkdir(parents=True)
            for stem in chosen:
                (folder / f"{stem}.png").symlink_to(DATA / kind / f"{stem}.png")
    return root / "train", root / "test"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--frozen-epochs", type=int, default=3)
    parser.add_argument("--crop-size", type=int, default=256)
    parser.add_argument("--crops-per-image", type=int, default=3)
    parser.add_argument("--decoder", default="unet")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--encoder-lr-mult", type=float, default=0.1)
    parser.add_argument("--weights", default="both", choices=["both", "auto", "random"])
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "segmentation.json")
    args = parser.parse_args()
    from headstart import Segmenter

    results = {"machine": machine(), "command": " ".join(sys.argv), "data": str(DATA), "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        train, test = make_split(Path(tmp))
        results["test_images"] = sorted(p.name for p in (test / "image").iterdir())
        for weights in (["auto", "random"] if args.weights == "both" else [args.weights]):
            started = time.perf_counter()
            model = Segmenter(decoder=args.decoder, epochs=args.epochs, frozen_epochs=args.frozen_epochs,
                              crop_size=args.crop_size, crops_per_image=args.crops_per_image, weights=weights,
                              lr=args.lr, encoder_lr_mult=args.encoder_lr_mult, dihedral=True, classes=CLASSES, val_fraction=4 / 24, seed=0)
            model.fit(train, out=Path(tmp) / f"run_{weights}")
            fit_seconds = time.perf_counter() - started
            # flip test-time augmentation: chosen on the validation slices, never on the test slices
            val_scores = {}
            for tta in (False, True):
                model.tta = tta
                val_scores[tta] = model._measure(model._splits.val, n_bootstrap=0)[0]["miou"]
            model.tta = val_scores[True] > val_scores[False]
            print(f"validation mIoU without / with flip TTA: {val_scores[False]:.4f} / {val_scores[True]:.4f}"
                  f" -> tta={model.tta}")
            metrics = model.evaluate(test)
            name = "pretrained" if weights == "auto" else "random"
            results["runs"][name] = {"test": metrics, "fit_seconds": round(fit_seconds, 1), "tta": model.tta,
                                     "val_miou_without_tta": val_scores[False], "val_miou_with_tta": val_scores[True],
                                     "best_epoch": model.metrics_["best_epoch"], "history": model.history_}
            print(f"\n== {name} encoder: test mIoU {metrics['miou']:.4f} {metrics['miou_ci']}, Dice"
                  f" {metrics['dice']:.4f}, fit {fit_seconds:.0f}s")
            for row in metrics["per_class"]:
                print(f"   {row['class']:<14} IoU {row['iou']:.4f} {row['iou_ci']}  Dice {row['dice']:.4f} {row['dice_ci']}")
            write_results(args.json, results)
    pretrained_vs_random(results, "miou", 0.8, "mIoU")
    write_results(args.json, results)


if __name__ == "__main__":
    main()
