"""Seeded UMAP (maps/layout.py): the same coordinates on every run and on any number of threads, the
layout on all cores (umap-learn alone would run a seeded fit on one), an exact FAISS k-NN graph with each
point first in its own row, and a layout that still separates clusters."""

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
