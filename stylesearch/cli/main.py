"""The `stylesearch` command group. Thin: parse, call the library, format.

Nothing heavy (torch, open_clip, faiss, umap, textual) is imported at module level,
so `--help` and shell completion stay fast.
"""

from __future__ import annotations

import sys
import traceback
from typing import Optional

import typer
from typer.core import TyperGroup

from ..errors import DiskFull, StyleSearchError
from . import (atlas_cmd, datasets_cmd, demo_cmd, embed_cmd, import_cmd, ingest_cmd, learn_cmd, meta_cmd, onnx_cmd,
               projection_cmd, search_cmd, serve_cmd)
from .common import STATE
from .errors import render_error


class StyleSearchGroup(TyperGroup):
    """Turns library errors into one message on stderr and the error's exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except StyleSearchError as exc:
            if STATE.verbose:
                traceback.print_exc()
            render_error(exc)
            ctx.exit(exc.exit_code)
        except Exception as exc:
            from ..store.files import is_disk_full

            if not is_disk_full(exc):  # any write the library did not name itself: still one line
                raise
            if STATE.verbose:
                traceback.print_exc()
            render_error(DiskFull(f"Disk full: {exc}.", "Free some space, then run the step again."))
            ctx.exit(DiskFull.exit_code)


app = typer.Typer(
    name="stylesearch",
    cls=StyleSearchGroup,
    help="Explore and search image collections by visual style with CLIP embeddings, "
    "and learn a personal similarity metric from your own judgments.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: rendering help with rich costs ~0.1 s of start-up
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from ..version import __version__

        print(f"stylesearch {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    root: Optional[str] = typer.Option(
        None, "--root", envvar="STYLESEARCH_HOME", help="Folder holding the datasets (default ./datasets)."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show tracebacks and more logging."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    STATE.root = root
    STATE.verbose = verbose


for module in (datasets_cmd, demo_cmd, ingest_cmd, import_cmd, meta_cmd, atlas_cmd, embed_cmd, search_cmd, learn_cmd,
               projection_cmd, onnx_cmd, serve_cmd):
    module.register(app)


def main() -> None:
    """Console entry point: runs the app; interrupts, closed pipes and bugs end in one line."""
    try:
        app(prog_name="stylesearch")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        sys.stderr.close()
        sys.exit(0)
    except Exception as exc:  # a bug: say so in one line unless --verbose
        if STATE.verbose:
            traceback.print_exc()
        print(f"error: unexpected {type(exc).__name__}: {exc} (run with --verbose for details)", file=sys.stderr)
        sys.exit(1)
