"""The ``headstart`` command line: each command is a thin call into the library.

Errors headstart raises on purpose are printed as one message with its fix (no traceback), exit code 2.
"""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from headstart.errors import HeadstartError, ParameterError, ResumeError
from headstart.models import DEFAULT_BACKBONE

__all__ = ["app", "main"]

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Transfer learning from pretrained models: train, evaluate, predict, export, serve.")
console = Console()
error_console = Console(stderr=True)


RUN_FILES = ("checkpoints", "model", "config.json", "data.json", "metrics.json", "history.json", "curves.png",
             "confusion_matrix.png", "reliability.png", "summary.txt", "samples")


def _fail(error: HeadstartError) -> None:
    error_console.print(f"[bold red]Error:[/bold red] {error.message}", highlight=False)
    if error.fix:
        error_console.print(f"[bold]Fix:[/bold] {error.fix}", highlight=False)
    raise typer.Exit(code=2)


@app.command()
def train(
    data: Annotated[Optional[Path], typer.Argument(help="Image folder (class subfolders, or train/ + val/); text table (CSV/TSV/JSONL/Parquet), .txt class folders or split tables; audio class folders, flat audio folder (--label-pattern) or table of paths.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Run folder (default runs/<data folder name>).")] = None,
    val: Annotated[Optional[Path], typer.Option(help="Validation folder (default: DATA/val or a stratified hold-out).")] = None,
    task: Annotated[str, typer.Option(help="auto (detected from DATA), image, text, audio, segmentation (image + mask folders) or detection (Pascal VOC folder or COCO JSON).")] = "auto",
    backbone: Annotated[Optional[str], typer.Option(help="Images: a name from `headstart backbones` or timm:<model> (default efficientnet_lite0). Text: minilm (default), a transformers folder or hub id. Audio: logmel:<image backbone> (default logmel:efficientnet_lite0) or a transformers audio model folder/id.")] = None,
    strategy: Annotated[str, typer.Option(help="auto, linear_probe, fine_tune; images also gradual_unfreeze, lp_ft, full; text/audio also lora.")] = "auto",
    head: Annotated[str, typer.Option(help="linear, or a scikit-learn head on frozen features: logistic, linear_svm, rbf_svm, random_forest, knn.")] = "linear",
    epochs: Annotated[Optional[int], typer.Option(help="Epochs of the main stage (fine_tune: unfrozen epochs after one head stage; a linear probe is solved, not trained for epochs). Default: from the dataset size.")] = None,
    weights: Annotated[str, typer.Option(help="auto, random, or a local checkpoint FILE.")] = "auto",
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate of the head.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Examples per step (default 32; segmentation/detection 4).")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Input side in pixels (default: the backbone's; x1.29 for linear_probe, FixRes).")] = None,
    patience: Annotated[Optional[int], typer.Option(help="Early-stopping patience in epochs (0 disables; default 3; segmentation/detection: off unless given).")] = None,
    monitor: Annotated[str, typer.Option(help="val_loss or val_accuracy.")] = "val_loss",
    class_weights: Annotated[bool, typer.Option("--class-weights/--no-class-weights", help="Weight the loss by inverse class frequency.")] = False,
    seed: Annotated[int, typer.Option(help="Seed for split, init, shuffling and augmentation.")] = 0,
    val_fraction: Annotated[float, typer.Option(help="Hold-out share when there is no validation data.")] = 0.2,
    devices: Annotated[int, typer.Option(help="Processes/GPUs for data-parallel training.")] = 1,
    accelerator: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    precision: Annotated[str, typer.Option(help="32-true, 16-mixed or bf16-mixed.")] = "32-true",
    num_workers: Annotated[Optional[int], typer.Option(help="Image-decoding worker processes.")] = None,
    lr_mult: Annotated[Optional[float], typer.Option(help="Discriminative learning rates: each earlier layer group learns this many times as fast as the next (e.g. 0.3).")] = None,
    augmented_views: Annotated[int, typer.Option(help="Random augmented crops per training image cached for heads on frozen features.")] = 0,
    runtime: Annotated[str, typer.Option(help="Frozen-feature runtime: auto, openvino, onnxruntime or torch.")] = "auto",
    cache_dir: Annotated[Optional[str], typer.Option(help="Feature store folder (default $HEADSTART_CACHE or ~/.cache/headstart; 'off' disables).")] = None,
    calibrate: Annotated[bool, typer.Option("--calibrate/--no-calibrate", help="Fit a temperature on validation predictions.")] = True,
    text_col: Annotated[Optional[str], typer.Option(help="Text: the table's text column (default: found by name).")] = None,
    label_col: Annotated[Optional[str], typer.Option(help="Text/audio tables: the label column (default: found by name).")] = None,
    path_col: Annotated[Optional[str], typer.Option(help="Audio tables: the file-path column (default: found by name).")] = None,
    group_col: Annotated[Optional[str], typer.Option(help="Audio tables: speaker/group column; no group is in both train and validation.")] = None,
    group_pattern: Annotated[Optional[str], typer.Option(help="Audio: regex with one group on file names giving the speaker, e.g. '^\\d+_([^_]+)_'.")] = None,
    label_pattern: Annotated[Optional[str], typer.Option(help="Audio in one flat folder: regex with one group on file names giving the label, e.g. '^(\\d+)_'.")] = None,
    max_length: Annotated[int, typer.Option(help="Text: truncate to this many tokens.")] = 128,
    clip_seconds: Annotated[Optional[float], typer.Option(help="Audio: clip length (default: covers 95% of training clips).")] = None,
    spec_augment: Annotated[bool, typer.Option("--spec-augment/--no-spec-augment", help="Audio logmel fine_tune: SpecAugment time/frequency masking (off by default; see docs/benchmarks.md).")] = False,
    layer_decay: Annotated[float, typer.Option(help="Text/audio fine_tune: each layer learns this times as fast as the next.")] = 0.8,
    lora_rank: Annotated[int, typer.Option(help="Text/audio lora: adapter rank.")] = 8,
    lora_merge: Annotated[bool, typer.Option("--lora-merge/--no-lora-merge", help="Save LoRA adapters folded into the weights (default) or separately.")] = True,
    decoder: Annotated[str, typer.Option(help="Segmentation: unet or fpn.")] = "unet",
    crop_size: Annotated[int, typer.Option(help="Segmentation: side of the random training crops.")] = 256,
    crops_per_image: Annotated[Optional[int], typer.Option(help="Segmentation: random crops per training image per epoch (default: image area / crop area).")] = None,
    tta: Annotated[bool, typer.Option("--tta/--no-tta", help="Segmentation: predict and evaluate as the mean over flips (4x slower).")] = False,
    dihedral: Annotated[bool, typer.Option("--dihedral/--no-dihedral", help="Segmentation: also train on vertical flips and 90-degree turns (images without an 'up': microscopy, satellite).")] = False,
    mask_format: Annotated[str, typer.Option(help="Segmentation: auto, index (values are class indices, 255 ignored), binary (0/255) or palette (RGB colours, classes in sorted colour order).")] = "auto",
    frozen_epochs: Annotated[Optional[int], typer.Option(help="Segmentation/detection: first epochs with the pretrained backbone frozen (default: a quarter of --epochs).")] = None,
    min_size: Annotated[int, typer.Option(help="Detection: images resized so the short side is this (long side at most --max-size).")] = 384,
    max_size: Annotated[int, typer.Option(help="Detection: longest image side after resizing.")] = 640,
    class_names: Annotated[Optional[str], typer.Option(help="Segmentation: class names in mask-index order, comma-separated (default: classes.txt or background,foreground for binary masks). Detection: classes to keep.")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue the run in this folder from its last checkpoint (image classification, segmentation, detection).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run in --out.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars or epoch lines.")] = False,
) -> None:
    """Train a classifier on images, texts or audio, or a segmenter / detector on images; writes the run (model,
    metrics, plots) to --out."""
    arguments = dict(locals())
    from headstart.estimators.image import ImageClassifier
    from headstart.storage import read_json
    from headstart.training.loop import process_rank

    try:
        if resume is not None:
            config_file = resume / "config.json"
            if not config_file.is_file():
                raise ParameterError(f"--resume {resume}: no config.json there, so it is not a headstart run folder.",
                                     fix="Pass the --out folder of an earlier `headstart train`.")
            given = {name: value for name, value in locals().items()
                     if name in _TRAIN_DEFAULTS and name not in ("resume", "quiet") and value != _TRAIN_DEFAULTS[name]}
            if given:
                options = ", ".join("DATA" if n == "data" else "--" + n.replace("_", "-") for n in given)
                raise ParameterError(f"--resume {resume} continues the run with its own data and settings; got {options}"
                                     " as well, which would change the run.",
                                     fix=f"Run `headstart train --resume {resume}` alone (--quiet is allowed).")
            try:
                saved = read_json(config_file)
                saved_task = saved.get("task", "image_classification")
                if saved_task not in ("image_classification", "segmentation", "detection"):
                    raise ParameterError(f"--resume {resume}: {saved['task']} runs cannot be resumed (they keep no"
                                         " checkpoints; their fine-tuning is a few epochs).",
                                         fix="Start the run again with --overwrite.")
                params, saved_data, saved_val = saved["params"], saved["data"], saved["val"]
            except (ValueError, KeyError, TypeError) as error:
                raise ResumeError(f"{config_file} is damaged or not from headstart train ({error!r}).",
                                  fix="Start a new run; this folder cannot be resumed.") from None
            if saved_task in ("segmentation", "detection"):
                from headstart.tasks import estimator_class

                estimator_class(saved_task)(**{**params, "progress": not quiet}).fit(
                    saved_data, val=saved_val, out=resume, resume=True)
                return
            classifier = ImageClassifier(**{**params, "progress": not quiet})
            classifier.fit(saved_data, val=saved_val, out=resume, resume=True)
            return
        if data is None:
            raise ParameterError("`headstart train` needs DATA (an image folder) unless --resume RUN_DIR is given.",
                                 fix="headstart train PATH/TO/IMAGES --out runs/NAME")
        out = out or Path("runs") / data.resolve().name
        # A data-parallel worker re-runs this command (Lightning Fabric's launcher); rank 0 owns --out.
        worker = process_rank() > 0
        if (out / "config.json").exists() and not overwrite and not worker:
            raise ParameterError(f"--out {out} already holds a run.",
                                 fix=f"Use --resume {out} to continue it, --overwrite to replace it, or another --out.")
        if overwrite and not worker:
            # Remove what an earlier run wrote (and nothing else the user may keep in that folder).
            for name in RUN_FILES:
                target = out / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
        from headstart.tasks import detect_task, estimator_class

        chosen = detect_task(data) if task == "auto" else task
        if chosen in ("segmentation", "detection"):
            foreign = [name for name in _options_not_for(chosen)
                       if arguments[name] != _TRAIN_DEFAULTS[name]]
            if foreign:
                raise ParameterError(f"{', '.join('--' + n.replace('_', '-') for n in foreign)} do(es) not apply to"
                                     f" {chosen} training, which would silently ignore it.",
                                     fix=f"Leave it out; `headstart train --help` marks the {chosen} options.")
            options = dict(epochs=epochs, frozen_epochs=frozen_epochs, weights=weights, lr=lr, seed=seed,
                           val_fraction=val_fraction, progress=not quiet,
                           classes=_split_list(class_names) if class_names else None)
            if batch_size is not None:
                options["batch_size"] = batch_size
            if patience is not None:
                options["patience"] = patience or None
            if chosen == "segmentation":
                options.update(decoder=decoder, crop_size=crop_size, crops_per_image=crops_per_image, tta=tta,
                               dihedral=dihedral, mask_format=mask_format)
            else:
                options.update(min_size=min_size, max_size=max_size)
            cls = estimator_class(chosen)
            estimator = cls(backbone, **options) if backbone else cls(**options)
            console.print(f"[bold]Task[/bold] {chosen}" + (" (detected)" if task == "auto" else ""))
            estimator.fit(data, val=val, out=out)
            return
        dense_only = [n for names in _DENSE_ONLY.values() for n in names] + ["frozen_epochs", "class_names"]
        foreign = [name for name in dense_only if arguments[name] != _TRAIN_DEFAULTS[name]]
        if foreign:
            raise ParameterError(f"{', '.join('--' + n.replace('_', '-') for n in foreign)} apply to segmentation /"
                                 f" detection only; this is a {chosen} classification run.",
                                 fix="Leave them out, or pass --task segmentation / --task detection.")
        batch_size = 32 if batch_size is None else batch_size
        patience = 3 if patience is None else patience
        if chosen != "image":
            options = dict(strategy=strategy, head=head, epochs=epochs, weights=weights, lr=lr, batch_size=batch_size,
                           patience=patience or None, monitor=monitor, class_weights=class_weights, seed=seed,
                           val_fraction=val_fraction, layer_decay=layer_decay, lora_rank=lora_rank,
                           lora_merge=lora_merge, label_column=label_col, cache_dir=cache_dir, calibrate=calibrate,
                           progress=not quiet)
            if chosen == "text":
                options.update(text_column=text_col, max_length=max_length)
            else:
                options.update(path_column=path_col, group_column=group_col, group_pattern=group_pattern,
                               label_pattern=label_pattern, clip_seconds=clip_seconds, spec_augment=spec_augment)
                if image_size is not None:
                    options["image_size"] = image_size
            cls = estimator_class(chosen)
            estimator = cls(backbone, **options) if backbone else cls(**options)
            console.print(f"[bold]Task[/bold] {chosen}" + (" (detected)" if task == "auto" else ""))
            estimator.fit(data, val=val, out=out)
            return
        classifier = ImageClassifier(
            backbone or DEFAULT_BACKBONE, strategy=strategy, head=head, epochs=epochs, weights=weights, lr=lr, batch_size=batch_size,
            image_size=image_size, patience=patience or None, monitor=monitor, class_weights=class_weights,
            seed=seed, val_fraction=val_fraction, devices=devices, accelerator=accelerator, precision=precision,
            num_workers=num_workers, lr_mult=lr_mult, augmented_views=augmented_views, runtime=runtime,
            cache_dir=cache_dir, calibrate=calibrate, progress=not quiet,
        )
        classifier.fit(data, val=val, out=out)
    except HeadstartError as error:
        _fail(error)


