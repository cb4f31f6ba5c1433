"""Warm server state: one Searcher per dataset (and per model/raw asked for), rebuilt when the
files it was loaded from change, so `embed`, `reindex` and `train` are picked up without a restart.
A request's search effort tunes the loaded index for that request only (`effort`); one query
encoder per model is shared by every dataset embedded with it.

Stamps are cheap `stat`s taken before each request: the catalog and its WAL (new items, vectors,
metadata), the index sidecar (replaced last by `index`, so a half-written index is never named),
and the metric's weights.json/weights.npz. A changed stamp builds a new Searcher and closes the old
one. Every library call runs on one engine thread, one at a time: SQLite connections belong to the
thread that opened them, no request can hold a Searcher being replaced, and the queue in front of
the thread is bounded.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from ..errors import DatasetNotFound
from ..store.paths import DatasetPaths, check_dataset_name, existing_dataset, list_dataset_names
from .config import ServerConfig
from .errors import Overloaded

log = logging.getLogger("stylesearch.server")
SEARCHERS_PER_DATASET = 4  # (model, raw) combinations kept warm
LABEL_SESSIONS = 16


def file_stamp(path: Path) -> tuple | None:
    """(mtime, size, inode) of a file, None when missing: changes whenever the file is rewritten."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class DatasetState:
    """The warm objects of one dataset; use only on the engine thread."""

    def __init__(self, paths: DatasetPaths, device: str, threads: int | None = None,
                 encoders: dict | None = None):
        self.paths, self.device, self.threads = paths, device, threads
        self.searchers: OrderedDict[tuple, tuple[tuple, object]] = OrderedDict()
        # model key -> query encoder (the loaded model), kept across reloads; the server's one dict,
        # shared by all its datasets
        self.encoders: dict[str, object] = {} if encoders is None else encoders
        self.specs: dict[tuple, tuple[tuple, object]] = {}
        self.cached: dict[str, tuple[tuple, object]] = {}  # item lists, vectors, projection: by stamp
        self.reloads = 0
        self._reader = None

    def reader(self):
        """A read-only catalog connection of this dataset (sees new commits; engine thread only)."""
        from ..store.catalog import open_catalog

        if self._reader is None:
            self._reader = open_catalog(self.paths, readonly=True)
        return self._reader

    def catalog_stamp(self) -> tuple:
        catalog = self.paths.catalog
        return file_stamp(catalog), file_stamp(catalog.with_name(catalog.name + "-wal"))

    def model_stamp(self, key: str) -> tuple:
        p = self.paths
        return tuple(file_stamp(f) for f in (p.index_sidecar(key), p.metric_meta(key), p.metric_arrays(key),
                                              p.legacy_metric_weights(key)))

    def spec(self, model: str | None = None, pretrained: str | None = None):
        """The library's model choice for this dataset, remembered until the catalog changes."""
        from ..embed.choice import resolve_spec

        stamp, key = self.catalog_stamp(), (model, pretrained)
        hit = self.specs.get(key)
        if hit is None or hit[0] != stamp:
            hit = (stamp, resolve_spec(self.paths, model, pretrained, embedded_only=True))
            self.specs[key] = hit
        return hit[1]

    def searcher(self, model: str | None = None, pretrained: str | None = None, raw: bool = False):
        """A Searcher loaded from the current files (a new one when any of them changed), at the
        index's default effort (see `effort`)."""
        from ..query.search import Searcher

        spec = self.spec(model, pretrained)
        key, stamp = (spec.key, raw), (self.catalog_stamp(), self.model_stamp(spec.key))
        hit = self.searchers.get(key)
        if hit is not None and hit[0] == stamp:
            self.searchers.move_to_end(key)
            shared = self.encoders.get(spec.key)
            if hit[1].loaded_encoder is None and shared is not None:  # loaded since, for another dataset
                hit[1].use_encoder(shared)
            return hit[1]
        # the loaded model is kept across reloads, and shared with other datasets of the model
        searcher = Searcher(self.paths, spec, raw=raw, device=self.device, encoder=self.encoders.get(spec.key))
        self.searchers[key] = (stamp, searcher)
        self.searchers.move_to_end(key)
        if hit is not None:  # requests run one at a time on the engine thread: none holds the old one
            hit[1].close()
            self.reloads += 1
            log.info("%s: reloaded (catalog, index or metric changed)", self.paths.name)
        while len(self.searchers) > SEARCHERS_PER_DATASET:
            self.searchers.popitem(last=False)[1][1].close()
        return searcher

    def keep_encoder(self, searcher) -> None:
        """Remember a searcher's query encoder once it has loaded one (and hold torch to our threads:
        loading a model sets torch to every core)."""
        encoder = searcher.loaded_encoder
        if encoder is not None:
            self.encoders.setdefault(searcher.model_key, encoder)
        torch = sys.modules.get("torch")
        if self.threads and torch is not None and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)

    def cached_value(self, name: str, stamp: tuple, make):
        """A derived value (item list, vectors, projection) remembered while `stamp` holds."""
        hit = self.cached.get(name)
        if hit is None or hit[0] != stamp:
            hit = (stamp, make())
            self.cached[name] = hit
        return hit[1]

    def summary(self) -> dict:
        """What /health shows: the model and index of the warm searcher, from the sidecar."""
        from ..index.load import index_meta

        out = {"name": self.paths.name, "loaded": bool(self.searchers), "reloads": self.reloads, "models": []}
        for (key, raw), (_, searcher) in list(self.searchers.items()):  # a snapshot: the engine may change it
            index = index_meta(self.paths, key) or {}
            out["models"].append({"model_key": key, "raw": raw,
                                  "metric": searcher.metric.kind, "encoder_loaded": key in self.encoders,
                                  "index": {"kind": index.get("kind"), "count": index.get("count"),
                                            "space": index.get("space")} if index else None})
        return out


