"""Labelling: triplet selection (random / uncertain) and the state of a labelling session.

Frontend-independent: the Textual app, the tests and benchmarks drive it.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np

from .catalog import open_catalog
from .choices import LABEL_STRATEGIES
from .errors import NotReady, UserError
from .judgments import JudgmentLog, new_judgment, triplet_key
from .metric import Metric, load_metric
from .model_choice import resolve_spec
from .storage import DatasetPaths, thumb_format, thumbnail_for

STRATEGIES = LABEL_STRATEGIES


class TripletSampler:
    """Chooses (anchor, left, right) triplets not judged before.

    `random`: anchor and options uniformly at random. `uncertain`: options from the
    anchor's neighbourhood whose distances to the anchor are closest under the current
    metric: the judgments that teach the metric the most (active learning).
    """

    def __init__(self, paths: list[str], vectors: np.ndarray, metric: Metric,
                 strategy: str = "random", seed: int | None = None, pool: int = 40):
        if len(paths) < 3:
            raise ValueError("need at least three embedded items")
        if strategy not in STRATEGIES:
            raise UserError(f"Unknown strategy {strategy!r}.", f"Choose one of: {', '.join(STRATEGIES)}.")
        self.paths = paths
        self.scaled = metric.to_euclidean(vectors)
        self.strategy = strategy
        self.rng = np.random.default_rng(seed)
        self.pool = pool

    def next(self, seen: set) -> tuple[str, str, str] | None:
        for _ in range(200):
            trip = self._uncertain() if self.strategy == "uncertain" else self._random()
            if triplet_key(*trip) not in seen:
                return trip
        return None

    def _random(self) -> tuple[str, str, str]:
        a, l, r = self.rng.choice(len(self.paths), size=3, replace=False)
        return self.paths[a], self.paths[l], self.paths[r]

    def _uncertain(self) -> tuple[str, str, str]:
        a = int(self.rng.integers(len(self.paths)))
        dist = np.linalg.norm(self.scaled - self.scaled[a], axis=1)
        dist[a] = np.inf
        near = np.argsort(dist)[: min(self.pool, len(dist) - 1)]
        pairs = [(i, j) for x, i in enumerate(near) for j in near[x + 1:]]
        self.rng.shuffle(pairs)
        gaps = np.array([abs(dist[i] - dist[j]) for i, j in pairs])
        i, j = pairs[int(np.argmin(gaps + self.rng.random(len(gaps)) * 1e-6))]
        if self.rng.random() < 0.5:
            i, j = j, i
        return self.paths[a], self.paths[int(i)], self.paths[int(j)]




class LabelSession:
    """State of one labelling session over one dataset and model."""

    def __init__(self, paths: DatasetPaths, strategy: str = "random", seed: int | None = None,
                 session_id: str | None = None, model: str | None = None, pretrained: str | None = None):
        self.paths = paths
        self.model_key = resolve_spec(paths, model, pretrained, embedded_only=True).key
        with open_catalog(paths, readonly=True) as catalog:
            ids, vectors = catalog.load_vectors(self.model_key)
            items = {it.id: it for it in catalog.items("ok")}
        if len(ids) < 3:
            raise NotReady(f"Labelling needs at least 3 embedded items; {paths.name!r} has {len(ids)}.",
                           "Add and embed more images first.", dataset=paths.name, step="embed")
        self.items = [items[int(i)] for i in ids]
        self.row = {it.path: n for n, it in enumerate(self.items)}
        self.vectors = vectors
        self.metric = load_metric(paths, self.model_key, dim=vectors.shape[1])
        self.thumb_format = thumb_format(paths)
        self.log = JudgmentLog(paths.triplets)
        self.session = session_id or uuid.uuid4().hex[:12]
        self.sampler = TripletSampler([it.path for it in self.items], vectors, self.metric, strategy, seed)
        self.current: tuple[str, str, str] | None = None
        self.judged_this_session = 0
        self.advance()

    def advance(self) -> tuple[str, str, str] | None:
        self.current = self.sampler.next(self.log.seen)
        return self.current

    def judge(self, choice: str) -> dict | None:
        """Record a judgment of the current triplet and move to the next one."""
        if self.current is None:
            return None
        anchor, left, right = self.current
        record = new_judgment(self.paths.name, anchor, left, right, choice, self.model_key, self.session)
        self.log.append(record)
        self.judged_this_session += 1
        self.advance()
        return record

    def undo(self) -> dict | None:
        """Withdraw this session's last judgment and show its triplet again."""
        record = self.log.undo(self.session)
        if record is not None:
            self.judged_this_session -= 1
            self.current = (record["anchor"], record["left"], record["right"])
        return record

    def similarity(self, anchor: str, option: str) -> float:
        """Current score of an option against the anchor (learned metric when trained)."""
        a, o = self.vectors[self.row[anchor]], self.vectors[self.row[option]]
        return float(self.metric.scores(a, o[None])[0])

    def image_path(self, item_path: str) -> Path:
        item = self.items[self.row[item_path]]
        return thumbnail_for(self.paths, item.path, item.content_hash, self.thumb_format)

    def status(self) -> dict:
        counts = self.log.counts()
        agreement = self.metric.meta.get("agreement_after")
        return {"total": len(self.log.judgments), "session": self.judged_this_session,
                "counts": counts, "agreement": agreement, "malformed": self.log.malformed}


def option_scores(session: LabelSession) -> tuple[float, float] | None:
    if session.current is None:
        return None
    anchor, left, right = session.current
    return session.similarity(anchor, left), session.similarity(anchor, right)


__all__ = ["STRATEGIES", "LabelSession", "TripletSampler", "option_scores"]
