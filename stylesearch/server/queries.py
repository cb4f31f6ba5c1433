"""What the endpoints compute, on the engine thread: the library's search (one dataset or several),
similar items, distances, items, files and the map. Request bodies are checked against the limits.

Query images given as URLs are fetched by `Uploads.fetch` in the request's worker thread, never on
the engine thread: public addresses only, one attempt, one short deadline for all of a request's
URLs; the library then reads them as local files, like uploads.
"""

from __future__ import annotations

import mimetypes
import tarfile
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from pydantic import BaseModel, Field

from ..errors import ItemNotFound, NotReady, UserError
from ..ingest.urls import is_http_url
from ..store.files import read_json_or_none
from ..store.paths import served_file
from .config import ServerConfig
from .errors import TooLarge
from .state import DatasetState, ServerState, effort, file_stamp


class SearchBody(BaseModel):
    """A search, as on the command line: `terms` in the same grammar, query images, items, filters."""

    terms: list[str] = Field(default_factory=list, description='e.g. ["red dress", "-blue", "0.5*like:42"]')
    images: list[str] = Field(default_factory=list,
                              description="names of uploaded images (multipart parts 'image'), or http(s) URLs")
    likes: list[str] = Field(default_factory=list, description="item ids or paths to find similar items to")
    k: int = 10
    min_score: float | None = None
    raw: bool = Field(False, description="ignore the learned metric")
    where: list[str] = Field(default_factory=list, description='filters, e.g. ["category=summer", "price<50"]')
    group: bool = False
    effort: int | None = None
    model: str | None = None
    pretrained: str | None = None
    uploads: list[str] = Field(default_factory=list,
                               description="multipart only: the names of the 'image' parts, in order "
                                           "(default: their file names)")


class ManyBody(SearchBody):
    """A search over several datasets embedded with the same model."""

    datasets: list[str] = Field(default_factory=list)
    all: bool = Field(False, description="every served dataset")


def check_limits(body: SearchBody, server: ServerState) -> None:
    limit = server.config
    if not 1 <= body.k <= limit.max_k:
        raise UserError(f"k must be between 1 and {limit.max_k}; got {body.k}.")
    if len(body.terms) + len(body.images) + len(body.likes) > limit.max_terms or len(body.where) > limit.max_terms:
        raise UserError(f"Too many query terms or filters (at most {limit.max_terms} each).")
    if body.effort is not None and not 1 <= body.effort <= 100_000:
        raise UserError("effort must be between 1 and 100000.")


def term_dicts(terms) -> list[dict]:
    return [{"weight": t.weight, "kind": t.kind, "value": t.value} for t in terms]


class Uploads:
    """Query images sent with a search or fetched from their URLs, saved to a private temp folder
    under neutral names."""

    def __init__(self, config: ServerConfig):
        self.max_pixels, self.max_bytes, self.fetch_timeout = (config.max_pixels, config.max_upload_bytes,
                                                               config.fetch_timeout)
        self.folder = tempfile.TemporaryDirectory(prefix="stylesearch-upload-")
        self.files: dict[str, Path] = {}

    def add(self, name: str, data: bytes) -> None:
        from ..store.images import BadImage, image_size

        path = Path(self.folder.name) / f"upload-{len(self.files)}"
        path.write_bytes(data)
        try:
            image_size(path, self.max_pixels)
        except BadImage as exc:
            cls = TooLarge if exc.message.startswith("refused") else UserError
            raise cls(f"Query image {name!r}: {exc.message}.",
                      f"Upload a JPEG, PNG or WebP image of at most {self.max_pixels:,} pixels.") from None
        self.files[name] = path

    def to_fetch(self, terms) -> list:
        """The image terms given as URLs that are not uploads of that name."""
        return [t for t in terms if t.kind == "image" and is_http_url(t.value) and t.value not in self.files]

    def fetch(self, terms) -> None:
        """Fetch the query images given as URLs (blocking: call it in a worker thread, not on the engine
        thread): public addresses only, one attempt each, `fetch_timeout` seconds for all of them.
        Errors say neither the remote status nor the reason, only that the image could not be had."""
        from ..ingest.fetch import AddressRefused, FetchError, FetchOptions, fetch_with_retries

        deadline = time.monotonic() + self.fetch_timeout
        for term in self.to_fetch(terms):
            if term.value in self.files:  # named twice
                continue
            hint = "Download the image and upload it with the query instead."
            try:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise FetchError("deadline exceeded", transient=True)
                data = fetch_with_retries(term.value, FetchOptions(retries=0, timeout=left, max_bytes=self.max_bytes,
                                                                   public_only=True))
            except AddressRefused:
                raise UserError(f"Query image URL {term.value} is refused: the server fetches images only "
                                "from public addresses.", hint) from None
            except FetchError:
                raise UserError(f"Could not fetch query image {term.value}.", hint) from None
            self.add(term.value, data)

    def resolve(self, terms) -> list:
        """Terms whose image values point at the uploaded or fetched files (`fetch` first)."""
        out = []
        for term in terms:
            if term.kind == "image":
                if term.value not in self.files:
                    if is_http_url(term.value):
                        raise UserError(f"Query image {term.value} was not fetched.")
                    raise UserError(f"Query image {term.value} was not uploaded.",
                                    "Send it as a multipart part named 'image' whose file name is the term's value.")
                term = replace(term, value=str(self.files[term.value]))
            out.append(term)
        return out

    def close(self) -> None:
        self.folder.cleanup()


