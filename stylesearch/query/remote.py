"""A small client of `stylesearch serve`, for the CLI's fast path (`search --server URL`).

Standard library only, so a search through a warm server costs the interpreter's start-up and one
request: no numpy, torch or model load here. Server errors come back as the library's own error
types, with the same message, hint and exit code as a local search. A whole request has one deadline
(TIMEOUT_SECONDS), however slowly the bytes come; a reply that is not the JSON a server sends is a
clear error.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

from .. import errors
from ..ingest.urls import is_http_url

SERVER_ENV = "STYLESEARCH_SERVER"
TOKEN_ENV = "STYLESEARCH_TOKEN"
_IMAGE_WORD = re.compile(r"image:(.*)$", re.S)
TIMEOUT_SECONDS = 300.0  # for a whole request: connecting, sending, and reading the whole answer
MAX_REPLY_BYTES = 256 << 20
ROW_KEYS = ("rank", "score", "id", "path", "file")  # what the CLI prints of a search result
READY_POLL_SECONDS = 0.2  # how often to ask a server that is still loading its datasets


@dataclass(frozen=True)
class RemoteTerm:
    """A parsed query term as the server reports it (what `describe_terms` prints)."""

    weight: float
    kind: str
    value: str


class ServerClient:
    """JSON requests to one server; one connection per request, `timeout` seconds for all of it."""

    def __init__(self, url: str, token: str | None = None, timeout: float | None = None):
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise errors.UserError(f"Not a server URL: {url!r}.", "Give it as http://HOST:PORT.")
        self.url, self.parts = url, parts
        self.timeout = TIMEOUT_SECONDS if timeout is None else timeout
        self.token = token if token is not None else os.environ.get(TOKEN_ENV)

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None) -> dict:
        cls = http.client.HTTPSConnection if self.parts.scheme == "https" else http.client.HTTPConnection
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        conn = cls(self.parts.hostname, self.parts.port, timeout=self.timeout)  # bounds connecting
        expired, sockets, response = threading.Event(), [], None
        deadline = threading.Timer(self.timeout, _cut, (sockets, expired))  # however slowly the bytes come
        deadline.daemon = True
        deadline.start()
        try:
            conn.connect()
            sockets.append(conn.sock)  # the response keeps reading it after the connection lets it go
            if expired.is_set():
                _cut(sockets, expired)
            conn.request(method, self.parts.path.rstrip("/") + path, body=body, headers=headers)
            response = conn.getresponse()
            data = _read_reply(response, self.url)
            if expired.is_set():  # the cut socket read as the end of the answer
                raise TimeoutError
        except (OSError, http.client.HTTPException) as exc:
            if expired.is_set() or isinstance(exc, TimeoutError):
                raise errors.StyleSearchError(
                    f"The stylesearch server at {self.url} sent no complete answer within {self.timeout:g} s.",
                    "Check that the server is healthy, or search without it.") from None
            raise errors.StyleSearchError(f"Cannot reach the stylesearch server at {self.url} ({exc}).",
                                          "Start the server, or search the datasets on this machine directly "
                                          f"(with no server URL, and {SERVER_ENV} unset).") from None
        finally:
            deadline.cancel()
            if response is not None:
                response.close()
            conn.close()
        if response.status >= 400:
            raise error_from(response.status, data, self.url)
        try:
            return json.loads(data)
        except (ValueError, RecursionError):
            raise _bad_reply(self.url, f"something that is not JSON: {_snippet(data)}") from None

    def get(self, path: str) -> dict:
        return self.request("GET", path)

    def wait_ready(self) -> None:
        """Return once the server has loaded its datasets (`/health` says `ready`), asking again every
        READY_POLL_SECONDS within the deadline. A server that does not say, or a /health that fails,
        counts as ready: the request that follows reports what is wrong."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                health = self.get("/health")
            except errors.StyleSearchError:
                return
            if not isinstance(health, dict) or health.get("ready", True) is not False:
                return
            if time.monotonic() + READY_POLL_SECONDS > deadline:
                raise errors.StyleSearchError(
                    f"The stylesearch server at {self.url} was still loading its datasets after {self.timeout:g} s.",
                    "Check the server's log, or search without it.")
            time.sleep(READY_POLL_SECONDS)

    def post(self, path: str, payload: dict, uploads: dict[str, bytes] | None = None) -> dict:
        """POST a JSON body, or a multipart form (`query` + `image` parts) when there are uploads."""
        if not uploads:
            return self.request("POST", path, json.dumps(payload).encode(), "application/json")
        body, content_type = multipart({**payload, "uploads": list(uploads)}, list(uploads.values()))
        return self.request("POST", path, body, content_type)


