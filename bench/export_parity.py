"""Export parity and int8 quantisation on real models: ants/bees (EfficientNet-Lite0), SST-2 (MiniLM), FSDD (log-mel).

    .venv/bin/python bench/export_parity.py [--tasks image,text,audio] [--json bench/results/export_parity.json]

For each task a linear-probe model is trained on real data (hymenoptera train / SST-2 train / FSDD takes 10-49)
with its validation split recorded in the model folder (hymenoptera val / SST-2 dev / FSDD takes 5-9), then
exported to ONNX (with ``--quantize``) and TorchScript. Reported: the parity check (max |difference| of
probabilities against torch over up to 64 validation inputs, top-1 agreement), and for int8: validation accuracy
before/after, batch throughput and single-input latency of both ONNX models, file sizes. Issue 5's bar: parity
<= 1e-4 with identical top-1 (the export fails otherwise).
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
SHARED = ROOT.parent / "shared" / "data"


def train_image(out: Path) -> Path:
    from headstart import ImageClassifier

    data = SHARED / "images" / "hymenoptera"
    model = ImageClassifier(strategy="linear_probe", progress=False).fit(data / "train", val=data / "val")
    return model.save(out / "image")


def train_text(out: Path) -> Path:
    from headstart.estimators.text import TextClassifier

    data = SHARED / "text" / "sst2"
    model = TextClassifier(strategy="linear_probe", progress=False).fit(data / "sst2_train.tsv", val=data / "sst2_dev.tsv")
    return model.save(out / "text")


def train_audio(out: Path) -> Path:
    from headstart.data.audio import AudioSamples
    from headstart.estimators.audio import AudioClassifier

    files = sorted((SHARED / "audio" / "fsdd" / "recordings").glob("*.wav"))

    def take(path: Path) -> int:
        return int(path.stem.split("_")[2])

    def samples(paths: list[Path]) -> AudioSamples:
        return AudioSamples.from_lists(paths, [p.stem.split("_")[0] for p in paths],
                                       classes=[str(d) for d in range(10)])

    train = samples([p for p in files if take(p) >= 10])
    val = samples([p for p in files if 5 <= take(p) <= 9])
    model = AudioClassifier(strategy="linear_probe", progress=False).fit(train, val=val)
    return model.save(out / "audio")


TRAINERS = {"image": train_image, "text": train_text, "audio": train_audio}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="image,text,audio")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "export_parity.json")
    args = parser.parse_args()
    if not SHARED.is_dir():
        print(f"../shared/data not found at {SHARED}", file=sys.stderr)
        return 2
    import torch

    from headstart.deploy.export import export_bundle

    out = Path(tempfile.mkdtemp(prefix="headstart-export-bench-"))
    results = []
    for task in args.tasks.split(","):
        started = time.perf_counter()
        bundle = TRAINERS[task](out)
        train_seconds = time.perf_counter() - started
        onnx = export_bundle(bundle, out / f"{task}-onnx", quantize=True)
        torchscript = export_bundle(bundle, out / f"{task}-torchscript", format="torchscript")
        row = {"task": task, "train_seconds": round(train_seconds, 1), "onnx_parity": onnx["parity"],
               "onnx_export_seconds": onnx["export_seconds"], "torchscript_parity": torchscript["parity"],
               "torchscript_export_seconds": torchscript["export_seconds"], "int8": onnx["quantized"]}
        results.append(row)
        q = row["int8"]
        print(f"{task:<6} ONNX max|dp| {onnx['parity']['max_abs_diff']:.1e} top-1 {onnx['parity']['top1_agreement']:.3f}"
              f" | TorchScript max|dp| {torchscript['parity']['max_abs_diff']:.1e}"
              f" | int8 ({q['ops']}) accuracy {q['float_accuracy']:.4f} -> {q['int8_accuracy']:.4f}"
              f" ({q['accuracy_change']:+.4f}, n={q['n_validation']}), batch x{q['batch_speedup']}"
              f" ({q['float_speed']['items_per_second']} -> {q['int8_speed']['items_per_second']} items/s),"
              f" single x{q['single_speedup']} ({q['float_speed']['single_ms']} -> {q['int8_speed']['single_ms']} ms),"
              f" {q['size_mb']['float']} -> {q['size_mb']['int8']} MB", flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "command": "python " + " ".join(sys.argv), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "results": results}, indent=1))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