_TRAIN_DEFAULTS = {name: parameter.default for name, parameter in inspect.signature(train).parameters.items()}
_DENSE_ONLY = {"segmentation": ("decoder", "crop_size", "crops_per_image", "tta", "dihedral", "mask_format"),
               "detection": ("min_size", "max_size")}
_SHARED_OPTIONS = ("data", "out", "val", "task", "backbone", "epochs", "weights", "lr", "batch_size", "patience",
                   "seed", "val_fraction", "frozen_epochs", "class_names", "resume", "overwrite", "quiet")


def _options_not_for(task: str) -> list[str]:
    """The train options a segmentation / detection run does not read."""
    own = set(_SHARED_OPTIONS) | set(_DENSE_ONLY.get(task, ()))
    return [name for name in _TRAIN_DEFAULTS if name not in own]


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
        _fail(error)


def _image_inputs(items: list[str], classifier: object) -> tuple[list[Path], list[object]]:
    from headstart.data.images import (
        DEFAULT_MAX_IMAGE_PIXELS,
        ImageDecodeError,
        SkippedFile,
        list_image_files,
        load_image,
    )

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
    usable: list[Path] = []
    for file in files:
        try:
            load_image(file, max_pixels=getattr(classifier, "max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS), draft_size=32)
            usable.append(file)
        except ImageDecodeError as error:
            skipped.append(SkippedFile(str(file), error.reason))
    return usable, skipped


def _audio_inputs(items: list[str]) -> tuple[list[Path], list[object]]:
    from headstart.data.audio import AUDIO_EXTENSIONS, inspect_audio
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
    usable = []
    for file in files:
        _, problem, _ = inspect_audio(file)
        if problem is None:
            usable.append(file)
        else:
            skipped.append(SkippedFile(str(file), problem))
    return usable, skipped


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
    from headstart.deploy.predictor import top_labels
    from headstart.evaluation.report import print_skipped
    from headstart.tasks import load_model

    try:
        if top_k < 1:
            raise ParameterError(f"--top-k must be >= 1. Got {top_k}.", fix="Pass --top-k 1 or more.")
        classifier = load_model(model)
        task = getattr(classifier, "modality", "image")
        if getattr(classifier, "task", "") in ("segmentation", "detection"):
            _predict_dense(classifier, inputs, out=out, score_threshold=score_threshold, as_json=as_json)
            return
        skipped: list[object] = []
        if task == "text":
            usable: list = _text_inputs(inputs, text_col)
            names = [t if len(t) <= 80 else t[:77] + "..." for t in usable]
        elif task == "audio":
            usable, skipped = _audio_inputs(inputs)
            names = [str(p) for p in usable]
        else:
            usable, skipped = _image_inputs(inputs, classifier)
            names = [str(p) for p in usable]
        print_skipped(error_console, skipped)
        if not usable:
            raise ParameterError(f"None of the inputs is a usable {task} input.",
                                 fix=f"Pass {task} files or folders" + (" or texts." if task == "text" else "."))
        probabilities = classifier.predict_proba(usable)
        k = min(top_k, len(classifier.classes_))
        key = {"text": "text", "audio": "file"}.get(task, "image")
        table = Table(key, *[f"#{i + 1}" for i in range(k)], show_edge=False)
        for item, name, row in zip(usable, names, probabilities):
            top = top_labels(row, classifier.classes_, k)
            if as_json:
                print(json.dumps({key: str(item), "top_k": top}))
            else:
                table.add_row(name, *[f"{t['label']} {t['probability']:.3f}" for t in top])
        if not as_json:
            console.print(table)
    except HeadstartError as error:
        _fail(error)


@app.command()
def backbones(
    details: Annotated[bool, typer.Option(help="Also show timm model, normalisation and where weights come from.")] = False,
) -> None:
    """List the registered backbones, their size and input, and whether weights are available right now."""
    from headstart.errors import WeightsNotFoundError
    from headstart.models import (
        count_parameters,
        get_backbone_spec,
        list_backbones,
        resolve_weights,
    )

    table = Table(show_edge=False)
    for column in ("name", "family", "params", "input", "weights now"):
        table.add_column(column, no_wrap=True)
    if details:
        for column in ("timm model", "mean / std", "source"):
            table.add_column(column, overflow="fold")
    for name in list_backbones():
        spec = get_backbone_spec(name)
        prep = spec.preprocessing()
        try:
            source = resolve_weights(spec)
            available = "[green]" + source.kind + "[/green]" if source.kind != "hub" else "[yellow]download[/yellow]"
            where = source.description
        except WeightsNotFoundError as error:
            available, where = "[red]missing[/red]", error.message
        row = [name, spec.family, f"{count_parameters(name) / 1e6:.1f}M", f"{prep.input_size}px", available]
        if details:
            row += [spec.timm_id, f"{prep.mean} / {prep.std}", where]
        table.add_row(*row)
    console.print(table)
    console.print("weights now: package = shipped by an installed package; cache = local timm/Hugging Face cache;"
                  " file = --weights; download = only with internet; missing = not available offline.\n"
                  "Any timm model can be used as timm:<name>; supply weights with --weights FILE when offline.")


cache_app = typer.Typer(no_args_is_help=True, help="The frozen-feature store: what is cached, and clearing it.")
app.add_typer(cache_app, name="cache")


@cache_app.command("info")
def cache_info(
    cache_dir: Annotated[Optional[Path], typer.Option(help="Store folder (default $HEADSTART_CACHE or ~/.cache/headstart).")] = None,
) -> None:
    """List cached feature sets: backbone, weights digest, input size, view, files, size on disk."""
    from headstart.features import FeatureStore

    store = FeatureStore(cache_dir)
    entries = store.info()
    table = Table(show_edge=False)
    for column in ("architecture", "weights", "input", "view", "files", "dim", "MB"):
        table.add_column(column, justify="right" if column in ("files", "dim", "MB", "input") else "left")
    for entry in entries:
        table.add_row(entry["architecture"], entry["weights"][:12], f"{entry['input_size']}px", entry["view"],
                      str(entry["files"]), str(entry["dim"]), f"{entry['bytes'] / 1e6:.1f}")
    console.print(f"Feature store {store.root}: {len(entries)} feature sets, {store.size_bytes() / 1e6:.1f} MB in all"
                  " (features and exported runtime models).", highlight=False)
    if entries:
        console.print(table)


@cache_app.command("clear")
def cache_clear(
    cache_dir: Annotated[Optional[Path], typer.Option(help="Store folder (default $HEADSTART_CACHE or ~/.cache/headstart).")] = None,
    architecture: Annotated[Optional[str], typer.Option(help="Only this timm architecture (e.g. tf_efficientnet_lite0).")] = None,
) -> None:
    """Delete cached features (all, or one architecture's); they are recomputed when next needed."""
    from headstart.features import FeatureStore

    store = FeatureStore(cache_dir)
    removed = store.clear(architecture=architecture)
    console.print(f"Removed {removed} feature set(s) from {store.root}.", highlight=False)


@app.command("lr-find")
def lr_find(
    data: Annotated[Path, typer.Argument(help="Image folder: one subfolder per class, or train/ + val/.")],
    out: Annotated[Path, typer.Option(help="Folder for lr_find.png and lr_find.json.")] = Path("runs/lr-find"),
    backbone: Annotated[str, typer.Option(help="Backbone name or timm:<model>.")] = DEFAULT_BACKBONE,
    strategy: Annotated[str, typer.Option(help="Strategy whose stage is swept (fine_tune, gradual_unfreeze, lp_ft, full, linear_probe).")] = "fine_tune",
    stage: Annotated[str, typer.Option(help="head (backbone frozen) or all (the unfrozen stage).")] = "all",
    weights: Annotated[str, typer.Option(help="auto, random, or a local checkpoint FILE.")] = "auto",
    image_size: Annotated[Optional[int], typer.Option(help="Input side in pixels (default: the backbone's).")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 32,
    steps: Annotated[int, typer.Option(help="Mini-batches in the sweep.")] = 100,
    start_lr: Annotated[float, typer.Option(help="First learning rate.")] = 1e-7,
    end_lr: Annotated[float, typer.Option(help="Last learning rate.")] = 10.0,
    seed: Annotated[int, typer.Option(help="Seed for the split, init and batches.")] = 0,
) -> None:
    """Learning-rate range test (Leslie Smith / fastai): loss vs exponentially growing lr, with a suggestion."""
    import torch

    from headstart.data.images import load_image_dataset
    from headstart.data.transforms import ImageDataset, build_transform
    from headstart.errors import check_choice
    from headstart.estimators.image import ImageClassifier
    from headstart.models import Preprocessing, create_backbone, get_backbone_spec
    from headstart.models.classifier_net import ClassifierNet
    from headstart.storage import atomic_write_json
    from headstart.training.lr_finder import find_learning_rate, plot_lr_finder
    from headstart.training.recipes import plan_stages

    try:
        check_choice("lr-find", "stage", stage, ("head", "all"))
        stages = [s for s in plan_stages(strategy, 1) if (s.name == "head") == (stage == "head")]
        if not stages:
            raise ParameterError(f"Strategy {strategy!r} has no {stage!r} stage.",
                                 fix="Use --stage head with linear_probe, or --stage all with full.")
        chosen = stages[-1]
        splits = load_image_dataset(data, seed=seed)
        spec = get_backbone_spec(backbone)
        preprocessing = spec.preprocessing()
        if image_size is not None:
            preprocessing = Preprocessing.from_dict({**preprocessing.to_dict(), "input_size": image_size})
        torch.manual_seed(seed)
        model, source = create_backbone(backbone, len(splits.classes), weights=weights)
        net = ClassifierNet(model)
        dataset = ImageDataset(splits.train.paths, splits.train.labels, build_transform(preprocessing, train=True))
        console.print(f"LR range test: {spec.name} ({source.description}), strategy {strategy}, stage"
                      f" {chosen.name}, {steps} steps of {batch_size} images.", highlight=False)
        result = find_learning_rate(net, dataset, stage=chosen, start_lr=start_lr, end_lr=end_lr, num_steps=steps,
                                    batch_size=batch_size, seed=seed, progress=True,
                                    weight_decay=ImageClassifier().weight_decay)
        # the stage's lr is a fixed fraction of train's --lr (the head's rate): translate the suggestion
        share = next(s.lr for s in plan_stages(strategy, 1, lr=1.0) if s.name == chosen.name)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "lr_find.json", {"backbone": spec.name, "strategy": strategy, **result.to_dict()})
        plot_lr_finder(result, out / "lr_find.png", title=f"{spec.name}, {strategy} / {chosen.name}")
        console.print(f"Suggested learning rate: [bold]{result.suggestion:.2e}[/bold]"
                      + (" (sweep stopped early: loss diverged)" if result.stopped_early else "")
                      + f"\nUse it with: headstart train {data} --strategy {strategy} --lr {result.suggestion / share:.2e}"
                      + (f" (this stage runs at {share:g} x --lr)" if share != 1 else "")
                      + f"\nWrote {out / 'lr_find.png'} and {out / 'lr_find.json'}", highlight=False)
    except HeadstartError as error:
        _fail(error)


def _split_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


_DEFAULT_RANKED = {"image": "efficientnet_lite0,efficientnet_lite1,efficientnet_lite2",
                   "text": "minilm",
                   "audio": "logmel:efficientnet_lite0,logmel:efficientnet_lite1,logmel:efficientnet_lite2"}


def _data_options(data: Path, task: str, text_col: str | None, label_col: str | None, label_pattern: str | None,
                  group_pattern: str | None) -> dict[str, str]:
    """Text/audio reading options given on the command line, for the estimator of the data's task."""
    from headstart.tasks import detect_task

    task = detect_task(data) if task == "auto" else task
    given = {"text": {"text_column": text_col, "label_column": label_col},
             "audio": {"label_column": label_col, "label_pattern": label_pattern, "group_pattern": group_pattern}}
    return {k: v for k, v in given.get(task, {}).items() if v is not None}


@app.command()
def compare(
    data: Annotated[Path, typer.Argument(help="Image folder (class folders, or train/ + val/ [+ test/]), text table/folder or audio folder/table.")],
    candidates: Annotated[str, typer.Option(help="Comma-separated heads and strategies: linear, logistic, linear_svm, rbf_svm, random_forest, knn, fine_tune; images also gradual_unfreeze, lp_ft, full; text/audio also lora.")] = "linear,logistic,linear_svm,rbf_svm,random_forest,knn,fine_tune",
    task: Annotated[str, typer.Option(help="auto (detected from DATA), image, text or audio.")] = "auto",
    out: Annotated[Optional[Path], typer.Option(help="Folder for comparison.json and comparison.png (default runs/compare-<data>).")] = None,
    backbone: Annotated[Optional[str], typer.Option(help="Backbone every candidate uses (default: the task's).")] = None,
    weights: Annotated[str, typer.Option(help="auto, random, or a local checkpoint FILE.")] = "auto",
    image_size: Annotated[Optional[int], typer.Option(help="Input side in pixels (default: as `train` chooses).")] = None,
    runtime: Annotated[str, typer.Option(help="Frozen-feature runtime: auto, openvino, onnxruntime or torch.")] = "auto",
    epochs: Annotated[Optional[int], typer.Option(help="Epochs of the training strategies (default: from the data size).")] = None,
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds: one run each (mean and sd reported).")] = "0",
    folds: Annotated[Optional[int], typer.Option(help="k-fold cross-validation over all labelled images instead.")] = None,
    cache_dir: Annotated[Optional[str], typer.Option(help="Feature store folder ('off' disables).")] = None,
    text_col: Annotated[Optional[str], typer.Option(help="Text tables: the text column.")] = None,
    label_col: Annotated[Optional[str], typer.Option(help="Text/audio tables: the label column.")] = None,
    label_pattern: Annotated[Optional[str], typer.Option(help="Flat audio folder: regex giving the label from file names.")] = None,
    group_pattern: Annotated[Optional[str], typer.Option(help="Audio: regex giving the speaker/group from file names (folds never split a group).")] = None,
) -> None:
    """Train several heads/strategies on the same split and print one table (accuracy with CI, macro-F1, times)."""
    from headstart.selection.compare import compare_candidates, format_comparison

    try:
        try:
            seed_list = [int(s) for s in _split_list(seeds)]
        except ValueError:
            raise ParameterError(f"--seeds must be comma-separated integers. Got {seeds!r}.", fix="e.g. --seeds 0,1,2") from None
        out = out or Path("runs") / f"compare-{data.resolve().name}"
        results = compare_candidates(data, _split_list(candidates), task=task, backbone=backbone, weights=weights,
                                     image_size=image_size, runtime=runtime, epochs=epochs, seeds=seed_list,
                                     folds=folds, cache_dir=cache_dir, out=out, console=console,
                                     options=_data_options(data, task, text_col, label_col, label_pattern,
                                                           group_pattern))
        console.print(format_comparison(results))
        console.print(f"Wrote {out / 'comparison.json'} and {out / 'comparison.png'}", highlight=False)
    except HeadstartError as error:
        _fail(error)


@app.command()
def rank(
    data: Annotated[Path, typer.Argument(help="Image folder, text table/folder or audio folder/table (only training examples are used).")],
    backbones: Annotated[Optional[str], typer.Option(help="Comma-separated candidates; NAME=FILE supplies a checkpoint, NAME=random random weights. Default: images efficientnet_lite0,1,2; text minilm,minilm=random; audio logmel:efficientnet_lite0,1,2.")] = None,
    task: Annotated[str, typer.Option(help="auto (detected from DATA), image, text or audio.")] = "auto",
    text_col: Annotated[Optional[str], typer.Option(help="Text tables: the text column.")] = None,
    label_col: Annotated[Optional[str], typer.Option(help="Text/audio tables: the label column.")] = None,
    label_pattern: Annotated[Optional[str], typer.Option(help="Flat audio folder: regex giving the label from file names.")] = None,
    group_pattern: Annotated[Optional[str], typer.Option(help="Audio: regex giving the speaker/group from file names.")] = None,
    cache_dir: Annotated[Optional[str], typer.Option(help="Feature store folder ('off' disables).")] = None,
    runtime: Annotated[str, typer.Option(help="Frozen-feature runtime: auto, openvino, onnxruntime or torch.")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed for the split and the CV folds.")] = 0,
    out: Annotated[Optional[Path], typer.Option(help="Write the ranking as JSON to this file.")] = None,
) -> None:
    """Score candidate backbones before training: LogME and a cross-validated linear probe on cached features."""
    from headstart.features import FeatureStore
    from headstart.selection.rank import format_ranking, rank_backbones
    from headstart.storage import atomic_write_json
    from headstart.tasks import detect_task

    try:
        chosen = detect_task(data) if task == "auto" else task
        backbones = backbones or _DEFAULT_RANKED[chosen]
        names: list[str] = []
        weights: dict[str, str] = {}
        for item in _split_list(backbones):
            name, _, source = item.partition("=")
            names.append(name)
            if source:
                weights[name] = source
        store = None if cache_dir == "off" else FeatureStore(cache_dir)
        scores = rank_backbones(data, names, task=chosen, store=store, runtime=runtime, seed=seed, weights=weights,
                                progress=True, console=console,
                                options=_data_options(data, chosen, text_col, label_col, label_pattern, group_pattern))
        console.print(format_ranking(scores))
        if out is not None:
            atomic_write_json(out, [score.to_dict() for score in scores])
            console.print(f"Wrote {out}", highlight=False)
    except HeadstartError as error:
        _fail(error)


def _predict_dense(estimator: object, inputs: list[str], *, out: Path | None, score_threshold: float,
                   as_json: bool) -> None:
    from headstart.evaluation.report import print_skipped

    usable, skipped = _image_inputs(inputs, estimator)
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


@app.command()
def export(
    model: Annotated[Path, typer.Argument(help="Model folder (e.g. runs/NAME/model).")],
    out: Annotated[Path, typer.Option(help="Folder for the exported model and its headstart-export.json sidecar.")],
    format: Annotated[str, typer.Option(help="onnx or torchscript.")] = "onnx",
    data: Annotated[Optional[Path], typer.Option(help="Real inputs for the parity check and the int8 accuracy (default: the validation split recorded in the model).")] = None,
    quantize: Annotated[bool, typer.Option("--quantize", help="Also write an int8 dynamically quantised model.int8.onnx; reports its accuracy change and speed-up.")] = False,
) -> None:
    """Export a model to ONNX or TorchScript; fails unless it matches torch on real inputs (max |dp| <= 1e-4, same top-1)."""
    from headstart.deploy.export import export_bundle

    try:
        with console.status(f"Exporting {model} to {format} and checking it against torch..."):
            sidecar = export_bundle(model, out, format=format, data=data, quantize=quantize)
    except HeadstartError as error:
        _fail(error)
    parity = sidecar["parity"]
    console.print(f"Wrote {out / sidecar['file']} and {out / 'headstart-export.json'}", highlight=False)
    if sidecar["task"] in ("segmentation", "detection"):
        figures = (f"max |difference| of pixel probabilities {parity['max_abs_diff']:.2e}, pixel agreement"
                   f" {parity['pixel_agreement']:.5f}" if sidecar["task"] == "segmentation" else
                   f"{parity['n_boxes']} boxes, max box difference {parity['max_box_diff_px']:.2e} px, max score"
                   f" difference {parity['max_score_diff']:.2e}")
        console.print(f"Parity with torch on {parity['n_inputs']} real images ({parity['inputs']}): {figures}",
                      highlight=False)
        return
    console.print(f"Parity with torch on {parity['n_inputs']} real inputs ({parity['inputs']}): max |difference|"
                  f" {parity['max_abs_diff']:.2e} (allowed {parity['max_allowed']:g}), top-1 agreement"
                  f" {parity['top1_agreement']:.3f}", highlight=False)
    quantized = sidecar.get("quantized")
    if quantized:
        change = quantized.get("accuracy_change")
        accuracy = (f"accuracy {quantized['float_accuracy']:.4f} -> {quantized['int8_accuracy']:.4f}"
                    f" ({change:+.4f}) on {quantized['n_validation']} validation inputs" if change is not None
                    else quantized.get("note", ""))
        console.print(f"int8 ({', '.join(quantized['ops']) if isinstance(quantized['ops'], list) else quantized['ops']}):"
                      f" {accuracy}; batch speed x{quantized['batch_speedup']}, single-input latency"
                      f" x{quantized['single_speedup']}; {quantized['size_mb']['float']} MB -> "
                      f"{quantized['size_mb']['int8']} MB", highlight=False)
        if change is not None and change < -0.01:
            console.print(f"[yellow]Note:[/yellow] int8 lost {-100 * change:.1f} points of validation accuracy; keep"
                          " model.onnx unless size matters more.")
        if quantized["batch_speedup"] < 1.0:
            console.print("[yellow]Note:[/yellow] the int8 model is slower than the float one on this CPU (dynamic"
                          " int8 convolutions have no fast kernels in ONNX Runtime); keep model.onnx for speed.")


@app.command()
def serve(
    model: Annotated[Path, typer.Argument(help="Model folder (e.g. runs/NAME/model).")],
    host: Annotated[str, typer.Option(help="Interface to listen on (0.0.0.0 for all).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes (each holds the model).")] = 1,
    backend: Annotated[str, typer.Option(help="auto (ONNX Runtime when its export passes the parity check), onnxruntime or torch.")] = "auto",
    data: Annotated[Optional[Path], typer.Option(help="Real inputs for the ONNX parity check when the model records no validation split.")] = None,
    max_upload_bytes: Annotated[int, typer.Option(help="Largest request body accepted.")] = 20 * 2**20,
    max_image_pixels: Annotated[int, typer.Option(help="Largest image accepted, in pixels (width x height).")] = 40_000_000,
    max_items: Annotated[int, typer.Option(help="Most inputs in one request.")] = 64,
    max_text_chars: Annotated[int, typer.Option(help="Longest text accepted.")] = 20_000,
    request_timeout: Annotated[float, typer.Option(help="Seconds allowed for reading a request and for its prediction.")] = 30.0,
    max_batch: Annotated[int, typer.Option(help="Most inputs in one forward pass (micro-batching).")] = 8,
    batch_window_ms: Annotated[float, typer.Option(help="How long a batch waits for requests still being decoded.")] = 4.0,
    top_k: Annotated[int, typer.Option(help="Labels returned per input unless the request asks (?top_k=).")] = 5,
    threads: Annotated[Optional[int], typer.Option(help="Inference threads (default: all cores).")] = None,
    log_embeddings: Annotated[int, typer.Option(help="Image models: keep the embeddings of the last N predicted images; GET /shift then reports their shift from the training data (0: off).")] = 0,
    log_level: Annotated[str, typer.Option(help="uvicorn's log level.")] = "warning",
) -> None:
    """Serve a model over HTTP: POST /predict, GET /health, GET /metadata, a web page at /, OpenAPI docs at /docs."""
    from headstart.deploy.serve import ServeConfig, run_server

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    config = ServeConfig(bundle=str(model), backend=backend, data=None if data is None else str(data),
                         max_upload_bytes=max_upload_bytes, max_image_pixels=max_image_pixels, max_items=max_items,
                         max_text_chars=max_text_chars, request_timeout=request_timeout, max_batch=max_batch,
                         batch_window_ms=batch_window_ms, top_k=top_k, threads=threads,
                         log_embeddings=log_embeddings)
    try:
        run_server(config, host=host, port=port, workers=workers, log_level=log_level)
    except HeadstartError as error:
        _fail(error)


@app.command()
def adapt(
    source: Annotated[Path, typer.Argument(help="Labelled source images: one subfolder per class.")],
    target: Annotated[Path, typer.Option(help="Images of the new domain, used without labels (class subfolders named like the source classes are used only to report target metrics).")],
    method: Annotated[str, typer.Option(help="all (every method side by side; the best by the label-free IM score is kept), or source_only, coral, mmd, dann, cdan, self_training (comma-separated for several).")] = "all",
    out: Annotated[Optional[Path], typer.Option(help="Run folder (default runs/adapt-<source>-<target>).")] = None,
    backbone: Annotated[str, typer.Option(help="A name from `headstart backbones` or timm:<model>.")] = DEFAULT_BACKBONE,
    weights: Annotated[str, typer.Option(help="auto or a local checkpoint FILE.")] = "auto",
    image_size: Annotated[Optional[int], typer.Option(help="Input side for the frozen features (default: pretrained size x1.29).")] = None,
    steps: Annotated[int, typer.Option(help="Training steps of mmd, dann and cdan.")] = 2000,
    seed: Annotated[int, typer.Option(help="Seed of every method.")] = 0,
    runtime: Annotated[str, typer.Option(help="Frozen-feature runtime: auto, openvino, onnxruntime or torch.")] = "auto",
    cache_dir: Annotated[Optional[str], typer.Option(help="Feature store folder ('off' disables).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run in --out.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars or tables.")] = False,
) -> None:
    """Domain adaptation: train on labelled SOURCE images, adapt to unlabelled --target images; writes the model
    (an ordinary bundle: predict / evaluate / export / serve) and a comparison of the methods to --out."""
    from headstart.adapt import DomainAdapter

    def name(folder: Path) -> str:  # Office-31 style <domain>/images: the domain names the run
        folder = folder.resolve()
        return folder.parent.name if folder.name in ("images", "train", "data") else folder.name

    run_dir = out or Path("runs") / f"adapt-{name(source)}-{name(target)}"
    if (run_dir / "model").exists() and not overwrite:
        _fail(ParameterError(f"{run_dir} already holds a run.", fix="Pass --overwrite, or another --out."))
    try:
        DomainAdapter(backbone, method=method, weights=weights, image_size=image_size, steps=steps, seed=seed,
                      runtime=runtime, cache_dir=cache_dir, progress=not quiet).fit(source, target, out=run_dir)
    except HeadstartError as error:
        _fail(error)


@app.command()
def shift(
    a: Annotated[Path, typer.Argument(help="First image folder (any subfolders), or a model folder: its backbone embeds and its recorded validation images stand for its training data.")],
    b: Annotated[Path, typer.Argument(help="Second image folder (e.g. the images the model now sees).")],
    backbone: Annotated[Optional[str], typer.Option(help="Embedding backbone for two folders (default efficientnet_lite0).")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Input side (default: the backbone's).")] = None,
    permutations: Annotated[int, typer.Option(help="Shuffles of the MMD permutation test.")] = 500,
    max_samples: Annotated[int, typer.Option(help="At most this many images per side (seeded subsample).")] = 1000,
    seed: Annotated[int, typer.Option(help="Subsampling, shuffles and folds.")] = 0,
    runtime: Annotated[str, typer.Option(help="Embedding runtime: auto, openvino, onnxruntime or torch.")] = "auto",
    cache_dir: Annotated[Optional[str], typer.Option(help="Feature store folder ('off' disables).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Also write the report as JSON to this file.")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Dataset shift between two image sets on backbone embeddings: MMD with a permutation-test p-value, proxy
    A-distance of a domain classifier, and a verdict (no shift / shift / severe shift)."""
    from headstart.deploy.shift import shift_between
    from headstart.storage import atomic_write_json

    try:
        report, described = shift_between(a, b, backbone=backbone, image_size=image_size, permutations=permutations,
                                          max_samples=max_samples, seed=seed, runtime=runtime, cache_dir=cache_dir,
                                          progress=not quiet)
    except HeadstartError as error:
        _fail(error)
    console.print(f"{described['a']} ({described['images_a']} images) vs {described['b']} ({described['images_b']}"
                  f" images), embedded by {described['embedder']} at {described['input_size']}px", highlight=False)
    if described["skipped"]:
        console.print(f"skipped {len(described['skipped'])} unreadable files: "
                      + ", ".join(s["path"] for s in described["skipped"][:5]), highlight=False)
    console.print(report.describe(), highlight=False)
    if out is not None:
        atomic_write_json(out, {**report.to_dict(), **described})


def main() -> None:
    """Entry point of the ``headstart`` script."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
