"""``headstart train``: one command for every task; options go to the task's estimator, resume continues any run."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from headstart.cli.common import app, console, fail, split_list
from headstart.errors import HeadstartError, ParameterError, ResumeError

__all__ = ["train", "TRAIN_DEFAULTS"]


@app.command()
def train(
    data: Annotated[Optional[Path], typer.Argument(help="Image folder (class subfolders, or train/ + val/); text table (CSV/TSV/JSONL/Parquet), .txt class folders or split tables; audio class folders, flat audio folder (--label-pattern) or table of paths.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Run folder (default runs/<data folder name>).")] = None,
    val: Annotated[Optional[Path], typer.Option(help="Validation folder (default: DATA/val or a stratified hold-out).")] = None,
    task: Annotated[str, typer.Option(help="auto (detected from DATA), image, text, audio, segmentation (image + mask folders) or detection (Pascal VOC folder or COCO JSON).")] = "auto",
    backbone: Annotated[Optional[str], typer.Option(help="Images: a name from `headstart backbones` or timm:<model> (default efficientnet_lite0). Text: minilm (default), a transformers folder or hub id. Audio: logmel:<image backbone> (default logmel:efficientnet_lite0) or a transformers audio model folder/id.")] = None,
    strategy: Annotated[str, typer.Option(help="auto, linear_probe, fine_tune, gradual_unfreeze, lp_ft or full (every task); lora (text and transformers audio models); partial (the last --tune-blocks blocks: images and logmel audio on cached inputs, text layers).")] = "auto",
    head: Annotated[str, typer.Option(help="linear, or a scikit-learn head on frozen features: logistic, linear_svm, rbf_svm, random_forest, knn.")] = "linear",
    epochs: Annotated[Optional[int], typer.Option(help="Epochs of the main stage (fine_tune: unfrozen epochs after one head stage; a linear probe is solved, not trained for epochs). Default: from the dataset size.")] = None,
    weights: Annotated[str, typer.Option(help="auto, random, or a local checkpoint FILE.")] = "auto",
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate of the head.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Examples per step (default 32; segmentation/detection 4).")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Input side in pixels (default: the backbone's; x1.29 for linear_probe, FixRes).")] = None,
    patience: Annotated[Optional[int], typer.Option(help="Early-stopping patience in epochs (0 disables; default: images and audio 3, text 2, segmentation/detection off).")] = None,
    monitor: Annotated[Optional[str], typer.Option(help="What picks the best epoch: val_loss or val_accuracy; images also val_calibrated_loss (their default: log loss at each epoch's best temperature).")] = None,
    class_weights: Annotated[bool, typer.Option("--class-weights/--no-class-weights", help="Weight the loss by inverse class frequency.")] = False,
    seed: Annotated[int, typer.Option(help="Seed for split, init, shuffling and augmentation.")] = 0,
    val_fraction: Annotated[float, typer.Option(help="Hold-out share when there is no validation data.")] = 0.2,
    devices: Annotated[int, typer.Option(help="Processes/GPUs for data-parallel training (every task).")] = 1,
    accelerator: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    precision: Annotated[str, typer.Option(help="32-true, 16-mixed or bf16-mixed.")] = "32-true",
    num_workers: Annotated[Optional[int], typer.Option(help="Image classification: image-decoding worker processes.")] = None,
    lr_mult: Annotated[Optional[float], typer.Option(help="Image classification: each earlier layer group learns this many times as fast as the next (e.g. 0.3); text/audio: --layer-decay; segmentation/detection: --encoder-lr-mult.")] = None,
    augmented_views: Annotated[int, typer.Option(help="Random augmented crops per training image cached for heads on frozen features.")] = 0,
    runtime: Annotated[str, typer.Option(help="Frozen-feature runtime: auto, openvino, onnxruntime or torch.")] = "auto",
    cache_dir: Annotated[Optional[str], typer.Option(help="Feature store folder (default $HEADSTART_CACHE or ~/.cache/headstart; 'off' disables).")] = None,
    calibrate: Annotated[bool, typer.Option("--calibrate/--no-calibrate", help="Fit a temperature on validation predictions.")] = True,
    time_budget: Annotated[str, typer.Option(help="Image, text and audio classification: time for the training stages: seconds, or 10m / 1.5h; 'none' for no limit. auto: with --strategy auto, 5 min on a CPU (images fine-tune only if two unfrozen epochs fit, measured here), 30 min with a GPU.")] = "auto",
    feature_layers: Annotated[str, typer.Option(help="Images: what the linear head reads: last (the pooled last layer), all (and every stage's pooled output, Head2Toe), a number k (the last k stages) or auto (frozen backbone: last or all, by CV log loss on the training images).")] = "auto",
    tune_blocks: Annotated[Optional[int], typer.Option(help="--strategy partial: the last blocks that train (images and logmel audio: on the frozen blocks' output cached per view; text: transformer layers). Default: images and text 2, audio 4.")] = None,
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
    encoder_lr_mult: Annotated[Optional[float], typer.Option(help="Segmentation/detection: the pretrained backbone's learning rate relative to the decoder's once unfrozen (default 0.1).")] = None,
    min_size: Annotated[int, typer.Option(help="Detection: images resized so the short side is this (long side at most --max-size).")] = 384,
    max_size: Annotated[int, typer.Option(help="Detection: longest image side after resizing.")] = 640,
    class_names: Annotated[Optional[str], typer.Option(help="Segmentation: class names in mask-index order, comma-separated (default: classes.txt or background,foreground for binary masks). Detection: classes to keep.")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue the run in this folder from its last checkpoint (any task).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run in --out.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars or epoch lines.")] = False,
) -> None:
    """Train a classifier on images, texts or audio, or a segmenter / detector on images; writes the run (model,
    metrics, plots) to --out. Each option applies to the tasks whose estimator has it; another is refused."""
    given = {name: value for name, value in locals().items() if value != TRAIN_DEFAULTS[name]}
    try:
        if resume is not None:
            _resume(resume, given, quiet=quiet)
            return
        if data is None:
            raise ParameterError("`headstart train` needs DATA unless --resume RUN_DIR is given.",
                                 fix="headstart train PATH/TO/DATA --out runs/NAME")
        from headstart.tasks import detect_task, estimator_class, get_task

        out = out or Path("runs") / data.resolve().name
        chosen = detect_task(data) if task == "auto" else get_task(task).name
        cls = estimator_class(chosen)
        estimator = cls(**_estimator_options(cls, given, task=chosen, quiet=quiet))  # refuses before anything is removed
        _prepare_out(out, data=data, val=val, overwrite=overwrite)
        console.print(f"[bold]Task[/bold] {chosen}" + (" (detected)" if task == "auto" else ""))
        estimator.fit(data, val=val, out=out)
    except HeadstartError as error:
        fail(error)


TRAIN_DEFAULTS = {name: parameter.default for name, parameter in inspect.signature(train).parameters.items()}
# train options that are not estimator parameters, and options named differently from the parameter they set
_RUN_OPTIONS = ("data", "out", "val", "task", "resume", "overwrite", "quiet")
_PARAMETER_OF = {"text_col": "text_column", "label_col": "label_column", "path_col": "path_column",
                 "group_col": "group_column", "class_names": "classes"}


def _option(name: str) -> str:
    return "DATA" if name == "data" else "--" + name.replace("_", "-")


def _estimator_options(cls: type, given: dict[str, Any], *, task: str, quiet: bool) -> dict[str, Any]:
    """The estimator parameters the given options set. An option the task's estimator has no parameter for is
    refused (it would be silently ignored); options left at their defaults leave the estimator's own defaults."""
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    options: dict[str, Any] = {"progress": not quiet}
    foreign = []
    for name, value in given.items():
        if name in _RUN_OPTIONS:
            continue
        parameter = _PARAMETER_OF.get(name, name)
        if parameter not in accepted:
            foreign.append(name)
        elif name == "patience":
            options[parameter] = value or None  # --patience 0 turns early stopping off
        elif name == "class_names":
            options[parameter] = split_list(value)
        else:
            options[parameter] = value
    if foreign:
        raise ParameterError(f"{', '.join(_option(n) for n in foreign)} do(es) not apply to {task} training, which"
                             " would silently ignore it.",
                             fix="Leave it out; `headstart train --help` says which tasks read each option.")
    return options


