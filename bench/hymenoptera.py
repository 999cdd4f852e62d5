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
    args = parser.parse_args()

    print(f"machine: {machine()}")
    splits = load_image_dataset(args.data)
    baseline = linear_probe_baseline(splits.train.paths, splits.train.labels, splits.val.paths, splits.val.labels,
                                     splits.classes)

    started = time.perf_counter()
    classifier = ImageClassifier(seed=args.seed).fit(args.data, out=args.out)
    seconds = time.perf_counter() - started
    metrics = classifier.metrics_

    print()
    print(show("frozen features + logistic regression", baseline) + f"  {baseline['seconds']:.0f}s")
    print(show(f"headstart default ({classifier.strategy_}, {len(classifier.history_)} epochs)", metrics)
          + f"  {seconds:.0f}s")
    goal = metrics["accuracy"]["value"] >= 0.967
    print(f"goal val accuracy >= 0.967 (<= 5 errors): {'REACHED' if goal else 'NOT reached'}"
          f" ({errors(metrics)} errors); vs linear probe: {errors(baseline) - errors(metrics):+d} fewer errors")
    write_results(args.json, {"machine": machine(), "default": metrics, "linear_probe_baseline": baseline,
                              "strategy": classifier.strategy_, "epochs": classifier.epochs_,
                              "epochs_run": len(classifier.history_), "wall_seconds": round(seconds, 1)})


if __name__ == "__main__":
    main()
