"""`stylesearch search`."""

from __future__ import annotations

from typing import List, Optional

import typer
from typer.core import TyperCommand

from .common import STATE, OutputFormat, choose_model, emit_rows, model_option, pretrained_option
from .completion import complete_datasets

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
            if isinstance(value, str) and value.startswith(_ESCAPE):
                ctx.params[name] = value.removeprefix(_ESCAPE)
            elif isinstance(value, (list, tuple)):
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
    dataset: Optional[str] = typer.Argument(None, help="Dataset name (with --dataset/--all: the first term).",
                                            autocompletion=complete_datasets),
    terms: Optional[List[str]] = typer.Argument(None, help=TERMS_HELP, show_default=False),
    image: Optional[List[str]] = typer.Option(None, "--image", "-i", help="Query image file or URL (repeatable)."),
    like: Optional[List[str]] = typer.Option(None, "--like", "-l", help="Item to find similar to: its id, path, file "
                                             "name without extension, or source URL."),
    k: int = typer.Option(10, "-k", "--top", min=1, help="Number of results."),
    min_score: Optional[float] = typer.Option(None, "--min-score", help="Drop results scoring below this."),
    raw: bool = typer.Option(False, "--raw", help="Ignore the learned metric."),
    model: Optional[str] = model_option(),
    pretrained: Optional[str] = pretrained_option(),
    device: str = typer.Option("auto", "--device"),
    effort: Optional[int] = typer.Option(None, "--effort", min=1,
                                         help="HNSW efSearch / IVF nprobe: higher = better recall, slower."),
    where: Optional[List[str]] = typer.Option(None, "--where", "-w", help=(
        "Filter on metadata (repeatable, all must hold): FIELD=VALUE, != < <= > >=, \"FIELD in (A,B)\", "
        "\"FIELD not in (A,B)\", \"FIELD exists\". FIELD is metadata, or the item's own width, height, path, "
        "group or caption; meta.FIELD always names metadata (e.g. meta.id, meta.width: as results show it).")),
    group: bool = typer.Option(False, "--group", help="One result per group (the best image of each product)."),
    datasets: Optional[List[str]] = typer.Option(None, "--dataset", "-d", autocompletion=complete_datasets,
                                                 help="Search these datasets together (repeatable); then every "
                                                      "positional word is a term."),
    all_datasets: bool = typer.Option(False, "--all", help="Search every dataset embedded with the same model."),
    fmt: OutputFormat = typer.Option("table", "--format", "-f",
                                     help="Output format (paths0: NUL-separated paths, for xargs -0)."),
    server: Optional[str] = typer.Option(None, "--server", envvar="STYLESEARCH_SERVER", show_envvar=True,
                                         help="Search through a running `stylesearch serve` at this URL (no "
                                              "model load here); token from STYLESEARCH_TOKEN."),
) -> None:
    """Search by text, image, or item, with +/- query arithmetic and metadata filters."""
    many = bool(datasets or all_datasets)
    if not many and dataset is None:
        raise typer.BadParameter("Name a dataset, or use --dataset/--all.")
    words = [dataset, *(terms or [])] if many and dataset is not None else list(terms or [])
    if server:
        from ..query.remote import remote_search

        options = {"k": k, "min_score": min_score, "raw": raw, "effort": effort, "where": where or [],
                   "group": group, "model": model, "pretrained": pretrained}
        rows, title, parsed = remote_search(server, None if many else dataset, words, image or [], like or [],
                                            options, list(dict.fromkeys(datasets or [])), all_datasets)
        return _emit(rows, many, fmt, title, parsed)
    from ..query.search import SearchRequest

    request = SearchRequest.parse(words, image or [], like or [], where or [], k=k, min_score=min_score, raw=raw,
                                  group=group, effort=effort, model=model, pretrained=pretrained, device=device)
    rows, title = (_search_many(datasets or [], all_datasets, request) if many
                   else _search_one(dataset, request))
    _emit(rows, many, fmt, title, request.terms)


def _emit(rows: list[dict], many: bool, fmt, title: str, parsed) -> None:
    """The one way results are printed, whether searched here or by a server."""
    columns = ["rank", "score", "dataset", "id", "path"] if many else ["rank", "score", "id", "path"]
    columns += ["caption"] if any(row.get("caption") for row in rows) else []  # json/jsonl: always a field
    shown = flatten_meta(rows) if fmt.value in ("table", "tsv") else rows
    emit_rows(shown, columns + meta_columns(rows), fmt, title=f"{title}: {describe_terms(parsed)}", path_key="file")


def _search_one(dataset: str, request) -> tuple[list[dict], str]:
    from ..query.search import search as run_search
    from ..store.paths import existing_dataset

    paths = existing_dataset(dataset, STATE.root)
    spec = choose_model(paths, request.model, request.pretrained)
    return run_search(paths, request, spec), dataset


def _search_many(names: list[str], all_datasets: bool, request) -> tuple[list[dict], str]:
    from ..query.search import datasets_covered, search_datasets
    from ..store.paths import existing_dataset, list_dataset_names

    chosen = datasets_covered(names, all_datasets, list_dataset_names(STATE.root))
    rows = search_datasets([existing_dataset(name, STATE.root) for name in chosen], request)
    return rows, ", ".join(chosen)


def meta_columns(rows: list[dict]) -> list[str]:
    """Metadata fields present in the rows, as extra columns (sorted; `meta.id` for a field named
    like a result field, see filters.meta_column)."""
    from ..query.filters import meta_column

    return sorted({meta_column(key) for row in rows for key in row.get("meta", {})})


def flatten_meta(rows: list[dict]) -> list[dict]:
    """Rows with metadata fields beside the standard columns, for table and tsv; json keeps `meta` nested."""
    from ..query.filters import flat_meta

    return [{**flat_meta(row.get("meta", {})), **row} for row in rows]


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
