"""Metric training time for 10k triplets at 512 dims, and held-out agreement on the planted-metric
simulation as a function of the number of judgments. Usage: python benchmarks/train_speed.py"""

import time

import numpy as np

from stylesearch.metric import TrainOptions, TripletArrays, agreement, fit_weights

rng = np.random.default_rng(0)
dim, n_items = 512, 2000
vectors = rng.standard_normal((n_items, dim))
vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
hidden = np.where(rng.random(dim) < 0.2, 8.0, 0.1)
hidden *= dim / hidden.sum()


def judged(count, seed):
    r = np.random.default_rng(seed)
    trip = r.integers(0, n_items, size=(count, 3))
    a, x, y = vectors[trip[:, 0]], vectors[trip[:, 1]], vectors[trip[:, 2]]
    dx, dy = (a - x) ** 2, (a - y) ** 2
    x_nearer = (dx @ hidden < dy @ hidden)[:, None]
    return TripletArrays(np.where(x_nearer, dx, dy), np.where(x_nearer, dy, dx))


empty = TripletArrays(np.zeros((0, dim)), np.zeros((0, dim)))
val = judged(2000, 99)
big = judged(10_000, 1)
start = time.perf_counter()
w = fit_weights(big, empty, dim, TrainOptions())
print(f"train 10k triplets x {dim} dims ({TrainOptions().epochs} epochs): {time.perf_counter() - start:.2f} s, "
      f"held-out agreement {agreement(val, w.astype(float)):.3f}")
print(f"uniform metric held-out agreement: {agreement(val, np.ones(dim)):.3f}")
for count in (100, 300, 1000, 3000):
    w = fit_weights(judged(count, 2), empty, dim, TrainOptions())
    print(f"{count:5d} judgments -> held-out agreement {agreement(val, w.astype(float)):.3f}")