def request_of(body: SearchBody, terms):
    """The library's request for a search body whose terms are parsed (and their images resolved)."""
    from ..query.filters import parse_filters
    from ..query.search import SearchRequest

    return SearchRequest(terms, k=body.k, min_score=body.min_score, raw=body.raw, filters=parse_filters(body.where),
                         group=body.group, effort=body.effort, model=body.model, pretrained=body.pretrained)


def search_one(state: DatasetState, body: SearchBody, terms) -> list[dict]:
    """Rows of the library's search, exactly as `stylesearch search DATASET` computes them."""
    request = request_of(body, terms)
    searcher = state.searcher(request.model, request.pretrained, request.raw)
    try:
        with effort([searcher], request.effort):
            return searcher.run(request)
    finally:
        state.keep_encoder(searcher)


def chosen_names(server: ServerState, body: ManyBody) -> list[str]:
    """The served datasets a search over several covers (query.search.datasets_covered)."""
    from ..query.search import datasets_covered

    return datasets_covered(body.datasets, body.all, server.served_names())


def search_many(server: ServerState, body: ManyBody, terms) -> list[dict]:
    """Rows of `stylesearch search -d A -d B` / `--all`, from the warm searchers (search.search_searchers)."""
    from ..query.search import check_same_model, search_searchers

    request = request_of(body, terms)
    states = [server.dataset(name) for name in chosen_names(server, body)]
    check_same_model([s.paths for s in states], [s.spec(request.model, request.pretrained) for s in states])
    searchers = [s.searcher(request.model, request.pretrained, request.raw) for s in states]
    try:
        with effort(searchers, request.effort):
            return search_searchers(searchers, request)
    finally:
        states[0].keep_encoder(searchers[0])


def distances(state: DatasetState, ref: str, raw: bool, limit: int | None) -> dict:
    """Distance from one item to every embedded item under the learned metric (learn.metric.distance_of_score)."""
    import numpy as np

    from ..learn.metric import distance_of_score
    from ..query.search import Term

    from ..query.items import resolve_item

    searcher = state.searcher(raw=raw)
    item = resolve_item(searcher.catalog, ref)
    query = searcher.query_vector([Term(1.0, "like", str(item.id))])
    key = searcher.model_key
    ids, vectors = state.cached_value(f"vectors:{key}", state.catalog_stamp(),
                                      lambda: searcher.catalog.vectors.load(key))
    dist = distance_of_score(searcher.metric.scores(query, vectors))
    order = np.argsort(dist, kind="stable")[:limit]
    metric = searcher.metric
    return {"item": {"id": item.id, "path": item.path}, "model_key": key, "count": len(ids),
            "metric": {"kind": metric.kind, "learned": metric.learned, "version": metric.version},
            "ids": ids[order].tolist(), "distances": np.round(dist[order].astype(np.float64), 6).tolist()}


def item_dict(item, meta: dict) -> dict:
    return {"id": item.id, "path": item.path, "width": item.width, "height": item.height, "group": item.group_id,
            "caption": item.caption, "meta": meta}


def _live_items(state: DatasetState) -> list:
    return state.cached_value("items", state.catalog_stamp(), lambda: state.reader().items("ok"))


