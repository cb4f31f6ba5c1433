"""Filtered search latency at 100k items: a 1% and a 50% selective metadata filter beside
unfiltered search, in the same run (p50/p95 over the same queries, warm Searcher, flat index).

Usage: python benchmarks/filtered_search.py [N]   (default 100000 items, 512-d vectors)
"""

import sys
import tempfile
import time

import numpy as np

from stylesearch.index.build import build_index
from stylesearch.query.filters import parse_filters
from stylesearch.query.search import Searcher
from stylesearch.store.catalog import open_catalog
from stylesearch.store.paths import dataset_paths

n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
dim, queries, k = 512, 100, 10
rng = np.random.default_rng(0)
vectors = rng.standard_normal((n, dim), dtype=np.float32)
vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)

root = tempfile.mkdtemp()
paths = dataset_paths("filtered", root)
start = time.perf_counter()
with open_catalog(paths, create=True) as cat, cat.transaction():
    cat.vectors.ensure_model("m", "m", "t", dim, "float32")
    for i in range(n):
        item_id = cat.upsert_item(f"{i}.jpg", content_hash=f"{i:064d}", status="ok")
        cat.set_metadata(item_id, {"rare": "yes" if i % 100 == 0 else "no", "half": "a" if i % 2 else "b",
                                   "price": float(i % 1000)})
    cat.vectors.put("m", [f"{i:064d}" for i in range(n)], vectors, "float32")
build_index(paths, "m", "flat")
print(f"built {n} items with metadata + flat index in {time.perf_counter() - start:.1f} s")

searcher = Searcher(paths)
qs = vectors[rng.choice(n, queries, replace=False)] + rng.normal(0, 0.01, (queries, dim)).astype(np.float32)
qs /= np.linalg.norm(qs, axis=1, keepdims=True)
cases = [("unfiltered", []), ("1% (rare=yes)", ["rare=yes"]), ("50% (half=a)", ["half=a"]),
         ("50% numeric (price<500)", ["price<500"])]
print("(fresh filter: the filter's SQL runs for every query; repeated filter: a warm Searcher, e.g. the server,")
print(" remembers the matching ids of recent filter sets)")
for label, where in cases:
    clauses = parse_filters(where)
    for q in qs[:10]:  # warm-up (FAISS threads, SQLite page cache)
        searcher.search_vector(q, k, filters=clauses)
    figures, got = [], 0
    for fresh in (True, False):
        lat = []
        for q in qs:
            if fresh:
                searcher._allowed_cache.clear()
            t = time.perf_counter()
            rows = searcher.search_vector(q, k, filters=clauses)
            lat.append(time.perf_counter() - t)
            got += len(rows)
        figures.append(f"p50 {np.percentile(lat, 50) * 1e3:6.1f} ms p95 {np.percentile(lat, 95) * 1e3:6.1f} ms")
    print(f"{label:26s} fresh filter: {figures[0]}   repeated filter: {figures[1]}   "
          f"rows/query {got / (2 * queries):.1f}")
searcher.close()
