"""Does the backbone ranking (LogME, CV probe on training images) agree with what fine-tuning then achieves?

For each dataset, the candidates EfficientNet-Lite0/1/2 (ImageNet weights, from pip packages) and Lite0 with random
weights (a sanity low anchor) are ranked with :func:`headstart.selection.rank.rank_backbones` on the TRAINING images only.
Then each is fine-tuned with ``ImageClassifier(strategy="fine_tune", epochs=E, seed=0)`` (one frozen head stage on
cached features, then E unfrozen epochs: 2 on hymenoptera, 1 on office31, to fit in CPU time) and linear-probed at
its pretrained resolution (cheap: cached features), both scored on the validation images. fit() returns the epoch
with the lowest validation loss; the last epoch's accuracy (no choice made on validation data) is recorded too.
Kendall's tau compares the rankings, over all four candidates and over the three pretrained ones (the random
anchor is last on every measure, which inflates the 4-candidate tau).

    .venv/bin/python bench/rank_agreement.py [--datasets hymenoptera office31] [--office-domain amazon]
        [--office-per-class 16] [--epochs 2] [--office-epochs 1] [--json bench/results/rank_agreement.json]

Datasets: ``hymenoptera`` (../shared/data/images/hymenoptera, train/ -> val/) and ``office31`` (one domain of
../shared/data/domains/office31, 31 classes; by default 16 distinct images per class drawn from amazon with seed 0,
so that four fine-tunes fit in CPU time; then the stratified 80/20 split that training with seed 0 makes, and the
ranking scores exactly that split's training part). Features go to a fresh store under ``--work`` shared by the
ranking and the classifiers, so the fine-tune's frozen head stage reuses the ranking's features.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from common import SHARED, machine, write_results  # noqa: E402

from headstart import ImageClassifier  # noqa: E402
from headstart.features import FeatureStore, file_digest  # noqa: E402
from headstart.models import get_backbone_spec
from headstart.selection.rank import BackboneScore, rank_backbones
from headstart.selection.transferability import kendall_tau

RANDOM_LITE0 = "timm:tf_efficientnet_lite0"  # the same network as efficientnet_lite0, under a name of its own
# (name, weights, label)
CANDIDATES = [
    ("efficientnet_lite0", "auto", "lite0"),
    ("efficientnet_lite1", "auto", "lite1"),
    ("efficientnet_lite2", "auto", "lite2"),
    (RANDOM_LITE0, "random", "lite0-random"),
]


def office_subset(domain: Path, per_class: int, target: Path) -> Path:
    """``per_class`` files of distinct content from each class of ``domain`` (seeded), as symlinks under ``target``.

    Distinct content because amazon holds byte-identical duplicates, which would otherwise straddle the split.
    """
    rng = np.random.default_rng(0)
    for class_dir in sorted(p for p in domain.iterdir() if p.is_dir()):
        unique: dict[bytes, Path] = {}
        for file in sorted(class_dir.glob("*.jpg")):
            unique.setdefault(file_digest(file), file)
        files = sorted(unique.values())
        chosen = sorted(rng.choice(len(files), size=min(per_class, len(files)), replace=False))
        (target / class_dir.name).mkdir(parents=True, exist_ok=True)
        for index in chosen:
            link = target / class_dir.name / files[index].name
            if not link.exists():
                link.symlink_to(files[index])
    return target


def dataset_path(name: str, office_domain: str, office_per_class: int | None, work: Path) -> Path:
    if name == "hymenoptera":
        return SHARED / "images" / "hymenoptera"
    if name == "office31":
        domain = SHARED / "domains" / "office31" / office_domain / "images"
        if office_per_class is None:
            return domain
        return office_subset(domain, office_per_class, work / f"office31-{office_domain}-{office_per_class}")
    raise SystemExit(f"unknown dataset {name!r}: use hymenoptera or office31")


def taus(rows: list[dict[str, Any]], score: str, target: str) -> dict[str, float]:
    pretrained = [r for r in rows if r["weights_asked"] != "random"]
    return {"all_4": kendall_tau([r[score] for r in rows], [r[target] for r in rows]),
            "pretrained_3": kendall_tau([r[score] for r in pretrained], [r[target] for r in pretrained])}


def study(name: str, data: Path, *, epochs: int, work: Path, results: dict[str, Any], json_path: Path | None) -> None:
    print(f"\n=== {name}: {data}")
    cache = work / "cache"
    store = FeatureStore(cache)
    weights = {n: w for n, w, _ in CANDIDATES if w != "auto"}
    started = time.perf_counter()
    ranking = rank_backbones(data, [n for n, _, _ in CANDIDATES], store=store, weights=weights, seed=0)
    first_seconds = time.perf_counter() - started
    started = time.perf_counter()
    again = rank_backbones(data, [n for n, _, _ in CANDIDATES], store=store, weights=weights, seed=0)
    second_seconds = time.perf_counter() - started
    by_name: dict[str, BackboneScore] = {s.name: s for s in ranking}
    entry: dict[str, Any] = {
        "data": str(data), "n_train_scored": ranking[0].n_images, "epochs": epochs,
        "ranking_seconds": round(first_seconds, 1), "second_ranking_seconds": round(second_seconds, 1),
        "second_ranking_all_cached": all(s.cached for s in again),
        "ranking_order": [s.name for s in ranking], "candidates": [],
    }
    results["datasets"][name] = entry
    for backbone, asked, label in CANDIDATES:
        score = by_name[backbone]
        if score.error is not None:
            raise SystemExit(f"{backbone} could not be ranked: {score.error}")
        size = get_backbone_spec(backbone).preprocessing().input_size
        common = dict(weights=asked, cache_dir=work / "cache", progress=False, seed=0)
        started = time.perf_counter()
        fine_tuned = ImageClassifier(backbone, strategy="fine_tune", epochs=epochs, **common).fit(data)
        fine_tune_seconds = time.perf_counter() - started
        started = time.perf_counter()
        # At the pretrained size (not the x1.29 FixRes default) so that the ranking's cached features are reused.
        probed = ImageClassifier(backbone, strategy="linear_probe", image_size=size, **common).fit(data)
        probe_seconds = time.perf_counter() - started
        row = {
            "candidate": label, "backbone": backbone, "weights_asked": asked, "weights": score.weights,
            "input_size": size, "dim": score.dim,
            "logme": score.logme, "cv_accuracy": score.cv_accuracy,
            "feature_seconds": round(score.feature_seconds, 1), "score_seconds": round(score.score_seconds, 2),
            "fine_tune_accuracy": fine_tuned.metrics_["accuracy"]["value"],
            "fine_tune_ci95": fine_tuned.metrics_["accuracy"]["ci95"],
            # The model fit() returns is the epoch with the lowest validation loss; the last epoch is the model
            # after every fine-tuning epoch, with no choice made on the validation data.
            "fine_tune_last_epoch_accuracy": fine_tuned.history_[-1]["val_accuracy"],
            "fine_tune_epochs_run": len(fine_tuned.history_), "fine_tune_best_epoch": fine_tuned.best_epoch_,
            "fine_tune_history": [{k: r[k] for k in ("epoch", "stage", "val_loss", "val_accuracy", "seconds") if k in r}
                                  for r in fine_tuned.history_],
            "fine_tune_seconds": round(fine_tune_seconds, 1),
            "linear_probe_accuracy": probed.metrics_["accuracy"]["value"],
            "linear_probe_seconds": round(probe_seconds, 1),
            "n_val": fine_tuned.metrics_["n_samples"],
        }
        entry["candidates"].append(row)
        print(f"  {label:<13} LogME {row['logme']:+.4f}  CV {row['cv_accuracy']:.3f}  "
              f"fine-tune {row['fine_tune_accuracy']:.3f} ({row['fine_tune_seconds']:.0f}s)  "
              f"linear probe {row['linear_probe_accuracy']:.3f} ({row['linear_probe_seconds']:.0f}s)", flush=True)
        write_results(json_path, results)  # partial results survive an interrupted run
    rows = entry["candidates"]
    entry["kendall_tau"] = {
        "logme_vs_fine_tune": taus(rows, "logme", "fine_tune_accuracy"),
        "cv_probe_vs_fine_tune": taus(rows, "cv_accuracy", "fine_tune_accuracy"),
        "logme_vs_fine_tune_last_epoch": taus(rows, "logme", "fine_tune_last_epoch_accuracy"),
        "cv_probe_vs_fine_tune_last_epoch": taus(rows, "cv_accuracy", "fine_tune_last_epoch_accuracy"),
        "logme_vs_cv_probe": taus(rows, "logme", "cv_accuracy"),
        "linear_probe_val_vs_fine_tune": taus(rows, "linear_probe_accuracy", "fine_tune_accuracy"),
    }
    best = max(rows, key=lambda r: r["fine_tune_accuracy"])["fine_tune_accuracy"]
    for score_name in ("logme", "cv_accuracy"):
        pick = max(rows, key=lambda r: r[score_name])
        entry[f"{score_name}_pick"] = {"candidate": pick["candidate"],
                                       "fine_tune_accuracy": pick["fine_tune_accuracy"],
                                       "regret": best - pick["fine_tune_accuracy"]}
    write_results(json_path, results)


def print_table(results: dict[str, Any]) -> None:
    print(f"\nmachine: {results['machine']} (timings contended: another process shared the 2 cores)")
    header = (f"{'dataset':<12} {'candidate':<13} {'LogME':>8} {'CV acc':>7} {'FT acc':>7} {'FT last':>7} "
              f"{'LP acc':>7} {'feat s':>7} {'score s':>7} {'FT s':>6} {'LP s':>5}")
    print(header)
    print("-" * len(header))
    for name, entry in results["datasets"].items():
        for r in entry["candidates"]:
            print(f"{name:<12} {r['candidate']:<13} {r['logme']:>+8.4f} {r['cv_accuracy']:>7.3f} "
                  f"{r['fine_tune_accuracy']:>7.3f} {r['fine_tune_last_epoch_accuracy']:>7.3f} "
                  f"{r['linear_probe_accuracy']:>7.3f} {r['feature_seconds']:>7.1f} "
                  f"{r['score_seconds']:>7.2f} {r['fine_tune_seconds']:>6.0f} {r['linear_probe_seconds']:>5.0f}")
        if "kendall_tau" in entry:
            t = entry["kendall_tau"]
            print(f"{name:<12} Kendall tau vs fine-tuned accuracy (all 4 / 3 pretrained): "
                  f"LogME {t['logme_vs_fine_tune']['all_4']:+.2f} / {t['logme_vs_fine_tune']['pretrained_3']:+.2f}, "
                  f"CV probe {t['cv_probe_vs_fine_tune']['all_4']:+.2f} / "
                  f"{t['cv_probe_vs_fine_tune']['pretrained_3']:+.2f}; "
                  f"LogME pick {entry['logme_pick']['candidate']} (regret {entry['logme_pick']['regret']:.3f}), "
                  f"CV pick {entry['cv_accuracy_pick']['candidate']} "
                  f"(regret {entry['cv_accuracy_pick']['regret']:.3f})")
            last = (t["logme_vs_fine_tune_last_epoch"], t["cv_probe_vs_fine_tune_last_epoch"])
            print(f"{name:<12} Kendall tau vs last-epoch accuracy (all 4 / 3 pretrained): LogME "
                  f"{last[0]['all_4']:+.2f} / {last[0]['pretrained_3']:+.2f}, CV probe {last[1]['all_4']:+.2f} / "
                  f"{last[1]['pretrained_3']:+.2f}")
            print(f"{name:<12} ranking {entry['ranking_seconds']:.0f}s, again with the same store "
                  f"{entry['second_ranking_seconds']:.1f}s (all cached: {entry['second_ranking_all_cached']})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["hymenoptera", "office31"])
    parser.add_argument("--office-domain", default="amazon", choices=["amazon", "dslr", "webcam"])
    parser.add_argument("--office-per-class", type=int, default=16,
                        help="distinct images per class drawn from the domain (0: the whole domain)")
    parser.add_argument("--epochs", type=int, default=2, help="unfrozen fine-tuning epochs on hymenoptera")
    parser.add_argument("--office-epochs", type=int, default=1, help="unfrozen fine-tuning epochs on office31")
    parser.add_argument("--work", type=Path, default=None, help="feature store folder (default: a fresh temp dir)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--append", action="store_true", help="add these datasets to the results already in --json")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="rank-agreement-"))
    results: dict[str, Any] = {
        "machine": machine(), "commands": [], "seed": 0, "candidates": [label for _, _, label in CANDIDATES],
        "note": "ranking on training images only; accuracies on the validation images; wall times measured while"
                " another process shared the 2 CPU cores, so they are inflated and only roughly comparable",
        "datasets": {},
    }
    if args.append and args.json is not None and args.json.is_file():
        results = {**results, **json.loads(args.json.read_text())}
    results["commands"] = [*results.get("commands", []), " ".join(["python", *sys.argv])]
    for name in args.datasets:
        started = time.perf_counter()
        data = dataset_path(name, args.office_domain, args.office_per_class or None, work)
        epochs = args.office_epochs if name == "office31" else args.epochs
        study(name, data, epochs=epochs, work=work, results=results, json_path=args.json)
        entry = results["datasets"][name]
        entry["total_seconds"] = round(time.perf_counter() - started, 1)
        if name == "office31":
            entry["office_domain"], entry["office_per_class"] = args.office_domain, args.office_per_class or None
        write_results(args.json, results)
    print_table(results)


if __name__ == "__main__":
    main()
