"""How the server shows errors: JSON `{"error", "hint", "step", ...}` with an HTTP status.

Library errors keep the CLI's message and hint. Status codes: your input 400, no such dataset or
item 404, a path leading outside the dataset 403, the dataset must be prepared first (NotReady:
embed/index/umap-export) or another process is writing it (DatasetBusy) 409, body or image too
large 413, the server cannot serve it now (unreadable catalog or metric, model weights missing,
engine queue full) 503, a full disk 507.
"""

from __future__ import annotations

import json

from ..errors import (CatalogError, DatasetBusy, DatasetNotFound, DiskFull, ItemNotFound, ModelWeightsMissing, NotReady,
                      PathRefused, StyleSearchError, UserError)
from ..store.images import BadImage

_STATUS = ((DatasetNotFound, 404), (ItemNotFound, 404), (PathRefused, 403), (NotReady, 409), (DatasetBusy, 409),
           (ModelWeightsMissing, 503), (CatalogError, 503), (DiskFull, 507), (UserError, 400))


class TooLarge(UserError):
    """A request body, an upload or an image over the server's limits (413)."""


class Overloaded(StyleSearchError):
    """Too many requests waiting for the engine (503)."""


class Unauthorized(UserError):
    """A missing or wrong token (401)."""


def status_of(exc: StyleSearchError) -> int:
    if isinstance(exc, TooLarge) or (isinstance(exc, BadImage) and exc.message.startswith("refused")):
        return 413
    if isinstance(exc, BadImage):
        return 400
    if isinstance(exc, Overloaded):
        return 503
    if isinstance(exc, Unauthorized):
        return 401
    return next((code for cls, code in _STATUS if isinstance(exc, cls)), 500)


def error_body(exc: StyleSearchError) -> dict:
    """The JSON body of an error: what the CLI would print, plus what a client needs to rebuild it."""
    kind = "UserError" if isinstance(exc, (TooLarge, Unauthorized)) else type(exc).__name__
    return {"error": exc.message, "hint": exc.hint, "step": exc.step, "dataset": exc.dataset, "kind": kind,
            "exit_code": exc.exit_code}


def plain_error(message: str, hint: str | None = None, status: int = 400) -> tuple[int, bytes]:
    """(status, body) for errors raised outside the library (routing, validation, limits)."""
    exit_code = 2 if status < 500 else 1
    body = {"error": message, "hint": hint, "step": None, "dataset": None, "kind": "UserError" if exit_code == 2
            else "StyleSearchError", "exit_code": exit_code}
    return status, json.dumps(body).encode()
