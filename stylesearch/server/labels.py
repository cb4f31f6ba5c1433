"""Triplet judgments over HTTP: the same JSONL log, validation and sessions as the terminal labeller.

A page's labelling session is a LabelSession kept warm per (dataset, session id); a judgment of
its current triplet goes through `LabelSession.judge`, any other one through `new_judgment` +
`valid_judgment` and a plain append. Every append and undo holds one process-wide lock.
"""

from __future__ import annotations

import re
from typing import Optional

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from ..errors import UserError
from .state import LABEL_SESSIONS, ServerState

router = APIRouter(tags=["labels"])
_SESSION = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class TripletBody(BaseModel):
    """One judgment: which option (left/right) is more like the anchor (items by path or id)."""

    dataset: str
    anchor: str
    left: str
    right: str
    choice: str = Field(description="left, right, too_similar, anchor_different or unknown")
    session: Optional[str] = None
    model: Optional[str] = None


class UndoBody(BaseModel):
    dataset: str
    session: str


def _session_id(value: str | None) -> str:
    if value is None or not _SESSION.fullmatch(value):
        raise UserError("A labelling session id is 1-64 letters, digits, '_' or '-'.")
    return value


def label_session(server: ServerState, name: str, session: str, strategy: str = "random"):
    """The warm LabelSession of a page (a fresh one, same id, when the catalog or metric changed)."""
    from ..learn.labelling import LabelSession

    state = server.dataset(name)
    key = (name, session)
    spec = state.spec()
    stamp = (state.catalog_stamp(), state.model_stamp(spec.key))
    hit = server.label_sessions.get(key)
    if hit is None or hit[0] != stamp:
        hit = (stamp, LabelSession(state.paths, strategy=strategy, session_id=session))
        server.label_sessions[key] = hit
    server.label_sessions.move_to_end(key)
    while len(server.label_sessions) > LABEL_SESSIONS:
        server.label_sessions.popitem(last=False)
    return hit[1]


def view(server: ServerState, name: str, session_id: str, session) -> dict:
    """The session's current triplet (items with ids and option scores, the option the metric would
    pick and how sure it is, as the terminal labeller's ◆) and its counts."""
    from ..learn.labelling import option_scores

    reader = server.dataset(name).reader()
    triplet = None
    if session.current is not None:
        scores = option_scores(session) or (None, None)
        pick, sure = session.guess()
        anchor, left, right = (reader.item(p) for p in session.current)
        triplet = {"anchor": {"id": anchor.id, "path": anchor.path},
                   "left": {"id": left.id, "path": left.path, "score": round(scores[0], 4)},
                   "right": {"id": right.id, "path": right.path, "score": round(scores[1], 4)},
                   "pick": pick, "sure": None if sure is None else round(sure, 4)}
    return {"dataset": name, "session": session_id, "triplet": triplet, "status": session.status()}


def judge(server: ServerState, body: TripletBody) -> dict:
    """Record one judgment; the page's session moves to its next triplet."""
    from ..learn.judgments import record_judgment

    state = server.dataset(body.dataset)
    reader = state.reader()
    anchor, left, right = (reader.item(ref).path for ref in (body.anchor, body.left, body.right))
    session = None
    if body.session is not None:
        session = label_session(server, body.dataset, _session_id(body.session))
    with server.triplets_lock:
        if session is not None and session.current == (anchor, left, right):
            record = session.judge(body.choice)
        else:
            record = record_judgment(state.paths, reader, anchor, left, right, body.choice,
                                     state.spec(body.model).key, body.session or "api")
    if session is not None and session.retrain_due():  # active learning as in the terminal labeller
        session.retrain()
    following = view(server, body.dataset, body.session, session) if session is not None else None
    return {"record": record, "next": following}


def undo(server: ServerState, body: UndoBody) -> dict:
    """Withdraw the session's last judgment; its triplet is shown again."""
    from ..learn.judgments import JudgmentLog

    session_id = _session_id(body.session)
    state = server.dataset(body.dataset)
    session = label_session(server, body.dataset, session_id)
    with server.triplets_lock:
        record = session.undo()
        if record is None:  # judged through another session object (e.g. before a reload)
            record = JudgmentLog(state.paths.triplets).undo(session_id)
    return {"undone": record, "next": view(server, body.dataset, session_id, session)}


def judgments(server: ServerState, name: str, limit: int) -> dict:
    from ..learn.judgments import CHOICES, read_log

    contents = read_log(server.dataset(name).paths.triplets)
    counts = {c: 0 for c in CHOICES}
    for j in contents.judgments:
        counts[j["choice"]] += 1
    return {"dataset": name, "total": len(contents.judgments), "counts": counts, "malformed": contents.malformed,
            "undone": contents.undone, "judgments": contents.judgments[-limit:]}


@router.get("/api/datasets/{name}/label")
async def label_next(request: Request, name: str, session: str = Query(..., description="the page's session id"),
                     strategy: str = "random") -> dict:
    """The current triplet of a labelling session (created on first use) and its counts."""
    server = request.app.state.server
    return await server.run(lambda: view(server, name, session,
                                         label_session(server, name, _session_id(session), strategy)))


@router.post("/api/triplets")
async def post_triplet(request: Request, body: TripletBody) -> dict:
    """Append one judgment to the dataset's triplets.jsonl (validated as the labeller does)."""
    server = request.app.state.server
    return await server.run(judge, server, body)


@router.post("/api/triplets/undo")
async def post_undo(request: Request, body: UndoBody) -> dict:
    server = request.app.state.server
    return await server.run(undo, server, body)


@router.get("/api/triplets")
async def get_triplets(request: Request, dataset: str, limit: int = Query(1000, ge=1, le=100_000)) -> dict:
    """Judgments in force (undo applied), the last `limit` of them, with counts."""
    server = request.app.state.server
    return await server.run(judgments, server, dataset, limit)
