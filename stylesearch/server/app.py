"""The FastAPI app: API routes, the static page at `/`, OpenAPI docs at `/docs`, and `serve`.

Guards, outermost first: the Host header must name this machine when it listens on loopback
without a token (no DNS rebinding); with a token, /api and /health need `Authorization: Bearer`
or the cookie the page gets from `/?token=`; a POST (any unsafe method) from another site is
refused (403: an `Origin` other than the server's own, or `Sec-Fetch-Site` other than same-origin),
so a web page the user visits cannot drive a token-less server on loopback; every body is bounded
(413); an /api body is JSON sent as `application/json` (multipart/form-data too for searches), 415
otherwise, so no form or `text/plain` request a page can send without CORS is ever read. The CLI
client sends no Origin and the right Content-Type; the page's requests are same-origin. clip-retrieval's
routes (clip_compat.py) read any body as JSON, as its client and front send none or `text/plain`: the
cross-site refusal above is what guards them. Origins given with `--cors-origin` are trusted like the
page's own (not cross-site, and granted CORS).

Below the app, `serve` guards connections (see `header_guarded`): a connection must send a
request's headers within `header_timeout` seconds, and connections are capped below the file
descriptor limit (raised to its hard limit), the one waiting longest for headers making room.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import socket
import sys
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import urlsplit

from starlette.requests import Request

from ..errors import StyleSearchError, UserError
from .config import CLIP_PATHS, ServerConfig, check_bind, check_port_free, connection_limits, is_loopback
from .errors import error_body, plain_error, status_of
from .state import ServerState

STATIC = Path(__file__).with_name("static")
COOKIE = "stylesearch_token"
UPLOAD_PATHS = ("/search",)  # endpoints taking multipart uploads (the larger body limit)
IMAGE_BODY_PATHS = ("/knn-service",)  # bodies carrying a base64 query image (the larger body limit too)
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
LISTEN_QUEUE = 4096  # connections the kernel holds for accept() (capped by net.core.somaxconn)


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


def create_app(config: ServerConfig = ServerConfig(), state: ServerState | None = None):
    """The app over `config`'s datasets (`state` given by tests to share one)."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.staticfiles import StaticFiles
    from starlette.exceptions import HTTPException

    from ..version import __version__
    from . import clip_compat, labels, routes

    bundle = _swagger_bundle()
    app = FastAPI(title="stylesearch", version=__version__, default_response_class=_json_response_class(),
                  description="Search image collections by visual style: the HTTP frontend of stylesearch.",
                  docs_url=None if bundle else "/docs", redoc_url=None)
    app.state.server = state or ServerState(config)
    if bundle:
        _offline_docs(app, bundle)
    app.include_router(routes.router)
    _document_bodies(app, routes.SearchBody, routes.ManyBody)
    app.include_router(labels.router)
    app.include_router(clip_compat.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.get("/", include_in_schema=False)(_index)
    app.get("/favicon.ico", include_in_schema=False)(_favicon)
    app.add_exception_handler(StyleSearchError, _library_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_middleware(Guard, config=config)
    if config.cors_origins:  # outermost: preflights answered, and refusals readable by the trusted origins
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], max_age=600)
    return app


def _document_bodies(app, *models) -> None:
    """Add the search bodies (read by hand: JSON or multipart) to the OpenAPI components."""
    from pydantic.json_schema import models_json_schema

    original = app.openapi

    def openapi():
        if app.openapi_schema is None:
            schema = original()
            _, defs = models_json_schema([(m, "validation") for m in models],
                                         ref_template="#/components/schemas/{model}")
            schema.setdefault("components", {}).setdefault("schemas", {}).update(defs.get("$defs", {}))
        return app.openapi_schema
    app.openapi = openapi


def _swagger_bundle() -> str | None:
    """Swagger UI's files from the swagger-ui-bundle package: /docs without a CDN (None: not installed)."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    return str(swagger_ui_path)


def _offline_docs(app, folder: str) -> None:
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    app.mount("/docs-assets", StaticFiles(directory=folder), name="docs-assets")
    if "swagger-ui-4." in folder:  # Swagger UI 4 reads OpenAPI 3.0 documents, not 3.1
        app.openapi_version = "3.0.3"

    async def docs():
        return get_swagger_ui_html(openapi_url="/openapi.json", title="stylesearch API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon-32x32.png")
    app.get("/docs", include_in_schema=False)(docs)


def _json_response_class():
    """JSON responses that keep non-ASCII text and any float the library returns."""
    from fastapi.responses import JSONResponse

    class Json(JSONResponse):
        def render(self, content) -> bytes:
            return json.dumps(content, ensure_ascii=False, default=str).encode("utf-8")
    return Json


def _json(status: int, body: bytes):
    from fastapi.responses import Response

    return Response(body, status_code=status, media_type="application/json")


async def _index(request: Request):
    """The page; `?token=` sets the token cookie once so the page's requests carry it."""
    from fastapi.responses import FileResponse

    response = FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})
    token = request.query_params.get("token")
    config = request.app.state.server.config
    if token and config.token and hmac.compare_digest(token.encode(), config.token.encode()):
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
    return response


