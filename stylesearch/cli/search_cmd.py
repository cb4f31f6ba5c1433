"""`stylesearch search`."""

from __future__ import annotations

from typing import List, Optional

import typer
from typer.core import TyperCommand

from .common import STATE, OutputFormat, choose_model, emit_rows, model_option, pretrained_option

TERMS_HELP = ("Query terms: text, or [+|-][WEIGHT*][text:|image:|like:]VALUE, e.g. \"red dress\" -blue "
              "0.5*image:ref.jpg. A term starting with '-' works unless it is exactly a short option "
              "(-k, -f, ...); after -- every word is a term.")
_ESCAPE = "\x1e"  # marks a negative term while click parses, so it is not read as an option


class TermsCommand(TyperCommand):
    """A command whose free-form terms may start with '-' (negative terms like -blue).

    Unknown long options (--formt) stay errors with click's suggestion; a word with a single
    dash is a term unless it is exactly a short option of the command or the value of the
    option before it.
    """

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        rest = super().parse_args(ctx, self._escape_terms(args))
        for name, value in ctx.params.items():
            if isinstance(value, (list, tuple)):
                ctx.params[name] = type(value)(v.removeprefix(_ESCAPE) if isinstance(v, str) else v for v in value)
        return rest

    def _escape_terms(self, args: list[str]) -> list[str]:
        takes_value = {name: not (p.is_flag or p.count) for p in self.params if p.param_type_name == "option"
                       for name in p.opts + p.secondary_opts}
        out, expect_value = [], False
        for n, arg in enumerate(args):
            if arg == "--":
                return out + args[n:]
            if expect_value:
                out.append(arg)
                expect_value = False
            elif arg in takes_value:
                out.append(arg)
                expect_value = takes_value[arg]
            elif arg.startswith("-") and not arg.startswith("--") and len(arg) > 1:
                out.append(_ESCAPE + arg)
            else:
                out.append(arg)
        return out


def search(
    dataset: str = typer.Argument(..., help="Dataset name."),
    terms: Optional[List[str]] = typer.Argument(None, help=TERMS_HELP, show_default=False),
    image: Optional[List[str]] = typer.Option(None, "--image", "-i", help="Query image file or URL (repeatable)."),
    like: Optional[List[str]] = typer.Option(None, "--like", "-l", help="Item id or path to find similar to."),
    k: int = typer.Option(10, "-k", "--top", min=1, help="Number of results."),
    min_score: Optional[float] = typer.Option(None, "--min-score", help="Drop results scoring below this."),
    raw: bool = typer.Option(False, "--raw", help="Ignore the learned metric."),
    model: Optional[str] = model_option(),
    pretrained: Optional[str] = pretrained_option(),
    device: str = typer.Option("auto", "--device"),
    effort: Optional[int] = typer.Option(None, "--effort", min=1,
                                         help="HNSW efSearch / IVF nprobe: higher = better recall, slower."),
    fmt: OutputFormat = typer.Option("table", "--format", "-f",
                                     help="Output format (paths0: NUL-separated paths, for xargs -0)."),
) -> None:
    """Search by text, image, or item, with +/- query arithmetic."""
    from ..search import parse_terms
    from ..search import search as run_search
    from ..storage import existing_dataset

    paths = existing_dataset(dataset, STATE.root)
    parsed = parse_terms(terms or [], image or [], like or [])
    spec = choose_model(paths, model, pretrained)
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
    app.command("search", cls=TermsCommand)(search)
