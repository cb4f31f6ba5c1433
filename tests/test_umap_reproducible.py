"""Seeded UMAP (maps/layout.py): the same coordinates on every run and on any number of threads, the
layout on all cores (umap-learn alone would run a seeded fit on one), a FAISS k-NN graph (exact, or a
recall-checked IVF index above the exact limit) with each point first in its own row, a spectral
initialisation of many components that matches umap-learn's eigenvectors, and a layout that still
separates clusters."""

from __future__ import annotations

import numpy as np
import pytest

from stylesearch.maps.projection import UmapOptions, umap_2d

pytestmark = pytest.mark.slow  # numba compiles umap-learn's kernels and ours


def clusters(n: int = 600, dim: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    centres = rng.standard_normal((3, dim)).astype(np.float32) * 4
    return centres[labels] + rng.standard_normal((n, dim)).astype(np.float32), labels


def test_seeded_umap_is_identical_across_runs_and_thread_counts(monkeypatch):
    import stylesearch.maps.layout as layout

    data, labels = clusters()
    threads_seen = []
    real_layout = layout.layout

    def recording_layout(*args, **kwargs):
        import numba

        threads_seen.append(numba.get_num_threads())
        return real_layout(*args, **kwargs)

    monkeypatch.setattr(layout, "layout", recording_layout)
    monkeypatch.setattr(layout, "available_cores", lambda: 2)
    first = umap_2d(data, UmapOptions(seed=3))
    again = umap_2d(data, UmapOptions(seed=3))
    monkeypatch.setattr(layout, "available_cores", lambda: 1)
    one_thread = umap_2d(data, UmapOptions(seed=3))
    assert threads_seen == [2, 2, 1]  # umap-learn had set 1 thread for the seeded fit; the layout gets them all
    assert first.shape == (600, 2) and np.isfinite(first).all()
    assert np.array_equal(first, again) and np.array_equal(first, one_thread)
    assert not np.array_equal(first, umap_2d(data, UmapOptions(seed=4)))
    nearest = np.argsort(((first[:, None] - first[None]) ** 2).sum(-1), axis=1)[:, 1]
    assert (labels[nearest] == labels).mean() > 0.95  # clusters stay apart


def test_knn_graph_is_exact_with_each_point_first():
    from stylesearch.maps.layout import knn_graph

    data, _ = clusters(200, 8)
    data[5] = data[9]  # an exact duplicate may be found before the point itself
    idx, dist = knn_graph(data, 6, seed=0)
    assert (idx[:, 0] == np.arange(200)).all() and (dist[:, 0] == 0).all()
    exact = np.sqrt(((data[:, None] - data[None]) ** 2).sum(-1))
    np.testing.assert_allclose(np.sort(dist, axis=1), np.sort(exact, axis=1)[:, :6], rtol=1e-4, atol=1e-3)
    assert 9 in idx[5] and 5 in idx[9]


def test_knn_graph_above_the_exact_limit_uses_a_checked_ivf_index(monkeypatch):
    import stylesearch.maps.layout as layout

    rng = np.random.default_rng(2)
    data = (rng.standard_normal((40, 16)) * 5)[rng.integers(0, 40, 3000)] + rng.standard_normal((3000, 16))
    exact_idx, exact_dist = layout.knn_graph(data, 8, seed=0)
    monkeypatch.setattr(layout, "EXACT_KNN_LIMIT", 1000)
    real_ivf, probes = layout.ivf_index, []
    monkeypatch.setattr(layout, "ivf_index", lambda *a: probes.append(real_ivf(*a)) or probes[-1])
    idx, dist = layout.knn_graph(data, 8, seed=0)
    again = layout.knn_graph(data, 8, seed=0)
    assert np.array_equal(idx, again[0]) and np.array_equal(dist, again[1])
    assert (idx[:, 0] == np.arange(3000)).all()
    assert probes[0].nprobe == layout.NPROBES[0] and probes[0].nlist == 54  # sqrt(n) lists, 8 probed
    assert layout.knn_recall(exact_idx, idx) >= 0.98
    monkeypatch.setattr(layout, "KNN_RECALL", 1.01)  # no nprobe can reach it: the search falls back to exact
    assert np.array_equal(layout.knn_graph(data, 8, seed=0)[0], exact_idx) and probes[-1] is None


def test_knn_recall_counts_shared_neighbours_per_row():
    from stylesearch.maps.layout import knn_recall

    truth = np.array([[0, 1, 2, 3], [1, 0, 2, 3]])
    assert knn_recall(truth, np.array([[0, 3, 2, 1], [1, 0, 7, 8]])) == 0.75
    assert knn_recall(truth, np.array([[0, 9, 8, 7], [2, 0, 1, 3]])) == 0.625


def test_spectral_init_of_many_components_keeps_each_apart_and_solves_each_exactly():
    import scipy.sparse
    from umap.spectral import _spectral_layout

    from stylesearch.maps.layout import spectral_init

    rng = np.random.default_rng(5)
    sizes = [30] * 8 + [3, 2]  # two too small to solve: placed at random around their spot
    labels = np.repeat(np.arange(len(sizes)), sizes)
    rng.shuffle(labels)
    data = rng.standard_normal((len(sizes), 6))[labels] * 0.5 + rng.standard_normal((len(labels), 6)) * 0.1
    weights = rng.uniform(0.1, 1.0, (len(labels), len(labels))) * (labels[:, None] == labels[None, :])
    weights = np.triu(weights, 1)
    graph = scipy.sparse.csr_matrix(weights + weights.T)
    first = spectral_init(data, graph, 2, np.random.RandomState(0))
    assert np.array_equal(first, spectral_init(data, graph, 2, np.random.RandomState(0)))
    centres = np.array([first[labels == c].mean(0) for c in range(len(sizes))])
    spread = np.array([np.abs(first[labels == c] - centres[c]).max() for c in range(len(sizes))])
    gaps = np.sqrt(((centres[:, None] - centres[None]) ** 2).sum(-1)) + np.diag(np.full(len(sizes), np.inf))
    assert (spread < gaps.min(1)).all()  # every component within half the gap to its nearest neighbour (x2)
    members = np.flatnonzero(labels == 0)
    arpack = _spectral_layout(None, graph[members][:, members].tocoo(), 2, np.random.RandomState(0))
    mine = first[members] - first[members].mean(0)
    for d in range(2):  # the same eigenvectors as umap-learn's ARPACK call, up to sign and scale
        assert abs(np.corrcoef(mine[:, d], arpack[:, d])[0, 1]) > 0.999
