"""`stylesearch meta` (attach metadata from a file) and `stylesearch tag` (zero-shot attributes)."""

from __future__ import annotations

import sys
from typing import List, Optional

import typer

from .common import (STATE, choose_model, dataset_argument, log, model_option, pretrained_option, print_json, summary,
                     warn_list)


def meta(
    dataset: str = dataset_argument(),
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
    dataset: str = dataset_argument(),
    attribute: Optional[List[str]] = typer.Option(
        None, "--attribute", "-a",
        help='Zero-shot: NAME=LABEL,LABEL,... (repeatable), e.g. style=photo,illustration,"3d render".'),
    learn: Optional[List[str]] = typer.Option(
        None, "--learn", help="Learn metadata FIELD from the items that have it (repeatable): writes FIELD_pred and "
                              "FIELD_prob for every item (its own value with 1.0 where it has one)."),
    refit: bool = typer.Option(False, "--refit",
                               help="With --learn: fit the heads anew on today's labels, not reuse saved ones."),
    redo: bool = typer.Option(False, "--redo", help="Tag every item again, not only items without the attribute."),
    model: Optional[str] = model_option(),
    pretrained: Optional[str] = pretrained_option(),
    device: str = typer.Option("auto", "--device"),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Label items per attribute zero-shot from text prompts (NAME, NAME_prob), or learn metadata fields from
    the items that have them (FIELD_pred, FIELD_prob) with a held-out report per field."""
    from ..maps.tags import parse_attribute, tag_dataset
    from ..store.paths import existing_dataset

    if not attribute and not learn:
        raise typer.BadParameter("Give zero-shot attributes (-a NAME=LABEL,LABEL) or fields to learn (--learn FIELD).")
    paths = existing_dataset(dataset, STATE.root)
    spec = choose_model(paths, model, pretrained)
    attributes = dict(parse_attribute(a) for a in attribute or [])
    result = tag_dataset(paths, spec, attributes, redo, device=device).as_dict() if attributes else {"attributes": {}}
    if learn:
        from ..learn.attributes import learn_fields

        result["learned"] = learn_fields(paths, spec.key, list(learn), refit=refit)
    if as_json:
        print_json(result)
        return
    _report_zero_shot(result["attributes"])
    for name, report in result.get("learned", {}).items():
        _report_learned(name, report)


def _report_zero_shot(attributes: dict) -> None:
    for name, stats in attributes.items():
        labels = ", ".join(f"{label} {n}" for label, n in stats["labels"].items())
        summary({"tagged": stats["tagged"], "already_tagged": stats["already_tagged"]}, False,
                f"tag {name} ({labels})")


def _report_learned(name: str, r: dict) -> None:
    """A learned field's report on stderr: labels, held-out accuracy beside the baseline, calibration, confusions."""
    classes = ", ".join(f"{c} {n}" for c, n in r["classes"].items())
    how = "fitted" if r["fitted"] else "saved head reused (--refit to fit anew)"
    acc, base = r["accuracy_ci"], r["majority_ci"]
    recall = ", ".join(f"{c} {v['recall']:.2f}" for c, v in r["confusion"]["per_class"].items())
    mixed = ", ".join(f"{t}->{p} {n}" for t, p, n in r["confusion"]["top_confusions"]) or "none"
    log(f"learn {name}: {r['labelled']} labelled items, {len(r['classes'])} classes ({classes}); {how}")
    log(f"  held-out accuracy {r['accuracy']:.3f} (95% CI {acc[0]:.3f}-{acc[1]:.3f}) on {r['test']} items; "
        f"majority class {r['majority_class']!r} {r['majority_accuracy']:.3f} (95% CI {base[0]:.3f}-{base[1]:.3f})")
    log(f"  calibration error (ECE) {r['ece']:.3f}, uncalibrated {r['ece_uncalibrated']:.3f}; C={r['C']:g}, "
        f"temperature {r['temperature']:.3f}")
    log(f"  recall per class: {recall}; confusions (true->predicted): {mixed}")
    log(f"  wrote {name}_pred/{name}_prob on {r['written']} of {r['items']} items")


def register(app: typer.Typer) -> None:
    app.command("meta")(meta)
    app.command("tag")(tag)
