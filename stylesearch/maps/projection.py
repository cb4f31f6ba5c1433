"""UMAP projection to 2D: coordinate export (csv/json/parquet) and a thumbnail map PNG."""

from __future__ import annotations

import csv
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..choices import COORD_FORMATS
from ..errors import NotReady, PathRefused, UserError
from ..learn.metric import load_metric
from ..progress import Progress, or_null
from ..query.filters import flat_meta, meta_column
from ..store.catalog import open_catalog
from ..store.files import atomic_path, atomic_write_bytes, remove_temp_files_of
from ..store.images import BadImage, load_rgb
from ..store.paths import DatasetPaths, thumb_format, thumbnail_for


@dataclass(frozen=True)
class UmapOptions:
    neighbors: int = 15
    min_dist: float = 0.1
    seed: int | None = 42
    pca_dims: int = 50
    raw: bool = False


def reduce_dims(vectors: np.ndarray, dims: int, seed: int | None) -> np.ndarray:
    """PCA pre-reduction: UMAP's neighbour search is much faster on ~50 dims than 512."""
    if vectors.shape[1] <= dims or len(vectors) <= dims:
        return vectors
    from sklearn.decomposition import PCA

    return PCA(n_components=dims, random_state=seed).fit_transform(vectors).astype(np.float32)


def umap_2d(vectors: np.ndarray, opt: UmapOptions) -> np.ndarray:
    """2D UMAP coordinates of the rows of `vectors` (Euclidean on the given space). Seeded: the same
    coordinates on every run, computed on all cores (maps/layout.py); unseeded: umap-learn as it is."""
    if len(vectors) < 4:
        raise NotReady(f"UMAP needs at least 4 embedded items; this dataset has {len(vectors)}.")
    reduced = reduce_dims(vectors, opt.pca_dims, opt.seed)
    neighbors = max(2, min(opt.neighbors, len(vectors) - 1))
    settings = dict(n_neighbors=neighbors, min_dist=opt.min_dist, n_components=2,
                    init="spectral" if len(vectors) > 10 else "random")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if opt.seed is None:
            import umap

            return umap.UMAP(**settings).fit_transform(reduced).astype(np.float32)
        from .layout import ReproducibleUMAP, knn_graph

        knn = knn_graph(reduced, neighbors, opt.seed)
        reducer = ReproducibleUMAP(**settings, random_state=opt.seed, precomputed_knn=(*knn, None))
        return reducer.fit_transform(reduced).astype(np.float32)


def project_dataset(paths: DatasetPaths, model_key: str, opt: UmapOptions = UmapOptions(),
                    progress: Progress | None = None) -> list[dict]:
    """UMAP rows (id, path, x, y, meta) for every embedded item; saves them for atlas ordering."""
    progress = or_null(progress)
    with open_catalog(paths, readonly=True) as catalog:
        ids, vectors = catalog.vectors.load(model_key)
        items = {it.id: it for it in catalog.items("ok")}
        metadata = catalog.metadata(ids)
    metric = load_metric(paths, model_key, raw=opt.raw, dim=vectors.shape[1] if len(vectors) else None)
    progress.start("umap", None)
    coords = umap_2d(metric.to_euclidean(vectors), opt)
    progress.finish()
    save_projection(paths, model_key, ids, coords)
    return [{"id": int(i), "path": items[int(i)].path, "x": float(c[0]), "y": float(c[1]),
             "hash": items[int(i)].content_hash, "meta": metadata.get(int(i), {})} for i, c in zip(ids, coords)]


def save_projection(paths: DatasetPaths, model_key: str, ids: np.ndarray, coords: np.ndarray) -> None:
    with atomic_path(paths.projection_file(model_key), suffix=".npz") as tmp:
        np.savez(tmp, ids=ids, coords=coords)
    remove_temp_files_of(paths.projection_file(model_key))


