"""FAISS indexes (flat, HNSW, IVF, IVF-PQ), written atomically, in the space searches rank in.

Without a learned metric the index holds the unit vectors and ranks by inner product (cosine).
With one, it holds the metric's Euclidean embedding (Metric.to_euclidean) and ranks by L2, so
search under the learned metric is exact search in that space, not a rerank of raw candidates.
The sidecar records the space (`raw`, or the metric's kind and version); a search whose space
differs from the index's falls back to exact search until the index is rebuilt.

Layout per model: index/<model_key>/index.json (sidecar, replaced last) naming the
`index-<stamp>.faiss` and `members-<stamp>.npz` files it belongs to, so a reader never
sees a half-written index, and readers holding the old files keep working.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

import numpy as np

from .catalog import open_catalog
from .choices import INDEX_KINDS
from .errors import NotReady, UserError
from .metric import Metric, load_metric
from .progress import Progress, or_null
from .storage import DatasetPaths, atomic_path, atomic_write_json, now_iso, read_json, remove_stale_temp_files, writer_lock

KINDS = INDEX_KINDS
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 100, 256
IVF_NPROBE = 16
RAW_SPACE = "raw"


def choose_kind(count: int) -> str:
    """Like autofaiss: exact search while it is cheap, graph for medium, inverted lists for large."""
    if count < 200_000:  # exact search stays under ~40 ms/query on 2 cores at 512 dims
        return "flat"
    if count < 2_000_000:
        return "hnsw"
    return "ivf" if count < 10_000_000 else "ivfpq"


def _hash_keys(hashes) -> np.ndarray:
    return np.array([h[:16] for h in hashes], dtype="S16")


def metric_space(metric: Metric) -> str:
    """The name of the space an index for `metric` lives in."""
    return f"{metric.kind}:{metric.version}" if metric.learned else RAW_SPACE


def new_index(kind: str, dim: int, train: np.ndarray, l2: bool = False):
    """An empty FAISS index of a kind: inner product on unit vectors, or L2 in a metric's space."""
    import faiss

    metric = faiss.METRIC_L2 if l2 else faiss.METRIC_INNER_PRODUCT
    if kind == "flat":
        base = faiss.IndexFlatL2(dim) if l2 else faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        base = faiss.IndexHNSWFlat(dim, HNSW_M, metric)
        base.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    else:
        nlist = int(min(max(1, 4 * math.sqrt(len(train))), max(1, len(train) // 39)))
        quantizer = faiss.IndexFlatL2(dim) if l2 else faiss.IndexFlatIP(dim)
        if kind == "ivf":
            base = faiss.IndexIVFFlat(quantizer, dim, nlist, metric)
        else:
            m = next(m for m in (64, 32, 16, 8, 4, 2, 1) if dim % m == 0)
            base = faiss.IndexIVFPQ(quantizer, dim, nlist, m, 8, metric)
        sample = train[np.random.default_rng(0).permutation(len(train))[: 256 * nlist]]
        base.train(np.ascontiguousarray(sample))
    return faiss.IndexIDMap2(base)


def tune(index, kind: str, effort: int | None = None) -> None:
    """Search effort: HNSW efSearch or IVF nprobe (higher = better recall, slower)."""
    import faiss

    base = faiss.downcast_index(index.index)
    if kind == "hnsw":
        base.hnsw.efSearch = max(1, effort or HNSW_EF_SEARCH)
    elif kind in ("ivf", "ivfpq"):
        base.nprobe = max(1, min(effort or IVF_NPROBE, base.nlist))


@dataclass
class LoadedIndex:
    index: object
    meta: dict
    _order: tuple | None = None  # (positions sorted by id, sorted ids), computed on first use

    @property
    def space(self) -> str:
        return self.meta.get("space", RAW_SPACE)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the k best rows per query; scores are 1 - d^2/2 in a metric's space."""
        k = max(1, min(k, self.index.ntotal))
        scores, ids = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return (scores if self.space == RAW_SPACE else 1.0 - 0.5 * scores), ids

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors for item ids in the index (exact for flat/HNSW/IVF, approximate for IVF-PQ)."""
        if not len(ids):
            return np.zeros((0, self.index.d), dtype=np.float32)
        if self.is_flat:  # one vectorised gather instead of a call per id
            return self._flat_rows()[self._positions(np.asarray(ids, dtype=np.int64))]
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


def load_index(paths: DatasetPaths, model_key: str, effort: int | None = None) -> LoadedIndex | None:
    """The current index of a model, or None if none was built. Retries once if swapped mid-read."""
    import faiss

    for _ in range(2):
        meta = read_json(paths.index_sidecar(model_key))
        if meta is None:
            return None
        try:
            index = faiss.read_index(str(paths.index_dir(model_key) / meta["file"]))
        except RuntimeError:
            continue
        if meta["kind"] in ("ivf", "ivfpq"):
            faiss.extract_index_ivf(index.index).make_direct_map()
        tune(index, meta["kind"], effort)
        return LoadedIndex(index, meta)
    raise NotReady(f"Index of {model_key} could not be read.", "Build the index again.", dataset=paths.name,
                   step="index")


def build_index(paths: DatasetPaths, model_key: str, kind: str = "auto", full: bool = False,
                progress: Progress | None = None, lock: bool = True, raw: bool = False) -> dict:
    """Build or update the index of one model; returns the sidecar metadata.

    The index lives in the learned metric's space when one is trained (unless `raw`).
    New vectors are added to the existing index when its kind and space allow; changed or
    deleted items are removed where the kind supports removal, else the index is rebuilt.
    """
    if kind not in KINDS:
        raise UserError(f"Unknown index kind {kind!r}.", f"Choose one of: {', '.join(KINDS)}.")
    guard = writer_lock(paths) if lock else contextlib.nullcontext()
    with guard:
        with open_catalog(paths, readonly=True) as catalog:
            model = catalog.model(model_key)
            ids, hashes, vectors = catalog.load_vectors_with_hashes(model_key)
        if model is None or not len(ids):
            raise NotReady(f"No embeddings for model {model_key} in {paths.name!r}.",
                           "Embed the dataset first.", dataset=paths.name, step="embed")
        metric = load_metric(paths, model_key, raw=raw, dim=int(model["dim"]))
        target = Target(choose_kind(len(ids)) if kind == "auto" else kind, metric_space(metric))
        if metric.learned:
            vectors = np.ascontiguousarray(metric.to_euclidean(vectors), dtype=np.float32)
        return _write(paths, model, ids, _hash_keys(hashes), vectors, target, full, or_null(progress))


@dataclass(frozen=True)
class Target:
    """What to build: the index kind and the space it lives in."""

    kind: str
    space: str

    @property
    def l2(self) -> bool:
        return self.space != RAW_SPACE


def _incremental_plan(paths: DatasetPaths, model_key: str, target: Target, ids, keys):
    """(existing index, mask of rows to add, ids to remove or None, old members), or None for a full build."""
    old = load_index(paths, model_key)
    kind = target.kind
    if old is None or old.meta["kind"] != kind or old.space != target.space:
        return None
    members = np.load(paths.index_dir(model_key) / old.meta["members"])
    old_pairs = set(zip(members["ids"].tolist(), members["keys"].tolist()))
    new_pairs = set(zip(ids.tolist(), keys.tolist()))
    stale = old_pairs - new_pairs
    to_add = np.array([(i, k) not in old_pairs for i, k in zip(ids.tolist(), keys.tolist())], dtype=bool)
    changed = {i for i, _ in stale} & {int(i) for i in ids[to_add]}
    if len(stale) > 0.2 * max(1, len(old_pairs)) or (kind == "hnsw" and changed):
        return None
    removable = kind != "hnsw"
    return old, to_add, np.array(sorted(i for i, _ in stale), dtype=np.int64) if removable else None, members


def _write(paths, model, ids, keys, vectors, target: Target, full, progress) -> dict:
    key = model["model_key"]
    plan = None if full else _incremental_plan(paths, key, target, ids, keys)
    progress.start(f"indexing ({target.kind})", len(ids))
    if plan is None:
        index = new_index(target.kind, vectors.shape[1], vectors, target.l2)
        _add(index, ids, vectors, progress)
        member_ids, member_keys, mode = ids, keys, "full"
    else:
        old, to_add, remove, members = plan
        index = old.index
        if remove is not None and len(remove):
            index.remove_ids(remove)
        _add(index, ids[to_add], vectors[to_add], progress)
        keep = ~np.isin(members["ids"], remove) if remove is not None else np.ones(len(members["ids"]), bool)
        member_ids = np.concatenate([members["ids"][keep], ids[to_add]])
        member_keys = np.concatenate([members["keys"][keep], keys[to_add]])
        mode = f"incremental (+{int(to_add.sum())})"
    progress.finish()
    return _save(paths, model, index, member_ids, member_keys, target, mode)


def _add(index, ids, vectors, progress, chunk: int = 20_000) -> None:
    for start in range(0, len(ids), chunk):
        index.add_with_ids(np.ascontiguousarray(vectors[start:start + chunk]), ids[start:start + chunk])
        progress.advance(len(ids[start:start + chunk]))


def _save(paths, model, index, member_ids, member_keys, target: Target, mode) -> dict:
    import faiss

    folder = paths.index_dir(model["model_key"])
    stamp = now_iso().replace(":", "").replace("-", "").split("+")[0] + f"-{time.monotonic_ns() % 10**6:06d}"
    index_name, members_name = paths.index_version_names(stamp)
    with atomic_path(folder / index_name) as tmp:
        faiss.write_index(index, str(tmp))
    with atomic_path(folder / members_name, suffix=".npz") as tmp:
        np.savez(tmp, ids=member_ids, keys=member_keys)
    meta = {
        "model_key": model["model_key"], "model": model["model_name"], "pretrained": model["pretrained"],
        "dim": int(model["dim"]), "kind": target.kind, "space": target.space, "count": int(index.ntotal),
        "mode": mode,
        "built_at": now_iso(), "file": index_name, "members": members_name,
    }
    atomic_write_json(paths.index_sidecar(model["model_key"]), meta)
    _remove_unnamed_versions(paths, folder, {index_name, members_name})
    return meta


def _remove_unnamed_versions(paths: DatasetPaths, folder, keep: set[str]) -> None:
    """Delete index versions the sidecar no longer names (older builds, or ones a crash left behind)
    and temp files of interrupted writes. Readers holding an old file open keep reading it."""
    for file in folder.iterdir():
        if paths.is_index_version_name(file.name) and file.name not in keep:
            file.unlink(missing_ok=True)
    remove_stale_temp_files(folder)


def check_recall(paths: DatasetPaths, model_key: str, sample: int = 200, k: int = 10, seed: int = 0) -> float:
    """recall@k of the stored index against exact search in the index's space, on sampled queries."""
    loaded = load_index(paths, model_key)
    if loaded is None:
        raise NotReady(f"No index for {model_key}.", "Build the index first.", dataset=paths.name, step="index")
    with open_catalog(paths, readonly=True) as catalog:
        ids, vectors = catalog.load_vectors(model_key)
    if loaded.space != RAW_SPACE:
        metric = load_metric(paths, model_key, dim=vectors.shape[1])
        if metric_space(metric) != loaded.space:
            raise NotReady("The index was built for another version of the learned metric.",
                           "Build the index again.", dataset=paths.name, step="index")
        vectors = np.ascontiguousarray(metric.to_euclidean(vectors), dtype=np.float32)
    return recall_at_k(loaded, ids, vectors, sample, k, seed)


def recall_at_k(loaded: LoadedIndex, ids: np.ndarray, vectors: np.ndarray, sample: int = 200, k: int = 10,
                seed: int = 0) -> float:
    """Share of the exact k nearest (inner product, or L2 in a metric's space) that the index finds."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(ids), size=min(sample, len(ids)), replace=False)
    queries = vectors[pick]
    scores = queries @ vectors.T
    if loaded.space != RAW_SPACE:  # nearest by L2: largest 2 q.v - |v|^2
        scores = 2 * scores - np.einsum("ij,ij->i", vectors, vectors)[None, :]
    exact = ids[np.argsort(-scores, axis=1)[:, :k]]
    _, found = loaded.search(queries, k)
    hits = sum(len(set(e) & set(f)) for e, f in zip(exact.tolist(), found.tolist()))
    return hits / float(exact.size)
