"""clip-retrieval's back-end protocol over the served datasets, so its `ClipClient` and its web front
work against `serve`: `POST /knn-service`, `GET /indices-list`, `POST /metadata`.

An "indice" is a dataset. Searches run through the library's search (query.search, as every other
search route) with the dataset's own model; `deduplicate` drops near-duplicates by embedding
(query.knn). Bodies are read as JSON whatever their Content-Type (clip-retrieval's client sends
none, its front `text/plain`); the app's guard refuses cross-site requests before they get here.
Replies are clip-back's: a bare list of `{id, similarity, url, caption, image_path, ...metadata}`,
errors `{"message": ...}` with an HTTP status (its client returns that dict instead of a list).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Optional, Union

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from ..errors import StyleSearchError, UserError
from . import queries
from .errors import status_of
from .state import DatasetState, ServerState

router = APIRouter(tags=["clip-retrieval compatibility"])
NO_EFFECT = "Accepted for clip-retrieval's clients; no effect here: "


class KnnBody(BaseModel):
    """clip-retrieval's knn request. One of `text`, `image`, `image_url`, `embedding_input` is the query."""

    model_config = ConfigDict(extra="ignore")
    text: Optional[str] = Field(None, description="a text query, encoded with the dataset's model")
    image: Optional[str] = Field(None, description="a query image, base64-encoded")
    image_url: Optional[str] = Field(None, description="a query image URL (fetched from public addresses only)")
    embedding_input: Optional[list] = Field(None, description="a query embedding of the dataset's dimension")
    indice_name: Optional[str] = Field(None, description="the dataset (default: the first served one)")
    num_images: int = Field(40, description="results returned with their metadata")
    num_result_ids: Optional[int] = Field(None, description="results returned in all (at most the server's "
                                                            "k limit; ids and similarities past num_images)")
    deduplicate: bool = Field(False, description="drop results whose embedding has a cosine of 0.94 or more "
                                                 "with a better result")
    modality: str = Field("image", description=NO_EFFECT + "a dataset holds image embeddings only, so results "
                                               "are always images (clip-back can also search caption embeddings)")
    use_mclip: bool = Field(False, description=NO_EFFECT + "text is encoded by the dataset's own model; there "
                                                           "is no multilingual text tower")
    use_safety_model: bool = Field(False, description=NO_EFFECT + "there is no NSFW model; nothing is filtered")
    use_violence_detector: bool = Field(False, description=NO_EFFECT + "there is no violence detector; nothing "
                                                                       "is filtered")
    aesthetic_score: Union[int, str, None] = Field(None, description=NO_EFFECT + "there are no aesthetic "
                                                                                 "embeddings to add to the query")
    aesthetic_weight: Union[float, str, None] = Field(None, description=NO_EFFECT + "see aesthetic_score")


class MetadataBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    ids: list[int] = Field(default_factory=list, description="item ids, as /knn-service returns them")
    indice_name: Optional[str] = None


