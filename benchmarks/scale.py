"""Index builds at scale on synthetic clustered vectors (not uniform noise): 512-D unit vectors
around 10k Gaussian centres, spread so a vector's cosine to its centre is about 0.9 (like CLIP
image embeddings of near-duplicates and variations).

For each size: build time and peak RSS of `stylesearch index` (auto kind, a real process reading
the catalog), index size on disk, recall@10 against exact search on 200 held-out queries, query
latency p50/p95 (warm, in-process), and the wall time of a cold `stylesearch search --like`
process. The exact neighbours are computed while the vectors are generated (streamed, so 10M
never sits in memory).

Quantised kinds (IVF-SQ8, IVF-PQ) re-rank their candidates with a float16 refine store
(stylesearch/index/refine.py): each effort is measured with the re-rank (the default) and on the
codes alone (the baseline, same run), each after one unmeasured pass that brings the lists and
rows it reads into the page cache (a warm server); at the default effort also with other re-rank
factors, and first with the refine store evicted from the page cache (posix_fadvise DONTNEED), so
each query reads its candidates' rows from disk: the cold-cache cost of the re-rank.

Usage: python benchmarks/scale.py [SIZES] [--keep DIR] [--kind KIND]   e.g. 1000000 or 1000000,10000000
(--keep DIR keeps the datasets and their exact neighbours; a later run with the same DIR reuses them
and measures queries only, e.g. on an idle machine after a build that shared it)
(--kind forces an index kind instead of auto, e.g. ivfsq to see the 10M plan's kind at 1M)
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from stylesearch.index.load import index_meta, load_index
from stylesearch.store.catalog import open_catalog
from stylesearch.store.paths import dataset_paths

DIM, CENTRES, QUERIES, K, CHUNK = 512, 10_000, 200, 10, 100_000
NOISE = 0.5 / np.sqrt(DIM)  # |noise| ~ 0.5 before normalising: cosine to the centre ~ 0.9


def centres(rng) -> np.ndarray:
    c = rng.standard_normal((CENTRES, DIM), dtype=np.float32)
    return c / np.linalg.norm(c, axis=1, keepdims=True)


def sample(rng, c: np.ndarray, n: int) -> np.ndarray:
    x = c[rng.integers(0, len(c), n)] + rng.normal(0, NOISE, (n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def fill_catalog(paths, n: int, queries: np.ndarray, c: np.ndarray, rng) -> np.ndarray:
    """Write n vectors into the catalog in chunks; returns the exact top-K ids per query."""
    best = np.full((len(queries), K), -np.inf, dtype=np.float32)
    best_ids = np.zeros((len(queries), K), dtype=np.int64)
    with open_catalog(paths, create=True) as cat:
        cat.conn.execute("PRAGMA synchronous=OFF")
        with cat.transaction():
            cat.vectors.ensure_model("m", "m", "t", DIM, "float32")
        for start in range(0, n, CHUNK):
            x = sample(rng, c, min(CHUNK, n - start))
            ids = np.arange(start + 1, start + 1 + len(x))
            hashes = [f"{i:064x}" for i in ids]
            with cat.transaction():
                cat.conn.executemany("INSERT INTO items(id, path, content_hash, status) VALUES(?,?,?,'ok')",
                                     [(int(i), f"{i}.jpg", h) for i, h in zip(ids, hashes)])
                cat.conn.executemany("INSERT INTO vectors VALUES('m',?,?)",
                                     [(h, x[j].tobytes()) for j, h in enumerate(hashes)])
            scores = queries @ x.T
            merged = np.concatenate([best, scores], axis=1)
            merged_ids = np.concatenate([best_ids, np.broadcast_to(ids, scores.shape)], axis=1)
            top = np.argpartition(-merged, K, axis=1)[:, :K]
            best, best_ids = np.take_along_axis(merged, top, 1), np.take_along_axis(merged_ids, top, 1)
    return best_ids


# A small process that runs the command and reports its peak RSS (KiB) on stderr's last line. Asking
# from here would over-count: a child spawned by this (large) process starts with its memory counted.
PEAK_RSS = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)")


def run(cmd: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (GiB) and stdout of a child process."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PEAK_RSS, *cmd], capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    return wall, int(done.stderr.split()[-1]) / (1 << 20), done.stdout


def bench(n: int, root: Path, kind: str = "auto") -> None:
    rng = np.random.default_rng(0)
    c = centres(rng)
    queries = sample(np.random.default_rng(99), c, QUERIES)  # held out: not in the collection
    paths = dataset_paths(f"scale{n}", root)
    exact_file = root / f"scale{n}-exact.npy"  # kept beside the dataset, so --keep can reuse both
    start = time.perf_counter()
    if exact_file.exists() and paths.catalog.exists():
        exact, fill = np.load(exact_file), "kept"
    else:
        exact = fill_catalog(paths, n, queries, c, rng)
        np.save(exact_file, exact)
        fill = f"{time.perf_counter() - start:6.0f} s"
    cli = [sys.executable, "-m", "stylesearch", "--root", str(root)]
    meta = index_meta(paths, "m") if fill == "kept" else None
    if meta is not None and (kind == "auto" or meta["kind"] == kind):
        build, peak = "kept", None
    else:
        seconds, peak, out = run([*cli, "index", paths.name, "--json", "--kind", kind])
        meta, build = json.loads(out), f"{seconds:7.1f} s"
    size = sum(f.stat().st_size for f in paths.index_dir("m").glob("index-*.faiss")) / (1 << 30)
    refine = sum(f.stat().st_size for f in paths.index_dir("m").glob("refine-*.npy")) / (1 << 30)
    cold, _, _ = run([*cli, "search", paths.name, "--like", str(n // 2), "-k", "10", "--format", "tsv"])
    vectors_gib = n * DIM * 4 / (1 << 30)
    print(f"n={n:>9,}  kind {meta['kind']} ({meta['factory']}, default nprobe {meta['nprobe']})  "
          f"catalog fill {fill}")
    rss = "" if peak is None else f"   peak RSS {peak:5.2f} GiB (raw float32 vectors: {vectors_gib:5.2f} GiB)"
    print(f"   build {build}{rss}   "
          f"index {size:5.2f} GiB on disk (+ refine store {refine:5.2f} GiB)   "
          f"cold `search --like` process {cold:5.2f} s")
    efforts = [None] if not meta["nprobe"] else [meta["nprobe"] // 2, None, meta["nprobe"] * 2]
    for effort in efforts:
        label = "default" if effort is None else f"--effort {effort}"
        loaded = load_index(paths, "m", effort)
        measure(dataclasses.replace(loaded, refine=None), queries, exact)  # warm the lists, not the store
        if effort is None and loaded.refine is not None:  # before any read of the store maps its pages
            evict(paths.index_dir("m").glob("refine-*.npy"))
            report(label, "re-rank, store evicted (cold)", loaded, queries, exact)
        variants = [(f"re-rank x{loaded.refine_factor}", loaded)] if loaded.refine is not None else []
        variants.append(("codes only", dataclasses.replace(loaded, refine=None)))
        if effort is None and loaded.refine is not None:
            variants += [(f"re-rank x{f}", dataclasses.replace(loaded, refine_factor=f)) for f in (2, 8)]
        for name, variant in variants:
            measure(variant, queries, exact)  # warm: the rows this variant re-ranks are in the page cache
            report(label, name, variant, queries, exact)
        if effort is None and faiss_prefetch(loaded):  # last: this changes the loaded index
            measure(loaded, queries, exact)
            report(label, f"{variants[0][0]}, 32 prefetch thr.", loaded, queries, exact)
        del loaded, variants, variant  # unmap the store before the next eviction


def faiss_prefetch(loaded) -> bool:
    """The baseline for index.load.tune's prefetch_nthread = 0: FAISS's default of 32 threads that
    touch the probed lists' pages before each search. False for an index without such lists."""
    import faiss

    ivf = faiss.try_extract_index_ivf(loaded.index)
    lists = ivf is not None and faiss.downcast_InvertedLists(ivf.invlists)
    if not hasattr(lists, "prefetch_nthread"):
        return False
    lists.prefetch_nthread = 32
    return True


