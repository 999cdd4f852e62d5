"""Default settings on hymenoptera (train -> val): val accuracy with its CI, chosen strategy, wall time, next to
a frozen-feature logistic-regression linear probe measured in the same run.

    .venv/bin/python bench/hymenoptera.py [--out runs/bench-hymenoptera] [--json bench/results/hymenoptera.json]

Goal (issue 2): val accuracy >= 0.967 (at most 5 errors of 153), clearly above the plain linear probe.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import SHARED, errors, linear_probe_baseline, machine, show, write_results  # noqa: E402

from headstart import ImageClassifier  # noqa: E402
from headstart.data import load_image_dataset  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED / "images" / "hymenoptera")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-hymenoptera"))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strategy", default="auto", help="variant to measure instead of the default")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args()

    print(f"machine: {machine()}")
    splits = load_image_dataset(args.data)
    baseline = None if args.skip_baseline else linear_probe_baseline(
        splits.train.paths, splits.train.labels, splits.val.paths, splits.val.labels, splits.classes)

    started = time.perf_counter()
    classifier = ImageClassifier(seed=args.seed, strategy=args.strategy, epochs=args.epochs,
                                 image_size=args.image_size).fit(args.data, out=args.out)
    seconds = time.perf_counter() - started
    metrics = classifier.metrics_

    print()
    if baseline is not None:
        print(show("frozen features + logistic regression", baseline) + f"  {baseline['seconds']:.0f}s")
    label = "default" if args.strategy == "auto" and args.epochs is None and args.image_size is None else "variant"
    size = classifier.preprocessing_.input_size
    print(show(f"headstart {label} ({classifier.strategy_}, {size}px, {len(classifier.history_)} ep)", metrics)
          + f"  {seconds:.0f}s")
    goal = metrics["accuracy"]["value"] >= 0.967
    print(f"goal val accuracy >= 0.967 (<= 5 errors): {'REACHED' if goal else 'NOT reached'} ({errors(metrics)} errors)"
          + (f"; {errors(baseline) - errors(metrics):+d} fewer errors than the linear-probe baseline" if baseline else ""))
    write_results(args.json, {"machine": machine(), label: metrics, "linear_probe_baseline": baseline,
                              "image_size": size, "seed": args.seed,
                              "strategy": classifier.strategy_, "epochs": classifier.epochs_,
                              "epochs_run": len(classifier.history_), "wall_seconds": round(seconds, 1)})


if __name__ == "__main__":
    main()
