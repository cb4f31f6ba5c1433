"""Labelling: triplet selection (random / uncertain), retraining while labelling, and sessions.

Frontend-independent. `LabelLoop` is the in-memory core (selection, the model's guess, when to
retrain); `LabelSession` wraps it around a dataset and its judgments log for the frontends, and
`simulate` drives it with a scripted judge (benchmarks, tests) through the same code.
"""

from __future__ import annotations

import threading
import uuid
from collections import deque
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from ..choices import LABEL_STRATEGIES
from ..embed.choice import resolve_spec
from ..errors import NotReady, UserError
from ..store.catalog import open_catalog
from ..store.paths import DatasetPaths, thumb_format, thumbnail_for
from .fit import Fit, FitOptions, fit_metric, refit
from .judgments import DECISIVE, JudgmentLog, new_judgment, triplet_key
from .kinds import sigmoid
from .metric import IdentityMetric, Metric, load_metric
from .train import judgment_triplets

STRATEGIES = LABEL_STRATEGIES


class _Model:
    """What the sampler knows of the current metric (replaced whole, so swaps are atomic)."""

    def __init__(self, model: Metric | Fit, vectors: np.ndarray, posterior: bool):
        fit = model if isinstance(model, Fit) else None
        self.metric = fit.metric if fit else model
        self.euclid = self.metric.to_euclidean(vectors)
        scale = fit.logit_scale if fit else self.metric.meta.get("logit_scale")
        self.scale = float(scale) if scale else None
        self.cov = fit.covariance() if fit is not None and scale and posterior else None
        if self.cov is not None:
            self.cov = self.cov.copy()
            self.norm = fit.norm
            self.w = np.asarray(self.metric.weights, dtype=np.float64) * fit.logit_scale * fit.norm


