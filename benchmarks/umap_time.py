"""umap-export wall time (PCA to 50 dims + UMAP to 2-D) on clustered 512-d unit vectors (2,000 Gaussian
centres, as scale.py makes them), in one run:

- stylesearch seeded (reproducible: FAISS k-NN, exact up to 20k rows and a recall-checked IVF index
  above, + a deterministic layout on all cores), run twice, and the two outputs compared bit for bit;
  the k-NN graph's recall@15 against an exact search is shown for 2,000 sampled rows;
- plain umap-learn, unseeded (parallel, not reproducible): `umap.UMAP(n_neighbors=15, min_dist=0.1)` on
  the same PCA output (stylesearch's unseeded path is exactly that);
- with --umap-seeded, also umap-learn seeded (`random_state`: reproducible, forced onto one thread),
  which is what a seeded umap-export ran before.

Each output's quality is shown as k-NN preservation: the share of each point's 15 nearest neighbours in
the 50-d input that are also among its 15 nearest in 2-D (2,000 sampled points). Numba compiles its
kernels before the timed runs (a warm-up on 5,000 points).

Usage: python benchmarks/umap_time.py [--sizes 100000] [--umap-seeded]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

from stylesearch.maps.projection import UmapOptions, reduce_dims, umap_2d


def clustered(n: int, dim: int = 512, centres: int = 2000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    middle = rng.standard_normal((centres, dim), dtype=np.float32)
    middle /= np.linalg.norm(middle, axis=1, keepdims=True)
    data = middle[rng.integers(0, centres, n)] + rng.standard_normal((n, dim), dtype=np.float32) * 0.021
    return data / np.linalg.norm(data, axis=1, keepdims=True)


def umap_seeded(data: np.ndarray) -> np.ndarray:
    """umap-learn's own reproducible run (random_state: one thread), on stylesearch's PCA."""
    import umap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return umap.UMAP(n_neighbors=15, min_dist=0.1, random_state=42).fit_transform(reduce_dims(data, 50, 42))


def preservation(data: np.ndarray, coords: np.ndarray, k: int = 15, sample: int = 2000) -> float:
    import faiss

    def neighbours(x, rows):
        index = faiss.IndexFlatL2(x.shape[1])
        index.add(np.ascontiguousarray(x, dtype=np.float32))
        return index.search(np.ascontiguousarray(x[rows], dtype=np.float32), k + 1)[1][:, 1:]

    rows = np.random.default_rng(1).choice(len(data), min(sample, len(data)), replace=False)
    high, low = neighbours(reduce_dims(data, 50, 42), rows), neighbours(coords, rows)
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(high, low)]))


def graph_recall(data: np.ndarray, k: int = 15, sample: int = 2000) -> float:
    """recall@k of the seeded path's k-NN graph (on the PCA output) against an exact search, on sampled rows."""
    import faiss

    from stylesearch.maps.layout import knn_graph, knn_recall

    reduced = np.ascontiguousarray(reduce_dims(data, 50, 42), dtype=np.float32)
    rows = np.random.default_rng(1).choice(len(data), min(sample, len(data)), replace=False)
    index = faiss.IndexFlatL2(reduced.shape[1])
    index.add(reduced)
    return knn_recall(index.search(reduced[rows], k)[1], knn_graph(reduced, k, 42)[0][rows])


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000", help="comma-separated point counts")
    parser.add_argument("--umap-seeded", action="store_true", help="also time umap-learn's seeded (1-thread) run")
    args = parser.parse_args()
    warm = clustered(5000, seed=9)
    for seed in (0, None):
        umap_2d(warm, UmapOptions(seed=seed))
    if args.umap_seeded:
        umap_seeded(warm)
    for n in [int(s) for s in args.sizes.split(",")]:
        data = clustered(n)
        first, t1 = timed(umap_2d, data, UmapOptions(seed=42))
        second, t2 = timed(umap_2d, data, UmapOptions(seed=42))
        plain, tp = timed(umap_2d, data, UmapOptions(seed=None))
        print(f"n={n}:")
        print(f"  stylesearch seeded      {t1:7.1f} s, again {t2:6.1f} s  identical: {np.array_equal(first, second)}"
              f"  k-NN kept {preservation(data, first):.3f}")
        print(f"    its k-NN graph: recall@15 {graph_recall(data):.4f} against an exact search (2,000 rows)")
        print(f"  umap-learn unseeded     {tp:7.1f} s                  k-NN kept {preservation(data, plain):.3f}")
        print(f"  stylesearch seeded / umap-learn unseeded: {tp / t1:.2f}x and {tp / t2:.2f}x the speed "
              f"(each seeded run; >= 1 means the reproducible run is no slower)", flush=True)
        if args.umap_seeded:
            old, to = timed(umap_seeded, data)
            print(f"  umap-learn seeded (1 thread) {to:6.1f} s            k-NN kept {preservation(data, old):.3f}")


if __name__ == "__main__":
    main()
