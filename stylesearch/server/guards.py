"""The app's request guards (ASGI middleware), outermost first.

The Host header must name this machine when the server listens on loopback without a token (no DNS
rebinding); with a token, /api, /health and clip-retrieval's routes need `Authorization: Bearer` or
the cookie the page gets from `/?token=`; a POST (any unsafe method) from another site is refused
(403: an `Origin` other than the server's own, or `Sec-Fetch-Site` other than same-origin), so a web
page the user visits cannot drive a token-less server on loopback; every body is bounded (413); an
/api body is JSON sent as `application/json` (multipart/form-data too for searches), 415 otherwise,
so no form or `text/plain` request a page can send without CORS is ever read. The CLI client sends
no Origin and the right Content-Type; the page's requests are same-origin. clip-retrieval's routes
(clip_compat.py) read any body as JSON, as its client and front send none or `text/plain`: the
cross-site refusal above is what guards them. Origins given with `--cors-origin` are trusted like the
page's own (not cross-site, and granted CORS).
"""

from __future__ import annotations

import hmac
from http.cookies import SimpleCookie
from urllib.parse import urlsplit

from .config import CLIP_PATHS, ServerConfig, is_loopback
from .errors import plain_error

COOKIE = "stylesearch_token"
UPLOAD_PATHS = ("/search",)  # endpoints taking multipart uploads (the larger body limit)
IMAGE_BODY_PATHS = ("/knn-service",)  # bodies carrying a base64 query image (the larger body limit too)
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


async def _send_json(send, status: int, body: bytes, headers=()) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), *headers]})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware: host check, token, body size limit."""

    def __init__(self, app, config: ServerConfig):
        self.app, self.config = app, config

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._refusal(scope, headers)
        if refusal:
            return await _send_json(send, *plain_error(*refusal))
        uploads = scope["path"].endswith(UPLOAD_PATHS) or scope["path"] in IMAGE_BODY_PATHS
        limit = self.config.max_upload_bytes if uploads else self.config.max_body_bytes
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):  # held to its declared length
            return await _send_json(send, *self._too_large(limit))
        unsupported = _media_refusal(scope, headers)
        if unsupported:
            return await _send_json(send, *plain_error(*unsupported))
        if length is not None or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            return await self.app(scope, receive, send)
        await self._chunked(scope, receive, send, limit)

    async def _chunked(self, scope, receive, send, limit: int) -> None:
        """A body without Content-Length: read it up to the limit, then hand it on."""
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                return await _send_json(send, *self._too_large(limit))
            more = message.get("more_body", False)
        pending = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay():
            return pending.pop() if pending else await receive()
        await self.app(scope, replay, send)

    def _refusal(self, scope, headers) -> tuple | None:
        if self.config.host_checked:
            host = headers.get("host", "")
            host = host if host.endswith("]") else host.rsplit(":", 1)[0]
            if not is_loopback(host):
                return (f"Host {host!r} is not this machine.", "Use http://127.0.0.1:PORT/.", 400)
        path = scope["path"]
        if self.config.token and (path.startswith("/api") or path == "/health" or path in CLIP_PATHS):
            scheme, _, credentials = headers.get("authorization", "").strip().partition(" ")
            given = credentials.strip() if scheme.lower() == "bearer" else ""  # schemes: any case (RFC 7235)
            if not given:
                cookie = SimpleCookie(headers.get("cookie", ""))
                given = cookie[COOKIE].value if COOKIE in cookie else ""
            if not hmac.compare_digest(given.encode(), self.config.token.encode()):
                return ("Missing or wrong token.", "Send 'Authorization: Bearer TOKEN', or open /?token=TOKEN once.",
                        401)
        if scope["method"] not in SAFE_METHODS and cross_site(headers, self.config.cors_origins):
            return ("Cross-site request refused.", "Use the page this server serves, or a client that sends no "
                    "Origin header (the CLI, curl).", 403)
        return None

    @staticmethod
    def _too_large(limit: int) -> tuple[int, bytes]:
        return plain_error(f"Request body too large (limit {limit:,} bytes).",
                           "Send less: smaller or fewer query images.", 413)


def cross_site(headers: dict, trusted: tuple[str, ...] = ()) -> bool:
    """A browser request from another origin: `Sec-Fetch-Site` other than same-origin (or none: typed
    by the user), or an `Origin` (including "null") whose host and port are not the Host it was sent
    to (or the X-Forwarded-Host of a proxy: a header no page can add without a CORS preflight, which
    this server grants only to `trusted` origins). The scheme is not compared: a proxy may terminate TLS
    in front. An Origin among `trusted` (from --cors-origin, exactly as given) is not cross-site."""
    if trusted and headers.get("origin", "").strip().lower().rstrip("/") in trusted:
        return False
    site = headers.get("sec-fetch-site")
    if site is not None and site.strip().lower() not in ("same-origin", "none"):
        return True
    origin = headers.get("origin")
    if origin is None:
        return False
    try:
        parts = urlsplit(origin.strip())
        netloc = parts.netloc.lower() if parts.scheme in ("http", "https") and parts.hostname else None
    except ValueError:
        netloc = None
    own = {headers.get("host", "").strip().lower(),
           headers.get("x-forwarded-host", "").split(",", 1)[0].strip().lower()} - {""}
    return netloc not in own


def _media_refusal(scope, headers: dict) -> tuple | None:
    """415 for an /api request body that is not JSON (or, for searches, a multipart form)."""
    if scope["method"] not in ("POST", "PUT", "PATCH") or not scope["path"].startswith("/api"):
        return None
    media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    allowed = ("application/json", "multipart/form-data") if scope["path"].endswith(UPLOAD_PATHS) else (
        "application/json",)
    if media in allowed:
        return None
    return (f"Unsupported Content-Type {media or '(none)'!r}: send the body as {' or '.join(allowed)}.",
            "Send JSON with 'Content-Type: application/json' (query images as a multipart/form-data search).", 415)
