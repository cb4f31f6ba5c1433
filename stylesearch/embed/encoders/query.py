"""Encoding query terms (text prompts, query images) for search.

`query_encoder` is the one place search gets its query vectors from: the dataset's ONNX export
when it has a valid one (no torch import), else the open_clip model; text vectors go through a
small per-user SQLite cache, so repeating a query in a pipeline costs a lookup.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import time
from pathlib import Path
from typing import Protocol

import numpy as np

from ...store.paths import DatasetPaths, user_cache_dir
from ..models import ModelSpec

log = logging.getLogger(__name__)
CACHE_LIMIT = 20_000  # text vectors kept per model; the oldest go first


class QueryEncoder(Protocol):
    text_id: str  # names the vectors encode_text makes (backend and version), for the query cache

    def encode_text(self, texts: list[str]) -> np.ndarray: ...

    def encode_image(self, image) -> np.ndarray: ...  # a decoded RGB PIL image -> one unit vector

    def warm_image(self) -> str: ...  # make image queries fast from the first one: the backend that will answer


class TorchQueryEncoder:
    """Query vectors from the open_clip model loaded in this process (loaded on first use)."""

    def __init__(self, spec: ModelSpec, device: str = "auto"):
        self.spec, self.device = spec, device
        self.text_id = f"torch:{device}"
        self._model = None

    @property
    def model(self):
        if self._model is None:
            from ..models import load_model

            self._model = load_model(self.spec, self.device)
        return self._model

    def encode_text(self, texts: list[str]) -> np.ndarray:
        return self.model.encode_text(texts)

    def encode_image(self, image) -> np.ndarray:
        return self.model.encode_images(self.model.preprocess(image).unsqueeze(0))[0]

    def warm_image(self) -> str:
        """Load the model and encode a probe image, so the first image query costs no model load."""
        self.encode_image(_probe_image())
        return "torch"


class OnnxQueryEncoder:
    """Queries through the dataset's ONNX export; torch for a tower it lacks or that fails to run.

    A tower's first query gets a session that starts fast; a second query (a long-lived process:
    the server, tagging) replaces it with one that runs fast.
    """

    def __init__(self, export, fallback: TorchQueryEncoder):
        self.export, self.fallback = export, fallback
        self._towers: dict = {}  # name -> tower, or None when unusable
        self._uses: dict[str, int] = {}

    @property
    def text_id(self) -> str:
        if self._towers.get("text", True) is None or self.export.tower("text") is None:
            return self.fallback.text_id
        return f"onnx:{self.export.stamp['towers']['text']['file']}"

    def _run(self, name: str, make, call):
        """call(tower), or None when the tower is missing or onnxruntime fails (then torch answers)."""
        uses = self._uses[name] = self._uses.get(name, 0) + 1
        if uses <= 2 and self._towers.get(name, True) is not None:
            self._towers[name] = None
            if self.export.tower(name) is not None:
                try:
                    self._towers[name] = make(uses == 1)
                except Exception as exc:  # onnxruntime missing, file damaged, ...: torch is always correct
                    log.debug("ONNX %s tower unusable, using torch: %s", name, exc)
        tower = self._towers[name]
        if tower is None:
            return None
        try:
            return call(tower)
        except Exception as exc:
            log.debug("ONNX %s tower failed, using torch: %s", name, exc)
            self._towers[name] = None
            return None

    def encode_text(self, texts: list[str]) -> np.ndarray:
        from .onnx import OnnxTextTower

        out = self._run("text", lambda quick: OnnxTextTower(self.export, quick), lambda t: t.encode(texts))
        return out if out is not None else self.fallback.encode_text(texts)

    def _onnx_image(self, image) -> np.ndarray | None:
        from .onnx import OnnxImageTower

        return self._run("image", lambda quick: OnnxImageTower(self.export, single_run=quick),
                         lambda t: t.encode_image(image))

    def encode_image(self, image) -> np.ndarray:
        out = self._onnx_image(image)
        return out if out is not None else self.fallback.encode_image(image)

    def warm_image(self) -> str:
        """Make the ONNX image tower ready for queries (its fast session; the first use makes a quick-start
        one), without torch; torch's model when there is no usable image export."""
        if self.export.tower("image") is not None and all(self._onnx_image(_probe_image()) is not None
                                                          for _ in range(2)):
            return "onnx"
        return self.fallback.warm_image()


