"""Metric fitting on arrays (diagonal, low-rank, auto, cross-validated regularisation, equality
terms), the training report, and active learning through the labeller's own selection code."""

from __future__ import annotations

import numpy as np
import pytest

from stylesearch.errors import UserError
from stylesearch.learn.fit import FitOptions, Triplets, agreement, fit_metric, wilson_interval
from stylesearch.learn.labelling import LabelLoop, Retrainer, TripletSampler, simulate
from stylesearch.learn.metric import DiagonalMetric, IdentityMetric, LowRankMetric, load_metric
from stylesearch.learn.train import TrainOptions, judgment_triplets, train_arrays, train_metric

from .conftest import unit_rows


def random_rows(n_items, count, seed):
    rows = np.random.default_rng(seed).integers(n_items, size=(2 * count, 3))
    rows = rows[(rows[:, 0] != rows[:, 1]) & (rows[:, 0] != rows[:, 2]) & (rows[:, 1] != rows[:, 2])]
    return rows[:count]


def judged(vectors, sq_dist, count, seed, noise=0.0):
    """(anchor, nearer, farther) rows under a hidden squared distance, some answers flipped."""
    rows = random_rows(len(vectors), count, seed)
    a, x, y = (vectors[rows[:, i]] for i in range(3))
    x_nearer = sq_dist(a - x) < sq_dist(a - y)
    x_nearer ^= np.random.default_rng(seed + 1).random(len(rows)) < noise
    return np.where(x_nearer[:, None], rows, rows[:, [0, 2, 1]])


def diagonal_world(dim=32, n=300, seed=0, relevant=0.25):
    vectors = unit_rows(n, dim, seed)
    hidden = np.where(np.random.default_rng(seed + 1).random(dim) < relevant, 8.0, 0.1)
    return vectors, hidden, lambda d: (d * d) @ hidden


def rotated_world(dim=16, n=400, k=3, seed=0):
    """A planted low-rank metric: distance along a random rotation of k directions."""
    vectors = unit_rows(n, dim, seed)
    q = np.linalg.qr(np.random.default_rng(seed + 1).standard_normal((dim, k)))[0]
    return vectors, lambda d: ((d @ q) ** 2).sum(axis=1)


def test_diagonal_fit_recovers_planted_weights():
    vectors, hidden, dist = diagonal_world()
    fit = fit_metric(vectors, Triplets(judged(vectors, dist, 600, 2)))
    test = judged(vectors, dist, 3000, 9)
    assert isinstance(fit.metric, DiagonalMetric) and fit.kind == "diagonal"
    assert agreement(IdentityMetric(), vectors, test) < 0.8
    assert agreement(fit.metric, vectors, test) > 0.9
    assert np.corrcoef(fit.metric.weights, hidden)[0, 1] > 0.8
    assert abs(fit.metric.weights.mean() - 1) < 1e-4 and (fit.metric.weights >= 0).all()
    assert fit.cv_agreement > 0.8 and fit.logit_scale > 0


def test_regularisation_is_chosen_by_cross_validation():
    vectors, _, dist = diagonal_world(dim=48, n=400, relevant=0.15)
    few_noisy = fit_metric(vectors, Triplets(judged(vectors, dist, 40, 3, noise=0.2)))
    many_clean = fit_metric(vectors, Triplets(judged(vectors, dist, 2000, 4)))
    assert few_noisy.regularisation["family"] == "uniform"  # too little evidence to leave the default
    assert many_clean.regularisation["family"] == "sparse"  # the hidden metric is sparse
    assert many_clean.regularisation["active_dims"] < 30