def _prepare_out(out: Path, *, data: Path, val: Path | None, overwrite: bool) -> None:
    """Refuse to mix two runs in one folder, or to write a run into its own data; with --overwrite remove what an
    earlier run wrote there (only that: a folder that is not a headstart run is never emptied)."""
    import os

    from headstart.bundle import is_legacy_bundle
    from headstart.errors import OverwriteError
    from headstart.storage import remove_owned_directory
    from headstart.training.checkpoints import RUN_FILES, clear_checkpoints, is_run_folder
    from headstart.training.loop import process_rank

    if process_rank() > 0:  # a data-parallel worker re-runs this command (Fabric's launcher); rank 0 owns --out
        return
    target = Path(os.path.abspath(out))
    for source, option in ((data, "DATA"), (val, "--val")):
        if source is None:
            continue
        source = Path(os.path.abspath(source))
        if target == source or source in target.parents or source == target / "model":
            raise OverwriteError(f"--out {out} is inside, or is, {option} {source}: the run's files (checkpoints/,"
                                 " model/) would be read as data next time, or replace it.",
                                 fix=f"Pass an --out outside the data, for example --out runs/{source.name}.")
    if not (out / "config.json").is_file() or not is_run_folder(out):
        return  # nothing to resume (start_run_folder refuses a foreign folder that holds a run's file names)
    if not overwrite:
        raise ParameterError(f"--out {out} already holds a run.",
                             fix=f"Use --resume {out} to continue it, --overwrite to replace it, or another --out.")
    for name in RUN_FILES:
        entry = out / name
        if name == "model":
            remove_owned_directory(entry, kind="model", legacy=is_legacy_bundle)
        elif name == "checkpoints":
            clear_checkpoints(out)
        elif name == "samples" and entry.is_dir():
            for image in entry.glob("*.png"):  # the report images a run writes; anything else stays
                image.unlink()
            if not any(entry.iterdir()):
                entry.rmdir()
        elif entry.is_file():
            entry.unlink()


