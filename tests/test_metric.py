"""Judgments log (undo, malformed lines) and the learned weighted metric on a planted simulation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stylesearch.errors import NotReady
from stylesearch.learn.judgments import JudgmentLog, new_judgment, read_log
from stylesearch.learn.labelling import TripletSampler
from stylesearch.learn.metric import DiagonalMetric, IdentityMetric, load_metric
from stylesearch.learn.train import TrainOptions, train_metric
from stylesearch.query.search import SearchRequest, Term, search
from stylesearch.store.catalog import open_catalog
from stylesearch.store.files import append_jsonl
from stylesearch.store.paths import dataset_paths

from .conftest import unit_rows


def planted_dataset(tmp_path, n=300, dim=32, seed=0, name="planted"):
    """Items with random unit vectors and a hidden weight vector that the 'user' judges by."""
    paths = dataset_paths(name, tmp_path)
    vectors = unit_rows(n, dim, seed)
    with open_catalog(paths, create=True) as cat, cat.transaction():
        cat.vectors.ensure_model("m", "m", "t", dim, "float32")
        for i in range(n):
            cat.upsert_item(f"img{i}.jpg", content_hash=f"{i:064d}", status="ok")
        cat.vectors.put("m", [f"{i:064d}" for i in range(n)], vectors, "float32")
    rng = np.random.default_rng(seed + 1)
    hidden = np.where(rng.random(dim) < 0.25, 8.0, 0.1)
    return paths, vectors, hidden * dim / hidden.sum()


def simulate(paths, vectors, hidden, count, seed=2, skips=0.0):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        a, l, r = rng.choice(len(vectors), 3, replace=False)
        dl = hidden @ (vectors[a] - vectors[l]) ** 2
        dr = hidden @ (vectors[a] - vectors[r]) ** 2
        choice = "left" if dl < dr else "right"
        if abs(dl - dr) < skips:
            choice = "too_similar"
        append_jsonl(paths.triplets, new_judgment(paths.name, f"img{a}.jpg", f"img{l}.jpg", f"img{r}.jpg",
                                                  choice, "m", "sim"))


def test_training_recovers_planted_metric(tmp_path):
    paths, vectors, hidden = planted_dataset(tmp_path)
    simulate(paths, vectors, hidden, 1000, skips=0.02)
    meta = train_metric(paths, "m", TrainOptions(seed=0))
    assert meta["agreement_before"] < 0.8
    assert meta["agreement_after"] > meta["agreement_before"] + 0.1
    assert meta["agreement_after"] > 0.85
    assert meta["equality_triplets"] > 0 and meta["kind"] == "diagonal"
    assert meta["judgments_used"] == meta["train_triplets"] + meta["val_triplets"] + meta["equality_triplets"]
    assert meta["agreement_ci"][0] < meta["agreement_after"] < meta["agreement_ci"][1]
    assert meta["regularisation"]["family"] in ("uniform", "sparse") and meta["logit_scale"] > 0
    metric = load_metric(paths, "m", dim=32)
    assert isinstance(metric, DiagonalMetric) and metric.meta["kind"] == "diagonal"
    weights = metric.weights
    assert weights.shape == (32,) and (weights >= 0).all() and abs(weights.mean() - 1) < 1e-4
    assert np.corrcoef(weights, hidden)[0, 1] > 0.7
    saved = json.loads(paths.metric_meta("m").read_text())
    assert saved["agreement_after"] == meta["agreement_after"]


def test_search_applies_weights_unless_raw(tmp_path):
    paths, vectors, hidden = planted_dataset(tmp_path, n=120, name="weighted")
    simulate(paths, vectors, hidden, 600)
    train_metric(paths, "m")
    metric = load_metric(paths, "m")
    learned = search(paths, SearchRequest([Term(1.0, "like", "1")], k=5))
    raw = search(paths, SearchRequest([Term(1.0, "like", "1")], k=5, raw=True))
    expected = np.argsort(-metric.scores(vectors[0], vectors))[1:6] + 1
    assert [r["id"] for r in learned] == expected.tolist()
    assert [r["id"] for r in raw] == (np.argsort(-(vectors @ vectors[0]))[1:6] + 1).tolist()


def test_train_skips_malformed_lines_and_applies_undo(tmp_path):
    paths, vectors, hidden = planted_dataset(tmp_path, n=40, name="messy")
    simulate(paths, vectors, hidden, 30)
    with open(paths.triplets, "a") as fh:
        fh.write("{not json\n")
        fh.write(json.dumps({"anchor": "img1.jpg", "choice": "left"}) + "\n")
    log = JudgmentLog(paths.triplets)
    last = log.judgments[-1]
    append_jsonl(paths.triplets, {"undo": last["id"]})
    contents = read_log(paths.triplets)
    assert contents.malformed == 2 and contents.undone == 1 and len(contents.judgments) == 29
    meta = train_metric(paths, "m", TrainOptions(seed=1))
    assert meta["malformed_lines"] == 2 and meta["undone"] == 1
    assert meta["train_triplets"] + meta["val_triplets"] == 29


def test_train_needs_enough_judgments(tmp_path):
    paths, vectors, hidden = planted_dataset(tmp_path, n=20, name="few")
    simulate(paths, vectors, hidden, 3)
    with pytest.raises(NotReady, match="at least 5"):
        train_metric(paths, "m")


def test_train_cli_reports_agreement(cli, root):
    paths, vectors, hidden = planted_dataset(root, n=80, name="clitrain")
    simulate(paths, vectors, hidden, 200)
    out = cli.json("train", "clitrain", "--json", "--seed", "3")
    assert out["train_triplets"] == 160 and out["val_triplets"] == 40
    human = cli("train", "clitrain")
    assert "held-out agreement" in human.stderr and human.stdout == ""


def test_uncertain_sampler_prefers_close_calls():
    vectors = unit_rows(60, 8, seed=4)
    paths = [f"{i}.jpg" for i in range(60)]
    seen: set = set()
    random_gaps, uncertain_gaps = [], []
    for strategy, gaps in (("random", random_gaps), ("uncertain", uncertain_gaps)):
        sampler = TripletSampler(paths, vectors, IdentityMetric(), strategy, seed=1)
        for _ in range(30):
            a, l, r = (int(p.split(".")[0]) for p in sampler.next(seen))
            gaps.append(abs(np.linalg.norm(vectors[a] - vectors[l]) - np.linalg.norm(vectors[a] - vectors[r])))
    assert np.mean(uncertain_gaps) < np.mean(random_gaps) / 3


def test_distance_of_score_inverts_similarity_and_never_goes_negative():
    from stylesearch.learn.metric import distance_of_score, similarity

    d = np.array([0.0, 0.3, 1.0, 1.7, 2.0])
    np.testing.assert_allclose(distance_of_score(similarity(d ** 2)), d, atol=1e-7)
    assert distance_of_score(np.array([1.2]))[0] == 0.0  # rounding above 1 is distance 0, not nan


def test_posterior_shrink_is_the_exact_rank_one_update():
    """Sherman-Morrison: the covariance after one answer equals inv(inv(cov) + f f^T / 4)."""
    from types import SimpleNamespace

    rng = np.random.default_rng(3)
    a = rng.normal(size=(5, 5))
    cov, f = a @ a.T + np.eye(5), rng.normal(size=5)
    model = SimpleNamespace(cov=cov.copy())
    TripletSampler._shrink(model, f)
    np.testing.assert_allclose(model.cov, np.linalg.inv(np.linalg.inv(cov) + 0.25 * np.outer(f, f)), rtol=1e-9)


def test_unknown_strategy_is_refused_with_the_choices():
    from stylesearch.choices import LABEL_STRATEGIES
    from stylesearch.errors import UserError

    with pytest.raises(UserError) as refused:
        TripletSampler(["a", "b", "c"], unit_rows(3, 4), None, "nope", 0)
    assert "'nope'" in refused.value.message and all(s in refused.value.hint for s in LABEL_STRATEGIES)


def test_train_options_hand_every_setting_to_the_fit():
    from stylesearch.learn.fit import FitOptions

    options = TrainOptions(kind="lowrank", rank=3, seed=7, folds=4, equality_weight=0.5)
    assert options.fit_options() == FitOptions(kind="lowrank", rank=3, seed=7, folds=4, equality_weight=0.5)


def test_guess_rate_window_is_the_last_fifty_answers(tmp_path):
    """The labeller reports how many of the last 50 answers the metric guessed (README)."""
    from stylesearch.learn.labelling import LabelLoop

    loop = LabelLoop([f"{i}.jpg" for i in range(6)], unit_rows(6, 4), "random", seed=0)
    for n in range(60):
        loop.hits.append(n < 10)
    assert len(loop.hits) == 50 and sum(loop.hits) == 0


def test_metric_files_without_a_kind_are_diagonal_and_negative_weights_are_named():
    from stylesearch.learn.metric import _from_arrays, parameter_problem

    old = _from_arrays({"weights": np.ones(3)}, {})  # written before metrics had kinds
    assert isinstance(old, DiagonalMetric) and old.meta["kind"] == "diagonal"
    assert parameter_problem(DiagonalMetric(np.array([1.0, -0.5, 2.0]), {})) == "negative weights"
    assert parameter_problem(DiagonalMetric(np.array([1.0, 0.5, 2.0]), {})) is None


def test_the_optimiser_stops_at_the_iteration_limit():
    from types import SimpleNamespace

    from stylesearch.learn.kinds import Model

    def rosenbrock(x):  # a valley L-BFGS-B needs dozens of iterations to follow
        f = (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2
        grad = np.array([-2 * (1 - x[0]) - 400 * x[0] * (x[1] - x[0] ** 2), 200 * (x[1] - x[0] ** 2)])
        return f, grad

    def solve(max_iter):
        model = Model(np.zeros((1, 2)), [], SimpleNamespace(max_iter=max_iter, equality_weight=0.0))
        return model._minimize(rosenbrock, np.array([-1.2, 1.0]))

    np.testing.assert_allclose(solve(500), [1.0, 1.0], atol=1e-3)
    assert np.abs(solve(3) - 1.0).max() > 0.1
