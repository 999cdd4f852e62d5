"""Can cross-validation on the training images choose the frozen-feature resolution? For each input size,
5-fold CV accuracy of a logistic regression on hymenoptera train features, next to its val accuracy.

    .venv/bin/python bench/resolution_cv.py [--sizes 224 256 288 320]

Recorded in docs/benchmarks.md: the CV column could not separate the sizes, which is why the default uses a
fixed FixRes factor (1.29x) instead of a CV choice.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from common import SHARED, machine  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import StratifiedKFold, cross_val_score  # noqa: E402

from headstart.data import load_image_dataset  # noqa: E402
from headstart.features import extract_features  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED / "images" / "hymenoptera")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 256, 288, 320])
    args = parser.parse_args()
    print(f"machine: {machine()}")
    splits = load_image_dataset(args.data)
    train_labels, val_labels = np.asarray(splits.train.labels), np.asarray(splits.val.labels)
    print(f"{'size':>5} {'5-fold CV acc (train)':>22} {'val acc':>8}")
    for size in args.sizes:
        train = extract_features("efficientnet_lite0", splits.train.paths, image_size=size)
        val = extract_features("efficientnet_lite0", splits.val.paths, image_size=size)
        head = LogisticRegression(max_iter=5000)
        folds = StratifiedKFold(5, shuffle=True, random_state=0)
        cv = cross_val_score(head, train, train_labels, cv=folds)
        val_accuracy = head.fit(train, train_labels).score(val, val_labels)
        print(f"{size:>5} {cv.mean():>14.3f} +- {cv.std(ddof=1) / np.sqrt(len(cv)):.3f} {val_accuracy:>8.3f}", flush=True)


if __name__ == "__main__":
    main()