class TripletSampler:
    """Chooses (anchor, left, right) triplets not judged before.

    `random`: three items uniformly at random. `uncertain`: for a fresh anchor (not one of the
    last few), the pair of options among a random pool whose order the current model is least
    sure of: smallest |logit| / its standard deviation when the fit carries a posterior (then
    each pick also shrinks that posterior as if answered, so one batch stays varied), else the
    smallest relative gap between the two distances. A share `explore` of its picks are random
    triplets: they keep the judgments representative, which matters when answers are noisy.
    """

    def __init__(self, paths: list[str], vectors: np.ndarray, metric: Metric | Fit | None = None,
                 strategy: str = "random", seed: int | None = None, pool: int = 150, recent: int = 20,
                 explore: float = 0.3):
        if len(paths) < 3:
            raise ValueError("need at least three embedded items")
        if strategy not in STRATEGIES:
            raise UserError(f"Unknown strategy {strategy!r}.", f"Choose one of: {', '.join(STRATEGIES)}.")
        self.paths = paths
        self._rows = {p: i for i, p in enumerate(paths)}
        self.vectors = vectors
        self.strategy = strategy
        self.rng = np.random.default_rng(seed)
        self.pool = min(pool, len(paths) - 1)
        self.recent: deque = deque(maxlen=min(recent, len(paths) // 3))
        self.explore = explore
        self.use(metric if metric is not None else IdentityMetric())

    def use(self, model: Metric | Fit) -> None:
        """Select (and predict) with this metric from now on."""
        self._model = _Model(model, self.vectors, posterior=self.strategy == "uncertain")

    @property
    def metric(self) -> Metric:
        return self._model.metric

    def next(self, seen: set) -> tuple[str, str, str] | None:
        for _ in range(50):
            uncertain = self.strategy == "uncertain" and self.rng.random() >= self.explore
            trip = self._uncertain(seen) if uncertain else self._random()
            if trip is not None and triplet_key(*trip) not in seen:
                return trip
        return None

    def predict(self, anchor: str, left: str, right: str) -> tuple[str | None, float | None]:
        """The option the current metric finds nearer to the anchor and its probability (None
        when the metric is not calibrated on judgments)."""
        model = self._model
        e = model.euclid[[self._rows[p] for p in (anchor, left, right)]].astype(np.float64)
        gap = float(((e[0] - e[2]) ** 2).sum() - ((e[0] - e[1]) ** 2).sum())
        if gap == 0:
            return None, None
        pick = "left" if gap > 0 else "right"
        if model.scale is None:
            return pick, None
        return pick, float(sigmoid(model.scale * abs(gap)))

    def _random(self) -> tuple[str, str, str]:
        a, l, r = self.rng.choice(len(self.paths), size=3, replace=False)
        return self.paths[a], self.paths[l], self.paths[r]

    def _anchor(self) -> int:
        while True:
            a = int(self.rng.integers(len(self.paths)))
            if a not in self.recent:
                self.recent.append(a)
                return a

    def _uncertain(self, seen: set) -> tuple[str, str, str] | None:
        model = self._model
        a = self._anchor()
        others = self.rng.choice(len(self.paths) - 1, size=self.pool, replace=False)
        cand = others + (others >= a)
        mu, spread, feats = self._pair_scores(model, a, cand)
        i_idx, j_idx = np.triu_indices(len(cand), 1)
        score = np.abs(mu[i_idx, j_idx]) / np.sqrt(spread[i_idx, j_idx] + 1e-18)
        for k in np.argsort(score, kind="stable")[:20]:
            i, j = int(i_idx[k]), int(j_idx[k])
            if self.rng.random() < 0.5:
                i, j = j, i
            trip = (self.paths[a], self.paths[int(cand[i])], self.paths[int(cand[j])])
            if triplet_key(*trip) not in seen:
                if feats is not None:
                    self._shrink(model, feats[j] - feats[i])
                return trip
        return None

    def _pair_scores(self, model: _Model, a: int, cand: np.ndarray):
        """Logit gaps mu[i, j] (option j nearer minus i) and their variances, per option pair."""
        if model.cov is not None:
            feats = (self.vectors[a].astype(np.float64) - self.vectors[cand]) ** 2 / model.norm
            d = feats @ model.w
            g = feats @ model.cov @ feats.T
            q = np.diag(g)
            return d[None, :] - d[:, None], np.maximum(q[:, None] + q[None, :] - 2 * g, 0.0), feats
        d = ((model.euclid[cand] - model.euclid[a]).astype(np.float64) ** 2).sum(axis=1)
        return d[None, :] - d[:, None], (d[None, :] + d[:, None]) ** 2, None

    @staticmethod
    def _shrink(model: _Model, f: np.ndarray) -> None:
        """Posterior covariance after one more answer on features f (at probability 1/2)."""
        cf = model.cov @ f
        model.cov -= np.outer(cf, cf) * (0.25 / (1.0 + 0.25 * f @ cf))


class Retrainer:
    """When to retrain while labelling, and the fit: every `every` judgments (every tenth of the
    judgments once that is more: fits get slower as they grow; never when `every` is 0); the
    regularisation is cross-validated again whenever the judgments have doubled since, else reused."""

    def __init__(self, paths: list[str], vectors: np.ndarray, options: FitOptions = FitOptions(),
                 every: int = 25, minimum: int = 10):
        self.row_of = {p: i for i, p in enumerate(paths)}
        self.vectors = vectors
        self.options = options
        self.every = every
        self.minimum = minimum
        self.last = 0
        self.chosen: tuple[str, int] | None = None
        self.cv_at = 0

    def due(self, count: int) -> bool:
        return self.every > 0 and count >= self.minimum and count - self.last >= max(self.every, self.last // 10)

    def fit(self, judgments: list[dict]) -> Fit | None:
        """A fit of these judgments (None while too few are decisive)."""
        self.last = len(judgments)
        trips = judgment_triplets(judgments, self.row_of)
        n = len(trips.decisive)
        if n < self.minimum:
            return None
        if self.chosen is None or n >= 2 * self.cv_at:
            fit = fit_metric(self.vectors, trips, self.options)
            self.chosen, self.cv_at = (fit.kind, fit.candidate), n
            return fit
        return refit(self.vectors, trips, *self.chosen, self.options)


class LabelLoop:
    """Selection, the current model's guess, and retraining over in-memory judgments."""

    def __init__(self, paths: list[str], vectors: np.ndarray, strategy: str = "random",
                 seed: int | None = None, metric: Metric | None = None, options: FitOptions = FitOptions(),
                 every: int = 25, judgments: list | None = None, seen: set | None = None):
        self.sampler = TripletSampler(paths, vectors, metric, strategy, seed)
        self.retrainer = Retrainer(paths, vectors, options, every)
        self.judgments = judgments if judgments is not None else []
        self.seen = seen if seen is not None else {triplet_key(j["anchor"], j["left"], j["right"])
                                                   for j in self.judgments}
        self.fit: Fit | None = None
        self.hits: deque = deque(maxlen=50)
        self.lock = threading.Lock()
        self.current: tuple[str, str, str] | None = None

    @property
    def metric(self) -> Metric:
        return self.sampler.metric

    @property
    def guess(self) -> tuple[str | None, float | None]:
        """The option the current metric would pick for the current triplet, and how sure it is."""
        return self.sampler.predict(*self.current) if self.current else (None, None)

    def advance(self) -> tuple[str, str, str] | None:
        self.current = self.sampler.next(self.seen)
        return self.current

    def observe(self, record: dict) -> bool:
        """Count a judgment of the current triplet against the model's guess (kept elsewhere); True when
        it was counted."""
        pick = self.guess[0] if record["choice"] in DECISIVE else None
        if pick is not None:
            self.hits.append(record["choice"] == pick)
        return pick is not None

    def retrain_due(self) -> bool:
        return self.retrainer.due(len(self.judgments))

    def retrain(self) -> Fit | None:
        """Fit the judgments so far and select with the result (safe to run in a worker thread)."""
        with self.lock:
            fit = self.retrainer.fit(list(self.judgments))
        if fit is not None:
            self.sampler.use(fit)
            self.fit = fit
        return fit


def simulate(loop: LabelLoop, judge: Callable[[str, str, str], str], count: int,
             on_judgment: Callable[[LabelLoop], None] | None = None) -> list[dict]:
    """Label `count` triplets chosen by the loop, answered by `judge(anchor, left, right)`,
    retraining when due (synchronously). Returns the loop's judgments."""
    if loop.current is None:
        loop.advance()
    for _ in range(count):
        if loop.current is None:
            break
        anchor, left, right = loop.current
        record = {"anchor": anchor, "left": left, "right": right, "choice": judge(anchor, left, right)}
        loop.observe(record)
        loop.judgments.append(record)
        loop.seen.add(triplet_key(anchor, left, right))
        if loop.retrain_due():
            loop.retrain()
        loop.advance()
        if on_judgment is not None:
            on_judgment(loop)
    return loop.judgments


class Marks(NamedTuple):
    """What a triplet is shown with: the metric's pick and how sure it is, and the options' scores."""

    triplet: tuple[str, str, str] | None
    guess: tuple[str | None, float | None]
    scores: tuple[float, float] | None
    counted: bool = False  # whether its answer was counted against the guess


class LabelSession:
    """State of one labelling session over one dataset and model."""

    def __init__(self, paths: DatasetPaths, strategy: str = "random", seed: int | None = None,
                 session_id: str | None = None, model: str | None = None, pretrained: str | None = None,
                 options: FitOptions = FitOptions(), retrain_every: int = 25):
        self.paths = paths
        self.model_key = resolve_spec(paths, model, pretrained, embedded_only=True).key
        with open_catalog(paths, readonly=True) as catalog:
            ids, vectors = catalog.vectors.load(self.model_key)
            items = {it.id: it for it in catalog.items("ok")}
        if len(ids) < 3:
            raise NotReady(f"Labelling needs at least 3 embedded items; {paths.name!r} has {len(ids)}.",
                           "Add and embed more images first.", dataset=paths.name, step="embed")
        self.items = [items[int(i)] for i in ids]
        self.row = {it.path: n for n, it in enumerate(self.items)}
        self.vectors = vectors
        self.thumb_format = thumb_format(paths)
        self.log = JudgmentLog(paths.triplets)
        self.session = session_id or uuid.uuid4().hex[:12]
        self.loop = LabelLoop([it.path for it in self.items], vectors, strategy, seed,
                              load_metric(paths, self.model_key, dim=vectors.shape[1]), options,
                              retrain_every, self.log.judgments, self.log.seen)
        self.judged_this_session = 0
        self.shown: list[Marks] = []  # what each of this session's judgments was shown with, for undo
        self.pinned: Marks | None = None  # the marks of a triplet brought back by undo
        self.advance()

    @property
    def sampler(self) -> TripletSampler:
        return self.loop.sampler

    @property
    def metric(self) -> Metric:
        return self.loop.metric

    @property
    def current(self) -> tuple[str, str, str] | None:
        return self.loop.current

    @current.setter
    def current(self, value) -> None:
        self.loop.current = value

    def advance(self) -> tuple[str, str, str] | None:
        return self.loop.advance()

    def judge(self, choice: str) -> dict | None:
        """Record a judgment of the current triplet and move to the next one."""
        if self.current is None:
            return None
        anchor, left, right = self.current
        marks = self.marks()
        record = new_judgment(self.paths.name, anchor, left, right, choice, self.model_key, self.session)
        self.log.append(record)
        self.shown.append(Marks(marks.triplet, marks.guess, marks.scores, self.loop.observe(record)))
        self.judged_this_session += 1
        self.pinned = None
        self.advance()
        return record

    def undo(self) -> dict | None:
        """Withdraw this session's last judgment and show its triplet again, with the marks (the metric's
        pick, how sure, the scores) it was shown with, even if the metric was refitted since."""
        record = self.log.undo(self.session)
        if record is not None:
            self.judged_this_session -= 1
            self.current = (record["anchor"], record["left"], record["right"])
            marks = self.shown.pop() if self.shown else None
            if marks is not None and marks.counted and self.loop.hits:
                self.loop.hits.pop()
            self.pinned = marks if marks is not None and marks.triplet == self.current else None
        return record

    def marks(self) -> "Marks":
        """The current triplet's marks: as first shown when undo brought it back, else the metric's now."""
        if self.pinned is not None and self.pinned.triplet == self.current:
            return self.pinned
        if self.current is None:
            return Marks(None, (None, None), None)
        anchor, left, right = self.current
        return Marks(self.current, self.loop.guess,
                     (self.similarity(anchor, left), self.similarity(anchor, right)))

    def retrain_due(self) -> bool:
        return self.loop.retrain_due()

    def retrain(self) -> Fit | None:
        """Refit the metric to the judgments so far (for this session only; `train` saves one)."""
        return self.loop.retrain()

    def guess(self) -> tuple[str | None, float | None]:
        """The option the metric picks for the current triplet, and how sure it is (see marks)."""
        return self.marks().guess

    def similarity(self, anchor: str, option: str) -> float:
        """Current score of an option against the anchor (learned metric when trained)."""
        a, o = self.vectors[self.row[anchor]], self.vectors[self.row[option]]
        return float(self.metric.scores(a, o[None])[0])

    def image_path(self, item_path: str) -> Path:
        item = self.items[self.row[item_path]]
        return thumbnail_for(self.paths, item.path, item.content_hash, self.thumb_format)

    def status(self) -> dict:
        fit, hits = self.loop.fit, self.loop.hits
        agreement = fit.cv_agreement if fit is not None else self.metric.meta.get("agreement_after")
        return {"total": len(self.log.judgments), "session": self.judged_this_session,
                "counts": self.log.counts(), "agreement": agreement, "malformed": self.log.malformed,
                "retrained_at": self.loop.retrainer.last if fit is not None else None,
                "guesses": len(hits), "guessed_right": int(sum(hits))}


def option_scores(session: LabelSession) -> tuple[float, float] | None:
    """The current options' scores against the anchor (see LabelSession.marks)."""
    return session.marks().scores


__all__ = ["STRATEGIES", "LabelLoop", "LabelSession", "Retrainer", "TripletSampler", "option_scores",
           "simulate"]