class QueryCache:
    """Text query vectors of one model in SQLite under the user cache; any failure is a miss.

    A row that is not a finite, non-zero float32 vector (of `dim` values, when known) is a miss, and
    the new vector replaces it. Anything but a regular file at the cache's paths (a FIFO, a device) means
    no cache: opening a FIFO would wait forever.
    """

    def __init__(self, model_key: str, folder: Path | None = None, dim: int | None = None):
        self.path = (folder or user_cache_dir() / "query-vectors") / f"{model_key}.sqlite"
        self.dim = dim

    def usable(self) -> bool:
        """False when something other than a regular file is at the database's or its journals' paths."""
        for path in (self.path, *(self.path.with_name(self.path.name + x) for x in ("-wal", "-shm", "-journal"))):
            try:
                mode = os.stat(path).st_mode
            except FileNotFoundError:
                continue
            except OSError:
                return False
            if not stat.S_ISREG(mode):
                return False
        return True

    def get(self, encoder_id: str, texts: list[str]) -> dict[str, np.ndarray]:
        if not self.path.exists() or not self.usable():
            return {}
        marks = ",".join("?" * len(texts))
        try:
            with sqlite3.connect(f"{self.path.as_uri()}?mode=ro", uri=True, timeout=0.5) as conn:
                rows = conn.execute(f"SELECT text, vector FROM vectors WHERE encoder=? AND text IN ({marks})",
                                    [encoder_id, *texts]).fetchall()
        except sqlite3.Error:
            return {}
        vectors = {text: self._vector(blob) for text, blob in rows}
        return {text: v for text, v in vectors.items() if v is not None}

    def _vector(self, blob) -> np.ndarray | None:
        """A stored vector, or None when the row is not one (wrong type or size, NaN, infinite, zero)."""
        if not isinstance(blob, bytes) or not blob or len(blob) % 4 or (self.dim and len(blob) != 4 * self.dim):
            return None
        vector = np.frombuffer(blob, dtype=np.float32).copy()
        return vector if np.isfinite(vector).all() and vector.any() else None

    def put(self, encoder_id: str, vectors: dict[str, np.ndarray]) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self.usable():
                log.debug("query cache not written: %s is not a regular file", self.path)
                return
            conn = sqlite3.connect(self.path, timeout=0.5)
            try:
                with conn:
                    self._store(conn, encoder_id, vectors)
            finally:
                conn.close()
        except (sqlite3.Error, OSError) as exc:
            log.debug("query cache not written: %s", exc)

    @staticmethod
    def _store(conn: sqlite3.Connection, encoder_id: str, vectors: dict[str, np.ndarray]) -> None:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE IF NOT EXISTS vectors (encoder TEXT NOT NULL, text TEXT NOT NULL, "
                     "vector BLOB NOT NULL, added REAL NOT NULL, PRIMARY KEY (encoder, text))")
        now = time.time()
        conn.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?, ?)",
                         [(encoder_id, t, np.asarray(v, np.float32).tobytes(), now) for t, v in vectors.items()])
        extra = conn.execute("SELECT COUNT(*) FROM vectors").fetchone()[0] - CACHE_LIMIT
        if extra > 0:
            conn.execute("DELETE FROM vectors WHERE rowid IN (SELECT rowid FROM vectors ORDER BY added LIMIT ?)",
                         (extra + CACHE_LIMIT // 10,))


class CachedQueryEncoder:
    """Text vectors from the cache when known; new ones are encoded together and stored."""

    def __init__(self, inner: QueryEncoder, cache: QueryCache):
        self.inner, self.cache = inner, cache

    @property
    def text_id(self) -> str:
        return self.inner.text_id

    def encode_text(self, texts: list[str]) -> np.ndarray:
        known = self.cache.get(self.inner.text_id, list(dict.fromkeys(texts)))
        missing = [t for t in dict.fromkeys(texts) if t not in known]
        if missing:
            new = dict(zip(missing, self.inner.encode_text(missing)))
            self.cache.put(self.inner.text_id, new)
            known.update(new)
        if len({len(known[t]) for t in texts}) > 1:  # sizes the cache could not check (no dim given)
            return self._encode_all(texts)
        return np.stack([known[t] for t in texts]).astype(np.float32)

    def _encode_all(self, texts: list[str]) -> np.ndarray:
        unique = list(dict.fromkeys(texts))
        new = dict(zip(unique, self.inner.encode_text(unique)))
        self.cache.put(self.inner.text_id, new)
        return np.stack([new[t] for t in texts]).astype(np.float32)

    def encode_image(self, image) -> np.ndarray:
        return self.inner.encode_image(image)

    def warm_image(self) -> str:
        return self.inner.warm_image()


def _probe_image():
    from PIL import Image

    return Image.new("RGB", (64, 64), (128, 128, 128))


def query_encoder(paths: DatasetPaths, spec: ModelSpec, device: str = "auto", cache: bool = True,
                  dim: int | None = None) -> QueryEncoder:
    """The encoder for text and image query terms of a dataset's model; `dim` (the size of the dataset's
    vectors, which the caller has read) lets the query cache refuse rows of another size."""
    from .onnx import load_export

    encoder: QueryEncoder = TorchQueryEncoder(spec, device)
    export = load_export(paths, spec.key) if device in ("auto", "cpu") else None
    if export is not None:
        encoder = OnnxQueryEncoder(export, encoder)
    return CachedQueryEncoder(encoder, QueryCache(spec.key, dim=dim)) if cache else encoder
