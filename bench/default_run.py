"""A new user's default run on a 2,000-image two-class folder with a 1,000-image validation folder (issue 17):
`headstart train DATA --val VAL` with nothing else, timed as a whole process, then the same folder with the
strategy forced to a solved linear head (`--strategy linear_probe --feature-layers last`) for reference.

    .venv/bin/python bench/default_run.py [--json bench/results/default_run.json]

The folders are symlinks into ../shared/data/images/chest_xray/train (NORMAL and PNEUMONIA, 1,000 + 1,000 for
training and 500 + 500 for validation, drawn with a fixed seed), written to a temporary folder and removed.
Goal: the default run takes <= 6 minutes and reaches at least the solved head's validation accuracy.
Each run gets a fresh, empty feature store: nothing is cached from before.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import SHARED, build_folders, machine, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run(name: str, root: Path, extra: list[str]) -> dict[str, object]:
    out = root / f"run-{name}"
    cache = root / f"cache-{name}"
    env = {**os.environ, "HEADSTART_CACHE": str(cache), "PYTHONPATH": str(ROOT / "src")}
    command = [sys.executable, "-m", "headstart", "train", str(root / "train"), "--val", str(root / "val"),
               "--out", str(out), "--quiet", *extra]
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True)
    seconds = time.perf_counter() - started
    metrics = json.loads((out / "metrics.json").read_text())
    history = json.loads((out / "history.json").read_text())
    history = history.get("history", history) if isinstance(history, dict) else history
    result = {"command": " ".join(["headstart train TRAIN --val VAL", *extra]), "wall_seconds": round(seconds, 1),
              "val_accuracy": metrics["accuracy"]["value"], "val_accuracy_ci95": metrics["accuracy"]["ci95"],
              "plan": metrics.get("plan"), "time_budget": metrics.get("time_budget"),
              "feature_layers": (history[0].get("head_selection") or {}).get("feature_layers", {}).get("chosen"),
              "epochs": [(r["stage"], r.get("val_accuracy")) for r in history]}
    print(f"{name}: {seconds:.0f} s, val accuracy {result['val_accuracy']:.4f} {result['val_accuracy_ci95']},"
          f" strategy {(result['plan'] or {}).get('chosen')}, layers {result['feature_layers']}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    results: dict[str, object] = {"machine": machine()}
    with tempfile.TemporaryDirectory(prefix="headstart-default-run-") as folder:
        root = Path(folder)
        build_folders(SHARED / "images" / "chest_xray" / "train", root, per_class_train=1000, per_class_val=500,
                      seed=args.seed)
        results["default"] = default = run("default", root, [])
        results["solved_head"] = reference = run("solved_head", root, ["--strategy", "linear_probe",
                                                                       "--feature-layers", "last"])
    fast = default["wall_seconds"] <= 360
    good = default["val_accuracy"] >= reference["val_accuracy"]
    print(f"goal <= 6 min: {'REACHED' if fast else 'MISSED'} ({default['wall_seconds']:.0f} s); goal accuracy >="
          f" solved head: {'REACHED' if good else 'MISSED'} ({default['val_accuracy']:.4f} vs"
          f" {reference['val_accuracy']:.4f})")
    write_results(args.json, results)


if __name__ == "__main__":
    main()
