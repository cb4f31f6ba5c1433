"""umap-export wall time (PCA to 50 dims + UMAP) on random 512-d vectors.
Usage: python benchmarks/umap_time.py [SIZES]"""

import sys
import time

import numpy as np

from stylesearch.maps.projection import UmapOptions, umap_2d

sizes = [int(s) for s in (sys.argv[1] if len(sys.argv) > 1 else "10000,100000").split(",")]
for warm_seed in (0, None):  # numba JIT warm-up (NN-descent kicks in above 4096 points)
    umap_2d(np.random.default_rng(1).standard_normal((5000, 512)).astype(np.float32), UmapOptions(seed=warm_seed))
for n in sizes:
    data = np.random.default_rng(0).standard_normal((n, 512)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    for seed in (42, None):
        start = time.perf_counter()
        umap_2d(data, UmapOptions(seed=seed))
        label = "seeded (reproducible, 1 thread)" if seed is not None else "unseeded (parallel)"
        print(f"n={n:>7}: {time.perf_counter() - start:6.1f} s  {label}")
