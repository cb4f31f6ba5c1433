"""How the CLI shows library errors: the message, the library's hint, and the command to run."""

from __future__ import annotations

import sys

from ..errors import DatasetBusy, DatasetNotFound, ModelWeightsMissing, PortBusy, StyleSearchError


def cli_advice(exc: StyleSearchError) -> str | None:
    """Command-line advice the library cannot give (it does not know about commands and flags)."""
    name = exc.dataset or "DATASET"
    if isinstance(exc, DatasetNotFound):
        return (f"Create it with `stylesearch download {name} URLS.txt`, or put images in its images/ folder "
                f"and run `stylesearch embed {name}`.")
    if isinstance(exc, DatasetBusy):
        return "Or pass --wait SECONDS."
    if isinstance(exc, ModelWeightsMissing):
        return ("On the command line: --pretrained /path/to/weights.safetensors, or --model/--pretrained "
                "naming a cached model; `-p random` (e.g. `-m stylesearch-tiny -p random`) tries the pipeline "
                "without weights.")
    if isinstance(exc, PortBusy):
        return "On the command line: --port N (or --host ADDRESS)."
    if exc.step:
        return f"Run `stylesearch {exc.step} {name}` first."
    return None


def render_error(exc: StyleSearchError) -> None:
    print(f"error: {exc.message}", file=sys.stderr)
    for line in (exc.hint, cli_advice(exc)):
        if line:
            print(line, file=sys.stderr)
