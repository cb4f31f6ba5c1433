"""Reproducible UMAP on every core (projection.py's seeded path).

umap-learn makes a seeded run reproducible by running it on one thread (`random_state` sets n_jobs=1):
its NN-descent k-NN search and its layout SGD (lock-free updates racing between threads) are only
deterministic single-threaded. Here both are replaced by steps that are deterministic on any number
of threads, and umap-learn keeps the rest (fuzzy graph, a/b curve fit, the single-component spectral
initialisation):

- the k-NN graph comes from FAISS (each query's answer is its own), given to umap-learn as
  `precomputed_knn` (its `nearest_neighbors` format: self first, Euclidean distances): exact up to
  EXACT_KNN_LIMIT rows, above from an IVF index with seeded training whose recall is checked against
  the exact answer on a seeded sample (knn_graph);
- a graph of many connected components (one per tight cluster) is initialised by umap-learn's own
  method in whole-array steps (spectral_init): umap-learn's version costs O(n x components);
- the layout moves each point by its own edges and its own negative samples, reading the other end
  of every edge from the positions at the start of the epoch: points are independent within an epoch,
  so threads split them with no race and the result does not depend on the thread count. Each edge
  pulls only its own head point, so the pull is doubled to keep umap-learn's balance (its symmetric
  graph has both directions of an edge, and each direction moves both ends).
"""

from __future__ import annotations

import numba
import numpy as np
import umap
from umap.umap_ import make_epochs_per_sample, noisy_scale_coords
from umap.utils import tau_rand_int

from ..cores import available_cores

EXACT_KNN_LIMIT = 20_000  # up to this many rows the k-NN search is exact (brute force, BLAS)
KNN_RECALL = 0.98  # above it an IVF index (seeded training) must find this share of the true neighbours
NPROBES = (8, 16, 32)  # of sqrt(n) lists, tried in turn on a sample; if none is enough the search is exact
RECALL_SAMPLE = 1000


def knn_graph(data: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, Euclidean distances) of each row's k nearest rows, itself first: exact up to
    EXACT_KNN_LIMIT rows, above from an IVF index probing the fewest lists that find KNN_RECALL of the
    exact neighbours of a seeded sample of rows (exact if no NPROBES entry does). Every step is seeded and
    each query's answer its own, so the graph is the same on every run."""
    import faiss

    data = np.ascontiguousarray(data, dtype=np.float32)
    n, dim = data.shape
    index = faiss.IndexFlatL2(dim)
    index.add(data)
    if n > EXACT_KNN_LIMIT:
        index = ivf_index(data, index, k, seed) or index
    dist2, idx = index.search(data, k)
    self_first(idx, dist2)
    return idx.astype(np.int32), np.sqrt(np.maximum(dist2, 0)).astype(np.float32)


def ivf_index(data: np.ndarray, exact, k: int, seed: int):
    """An IVF-Flat index of `data` (sqrt(n) lists, k-means seeded) set to the smallest nprobe in NPROBES
    whose recall@k on RECALL_SAMPLE seeded rows reaches KNN_RECALL against `exact`; None if none does."""
    import faiss

    n, dim = data.shape
    nlist = int(np.sqrt(n))
    rng = np.random.default_rng(seed)
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, nlist)
    index.cp.seed, index.cp.niter = seed, 10
    index.train(data[rng.choice(n, min(n, nlist * 64), replace=False)])
    index.add(data)
    sample = data[rng.choice(n, min(n, RECALL_SAMPLE), replace=False)]
    truth = exact.search(sample, k)[1]
    for nprobe in NPROBES:
        index.nprobe = nprobe
        found = index.search(sample, k)[1]
        if knn_recall(truth, found) >= KNN_RECALL:
            return index
    return None


def knn_recall(truth: np.ndarray, found: np.ndarray) -> float:
    """The share of each row of `truth` (neighbour ids) that `found` has in the same row."""
    hits = (found[:, :, None] == truth[:, None, :]).any(axis=1)
    return float(hits.mean())


def self_first(idx: np.ndarray, dist2: np.ndarray) -> None:
    """Put each row itself at column 0 (exact duplicates may have come first), as umap-learn expects."""
    rows = np.arange(len(idx))
    wrong = np.flatnonzero(idx[:, 0] != rows)
    for r in wrong:
        where = np.flatnonzero(idx[r] == r)
        col = where[0] if len(where) else idx.shape[1] - 1
        idx[r, 1:col + 1], dist2[r, 1:col + 1] = idx[r, :col].copy(), dist2[r, :col].copy()
        idx[r, 0], dist2[r, 0] = r, 0.0


