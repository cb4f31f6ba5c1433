"""`stylesearch export-onnx`."""

from __future__ import annotations

from typing import Optional

import typer

from .common import STATE, choose_model, dataset_argument, log, model_option, pretrained_option, summary, warn_list


def export_onnx(
    dataset: str = dataset_argument(),
    model: Optional[str] = model_option(),
    pretrained: Optional[str] = pretrained_option(),
    image: bool = typer.Option(True, "--image/--no-image",
                               help="Also export the image tower (image queries, embed --backend onnx)."),
    int8: bool = typer.Option(False, "--int8", help="Also make the int8-quantised image tower (embed --backend "
                                                    "onnx-int8); reports its cosine agreement with fp32."),
    status: bool = typer.Option(False, "--status", help="Only show what the current export holds."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """(Re)make the ONNX export of the model's towers, used by text and image queries without torch.

    `embed` exports the text tower by itself the first time it loads a model; searches fall
    back to torch whenever the export is missing or stale.
    """
    from ..embed.export import export_onnx as run_export
    from ..embed.export import export_status
    from ..store.paths import existing_dataset

    paths = existing_dataset(dataset, STATE.root)
    spec = choose_model(paths, model, pretrained)
    if status:
        summary(export_status(paths, spec.key), as_json, "export-onnx")
        return
    towers = ("text",) + (("image",) if image else ()) + (("image-int8",) if int8 else ())
    if not as_json:
        log(f"exporting {', '.join(towers)} of {spec.key} (loads the model; large models take a minute)")
    result = run_export(paths, spec, towers=towers, force=True)
    warn_list([f"{tower} not exported: {why}" for tower, why in result["skipped"].items()])
    summary(result, as_json, "export-onnx")


def register(app: typer.Typer) -> None:
    app.command("export-onnx")(export_onnx)
