"""BCCD blood-cell detection with Detector: pretrained vs random backbone, same detector and recipe.

    .venv/bin/python bench/detection.py [--epochs 6] [--min-size 384] [--weights both|auto|random] [--json FILE]

The dataset's own lists: train.txt (205 images) trains, val.txt (87) chooses the best epoch, test.txt (72) is
read only by evaluate(). Reported: mAP@0.5 and mAP@[0.5:0.95] overall (95% bootstrap intervals over test
images) and AP per class, and wall time. Goal (issue 6): test mAP@0.5 >= 0.80 with the pretrained backbone and a
clear margin over the randomly initialised one.
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

DATA = SHARED / "detection" / "bccd"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--frozen-epochs", type=int, default=2)
    parser.add_argument("--min-size", type=int, default=384)
    parser.add_argument("--max-size", type=int, default=640)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--weights", default="both", choices=["both", "auto", "random"])
    parser.add_argument("--seed", type=int, default=0, help="initialisation, augmentation and batch order")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "detection.json")
    args = parser.parse_args()
    from headstart import Detector

    results = {"machine": machine(), "command": " ".join(sys.argv), "data": str(DATA), "runs": {}}
    for weights in (["auto", "random"] if args.weights == "both" else [args.weights]):
        name = "pretrained" if weights == "auto" else "random"
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            model = Detector(epochs=args.epochs, frozen_epochs=args.frozen_epochs, min_size=args.min_size,
                             max_size=args.max_size, batch_size=args.batch_size, lr=args.lr, weights=weights, seed=args.seed)
            model.fit(DATA, out=Path(tmp) / "run")
            fit_seconds = time.perf_counter() - started
            started = time.perf_counter()
            metrics = model.evaluate(DATA)  # the VOC folder's test.txt list
            eval_seconds = time.perf_counter() - started
        results["runs"][name] = {"test": metrics, "fit_seconds": round(fit_seconds, 1),
                                 "test_seconds": round(eval_seconds, 1), "best_epoch": model.metrics_["best_epoch"],
                                 "val_map_50": model.metrics_["map_50"], "history": model.history_}
        print(f"\n== {name} backbone: test mAP@0.5 {metrics['map_50']:.4f} {metrics['map_50_ci']}, mAP@[0.5:0.95]"
              f" {metrics['map_50_95']:.4f}, fit {fit_seconds:.0f}s, test {eval_seconds:.0f}s on {metrics['n_images']} images")
        for row in metrics["per_class"]:
            print(f"   {row['class']:<10} AP50 {row['ap_50']:.4f}  AP50:95 {row['ap_50_95']:.4f}  (true {row['n_true']})")
        write_results(args.json, results)
    pretrained_vs_random(results, "map_50", 0.8, "mAP@0.5")
    write_results(args.json, results)


if __name__ == "__main__":
    main()