class ReproducibleUMAP(umap.UMAP):
    """umap.UMAP whose seeded layout runs on all cores, deterministically (module docstring)."""

    def _fit_embed_data(self, X, n_epochs, init, random_state, **kwargs):
        n_epochs = n_epochs or (500 if self.graph_.shape[0] <= 10000 else 200)
        graph = pruned(self.graph_, n_epochs)
        if isinstance(init, str) and init == "spectral":
            init = noisy_scale_coords(spectral_init(X, graph, self.n_components, random_state), random_state,
                                      max_coord=10, noise=0.0001)
        # umap-learn's own start from that initialisation (scaled to [0, 10]), with no epoch run
        start, aux = super()._fit_embed_data(X, 0, init, random_state, **kwargs)
        rng_state = random_state.randint(np.iinfo(np.int32).min, np.iinfo(np.int32).max, 3).astype(np.int64)
        threads = numba.get_num_threads()  # umap-learn set 1 for a seeded run
        numba.set_num_threads(available_cores())
        try:
            embedding = layout(start, graph, n_epochs, self._a, self._b, self.repulsion_strength,
                               self._initial_alpha, self.negative_sample_rate, rng_state)
        finally:
            numba.set_num_threads(threads)
        return embedding, aux


def pruned(graph, n_epochs: int):
    """The fuzzy graph (CSR) without the edges too weak to be sampled once in n_epochs (umap-learn's rule)."""
    graph = graph.tocoo(copy=True)
    graph.sum_duplicates()
    graph.data[graph.data < graph.data.max() / float(n_epochs)] = 0.0
    graph = graph.tocsr()
    graph.eliminate_zeros()
    return graph


DENSE_COMPONENT_LIMIT = 1000  # components up to this size get a dense eigendecomposition


def spectral_init(data: np.ndarray, graph, dim: int, random_state) -> np.ndarray:
    """umap-learn's spectral initialisation (umap.spectral.spectral_layout) of `graph` (CSR).

    One connected component: umap-learn's own. Several (one per tight cluster is common): the same
    method as umap-learn's multi_component_layout (components placed by a spectral embedding of their
    centroids, each laid out by its normalised Laplacian's eigenvectors and scaled to half the gap to
    its nearest neighbour component), computed in whole-array steps: umap-learn cuts every component
    out of the whole graph and measures centroid distances with a Python-called metric, O(n x
    components) and O(components^2) Python calls, which took half the seeded run at 50k points in
    2,000 clusters. Small components are solved densely (numpy's eigh) instead of by ARPACK."""
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial.distance import cdist
    from umap.spectral import spectral_layout

    count, labels = connected_components(graph, directed=False)
    if count == 1:
        return spectral_layout(data, graph, dim, random_state)
    order = np.argsort(labels, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=count))])
    places = component_places(data, labels, count, dim, random_state)
    gaps = cdist(places, places)
    gaps[gaps <= 0] = np.inf
    half_gaps = np.where(np.isfinite(gaps.min(axis=1)), gaps.min(axis=1) / 2.0, 1.0)  # 1: all places alike
    blocks = graph.tocsr()[order][:, order].tocsr()
    result = np.empty((len(labels), dim), dtype=np.float32)
    for c in range(count):
        start, end = bounds[c], bounds[c + 1]
        size = end - start
        if size < 2 * dim or size <= dim + 1:
            part = random_state.uniform(low=-half_gaps[c], high=half_gaps[c], size=(size, dim))
        else:
            part = component_layout(blocks[start:end, start:end], dim, random_state)
            part *= half_gaps[c] / np.abs(part).max()
        result[order[start:end]] = part + places[c]
    return result


def component_places(data: np.ndarray, labels: np.ndarray, count: int, dim: int, random_state) -> np.ndarray:
    """Where each component goes (umap.spectral.component_layout): a spectral embedding of the
    components' centroids under the affinity exp(-distance^2); for a few components, the corners."""
    from sklearn.manifold import SpectralEmbedding

    if count <= 2 * dim:
        k = int(np.ceil(count / 2.0))
        base = np.hstack([np.eye(k), np.zeros((k, dim - k))])
        return np.vstack([base, -base])[:count]
    sums = np.zeros((count, data.shape[1]))
    np.add.at(sums, labels, data)
    centroids = sums / np.bincount(labels, minlength=count)[:, None]
    squared = (centroids ** 2).sum(1)
    dist2 = np.maximum(squared[:, None] + squared[None, :] - 2.0 * centroids @ centroids.T, 0.0)
    np.fill_diagonal(dist2, 0.0)
    places = SpectralEmbedding(n_components=dim, affinity="precomputed",
                               random_state=random_state).fit_transform(np.exp(-dist2))
    return places / places.max()


