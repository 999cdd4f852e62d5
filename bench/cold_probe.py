"""Whole-process cold linear probe: `headstart train` against a plain timm loop, on the same images and weights.

    .venv/bin/python bench/cold_probe.py [--n-images 3000] [--json bench/results/cold_probe.json]

The folder: the first ``n/3`` NORMAL and ``2n/3`` PNEUMONIA photos (sorted names) of chest_xray/train, linked
into a temporary class folder this script creates and removes. Each contestant is one fresh process, timed from
spawn to exit (imports, model creation, extraction, fitting, writing included):

- ``plain``: bench/peers/plain_probe.py (timm eval transform at 224 px, DataLoader with 2 workers, eager fp32,
  scikit-learn logistic regression on a stratified 80/20 split);
- ``headstart cold``: ``headstart train FOLDER --strategy linear_probe`` with an empty feature store
  (``HEADSTART_CACHE`` a new temporary folder): 288 px (FixRes) centre + mirror views, ONNX export, OpenVINO
  compilation, CV-solved head, calibration, plots and the saved bundle;
- ``headstart warm``: the same command again on the now-filled store (``--overwrite``);
- ``headstart cold 224``: ``--image-size 224`` with a new empty store, closer to the plain loop's work (headstart
  still extracts the mirror view).

Also measured in the same run: the raw OpenVINO forward (batch 32, random pixels, after warm-up) at 224 and 288
px, and each headstart run's extraction speed from its metrics.json, as a share of that raw forward.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import SHARED, machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def build_folder(root: Path, n_images: int) -> Path:
    source = SHARED / "images" / "chest_xray" / "train"
    folder = root / "images"
    for name, count in (("NORMAL", n_images // 3), ("PNEUMONIA", n_images - n_images // 3)):
        (folder / name).mkdir(parents=True)
        for path in sorted((source / name).iterdir())[:count]:
            (folder / name / path.name).symlink_to(path)
    return folder


def timed(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def raw_forward(size: int) -> float:
    """Images/s of the raw OpenVINO forward of the frozen backbone at ``size`` px (batch 32, after warm-up)."""
    import numpy as np

    from headstart.features.runtime import create_engine
    from headstart.models import create_backbone, get_backbone_spec

    preprocessing = get_backbone_spec("efficientnet_lite0").preprocessing()
    model, _ = create_backbone("efficientnet_lite0", 0)
    with tempfile.TemporaryDirectory() as export:
        pixels = np.random.default_rng(0).integers(0, 256, (32, 3, size, size), dtype=np.uint8)
        engine = create_engine(model, mean=preprocessing.mean, std=preprocessing.std, runtime="openvino",
                               image_size=size, export_dir=Path(export), parity_images=pixels[:8])
        engine(pixels)
        started = time.perf_counter()
        for _ in range(6):
            engine(pixels)
        return 6 * 32 / (time.perf_counter() - started)


def headstart_run(folder: Path, out: Path, cache: Path, extra: list[str]) -> dict[str, object]:
    env = {**os.environ, "HEADSTART_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    command = [PYTHON, "-m", "headstart", "train", str(folder), "--out", str(out), "--strategy", "linear_probe",
               "--overwrite", *extra]
    seconds, _ = timed(command, env)
    metrics = json.loads((out / "metrics.json").read_text())
    features = metrics["features"]
    return {"seconds": round(seconds, 1), "val_accuracy": metrics["accuracy"]["value"],
            "fit_seconds": metrics.get("fit_seconds"), "features": features,
            "extraction_images_per_second": round(features["computed"] / features["seconds"], 1)
            if features["computed"] else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-images", type=int, default=3000)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    results: dict[str, object] = {"machine": machine(), "n_images": args.n_images}
    with tempfile.TemporaryDirectory(prefix="headstart-cold-probe-") as scratch:
        root = Path(scratch)
        folder = build_folder(root, args.n_images)
        plain_seconds, plain_out = timed([PYTHON, str(ROOT / "bench" / "peers" / "plain_probe.py"), str(folder),
                                          "--json", str(root / "plain.json")], {**os.environ, "HF_HUB_OFFLINE": "1"})
        plain = {**json.loads((root / "plain.json").read_text()), "seconds": round(plain_seconds, 1)}
        print(plain_out.strip().splitlines()[0], f"-- whole process {plain_seconds:.1f}s", flush=True)
        cold = headstart_run(folder, root / "run-cold", root / "cache", [])
        print(f"headstart cold: {cold['seconds']}s, val {cold['val_accuracy']:.3f}, extraction"
              f" {cold['extraction_images_per_second']} img/s", flush=True)
        warm = headstart_run(folder, root / "run-warm", root / "cache", [])
        print(f"headstart warm: {warm['seconds']}s ({warm['features']['cached']} features from the store)", flush=True)
        cold_224 = headstart_run(folder, root / "run-224", root / "cache-224", ["--image-size", "224"])
        print(f"headstart cold 224: {cold_224['seconds']}s, val {cold_224['val_accuracy']:.3f}", flush=True)
        raw = {size: round(raw_forward(size), 1) for size in (224, 288)}
    results.update(plain=plain, headstart_cold=cold, headstart_warm=warm, headstart_cold_224=cold_224,
                   raw_openvino_images_per_second=raw)
    ratios = {
        "cold_vs_plain": round(plain["seconds"] / cold["seconds"], 2),
        "cold_224_vs_plain": round(plain["seconds"] / cold_224["seconds"], 2),
        "warm_share_of_cold": round(warm["seconds"] / cold["seconds"], 3),
        "extraction_vs_raw_288": round(cold["extraction_images_per_second"] / raw[288], 2),
        "extraction_vs_raw_224": round(cold_224["extraction_images_per_second"] / raw[224], 2),
    }
    results["ratios"] = ratios
    print(f"raw OpenVINO forward: {raw[224]} img/s at 224 px, {raw[288]} at 288 px")
    print(f"cold vs plain {ratios['cold_vs_plain']}x (goal >= 4x); cold 224 vs plain {ratios['cold_224_vs_plain']}x;"
          f" warm {ratios['warm_share_of_cold']:.1%} of cold (goal <= 15%); extraction"
          f" {ratios['extraction_vs_raw_288']}x of raw at 288, {ratios['extraction_vs_raw_224']}x at 224 (goal >= 0.75x)")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
