"""chest_xray (train -> test): macro-F1 with class weights on and off, on imbalanced data (1341 NORMAL vs 3875
PNEUMONIA in train). A stratified 20% of train is held out for early stopping; test is only evaluated.

    .venv/bin/python bench/chest_xray.py [--strategy linear_probe --epochs 3] [--json bench/results/chest_xray.json]

Also prints a frozen-feature logistic regression (balanced and unbalanced) measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import SHARED, machine, show, write_results  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402

from headstart import ImageClassifier  # noqa: E402
from headstart.data import scan_image_folder  # noqa: E402
from headstart.evaluation.metrics import classification_metrics
from headstart.features import extract_features  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED / "images" / "chest_xray")
    parser.add_argument("--strategy", default="linear_probe")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-chest-xray"))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--class-weights", choices=("both", "on", "off"), default="both")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--feature-layers", default="auto", help="last, all, k or auto (see ImageClassifier)")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    results: dict[str, object] = {"machine": machine(), "strategy": args.strategy, "epochs": args.epochs,
                                  "feature_layers": args.feature_layers}

    train, _ = scan_image_folder(args.data / "train")
    test, _ = scan_image_folder(args.data / "test", classes=train.classes)
    started = time.perf_counter()
    baselines = () if args.skip_baseline else (None, "balanced")
    if baselines:
        train_features = extract_features("efficientnet_lite0", train.paths)
        test_features = extract_features("efficientnet_lite0", test.paths)
    for weighting in baselines:
        head = LogisticRegression(max_iter=5000, class_weight=weighting).fit(train_features, train.labels)
        metrics = classification_metrics(test.labels, head.predict_proba(test_features), classes=train.classes)
        name = f"logistic regression, class_weight={weighting}"
        results[name] = metrics
        print(show(name, metrics))
    if baselines:
        print(f"(features extracted in {time.perf_counter() - started:.0f}s)")

    for class_weights in {"both": (False, True), "on": (True,), "off": (False,)}[args.class_weights]:
        started = time.perf_counter()
        classifier = ImageClassifier(strategy=args.strategy, epochs=args.epochs, class_weights=class_weights,
                                     feature_layers=args.feature_layers)
        # chest_xray has only train/ and test/: fitting on train/ holds out 20% of it for validation
        classifier.fit(args.data / "train", out=args.out / f"class_weights_{class_weights}")
        metrics = classifier.evaluate(args.data / "test", out=args.out / f"class_weights_{class_weights}" / "test")
        seconds = time.perf_counter() - started
        name = f"headstart {classifier.strategy_} ({len(classifier.history_)} ep), class weights {'on' if class_weights else 'off'}"
        metrics["wall_seconds"] = round(seconds, 1)
        selection = classifier.history_[0].get("head_selection", {}).get("feature_layers")
        metrics["feature_layers"] = selection  # chosen on training data (CV), with each candidate's CV log loss
        metrics["validation_accuracy"] = classifier.history_[classifier.best_epoch_ - 1]["val_accuracy"]
        results[name] = metrics
        recall = {c: round(v["recall"]["value"], 3) for c, v in metrics["per_class"].items()}
        print(show(name, metrics) + f"  recall {recall}  {seconds:.0f}s  val accuracy"
              f" {metrics['validation_accuracy']:.4f}  layers {selection and selection['chosen']}")
    write_results(args.json, results)


if __name__ == "__main__":
    main()
