"""Search latency p50/p95 and recall@10 for flat and HNSW indexes on random 512-d unit vectors,
plus the cold wall time of `stylesearch search --like`. Usage: python benchmarks/search_latency.py [SIZES]"""

import subprocess
import sys
import tempfile
import time

import numpy as np

from stylesearch.index.build import build_index, new_index
from stylesearch.index.load import LoadedIndex, recall_at_k, tune
from stylesearch.index.plan import choose_plan
from stylesearch.store.catalog import open_catalog
from stylesearch.store.paths import dataset_paths

sizes = [int(s) for s in (sys.argv[1] if len(sys.argv) > 1 else "100000,1000000").split(",")]
dim, queries = 512, 200
rng = np.random.default_rng(0)

for n in sizes:
    data = rng.standard_normal((n, dim), dtype=np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    ids = np.arange(n, dtype=np.int64)
    for kind in ("flat", "hnsw"):
        start = time.perf_counter()
        index = new_index(choose_plan(kind, dim, n, 1 << 40))
        for s in range(0, n, 50_000):
            index.add_with_ids(data[s:s + 50_000], ids[s:s + 50_000])
        tune(index, {"kind": kind})
        build = time.perf_counter() - start
        loaded = LoadedIndex(index, {"kind": kind})
        lat = []
        for q in data[rng.choice(n, queries, replace=False)]:
            t = time.perf_counter()
            loaded.search(q[None], 10)
            lat.append(time.perf_counter() - t)
        recall = recall_at_k(loaded, ids, data, sample=100)
        print(f"n={n:>8} {kind:5s} build {build:7.1f} s  p50 {np.percentile(lat, 50) * 1e3:7.2f} ms  "
              f"p95 {np.percentile(lat, 95) * 1e3:7.2f} ms  recall@10 {recall:.3f}")

# cold `search --like` through the CLI on a 100k-vector dataset
with tempfile.TemporaryDirectory() as tmp:
    n = min(sizes[0], 100_000)
    paths = dataset_paths("cold", tmp)
    data = rng.standard_normal((n, dim), dtype=np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    with open_catalog(paths, create=True) as cat, cat.transaction():
        cat.vectors.ensure_model("m", "m", "t", dim, "float32")
        cat.conn.executemany("INSERT INTO items(path, content_hash, status) VALUES(?,?, 'ok')",
                             [(f"{i}.jpg", f"{i:064d}") for i in range(n)])
        cat.vectors.put("m", [f"{i:064d}" for i in range(n)], data, "float32")
    build_index(paths, "m")
    walls = []
    for _ in range(5):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "stylesearch", "--root", tmp, "search", "cold", "--like", "42",
                        "--format", "tsv"], check=True, capture_output=True)
        walls.append(time.perf_counter() - t)
    print(f"cold `stylesearch search --like` on {n} vectors: median {np.median(walls):.3f} s (no model load)")
