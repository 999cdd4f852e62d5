"""What can be used: the registered backbones, and the frozen-feature store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from headstart.cli.common import app, console, fail

__all__ = ["backbones", "cache_info", "cache_clear"]


@app.command()
def backbones(
    modality: Annotated[str, typer.Option(help="image, text, audio or all.")] = "image",
    details: Annotated[bool, typer.Option(help="Also show the timm model / package, normalisation and where weights come from.")] = False,
) -> None:
    """List the registered backbones, their size and input, and whether weights are available right now."""
    from headstart.errors import HeadstartError
    from headstart.models import MODALITIES

    try:
        chosen = MODALITIES if modality == "all" else (modality,)
        table = Table(show_edge=False)
        for column in ("name", "family", "params", "input", "weights now"):
            table.add_column(column, no_wrap=True)
        if details:
            for column in ("model", "mean / std", "source"):
                table.add_column(column, overflow="fold")
        for kind in chosen:
            for row in _backbone_rows(kind):
                table.add_row(*(row if details else row[:5]))
    except HeadstartError as error:
        fail(error)
    console.print(table)
    console.print("weights now: package = shipped by an installed package; cache = local timm/Hugging Face cache;"
                  " file = --weights; download = only with internet; missing = not available offline.\n"
                  "Any timm model can be used as timm:<name>, any transformers folder or hub id for text and audio;"
                  " supply weights with --weights FILE when offline.")


def _availability(resolve: Any) -> tuple[str, str]:
    from headstart.errors import WeightsNotFoundError

    try:
        source = resolve()
    except WeightsNotFoundError as error:
        return "[red]missing[/red]", error.message
    kind = "[green]" + source.kind + "[/green]" if source.kind != "hub" else "[yellow]download[/yellow]"
    return kind, source.description


def _backbone_rows(modality: str) -> list[list[str]]:
    """One table row per registered backbone of ``modality``: name, family, size, input, weights, details."""
    from headstart.models import (
        AUDIO_PREFIX,
        count_parameters,
        get_backbone_spec,
        list_backbones,
        resolve_weights,
    )

    rows = []
    for name in list_backbones(modality):
        if modality == "text":
            from headstart.models import get_text_backbone_spec
            from headstart.models.text import resolve_text_source

            spec = get_text_backbone_spec(name)
            available, where = _availability(lambda: resolve_text_source(name, allow_download=False))
            rows.append([name, "transformers (text)", "-", "tokens", available, spec.package, "-", where])
            continue
        image = name.removeprefix(AUDIO_PREFIX)
        spec = get_backbone_spec(image)
        prep = spec.preprocessing()
        available, where = _availability(lambda: resolve_weights(spec))
        family = spec.family if modality == "image" else f"log-mel + {spec.family}"
        size = f"{prep.input_size}px" if modality == "image" else "spectrogram"
        rows.append([name, family, f"{count_parameters(image) / 1e6:.1f}M", size, available, spec.timm_id,
                     f"{prep.mean} / {prep.std}", where])
    return rows


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


