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

from headstart.backbones import DEFAULT_BACKBONE
from headstart.errors import HeadstartError, ParameterError, ResumeError

__all__ = ["app", "main"]

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Transfer learning from pretrained models: train, evaluate, predict.")
console = Console()
error_console = Console(stderr=True)


RUN_FILES = ("checkpoints", "model", "config.json", "data.json", "metrics.json", "history.json", "curves.png",
             "confusion_matrix.png", "reliability.png", "summary.txt")


def _fail(error: HeadstartError) -> None:
    error_console.print(f"[bold red]Error:[/bold red] {error.message}", highlight=False)
    if error.fix:
        error_console.print(f"[bold]Fix:[/bold] {error.fix}", highlight=False)
    raise typer.Exit(code=2)


@app.command()
def train(
    data: Annotated[Optional[Path], typer.Argument(help="Image folder: one subfolder per class, or train/ + val/.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Run folder (default runs/<data folder name>).")] = None,
    val: Annotated[Optional[Path], typer.Option(help="Validation folder (default: DATA/val or a stratified hold-out).")] = None,
    backbone: Annotated[str, typer.Option(help="Backbone name (see `headstart backbones`) or timm:<model>.")] = DEFAULT_BACKBONE,
    strategy: Annotated[str, typer.Option(help="auto, linear_probe, fine_tune, gradual_unfreeze, lp_ft or full.")] = "auto",
    head: Annotated[str, typer.Option(help="linear, or a scikit-learn head on frozen features: logistic, linear_svm, rbf_svm, random_forest, knn.")] = "linear",
    epochs: Annotated[Optional[int], typer.Option(help="Epochs of the main stage (fine_tune: unfrozen epochs after one head stage; a linear probe is solved, not trained for epochs). Default: from the dataset size.")] = None,
    weights: Annotated[str, typer.Option(help="auto, random, or a local checkpoint FILE.")] = "auto",
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate of the head.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 32,
    image_size: Annotated[Optional[int], typer.Option(help="Input side in pixels (default: the backbone's; x1.29 for linear_probe, FixRes).")] = None,
    patience: Annotated[int, typer.Option(help="Early-stopping patience in epochs (0 disables).")] = 3,
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
    resume: Annotated[Optional[Path], typer.Option(help="Continue the run in this folder from its last checkpoint.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run in --out.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars or epoch lines.")] = False,
) -> None:
    """Train a classifier on an image folder; writes the run (model, metrics, plots) to --out."""
    from headstart.classifier import ImageClassifier
    from headstart.storage import read_json
    from headstart.train import process_rank

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
                params, saved_data, saved_val = saved["params"], saved["data"], saved["val"]
            except (ValueError, KeyError, TypeError) as error:
                raise ResumeError(f"{config_file} is damaged or not from headstart train ({error!r}).",
                                  fix="Start a new run; this folder cannot be resumed.") from None
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
        classifier = ImageClassifier(
            backbone, strategy=strategy, head=head, epochs=epochs, weights=weights, lr=lr, batch_size=batch_size,
            image_size=image_size, patience=patience or None, monitor=monitor, class_weights=class_weights,
            seed=seed, val_fraction=val_fraction, devices=devices, accelerator=accelerator, precision=precision,
            num_workers=num_workers, lr_mult=lr_mult, augmented_views=augmented_views, runtime=runtime,
            cache_dir=cache_dir, calibrate=calibrate, progress=not quiet,
        )
        classifier.fit(data, val=val, out=out)
    except HeadstartError as error:
        _fail(error)


_TRAIN_DEFAULTS = {name: parameter.default for name, parameter in inspect.signature(train).parameters.items()}


@app.command()
def evaluate(
    model: Annotated[Path, typer.Argument(help="Model folder (e.g. runs/NAME/model).")],
    data: Annotated[Path, typer.Argument(help="Labelled image folder, one subfolder per class.")],
    out: Annotated[Optional[Path], typer.Option(help="Folder for metrics.json, confusion_matrix.png, predictions.json.")] = None,
) -> None:
    """Evaluate a saved model on labelled images."""
    from headstart.classifier import ImageClassifier

    try:
        classifier = ImageClassifier.load(model)
        classifier.evaluate(data, out=out)
        if out is not None:
            console.print(f"Wrote {out / 'metrics.json'}, {out / 'confusion_matrix.png'}, {out / 'predictions.json'}")
    except HeadstartError as error:
        _fail(error)


@app.command()
def predict(
    model: Annotated[Path, typer.Argument(help="Model folder (e.g. runs/NAME/model).")],
    images: Annotated[list[Path], typer.Argument(help="Image files and/or folders.")],
    top_k: Annotated[int, typer.Option(help="How many labels to show per image.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines instead of a table.")] = False,
) -> None:
    """Predict the top-k labels of images (folders are searched recursively; unreadable files are listed)."""
    from headstart.classifier import ImageClassifier, print_skipped
    from headstart.data.images import ImageDecodeError, SkippedFile, list_image_files, load_image

    try:
        if top_k < 1:
            raise ParameterError(f"--top-k must be >= 1. Got {top_k}.", fix="Pass --top-k 1 or more.")
        classifier = ImageClassifier.load(model)
        files: list[Path] = []
        skipped: list[SkippedFile] = []
        for item in images:
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
                load_image(file, max_pixels=classifier.max_image_pixels, draft_size=32)
                usable.append(file)
            except ImageDecodeError as error:
                skipped.append(SkippedFile(str(file), error.reason))
        print_skipped(error_console, skipped)
        probabilities = classifier.predict_proba(usable)
        k = min(top_k, len(classifier.classes_))
        table = Table("image", *[f"#{i + 1}" for i in range(k)], show_edge=False)
        for file, row in zip(usable, probabilities):
            order = row.argsort()[::-1][:k]
            top = [(classifier.classes_[i], float(row[i])) for i in order]
            if as_json:
                print(json.dumps({"image": str(file), "top_k": [{"label": c, "probability": p} for c, p in top]}))
            else:
                table.add_row(str(file), *[f"{c} {p:.3f}" for c, p in top])
        if not as_json:
            console.print(table)
        if not usable:
            raise ParameterError("None of the given paths is a readable image.", fix="Pass image files or folders of images.")
    except HeadstartError as error:
        _fail(error)


