"""A new domain: adapt a model to unlabelled target images, and measure the shift between two image sets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from headstart.cli.common import app, console, fail
from headstart.errors import HeadstartError, ParameterError
from headstart.models import DEFAULT_BACKBONE

__all__ = ["adapt", "shift"]


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
        fail(ParameterError(f"{run_dir} already holds a run.", fix="Pass --overwrite, or another --out."))
    try:
        DomainAdapter(backbone, method=method, weights=weights, image_size=image_size, steps=steps, seed=seed,
                      runtime=runtime, cache_dir=cache_dir, progress=not quiet).fit(source, target, out=run_dir)
    except HeadstartError as error:
        fail(error)


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
        fail(error)
    console.print(f"{described['a']} ({described['images_a']} images) vs {described['b']} ({described['images_b']}"
                  f" images), embedded by {described['embedder']} at {described['input_size']}px", highlight=False)
    if described["skipped"]:
        console.print(f"skipped {len(described['skipped'])} unreadable files: "
                      + ", ".join(s["path"] for s in described["skipped"][:5]), highlight=False)
    console.print(report.describe(), highlight=False)
    if out is not None:
        atomic_write_json(out, {**report.to_dict(), **described})