def component_layout(block, dim: int, random_state) -> np.ndarray:
    """The eigenvectors 1..dim of one connected component's normalised Laplacian (umap-learn's
    _spectral_layout): dense for small components, umap-learn's ARPACK call for large ones."""
    from umap.spectral import _spectral_layout

    if block.shape[0] > DENSE_COMPONENT_LIMIT:
        return _spectral_layout(None, block.tocoo(), dim, random_state)
    weights = block.toarray()
    scale = 1.0 / np.sqrt(weights.sum(axis=0))
    laplacian = np.eye(len(weights)) - scale[:, None] * weights * scale[None, :]
    values, vectors = np.linalg.eigh(laplacian)
    return vectors[:, np.argsort(values, kind="stable")[1:dim + 1]]


def layout(embedding: np.ndarray, graph, n_epochs: int, a: float, b: float, gamma: float, initial_alpha: float,
           negative_sample_rate: float, rng_state: np.ndarray) -> np.ndarray:
    """UMAP's SGD over `graph` (CSR, rows = head points), epoch by epoch from `embedding`."""
    embedding = np.ascontiguousarray(embedding, dtype=np.float32)
    epochs_per_sample = make_epochs_per_sample(graph.data, n_epochs)
    epochs_per_negative_sample = epochs_per_sample / negative_sample_rate
    next_sample, next_negative = epochs_per_sample.copy(), epochs_per_negative_sample.copy()
    rng = rng_state[None, :] + embedding[:, 0].astype(np.float64).view(np.int64)[:, None]  # umap-learn's seeds
    indptr, tail = graph.indptr.astype(np.int64), graph.indices.astype(np.int64)
    alpha = initial_alpha
    for n in range(n_epochs):
        _epoch(embedding, embedding.copy(), indptr, tail, epochs_per_sample, next_sample,
               epochs_per_negative_sample, next_negative, rng, a, b, gamma, alpha, n)
        alpha = initial_alpha * (1.0 - n / n_epochs)
    return embedding


@numba.njit(parallel=True, fastmath=True, cache=True)
def _epoch(embedding, before, indptr, tail, epochs_per_sample, next_sample, epochs_per_negative_sample,
           next_negative, rng, a, b, gamma, alpha, n):
    """One epoch: each point moves by its own due edges and negative samples; others read from `before`.
    umap-learn's gradients, in float32 with one pow per force (a*d^b shared by both attraction terms)."""
    n_vertices, dim = embedding.shape
    a, b, alpha = np.float32(a), np.float32(b), np.float32(alpha)
    attract, repel = np.float32(-2.0 * b), np.float32(2.0 * gamma * b)  # -2ab d^(b-1) = -2b (a d^b) / d
    for j in numba.prange(n_vertices):
        current = embedding[j]
        for i in range(indptr[j], indptr[j + 1]):
            if next_sample[i] > n:
                continue
            other = before[tail[i]]
            dist_squared = _rdist32(current, other)
            if dist_squared > 0.0:
                power = a * pow(dist_squared, b)
                coeff = attract * power / (dist_squared * (power + np.float32(1.0)))
                _move(current, other, coeff, alpha + alpha)  # the pull doubled (module docstring)
            next_sample[i] += epochs_per_sample[i]
            n_negative = int((n - next_negative[i]) / epochs_per_negative_sample[i])
            for _ in range(n_negative):
                k = tau_rand_int(rng[j]) % n_vertices
                if k == j:
                    continue
                other = before[k]
                dist_squared = _rdist32(current, other)
                coeff = np.float32(0.0)
                if dist_squared > 0.0:
                    coeff = repel / ((np.float32(0.001) + dist_squared) * (a * pow(dist_squared, b) + np.float32(1.0)))
                _move(current, other, coeff, alpha)
            next_negative[i] += n_negative * epochs_per_negative_sample[i]


@numba.njit(inline="always", fastmath=True)
def _rdist32(x, y):
    """Squared Euclidean distance of two float32 rows, in float32."""
    total = np.float32(0.0)
    for d in range(x.shape[0]):
        diff = x[d] - y[d]
        total += diff * diff
    return total


@numba.njit(inline="always", fastmath=True)
def _move(current, other, coeff, alpha):
    """current += clip(coeff * (current - other)) * alpha, each coordinate's step clipped to [-4, 4]."""
    for d in range(current.shape[0]):
        current[d] += min(max(coeff * (current[d] - other[d]), np.float32(-4.0)), np.float32(4.0)) * alpha
