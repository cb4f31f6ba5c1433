"""Learning curves of the metric trainer on a simulated user, beside a plain logistic baseline
measured in the same run, and the train time at 10k judgments.

The simulated user: 2,000 unit vectors in 512-D drawn around 50 cluster centres; a hidden
diagonal metric in which 64 of the 512 dimensions matter; triplets answered by that metric with
0% or 10% of the answers flipped. Agreement is measured on 5,000 fresh random triplets (oracle
1.0). Triplets are chosen by the labeller's own selection code (labelling.LabelLoop/simulate):
random, or uncertain with retraining every 25 judgments. The baseline is a non-negative logistic
model on the squared differences (L-BFGS-B, w >= 0, a weak pull toward uniform, fixed strength).

The `bound` part prints how much a learner must know to reach a given agreement here: the
agreement of the hidden weights with a few relevant dimensions swapped for irrelevant ones or with
relative errors on the weights, and the bits needed to name the relevant dimensions (each binary
answer carries at most one bit).

Usage: python benchmarks/metric_learning.py [--quick] [--parts curves,active,lowrank,time,bound]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from scipy.optimize import Bounds, minimize  # noqa: E402

from stylesearch.learn.fit import FitOptions, agreement, fit_metric  # noqa: E402
from stylesearch.learn.labelling import LabelLoop, simulate  # noqa: E402
from stylesearch.learn.metric import IdentityMetric  # noqa: E402
from stylesearch.learn.train import judgment_triplets  # noqa: E402

DIM, ITEMS, CENTRES, RELEVANT = 512, 2000, 50, 64
NS = (100, 300, 1000, 3000)


def world(seed=0, spread=0.5):
    """Item vectors, their names and the hidden weights."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CENTRES, DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(CENTRES, size=ITEMS)] + spread * rng.standard_normal((ITEMS, DIM)) / np.sqrt(DIM)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    hidden = np.zeros(DIM)
    hidden[rng.choice(DIM, RELEVANT, replace=False)] = 1.0
    return x.astype(np.float32), [f"{i}.jpg" for i in range(ITEMS)], hidden * DIM / hidden.sum()


def random_rows(rng, n):
    rows = rng.integers(ITEMS, size=(2 * n + 10, 3))
    rows = rows[(rows[:, 0] != rows[:, 1]) & (rows[:, 0] != rows[:, 2]) & (rows[:, 1] != rows[:, 2])]
    return rows[:n]


def oriented(x, hidden, rows):
    """Rows as (anchor, nearer, farther) under the hidden metric."""
    v = x.astype(np.float64)
    dl = ((v[rows[:, 0]] - v[rows[:, 1]]) ** 2) @ hidden
    dr = ((v[rows[:, 0]] - v[rows[:, 2]]) ** 2) @ hidden
    return np.where((dl <= dr)[:, None], rows, rows[:, [0, 2, 1]])


def oracle(x, hidden, noise, seed):
    """A simulated user: the hidden metric's answer, flipped with probability `noise`."""
    rng, v = np.random.default_rng(seed), x.astype(np.float64)

    def judge(anchor, left, right):
        a, l, r = (v[int(p.split(".")[0])] for p in (anchor, left, right))
        left_nearer = ((a - l) ** 2) @ hidden < ((a - r) ** 2) @ hidden
        return "left" if left_nearer ^ (rng.random() < noise) else "right"

    return judge


def baseline(x, dec, pull=1e-3):
    """Non-negative logistic regression on squared differences, weak fixed pull toward uniform."""
    v = x.astype(np.float64)
    F = (v[dec[:, 0]] - v[dec[:, 2]]) ** 2 - (v[dec[:, 0]] - v[dec[:, 1]]) ** 2

    def objective(w):
        z = F @ w
        return (np.logaddexp(0, -z).sum() + 0.5 * pull * ((w - 1) ** 2).sum(),
                -F.T @ (0.5 * (1 - np.tanh(0.5 * z))) + pull * (w - 1))

    from stylesearch.learn.metric import DiagonalMetric

    w = minimize(objective, np.ones(DIM), jac=True, method="L-BFGS-B", bounds=Bounds(0, np.inf)).x
    return DiagonalMetric(w)


