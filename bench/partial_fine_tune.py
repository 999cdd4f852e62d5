"""Partial ("surgical") fine-tuning against a full fine-tune, side by side in one run (issue 17, item 3).

    .venv/bin/python bench/partial_fine_tune.py [--dataset hymenoptera|chest_xray] [--json bench/results/x.json]

Both runs solve the head first on frozen features, then train at 224 px:
- ``fine_tune``: one epoch of the whole network (decode, augment, forward and backward through every block);
- ``partial``: the last ``--tune-blocks`` blocks only, on the frozen blocks' output cached once per view (centre,
  mirror, two random crops); ``--epochs`` epochs cycle through the views.
The partial epoch time is the median of the epochs that found their view cached; the one-time caching cost is
reported apart. Goal: a partial epoch >= 5x faster than a full fine-tune epoch. Validation accuracy of every
epoch is printed next to the solved head's (epoch 1); chest_xray uses a 1,000 + 500 image subset of train/
(its test/ is never read). Each run starts from an empty feature store.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, train_val_folders, write_results  # noqa: E402

from headstart import ImageClassifier  # noqa: E402


def fit(name: str, train: Path, val: Path, root: Path, **params: object) -> tuple[ImageClassifier, float]:
    started = time.perf_counter()
    classifier = ImageClassifier(image_size=224, cache_dir=root / f"cache-{name}", time_budget=None, **params)
    classifier.fit(train, val=val, out=root / f"run-{name}")
    return classifier, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=("hymenoptera", "chest_xray"), default="hymenoptera")
    parser.add_argument("--tune-blocks", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    results: dict[str, object] = {"machine": machine(), "dataset": args.dataset, "tune_blocks": args.tune_blocks}
    with tempfile.TemporaryDirectory(prefix="headstart-partial-") as folder:
        root = Path(folder)
        train, val = train_val_folders(args.dataset, root)
        full, full_seconds = fit("full", train, val, root, strategy="fine_tune", epochs=1, patience=None)
        partial, partial_seconds = fit("partial", train, val, root, strategy="partial", epochs=args.epochs,
                                       tune_blocks=args.tune_blocks, patience=None)
    full_epoch = next(r for r in full.history_ if r["stage"] == "all")["seconds"]
    top = [r for r in partial.history_ if r["stage"] == "top"]
    views = 2 + 2  # centre, mirror and two random crops (augmented_views=0 -> 2 for partial)
    reused = [r["seconds"] for r in top[views:]] or [min(r["seconds"] for r in top)]
    partial_epoch = statistics.median(reused)
    caching = sum(r["seconds"] for r in top[:views]) - partial_epoch * min(views, len(top))
    ratio = full_epoch / partial_epoch
    results.update({
        "full_fine_tune": {"wall_seconds": round(full_seconds, 1), "epoch_seconds": full_epoch,
                           "val_accuracy": [(r["stage"], r["val_accuracy"]) for r in full.history_]},
        "partial": {"wall_seconds": round(partial_seconds, 1), "epoch_seconds": partial_epoch,
                    "caching_seconds": round(caching, 1),
                    "val_accuracy": [(r["stage"], r["val_accuracy"]) for r in partial.history_],
                    "best_epoch": partial.best_epoch_},
        "speedup_per_epoch": round(ratio, 1)})
    print(f"solved head val accuracy {full.history_[0]['val_accuracy']:.4f}")
    print(f"full fine-tune epoch {full_epoch:.1f} s, val accuracy {[round(r['val_accuracy'], 4) for r in full.history_]}")
    print(f"partial (last {args.tune_blocks} blocks) epoch {partial_epoch:.2f} s (+{caching:.0f} s caching once),"
          f" val accuracy {[round(r['val_accuracy'], 4) for r in partial.history_]}, best epoch {partial.best_epoch_}")
    print(f"goal partial epoch >= 5x faster: {'REACHED' if ratio >= 5 else 'MISSED'} ({ratio:.1f}x)")
    write_results(args.json, results)


if __name__ == "__main__":
    main()
