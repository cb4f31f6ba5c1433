"""`stylesearch search`."""

from __future__ import annotations

from typing import List, Optional

import typer

from .common import STATE, OutputFormat, emit_rows

TERMS_HELP = ("Query terms: text, or [+|-][WEIGHT*][text:|image:|like:]VALUE, e.g. \"red dress\" -blue "
              "0.5*image:ref.jpg. Put -- before the terms if one starts with '-'.")


def search(
    dataset: str = typer.Argument(..., help="Dataset name."),
    terms: Optional[List[str]] = typer.Argument(None, help=TERMS_HELP, show_default=False),
    image: Optional[List[str]] = typer.Option(None, "--image", "-i", help="Query image file or URL (repeatable)."),
    like: Optional[List[str]] = typer.Option(None, "--like", "-l", help="Item id or path to find similar to."),
    k: int = typer.Option(10, "-k", "--top", min=1, help="Number of results."),
    min_score: Optional[float] = typer.Option(None, "--min-score", help="Drop results scoring below this."),
    raw: bool = typer.Option(False, "--raw", help="Ignore learned metric weights."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model to search with (default: embedded one)."),
    pretrained: Optional[str] = typer.Option(None, "--pretrained", "-p"),
    device: str = typer.Option("auto", "--device"),
    effort: Optional[int] = typer.Option(None, "--effort", min=1,
                                         help="HNSW efSearch / IVF nprobe: higher = better recall, slower."),
    fmt: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f", help="Output format."),
) -> None:
    """Search by text, image, or item, with +/- query arithmetic."""
    from ..models import ModelSpec
    from ..search import parse_terms
    from ..search import search as run_search
    from ..storage import existing_dataset

    paths = existing_dataset(dataset, STATE.root)
    parsed = parse_terms(terms or [], image or [], like or [])
    spec = ModelSpec(model, pretrained) if model else None
    rows = run_search(paths, parsed, k, spec, min_score, raw, device, effort)
    emit_rows(rows, ["rank", "score", "id", "path"], fmt, title=f"{dataset}: {describe_terms(parsed)}",
              path_key="file")


def describe_terms(terms) -> str:
    """Terms as a user would type them, e.g. `"red dress" -blue like:3`."""
    out = []
    for t in terms:
        sign = "-" if t.weight < 0 else ""
        weight = f"{abs(t.weight):g}*" if abs(t.weight) != 1 else ""
        kind = "" if t.kind == "text" else f"{t.kind}:"
        value = f'"{t.value}"' if " " in t.value else t.value
        out.append(f"{sign}{weight}{kind}{value}")
    return " ".join(out)


def register(app: typer.Typer) -> None:
    app.command("search", context_settings={"ignore_unknown_options": True})(search)
