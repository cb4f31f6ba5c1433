"""Search under a learned metric is exact search in the metric's space (index built there)."""

from __future__ import annotations

import numpy as np
import pytest

from stylesearch.index.build import build_index
from stylesearch.index.load import RAW_SPACE, check_recall, load_index
from stylesearch.learn.metric import DiagonalMetric, LowRankMetric, save_metric
from stylesearch.query.search import Searcher, Term

from .conftest import unit_rows, vector_catalog


def vector_dataset(tmp_path, n=400, dim=16):
    vectors = unit_rows(n, dim, seed=5)
    return vector_catalog(tmp_path, "space", vectors), vectors


def exact_ids(metric, vectors, query_row, k):
    scores = metric.scores(vectors[query_row], vectors)
    order = [i for i in np.argsort(-scores) if i != query_row][:k]
    return [int(i) + 1 for i in order]  # item ids start at 1


def search_ids(paths, query_id, k=10, raw=False):
    searcher = Searcher(paths, None, raw=raw)
    try:
        return [r["id"] for r in searcher.search([Term(1.0, "like", str(query_id))], k)], searcher
    finally:
        searcher.close()


@pytest.mark.parametrize("metric_of", [
    lambda dim, rng: DiagonalMetric(np.where(rng.random(dim) < 0.3, 6.0, 0.2)),
    lambda dim, rng: LowRankMetric(rng.normal(size=(4, dim))),
])
def test_index_lives_in_the_metric_space_and_search_is_exact(tmp_path, metric_of):
    paths, vectors = vector_dataset(tmp_path)
    metric = metric_of(vectors.shape[1], np.random.default_rng(1))
    meta = save_metric(paths, "m", metric)
    built = build_index(paths, "m", "flat")
    assert built["space"] == f"{metric.kind}:{meta['version']}"
    for row in (0, 7, 123):
        ids, searcher = search_ids(paths, row + 1)
        assert searcher.index is not None and searcher.index.space == built["space"]
        assert ids == exact_ids(metric, vectors, row, 10)
    raw_ids, _ = search_ids(paths, 1, raw=True)  # --raw: exact in the raw space, not the metric's index
    assert raw_ids == [int(i) + 1 for i in np.argsort(-(vectors @ vectors[0]))[1:11]]


def test_stale_index_falls_back_to_exact_and_rebuild_follows_the_metric(tmp_path):
    paths, vectors = vector_dataset(tmp_path)
    rng = np.random.default_rng(2)
    save_metric(paths, "m", DiagonalMetric(rng.random(16) * 3))
    first = build_index(paths, "m", "hnsw")
    newer = DiagonalMetric(np.where(rng.random(16) < 0.2, 9.0, 0.1))
    save_metric(paths, "m", newer)  # trained again: the index is now of an older version
    ids, searcher = search_ids(paths, 5)
    assert searcher.index.space == first["space"] != f"diagonal:{newer.version}"
    assert ids == exact_ids(newer, vectors, 4, 10)
    rebuilt = build_index(paths, "m", "hnsw")
    assert rebuilt["mode"] == "full" and rebuilt["space"] == f"diagonal:{newer.version}"
    assert check_recall(paths, "m", sample=50) > 0.9
    raw = build_index(paths, "m", "flat", raw=True)
    assert raw["space"] == RAW_SPACE and load_index(paths, "m").space == RAW_SPACE


def test_quantised_index_in_a_metric_space_reranks_by_the_metric(tmp_path):
    paths, vectors = vector_dataset(tmp_path)
    metric = DiagonalMetric(np.where(np.random.default_rng(3).random(16) < 0.3, 6.0, 0.2))
    save_metric(paths, "m", metric)
    built = build_index(paths, "m", "ivfsq")
    assert built["refine"] and built["space"].startswith("diagonal:")
    for row in (0, 7, 123):
        ids, searcher = search_ids(paths, row + 1)
        assert searcher.index.refine is not None and ids == exact_ids(metric, vectors, row, 10)
    loaded = load_index(paths, "m")
    query = metric.to_euclidean(vectors[[7]])
    scores, found = loaded.search(query, 5)
    np.testing.assert_allclose(scores[0], metric.scores(vectors[7], vectors[found[0] - 1]), atol=2e-3)