def load_projection(paths: DatasetPaths, model_key: str | None) -> tuple[np.ndarray, np.ndarray] | None:
    """Saved (ids, coords) of a model (or of the newest projection when model_key is None)."""
    folder = paths.projections
    if model_key is None:
        files = sorted(folder.glob("*.npz"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
        if not files:
            return None
        file = files[-1]
    else:
        file = paths.projection_file(model_key)
    if not file.exists():
        return None
    data = np.load(file)
    return data["ids"], data["coords"]


# ---------------------------------------------------------------- coordinate files

COLUMNS = ("id", "path", "x", "y")


def _records(rows: list[dict]) -> tuple[list[str], list[dict]]:
    """Columns (the standard ones, then metadata fields: `meta.x` for one named like a column, see
    filters.meta_column) and flat records for coordinate files."""
    fields = sorted({meta_column(k) for r in rows for k in r.get("meta", {})})
    records = []
    for r in rows:
        meta = flat_meta(r.get("meta", {}))
        records.append({**{f: meta.get(f) for f in fields}, **{c: r[c] for c in COLUMNS}})
    return [*COLUMNS, *fields], records


def format_coords(rows: list[dict], fmt: str) -> bytes:
    """Encode rows (with their metadata fields as extra columns) as csv, json or parquet bytes."""
    columns, records = _records(rows)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([*(f"{r[c]:.6f}" if c in ("x", "y") else ("" if r[c] is None else r[c]) for c in columns)]
                         for r in records)
        return buf.getvalue().encode()
    if fmt == "json":
        return (json.dumps([{c: r[c] for c in columns} for r in records], indent=1, ensure_ascii=False)
                + "\n").encode()
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({c: _parquet_column([r[c] for r in records]) for c in columns})
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        return sink.getvalue().to_pybytes()
    raise UserError(f"Unknown coordinate format {fmt!r}.", f"Use one of: {', '.join(COORD_FORMATS)}.")


def _parquet_column(values: list) -> list:
    """Parquet columns have one type: a metadata column of mixed types goes in as text."""
    kinds = {type(v) for v in values if v is not None}
    if kinds <= {int, float} or len(kinds) <= 1:
        return values
    return [None if v is None else str(v) for v in values]


def write_coords(rows: list[dict], out: Path, fmt: str) -> None:
    """Write the coordinates file atomically; temp files of earlier interrupted writes of it go too."""
    atomic_write_bytes(out, format_coords(rows, fmt))
    remove_temp_files_of(out)


# ---------------------------------------------------------------- thumbnail map


def free_cell(taken: np.ndarray, cx: int, cy: int, max_radius: int) -> tuple[int, int] | None:
    """Nearest free grid cell to (cx, cy), searching rings outward up to max_radius."""
    rows, cols = taken.shape
    for r in range(max_radius + 1):
        ring = [(cx + dx, cy + dy) for dx in range(-r, r + 1) for dy in range(-r, r + 1) if max(abs(dx), abs(dy)) == r]
        ring.sort(key=lambda p: (p[0] - cx) ** 2 + (p[1] - cy) ** 2)
        for x, y in ring:
            if 0 <= x < cols and 0 <= y < rows and not taken[y, x]:
                return x, y
    return None


def render_map(paths: DatasetPaths, rows: list[dict], out: Path, size: int = 2048, thumb: int = 48,
               background: tuple[int, int, int] = (24, 24, 28)) -> dict:
    """Paste small thumbnails at their UMAP positions; overlaps move to the nearest free cell."""
    from PIL import Image

    if not rows:
        raise NotReady("Nothing to draw: no coordinates.")
    xy = np.array([[r["x"], r["y"]] for r in rows], dtype=np.float64)
    span = np.maximum(xy.max(0) - xy.min(0), 1e-9)
    cells = max(1, size // thumb)
    grid = np.clip(((xy - xy.min(0)) / span * (cells - 1)).round().astype(int), 0, cells - 1)
    taken = np.zeros((cells, cells), dtype=bool)
    canvas = Image.new("RGB", (cells * thumb, cells * thumb), background)
    placed = hidden = failed = 0
    fmt = thumb_format(paths)
    for n in np.random.default_rng(0).permutation(len(rows)):
        cell = free_cell(taken, int(grid[n, 0]), int(cells - 1 - grid[n, 1]), max_radius=2)
        if cell is None:
            hidden += 1
            continue
        try:
            img = load_rgb(thumbnail_for(paths, rows[n]["path"], rows[n].get("hash"), fmt), draft=thumb)
        except (BadImage, PathRefused, OSError):
            failed += 1
            continue
        img.thumbnail((thumb - 2, thumb - 2))
        taken[cell[1], cell[0]] = True
        canvas.paste(img, (cell[0] * thumb + (thumb - img.width) // 2, cell[1] * thumb + (thumb - img.height) // 2))
        placed += 1
    with atomic_path(out, suffix=".png") as tmp:
        canvas.save(tmp, format="PNG")
    remove_temp_files_of(out)  # of earlier interrupted writes (no lock outside a dataset: only this file's)
    return {"png": str(out), "placed": placed, "hidden_overlaps": hidden, "unreadable": failed}