def report(label: str, name: str, loaded, queries: np.ndarray, exact: np.ndarray) -> None:
    recall, p50, p95 = measure(loaded, queries, exact)
    print(f"   {label:14s} {name:30s} recall@10 {recall:.3f} (exact = 1.000)   p50 {p50:6.2f} ms   "
          f"p95 {p95:6.2f} ms", flush=True)


def evict(files) -> None:
    """Drop files' pages from the page cache (no root needed), so the next reads come from disk."""
    for file in files:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def measure(loaded, queries: np.ndarray, exact: np.ndarray) -> tuple[float, float, float]:
    """recall@K against the exact neighbours, and query latency p50/p95 in ms (one query at a time)."""
    lat, hits = [], 0
    for q, truth in zip(queries, exact):
        t = time.perf_counter()
        _, found = loaded.search(q[None], K)
        lat.append(time.perf_counter() - t)
        hits += len(set(found[0].tolist()) & set(truth.tolist()))
    return hits / exact.size, np.percentile(lat, 50) * 1e3, np.percentile(lat, 95) * 1e3


def main() -> None:
    args = sys.argv[1:]
    keep, kind = None, "auto"
    if "--kind" in args:
        kind = args[args.index("--kind") + 1]
        args = args[:args.index("--kind")] + args[args.index("--kind") + 2:]
    if "--keep" in args:
        keep = Path(args[args.index("--keep") + 1])
        args = args[:args.index("--keep")] + args[args.index("--keep") + 2:]
    sizes = [int(s) for s in (args[0] if args else "1000000").split(",")]
    root = keep or Path(tempfile.mkdtemp(prefix="stylesearch-scale-"))
    print(f"{DIM}-d vectors around {CENTRES} centres, {os.cpu_count()} cores; datasets in {root}")
    try:
        for n in sizes:
            bench(n, root, kind)
    finally:
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
