"""Free Spoken Digits (FSDD): the official split and leave-one-speaker-out, with AudioClassifier.

    .venv/bin/python bench/fsdd.py --split official [--strategy fine_tune] [--epochs 8] [--json FILE]
    .venv/bin/python bench/fsdd.py --split loso [--strategy partial --tune-blocks 2] [--json FILE]

Official split (the dataset's README): takes 0-4 of every speaker are the test set (300 files), takes 5-49 the
training data. Validation (early stopping, the restored epoch, calibration) uses takes 5-9 of every speaker,
which are training data; the test takes are read only by evaluate(). Goal (issue 4): >= 0.98.

Leave-one-speaker-out: for each of the 6 speakers, train on the other 5 (validation: one of those 5, held out
as a group) and test on the held-out speaker; the pooled accuracy over all 3000 files is reported with a
bootstrap CI, plus each speaker's accuracy.
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
DATA = ROOT.parent / "shared" / "data" / "audio" / "fsdd" / "recordings"


def parts(path: Path) -> tuple[str, str, int]:
    digit, speaker, take = path.stem.split("_")
    return digit, speaker, int(take)


def samples(paths: list[Path], classes: list[str] | None = None):
    from headstart.data.audio import AudioSamples

    return AudioSamples.from_lists(paths, [parts(p)[0] for p in paths], classes=classes,
                                   groups=[parts(p)[1] for p in paths])


def fit_and_test(train, val, test, args, cache: str) -> tuple[dict, object]:
    from headstart.estimators.audio import AudioClassifier

    started = time.perf_counter()
    given = {name: getattr(args, name) for name in ("epochs", "lr", "spec_augment", "tune_blocks") if getattr(args, name) is not None}
    model = AudioClassifier(args.backbone, strategy=args.strategy, image_size=args.image_size, cache_dir=cache,
                            progress=args.progress, seed=args.seed, **given)
    model.fit(train, val=val, out=Path(tempfile.mkdtemp(prefix="fsdd-run-")))
    fit_seconds = time.perf_counter() - started
    probabilities = model.predict_proba(test.paths)
    return {"fit_seconds": round(fit_seconds, 1), "lr_used": model.lr_, "epochs_used": model.epochs_,
            "spec_augment_used": model.spec_augment, "best_epoch": model.best_epoch_, "epochs_run": len(model.history_),
            "val_accuracy": model.metrics_["accuracy"]["value"], "clip_seconds": model.clip_seconds_,
            "sample_rate": model.sample_rate_,
            "history": [{k: h[k] for k in ("epoch", "stage", "val_loss", "val_accuracy", "seconds")}
                        for h in model.history_]}, probabilities


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=("official", "loso"), default="official")
    parser.add_argument("--backbone", default="logmel:efficientnet_lite0")
    parser.add_argument("--strategy", default="fine_tune")
    parser.add_argument("--epochs", type=int, default=None, help="default: the estimator's")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--tune-blocks", type=int, default=None, help="--strategy partial: the CNN's last blocks that"
                        " train (default: the estimator's)")
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--speakers", default=None, help="LOSO: comma-separated speakers to hold out (default all), each as held:val to choose its validation speaker"
                        " (default: the one after it, as in the full run)")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--spec-augment", action=argparse.BooleanOptionalAction, default=None,
                        help="default: the estimator's (off)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if not DATA.is_dir():
        print(f"FSDD not found at {DATA} (../shared/data beside the checkout)", file=sys.stderr)
        return 2
    import numpy as np
    import torch

    from headstart.evaluation.metrics import classification_metrics

    files = sorted(DATA.glob("*.wav"))
    classes = sorted({parts(p)[0] for p in files}, key=int)
    cache = tempfile.mkdtemp(prefix="headstart-bench-fsdd-")  # cold feature store: honest wall times
    started = time.perf_counter()
    result: dict = {"split": args.split, "backbone": args.backbone, "strategy": args.strategy, "epochs": args.epochs,
                    "image_size": args.image_size, "seed": args.seed, "lr": args.lr,
                    "tune_blocks": args.tune_blocks, "spec_augment": args.spec_augment,
                    "threads": torch.get_num_threads()}
    if args.split == "official":
        test = samples([p for p in files if parts(p)[2] < 5], classes)
        val = samples([p for p in files if 5 <= parts(p)[2] < 10], classes)
        train = samples([p for p in files if parts(p)[2] >= 10], classes)
        run, probabilities = fit_and_test(train, val, test, args, cache)
        metrics = classification_metrics(test.labels, probabilities, classes=classes, seed=args.seed)
        result.update(run=run, n_train=len(train), n_val=len(val), n_test=len(test), accuracy=metrics["accuracy"],
                      macro_f1=metrics["macro_f1"])
        acc = metrics["accuracy"]
        print(f"FSDD official split: test accuracy {acc['value']:.4f} [{acc['ci95'][0]:.4f}, {acc['ci95'][1]:.4f}]"
              f" on {len(test)} files; val {run['val_accuracy']:.4f}; best epoch {run['best_epoch']}/"
              f"{run['epochs_run']}; fit {run['fit_seconds']:.0f} s")
    else:
        speakers = sorted({parts(p)[1] for p in files})
        held_out = args.speakers.split(",") if args.speakers else speakers
        labels, rows, per_speaker = [], [], {}
        for index, speaker in enumerate(held_out):
            speaker, _, chosen = speaker.partition(":")  # "held:val" names the validation speaker too
            rest = [s for s in speakers if s != speaker]
            val_speaker = chosen or rest[speakers.index(speaker) % len(rest)]
            test = samples([p for p in files if parts(p)[1] == speaker], classes)
            val = samples([p for p in files if parts(p)[1] == val_speaker], classes)
            train = samples([p for p in files if parts(p)[1] not in (speaker, val_speaker)], classes)
            run, probabilities = fit_and_test(train, val, test, args, cache)
            accuracy = float((probabilities.argmax(1) == np.asarray(test.labels)).mean())
            per_speaker[speaker] = {"accuracy": accuracy, "val_speaker": val_speaker, **run}
            labels += list(test.labels)
            rows.append(probabilities)
            print(f"  held-out {speaker:9s} accuracy {accuracy:.4f} (val speaker {val_speaker},"
                  f" val acc {run['val_accuracy']:.4f}, fit {run['fit_seconds']:.0f} s)", flush=True)
        metrics = classification_metrics(np.asarray(labels), np.concatenate(rows), classes=classes, seed=args.seed)
        acc = metrics["accuracy"]
        result.update(per_speaker=per_speaker, accuracy=acc, macro_f1=metrics["macro_f1"], n_test=len(labels))
        print(f"FSDD leave-one-speaker-out ({len(held_out)} speakers): pooled accuracy {acc['value']:.4f}"
              f" [{acc['ci95'][0]:.4f}, {acc['ci95'][1]:.4f}] on {len(labels)} files")
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    print(f"wall {result['wall_seconds']:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
