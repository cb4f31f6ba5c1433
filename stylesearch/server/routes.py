"""Endpoints over datasets: health, listing, items and their files, search, similar, distances, map."""

from __future__ import annotations

import time
from typing import List, Optional

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from ..errors import UserError
from ..version import __version__
from . import queries
from .queries import ManyBody, SearchBody, Uploads
from .state import ServerState

router = APIRouter()
NAME = PathParam(..., description="dataset name")
# an id as text: the catalog's lookup answers 404 for any id it has not (beyond 2^63, negative, 5,000 digits)
ITEM_ID = PathParam(..., pattern=r"^-?[0-9]+$", description="item id")
SEARCH_DOC = {"requestBody": {"content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/SearchBody"}},
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "query": {"type": "string", "description": "the JSON body as text"},
        "image": {"type": "array", "items": {"type": "string", "format": "binary"},
                  "description": "query images; a term image:NAME or an entry of `images` names one by file name"}}}}},
    "required": True}}


def server_of(request: Request) -> ServerState:
    return request.app.state.server


CACHED = {"Cache-Control": "private, max-age=300", "X-Content-Type-Options": "nosniff"}


def cached_file(path) -> Response:
    """A file, or the (bytes, media type) of an image inside a tar shard."""
    if isinstance(path, tuple):
        data, media_type = path
        return Response(data, media_type=media_type, headers=CACHED)
    return FileResponse(path, headers=CACHED)


@router.get("/health", tags=["server"])
async def health(request: Request) -> dict:
    """Status, version, uptime, served datasets with their warm model and index, loaded models;
    `ready` is false while `serve` is still loading its datasets at start-up."""
    server = server_of(request)
    datasets = [_health_of(server, n) for n in server.served_names()]
    models = sorted({m["model_key"] for d in datasets for m in d.get("models", []) if m["encoder_loaded"]})
    return {"status": "ok", "ready": server.ready, "version": __version__, "uptime_s": round(time.monotonic() - server.started, 3),
            "datasets": datasets, "models": models, "pending": server.pending}


def _health_of(server: ServerState, name: str) -> dict:
    """A served dataset's entry in /health; files damaged meanwhile are reported, /health still answers."""
    if name not in server.datasets:
        return {"name": name, "loaded": False}
    try:
        return server.datasets[name].summary()
    except Exception as exc:  # noqa: BLE001 - any damage: /health must answer
        return {"name": name, "loaded": False, "error": getattr(exc, "message", None) or repr(exc)}


@router.get("/api/datasets", tags=["datasets"])
async def datasets(request: Request) -> list:
    """Served datasets with item counts and models (an unreadable one has `error` set)."""
    from ..store.datasets import list_datasets

    server = server_of(request)
    names = set(server.served_names())
    rows = await server.run(list_datasets, server.config.root)
    return [row for row in rows if row["name"] in names]


@router.get("/api/models", tags=["datasets"])
async def models(request: Request) -> list:
    """The models the served datasets are embedded with (key, name, weights, dimension, datasets); a
    search names one with `model` and `pretrained`."""
    from ..store.datasets import list_models

    server = server_of(request)
    return await server.run(list_models, server.served_names(), server.config.root)


@router.get("/api/datasets/{name}", tags=["datasets"])
async def dataset_info(request: Request, name: str = NAME) -> dict:
    """Everything `stylesearch info --json` shows."""
    from ..store.datasets import describe

    server = server_of(request)
    return await server.run(lambda: describe(server.dataset(name).paths.name, server.config.root))


@router.get("/api/datasets/{name}/items", tags=["items"])
async def items(request: Request, name: str = NAME, offset: int = Query(0, ge=0),
                limit: int = Query(100, ge=1, le=1000), where: List[str] = Query([], max_length=32)) -> dict:
    """A page of live items by id, with metadata; `where` filters as in search."""
    server = server_of(request)
    return await server.run(lambda: queries.list_items(server.dataset(name), offset, limit, where))


@router.get("/api/datasets/{name}/items/{item_id}", tags=["items"])
async def item(request: Request, item_id: str = ITEM_ID, name: str = NAME) -> dict:
    server = server_of(request)
    return await server.run(lambda: queries.one_item(server.dataset(name), item_id))


@router.head("/api/datasets/{name}/items/{item_id}/image", include_in_schema=False)
@router.get("/api/datasets/{name}/items/{item_id}/image", tags=["items"], response_class=FileResponse)
async def item_image(request: Request, item_id: str = ITEM_ID, name: str = NAME):
    """The item's original file (only catalogued files are ever served)."""
    server = server_of(request)
    return cached_file(await server.run(lambda: queries.item_file(server.dataset(name), item_id, False)))


@router.head("/api/datasets/{name}/items/{item_id}/thumb", include_in_schema=False)
@router.get("/api/datasets/{name}/items/{item_id}/thumb", tags=["items"], response_class=FileResponse)
async def item_thumb(request: Request, item_id: str = ITEM_ID, name: str = NAME):
    """The item's thumbnail (from `transform`), else its original file."""
    server = server_of(request)
    return cached_file(await server.run(lambda: queries.item_file(server.dataset(name), item_id, True)))


