"""Using a saved model: evaluate it on labelled data, or predict labels, masks or boxes for new inputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import typer
from rich.table import Table

from headstart.cli.common import app, console, error_console, fail
from headstart.errors import HeadstartError, ParameterError

__all__ = ["evaluate", "predict"]


@app.command()
def evaluate(
    model: Annotated[Path, typer.Argument(help="Model folder (e.g. runs/NAME/model).")],
    data: Annotated[Path, typer.Argument(help="Labelled data like the model's training data: image class folders, a text table, audio class folders or table, image + mask folders, or a VOC folder / COCO JSON (its test list when it has one).")],
    out: Annotated[Optional[Path], typer.Option(help="Folder for metrics.json and confusion_matrix.png + predictions.json (classification) or samples/ (segmentation, detection).")] = None,
) -> None:
    """Evaluate a saved model on labelled data (images, texts, audio, masks or boxes, as the model was trained)."""
    from headstart.tasks import load_model

    try:
        classifier = load_model(model)
        classifier.progress = True  # a model trained with --quiet still reports its evaluation here
        metrics = classifier.evaluate(data, out=out)
        if getattr(classifier, "task", "") in ("segmentation", "detection"):
            console.print(classifier._format_metrics(metrics), highlight=False)
            if out is not None:
                console.print(f"Wrote {out / 'metrics.json'} and {out / 'samples'}/", highlight=False)
        elif out is not None:
            console.print(f"Wrote {out / 'metrics.json'}, {out / 'confusion_matrix.png'}, {out / 'predictions.json'}")
    except HeadstartError as error:
        fail(error)


def _image_inputs(items: list[str]) -> tuple[list[Path], list[object]]:
    """The image files named by ``items`` (folders are searched); missing paths and non-images are skipped."""
    from headstart.data.images import SkippedFile, list_image_files

    files: list[Path] = []
    skipped: list[object] = []
    for item in map(Path, items):
        if item.is_dir():
            found, not_images = list_image_files(item)
            files += found
            skipped += not_images
        elif item.is_file():
            files.append(item)
        else:
            skipped.append(SkippedFile(str(item), "no such file or folder"))
    return files, skipped


def _audio_inputs(items: list[str]) -> tuple[list[Path], list[object]]:
    """The audio files named by ``items`` (folders are searched); missing paths are skipped."""
    from headstart.data.audio import AUDIO_EXTENSIONS
    from headstart.data.images import SkippedFile

    files: list[Path] = []
    skipped: list[object] = []
    for item in map(Path, items):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
        elif item.is_file():
            files.append(item)
        else:
            skipped.append(SkippedFile(str(item), "no such file or folder"))
    return files, skipped


def _text_inputs(items: list[str], text_col: str | None) -> list[str]:
    import sys

    from headstart.data.text import read_text_lines

    texts: list[str] = []
    for item in items:
        if item == "-":
            texts += [line.strip() for line in sys.stdin if line.strip()]
        elif Path(item).is_file():
            texts += read_text_lines(item, text_column=text_col)
        else:
            texts.append(item)
    return texts


@app.command()
def predict(
    model: Annotated[Path, typer.Argument(help="Model folder (e.g. runs/NAME/model).")],
    inputs: Annotated[list[str], typer.Argument(help="Image model: image files/folders. Audio model: audio files/folders. Text model: texts, .txt files (one text per line), tables, or - for stdin lines.")],
    top_k: Annotated[int, typer.Option(help="How many labels to show per input.")] = 3,
    text_col: Annotated[Optional[str], typer.Option(help="Text model given a table: its text column.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines instead of a table.")] = False,
    out: Annotated[Optional[Path], typer.Option(help="Segmentation: folder for <name>.png label masks. Detection: folder for detections.json and annotated images.")] = None,
    score_threshold: Annotated[float, typer.Option(help="Detection: keep boxes scoring at least this.")] = 0.5,
) -> None:
    """Predict: top-k labels of images, texts or audio files; masks (segmentation) or boxes (detection) of images.

    Unreadable files are listed, not fatal."""
    from headstart.bundle import load_bundle
    from headstart.deploy.predictor import Predictor, top_labels
    from headstart.evaluation.report import print_skipped
    from headstart.tasks import load_model, task_of_bundle

    try:
        if top_k < 1:
            raise ParameterError(f"--top-k must be >= 1. Got {top_k}.", fix="Pass --top-k 1 or more.")
        bundle = load_bundle(model)
        if not task_of_bundle(bundle.config).is_classification:
            _predict_dense(load_model(model), inputs, out=out, score_threshold=score_threshold, as_json=as_json)
            return
        # the one prediction path of every deployed classifier: the service and export use it too
        predictor = Predictor(bundle, max_image_pixels=bundle.config.get("params", {}).get("max_image_pixels"))
        task = predictor.task
        if task == "text":
            items, skipped = _text_inputs(inputs, text_col), []
        else:
            items, skipped = _audio_inputs(inputs) if task == "audio" else _image_inputs(inputs)
        probabilities, kept, unusable = _classify(predictor, items)
        print_skipped(error_console, [*skipped, *unusable])
        if not kept:
            raise ParameterError(f"None of the inputs is a usable {task} input.",
                                 fix=f"Pass {task} files or folders" + (" or texts." if task == "text" else "."))
        k = min(top_k, len(predictor.classes))
        key = {"text": "text", "audio": "file"}.get(task, "image")
        table = Table(key, *[f"#{i + 1}" for i in range(k)], show_edge=False)
        for item, row in zip(kept, probabilities):
            top = top_labels(row, predictor.classes, k)
            name = str(item) if len(str(item)) <= 80 else str(item)[:77] + "..."
            if as_json:
                print(json.dumps({key: str(item), "top_k": top}))
            else:
                table.add_row(name, *[f"{t['label']} {t['probability']:.3f}" for t in top])
        if not as_json:
            console.print(table)
    except HeadstartError as error:
        fail(error)


def _classify(predictor: Any, items: list[Any], *, chunk: int = 64) -> tuple[np.ndarray, list[Any], list[Any]]:
    """Probabilities of the usable items (decoded and batched by the predictor, a chunk at a time so a large
    folder never sits in memory); unusable ones are skipped with their reason."""
    from headstart.data.images import SkippedFile

    rows, kept, skipped = [], [], []
    for start in range(0, len(items), chunk):
        decoded = []
        for item in items[start:start + chunk]:
            try:
                raw = item if predictor.task == "text" else Path(item).read_bytes()
                decoded.append(predictor.decode(raw, name=str(item)))
                kept.append(item)
            except OSError as error:
                skipped.append(SkippedFile(str(item), error.strerror or str(error)))
            except HeadstartError as error:
                skipped.append(SkippedFile(str(item), getattr(error, "reason", None) or error.message))
        if decoded:
            rows.append(predictor.run(predictor.collate(decoded)))
    return (np.concatenate(rows) if rows else np.zeros((0, len(predictor.classes)), np.float32)), kept, skipped


def _predict_dense(estimator: object, inputs: list[str], *, out: Path | None, score_threshold: float,
                   as_json: bool) -> None:
    from headstart.data.images import ImageDecodeError, SkippedFile, load_image
    from headstart.evaluation.report import print_skipped

    files, skipped = _image_inputs(inputs)
    usable = []
    for file in files:
        try:
            load_image(file, draft_size=32)
            usable.append(file)
        except ImageDecodeError as error:
            skipped.append(SkippedFile(str(file), error.reason))
    print_skipped(error_console, skipped)
    if not usable:
        raise ParameterError("None of the inputs is a usable image.", fix="Pass image files or folders.")
    if out is None:
        raise ParameterError(f"A {estimator.task} model writes its predictions to a folder; --out is missing.",
                             fix="headstart predict MODEL IMAGES --out predictions/")
    if estimator.task == "segmentation":
        written = estimator.predict_masks(usable, out)
        if as_json:
            for image, mask in zip(usable, written):
                print(json.dumps({"image": str(image), "mask": str(mask)}))
        console.print(f"Wrote {len(written)} label masks to {out}/ (pixel values are class indices:"
                      f" {', '.join(f'{i}={c}' for i, c in enumerate(estimator.classes_))})", highlight=False)
        return
    report = estimator.predict_to_folder(usable, out, score_threshold=score_threshold)
    results = json.loads(report.read_text())
    table = Table("image", "boxes", "per class", show_edge=False)
    for entry in results:
        counts: dict[str, int] = {}
        for box in entry["detections"]:
            counts[box["label"]] = counts.get(box["label"], 0) + 1
        if as_json:
            print(json.dumps(entry))
        table.add_row(entry["image"], str(len(entry["detections"])), ", ".join(f"{k} {v}" for k, v in counts.items()))
    if not as_json:
        console.print(table)
    console.print(f"Wrote {report} and {len(results)} annotated images to {out}/ (boxes scoring >= {score_threshold})",
                  highlight=False)


