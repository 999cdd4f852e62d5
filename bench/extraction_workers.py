"""headstart's extraction throughput (OpenVINO/auto runtime, fresh feature store, export cached) with 1 or 2
decoding workers and batch 32 or 64, alternated and repeated to show the run-to-run noise.

    .venv/bin/python bench/extraction_workers.py
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from headstart.data import load_image_dataset  # noqa: E402
from headstart.features import FeatureExtractor, FeatureStore  # noqa: E402
from headstart.models import create_backbone, get_backbone_spec

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "images" / "hymenoptera"


def main() -> None:
    splits = load_image_dataset(DATA)
    paths = [*splits.train.paths, *splits.val.paths]
    spec = get_backbone_spec("efficientnet_lite0")
    model, _ = create_backbone("efficientnet_lite0", 0)
    with tempfile.TemporaryDirectory() as cache:
        for workers, batch in [(1, 32), (2, 32), (1, 64), (2, 64)] * 3:
            shutil.rmtree(Path(cache) / "features", ignore_errors=True)
            extractor = FeatureExtractor(model, preprocessing=spec.preprocessing(), architecture=spec.architecture,
                                         store=FeatureStore(cache), num_workers=workers, batch_size=batch)
            started = time.perf_counter()
            extractor.extract(paths)
            seconds = time.perf_counter() - started
            print(f"workers {workers} batch {batch:>3}: {len(paths) / seconds:6.1f} img/s ({extractor.report.runtime})",
                  flush=True)


if __name__ == "__main__":
    main()
