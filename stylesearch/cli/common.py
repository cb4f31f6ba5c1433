"""Shared CLI pieces: global state, option types, model choice, output formatting, TTY progress."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from enum import Enum
from typing import Any, Optional, Sequence

import typer

from ..choices import OUTPUT_FORMATS


@dataclass
class State:
    root: str | None = None
    verbose: bool = False


STATE = State()


def choice_enum(name: str, values: Sequence[str]) -> type[Enum]:
    """A str Enum for typer, built from one of the core's lists of choices."""
    return Enum(name, {v.replace("-", "_"): v for v in values}, type=str)


OutputFormat = choice_enum("OutputFormat", OUTPUT_FORMATS)

MODEL_HELP = ("open_clip model name, or hf-hub:ORG/REPO, or local-dir:/path. Default: the dataset's embedded "
              "model (ViT-B-32 for a dataset not embedded yet).")
PRETRAINED_HELP = ("Pretrained tag (e.g. laion2b_s34b_b79k), a local weights file, or 'random'; needed only to "
                   "choose between embedded models of one name, or to embed with other weights.")


def model_option():
    from .completion import complete_models

    return typer.Option(None, "--model", "-m", help=MODEL_HELP, show_default=False, autocompletion=complete_models)


def pretrained_option():
    from .completion import complete_pretrained

    return typer.Option(None, "--pretrained", "-p", help=PRETRAINED_HELP, show_default=False,
                        autocompletion=complete_pretrained)


def dataset_argument(help: str = "Dataset name."):
    """The DATASET argument, completed with the names of the datasets under the root."""
    from .completion import complete_datasets

    return typer.Argument(..., help=help, autocompletion=complete_datasets)


def choose_model(paths, model: Optional[str], pretrained: Optional[str], embedded_only: bool = True):
    """The library's model choice (stylesearch.embed.choice) for the --model/--pretrained options."""
    from ..embed.choice import resolve_spec

    return resolve_spec(paths, model, pretrained, embedded_only=embedded_only)


def log(message: str) -> None:
    """Human-readable progress/log line on stderr (never stdout)."""
    print(message, file=sys.stderr, flush=True)


def warn_list(warnings: Sequence[str], limit: int = 10) -> None:
    for line in warnings[:limit]:
        log(f"warning: {line}")
    if len(warnings) > limit:
        log(f"warning: ... and {len(warnings) - limit} more")


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def emit_rows(rows: Sequence[dict], columns: Sequence[str], fmt: OutputFormat, title: str | None = None,
              path_key: str = "path") -> None:
    """Print records as a table, json, jsonl, tsv, or bare paths."""
    out = sys.stdout
    fmt = OutputFormat(fmt)
    if fmt.value == "json":
        print_json(list(rows))
    elif fmt.value == "jsonl":
        for row in rows:
            out.write(json.dumps(row, sort_keys=True, default=str) + "\n")
    elif fmt.value == "tsv":
        out.write("\t".join(columns) + "\n")
        for row in rows:
            out.write("\t".join(_cell(row.get(c)) for c in columns) + "\n")
    elif fmt.value in ("paths", "paths0"):
        end = "\0" if fmt.value == "paths0" else "\n"
        for row in rows:
            out.write(f"{row[path_key]}{end}")
    else:
        _rich_table(rows, columns, title)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value).replace("\t", " ").replace("\n", " ")


def _rich_table(rows: Sequence[dict], columns: Sequence[str], title: str | None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in columns))
    Console(file=sys.stdout, soft_wrap=False).print(table)


class RichProgress:
    """Rich progress bar on stderr; used only when stderr is a terminal."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text

        class Rate(ProgressColumn):
            """Items per second (images/s while embedding)."""

            def render(self, task):
                speed = task.finished_speed or task.speed
                return Text(f"{speed:.1f}/s" if speed else "", style="progress.data.speed")

        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Rate(), TimeRemainingColumn(),
            TimeElapsedColumn(), console=Console(file=sys.stderr), transient=True,
        )
        self._task = None

    def start(self, description: str, total: int | None) -> None:
        if self._task is None:
            self._progress.start()
        else:
            self._progress.remove_task(self._task)
        self._task = self._progress.add_task(description, total=total)

    def advance(self, n: int = 1) -> None:
        if self._task is not None:
            self._progress.advance(self._task, n)

    def finish(self) -> None:
        if self._task is not None:
            self._progress.remove_task(self._task)  # a later start() shows only its own step
            self._progress.stop()
            self._task = None


def make_progress(quiet: bool = False):
    """Every step's seconds (progress.StepTimes, for --json) shown as a bar or status line when stderr is a
    terminal, as one stderr line per step with --verbose elsewhere, else not at all."""
    from ..progress import LineProgress, StepTimes

    if quiet:
        return StepTimes()
    if sys.stderr.isatty():
        return StepTimes(RichProgress())
    return StepTimes(LineProgress(sys.stderr, "stylesearch: ") if STATE.verbose else None)


def summary(result: dict, as_json: bool, title: str, progress=None) -> None:
    """Summary of a run: JSON on stdout with --json (with `steps`, each step's name and seconds in order,
    when `progress` timed them), else a short line on stderr."""
    if as_json:
        steps = getattr(progress, "seconds", None)
        if steps is not None:
            result = {**result, "steps": [{"step": name, "seconds": sec} for name, sec in steps.items()]}
        print_json(result)
        return
    parts = ", ".join(f"{k}={v}" for k, v in result.items() if not isinstance(v, (list, dict)))
    log(f"{title}: {parts}")