@router.head("/api/datasets/{name}/atlas/{page}", include_in_schema=False)
@router.get("/api/datasets/{name}/atlas/{page}", tags=["items"], response_class=FileResponse)
async def atlas_page(request: Request, page: int, name: str = NAME):
    """One sprite atlas page (PNG); the map's `atlas.sprites` give each item's tile on it."""
    server = server_of(request)
    return cached_file(await server.run(lambda: queries.atlas_page(server.dataset(name), page)))


async def read_search(request: Request, server: ServerState, cls):
    """The search body from JSON, or from a multipart form (`query` JSON + `image` files)."""
    uploads = None
    try:
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await request.form(max_files=server.config.max_terms, max_fields=64,
                                      max_part_size=server.config.max_body_bytes)
            body = cls.model_validate_json(form.get("query") or "{}")
            uploads = Uploads(server.config)
            parts = form.getlist("image")
            if body.uploads and len(body.uploads) != len(parts):
                raise UserError(f"`uploads` names {len(body.uploads)} images but {len(parts)} were sent.")
            for n, part in enumerate(parts):
                if not hasattr(part, "read"):
                    raise UserError("Form field 'image' must be a file.")
                name = body.uploads[n] if body.uploads else (part.filename or f"image-{n}")
                uploads.add(name, await part.read())
        else:
            body = cls.model_validate_json(await request.body() or b"{}")
        queries.check_limits(body, server)
        return body, uploads or Uploads(server.config)
    except ValidationError as exc:
        if uploads:
            uploads.close()
        raise UserError(f"Invalid search request: {_first_problem(exc)}.", "See the request schema at /docs.") from None
    except BaseException:
        if uploads:
            uploads.close()
        raise


def _first_problem(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or "body"
    return f"{where}: {err.get('msg')}"


async def _searched(server: ServerState, body, uploads: Uploads, run) -> tuple[list, list[dict]]:
    from ..query.search import parse_terms

    try:
        terms = parse_terms(body.terms, body.images, body.likes)
        if uploads.to_fetch(terms):  # query image URLs: fetched here, off the engine thread
            await run_in_threadpool(uploads.fetch, terms)
        rows = await server.run(run, uploads.resolve(terms))
        return rows, queries.term_dicts(terms)
    finally:
        uploads.close()


@router.post("/api/datasets/{name}/search", tags=["search"], openapi_extra=SEARCH_DOC)
async def search(request: Request, name: str = NAME) -> dict:
    """Search one dataset: the CLI's term grammar, k, filters, raw; query images as multipart uploads."""
    server = server_of(request)
    body, uploads = await read_search(request, server, SearchBody)
    rows, terms = await _searched(server, body, uploads,
                                  lambda t: queries.search_one(server.dataset(name), body, t))
    return {"dataset": name, "title": name, "terms": terms, "rows": rows}


@router.post("/api/search", tags=["search"], openapi_extra={**SEARCH_DOC, "requestBody": {
    **SEARCH_DOC["requestBody"], "content": {**SEARCH_DOC["requestBody"]["content"], "application/json": {
        "schema": {"$ref": "#/components/schemas/ManyBody"}}}}})
async def search_many(request: Request) -> dict:
    """Search several datasets of one model (`datasets`, or `all`); rows name their dataset."""
    server = server_of(request)
    body, uploads = await read_search(request, server, ManyBody)
    names = queries.chosen_names(server, body)
    rows, terms = await _searched(server, body, uploads, lambda t: queries.search_many(server, body, t))
    return {"datasets": names, "title": ", ".join(names), "terms": terms, "rows": rows}


@router.get("/api/datasets/{name}/similar/{item_ref}", tags=["search"])
async def similar(request: Request, item_ref: str, name: str = NAME, k: int = Query(10, ge=1),
                  raw: bool = False, min_score: Optional[float] = None, group: bool = False,
                  where: List[str] = Query([], max_length=32)) -> dict:
    """Items most similar to one item (id or path): `stylesearch search DATASET --like ITEM`."""
    server = server_of(request)
    body = SearchBody(likes=[item_ref], k=k, raw=raw, min_score=min_score, group=group, where=where)
    queries.check_limits(body, server)
    rows, terms = await _searched(server, body, Uploads(server.config),
                                  lambda t: queries.search_one(server.dataset(name), body, t))
    return {"dataset": name, "title": name, "terms": terms, "rows": rows}


@router.get("/api/datasets/{name}/distances/{item_ref}", tags=["search"])
async def distances(request: Request, item_ref: str, name: str = NAME, raw: bool = False,
                    limit: Optional[int] = Query(None, ge=1)) -> dict:
    """Distance from one item to every embedded item (nearest first), under the learned metric when
    one is trained (unless `raw`)."""
    server = server_of(request)
    return await server.run(lambda: queries.distances(server.dataset(name), item_ref, raw, limit))


@router.get("/api/datasets/{name}/map", tags=["map"])
async def map_points(request: Request, name: str = NAME, model: Optional[str] = None,
                     pretrained: Optional[str] = None) -> dict:
    """The saved 2D UMAP coordinates (from `umap-export`) of the live items, with atlas sprites."""
    server = server_of(request)
    return await server.run(lambda: queries.map_points(server.dataset(name), model, pretrained))
