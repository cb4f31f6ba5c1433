"""Shell completion of dataset names and embedded model names (bash, zsh, fish through click).

Runs on every <Tab>, so it stays light: dataset names come from the folder listing
(store.paths), model names from one read-only SQL query per catalog (no numpy, no model).
"""

from __future__ import annotations

import sqlite3

import click


def _root(ctx: click.Context) -> str | None:
    return ctx.find_root().params.get("root")


def complete_datasets(ctx: click.Context, incomplete: str) -> list[str]:
    """Datasets under the chosen root whose name starts with what was typed."""
    from ..store.paths import list_dataset_names

    try:
        return [name for name in list_dataset_names(_root(ctx)) if name.startswith(incomplete)]
    except OSError:
        return []


def _embedded(ctx: click.Context) -> list[tuple[str, str]]:
    """(model name, pretrained) of the dataset named on the line, else of every dataset."""
    from ..store.paths import dataset_paths, list_dataset_names

    every = list_dataset_names(_root(ctx))
    named = ctx.params.get("dataset")
    names = [named] if isinstance(named, str) and named else [w for w in _line_words() if w in every] or every
    found: list[tuple[str, str]] = []
    for name in names:
        try:
            catalog = dataset_paths(name, _root(ctx)).catalog
            with sqlite3.connect(f"{catalog.resolve().as_uri()}?mode=ro", uri=True, timeout=0.2) as conn:
                found += conn.execute("SELECT model_name, pretrained FROM models").fetchall()
        except (sqlite3.Error, OSError, ValueError):
            continue
    return found


def _line_words() -> list[str]:
    """The words on the command line being completed (bash passes them in COMP_WORDS, typer's zsh and fish
    scripts in _TYPER_COMPLETE_ARGS): click does not parse the positional arguments before an option that
    waits for its value, so the dataset is looked for among them."""
    import os
    import shlex

    line = os.environ.get("COMP_WORDS") or os.environ.get("_TYPER_COMPLETE_ARGS", "")
    try:
        return shlex.split(line)
    except ValueError:  # an open quote
        return line.split()


def complete_models(ctx: click.Context, incomplete: str) -> list[str]:
    """Model names embedded in the dataset on the line (or any dataset)."""
    names = dict.fromkeys(name for name, _ in _embedded(ctx) if name)
    return [name for name in names if name.startswith(incomplete)]


def complete_pretrained(ctx: click.Context, incomplete: str) -> list[str]:
    """Weights (pretrained tags or files) embedded in the dataset on the line (or any dataset)."""
    tags = dict.fromkeys(tag for _, tag in _embedded(ctx) if tag)
    return [tag for tag in tags if tag.startswith(incomplete)]
