"""The model and vector tables of the catalog: which models a dataset has vectors of, and the
vectors themselves (one per model and content hash), read whole, by id, in chunks or sampled."""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import numpy as np

from ..errors import CatalogError, NotReady
from .files import now_iso

SQL_VARIABLES = 900  # ids per IN list: below SQLite's smallest limit on bound parameters (999)


def in_chunks(ids: Iterable[int]) -> Iterator[tuple[str, list[int]]]:
    """ids in slices small enough for one SQL `IN (...)` list, each with its "?,?,..." marks."""
    ids = [int(i) for i in ids]
    for start in range(0, len(ids), SQL_VARIABLES):
        chunk = ids[start:start + SQL_VARIABLES]
        yield ",".join("?" * len(chunk)), chunk

_LIVE_VECTORS = ("FROM items i JOIN vectors v ON v.content_hash=i.content_hash AND v.model_key=? "
                 "WHERE i.status='ok'")


class Vectors:
    """A catalog's models and vectors (`Catalog.vectors`), over the catalog's connection."""

    def __init__(self, conn, paths):
        self.conn, self.paths = conn, paths

    def ensure_model(self, model_key: str, model_name: str, pretrained: str, dim: int, dtype: str) -> None:
        row = self.conn.execute("SELECT dim, dtype FROM models WHERE model_key=?", (model_key,)).fetchone()
        if row is None:
            self.conn.execute(
                "INSERT INTO models VALUES(?,?,?,?,?,?)", (model_key, model_name, pretrained, dim, dtype, now_iso())
            )
        elif row[0] != dim:
            raise CatalogError(f"Model key {model_key!r} has dim {row[0]} in the catalog but the model gives {dim}.")

    def models(self, with_counts: bool = False) -> list[dict]:
        """Embedding models in this catalog; counting vectors reads every vector, so it is optional."""
        count = "(SELECT COUNT(*) FROM vectors v WHERE v.model_key=m.model_key)" if with_counts else "NULL"
        rows = self.conn.execute(
            f"SELECT m.model_key, m.model_name, m.pretrained, m.dim, m.dtype, m.created_at, {count} "
            "FROM models m ORDER BY m.created_at, m.model_key"
        ).fetchall()
        keys = ["model_key", "model_name", "pretrained", "dim", "dtype", "created_at", "vectors"]
        return [dict(zip(keys, r)) for r in rows]

    def model(self, model_key: str) -> dict | None:
        row = self.conn.execute("SELECT model_key, model_name, pretrained, dim, dtype, created_at FROM models "
                                "WHERE model_key=?", (model_key,)).fetchone()
        keys = ["model_key", "model_name", "pretrained", "dim", "dtype", "created_at"]
        return dict(zip(keys, row)) if row else None

    def hashes(self, model_key: str) -> set[str]:
        rows = self.conn.execute("SELECT content_hash FROM vectors WHERE model_key=?", (model_key,))
        return {r[0] for r in rows}

    def put(self, model_key: str, hashes: Sequence[str], vectors: np.ndarray, dtype: str) -> None:
        data = np.ascontiguousarray(vectors, dtype=np.dtype(dtype))
        self.conn.executemany(
            "INSERT OR REPLACE INTO vectors VALUES(?,?,?)",
            [(model_key, h, data[i].tobytes()) for i, h in enumerate(hashes)],
        )

    def load(self, model_key: str) -> tuple[np.ndarray, np.ndarray]:
        """(item ids, float32 matrix) for every live item that has a vector under `model_key`."""
        ids, _, mat = self.load_with_hashes(model_key)
        return ids, mat

    def load_with_hashes(self, model_key: str) -> tuple[np.ndarray, list[str], np.ndarray]:
        """(item ids, content hashes, float32 matrix) of live items with a vector, by item id."""
        meta = self.model(model_key)
        if meta is None:
            return np.zeros(0, dtype=np.int64), [], np.zeros((0, 0), dtype=np.float32)
        rows = self.conn.execute(
            "SELECT i.id, i.content_hash, v.vector FROM items i JOIN vectors v ON v.content_hash=i.content_hash "
            "AND v.model_key=? WHERE i.status='ok' ORDER BY i.id",
            (model_key,),
        ).fetchall()
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        buf = b"".join(r[2] for r in rows)
        mat = np.frombuffer(buf, dtype=np.dtype(meta["dtype"])).reshape(len(rows), meta["dim"])
        return ids, [r[1] for r in rows], mat.astype(np.float32)

    def load_for_ids(self, model_key: str, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(item ids, float32 matrix) of the given live items that have a vector, in the given order."""
        meta = self.model(model_key)
        if meta is None or not len(ids):
            return np.zeros(0, dtype=np.int64), np.zeros((0, meta["dim"] if meta else 0), dtype=np.float32)
        rows = []
        for marks, chunk in in_chunks(ids):
            rows += self.conn.execute(
                f"SELECT i.id, v.vector FROM items i JOIN vectors v ON v.content_hash=i.content_hash AND "
                f"v.model_key=? WHERE i.status='ok' AND i.id IN ({marks})", (model_key, *chunk)).fetchall()
        order = {i: n for n, i in enumerate(ids)}
        rows.sort(key=lambda r: order[r[0]])
        found = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        mat = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.dtype(meta["dtype"]))
        return found, mat.reshape(len(rows), meta["dim"]).astype(np.float32)

    def ids_and_hashes(self, model_key: str) -> tuple[np.ndarray, list[str]]:
        """(item ids, content hashes) of live items with a vector under `model_key`, by id (no vectors read)."""
        rows = self.conn.execute(f"SELECT i.id, i.content_hash {_LIVE_VECTORS} ORDER BY i.id", (model_key,)).fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)), [r[1] for r in rows]

    def iterate(self, model_key: str, chunk: int = 50_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(item ids, float32 matrix) of live items with a vector, by id, `chunk` rows at a time:
        memory stays at one chunk however large the collection."""
        meta = self._model_or_fail(model_key)
        last = -1
        while True:
            rows = self.conn.execute(f"SELECT i.id, v.vector {_LIVE_VECTORS} AND i.id > ? ORDER BY i.id LIMIT ?",
                                     (model_key, last, chunk)).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield self._matrix(rows, meta)

    def sample(self, model_key: str, count: int, seed: int = 0) -> np.ndarray:
        """About `count` vectors of live items, a reproducible random sample (for training indexes)."""
        meta = self._model_or_fail(model_key)
        ids, _ = self.ids_and_hashes(model_key)
        if len(ids) > count:
            ids = np.sort(np.random.default_rng(seed).choice(ids, size=count, replace=False))
        return np.concatenate([m for _, m in self._vectors_of(model_key, ids.tolist(), meta)] or
                              [np.zeros((0, meta["dim"]), dtype=np.float32)])

    def _vectors_of(self, model_key: str, ids: list[int], meta: dict) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for marks, chunk in in_chunks(ids):
            rows = self.conn.execute(f"SELECT i.id, v.vector {_LIVE_VECTORS} AND i.id IN ({marks}) ORDER BY i.id",
                                     (model_key, *chunk)).fetchall()
            yield self._matrix(rows, meta)

    @staticmethod
    def _matrix(rows, meta: dict) -> tuple[np.ndarray, np.ndarray]:
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        mat = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.dtype(meta["dtype"]))
        return ids, mat.reshape(len(rows), meta["dim"]).astype(np.float32)

    def _model_or_fail(self, model_key: str) -> dict:
        meta = self.model(model_key)
        if meta is None:
            raise NotReady(f"No embeddings for model {model_key} in {self.paths.name!r}.",
                           "Embed the dataset first.", dataset=self.paths.name, step="embed")
        return meta

    def of_item(self, model_key: str, item) -> np.ndarray:
        meta = self.model(model_key)
        row = self.conn.execute(
            "SELECT vector FROM vectors WHERE model_key=? AND content_hash=?", (model_key, item.content_hash)
        ).fetchone()
        if meta is None or row is None:
            raise NotReady(f"Item {item.path!r} has no embedding for model {model_key!r}.",
                           "Embed the dataset first.", dataset=self.paths.name, step="embed")
        return np.frombuffer(row[0], dtype=np.dtype(meta["dtype"])).astype(np.float32)