def _body_doc(model) -> dict:
    """OpenAPI text for a body read by hand (any Content-Type)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


def _clip_error(exc: StyleSearchError) -> JSONResponse:
    return JSONResponse({"message": exc.message, "hint": exc.hint}, status_code=status_of(exc))


async def _body(request: Request, cls):
    """The request body as JSON (any Content-Type), validated."""
    try:
        return cls.model_validate(json.loads(await request.body() or b"{}"))
    except (ValueError, ValidationError) as exc:
        first = exc.errors()[0] if isinstance(exc, ValidationError) else None
        where = ".".join(str(p) for p in first["loc"]) + ": " + first["msg"] if first else "not JSON"
        raise UserError(f"Invalid request: {where}.", "See /docs (clip-retrieval compatibility).") from None


def _dataset(server: ServerState, name: str | None) -> DatasetState:
    if name is None:
        names = server.served_names()
        if not names:
            raise UserError("There are no datasets to search.")
        name = names[0]
    return server.dataset(name)


@router.get("/indices-list")
async def indices_list(request: Request):
    """The served datasets' names (clip-retrieval's indices)."""
    return request.app.state.server.served_names()


@router.post("/knn-service", openapi_extra=_body_doc(KnnBody))
async def knn_service(request: Request):
    """Nearest items to a text, an image (base64 or URL) or an embedding, as clip-back answers: a list of
    `{id, similarity, url, caption, image_path, ...metadata}`, best first; as in clip-back, results past
    `num_images` (up to `num_result_ids`) are `{id, similarity}` only (their metadata from /metadata).
    `url` is the item's source URL when it was downloaded, else where this server returns its image.
    Fields marked "no effect" are accepted and ignored (see the request schema)."""
    server: ServerState = request.app.state.server
    uploads = queries.Uploads(server.config)
    try:
        body = await _body(request, KnnBody)
        _check(body, server)
        state = _dataset(server, body.indice_name)
        terms = _terms(body, uploads)
        if uploads.to_fetch(terms):
            await run_in_threadpool(uploads.fetch, terms)
        base = str(request.base_url).rstrip("/")
        return await server.run(lambda: _knn(state, body, uploads.resolve(terms), base, server.config.max_k))
    except StyleSearchError as exc:
        return _clip_error(exc)
    finally:
        uploads.close()


@router.post("/metadata", openapi_extra=_body_doc(MetadataBody))
async def metadata(request: Request):
    """`{ids, indice_name}` → `[{id, metadata: {url, caption, image_path, ...}}]` in the order asked
    (an id that is not a live item gets empty metadata)."""
    server: ServerState = request.app.state.server
    try:
        body = await _body(request, MetadataBody)
        if len(body.ids) > server.config.max_k:
            raise UserError(f"At most {server.config.max_k} ids per request.")
        state = _dataset(server, body.indice_name)
        base = str(request.base_url).rstrip("/")
        return await server.run(lambda: _metadata(state, body.ids, base))
    except StyleSearchError as exc:
        return _clip_error(exc)


def _check(body: KnnBody, server: ServerState) -> None:
    limit = server.config.max_k
    if not 1 <= body.num_images <= limit:
        raise UserError(f"num_images must be between 1 and {limit}; got {body.num_images}.")
    if not [v for v in (body.text, body.image, body.image_url, body.embedding_input) if v]:
        raise UserError("must fill one of text, image and image url input",
                        "Send `text`, `image` (base64), `image_url` or `embedding_input`.")


def _terms(body: KnnBody, uploads: queries.Uploads) -> list:
    """The query as the library's terms (none for an embedding); a base64 image becomes an upload."""
    from ..query.search import Term

    if body.text:
        return [Term(1.0, "text", body.text)]
    if body.image:
        try:
            data = base64.b64decode(body.image, validate=False)
        except (binascii.Error, ValueError):
            raise UserError("`image` is not base64.") from None
        uploads.add("query image", data)
        return [Term(1.0, "image", "query image")]
    if body.image_url:
        return [Term(1.0, "image", body.image_url)]
    return []


def _knn(state: DatasetState, body: KnnBody, terms: list, base: str, max_k: int) -> list[dict]:
    """On the engine thread: the library's rows for the query, deduplicated, as clip-back's results."""
    from ..query.knn import search_embedding, without_near_duplicates

    k = min(max(body.num_images, body.num_result_ids or 0), max_k)
    searcher = state.searcher()
    if terms:
        rows = queries.search_one(state, queries.SearchBody(k=k), terms)
    else:
        rows = search_embedding(searcher, body.embedding_input, k)
    if body.deduplicate:
        rows = without_near_duplicates(searcher, rows)
    full, more = rows[:body.num_images], rows[body.num_images:]
    sources = _source_urls(state, [r["id"] for r in full])
    return ([_result(state.paths.name, row, sources.get(row["id"]), base) for row in full]
            + [{"id": row["id"], "similarity": row["score"]} for row in more])


def _source_urls(state: DatasetState, ids: list[int]) -> dict[int, str]:
    reader = state.reader()
    return {i: item.source_url for i in ids for item in [reader.item(str(i))] if item.source_url}


def _result(name: str, row: dict, source_url: str | None, base: str) -> dict:
    """One clip-back result: metadata fields first (a field named like a result field as `meta.NAME`)."""
    from ..query.filters import flat_meta

    return {**flat_meta(row.get("meta", {})), "id": row["id"], "similarity": row["score"],
            "url": source_url or f"{base}/api/datasets/{name}/items/{row['id']}/image",
            "caption": row.get("caption"), "image_path": row["path"]}


def _metadata(state: DatasetState, ids: list[int], base: str) -> list[dict]:
    from ..errors import ItemNotFound
    from ..query.filters import flat_meta

    reader, out = state.reader(), []
    for item_id in ids:
        try:
            item = reader.item(str(item_id))
        except ItemNotFound:
            item = None
        if item is None or item.status != "ok":
            out.append({"id": item_id, "metadata": {}})
            continue
        fields = flat_meta(reader.metadata([item.id]).get(item.id, {}))
        url = item.source_url or f"{base}/api/datasets/{state.paths.name}/items/{item.id}/image"
        out.append({"id": item_id, "metadata": {**fields, "url": url, "caption": item.caption,
                                                "image_path": item.path}})
    return out