def _cut(sockets: list, expired: threading.Event) -> None:
    """End a request past its deadline: shutting its socket down wakes the read waiting on it."""
    expired.set()
    for sock in sockets:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _read_reply(response: http.client.HTTPResponse, url: str) -> bytes:
    chunks, size = [], 0
    while chunk := response.read(1 << 16):
        size += len(chunk)
        if size > MAX_REPLY_BYTES:
            raise _bad_reply(url, f"more than {MAX_REPLY_BYTES >> 20} MiB")
        chunks.append(chunk)
    if response.length:  # bytes the answer announced and never sent
        raise http.client.IncompleteRead(b"".join(chunks), response.length)
    return b"".join(chunks)


def _snippet(data: bytes) -> str:
    text = " ".join(data.decode("utf-8", "replace").split())
    return repr(text[:80] + ("..." if len(text) > 80 else ""))


def _bad_reply(url: str, what: str) -> errors.StyleSearchError:
    return errors.StyleSearchError(f"The server at {url} answered {what}.",
                                   "Check that the URL names a stylesearch server of this version.")


def multipart(payload: dict, files: list[bytes]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="query"\r\n'
             f'Content-Type: application/json\r\n\r\n{json.dumps(payload)}\r\n'.encode()]
    for n, data in enumerate(files):
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="upload-{n}"\r\n'
                     f'Content-Type: application/octet-stream\r\n\r\n'.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def error_from(status: int, data: bytes, url: str) -> errors.StyleSearchError:
    """The library error a server's JSON error body describes."""
    try:
        body = json.loads(data)
        message = body["error"]
    except (ValueError, KeyError, TypeError):
        text = data.decode("utf-8", "replace").strip()[:300]
        return errors.StyleSearchError(f"The server at {url} answered {status}: {text}")
    default = errors.DatasetBusy if body.get("exit_code") == 75 else (
        errors.UserError if body.get("exit_code") == 2 else errors.StyleSearchError)
    cls = getattr(errors, str(body.get("kind")), None)
    cls = cls if isinstance(cls, type) and issubclass(cls, errors.StyleSearchError) else default
    return cls(message, body.get("hint"), dataset=body.get("dataset"), step=body.get("step"))


def query_uploads(words: list[str], images: list[str]) -> dict[str, bytes]:
    """Local files the query names (`--image PATH`, terms `image:PATH`), read to be uploaded."""
    files: dict[str, bytes] = {}
    for value in images:
        value = value.strip()
        if is_http_url(value) or not value:
            continue
        path = Path(value).expanduser()
        if not path.is_file():
            raise errors.UserError(f"Query image {value} does not exist.")
        files[value] = path.read_bytes()
    for word in words:
        m = _IMAGE_WORD.search(word)
        value = m.group(1).strip() if m else ""
        if value and not is_http_url(value) and value not in files and Path(value).expanduser().is_file():
            files[value] = Path(value).expanduser().read_bytes()
    return files


def remote_search(url: str, dataset: str | None, words: list[str], images: list[str], likes: list[str],
                  options: dict, datasets: list[str] | None = None, all_datasets: bool = False):
    """(rows, title, terms) of a search run by the server at `url`: one dataset, or several."""
    client = ServerClient(url)
    payload = {"terms": words, "images": images, "likes": likes, **options}
    uploads = query_uploads(words, images)
    client.wait_ready()
    if dataset is not None:
        answer = client.post(f"/api/datasets/{quote(dataset, safe='')}/search", payload, uploads)
    else:
        answer = client.post("/api/search", {**payload, "datasets": datasets or [], "all": all_datasets}, uploads)
    return search_answer(answer, url)


def search_answer(answer, url: str) -> tuple[list[dict], str, list[RemoteTerm]]:
    """(rows, title, terms) of a search answer, checked to be what a server sends."""
    rows = answer.get("rows") if isinstance(answer, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and all(k in r for k in ROW_KEYS) and
                                             isinstance(r.get("meta", {}), dict) for r in rows):
        raise _bad_reply(url, "JSON without the search results' rows")
    terms = answer.get("terms")
    if not isinstance(answer.get("title"), str) or not isinstance(terms, list) or not all(
            isinstance(t, dict) and isinstance(t.get("weight"), (int, float)) and isinstance(t.get("kind"), str)
            and isinstance(t.get("value"), str) for t in terms):
        raise _bad_reply(url, "JSON without the search's title and terms")
    return rows, answer["title"], [RemoteTerm(float(t["weight"]), t["kind"], t["value"]) for t in terms]
