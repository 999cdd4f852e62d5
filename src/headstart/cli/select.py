"""Choosing before and while training: the learning-rate range test, candidate comparison, backbone ranking."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from headstart.cli.common import app, console, fail, split_list
from headstart.errors import HeadstartError, ParameterError
from headstart.models import DEFAULT_BACKBONE

__all__ = ["lr_find", "compare", "rank"]


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
        fail(error)


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
            seed_list = [int(s) for s in split_list(seeds)]
        except ValueError:
            raise ParameterError(f"--seeds must be comma-separated integers. Got {seeds!r}.", fix="e.g. --seeds 0,1,2") from None
        out = out or Path("runs") / f"compare-{data.resolve().name}"
        results = compare_candidates(data, split_list(candidates), task=task, backbone=backbone, weights=weights,
                                     image_size=image_size, runtime=runtime, epochs=epochs, seeds=seed_list,
                                     folds=folds, cache_dir=cache_dir, out=out, console=console,
                                     options=_data_options(data, task, text_col, label_col, label_pattern,
                                                           group_pattern))
        console.print(format_comparison(results))
        console.print(f"Wrote {out / 'comparison.json'} and {out / 'comparison.png'}", highlight=False)
    except HeadstartError as error:
        fail(error)


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
        for item in split_list(backbones):
            name, _, source = item.partition("=")
            names.append(name)
            if source:
                weights[name] = source
        store = FeatureStore.open(cache_dir)
        scores = rank_backbones(data, names, task=chosen, store=store, runtime=runtime, seed=seed, weights=weights,
                                progress=True, console=console,
                                options=_data_options(data, chosen, text_col, label_col, label_pattern, group_pattern))
        console.print(format_ranking(scores))
        if out is not None:
            atomic_write_json(out, [score.to_dict() for score in scores])
            console.print(f"Wrote {out}", highlight=False)
    except HeadstartError as error:
        fail(error)


