"""SST-2 (sentence level): train on sst2_train, validate on sst2_dev, report accuracy on sst2_test.

    .venv/bin/python bench/sst2.py [--strategies linear_probe,fine_tune,lora] [--json bench/results/sst2.json]

Goal (issue 4): fine-tune test accuracy >= 0.88 with the offline MiniLM; a mean-pooled MiniLM + logistic
regression gets about 0.82. The dev set is the validation set (early stopping, restored epoch); the test set is
read only by evaluate(), after training.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "text" / "sst2"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategies", default="linear_probe,fine_tune")
    parser.add_argument("--epochs", type=int, default=None, help="fine_tune/lora epochs (default: the estimator's)")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--layer-decay", type=float, default=None)
    parser.add_argument("--label-smoothing", type=float, default=None)
    parser.add_argument("--monitor", default=None)
    parser.add_argument("--seed", type=int, default=None, help="the estimator's seed (default 0): shuffling, dropout")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if not DATA.is_dir():
        print(f"SST-2 not found at {DATA} (../shared/data beside the checkout)", file=sys.stderr)
        return 2
    from headstart.estimators.text import TextClassifier

    results = []
    cache = tempfile.mkdtemp(prefix="headstart-bench-sst2-")  # cold feature store: honest wall times
    for strategy in args.strategies.split(","):
        started = time.perf_counter()
        out = Path(tempfile.mkdtemp(prefix=f"sst2-{strategy}-"))
        given = {name: getattr(args, name) for name in ("epochs", "lr", "layer_decay", "label_smoothing", "monitor", "seed")
                 if getattr(args, name) is not None}
        model = TextClassifier(strategy=strategy, cache_dir=cache, progress=False, **given)
        model.fit(DATA / "sst2_train.tsv", val=DATA / "sst2_dev.tsv", out=out)
        fit_seconds = time.perf_counter() - started
        test = model.evaluate(DATA / "sst2_test.tsv", out=out / "test")
        row = {"strategy": strategy, "settings": {**given, "lr_used": model.lr_}, "test_accuracy": test["accuracy"], "test_macro_f1": test["macro_f1"],
               "dev_accuracy": model.metrics_["accuracy"]["value"], "best_epoch": model.best_epoch_,
               "epochs_run": len(model.history_), "fit_seconds": round(fit_seconds, 1),
               "total_seconds": round(time.perf_counter() - started, 1), "n_test": test["n_samples"],
               "history": [{k: h[k] for k in ("epoch", "stage", "val_loss", "val_accuracy", "seconds")}
                           for h in model.history_]}
        results.append(row)
        acc = test["accuracy"]
        print(f"{strategy:13s} test accuracy {acc['value']:.4f} [{acc['ci95'][0]:.4f}, {acc['ci95'][1]:.4f}]"
              f"  dev {row['dev_accuracy']:.4f}  best epoch {row['best_epoch']}/{row['epochs_run']}"
              f"  fit {row['fit_seconds']:.0f} s", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"results": results, "torch_threads": __import__("torch").get_num_threads()},
                                        indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
