"""A labelling session: picks triplets, records judgments, undoes, reports progress.

Frontend-independent: the Textual app (and tests) drive it.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from .catalog import open_catalog
from .errors import NotReady
from .labels import JudgmentLog, TripletSampler, new_judgment
from .metric import load_metric_meta, load_weights, weighted_scores
from .search import pick_model_key
from .storage import DatasetPaths
from .transform import thumb_format, thumbnail_for


class LabelSession:
    """State of one labelling session over one dataset and model."""

    def __init__(self, paths: DatasetPaths, strategy: str = "random", seed: int | None = None,
                 session_id: str | None = None):
        self.paths = paths
        with open_catalog(paths) as catalog:
            self.model_key, _ = pick_model_key(catalog, None)
            ids, vectors = catalog.load_vectors(self.model_key)
            items = {it.id: it for it in catalog.items("ok")}
        if len(ids) < 3:
            raise NotReady(f"Labelling needs at least 3 embedded items; {paths.name!r} has {len(ids)}.",
                           f"Run `stylesearch embed {paths.name}` first.")
        self.items = [items[int(i)] for i in ids]
        self.row = {it.path: n for n, it in enumerate(self.items)}
        self.vectors = vectors
        self.weights = load_weights(paths, self.model_key)
        self.metric_meta = load_metric_meta(paths, self.model_key)
        self.thumb_format = thumb_format(paths)
        self.log = JudgmentLog(paths.triplets)
        self.session = session_id or uuid.uuid4().hex[:12]
        self.sampler = TripletSampler([it.path for it in self.items], vectors, self.weights, strategy, seed)
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
        return float(weighted_scores(a, o[None], self.weights)[0])

    def image_path(self, item_path: str) -> Path:
        item = self.items[self.row[item_path]]
        return thumbnail_for(self.paths, item.path, item.content_hash, self.thumb_format)

    def status(self) -> dict:
        counts = self.log.counts()
        agreement = self.metric_meta.get("agreement_after") if self.metric_meta else None
        return {"total": len(self.log.judgments), "session": self.judged_this_session,
                "counts": counts, "agreement": agreement, "malformed": self.log.malformed}


def option_scores(session: LabelSession) -> tuple[float, float] | None:
    if session.current is None:
        return None
    anchor, left, right = session.current
    return session.similarity(anchor, left), session.similarity(anchor, right)


__all__ = ["LabelSession", "option_scores"]