@app.command()
def backbones(
    details: Annotated[bool, typer.Option(help="Also show timm model, normalisation and where weights come from.")] = False,
) -> None:
    """List the registered backbones, their size and input, and whether weights are available right now."""
    from headstart.backbones import count_parameters, get_backbone_spec, list_backbones, resolve_weights
    from headstart.errors import WeightsNotFoundError

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

    from headstart.backbones import Preprocessing, create_backbone, get_backbone_spec
    from headstart.data.images import load_image_dataset
    from headstart.data.transforms import ImageDataset, build_transform
    from headstart.classifier import ImageClassifier
    from headstart.lr_finder import find_learning_rate, plot_lr_finder
    from headstart.storage import atomic_write_json
    from headstart.strategies import ClassifierNet, plan_stages
    from headstart.errors import check_choice

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


@app.command()
def compare(
    data: Annotated[Path, typer.Argument(help="Image folder: class folders, or train/ + val/ [+ test/].")],
    candidates: Annotated[str, typer.Option(help="Comma-separated heads and strategies: linear, logistic, linear_svm, rbf_svm, random_forest, knn, fine_tune, gradual_unfreeze, lp_ft, full.")] = "linear,logistic,linear_svm,rbf_svm,random_forest,knn,fine_tune",
    out: Annotated[Optional[Path], typer.Option(help="Folder for comparison.json and comparison.png (default runs/compare-<data>).")] = None,
    backbone: Annotated[str, typer.Option(help="Backbone every candidate uses.")] = DEFAULT_BACKBONE,
    weights: Annotated[str, typer.Option(help="auto, random, or a local checkpoint FILE.")] = "auto",
    image_size: Annotated[Optional[int], typer.Option(help="Input side in pixels (default: as `train` chooses).")] = None,
    runtime: Annotated[str, typer.Option(help="Frozen-feature runtime: auto, openvino, onnxruntime or torch.")] = "auto",
    epochs: Annotated[Optional[int], typer.Option(help="Epochs of the training strategies (default: from the data size).")] = None,
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds: one run each (mean and sd reported).")] = "0",
    folds: Annotated[Optional[int], typer.Option(help="k-fold cross-validation over all labelled images instead.")] = None,
    cache_dir: Annotated[Optional[str], typer.Option(help="Feature store folder ('off' disables).")] = None,
) -> None:
    """Train several heads/strategies on the same split and print one table (accuracy with CI, macro-F1, times)."""
    from headstart.compare import compare_candidates, format_comparison

    try:
        try:
            seed_list = [int(s) for s in _split_list(seeds)]
        except ValueError:
            raise ParameterError(f"--seeds must be comma-separated integers. Got {seeds!r}.", fix="e.g. --seeds 0,1,2") from None
        out = out or Path("runs") / f"compare-{data.resolve().name}"
        results = compare_candidates(data, _split_list(candidates), backbone=backbone, weights=weights,
                                     image_size=image_size, runtime=runtime, epochs=epochs, seeds=seed_list,
                                     folds=folds, cache_dir=cache_dir, out=out, console=console)
        console.print(format_comparison(results))
        console.print(f"Wrote {out / 'comparison.json'} and {out / 'comparison.png'}", highlight=False)
    except HeadstartError as error:
        _fail(error)


@app.command()
def rank(
    data: Annotated[Path, typer.Argument(help="Image folder: class folders, or train/ + val/ (only training images are used).")],
    backbones: Annotated[str, typer.Option(help="Comma-separated candidates; NAME=FILE supplies a checkpoint, NAME=random random weights.")] = "efficientnet_lite0,efficientnet_lite1,efficientnet_lite2",
    cache_dir: Annotated[Optional[str], typer.Option(help="Feature store folder ('off' disables).")] = None,
    runtime: Annotated[str, typer.Option(help="Frozen-feature runtime: auto, openvino, onnxruntime or torch.")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed for the split and the CV folds.")] = 0,
    out: Annotated[Optional[Path], typer.Option(help="Write the ranking as JSON to this file.")] = None,
) -> None:
    """Score candidate backbones before training: LogME and a cross-validated linear probe on cached features."""
    from headstart.features import FeatureStore
    from headstart.rank import format_ranking, rank_backbones
    from headstart.storage import atomic_write_json

    try:
        names: list[str] = []
        weights: dict[str, str] = {}
        for item in _split_list(backbones):
            name, _, source = item.partition("=")
            names.append(name)
            if source:
                weights[name] = source
        store = None if cache_dir == "off" else FeatureStore(cache_dir)
        scores = rank_backbones(data, names, store=store, runtime=runtime, seed=seed, weights=weights, progress=True,
                                console=console)
        console.print(format_ranking(scores))
        if out is not None:
            atomic_write_json(out, [score.to_dict() for score in scores])
            console.print(f"Wrote {out}", highlight=False)
    except HeadstartError as error:
        _fail(error)


def main() -> None:
    """Entry point of the ``headstart`` script."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
