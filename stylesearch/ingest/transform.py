"""Thumbnails: EXIF-aware, reduce-on-decode, folder structure kept, incremental, parallel."""

from __future__ import annotations

import contextlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..cores import pool_workers
from ..errors import DiskFull, PathRefused, UserError
from ..progress import Progress, or_null
from ..store.catalog import open_catalog
from ..store.files import atomic_path, atomic_write_json, read_json_or_none, writer_lock
from ..store.images import BadImage, load_rgb
from ..store.paths import THUMB_FORMATS, DatasetPaths
from .scan import scan


@dataclass(frozen=True)
class TransformOptions:
    max_side: int = 336
    fmt: str = "jpeg"
    quality: int = 85
    workers: int | None = None
    force: bool = False


@dataclass
class TransformResult:
    made: int = 0
    up_to_date: int = 0
    failed: int = 0
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"made": self.made, "up_to_date": self.up_to_date, "failed": self.failed}


def make_thumbnail(src, dst: str, max_side: int, fmt: str, quality: int) -> str | None:
    """Write one thumbnail atomically; returns an error message instead of raising."""
    from PIL import Image

    try:
        img = load_rgb(src, draft=max_side)
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS, reducing_gap=3.0)
        with atomic_path(dst, suffix=THUMB_FORMATS[fmt]) as tmp:
            img.save(tmp, format=fmt.upper(), quality=quality, **({"optimize": True} if fmt == "png" else {}))
        return None
    except BadImage as exc:
        return exc.message
    except DiskFull:
        raise  # stops the run: every later thumbnail would fail the same way
    except OSError as exc:
        return str(exc)


def _make_one(task: tuple) -> str | None:
    return make_thumbnail(*task)


def transform_dataset(paths: DatasetPaths, options: TransformOptions = TransformOptions(),
                      progress: Progress | None = None, lock: bool = True) -> TransformResult:
    """Make thumbnails for every live item that has none or an outdated one."""
    if options.fmt not in THUMB_FORMATS:
        raise UserError(f"Unknown thumbnail format {options.fmt!r}.", f"Choose one of {', '.join(THUMB_FORMATS)}.")
    if options.max_side < 8:
        raise UserError(f"Thumbnails must be at least 8 pixels on the long side (asked: {options.max_side}).")
    guard = writer_lock(paths) if lock else contextlib.nullcontext()
    with guard, open_catalog(paths) as catalog:
        scan(catalog)
        items = catalog.items("ok")
    params = {"max_side": options.max_side, "format": options.fmt, "quality": options.quality}
    rebuild = options.force or read_json_or_none(paths.thumbs_params) != params
    result = TransformResult()
    tasks = []
    for item in items:
        try:  # a catalog row or a link leading outside the dataset is refused, never written through
            src = paths.item_file(item.path)
            dst = paths.contain(paths.thumbnail_file(item.path, item.content_hash, options.fmt))
        except PathRefused as exc:
            result.failed += 1
            result.warnings.append(f"{item.path}: {exc.message}")
            continue
        if not rebuild and _up_to_date(src, dst):
            result.up_to_date += 1
        else:
            tasks.append((src, str(dst), options.max_side, options.fmt, options.quality))
    _run(tasks, options.workers, or_null(progress), result)
    atomic_write_json(paths.thumbs_params, params)
    return result


def _up_to_date(src: Path, dst: Path) -> bool:
    try:
        return dst.stat().st_mtime >= src.stat().st_mtime
    except OSError:
        return False


def _run(tasks: list[tuple], workers: int | None, progress: Progress, result: TransformResult) -> None:
    progress.start("thumbnails", len(tasks))
    workers = pool_workers(workers)
    try:
        if workers <= 1 or len(tasks) < 8:
            outcomes = map(_make_one, tasks)
            _collect(tasks, outcomes, progress, result)
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                _collect(tasks, pool.map(_make_one, tasks, chunksize=8), progress, result)
    finally:
        progress.finish()


def _collect(tasks, outcomes, progress: Progress, result: TransformResult) -> None:
    for task, error in zip(tasks, outcomes):
        if error is None:
            result.made += 1
        else:
            result.failed += 1
            result.warnings.append(f"{task[0]}: {error}")
        progress.advance()
