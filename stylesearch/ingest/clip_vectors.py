"""Vectors and metadata from clip-retrieval's inference output (`img_emb/img_emb_N.npy` +
`metadata/metadata_N.parquet`), streamed into the catalog for the items the rows name (see imports.py).

Arrays and tables are read `BATCH_ROWS` rows at a time (NpyRows, parquet batches); each batch is one transaction,
so an interrupted import keeps what it stored and a rerun goes on from there. An `image_path` value
is only ever looked up among the catalogued items, never opened.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..progress import Progress
from ..store.catalog import Catalog
from .urls import is_http_url

BATCH_ROWS = 8192  # table rows (and vectors) held at a time
ITEM_COLUMNS = ("image_path", "caption", "url")  # clip-retrieval's columns that describe the item itself
REFUSED = "refused"


@dataclass(frozen=True)
class ImportModel:
    """The model the imported vectors were computed with (its catalog key, name, weights, dimension)."""

    key: str
    name: str
    pretrained: str
    dim: int


@dataclass
class ImportResult:
    images: str  # the folder the dataset's images/ links to
    scanned: dict = field(default_factory=dict)
    described: int = 0  # items given metadata, caption or source URL from their sidecars
    vectors: int = 0  # vectors stored
    already: int = 0  # rows whose item had a vector of the model already
    no_image: int = 0  # rows naming no catalogued image
    refused: int = 0  # rows whose image_path climbs out or is an absolute path outside the images folder
    bad_vectors: int = 0  # rows whose vector is not finite or all zeros
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"images": self.images, **self.scanned, **{k: getattr(self, k) for k in (
            "described", "vectors", "already", "no_image", "refused", "bad_vectors")}}


@dataclass
class Target:
    id: int
    path: str
    content_hash: str
    caption: str | None
    source_url: str | None


class Locator:
    """The catalogued item an `image_path` value names: a path under the images folder (absolute, or
    relative to it or to a folder above it), or an img2dataset key (a shard member's or file's stem)."""

    def __init__(self, catalog: Catalog, image_root: Path):
        self.roots = {os.path.normpath(os.path.abspath(image_root)), os.path.realpath(image_root)}
        self.by_path: dict[str, Target] = {}
        self.by_key: dict[str, Target | None] = {}  # None: a stem shared by several items
        for item in catalog.items("ok"):
            target = Target(item.id, item.path, item.content_hash, item.caption, item.source_url)
            stem = os.path.splitext(item.path.rsplit("#", 1)[-1].rsplit("/", 1)[-1])[0]
            self.by_key[stem] = target if stem not in self.by_key else None
            if "#" not in item.path:
                self.by_path[item.path] = target

    def find(self, value) -> Target | str | None:
        """The item, None when no catalogued image matches, REFUSED for a value leading outside."""
        if not isinstance(value, str) or not value or any(ord(c) < 32 for c in value):
            return REFUSED if isinstance(value, str) and value else None
        if os.path.isabs(value):
            plain = os.path.normpath(value)
            base = next((r for r in self.roots if plain.startswith(r.rstrip(os.sep) + os.sep)), None)
            if base is None:
                return REFUSED
            return self.by_path.get(Path(plain).relative_to(base).as_posix())
        parts = [p for p in value.replace("\\", "/").split("/") if p not in ("", ".")]
        if ".." in parts:
            return REFUSED
        for start in range(len(parts)):  # relative to the images folder, or to where clip-retrieval ran
            hit = self.by_path.get("/".join(parts[start:]))
            if hit is not None:
                return hit
        return self.by_key.get(parts[-1]) or self.by_key.get(os.path.splitext(parts[-1])[0]) if parts else None


def import_vectors(catalog: Catalog, parts: list[tuple[Path, Path]], model: ImportModel, image_root: Path,
                   result: ImportResult, progress: Progress) -> None:
    """Store each part's vectors (and its rows' metadata, captions and URLs) for the items they name."""
    arrays = [NpyRows(npy, model.dim) for npy, _ in parts]
    tables = [_open_table(table, len(array)) for (_, table), array in zip(parts, arrays)]
    catalog.vectors.ensure_model(model.key, model.name, model.pretrained, model.dim, "float32")
    dtype = catalog.vectors.model(model.key)["dtype"]
    locate, have = Locator(catalog, image_root), catalog.vectors.hashes(model.key)
    progress.start("importing vectors", sum(len(a) for a in arrays))
    try:
        for array, table in zip(arrays, tables):
            for batch in table.iter_batches(batch_size=BATCH_ROWS):
                rows = batch.to_pylist()
                block = array.read(len(rows))
                with catalog.transaction():
                    _store_batch(catalog, rows, block, model, dtype, locate, have, result)
                progress.advance(len(rows))
    finally:
        progress.finish()
        for array in arrays:
            array.close()


class NpyRows:
    """The rows of a 2-D .npy float array read in order, a block at a time (never mapped or loaded whole:
    memory stays at one block, and mapped pages would count as the process's memory)."""

    def __init__(self, npy: Path, dim: int):
        self.path = npy
        try:
            with open(npy, "rb") as fh:
                version = np.lib.format.read_magic(fh)
                header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, fortran, dtype = header(fh)
                self.offset = fh.tell()
        except (OSError, ValueError) as exc:
            raise UserError(f"{npy} is not a readable .npy array ({exc}).") from None
        if len(shape) != 2 or dtype.kind != "f" or dtype.hasobject or fortran:
            raise UserError(f"{npy} is not a matrix of floats in row order (shape {shape}, {dtype}).")
        if shape[1] != dim:
            raise UserError(f"{npy} holds {shape[1]}-dimensional vectors; the model gives {dim}.",
                            "Import with the model (and weights) the embeddings were computed with.")
        self.rows, self.dim, self.dtype = shape[0], dim, dtype
        self._file = None

    def __len__(self) -> int:
        return self.rows

    def read(self, count: int) -> np.ndarray:
        """The next `count` rows as float32."""
        if self._file is None:
            self._file = open(self.path, "rb")
            self._file.seek(self.offset)
        block = np.fromfile(self._file, dtype=self.dtype, count=count * self.dim)
        if block.size != count * self.dim:
            raise UserError(f"{self.path} ends before its {self.rows} rows.")
        return block.reshape(count, self.dim).astype(np.float32)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _open_table(table: Path, rows: int):
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(table)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds for a damaged file
        raise UserError(f"{table} is not a readable parquet file ({exc}).") from None
    if parquet.metadata.num_rows != rows:
        raise UserError(f"{table} has {parquet.metadata.num_rows} rows but its array has {rows} vectors.",
                        "Each metadata table must describe its embedding array row by row.")
    return parquet


def _store_batch(catalog: Catalog, rows: list[dict], block: np.ndarray, model: ImportModel, dtype: str,
                 locate: Locator, have: set[str], result: ImportResult) -> None:
    norms = np.linalg.norm(block, axis=1)
    good = np.isfinite(block).all(axis=1) & (norms > 1e-12)
    hashes, kept, metadata = [], [], {}
    for n, row in enumerate(rows):
        target = locate.find(row.get("image_path"))
        if target is None or target == REFUSED:
            result.no_image += target is None
            result.refused += target == REFUSED
            continue
        if target.content_hash in have:
            result.already += 1
            continue
        if not good[n]:
            result.bad_vectors += 1
            continue
        have.add(target.content_hash)
        hashes.append(target.content_hash)
        kept.append(n)
        extra = _describe(catalog, target, row)
        if extra:
            metadata[target.id] = {**metadata.get(target.id, {}), **extra}
    catalog.merge_metadata_many(metadata)
    if kept:
        catalog.vectors.put(model.key, hashes, block[kept] / norms[kept, None], dtype)
        result.vectors += len(kept)


def _describe(catalog: Catalog, target: Target, row: dict) -> dict:
    """Give the item the row's caption and URL where it has none; returns the row's other columns (its
    metadata to merge)."""
    fields = {}
    caption, url = row.get("caption"), row.get("url")
    if not target.caption and isinstance(caption, str) and caption.strip():
        fields["caption"] = caption.strip()
    if not target.source_url and isinstance(url, str) and is_http_url(url):
        fields["source_url"] = url
    if fields:
        catalog.upsert_item(target.path, **fields)
    return {k: v for k, v in ((k, _plain(v)) for k, v in row.items() if k not in ITEM_COLUMNS) if v is not None}


def _plain(value):
    """A parquet cell as a metadata value (None: left out): JSON types kept, NaN dropped, others as text."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)
