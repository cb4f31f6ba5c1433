"""`stylesearch embed`, `index` and `reindex`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from ..choices import EMBED_BACKENDS, EMBED_ENGINES, INDEX_KINDS, PRECISIONS
from .common import (STATE, choice_enum, choose_model, dataset_argument, log, make_progress, model_option,
                     pretrained_option, summary, warn_list)

Kind = choice_enum("Kind", INDEX_KINDS)
Precision = choice_enum("Precision", PRECISIONS)
Backend = choice_enum("Backend", EMBED_BACKENDS)
Engine = choice_enum("Engine", EMBED_ENGINES)
DEVICE_HELP = "auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1, mps."


def _read_stdin_paths() -> list[Path]:
    return [Path(line.strip()) for line in sys.stdin if line.strip()]


def embed(
    dataset: str = dataset_argument(),
    source: Optional[str] = typer.Argument(None, help="'-' to read image paths from stdin instead of scanning."),
    model: Optional[str] = model_option(),
    pretrained: Optional[str] = pretrained_option(),
    backend: Backend = typer.Option("auto", "--backend", help=(
        "auto (onnx on the CPU when an export exists or >=256 images are pending, else torch), torch, onnx, "
        "onnx-int8 (reports its cosine agreement with fp32).")),
    engine: Engine = typer.Option("local", "--engine", help="local, or ray (Ray Data on a Ray cluster)."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster: auto or ray://HOST:PORT "
                                                                  "(default: a local Ray instance)."),
    num_workers: int = typer.Option(2, "--num-workers", min=1, help="Ray model workers (actors)."),
    gpus_per_worker: float = typer.Option(0.0, "--gpus-per-worker", min=0.0, help="GPUs per Ray model worker."),
    no_onnx_export: bool = typer.Option(False, "--no-onnx-export", envvar="STYLESEARCH_NO_ONNX_EXPORT",
                                        help="Do not export the text tower to ONNX after embedding."),
    batch_size: int = typer.Option(32, "--batch-size", "-b", min=1),
    workers: Optional[int] = typer.Option(None, "--workers", help="Decode processes (default: half the cores, 1-8)."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    precision: Precision = typer.Option("auto", "--precision", help="Autocast on GPU (auto=bf16/fp16)."),
    float16: bool = typer.Option(False, "--float16", help="Store vectors as float16 (half the space)."),
    create: bool = typer.Option(False, "--create", help="Create the dataset if it does not exist (an existing "
                                "images/ folder of a name without a dataset is adopted without it)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Embed new and changed images (cached: unchanged files are never embedded twice)."""
    from ..embed.run import EmbedOptions, embed_dataset
    from ..store.datasets import adoptable_images
    from ..store.paths import dataset_paths, existing_dataset

    if source not in (None, "-"):
        raise typer.BadParameter("SOURCE must be '-' (paths on stdin) or left out.")
    paths = dataset_paths(dataset, STATE.root)
    if not create and adoptable_images(paths):
        log(f"embed: adopting the images in {paths.images} as the new dataset {dataset!r}")
        create = True
    elif not create:
        existing_dataset(dataset, STATE.root)
    _mend(paths)
    files = _read_stdin_paths() if source == "-" else None
    options = EmbedOptions(backend=backend.value, batch_size=batch_size, workers=workers, device=device,
                           precision=precision.value, storage_dtype="float16" if float16 else "float32",
                           engine=engine.value, ray_address=address, ray_workers=num_workers,
                           ray_gpus=gpus_per_worker, export_onnx=not no_onnx_export)
    spec = choose_model(paths, model, pretrained, embedded_only=False)
    progress = make_progress()
    result = embed_dataset(paths, spec, files, options, progress, create=create)
    warn_list(result.warnings)
    from ..pipeline import predict_attributes

    summary({**result.as_dict(), **predict_attributes(paths, spec.key)}, as_json, "embed", progress)


def index(
    dataset: str = dataset_argument(),
    kind: Kind = typer.Option("auto", "--kind", help="Index kind; auto picks by collection size."),
    model: Optional[str] = model_option(),
    pretrained: Optional[str] = pretrained_option(),
    full: bool = typer.Option(False, "--full", help="Rebuild from scratch instead of adding new vectors."),
    raw: bool = typer.Option(False, "--raw", help="Index the raw vectors even when a learned metric exists."),
    max_memory: Optional[str] = typer.Option(None, "--max-memory",
                                             help="Memory the build may use, e.g. 4G (default: 60% of RAM)."),
    check_recall: bool = typer.Option(False, "--check-recall", help="Report recall@10 against exact search."),
    as_json: bool = typer.Option(False, "--json", help="Print the index metadata as JSON on stdout."),
) -> None:
    """Build or update the FAISS index (atomic: searches keep using the old one until it is swapped in)."""
    from ..index.build import build_index
    from ..index.load import check_recall as recall
    from ..index.plan import parse_bytes
    from ..progress import step
    from ..store.paths import existing_dataset

    paths = existing_dataset(dataset, STATE.root)
    key = choose_model(paths, model, pretrained).key
    cap = parse_bytes(max_memory) if max_memory else None
    progress = make_progress()
    meta = build_index(paths, key, kind.value, full, progress, raw=raw, max_memory=cap)
    if check_recall:
        with step(progress, "checking recall@10 against exact search"):
            meta["recall_at_10"] = round(recall(paths, key), 4)
    summary(meta, as_json, "index", progress)


def reindex(
    dataset: str = dataset_argument(),
    model: Optional[str] = model_option(),
    pretrained: Optional[str] = pretrained_option(),
    kind: Optional[Kind] = typer.Option(None, "--kind", help="Index kind (default: the existing index's, else auto)."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    wait: float = typer.Option(0.0, "--wait", help="Seconds to wait for another writer before giving up."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Embed + index for cron: quiet, non-interactive, lock-protected (exit 75 if another run holds the lock)."""
    from ..embed.run import EmbedOptions
    from ..pipeline import reindex as run_reindex
    from ..store.paths import existing_dataset

    paths = existing_dataset(dataset, STATE.root)
    _mend(paths, wait)
    spec = choose_model(paths, model, pretrained, embedded_only=False)
    progress = make_progress(quiet=not STATE.verbose)
    result = run_reindex(paths, spec, kind.value if kind else None, EmbedOptions(device=device), wait, progress)
    warnings = result.pop("warnings")
    if STATE.verbose:
        warn_list(warnings)
    if as_json or STATE.verbose:
        summary(result, as_json, "reindex", progress)


def _mend(paths, wait: float = 0.0) -> None:
    from ..pipeline import mend_emptied_catalog

    if mend_emptied_catalog(paths, wait):
        log(f"warning: catalog {paths.catalog} was empty: every image is embedded again")


def register(app: typer.Typer) -> None:
    app.command("embed")(embed)
    app.command("index")(index)
    app.command("reindex")(reindex)
