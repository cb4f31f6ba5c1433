"""`stylesearch label` and `stylesearch train`."""

from __future__ import annotations

from typing import Optional

import typer

from ..choices import LABEL_STRATEGIES, METRIC_KINDS
from .common import (STATE, choice_enum, choose_model, dataset_argument, log, make_progress, model_option,
                     pretrained_option, summary)

Strategy = choice_enum("Strategy", LABEL_STRATEGIES)
Kind = choice_enum("MetricKind", METRIC_KINDS)
KIND_HELP = "diagonal (per-dimension weights), lowrank (a learned projection head), or auto (by held-out agreement)."


def label(
    dataset: str = dataset_argument(),
    strategy: Strategy = typer.Option("random", "--strategy",
                                      help="random, or uncertain (active learning: closest calls first)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed for triplet selection."),
    retrain_every: int = typer.Option(25, "--retrain-every", min=0,
                                      help="Refit the session's metric in the background every N judgments (0: never)."),
    kind: Kind = typer.Option("diagonal", "--kind", help=KIND_HELP),
    rank: int = typer.Option(64, "--rank", min=1, help="Rows of the low-rank projection."),
    model: Optional[str] = model_option(),
    pretrained: Optional[str] = pretrained_option(),
) -> None:
    """Judge triplets in the terminal (A/← B/→ S D Space U Q); judgments go to triplets.jsonl."""
    from ..learn.fit import FitOptions
    from ..learn.labelling import LabelSession
    from ..store.paths import existing_dataset

    paths = existing_dataset(dataset, STATE.root)
    spec = choose_model(paths, model, pretrained)
    session = LabelSession(paths, strategy.value, seed, model=spec.name, pretrained=spec.pretrained,
                           options=FitOptions(kind=kind.value, rank=rank, seed=seed or 0), retrain_every=retrain_every)
    from ..tui.label_app import LabelApp

    LabelApp(session, strategy=strategy.value).run()
    log(f"label: {session.judged_this_session} judgments this session, {len(session.log.judgments)} in total "
        f"({session.paths.triplets})")
    if session.loop.fit is not None:
        log(f"label: the metric refitted during the session is not saved; run `stylesearch train {dataset}` to save one")
    if session.log.malformed:
        log(f"warning: skipped {session.log.malformed} malformed lines in {session.paths.triplets}")


def train(
    dataset: str = dataset_argument(),
    model: Optional[str] = model_option(),
    pretrained: Optional[str] = pretrained_option(),
    kind: Kind = typer.Option("diagonal", "--kind", help=KIND_HELP),
    rank: int = typer.Option(64, "--rank", min=1, help="Rows of the low-rank projection."),
    folds: int = typer.Option(5, "--folds", min=2, help="Cross-validation folds for choosing the regularisation."),
    seed: int = typer.Option(0, "--seed"),
    val_fraction: float = typer.Option(0.2, "--val-fraction", min=0.05, max=0.9),
    force: bool = typer.Option(False, "--force", help="Save the metric even when it does not reliably beat the "
                                                      "raw embedding on the held-out judgments."),
    as_json: bool = typer.Option(False, "--json", help="Print the training report as JSON on stdout."),
) -> None:
    """Learn a metric from your judgments (diagonal, low-rank or auto); saves it when it reliably beats the raw
    embedding on held-out judgments (or with --force), then rebuilds an existing index in its space."""
    from ..learn.train import TrainOptions, verdict
    from ..pipeline import train_and_reindex
    from ..store.paths import existing_dataset

    paths = existing_dataset(dataset, STATE.root)
    key = choose_model(paths, model, pretrained).key
    progress = make_progress()
    meta = train_and_reindex(paths, key, TrainOptions(kind=kind.value, rank=rank, seed=seed,
                                                      val_fraction=val_fraction, folds=folds), progress, force)
    if meta["malformed_lines"]:
        log(f"warning: skipped {meta['malformed_lines']} malformed lines in {paths.triplets}")
    if as_json:
        summary(meta, True, "train", progress)
    else:
        lo, hi = meta["agreement_ci"]
        log(f"train: {meta['kind']} metric from {meta['judgments_used']} judgments ({meta['train_triplets']} train / "
            f"{meta['val_triplets']} held out, {meta['equality_triplets']} equality); held-out agreement "
            f"{meta['agreement_before']:.3f} -> {meta['agreement_after']:.3f} (95% CI {lo:.3f}-{hi:.3f})")
        log(f"train: {verdict(meta)}" + ("" if meta["saved"] else " (`--force` saves it anyway)"))
        if "index" in meta:
            log(f"train: index rebuilt in the metric's space ({meta['index']['kind']}, {meta['index']['count']} vectors)")


def register(app: typer.Typer) -> None:
    app.command("label")(label)
    app.command("train")(train)