@contextmanager
def effort(searchers, value: int | None):
    """Search effort (HNSW efSearch, IVF nprobe) for one request: the searchers' loaded indexes are
    tuned to `value`, then set back to their defaults. Safe because requests run one at a time on
    the engine thread; a new value costs nothing (no index is reloaded)."""
    from ..index.load import tune

    loaded = [s.index for s in searchers if s.index is not None] if value is not None else []
    try:
        for index in loaded:
            tune(index.index, index.meta, value)
        yield
    finally:
        for index in loaded:
            tune(index.index, index.meta, None)


def limit_threads(threads: int | None) -> None:
    """FAISS (OpenMP) threads of the engine thread (None: leave them). Queries run one at a time, and on
    a busy machine OpenMP spin-waits cost more than extra threads gain: a ViT-B-32 text query took
    ~0.8 s of CPU with 2 threads, ~0.15 s with 1, on a loaded 2-core machine. Torch: keep_encoder."""
    if not threads:
        return
    try:
        import faiss
    except ImportError:
        return
    faiss.omp_set_num_threads(threads)


class ServerState:
    """Everything the app keeps between requests."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self.started = time.monotonic()
        self.engine = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stylesearch-engine",
                                         initializer=limit_threads, initargs=(config.threads,))
        self.pending = 0
        self.datasets: dict[str, DatasetState] = {}
        self.encoders: dict[str, object] = {}  # model key -> query encoder, shared by every dataset
        self.label_sessions: OrderedDict[tuple[str, str], tuple[tuple, object]] = OrderedDict()
        self.triplets_lock = threading.Lock()  # one append at a time to any judgments log
        self.warming = False  # datasets still being loaded at start-up (/health: not ready)

    def served_names(self) -> list[str]:
        return sorted(self.config.datasets) or list_dataset_names(self.config.root)

    def dataset(self, name: str) -> DatasetState:
        """The state of a served dataset (DatasetNotFound for others)."""
        check_dataset_name(name)
        if self.config.datasets and name not in self.config.datasets:
            raise DatasetNotFound(f"Dataset {name!r} is not served here.",
                                  f"Served datasets: {', '.join(self.config.datasets)}.", dataset=name)
        state = self.datasets.get(name)
        if state is None or not state.paths.catalog.exists():
            state = DatasetState(existing_dataset(name, self.config.root), self.config.device, self.config.threads,
                                 self.encoders)
            self.datasets[name] = state
        return state

    async def run(self, fn, *args):
        """Run a library call on the engine thread; refuse when too many are waiting."""
        if self.pending >= self.config.max_queue:
            raise Overloaded(f"The server is busy ({self.pending} requests waiting).", "Retry in a moment.")
        self.pending += 1
        try:
            return await asyncio.wrap_future(self.engine.submit(fn, *args))
        finally:
            self.pending -= 1

    def start_warm_up(self) -> None:
        """Load the served datasets in the background; /health says ready once they are loaded."""
        self.warming = True
        self.engine.submit(self.warm_up)

    @property
    def ready(self) -> bool:
        return not self.warming

    def warm_up(self) -> None:
        """Load each served dataset's index and query model, its image tower included (on the engine
        thread, at start-up): the ONNX export's when there is one, else torch's model."""
        try:
            self._warm_datasets()
        finally:
            self.warming = False

    def _warm_datasets(self) -> None:
        for name in self.served_names():
            try:
                state = self.dataset(name)
                searcher = state.searcher()
                started = time.monotonic()
                probe = searcher.encoder.encode_text(["warm-up"])[0]
                searcher.search_vector(probe, 1)  # reads the index in: the first query's search is quick too
                warm_image = getattr(searcher.encoder, "warm_image", None)  # a stand-in encoder may lack it
                images = warm_image() if warm_image else "not warmed"
                state.keep_encoder(searcher)
                log.info("%s: model %s ready, image queries by %s (%.1f s)", name, searcher.model_key, images,
                         time.monotonic() - started)
            except Exception as exc:  # a dataset that cannot be warmed still answers what it can
                log.warning("dataset %s not warmed up: %s", name, getattr(exc, "message", exc))

    def close(self) -> None:
        self.engine.shutdown(wait=False, cancel_futures=True)