def test_equality_judgments_pull_distances_together():
    dim = 8
    vectors = unit_rows(200, dim, 5)
    weights = np.array([4.0, 1.0] + [1.0] * (dim - 2))
    decisive = judged(vectors, lambda d: (d * d) @ weights, 300, 6)
    # "too similar": options that differ from the anchor only along dimension 0 or only along 1
    base = np.zeros((1, dim))
    extra = np.concatenate([base, base + np.eye(dim)[0] * 0.6, base + np.eye(dim)[1] * 0.6])
    allv = np.concatenate([vectors, extra])
    equal = np.tile([len(vectors), len(vectors) + 1, len(vectors) + 2], (200, 1))
    plain = fit_metric(allv, Triplets(decisive), FitOptions(select=False)).metric.weights
    pulled = fit_metric(allv, Triplets(decisive, equal), FitOptions(select=False)).metric.weights
    assert plain[0] / plain[1] > 2
    assert abs(np.log(pulled[0] / pulled[1])) < 0.5 * abs(np.log(plain[0] / plain[1]))


def test_lowrank_learns_a_rotation_the_diagonal_cannot():
    vectors, dist = rotated_world()
    trips = Triplets(judged(vectors, dist, 500, 2))
    test = judged(vectors, dist, 3000, 9)
    diagonal = fit_metric(vectors, trips, FitOptions(kind="diagonal"))
    lowrank = fit_metric(vectors, trips, FitOptions(kind="lowrank", rank=4))
    auto = fit_metric(vectors, trips, FitOptions(kind="auto", rank=4))
    assert agreement(diagonal.metric, vectors, test) < 0.8
    assert agreement(lowrank.metric, vectors, test) > 0.93
    assert isinstance(lowrank.metric, LowRankMetric) and lowrank.metric.projection.shape == (4, 16)
    assert auto.kind == "lowrank"


def test_auto_keeps_the_diagonal_kind_when_it_fits():
    vectors, _, dist = diagonal_world(dim=16, n=300)
    auto = fit_metric(vectors, Triplets(judged(vectors, dist, 400, 2)), FitOptions(kind="auto", rank=4))
    assert auto.kind == "diagonal"


def test_fit_is_deterministic_for_a_seed():
    vectors, _, dist = diagonal_world(dim=16, n=200)
    trips = Triplets(judged(vectors, dist, 300, 2, noise=0.1))
    first, again = (fit_metric(vectors, trips, FitOptions(seed=3)).metric.weights for _ in range(2))
    assert np.array_equal(first, again)


def test_wilson_interval():
    lo, hi = wilson_interval(0.8, 100)
    assert lo == pytest.approx(0.711, abs=1e-3) and hi == pytest.approx(0.867, abs=1e-3)
    assert all(np.isnan(wilson_interval(0.5, 0)))


def test_train_report_and_saved_lowrank_metric(tmp_path):
    from .test_metric import planted_dataset
    from .test_metric import simulate as simulate_user

    paths, vectors, hidden = planted_dataset(tmp_path, n=120, dim=16, name="low")
    simulate_user(paths, vectors, hidden, 300, skips=0.02)
    meta = train_metric(paths, "m", TrainOptions(kind="lowrank", rank=6, seed=1))
    assert meta["kind"] == "lowrank" and meta["rank"] == 6
    lo, hi = meta["agreement_ci"]
    assert lo < meta["agreement_after"] < hi and hi - lo < 0.3
    assert meta["judgments_used"] == meta["train_triplets"] + meta["val_triplets"] + meta["equality_triplets"]
    assert meta["equality_triplets"] > 0 and meta["regularisation"]["family"] == "lowrank"
    metric = load_metric(paths, "m", dim=16)
    assert isinstance(metric, LowRankMetric) and metric.projection.shape == (6, 16)
    with pytest.raises(UserError, match="kind"):
        train_metric(paths, "m", TrainOptions(kind="full"))


def test_train_arrays_holds_out_and_refits_on_everything():
    vectors, _, dist = diagonal_world(dim=16, n=200)
    trips = Triplets(judged(vectors, dist, 200, 2))
    fit, report = train_arrays(vectors, trips, TrainOptions(val_fraction=0.25))
    assert report["val_triplets"] == 50 and report["train_triplets"] == 150
    assert report["agreement_after"] > report["agreement_before"]
    again, _ = train_arrays(vectors, trips, TrainOptions(val_fraction=0.25))
    assert np.array_equal(fit.metric.weights, again.metric.weights)


