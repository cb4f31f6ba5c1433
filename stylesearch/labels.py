"""The judgments log (triplets.jsonl) and triplet selection for labelling.

Each judgment is one JSON line: dataset, anchor, left, right, choice, model, timestamp,
session, id. Undo appends {"undo": <id>} so the log stays append-only.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .storage import append_jsonl

CHOICES = ("left", "right", "too_similar", "anchor_different", "unknown")
DECISIVE = ("left", "right")
EQUALITY = ("too_similar", "anchor_different")


@dataclass
class LogContents:
    judgments: list[dict] = field(default_factory=list)
    malformed: int = 0
    undone: int = 0


def _valid(rec: dict) -> bool:
    return (isinstance(rec, dict) and rec.get("choice") in CHOICES
            and all(isinstance(rec.get(k), str) for k in ("anchor", "left", "right")))


def read_log(path: str | Path) -> LogContents:
    """Judgments still in force (undo applied); malformed lines are skipped and counted."""
    out = LogContents()
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return out
    by_id: dict[str, dict] = {}
    for line in lines:
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            out.malformed += 1
            continue
        if isinstance(rec, dict) and "undo" in rec:
            out.undone += by_id.pop(rec["undo"], None) is not None
        elif _valid(rec):
            by_id[rec.get("id") or f"line-{len(by_id)}-{uuid.uuid4().hex}"] = rec
        else:
            out.malformed += 1
    out.judgments = list(by_id.values())
    return out


def triplet_key(anchor: str, left: str, right: str) -> tuple[str, frozenset]:
    return anchor, frozenset((left, right))


def new_judgment(dataset: str, anchor: str, left: str, right: str, choice: str, model: str,
                 session: str) -> dict:
    if choice not in CHOICES:
        raise ValueError(f"unknown choice {choice!r}")
    return {
        "id": uuid.uuid4().hex, "dataset": dataset, "anchor": anchor, "left": left, "right": right,
        "choice": choice, "model": model, "session": session,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
    }


class JudgmentLog:
    """Append-only judgments log with undo and knowledge of which triplets were seen."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        contents = read_log(self.path)
        self.judgments = contents.judgments
        self.malformed = contents.malformed
        self.seen = {triplet_key(j["anchor"], j["left"], j["right"]) for j in self.judgments}

    def append(self, record: dict) -> None:
        append_jsonl(self.path, record)
        self.judgments.append(record)
        self.seen.add(triplet_key(record["anchor"], record["left"], record["right"]))

    def undo(self, session: str) -> dict | None:
        """Withdraw this session's last judgment; returns it (so it can be shown again)."""
        mine = [j for j in self.judgments if j.get("session") == session]
        if not mine:
            return None
        last = mine[-1]
        append_jsonl(self.path, {"undo": last["id"], "session": session,
                                 "timestamp": datetime.now(timezone.utc).isoformat(timespec="milliseconds")})
        self.judgments.remove(last)
        self.seen.discard(triplet_key(last["anchor"], last["left"], last["right"]))
        return last

    def counts(self) -> dict[str, int]:
        out = {c: 0 for c in CHOICES}
        for j in self.judgments:
            out[j["choice"]] += 1
        return out


class TripletSampler:
    """Chooses (anchor, left, right) triplets not judged before.

    `random`: anchor and options uniformly at random. `uncertain`: options from the
    anchor's neighbourhood whose distances to the anchor are closest under the current
    metric: the judgments that teach the metric the most (active learning).
    """

    def __init__(self, paths: list[str], vectors: np.ndarray, weights: np.ndarray | None,
                 strategy: str = "random", seed: int | None = None, pool: int = 40):
        if len(paths) < 3:
            raise ValueError("need at least three embedded items")
        self.paths = paths
        self.scaled = vectors * np.sqrt(weights if weights is not None else 1.0)
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
