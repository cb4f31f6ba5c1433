"""The judgments log (triplets.jsonl): read, validate, append, undo.

Each judgment is one JSON line: dataset, anchor, left, right, choice, model, timestamp,
session, id. Undo appends {"undo": <id>} so the log stays append-only. Lines that are not
valid judgments (bad JSON, wrong shape or field types) are counted and skipped, never fatal.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..store.files import append_jsonl, json_lines, now_iso

CHOICES = ("left", "right", "too_similar", "anchor_different", "unknown")
DECISIVE = ("left", "right")
CHOICE_WORDS = {"left": "left is more similar", "right": "right is more similar",
                "too_similar": "too similar to tell", "anchor_different": "anchor too different from both",
                "unknown": "don't know"}  # each answer in plain words, for the frontends
EQUALITY = ("too_similar", "anchor_different")


@dataclass
class LogContents:
    judgments: list[dict] = field(default_factory=list)
    malformed: int = 0
    undone: int = 0


_OPTIONAL_TEXT = ("id", "dataset", "model", "session", "timestamp")


def valid_judgment(rec) -> bool:
    """A judgment record of the right shape: a known choice, three distinct item paths, text fields."""
    if not isinstance(rec, dict) or not isinstance(rec.get("choice"), str) or rec["choice"] not in CHOICES:
        return False
    trip = [rec.get(k) for k in ("anchor", "left", "right")]
    if not all(isinstance(p, str) and p for p in trip) or len(set(trip)) < 3:
        return False
    return all(rec.get(k) is None or isinstance(rec[k], str) for k in _OPTIONAL_TEXT)


def _valid_undo(rec) -> bool:
    return isinstance(rec, dict) and isinstance(rec.get("undo"), str) and set(rec) <= {"undo", "session", "timestamp"}


def parse_log_lines(lines) -> LogContents:
    """Judgments still in force (undo applied); malformed lines are skipped and counted."""
    out = LogContents()
    by_id: dict[str, dict] = {}
    for rec in json_lines(lines):
        if _valid_undo(rec):
            out.undone += by_id.pop(rec["undo"], None) is not None
        elif valid_judgment(rec):
            by_id[rec.get("id") or f"line-{len(by_id)}-{uuid.uuid4().hex}"] = rec
        else:
            out.malformed += 1
    out.judgments = list(by_id.values())
    return out


def read_log(path: str | Path) -> LogContents:
    """The judgments in force in a log file (none when it does not exist)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return LogContents()
    return parse_log_lines(text.splitlines())


def triplet_key(anchor: str, left: str, right: str) -> tuple[str, frozenset]:
    return anchor, frozenset((left, right))


def new_judgment(dataset: str, anchor: str, left: str, right: str, choice: str, model: str,
                 session: str) -> dict:
    if choice not in CHOICES:
        raise UserError(f"Unknown choice {choice!r}.", f"Choose one of: {', '.join(CHOICES)}.")
    return {
        "id": uuid.uuid4().hex, "dataset": dataset, "anchor": anchor, "left": left, "right": right,
        "choice": choice, "model": model, "session": session,
        "timestamp": now_iso("milliseconds"),
    }


def record_judgment(paths, catalog, anchor: str, left: str, right: str, choice: str, model_key: str,
                    session: str = "api") -> dict:
    """Append one judgment of items named by id or path (checked in `catalog`) to the dataset's log; the
    one way a judgment from outside a labelling session (the HTTP API, the Python API) is recorded."""
    names = [catalog.item(str(ref)).path for ref in (anchor, left, right)]
    record = new_judgment(paths.name, *names, choice, model_key, session)
    if not valid_judgment(record):
        raise UserError("Not a valid judgment.", "A judgment names a known choice and three distinct items.")
    append_jsonl(paths.triplets, record)
    return record


class JudgmentLog:
    """Append-only judgments log with undo and knowledge of which triplets were seen."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        contents = read_log(self.path)
        self.judgments = contents.judgments
        self.malformed = contents.malformed
        self.seen = {triplet_key(j["anchor"], j["left"], j["right"]) for j in self.judgments}

    def append(self, record: dict) -> None:
        if not valid_judgment(record):
            raise UserError("Not a valid judgment.", "A judgment names a known choice and three distinct items.")
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
                                 "timestamp": now_iso("milliseconds")})
        self.judgments.remove(last)
        self.seen.discard(triplet_key(last["anchor"], last["left"], last["right"]))
        return last

    def counts(self) -> dict[str, int]:
        out = {c: 0 for c in CHOICES}
        for j in self.judgments:
            out[j["choice"]] += 1
        return out
