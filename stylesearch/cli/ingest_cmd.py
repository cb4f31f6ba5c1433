"""`stylesearch download` and `transform`."""

from __future__ import annotations

from typing import Optional

import typer

from ..choices import LIST_FORMATS, THUMB_FORMATS
from .common import STATE, choice_enum, dataset_argument, log, make_progress, summary, warn_list

ListFormat = choice_enum("ListFormat", LIST_FORMATS)
ThumbFormat = choice_enum("ThumbFormat", list(THUMB_FORMATS))


def download(
    dataset: str = dataset_argument("Dataset name (created if missing)."),
    source: Optional[str] = typer.Argument(None, help="URL list file (txt/csv/tsv/jsonl) or '-' for stdin."),
    list_format: Optional[ListFormat] = typer.Option(None, "--list-format", help="Override format detection."),
    sample: Optional[str] = typer.Option(None, "--sample", help="Sample source instead of a list: picsum."),
    count: int = typer.Option(100, "--count", help="How many sample images."),
    workers: int = typer.Option(16, "--workers", min=1, help="Concurrent downloads."),
    per_host: int = typer.Option(4, "--per-host", min=1, help="Concurrent requests per host."),
    host_delay: float = typer.Option(0.0, "--host-delay", help="Seconds between requests to one host."),
    retries: int = typer.Option(3, "--retries", min=0, help="Retries on 429/5xx/timeouts."),
    timeout: float = typer.Option(20.0, "--timeout", help="Per-request timeout in seconds."),
    min_side: int = typer.Option(32, "--min-side", help="Reject images with a smaller side."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Retry URLs that failed permanently before."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Download images from a URL list or a sample source (resumable, validated, deduplicated)."""
    from ..ingest.download import DownloadOptions
    from ..ingest.download import download as run_download
    from ..ingest.sources import read_source, sample_entries
    from ..store.paths import dataset_paths

    if (source is None) == (sample is None):
        raise typer.BadParameter("Give either SOURCE (a file or '-') or --sample NAME.")
    if sample:
        entries, malformed = sample_entries(sample, count), 0
    else:
        entries, malformed = read_source(source, list_format.value if list_format else None)
    options = DownloadOptions(workers=workers, per_host=per_host, host_delay=host_delay, retries=retries,
                              timeout=timeout, min_side=min_side, retry_failed=retry_failed)
    progress = make_progress()
    result = run_download(dataset_paths(dataset, STATE.root), entries, options, progress, malformed)
    warn_list(result.warnings)
    summary(result.as_dict(), as_json, "download", progress)
    if result.failed and not (result.ok or result.duplicates or result.skipped_done):
        log(f"error: all {result.failed} downloads failed")
        raise typer.Exit(1)


def transform(
    dataset: str = dataset_argument(),
    max_side: int = typer.Option(336, "--max-side", help="Longest side of a thumbnail in pixels."),
    fmt: ThumbFormat = typer.Option("jpeg", "--format", help="Thumbnail file format."),
    quality: int = typer.Option(85, "--quality", min=1, max=100),
    workers: Optional[int] = typer.Option(None, "--workers", help="Processes (default: one per core)."),
    force: bool = typer.Option(False, "--force", help="Remake every thumbnail."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Make thumbnails (EXIF-aware, folder tree kept, incremental, parallel)."""
    from ..ingest.transform import TransformOptions, transform_dataset
    from ..store.paths import existing_dataset

    paths = existing_dataset(dataset, STATE.root)
    progress = make_progress()
    result = transform_dataset(paths, TransformOptions(max_side, fmt.value, quality, workers, force), progress)
    warn_list(result.warnings)
    summary(result.as_dict(), as_json, "transform", progress)


def register(app: typer.Typer) -> None:
    app.command("download")(download)
    app.command("transform")(transform)