def collect(x, names, hidden, strategy, noise, count, seed, checkpoints=(), every=25, kind="diagonal"):
    """Judgments chosen by the labeller's selection code (copies at each checkpoint)."""
    loop = LabelLoop(names, x, strategy, seed, options=FitOptions(kind=kind, seed=seed),
                     every=every if strategy == "uncertain" else 10**9)
    snapshots = {}

    def at(loop_):
        if len(loop_.judgments) in checkpoints:
            snapshots[len(loop_.judgments)] = list(loop_.judgments)

    simulate(loop, oracle(x, hidden, noise, seed + 1), count, at)
    return snapshots or {count: loop.judgments}


def score(x, names, judgments, test, kind="diagonal", with_baseline=True, seed=0):
    trips = judgment_triplets(judgments, {p: i for i, p in enumerate(names)})
    fit = fit_metric(x, trips, FitOptions(kind=kind, seed=seed))
    out = {"fit": agreement(fit.metric, x, test), "chosen": fit.regularisation}
    if with_baseline:
        out["baseline"] = agreement(baseline(x, trips.decisive), x, test)
    return out


def curves(x, names, hidden, test, quick):
    """Random sampling, diagonal kind vs the baseline on the same judgments (mean of runs)."""
    reps = {100: 8, 300: 8, 1000: 3, 3000: 1} if not quick else {100: 2, 300: 2, 1000: 1, 3000: 1}
    table = {}
    for noise in (0.0, 0.1):
        for n in NS:
            start = time.perf_counter()
            rows = [score(x, names, collect(x, names, hidden, "random", noise, n, 100 * r + n)[n], test)
                    for r in range(reps[n])]
            fit, base = (np.array([r[k] for r in rows]) for k in ("fit", "baseline"))
            table[noise, n] = {"fit": float(fit.mean()), "baseline": float(base.mean())}
            diff = fit - base
            se = f" ± {diff.std(ddof=1) / np.sqrt(len(diff)):.3f}" if len(diff) > 1 else ""
            print(f"  random    noise {noise:3.0%}  N={n:5d}  diagonal {fit.mean():.3f}  baseline {base.mean():.3f}"
                  f"  (difference {diff.mean():+.3f}{se}; {reps[n]} runs, {time.perf_counter() - start:.0f} s)",
                  flush=True)
    return table


def active(x, names, hidden, test, random_table, quick):
    """Uncertain sampling (retraining every 25 judgments): two runs to 1,000, one on to 3,000."""
    marks = (100, 200, 300, 400, 500, 600, 700, 800, 1000) if not quick else (100, 300, 400, 1000)
    for noise in (0.0, 0.1):
        start = time.perf_counter()
        runs = [collect(x, names, hidden, "uncertain", noise, 3000 if seed == 1 else max(marks), seed,
                        checkpoints=marks + (3000,)) for seed in (1, 2)]
        got = {n: float(np.mean([score(x, names, run[n], test, with_baseline=False)["fit"]
                                 for run in runs if n in run])) for n in marks + (3000,)}
        print(f"  uncertain noise {noise:3.0%}  diagonal " + "  ".join(f"{n}: {got[n]:.3f}" for n in got)
              + f"  ({time.perf_counter() - start:.0f} s)", flush=True)
        target = random_table.get((noise, 1000), {}).get("fit")
        if target is not None:
            reach = next((n for n in marks if got[n] >= target), None)
            print(f"    random sampling reaches {target:.3f} at N = 1,000; uncertain sampling reaches it at "
                  f"N = {reach if reach else 'more than ' + str(max(marks))}", flush=True)


