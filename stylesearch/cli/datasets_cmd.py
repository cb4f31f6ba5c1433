"""`stylesearch datasets` and `stylesearch info`."""

from __future__ import annotations

import typer

from .common import STATE, dataset_argument, emit_rows, log, print_json


def datasets(
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List datasets with their item counts."""
    from ..store.datasets import list_datasets

    rows = list_datasets(STATE.root)
    for row in rows:
        if row["error"]:
            log(f"warning: dataset {row['name']!r} is unreadable: {row['error']}")
    if as_json:
        print_json(rows)
        return
    for row in rows:
        row["models"] = "UNREADABLE" if row["error"] else ", ".join(row["models"])
    emit_rows(rows, ["name", "items", "deleted", "corrupt", "models", "path"], "table")


def info(
    dataset: str = dataset_argument(),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show a dataset's paths, item counts, models, index, labels and learned weights."""
    from ..store.datasets import describe

    data = describe(dataset, STATE.root)
    if as_json:
        print_json(data)
        return
    _print_info(data)


def _print_info(data: dict) -> None:
    lines = [f"dataset   {data['name']}", f"home      {data['paths']['home']}"]
    items = data["items"]
    lines.append(f"items     {items['ok']} ok, {items['deleted']} deleted, {items['corrupt']} corrupt")
    if data["downloads"]:
        lines.append("downloads " + ", ".join(f"{v} {k}" for k, v in sorted(data["downloads"].items())))
    lines.append(f"labels    {data['labels']['judgments']} judgments in {data['paths']['triplets']}")
    if data.get("metadata"):
        lines.append("metadata  " + ", ".join(f"{k} ({n})" for k, n in data["metadata"].items()))
    if data.get("thumbnails"):
        lines.append(f"thumbs    max side {data['thumbnails'].get('max_side')} in {data['paths']['thumbs']}")
    for model in data["models"]:
        lines.append(f"model     {model['model_key']}  dim={model['dim']} vectors={model['vectors']} ({model['dtype']})")
        index = model.get("index")
        if index:
            lines.append(f"  index   {index['kind']} with {index['count']} vectors, built {index['built_at']}")
        metric = model.get("metric")
        if metric:
            lines.append(f"  weights trained on {metric['train_triplets']} triplets, held-out agreement "
                         f"{metric['agreement_before']:.3f} -> {metric['agreement_after']:.3f}")
        for name, head in (model.get("heads") or {}).items():
            lines.append(f"  head    {name}: {_head_line(head)}")
    print("\n".join(lines))


def _head_line(head) -> str:
    """One line about a learned attribute head (its description may be missing or damaged)."""
    report = head.get("report") if isinstance(head, dict) else None
    if not isinstance(report, dict):
        return "description missing or damaged (learn it again with --refit)"
    return (f"{len(report.get('classes', {}))} classes from {report.get('labelled')} labelled items, held-out "
            f"accuracy {report.get('accuracy')} (majority {report.get('majority_accuracy')}), ECE {report.get('ece')}, "
            f"trained {head.get('trained_at')}")


def register(app: typer.Typer) -> None:
    app.command("datasets")(datasets)
    app.command("info")(info)
