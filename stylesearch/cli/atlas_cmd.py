"""`stylesearch atlas`."""

from __future__ import annotations

import typer

from ..choices import ATLAS_ORDERS
from .common import STATE, choice_enum, dataset_argument, make_progress, summary

AtlasOrder = choice_enum("AtlasOrder", ATLAS_ORDERS)


def atlas(
    dataset: str = dataset_argument(),
    tile: int = typer.Option(64, "--tile", min=4, help="Tile size in pixels."),
    padding: int = typer.Option(2, "--padding", min=0),
    max_size: int = typer.Option(4096, "--max-size", help="Largest page side; more pages when exceeded."),
    order: AtlasOrder = typer.Option("path", "--order", help="path, or umap (after umap-export)."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest summary as JSON on stdout."),
) -> None:
    """Render sprite atlas PNG page(s) and a JSON manifest."""
    from ..maps.atlas import AtlasOptions, build_atlas
    from ..store.paths import existing_dataset

    paths = existing_dataset(dataset, STATE.root)
    progress = make_progress()
    manifest = build_atlas(paths, AtlasOptions(tile, padding, max_size, order.value), progress)
    result = {"pages": len(manifest["pages"]), "items": manifest["count"], "skipped": len(manifest["skipped"]),
              "manifest": str(paths.atlas_manifest)}
    summary(result, as_json, "atlas", progress)


def register(app: typer.Typer) -> None:
    app.command("atlas")(atlas)
