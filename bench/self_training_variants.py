"""How headstart's self-training design was chosen: its variants on the six Office-31 tasks, target accuracy shown.

    .venv/bin/python bench/self_training_variants.py

This is the development comparison behind `self_training`'s defaults (docs/benchmarks.md): it looks at target
accuracy, so it is a record of how the design was tuned on this benchmark, not a label-free result. Every variant
uses the frozen Lite0 features of DomainAdapter (288 px, centre + mirror), a fixed L2 of 3e-3 (no CV, to keep it
quick) and four rounds of class-balanced pseudo-labels:

- ``source + confidence``: start from the plain source features, keep the most confident (the first thing tried);
- ``coral + centroid``: CORAL start, labels from target centroids (SHOT-style spherical k-means);
- ``coral + agree`` (the default): CORAL start, classifier labels only where the centroids agree.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np
import torch
from common import SHARED, machine, write_results

DATA = SHARED / "domains" / "office31"
DOMAINS = {"A": "amazon", "D": "dslr", "W": "webcam"}
TASKS = ("A-W", "D-W", "W-D", "A-D", "D-A", "W-A")
VARIANTS = {"source + confidence": dict(start="source", rule="confidence", shares=(0.3, 0.5, 0.7, 0.9)),
            "coral + centroid": dict(start="coral", rule="centroid"),
            "coral + agree (default)": dict(start="coral", rule="agree")}
L2 = 3e-3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "self_training_variants.json")
    args = parser.parse_args()
    from headstart.adapt import DomainFeatures
    from headstart.adapt.self_training import fit_self_training
    from headstart.data.images import scan_image_folder
    from headstart.features import FeatureStore, extract_features, frozen_feature_size

    size, store = frozen_feature_size(224), FeatureStore()
    features, labels = {}, {}
    for letter, domain in DOMAINS.items():
        samples, _ = scan_image_folder(DATA / domain / "images", role=domain)
        features[letter] = np.stack([extract_features("efficientnet_lite0", samples.paths, image_size=size, view=v,
                                                      store=store) for v in ("center", "mirror")])
        labels[letter] = np.asarray(samples.labels)
    results: dict = {"machine": machine(), "command": " ".join(sys.argv), "l2": L2, "tasks": {}}
    for task in TASKS:
        source, target = task.split("-")
        data = DomainFeatures(source=features[source], source_labels=labels[source], target=features[target],
                              n_classes=31)
        row = {}
        for name, options in VARIANTS.items():
            started = time.perf_counter()
            module = fit_self_training(data, l2=L2, **options).module
            with torch.no_grad():
                predicted = module(torch.from_numpy(features[target][0])).argmax(1).numpy()
            row[name] = round(float((predicted == labels[target]).mean()), 4)
            print(f"{task} {name:<24} {row[name]:.3f} ({time.perf_counter() - started:.0f}s)", flush=True)
        results["tasks"][task] = row
    results["mean"] = {name: round(float(np.mean([results["tasks"][t][name] for t in TASKS])), 4) for name in VARIANTS}
    print("mean: " + ", ".join(f"{name} {value:.4f}" for name, value in results["mean"].items()))
    write_results(args.json, results)


if __name__ == "__main__":
    main()
