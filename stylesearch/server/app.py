"""The FastAPI app: API routes, the static page at `/`, OpenAPI docs at `/docs`.

Requests pass the guards of guards.py (host, token, cross-site, body size and type) before any
route; listen.py runs the app under uvicorn with its connection guards (`stylesearch serve`).
"""

from __future__ import annotations

import hmac
import json
from pathlib import Path

from starlette.requests import Request

from ..errors import StyleSearchError
from .config import ServerConfig
from .errors import error_body, plain_error, status_of
from .guards import COOKIE, Guard
from .state import ServerState

STATIC = Path(__file__).with_name("static")


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
