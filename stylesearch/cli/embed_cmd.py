"""`stylesearch embed`, `index` and `reindex`."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from .common import STATE, make_progress, summary, warn_list

MODEL_HELP = "open_clip model name, or hf-hub:ORG/REPO, or local-dir:/path."
PRETRAINED_HELP = "Pretrained tag (e.g. laion2b_s34b_b79k), a local weights file, or 'random'."


class Kind(str, Enum):
    auto = "auto"
    flat = "flat"
    hnsw = "hnsw"
    ivf = "ivf"
    ivfpq = "ivfpq"


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


def model_option():
    return typer.Option(None, "--model", "-m",
                        help=MODEL_HELP + " Default: the dataset's model, else ViT-B-32.", show_default=False)


def pretrained_option():
    return typer.Option(None, "--pretrained", "-p", help=PRETRAINED_HELP + " Default: laion2b_s34b_b79k.",
                        show_default=False)


def make_spec(model: Optional[str], pretrained: Optional[str], paths=None):
    """The model asked for; without --model, the one the dataset was embedded with, else the default."""
    from ..models import DEFAULT_MODEL, DEFAULT_PRETRAINED, ModelSpec

    if model:
        return ModelSpec(model, pretrained if pretrained is not None or model.startswith(("hf-hub:", "local-dir:"))
                         else DEFAULT_PRETRAINED)
    if pretrained is None and paths is not None and paths.catalog.exists():
        from ..catalog import open_catalog
        from ..search import pick_model_key

        with open_catalog(paths) as catalog:
            if catalog.models():
                return pick_model_key(catalog, None)[1]
    return ModelSpec(DEFAULT_MODEL, pretrained or DEFAULT_PRETRAINED)


def _read_stdin_paths() -> list[Path]:
    return [Path(line.strip()) for line in sys.stdin if line.strip()]


def embed(
    dataset: str = typer.Argument(..., help="Dataset name."),
    source: Optional[str] = typer.Argument(None, help="'-' to read image paths from stdin instead of scanning."),
    model: Optional[str] = model_option(),
    pretrained: Optional[str] = pretrained_option(),
    batch_size: int = typer.Option(32, "--batch-size", "-b", min=1),
    workers: Optional[int] = typer.Option(None, "--workers", help="Decode processes (default: one per core)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, mps."),
    precision: Precision = typer.Option(Precision.auto, "--precision", help="Autocast on GPU (auto=bf16/fp16)."),
    float16: bool = typer.Option(False, "--float16", help="Store vectors as float16 (half the space)."),
    create: bool = typer.Option(False, "--create", help="Create the dataset if it does not exist."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Embed new and changed images (cached: unchanged files are never embedded twice)."""
    from ..embed import EmbedOptions, embed_dataset
    from ..storage import dataset_paths, existing_dataset

    paths = dataset_paths(dataset, STATE.root) if create else existing_dataset(dataset, STATE.root)
    files = _read_stdin_paths() if source == "-" else None
    if source not in (None, "-"):
        raise typer.BadParameter("SOURCE must be '-' (paths on stdin) or left out.")
    options = EmbedOptions(batch_size, workers, device, precision.value, "float16" if float16 else "float32")
    spec = make_spec(model, pretrained, paths)
    result = embed_dataset(paths, spec, files, options, make_progress(), create=create)
    warn_list(result.warnings)
    summary(result.as_dict(), as_json, "embed")


def index(
    dataset: str = typer.Argument(..., help="Dataset name."),
    kind: Kind = typer.Option(Kind.auto, "--kind", help="Index kind; auto picks by collection size."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP + " Default: the embedded one."),
    pretrained: Optional[str] = typer.Option(None, "--pretrained", "-p", help=PRETRAINED_HELP),
    full: bool = typer.Option(False, "--full", help="Rebuild from scratch instead of adding new vectors."),
    check_recall: bool = typer.Option(False, "--check-recall", help="Report recall@10 against exact search."),
    as_json: bool = typer.Option(False, "--json", help="Print the index metadata as JSON on stdout."),
) -> None:
    """Build or update the FAISS index (atomic: searches keep using the old one until it is swapped in)."""
    from ..index import build_index
    from ..index import check_recall as recall
    from ..storage import existing_dataset

    paths = existing_dataset(dataset, STATE.root)
    key = resolve_model_key(paths, model, pretrained)
    meta = build_index(paths, key, kind.value, full, make_progress())
    if check_recall:
        meta["recall_at_10"] = round(recall(paths, key), 4)
    summary(meta, as_json, "index")


def resolve_model_key(paths, model: Optional[str], pretrained: Optional[str]) -> str:
    from ..catalog import open_catalog
    from ..search import pick_model_key

    spec = make_spec(model, pretrained) if model or pretrained else None
    with open_catalog(paths) as catalog:
        return pick_model_key(catalog, spec)[0]


def reindex(
    dataset: str = typer.Argument(..., help="Dataset name."),
    model: Optional[str] = model_option(),
    pretrained: Optional[str] = pretrained_option(),
    kind: Kind = typer.Option(Kind.auto, "--kind"),
    device: str = typer.Option("auto", "--device"),
    wait: float = typer.Option(0.0, "--wait", help="Seconds to wait for another writer before giving up."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Embed + index for cron: quiet, non-interactive, lock-protected (exit 75 if another run holds the lock)."""
    from ..embed import EmbedOptions, embed_dataset
    from ..index import build_index
    from ..storage import existing_dataset, writer_lock

    paths = existing_dataset(dataset, STATE.root)
    spec = make_spec(model, pretrained, paths)
    with writer_lock(paths, wait):
        embedded = embed_dataset(paths, spec, options=EmbedOptions(device=device), lock=False)
        meta = build_index(paths, spec.key, kind.value, lock=False)
    result = {**embedded.as_dict(), "index_kind": meta["kind"], "index_count": meta["count"],
              "index_mode": meta["mode"]}
    if STATE.verbose:
        warn_list(embedded.warnings)
    if as_json or STATE.verbose:
        summary(result, as_json, "reindex")


def register(app: typer.Typer) -> None:
    app.command("embed")(embed)
    app.command("index")(index)
    app.command("reindex")(reindex)
