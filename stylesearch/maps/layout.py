"""Reproducible UMAP on every core (projection.py's seeded path).

umap-learn makes a seeded run reproducible by running it on one thread (`random_state` sets n_jobs=1):
its NN-descent k-NN search and its layout SGD (lock-free updates racing between threads) are only
deterministic single-threaded. Here both are replaced by steps that are deterministic on any number
of threads, and umap-learn keeps the rest (fuzzy graph, spectral initialisation, a/b curve fit):

- the k-NN graph is exact, from FAISS (multi-threaded BLAS; each query's answer is its own), given
  to umap-learn as `precomputed_knn` (its `nearest_neighbors` format: self first, Euclidean distances);
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
from umap.layouts import clip, rdist
from umap.umap_ import make_epochs_per_sample
from umap.utils import tau_rand_int

from ..cores import available_cores

EXACT_KNN_LIMIT = 200_000  # above this the k-NN graph comes from an IVF index (seeded training)


def knn_graph(data: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, Euclidean distances) of each row's k nearest rows, itself first."""
    import faiss

    data = np.ascontiguousarray(data, dtype=np.float32)
    n, dim = data.shape
    if n <= EXACT_KNN_LIMIT:
        index = faiss.IndexFlatL2(dim)
    else:
        nlist = int(4 * np.sqrt(n))
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, nlist)
        index.cp.seed = seed
        index.train(data[np.random.default_rng(seed).choice(n, min(n, nlist * 64), replace=False)])
        index.nprobe = 32
    index.add(data)
    dist2, idx = index.search(data, k)
    self_first(idx, dist2)
    return idx.astype(np.int32), np.sqrt(np.maximum(dist2, 0)).astype(np.float32)


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
        # umap-learn's own start: the graph pruned and the seeded initialisation, with no epoch run
        start, aux = super()._fit_embed_data(X, 0, init, random_state, **kwargs)
        n_epochs = n_epochs or (500 if self.graph_.shape[0] <= 10000 else 200)
        graph = self.graph_.tocoo()
        graph.sum_duplicates()
        graph.data[graph.data < graph.data.max() / float(n_epochs)] = 0.0
        graph = graph.tocsr()
        graph.eliminate_zeros()
        rng_state = random_state.randint(np.iinfo(np.int32).min, np.iinfo(np.int32).max, 3).astype(np.int64)
        threads = numba.get_num_threads()  # umap-learn set 1 for a seeded run
        numba.set_num_threads(available_cores())
        try:
            embedding = layout(start, graph, n_epochs, self._a, self._b, self.repulsion_strength,
                               self._initial_alpha, self.negative_sample_rate, rng_state)
        finally:
            numba.set_num_threads(threads)
        return embedding, aux


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
    """One epoch: each point moves by its own due edges and negative samples; others read from `before`."""
    n_vertices, dim = embedding.shape
    for j in numba.prange(n_vertices):
        current = embedding[j]
        for i in range(indptr[j], indptr[j + 1]):
            if next_sample[i] > n:
                continue
            other = before[tail[i]]
            dist_squared = rdist(current, other)
            coeff = 0.0
            if dist_squared > 0.0:
                coeff = -2.0 * a * b * pow(dist_squared, b - 1.0) / (a * pow(dist_squared, b) + 1.0)
            for d in range(dim):
                current[d] += 2.0 * clip(coeff * (current[d] - other[d])) * alpha
            next_sample[i] += epochs_per_sample[i]
            n_negative = int((n - next_negative[i]) / epochs_per_negative_sample[i])
            for _ in range(n_negative):
                k = tau_rand_int(rng[j]) % n_vertices
                if k == j:
                    continue
                other = before[k]
                dist_squared = rdist(current, other)
                coeff = 0.0
                if dist_squared > 0.0:
                    coeff = 2.0 * gamma * b / ((0.001 + dist_squared) * (a * pow(dist_squared, b) + 1))
                for d in range(dim):
                    current[d] += clip(coeff * (current[d] - other[d])) * alpha
            next_negative[i] += n_negative * epochs_per_negative_sample[i]
