"""FAISS indexes (flat, HNSW, IVF, IVF-PQ), written atomically, in the space searches rank in.

Without a learned metric the index holds the unit vectors and ranks by inner product (cosine).
With one, it holds the metric's Euclidean embedding (Metric.to_euclidean) and ranks by L2, so
search under the learned metric is exact search in that space, not a rerank of raw candidates.
The sidecar records the space (`raw`, or the metric's kind and version); a search whose space
differs from the index's falls back to exact search until the index is rebuilt.

Layout per model: index/<model_key>/index.json (sidecar, replaced last) naming the
`index-<stamp>.faiss` and `members-<stamp>.npz` files it belongs to, so a reader never
sees a half-written index, and readers holding the old files keep working. Damaged files (a
sidecar that is not the JSON this code writes, an unreadable `.faiss`) make `read_index` raise
IndexDamaged; searches then run exactly with a warning (`load_index`), and the next build
replaces the index in full. Quantised kinds also name a `refine-<stamp>.npy` store (refine.py):
searches fetch REFINE_FACTOR x k candidates and re-rank them with it; an index without one (built
before it existed, or its store missing) searches on its codes alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..choices import INDEX_KINDS
from ..errors import CatalogError, NotReady
from ..learn.metric import Metric, load_metric, similarity
from ..store.catalog import open_catalog
from ..store.files import read_json_or_none
from ..store.paths import DatasetPaths
from .refine import REFINE_FACTOR, open_store, rerank

log = logging.getLogger(__name__)

KINDS = INDEX_KINDS
IVF_KINDS = ("ivf", "ivfsq", "ivfpq")
HNSW_EF_SEARCH = 256
IVF_NPROBE = 16
RAW_SPACE = "raw"


def metric_space(metric: Metric) -> str:
    """The name of the space an index for `metric` lives in."""
    return f"{metric.kind}:{metric.version}" if metric.learned else RAW_SPACE


def tune(index, meta: dict, effort: int | None = None) -> None:
    """Search effort: HNSW efSearch or IVF nprobe (higher = better recall, slower)."""
    import faiss

    kind = meta["kind"]
    if kind == "hnsw":
        faiss.downcast_index(index.index).hnsw.efSearch = max(1, effort or HNSW_EF_SEARCH)
    elif kind in IVF_KINDS:
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = max(1, min(effort or meta.get("nprobe") or IVF_NPROBE, ivf.nlist))
        quantizer = faiss.downcast_index(ivf.quantizer)
        if hasattr(quantizer, "hnsw"):  # IVF-HNSW: the coarse search must see at least nprobe lists
            quantizer.hnsw.efSearch = max(64, 2 * ivf.nprobe)
        lists = faiss.downcast_InvertedLists(ivf.invlists)
        if hasattr(lists, "prefetch_nthread"):  # memory-mapped lists (_read_flags): the page cache serves
            lists.prefetch_nthread = 0  # them; FAISS's 32 prefetch threads per search cost ~3 ms a query


def split_probes(index, n_queries: int) -> None:
    """IVF: with fewer queries than threads, each query's probed lists are scanned by all threads (FAISS
    parallel_mode 1; 1.7x faster single queries on 2 cores); a larger batch gives each thread whole
    queries (parallel_mode 0). Other kinds are left alone."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.parallel_mode = 1 if n_queries < faiss.omp_get_max_threads() else 0


