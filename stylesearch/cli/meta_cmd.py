"""`stylesearch meta` (attach metadata from a file) and `stylesearch tag` (zero-shot attributes)."""

from __future__ import annotations

import sys
from typing import List, Optional

import typer

from .common import STATE, choose_model, model_option, pretrained_option, print_json, summary, warn_list


def meta(
    dataset: str = typer.Argument(..., help="Dataset name."),
    source: str = typer.Argument(..., help="CSV, TSV or JSONL file (or '-' for stdin) with a path, item_id, id "
                                           "or url column naming each item; other columns become metadata."),
    replace: bool = typer.Option(False, "--replace", help="Replace each item's metadata instead of merging."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Attach or update item metadata (for folders that were not downloaded from a catalogue)."""
    from ..ingest.metadata import attach_metadata, read_metadata_rows
    from ..store.paths import existing_dataset

    paths = existing_dataset(dataset, STATE.root)
    text = _read_stdin() if source == "-" else None
    rows, malformed = read_metadata_rows("stdin.jsonl" if source == "-" and text.lstrip().startswith("{")
                                         else ("stdin.csv" if source == "-" else source), text)
    result = attach_metadata(paths, rows, malformed, replace)
    warn_list(result.warnings)
    summary(result.as_dict(), as_json, "meta")


def _read_stdin() -> str:
    """Standard input as text whatever its bytes: not UTF-8 is replaced (as in files), never an error."""
    stream = getattr(sys.stdin, "buffer", None)
    return stream.read().decode("utf-8", "replace") if stream is not None else sys.stdin.read()


def tag(
    dataset: str = typer.Argument(..., help="Dataset name."),
    attribute: List[str] = typer.Option(..., "--attribute", "-a",
                                        help='NAME=LABEL,LABEL,... (repeatable), e.g. style=photo,illustration,"3d render".'),
    redo: bool = typer.Option(False, "--redo", help="Tag every item again, not only items without the attribute."),
    model: Optional[str] = model_option(),
    pretrained: Optional[str] = pretrained_option(),
    device: str = typer.Option("auto", "--device"),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Label items per attribute zero-shot from text prompts; stores NAME and NAME_prob as metadata."""
    from ..maps.tags import parse_attribute, tag_dataset
    from ..store.paths import existing_dataset

    paths = existing_dataset(dataset, STATE.root)
    attributes = dict(parse_attribute(a) for a in attribute)
    result = tag_dataset(paths, choose_model(paths, model, pretrained), attributes, redo, device=device)
    if as_json:
        print_json(result.as_dict())
        return
    for name, stats in result.attributes.items():
        labels = ", ".join(f"{label} {n}" for label, n in stats["labels"].items())
        summary({"tagged": stats["tagged"], "already_tagged": stats["already_tagged"]}, False,
                f"tag {name} ({labels})")


def register(app: typer.Typer) -> None:
    app.command("meta")(meta)
    app.command("tag")(tag)
