"""Sprite atlases: every item as a tile on one or more PNG pages, plus a JSON manifest."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np

from ..choices import ATLAS_ORDERS
from ..errors import NotReady, PathRefused, UserError
from ..ingest.scan import scan
from ..progress import Progress, or_null
from ..store.catalog import Item, open_catalog
from ..store.files import atomic_path, atomic_write_json, read_json_or_none, writer_lock
from ..store.images import BadImage, load_rgb
from ..store.paths import DatasetPaths, thumb_format, thumbnail_for

ORDERS = ATLAS_ORDERS


@dataclass(frozen=True)
class AtlasOptions:
    tile: int = 64
    padding: int = 2
    max_size: int = 4096
    order: str = "path"  # path | umap
    model_key: str | None = None  # which model's UMAP coordinates to order by
    background: tuple[int, int, int, int] = (0, 0, 0, 0)


def grid_shape(tile: int, padding: int, max_size: int) -> int:
    """Tiles per row/column that fit in a page of at most max_size pixels."""
    cols = (max_size - padding) // (tile + padding)
    if cols < 1:
        raise UserError(f"A {tile}px tile with {padding}px padding does not fit in {max_size}px pages.")
    return cols


def umap_order(items: list[Item], ids: np.ndarray, coords: np.ndarray, cols: int) -> list[Item]:
    """Row-major grid order that keeps UMAP neighbours near each other: rows by y, then x."""
    pos = {int(i): c for i, c in zip(ids, coords)}
    placed = sorted((it for it in items if it.id in pos), key=lambda it: (pos[it.id][1], pos[it.id][0]))
    rows = [sorted(placed[s:s + cols], key=lambda it: pos[it.id][0]) for s in range(0, len(placed), cols)]
    rest = [it for it in items if it.id not in pos]
    return [it for row in rows for it in row] + rest


def _ordered_items(paths: DatasetPaths, opt: AtlasOptions, cols: int) -> list[Item]:
    with open_catalog(paths) as catalog:
        scan(catalog)
        items = sorted(catalog.items("ok"), key=lambda it: it.path)
    if opt.order == "path":
        return items
    if opt.order not in ORDERS:
        raise UserError(f"Unknown atlas order {opt.order!r}.", f"Use one of: {', '.join(ORDERS)}.")
    from .projection import load_projection

    saved = load_projection(paths, opt.model_key)
    if saved is None:
        raise NotReady("No UMAP coordinates saved for this dataset.",
                       "Export a UMAP projection first, or order the atlas by path.", dataset=paths.name,
                       step="umap-export")
    return umap_order(items, *saved, cols)


def build_atlas(paths: DatasetPaths, opt: AtlasOptions = AtlasOptions(), progress: Progress | None = None,
                lock: bool = True) -> dict:
    """Render atlas pages atlas/atlas-<n>.png and atlas/manifest.json; returns the manifest."""
    cols = grid_shape(opt.tile, opt.padding, opt.max_size)
    guard = writer_lock(paths) if lock else contextlib.nullcontext()
    with guard:
        items = _ordered_items(paths, opt, cols)
        if not items:
            raise NotReady(f"Dataset {paths.name!r} has no items.", "Download or add images first.",
                           dataset=paths.name)
        per_page = cols * cols
        pages = math.ceil(len(items) / per_page)
        progress = or_null(progress)
        progress.start("atlas", len(items))
        entries, skipped = [], []
        for page in range(pages):
            chunk = items[page * per_page:(page + 1) * per_page]
            entries += _render_page(paths, chunk, page, cols, opt, progress, skipped)
        progress.finish()
        manifest = {"tile": opt.tile, "padding": opt.padding, "grid": {"cols": cols, "rows_max": cols},
                    "pages": [paths.atlas_page_name(p) for p in range(pages)], "order": opt.order,
                    "count": len(entries), "skipped": skipped, "items": entries}
        _remove_stale_pages(paths, pages)
        atomic_write_json(paths.atlas_manifest, manifest)
    return manifest


def _render_page(paths, chunk: list[Item], page: int, cols: int, opt: AtlasOptions, progress, skipped) -> list:
    from PIL import Image

    cell = opt.tile + opt.padding
    rows = math.ceil(len(chunk) / cols)
    width = opt.padding + min(cols, len(chunk)) * cell
    canvas = Image.new("RGBA", (width, opt.padding + rows * cell), opt.background)
    entries = []
    fmt = thumb_format(paths)
    for n, item in enumerate(chunk):
        progress.advance()
        try:
            img = load_rgb(thumbnail_for(paths, item.path, item.content_hash, fmt), draft=opt.tile)
        except (BadImage, PathRefused, OSError):
            skipped.append(item.path)
            continue
        img.thumbnail((opt.tile, opt.tile), Image.Resampling.LANCZOS, reducing_gap=3.0)
        x = opt.padding + (n % cols) * cell + (opt.tile - img.width) // 2
        y = opt.padding + (n // cols) * cell + (opt.tile - img.height) // 2
        canvas.paste(img, (x, y))
        entries.append({"id": item.id, "path": item.path, "page": page, "x": x, "y": y,
                        "w": img.width, "h": img.height})
    with atomic_path(paths.atlas_page(page), suffix=".png") as tmp:
        canvas.save(tmp, format="PNG", optimize=False)
    return entries


def _remove_stale_pages(paths: DatasetPaths, pages: int) -> None:
    """Delete the pages of the previous atlas beyond the new one's count (only names this code writes)."""
    old = read_json_or_none(paths.atlas_manifest) or {}
    keep = {paths.atlas_page_name(p) for p in range(pages)}
    for name in set(paths.atlas_page_names(old)) - keep:
        (paths.atlas / name).unlink(missing_ok=True)
