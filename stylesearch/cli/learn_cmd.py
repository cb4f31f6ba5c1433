"""`stylesearch label` and `stylesearch train`."""

from __future__ import annotations

from enum import Enum
from typing import Optional

import typer

from .common import STATE, log, summary


class Strategy(str, Enum):
    random = "random"
    uncertain = "uncertain"


def label(
    dataset: str = typer.Argument(..., help="Dataset name."),
    strategy: Strategy = typer.Option(Strategy.random, "--strategy",
                                      help="random, or uncertain (active learning: closest calls first)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed for triplet selection."),
) -> None:
    """Judge triplets in the terminal (A/← B/→ S D Space U Q); judgments go to triplets.jsonl."""
    from ..labelling import LabelSession
    from ..storage import existing_dataset

    session = LabelSession(existing_dataset(dataset, STATE.root), strategy.value, seed)
    from ..tui.label_app import LabelApp

    LabelApp(session, strategy=strategy.value).run()
    log(f"label: {session.judged_this_session} judgments this session, {len(session.log.judgments)} in total "
        f"({session.paths.triplets})")


def train(
    dataset: str = typer.Argument(..., help="Dataset name."),
    epochs: int = typer.Option(60, "--epochs", min=1),
    margin: float = typer.Option(0.05, "--margin", min=0.0, help="Triplet margin (distance units)."),
    lr: float = typer.Option(0.05, "--lr", min=0.0, help="Learning rate (Adam)."),
    seed: int = typer.Option(0, "--seed"),
    val_fraction: float = typer.Option(0.2, "--val-fraction", min=0.05, max=0.9),
    as_json: bool = typer.Option(False, "--json", help="Print the training report as JSON on stdout."),
) -> None:
    """Learn per-dimension metric weights from your judgments; reports held-out agreement."""
    from ..catalog import open_catalog
    from ..metric import TrainOptions, train_metric
    from ..search import pick_model_key
    from ..storage import existing_dataset

    paths = existing_dataset(dataset, STATE.root)
    with open_catalog(paths) as catalog:
        key, _ = pick_model_key(catalog, None)
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