async def _favicon():
    """The page's icon, also where browsers look for one unasked (an SVG)."""
    from fastapi.responses import FileResponse

    return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml",
                        headers={"Cache-Control": "public, max-age=86400"})


async def _library_error(request, exc: StyleSearchError):
    return _json(status_of(exc), json.dumps(error_body(exc), ensure_ascii=False).encode())


async def _validation_error(request, exc):
    err = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request"
    return _json(*plain_error(f"Invalid request: {where}: {err.get('msg', 'invalid')}.", "See /docs.", 400))


async def _http_error(request, exc):
    hint = "See /docs for the endpoints." if exc.status_code == 404 else None
    return _json(*plain_error(str(exc.detail), hint, exc.status_code))


def serve(config: ServerConfig) -> None:
    """Run the server until interrupted (refuses non-loopback binds without a token)."""
    import asyncio

    import uvicorn

    check_bind(config.host, config.token)
    check_port_free(config.host, config.port)
    app = create_app(config)
    server = app.state.server
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("stylesearch: %(message)s"))
    logging.getLogger("stylesearch.server").addHandler(handler)
    logging.getLogger("stylesearch.server").setLevel(logging.INFO)
    if config.preload:
        server.start_warm_up()
    print(f"stylesearch: serving {', '.join(server.served_names()) or 'no datasets yet'} on "
          f"http://{_url_host(config.host)}:{config.port}/ (API docs at /docs)", file=sys.stderr, flush=True)
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    connections, batch = connection_limits(config.max_connections)
    protocol = header_guarded(AutoHTTPProtocol, config.header_timeout, connections)
    settings = uvicorn.Config(app, host=config.host, port=config.port, log_level="warning", access_log=False,
                              http=protocol, ws="none", backlog=batch)
    listening = _listen_queue_server(settings)
    try:
        listening.run()
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass
    finally:
        server.close()
    if not listening.started:  # as uvicorn.run: a failed start is an error
        raise UserError(f"The server did not start on {_url_host(config.host)}:{config.port} (see above).")


def _listen_queue_server(settings):
    """A uvicorn Server whose listening sockets queue LISTEN_QUEUE connections in the kernel (no
    descriptors), more than the accept batch (`backlog`: kept small so that a batch fits in them)."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            for listener in (sock for each in getattr(self, "servers", ()) for sock in each.sockets or ()):
                try:
                    with socket.socket(fileno=os.dup(listener.fileno())) as same:
                        same.listen(LISTEN_QUEUE)
                except OSError:  # no dup of a socket (Windows): the batch-sized queue stays
                    pass
    return Server(settings)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def header_guarded(base: type, header_timeout: float, max_connections: int) -> type:
    """`base` (a uvicorn HTTP protocol class) with a header deadline and a connection cap.

    uvicorn closes no connection that is idle or has sent partial headers (its keep-alive timer runs
    only after a response, and any byte stops it). Here a connection without a request in progress is
    closed `header_timeout` seconds after it opened or got its last response, whatever it sends
    meanwhile (a trickle of bytes does not extend it); and when a new connection makes more than
    `max_connections`, the one waiting longest for a request is closed, so a flood of them cannot
    shut out a client that sends its request at once."""
    live: set = set()
    waiting: dict = {}  # connections without a request in progress, longest waiting first

    class Guarded(base):
        _timer = None

        def connection_made(self, transport):
            super().connection_made(transport)
            live.add(self)
            self._await_request()
            while len(live) > max_connections and waiting:
                next(iter(waiting))._drop()

        def connection_lost(self, exc):
            self._stop_waiting()
            live.discard(self)
            super().connection_lost(exc)

        def data_received(self, data):
            super().data_received(data)
            if not self._idle():  # a request's headers are complete
                self._stop_waiting()

        def on_response_complete(self):
            super().on_response_complete()  # may start a pipelined request
            if self._idle() and not self.transport.is_closing():
                self._await_request()
            else:
                self._stop_waiting()

        def _idle(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _await_request(self):
            self._stop_waiting()
            waiting[self] = None
            self._timer = self.loop.call_later(header_timeout, self._deadline)

        def _stop_waiting(self):
            waiting.pop(self, None)
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _deadline(self):
            self._timer = None
            if self._idle():
                self._drop()

        def _drop(self):
            self._stop_waiting()
            live.discard(self)
            self.transport.close()

    Guarded.__name__ = Guarded.__qualname__ = f"HeaderGuarded{base.__name__}"
    return Guarded
