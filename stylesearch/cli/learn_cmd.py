"""`stylesearch label` and `stylesearch train`."""

from __future__ import annotations

from typing import Optional

import typer

from ..choices import LABEL_STRATEGIES
from .common import STATE, choice_enum, choose_model, log, model_option, pretrained_option, summary

Strategy = choice_enum("Strategy", LABEL_STRATEGIES)


def label(
    dataset: str = typer.Argument(..., help="Dataset name."),
    strategy: Strategy = typer.Option("random", "--strategy",
                                      help="random, or uncertain (active learning: closest calls first)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed for triplet selection."),
    model: Optional[str] = model_option(),
    pretrained: Optional[str] = pretrained_option(),
) -> None:
    """Judge triplets in the terminal (A/← B/→ S D Space U Q); judgments go to triplets.jsonl."""
    from ..labelling import LabelSession
    from ..storage import existing_dataset

    paths = existing_dataset(dataset, STATE.root)
    spec = choose_model(paths, model, pretrained)
    session = LabelSession(paths, strategy.value, seed, model=spec.name, pretrained=spec.pretrained)
    from ..tui.label_app import LabelApp

    LabelApp(session, strategy=strategy.value).run()
    log(f"label: {session.judged_this_session} judgments this session, {len(session.log.judgments)} in total "
        f"({session.paths.triplets})")
    if session.log.malformed:
        log(f"warning: skipped {session.log.malformed} malformed lines in {session.paths.triplets}")


def train(
    dataset: str = typer.Argument(..., help="Dataset name."),
    model: Optional[str] = model_option(),
    pretrained: Optional[str] = pretrained_option(),
    epochs: int = typer.Option(60, "--epochs", min=1),
    margin: float = typer.Option(0.05, "--margin", min=0.0, help="Triplet margin (distance units)."),
    lr: float = typer.Option(0.05, "--lr", min=0.0, help="Learning rate (Adam)."),
    seed: int = typer.Option(0, "--seed"),
    val_fraction: float = typer.Option(0.2, "--val-fraction", min=0.05, max=0.9),
    as_json: bool = typer.Option(False, "--json", help="Print the training report as JSON on stdout."),
) -> None:
    """Learn per-dimension metric weights from your judgments; reports held-out agreement."""
    from ..metric_train import TrainOptions, train_metric
    from ..storage import existing_dataset

    paths = existing_dataset(dataset, STATE.root)
    key = choose_model(paths, model, pretrained).key
    meta = train_metric(paths, key, TrainOptions(epochs=epochs, margin=margin, lr=lr, seed=seed,
                                                 val_fraction=val_fraction))
    if meta["malformed_lines"]:
        log(f"warning: skipped {meta['malformed_lines']} malformed lines in {paths.triplets}")
    if as_json:
        summary(meta, True, "train")
    else:
        log(f"train: {meta['train_triplets']} train / {meta['val_triplets']} held-out judgments, "
            f"{meta['equality_triplets']} equality; held-out agreement "
            f"{meta['agreement_before']:.3f} -> {meta['agreement_after']:.3f}")


def register(app: typer.Typer) -> None:
    app.command("label")(label)
    app.command("train")(train)