def list_items(state: DatasetState, offset: int, limit: int, where: list[str]) -> dict:
    """A page of live items (by id) with their metadata, optionally filtered."""
    from ..query.filters import matching_ids, parse_filters

    items = _live_items(state)
    if where:
        allowed = matching_ids(state.reader(), parse_filters(where))
        items = [it for it in items if it.id in allowed]
    page = items[offset:offset + limit]
    meta = state.reader().metadata([it.id for it in page])
    return {"total": len(items), "offset": offset, "limit": limit,
            "items": [item_dict(it, meta.get(it.id, {})) for it in page]}


def one_item(state: DatasetState, ref: str) -> dict:
    item = _live_item(state, ref)
    return item_dict(item, state.reader().metadata([item.id]).get(item.id, {}))


def _live_item(state: DatasetState, ref: str):
    from ..query.items import resolve_item

    item = resolve_item(state.reader(), ref)
    if item.status != "ok":
        raise ItemNotFound(f"Item {ref} of {state.paths.name!r} is {item.status}.", dataset=state.paths.name)
    return item


def item_file(state: DatasetState, item_id: int, thumb: bool) -> Path | tuple[bytes, str]:
    """The image file of a catalogued item (its thumbnail when `thumb` and one exists, else the
    original); never another file, never one whose real location is outside the dataset (403).
    An image inside a tar shard comes as (its bytes, media type)."""
    item = _live_item(state, str(item_id))
    paths = state.paths
    path = served_file(paths, item.path, item.content_hash, thumb)
    missing = ItemNotFound(f"The image file of item {item_id} is missing.", dataset=paths.name)
    if isinstance(path, Path):
        if not path.is_file():
            raise missing
        return path
    try:  # a shards.ShardMember
        data = path.read_bytes()
    except (OSError, KeyError, EOFError, tarfile.TarError):
        raise missing from None
    return data, mimetypes.guess_type(path.member)[0] or "application/octet-stream"


def atlas_page(state: DatasetState, page: int) -> Path:
    """Page `page` of the atlas: a name this code writes, inside the dataset (never a manifest's text)."""
    paths = state.paths
    names = paths.atlas_page_names(read_json_or_none(paths.atlas_manifest) or {})
    file = paths.atlas_page(page)
    if not 0 <= page < len(names) or names[page] != file.name or not file.is_file():
        raise NotReady(f"Dataset {paths.name!r} has no atlas page {page}.", "Build the atlas first.",
                       dataset=paths.name, step="atlas")
    return paths.contain(file)


def atlas_tiles(manifest: dict) -> dict[int, list]:
    """item id -> [page, x, y, w, h] of the manifest's well-formed entries (others are left out)."""
    entries = manifest.get("items")
    tiles = {}
    for e in entries if isinstance(entries, list) else []:
        try:
            tiles[int(e["id"])] = [int(e[k]) for k in ("page", "x", "y", "w", "h")]
        except (TypeError, KeyError, ValueError):
            continue
    return tiles


def map_points(state: DatasetState, model: str | None, pretrained: str | None) -> dict:
    """The saved UMAP coordinates of the live items, with their atlas sprites when there is an atlas."""
    from ..maps.projection import load_projection

    paths, key = state.paths, state.spec(model, pretrained).key
    stamp = (file_stamp(paths.projection_file(key)), file_stamp(paths.atlas_manifest), state.catalog_stamp())
    return state.cached_value(f"map:{key}", stamp, lambda: _map(state, key, load_projection(paths, key)))


def _map(state: DatasetState, key: str, saved) -> dict:
    if saved is None:
        raise NotReady(f"No UMAP coordinates saved for {state.paths.name!r}.", "Export a UMAP projection first.",
                       dataset=state.paths.name, step="umap-export")
    live = {it.id: it.path for it in _live_items(state)}
    manifest = read_json_or_none(state.paths.atlas_manifest)
    manifest = manifest if isinstance(manifest, dict) else {}  # a damaged manifest: a map without sprites
    tiles = atlas_tiles(manifest)
    ids, coords = saved
    keep = [n for n, i in enumerate(ids.tolist()) if i in live]
    kept_ids = [int(ids[n]) for n in keep]
    return {"model_key": key, "count": len(keep), "ids": kept_ids, "paths": [live[i] for i in kept_ids],
            "x": [round(float(coords[n, 0]), 4) for n in keep], "y": [round(float(coords[n, 1]), 4) for n in keep],
            "atlas": {"pages": len(state.paths.atlas_page_names(manifest)), "tile": manifest.get("tile"),
                      "sprites": [tiles.get(i) for i in kept_ids]} if tiles else None}
