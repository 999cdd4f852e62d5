"""Peer contestant for the whole-process cold linear probe: what a user writes without headstart.

    .venv/bin/python bench/peers/plain_probe.py FOLDER [--json out.json]

One process, timed by the caller from spawn to exit: import torch + timm, create the same backbone and weights
headstart uses (timm ``tf_efficientnet_lite0``, EfficientNet-Lite0 ImageNet weights, offline), extract pooled
features of every image of the class-folder FOLDER with a plain torch DataLoader loop
(:func:`plain_extraction.run`: timm's eval transform at 224 px, 2 workers, eager fp32), hold out a stratified
20 % (seed 0), fit scikit-learn's ``LogisticRegression(max_iter=1000)`` on the rest and print its validation
accuracy.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peer_common import machine, write_json  # noqa: E402
from plain_extraction import run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    result = run([args.data])
    features, labels = result["features"], result["labels"]
    train_x, val_x, train_y, val_y = train_test_split(features, labels, test_size=0.2, stratify=labels, random_state=0)
    started = time.perf_counter()
    model = LogisticRegression(max_iter=1000).fit(train_x, train_y)
    accuracy = float(model.score(val_x, val_y))
    seconds_fit = time.perf_counter() - started
    print(f"plain probe: {result['n_images']} images, extraction {result['seconds_loop']:.1f}s"
          f" ({result['images_per_second']:.1f} img/s), logistic regression {seconds_fit:.1f}s,"
          f" val accuracy {accuracy:.3f}")
    write_json(args.json, {"n_images": result["n_images"], "seconds_loop": result["seconds_loop"],
                           "images_per_second": result["images_per_second"], "seconds_fit": round(seconds_fit, 2),
                           "val_accuracy": accuracy, "machine": machine()})


if __name__ == "__main__":
    main()