def _resume(run_dir: Path, given: dict[str, Any], *, quiet: bool) -> None:
    """Continue a run with its own data and settings, whatever its task."""
    from headstart.storage import read_json
    from headstart.tasks import resolve, task_of_bundle

    config_file = run_dir / "config.json"
    if not config_file.is_file():
        raise ParameterError(f"--resume {run_dir}: no config.json there, so it is not a headstart run folder.",
                             fix="Pass the --out folder of an earlier `headstart train`.")
    extra = [name for name in given if name not in ("resume", "quiet")]
    if extra:
        raise ParameterError(f"--resume {run_dir} continues the run with its own data and settings; got"
                             f" {', '.join(_option(n) for n in extra)} as well, which would change the run.",
                             fix=f"Run `headstart train --resume {run_dir}` alone (--quiet is allowed).")
    try:
        saved = read_json(config_file)
        task, params, data, val = task_of_bundle(saved), saved["params"], saved["data"], saved.get("val")
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ResumeError(f"{config_file} is damaged or not from headstart train ({error!r}).",
                          fix="Start a new run; this folder cannot be resumed.") from None
    if "samples" in (data, val):
        raise ResumeError(f"{run_dir} was trained on samples passed from Python, which the command line cannot read.",
                          fix="Resume it from Python: fit(samples, out=RUN_DIR, resume=True).")
    resolve(task.estimator)(**{**params, "progress": not quiet}).fit(data, val=val, out=run_dir, resume=True)
