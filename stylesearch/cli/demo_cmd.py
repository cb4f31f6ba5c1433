"""`stylesearch demo`: the whole pipeline offline on generated images."""

from __future__ import annotations

import typer

from .common import STATE, emit_rows, log, make_progress, summary


def demo(
    dataset: str = typer.Option("demo", "--dataset", help="Dataset name to create."),
    count: int = typer.Option(90, "--count", min=8, help="How many sample images to generate."),
    no_map: bool = typer.Option(False, "--no-map", help="Skip the UMAP map (saves ~20 s on first run)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Generate sample images and run transform, atlas, embed, index, search and umap-export on them."""
    from ..pipeline import run_demo
    from ..store.paths import dataset_paths

    paths = dataset_paths(dataset, STATE.root)
    progress = make_progress()
    report = run_demo(paths, count, progress=progress, map_png=not no_map)
    if as_json:
        summary(report, True, "demo", progress)
        return
    if not report["pretrained_weights"]:
        log("note: pretrained CLIP weights are not cached here, so the demo used a small randomly initialised "
            "model: the pipeline is real, the similarities are not meaningful. See README 'Models'.")
    log(f"demo: {report['embed']['embedded']} images embedded with {report['model']}, "
        f"index {report['index']}, atlas {report['atlas_pages']} page(s) in {paths.atlas}")
    if "map" in report:
        log(f"demo: map of the collection: {report['map']['png']}")
    log(f"demo: most similar to {report['query']}:")
    emit_rows(report["results"], ["rank", "score", "id", "path"], "table")
    log(f"next: stylesearch search {dataset} --like 3   |   stylesearch label {dataset}")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
