"""Peer contestant for extraction throughput: a plain timm + torch DataLoader loop computing frozen pooled
features of hymenoptera train + val with headstart's default backbone and weights.

    .venv/bin/python bench/peers/plain_extraction.py [--json bench/results/peer_extraction.json]
                                                     [--save-features /tmp/plain_features.npy]
    .venv/bin/python bench/peers/plain_extraction.py --limit 32            # smoke test

    # from a parent script (bench/peers on sys.path):
    from plain_extraction import run
    result = run([DATA / "train", DATA / "val"])    # result["features"]: (n, 1280) float32, result["paths"]

What a user would write without headstart:
  - the model: timm ``tf_efficientnet_lite0`` without head (``num_classes=0``) with the EfficientNet-Lite0
    ImageNet weights headstart loads offline (``headstart.models.create_backbone("efficientnet_lite0", 0)``);
    eval mode, eager float32, default (contiguous) memory format, ``torch.no_grad()``;
  - the transform: timm's ``resolve_data_config(model=model)`` + ``create_transform(**config)`` (eval): Resize
    the short side to 224 / crop_pct = 256 (bicubic), CenterCrop 224, ToTensor, Normalize with the backbone's own
    mean = std = (0.5, 0.5, 0.5) -- asserted equal to headstart's preprocessing for this backbone;
  - the data: one torchvision ImageFolder per folder (concatenated; ImageFolder skips files without an image
    extension, so train/ants/imageNotFound.gif is not read: 244 + 153 = 397 images), DataLoader(batch_size=32,
    num_workers=2, shuffle=False);
  - features: ``model.forward_head(model.forward_features(x), pre_logits=True)``.
Timing: ``seconds_loop`` is wall time around the whole loop, from creating the DataLoader iterator (worker
start-up included) to the last batch's features on the host; ``images_per_second`` = images / seconds_loop.
Model creation and folder indexing are reported apart as ``seconds_setup``.
Feature order: ImageFolder order (classes sorted, files sorted) of each folder in turn; ``paths`` lists it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peer_common import DATA, backbone_preprocessing, create_lite0, machine, subset_indices, write_json  # noqa: I001

import numpy as np
import torch
from timm.data import create_transform, resolve_data_config
from torch.utils.data import ConcatDataset, DataLoader, Subset
from torchvision import datasets

CONTESTANT = "plain-timm-dataloader"

__all__ = ["run"]


def run(data_dirs: Sequence[str | Path], *, batch_size: int = 32, num_workers: int = 2,
        limit: int | None = None) -> dict[str, Any]:
    """Extract pooled features for every image of the ImageFolder roots ``data_dirs``, timed.

    Returns a dict with ``features`` (float32 array, (n, 1280)), ``labels``, ``paths`` and the timing fields
    (``n_images``, ``seconds_setup``, ``seconds_loop``, ``images_per_second``...). ``limit``: use only that
    many random images per folder (smoke tests).
    """
    setup_started = time.perf_counter()
    model = create_lite0(0).eval()
    config = resolve_data_config(model=model)
    preprocessing = backbone_preprocessing()
    expected = {"input_size": (3, preprocessing.input_size, preprocessing.input_size), "mean": tuple(preprocessing.mean),
                    "std": tuple(preprocessing.std), "crop_pct": preprocessing.crop_pct, "interpolation": preprocessing.interpolation}
    actual = {k: tuple(config[k]) if isinstance(config[k], (list, tuple)) else config[k] for k in expected}
    assert actual == expected, f"timm's data config {actual} differs from headstart's preprocessing {expected}"
    transform = create_transform(**config)  # is_training=False: Resize(256, bicubic), CenterCrop(224), Normalize

    parts, paths, labels = [], [], []
    for root in data_dirs:
        folder = datasets.ImageFolder(str(root), transform=transform)
        indices = subset_indices(len(folder), limit)
        samples = folder.samples if indices is None else [folder.samples[i] for i in indices]
        parts.append(folder if indices is None else Subset(folder, indices))
        paths += [path for path, _ in samples]
        labels += [label for _, label in samples]
    dataset = ConcatDataset(parts)
    seconds_setup = time.perf_counter() - setup_started

    started = time.perf_counter()
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False)
    outputs = []
    with torch.no_grad():
        for images, _ in loader:
            outputs.append(model.forward_head(model.forward_features(images), pre_logits=True))
    features = torch.cat(outputs).numpy() if outputs else np.zeros((0, model.num_features), np.float32)
    seconds_loop = time.perf_counter() - started

    n = len(dataset)
    return {
        "contestant": CONTESTANT,
        "n_images": n,
        "batch_size": batch_size,
        "num_workers": num_workers,
        "torch_threads": torch.get_num_threads(),
        "seconds_setup": round(seconds_setup, 3),
        "seconds_loop": round(seconds_loop, 3),
        "images_per_second": round(n / seconds_loop, 2) if seconds_loop > 0 else None,
        "feature_dim": int(features.shape[1]),
        "transform": str(transform).replace("\n", " "),
        "features": features,
        "labels": labels,
        "paths": paths,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, nargs="+", default=[DATA / "train", DATA / "val"],
                        help="ImageFolder roots (default: hymenoptera train and val)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--limit", type=int, default=None, help="use only N images per folder (smoke tests)")
    parser.add_argument("--save-features", type=Path, default=None,
                        help="write the features here (.npy), and their image paths beside it (.paths.txt)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    result = run(args.data, batch_size=args.batch_size, num_workers=args.num_workers, limit=args.limit)
    print(f"{CONTESTANT}: {result['n_images']} images in {result['seconds_loop']:.2f}s ="
          f" {result['images_per_second']:.1f} images/s (batch {args.batch_size}, {args.num_workers} workers,"
          f" {result['torch_threads']} threads; set-up {result['seconds_setup']:.2f}s apart);"
          f" features {result['features'].shape}")
    if args.save_features is not None:
        args.save_features.parent.mkdir(parents=True, exist_ok=True)
        np.save(args.save_features, result["features"])
        paths_file = args.save_features.with_suffix(".paths.txt")
        paths_file.write_text("\n".join(result["paths"]) + "\n")
        print(f"features written to {args.save_features}, paths to {paths_file}")
    write_json(args.json, {**{k: v for k, v in result.items() if k not in {"features", "labels", "paths"}},
                           "data": [str(d) for d in args.data], "limit": args.limit, "machine": machine()})


if __name__ == "__main__":
    main()