def lowrank(x, names, hidden, test, quick, rank=64):
    """The low-rank kind on the same simulated user: random sampling, and uncertain to 1,000."""
    for noise in (0.0, 0.1):
        parts = []
        for n in (NS if not quick else (100, 1000)):
            judged = collect(x, names, hidden, "random", noise, n, n)[n]
            start = time.perf_counter()
            got = score(x, names, judged, test, kind="lowrank", with_baseline=False)
            parts.append(f"{n}: {got['fit']:.3f} ({time.perf_counter() - start:.0f} s)")
        print(f"  random    noise {noise:3.0%}  lowrank rank {rank}: " + "  ".join(parts), flush=True)
        start = time.perf_counter()
        marks = (100, 300, 1000)
        snaps = collect(x, names, hidden, "uncertain", noise, max(marks), 1, checkpoints=marks, kind="lowrank")
        got = {n: score(x, names, snaps[n], test, kind="lowrank", with_baseline=False)["fit"] for n in marks}
        print(f"  uncertain noise {noise:3.0%}  lowrank rank {rank}: " + "  ".join(f"{n}: {got[n]:.3f}" for n in marks)
              + f"  ({time.perf_counter() - start:.0f} s)", flush=True)


def train_time(x, names, hidden, test):
    rng = np.random.default_rng(5)
    dec = oriented(x, hidden, random_rows(rng, 10_000))
    judgments = [{"anchor": names[a], "left": names[b], "right": names[c], "choice": "left"} for a, b, c in dec]
    trips = judgment_triplets(judgments, {p: i for i, p in enumerate(names)})
    for kind in ("diagonal", "lowrank"):
        start = time.perf_counter()
        fit = fit_metric(x, trips, FitOptions(kind=kind))
        took = time.perf_counter() - start
        print(f"  train 10k judgments, {kind:8s} (with cross-validation): {took:5.1f} s, "
              f"agreement {agreement(fit.metric, x, test):.3f}", flush=True)
    start = time.perf_counter()
    base = baseline(x, trips.decisive)
    print(f"  train 10k judgments, baseline: {time.perf_counter() - start:5.1f} s, "
          f"agreement {agreement(base, x, test):.3f}", flush=True)


def bound(x, hidden, test):
    """Sensitivity of the agreement to errors in the weights, and the information needed."""
    from math import lgamma, log

    from stylesearch.learn.metric import DiagonalMetric

    rng = np.random.default_rng(3)
    relevant, irrelevant = np.flatnonzero(hidden), np.flatnonzero(hidden == 0)
    swaps = []
    for m in (1, 2, 4, 8):
        w = np.zeros(DIM)
        w[rng.choice(relevant, RELEVANT - m, replace=False)] = 1.0
        w[rng.choice(irrelevant, m, replace=False)] = 1.0
        swaps.append(f"{m}: {agreement(DiagonalMetric(w), x, test):.3f}")
    print("  hidden weights with k relevant dims swapped for irrelevant ones, agreement  " + "  ".join(swaps))
    noisy = []
    for s in (0.05, 0.1, 0.2):
        w = hidden * np.maximum(0.0, 1 + s * rng.standard_normal(DIM))
        noisy.append(f"{s:.0%}: {agreement(DiagonalMetric(w), x, test):.3f}")
    print("  hidden weights with relative errors on the relevant dims, agreement  " + "  ".join(noisy))
    bits = (lgamma(DIM + 1) - lgamma(RELEVANT + 1) - lgamma(DIM - RELEVANT + 1)) / log(2)
    print(f"  naming the {RELEVANT} relevant of {DIM} dims takes {bits:.0f} bits: at least {bits:.0f} binary "
          f"answers even for a learner told that the weights are 0 or equal", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and points")
    parser.add_argument("--parts", default="curves,active,lowrank,time,bound")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    x, names, hidden = world()
    test = oriented(x, hidden, random_rows(np.random.default_rng(99), 5000))
    print(f"simulated user: {ITEMS} items, {DIM}-D, {CENTRES} centres, {RELEVANT} relevant dims; "
          f"uniform weights agree {agreement(IdentityMetric(), x, test):.3f}, oracle 1.000")
    start = time.perf_counter()
    table = curves(x, names, hidden, test, args.quick) if "curves" in parts else {}
    if "active" in parts:
        active(x, names, hidden, test, table, args.quick)
    if "lowrank" in parts:
        lowrank(x, names, hidden, test, args.quick)
    if "time" in parts:
        train_time(x, names, hidden, test)
    if "bound" in parts:
        bound(x, hidden, test)
    print(f"total {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
