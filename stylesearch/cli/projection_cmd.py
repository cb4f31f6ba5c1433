"""`stylesearch umap-export`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from ..choices import COORD_FORMATS
from .common import (STATE, choice_enum, choose_model, dataset_argument, log, make_progress, model_option,
                     pretrained_option)

CoordFormat = choice_enum("CoordFormat", COORD_FORMATS)


def umap_export(
    dataset: str = dataset_argument(),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Coordinates file (default: stdout)."),
    fmt: Optional[CoordFormat] = typer.Option(None, "--format", help="csv, json or parquet (default: by suffix)."),
    png: Optional[Path] = typer.Option(None, "--png", help="Also draw a thumbnail map of the collection."),
    png_size: int = typer.Option(2048, "--png-size", help="Map width/height in pixels."),
    thumb: int = typer.Option(48, "--thumb", help="Thumbnail size on the map."),
    neighbors: int = typer.Option(15, "--neighbors", min=2),
    min_dist: float = typer.Option(0.1, "--min-dist", min=0.0),
    seed: int = typer.Option(42, "--seed", help="Random seed (same seed, same output)."),
    raw: bool = typer.Option(False, "--raw", help="Ignore learned metric weights."),
    model: Optional[str] = model_option(),
    pretrained: Optional[str] = pretrained_option(),
) -> None:
    """2D UMAP coordinates of every embedded item (csv/json/parquet) and an optional thumbnail map PNG."""
    from ..maps.projection import UmapOptions, format_coords, project_dataset, render_map, write_coords
    from ..store.paths import existing_dataset

    paths = existing_dataset(dataset, STATE.root)
    key = choose_model(paths, model, pretrained).key
    chosen = (fmt.value if fmt else None) or (output.suffix.lstrip(".") if output else "csv")
    if chosen not in COORD_FORMATS:
        raise typer.BadParameter(f"Cannot tell the format from {output}; pass --format.")
    rows = project_dataset(paths, key, UmapOptions(neighbors, min_dist, seed, raw=raw), make_progress())
    if output:
        write_coords(rows, output, chosen)
        log(f"umap-export: {len(rows)} points -> {output}")
    elif chosen == "parquet":
        raise typer.BadParameter("Parquet is binary: write it to a file with -o.")
    else:
        sys.stdout.write(format_coords(rows, chosen).decode())
    if png:
        drawn = render_map(paths, rows, png, png_size, thumb)
        log(f"umap-export: map {png} with {drawn['placed']} thumbnails "
            f"({drawn['hidden_overlaps']} hidden by overlap)")


def register(app: typer.Typer) -> None:
    app.command("umap-export")(umap_export)