def test_judgment_triplets_orient_and_skip():
    row_of = {"a": 0, "b": 1, "c": 2}
    trips = judgment_triplets([
        {"anchor": "a", "left": "b", "right": "c", "choice": "left"},
        {"anchor": "a", "left": "b", "right": "c", "choice": "right"},
        {"anchor": "a", "left": "b", "right": "c", "choice": "too_similar"},
        {"anchor": "a", "left": "b", "right": "c", "choice": "unknown"},
        {"anchor": "a", "left": "b", "right": "gone", "choice": "left"},
    ], row_of)
    assert trips.decisive.tolist() == [[0, 1, 2], [0, 2, 1]] and trips.equal.tolist() == [[0, 1, 2]]


def small_user(dim=64, n=500, relevant=12, seed=0):
    vectors = unit_rows(n, dim, seed)
    hidden = np.zeros(dim)
    hidden[np.random.default_rng(seed + 1).choice(dim, relevant, replace=False)] = 1.0
    names = [f"{i}.jpg" for i in range(n)]

    def judge(anchor, left, right):
        a, l, r = (vectors[int(p.split(".")[0])] for p in (anchor, left, right))
        return "left" if ((a - l) ** 2) @ hidden < ((a - r) ** 2) @ hidden else "right"

    return vectors, names, judge, judged(vectors, lambda d: (d * d) @ hidden, 3000, 99)


def test_uncertain_sampling_learns_faster_than_random():
    vectors, names, judge, test = small_user()
    scores = {}
    for strategy in ("random", "uncertain"):
        loop = LabelLoop(names, vectors, strategy, seed=0, every=10)
        simulate(loop, judge, 80)
        fit = fit_metric(vectors, judgment_triplets(loop.judgments, {p: i for i, p in enumerate(names)}))
        scores[strategy] = agreement(fit.metric, vectors, test)
    assert scores["uncertain"] > scores["random"] + 0.05


def test_simulate_retrains_and_the_guesses_improve():
    vectors, names, judge, _ = small_user(seed=1)
    loop = LabelLoop(names, vectors, "random", seed=2, every=10)
    early = []
    simulate(loop, judge, 20, on_judgment=lambda lp: early.append(lp.hits[-1]))
    simulate(loop, judge, 180)
    assert loop.fit is not None and loop.retrainer.last >= 190
    assert len(loop.judgments) == 200 and len(loop.seen) == 200
    late = sum(loop.hits) / len(loop.hits)  # the model's guesses of the last 50 answers
    assert late >= 0.9 and late > sum(early) / len(early) + 0.1
    assert loop.sampler.metric is loop.fit.metric


def test_retrainer_schedule_grows_and_recrossvalidates():
    retrainer = Retrainer(["a", "b", "c"], np.eye(3), every=25)
    assert not retrainer.due(9) and retrainer.due(25)
    retrainer.last = 1000
    assert not retrainer.due(1050) and retrainer.due(1100)
    assert not Retrainer(["a", "b", "c"], np.eye(3), every=0).due(500)
    vectors, names, judge, _ = small_user(dim=16, n=100, relevant=4)
    rows = random_rows(100, 90, 3)
    judgments = [{"anchor": names[a], "left": names[b], "right": names[c], "choice": judge(names[a], names[b], names[c])}
                 for a, b, c in rows]
    retrainer = Retrainer(names, vectors, every=10)
    assert retrainer.fit(judgments[:5]) is None  # too few to fit
    retrainer.fit(judgments[:40])
    assert retrainer.cv_at == 40 and retrainer.last == 40
    retrainer.fit(judgments[:60])
    assert retrainer.cv_at == 40  # same regularisation, refitted
    retrainer.fit(judgments[:90])
    assert retrainer.cv_at == 90


def test_uncertain_sampler_varies_its_anchors():
    vectors = unit_rows(200, 16, 4)
    sampler = TripletSampler([f"{i}" for i in range(200)], vectors, IdentityMetric(), "uncertain", seed=1,
                             explore=0.0)
    anchors = [sampler.next(set())[0] for _ in range(60)]
    assert all(len(set(anchors[i:i + 20])) == 20 for i in range(40))