@dataclass
class LoadedIndex:
    index: object
    meta: dict
    refine: np.ndarray | None = None  # float16 rows by position (refine.py), for quantised kinds
    refine_factor: int = REFINE_FACTOR
    _order: tuple | None = None  # (positions sorted by id, sorted ids), computed on first use
    _direct_map: bool = False

    @property
    def space(self) -> str:
        return self.meta.get("space", RAW_SPACE)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the k best rows per query; scores are 1 - d^2/2 in a metric's space.
        With a refine store, refine_factor x k candidates are re-ranked by their float16 copies."""
        k = max(1, min(k, self.index.ntotal))
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.refine is not None and self.refine_factor > 1:
            return self._refined_search(queries, k)
        split_probes(self.index, len(queries))
        scores, ids = self.index.search(queries, k)
        return (scores if self.space == RAW_SPACE else similarity(scores)), ids

    def _refined_search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        fetch = min(k * self.refine_factor, self.index.ntotal)
        split_probes(self.index, len(queries))
        _, positions = self.index.index.search(queries, fetch)  # the inner index answers with positions
        scores, positions = rerank(self.refine, queries, positions, k, l2=self.space != RAW_SPACE)
        ids = np.where(positions >= 0, self._id_map()[np.maximum(positions, 0)], -1)
        return (scores if self.space == RAW_SPACE else similarity(-scores)), ids

    def _id_map(self) -> np.ndarray:
        """Item id by position in the index (a view of IndexIDMap2's map, no copy)."""
        import faiss

        id_map = self.index.id_map
        return faiss.rev_swig_ptr(id_map.data(), id_map.size())

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors for item ids in the index (exact for flat/HNSW/IVF, approximate for IVF-PQ)."""
        if not len(ids):
            return np.zeros((0, self.index.d), dtype=np.float32)
        if self.is_flat:  # one vectorised gather instead of a call per id
            return self._flat_rows()[self._positions(np.asarray(ids, dtype=np.int64))]
        if self.meta.get("kind") in IVF_KINDS and not self._direct_map:
            import faiss

            faiss.extract_index_ivf(self.index).make_direct_map()  # only when vectors are asked for
            self._direct_map = True
        return np.stack([self.index.reconstruct(int(i)) for i in ids])

    @property
    def is_flat(self) -> bool:
        return self.meta.get("kind") == "flat"

    def gather(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(those of `ids` that are in the index, their stored vectors): fast for flat indexes."""
        ids = np.asarray(ids, dtype=np.int64)
        order, sorted_ids = self._id_order()
        pos = np.minimum(np.searchsorted(sorted_ids, ids), max(0, len(sorted_ids) - 1))
        present = ids[sorted_ids[pos] == ids] if len(sorted_ids) else ids[:0]
        return present, self.vectors(present)

    def _positions(self, ids: np.ndarray) -> np.ndarray:
        order, sorted_ids = self._id_order()
        return order[np.searchsorted(sorted_ids, ids)]

    def _id_order(self) -> tuple[np.ndarray, np.ndarray]:
        if self._order is None:
            import faiss

            id_map = faiss.vector_to_array(self.index.id_map)
            order = np.argsort(id_map, kind="stable")
            self._order = (order, id_map[order])
        return self._order

    def _flat_rows(self) -> np.ndarray:
        """The flat index's vectors as a numpy view (no copy)."""
        import faiss

        base = faiss.downcast_index(self.index.index)
        return faiss.rev_swig_ptr(base.get_xb(), base.ntotal * base.d).reshape(base.ntotal, base.d)


def _read_flags(kind: str) -> int:
    """Memory-map what FAISS can map (inverted lists, flat codes): a cold query reads only the pages
    it touches, not the whole index."""
    import faiss

    if kind in IVF_KINDS:
        return faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY
    return faiss.IO_FLAG_MMAP_IFC if kind == "flat" else 0


class IndexDamaged(CatalogError):
    """The index files of a model are damaged; the catalog is not, so building the index again mends it."""


def index_meta(paths: DatasetPaths, model_key: str) -> dict | None:
    """The sidecar of a model's index as written by a build; None when it is missing or damaged."""
    meta = read_json_or_none(paths.index_sidecar(model_key))
    return meta if isinstance(meta, dict) and _sidecar_problem(paths, meta) is None else None


def _sidecar_problem(paths: DatasetPaths, meta) -> str | None:
    """Why a sidecar cannot be what a build wrote, or None."""
    if meta is None:
        return "is not readable JSON"
    if not isinstance(meta, dict):
        return "is not a JSON object"
    if meta.get("kind") not in KINDS or not isinstance(meta.get("space", RAW_SPACE), str):
        return "names no known index kind and space"
    names = (meta.get("file"), meta.get("members"))
    if not all(paths.is_index_version_name(n) for n in names):
        return "names no index files of this folder"
    if not isinstance(meta.get("nprobe") or 0, int):
        return "has a search effort that is not a number"
    if "refine" in meta and not paths.is_refine_store_name(meta["refine"]):
        return "names no refine store of this folder"
    return None


def _damaged(paths: DatasetPaths, model_key: str, what: str) -> IndexDamaged:
    return IndexDamaged(f"The index of {model_key} in dataset {paths.name!r} is damaged: {what}.",
                        "Build the index again; the catalog is intact.", dataset=paths.name, step="index")


def read_index(paths: DatasetPaths, model_key: str, effort: int | None = None,
               writable: bool = False) -> LoadedIndex | None:
    """The current index of a model, or None if none was built; IndexDamaged when its files are damaged.
    Retries once if swapped mid-read."""
    import faiss

    sidecar = paths.index_sidecar(model_key)
    for _ in range(2):
        if not sidecar.exists():
            return None
        meta = read_json_or_none(sidecar)
        problem = _sidecar_problem(paths, meta)
        if problem:
            raise _damaged(paths, model_key, f"{sidecar} {problem}")
        file = paths.index_dir(model_key) / meta["file"]
        try:
            index = faiss.read_index(str(file), 0 if writable else _read_flags(meta["kind"]))
            if not hasattr(index, "id_map"):
                raise _damaged(paths, model_key, f"{file} is not an index this code writes")
            tune(index, meta, effort)
        except (RuntimeError, AttributeError, TypeError):  # swapped by a new build meanwhile, or damaged
            continue
        return LoadedIndex(index, meta, _refine_store(paths, model_key, meta, index))
    raise _damaged(paths, model_key, f"{file} cannot be read")


def _refine_store(paths: DatasetPaths, model_key: str, meta: dict, index) -> np.ndarray | None:
    """The index's refine store, memory-mapped; None when it has none, or (with a warning) a damaged one."""
    if "refine" not in meta:
        return None
    store = open_store(paths.index_dir(model_key) / meta["refine"], index.ntotal, index.d)
    if store is None:
        log.warning("The refine store of the %s index is missing or damaged; searching its codes alone "
                    "(lower recall) until the index is built again.", model_key)
    return store


def load_index(paths: DatasetPaths, model_key: str, effort: int | None = None,
               writable: bool = False) -> LoadedIndex | None:
    """The current index of a model for searching: None if none was built, or (with a warning) when its
    files are damaged, so searches run exactly until the next build replaces it."""
    try:
        return read_index(paths, model_key, effort, writable)
    except IndexDamaged as exc:
        log.warning("%s Searching exactly (slower) until the index is built again.", exc.message)
        return None


def check_recall(paths: DatasetPaths, model_key: str, sample: int = 200, k: int = 10, seed: int = 0) -> float:
    """recall@k of the stored index against exact search in the index's space, on sampled queries.

    The exact neighbours are found by streaming the catalog's vectors in chunks (memory stays bounded)."""
    loaded = read_index(paths, model_key)
    if loaded is None:
        raise NotReady(f"No index for {model_key}.", "Build the index first.", dataset=paths.name, step="index")
    with open_catalog(paths, readonly=True) as catalog:
        model = catalog.vectors.model(model_key)
        metric = load_metric(paths, model_key, raw=loaded.space == RAW_SPACE, dim=int(model["dim"]))
        if metric_space(metric) != loaded.space:
            raise NotReady("The index was built for another version of the learned metric.",
                           "Build the index again.", dataset=paths.name, step="index")
        queries = _space(metric, catalog.vectors.sample(model_key, sample, seed))
        exact = _exact_top(queries, ((ids, _space(metric, v)) for ids, v in catalog.vectors.iterate(model_key)),
                           k, loaded.space)
    return _recall(loaded, queries, exact)


def _exact_top(queries: np.ndarray, chunks, k: int, space: str) -> np.ndarray:
    """Ids of the exact k nearest per query, over (ids, vectors) chunks (memory: one chunk)."""
    best_ids = np.full((len(queries), k), -1, dtype=np.int64)
    best = np.full((len(queries), k), -np.inf, dtype=np.float32)
    for ids, vectors in chunks:
        scores = _exact_scores(queries, vectors, space)
        merged = np.concatenate([best, scores], axis=1)
        merged_ids = np.concatenate([best_ids, np.broadcast_to(ids, scores.shape)], axis=1)
        top = np.argsort(-merged, axis=1)[:, :k]
        best, best_ids = np.take_along_axis(merged, top, 1), np.take_along_axis(merged_ids, top, 1)
    return best_ids


def _recall(loaded: LoadedIndex, queries: np.ndarray, exact: np.ndarray) -> float:
    """Share of the exact neighbours the index finds for the queries."""
    _, found = loaded.search(queries, exact.shape[1])
    return sum(len(set(e) & set(f)) for e, f in zip(exact.tolist(), found.tolist())) / float(exact.size)


def _space(metric: Metric, vectors: np.ndarray) -> np.ndarray:
    """Vectors in the index's space (the metric's Euclidean space, or raw), contiguous float32 for FAISS."""
    return np.ascontiguousarray(metric.to_euclidean(vectors) if metric.learned else vectors, dtype=np.float32)


def _exact_scores(queries: np.ndarray, vectors: np.ndarray, space: str) -> np.ndarray:
    """Higher is nearer: inner product in the raw space, 2 q.v - |v|^2 (L2 order) in a metric's space."""
    scores = queries @ vectors.T
    if space != RAW_SPACE:
        scores = 2 * scores - np.einsum("ij,ij->i", vectors, vectors)[None, :]
    return scores


def recall_at_k(loaded: LoadedIndex, ids: np.ndarray, vectors: np.ndarray, sample: int = 200, k: int = 10,
                seed: int = 0) -> float:
    """Share of the exact k nearest (inner product, or L2 in a metric's space) that the index finds."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(ids), size=min(sample, len(ids)), replace=False)
    queries = vectors[pick]
    return _recall(loaded, queries, _exact_top(queries, [(ids, vectors)], k, loaded.space))
