"""Search a dataset by text, image, or item, with +/- query arithmetic and the learned metric.

Query terms: `[+|-][WEIGHT*][text:|image:|like:]VALUE`, e.g. `"red dress"`, `-blue`,
`-0.5*image:ref.jpg`, `like:42`. The query vector is the weighted sum of the terms'
unit vectors, normalised. Searching only by `like:` terms needs no model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..embed.choice import resolve_spec
from ..embed.encoders.query import QueryEncoder, query_encoder
from ..embed.models import ModelSpec
from ..errors import NotReady, UserError
from ..index.load import load_index, metric_space
from ..ingest.urls import is_http_url
from ..learn.metric import load_metric
from ..store.catalog import open_catalog
from ..store.paths import DatasetPaths
from .filters import Clause, check_resolved, has_refs, matching_ids, parse_filters, resolve_refs
from .items import resolve_item

EXACT_SUBSET_LIMIT = 20_000  # a filter matching at most this many items is searched exactly
_TERM = re.compile(r"^(?P<sign>[+-]?)\s*(?:(?P<weight>\d+(?:\.\d+)?|\.\d+)\*)?(?:(?P<kind>text|image|like):)?(?P<value>.*)$",
                   re.S)


@dataclass(frozen=True)
class Term:
    weight: float  # signed
    kind: str  # text | image | like
    value: str


@dataclass(frozen=True)
class SearchRequest:
    """One search as every frontend asks it (command line, server, Python API): the terms, how many
    results, filters and options. `model`/`pretrained` choose among the dataset's embedded models."""

    terms: Sequence[Term]
    k: int = 10
    min_score: float | None = None
    raw: bool = False
    filters: Sequence[Clause] = ()
    group: bool = False
    effort: int | None = None
    model: str | None = None
    pretrained: str | None = None
    device: str = "auto"

    @classmethod
    def parse(cls, words: Sequence[str] = (), images: Sequence[str] = (), likes: Sequence[str] = (),
              where: Sequence[str] = (), **options) -> "SearchRequest":
        """A request from the words a person types: terms in the query grammar and `where` clauses."""
        return cls(parse_terms(list(words), images, likes), filters=parse_filters(list(where)), **options)


def _parse_term(raw: str, kind: str | None = None) -> Term:
    """One term; `kind` given for values that are an image or an item by construction (no grammar)."""
    if kind is not None:
        if not raw.strip():
            raise UserError(f"Empty query {kind}.")
        return Term(1.0, kind, raw.strip())
    m = _TERM.match(raw.strip())
    value = m.group("value").strip()
    if not value:
        raise UserError(f"Empty query term {raw!r}.")
    weight = (-1.0 if m.group("sign") == "-" else 1.0) * float(m.group("weight") or 1.0)
    if weight == 0:
        raise UserError(f"Query term {raw!r} has weight 0, so it would change nothing.")
    return Term(weight, m.group("kind") or "text", value)


def parse_terms(args: list[str], images: list[str] = (), likes: list[str] = ()) -> list[Term]:
    """Parse query terms plus query images and items into signed terms."""
    terms = [_parse_term(raw) for raw in args]
    terms += [_parse_term(v, "image") for v in images] + [_parse_term(v, "like") for v in likes]
    if not terms:
        raise UserError("Nothing to search for.", "Give a text query, a query image (file or URL) or an item.")
    return terms


def _image_bytes(ref: str) -> bytes:
    if is_http_url(ref):
        from ..ingest.fetch import fetch_bytes

        return fetch_bytes(ref)
    path = Path(ref).expanduser()
    if not path.is_file():
        raise UserError(f"Query image {ref} does not exist.")
    return path.read_bytes()


class Searcher:
    """Loaded search state for one dataset and model; the query encoder is made only when needed."""

    def __init__(self, paths: DatasetPaths, spec: ModelSpec | None = None, raw: bool = False,
                 device: str = "auto", effort: int | None = None, encoder: QueryEncoder | None = None):
        self.paths = paths
        self.spec = spec or resolve_spec(paths, embedded_only=True)
        self.model_key = self.spec.key
        self.catalog = open_catalog(paths, readonly=True)
        try:
            model_meta = self.catalog.vectors.model(self.model_key)
            if model_meta is None:
                raise NotReady(f"Dataset {paths.name!r} has no embeddings of {self.model_key}.",
                               "Embed it with that model first.", dataset=paths.name, step="embed")
            self.index = load_index(paths, self.model_key, effort)
            self.dim = int(model_meta["dim"])
            self.metric = load_metric(paths, self.model_key, raw=raw, dim=self.dim)
        except BaseException:
            self.catalog.close()
            raise
        self.device = device
        self._encoder: QueryEncoder | None = encoder  # a warm one can be shared between searchers
        self._vectors: tuple[np.ndarray, np.ndarray] | None = None
        self._fields: set[str] | None = None  # metadata fields, for checking filters
        self._allowed_cache: dict[tuple, set[int]] = {}

    def close(self) -> None:
        self.catalog.close()

    @property
    def encoder(self) -> QueryEncoder:
        if self._encoder is None:
            self._encoder = query_encoder(self.paths, self.spec, self.device, dim=self.dim)
        return self._encoder

    @property
    def loaded_encoder(self) -> QueryEncoder | None:
        """The query encoder if one was made (a like-only search makes none)."""
        return self._encoder

    def use_encoder(self, encoder: QueryEncoder) -> None:
        """Share an encoder already loaded elsewhere (one model in memory for many searchers)."""
        self._encoder = encoder

    def term_vector(self, term: Term) -> np.ndarray:
        if term.kind == "like":
            return self.catalog.vectors.of_item(self.model_key, resolve_item(self.catalog, term.value))
        if term.kind == "text":
            return self.encoder.encode_text([term.value])[0]
        from ..store.images import load_rgb

        return self.encoder.encode_image(load_rgb(_image_bytes(term.value)))

    def query_vector(self, terms: list[Term]) -> np.ndarray:
        q = sum(t.weight * self.term_vector(t) for t in terms)
        norm = float(np.linalg.norm(q))
        if norm < 1e-8:
            raise UserError("The query terms cancel out to nothing.", "Change the weights or the terms.")
        return (q / norm).astype(np.float32)

    def run(self, request: SearchRequest) -> list[dict]:
        """The rows of a request (its model, raw and effort are the searcher's own)."""
        return self.search(list(request.terms), request.k, request.min_score, filters=request.filters,
                           group=request.group)

    def search(self, terms: list[Term], k: int = 10, min_score: float | None = None,
               exclude_like: bool = True, filters: Sequence[Clause] = (), group: bool = False) -> list[dict]:
        """The k best items for the terms, under the learned metric, among items matching the filters."""
        skip = {resolve_item(self.catalog, t.value).id for t in terms if t.kind == "like"} if exclude_like else set()
        filters = self.with_item_values(filters, terms)
        return self.search_vector(self.query_vector(terms), k, min_score, skip, filters, group)

    def with_item_values(self, filters: Sequence[Clause], terms: Sequence[Term]) -> Sequence[Clause]:
        """Filters with `@FIELD` replaced by the query item's values (filters.resolve_refs): the first
        `like:` item of positive weight, else the first `like:` item."""
        likes = sorted((t for t in terms if t.kind == "like"), key=lambda t: t.weight < 0)
        if not likes or not has_refs(filters):
            check_resolved(filters)
            return filters
        item = resolve_item(self.catalog, likes[0].value)
        return resolve_refs(filters, item, self.catalog.metadata([item.id]).get(item.id, {}))

    def search_vector(self, query: np.ndarray, k: int = 10, min_score: float | None = None,
                      skip: set[int] = frozenset(), filters: Sequence[Clause] = (), group: bool = False) -> list[dict]:
        """Exact when the filter is selective (score only the matching items); otherwise take more
        and more candidates from the index, dropping non-matching ones, until k rows or the collection
        is exhausted."""
        allowed = self._allowed(filters)
        select = RowFilter(skip, allowed, min_score, group)
        if allowed is not None and len(allowed) <= EXACT_SUBSET_LIMIT:
            ids, scores = self._exact(query, allowed)
            return self._rows(ids, scores, k, select)
        fetch, total = (k + len(skip)) * 4 + 20, self._total()
        while True:
            ids, scores = self._candidates(query, fetch)
            rows = self._rows(ids, scores, k, select)
            if len(rows) >= k or fetch >= total or (min_score is not None and len(scores) and scores[-1] < min_score):
                return rows
            fetch *= 4

    def _allowed(self, filters: Sequence[Clause]) -> set[int] | None:
        """Ids of live items matching every filter (None: no filter); remembered per filter set."""
        if not filters:
            return None
        key = tuple(filters)
        if key not in self._allowed_cache:
            if self._fields is None:
                self._fields = set(self.catalog.metadata_fields())
            if len(self._allowed_cache) >= 16:
                self._allowed_cache.pop(next(iter(self._allowed_cache)))
            self._allowed_cache[key] = matching_ids(self.catalog, filters, self._fields)
        return self._allowed_cache[key]

    def _total(self) -> int:
        return self.index.index.ntotal if self._index_usable() else self.catalog.live_count()

    def _index_usable(self) -> bool:
        return self.index is not None and self.index.space == metric_space(self.metric)

    def _exact(self, query: np.ndarray, ids: set[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Every (given) item scored exactly under the metric, best first.

        A flat index in the metric's space holds exactly the vectors to score, so they are taken
        from it (no catalog read); items added since the index was built come from the catalog.
        """
        if ids is None:
            found, vectors = self._all_vectors()
            return _top(found, self.metric.scores(query, vectors), len(found))
        wanted = np.array(sorted(ids), dtype=np.int64)
        found, scores = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        if self._index_usable() and self.index.is_flat:
            found, stored = self.index.gather(wanted)
            scores = self._space_scores(query, stored)
            wanted = np.setdiff1d(wanted, found, assume_unique=True)
        if len(wanted):
            more, vectors = self.catalog.vectors.load_for_ids(self.model_key, wanted.tolist())
            found = np.concatenate([found, more])
            scores = np.concatenate([scores, self.metric.scores(query, vectors)])
        return _top(found, scores, len(found))

    def _space_scores(self, query: np.ndarray, stored: np.ndarray) -> np.ndarray:
        """Scores of vectors already in the index's space (the metric's Euclidean space, or raw)."""
        return self.metric.space_scores(self.metric.to_euclidean(query[None])[0], stored)

    def _all_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        if self._vectors is None:
            self._vectors = self.catalog.vectors.load(self.model_key)
            if not len(self._vectors[0]):
                raise NotReady("No embedded items to search.", "Embed the dataset first.",
                               dataset=self.paths.name, step="embed")
        return self._vectors

    def _candidates(self, query: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray]:
        """Best ids and scores under the metric: from the index when it lives in the metric's
        space, else by exact search over the catalog's vectors."""
        if self._index_usable():
            scores, ids = self.index.search(self.metric.to_euclidean(query[None]), fetch)
            keep = ids[0] >= 0  # faiss pads with -1
            return ids[0][keep], scores[0][keep]
        ids, scores = self._exact(query)
        return ids[:fetch], scores[:fetch]

    def _rows(self, ids, scores, k: int, select: "RowFilter") -> list[dict]:
        found = [(int(i), float(s)) for i, s in zip(ids, scores)]
        live = self.catalog.paths_and_groups(i for i, _ in found)
        rows, groups = [], set()
        for item_id, score in found:
            if item_id not in live or not select.keeps(item_id, score, live[item_id][1], groups):
                continue
            path = live[item_id][0]
            rows.append({"rank": len(rows) + 1, "score": round(score, 6), "id": item_id, "path": path,
                         "file": str(self.paths.item_file(path).absolute())})
            if len(rows) == k:
                break
        metadata = self.catalog.metadata([r["id"] for r in rows])
        captions = self.catalog.captions([r["id"] for r in rows])
        for row in rows:
            row["group"] = live[row["id"]][1]
            row["caption"] = captions.get(row["id"])
            row["meta"] = metadata.get(row["id"], {})
        return rows


@dataclass
class RowFilter:
    """Which candidates become rows: not a query item, matching the filters, above the minimum
    score, and (with `group`) the first, best one of its group."""

    skip: set[int]
    allowed: set[int] | None
    min_score: float | None
    group: bool

    def keeps(self, item_id: int, score: float, group_id: str | None, seen_groups: set) -> bool:
        if item_id in self.skip or (self.allowed is not None and item_id not in self.allowed):
            return False
        if self.min_score is not None and score < self.min_score:
            return False
        if self.group:
            key = group_id if group_id is not None else ("item", item_id)
            if key in seen_groups:
                return False
            seen_groups.add(key)
        return True


def _top(ids: np.ndarray, scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-scores)[:n]
    return ids[order], scores[order]


def search(paths: DatasetPaths, request: SearchRequest, spec: ModelSpec | None = None) -> list[dict]:
    """One-shot search of one dataset (the request's model unless `spec`); see Searcher for repeated queries."""
    spec = spec or resolve_spec(paths, request.model, request.pretrained, embedded_only=True)
    searcher = Searcher(paths, spec, raw=request.raw, device=request.device, effort=request.effort)
    try:
        return searcher.run(request)
    finally:
        searcher.close()


def search_datasets(datasets: Sequence[DatasetPaths], request: SearchRequest) -> list[dict]:
    """Search several datasets embedded with the same model; rows are merged by score and name
    their dataset. `like:` terms name items of the first dataset."""
    specs = [resolve_spec(p, request.model, request.pretrained, embedded_only=True) for p in datasets]
    check_same_model(datasets, specs)
    searchers: list[Searcher] = []
    try:
        for paths, spec in zip(datasets, specs):
            searchers.append(Searcher(paths, spec, raw=request.raw, device=request.device, effort=request.effort))
        return search_searchers(searchers, request)
    finally:
        for searcher in searchers:
            searcher.close()


def datasets_covered(names: Sequence[str], everything: bool, available: Sequence[str]) -> list[str]:
    """The datasets a query over several covers: every available one, or the named ones (each once, in
    order); UserError when that is none."""
    chosen = list(available) if everything else list(dict.fromkeys(names))
    if not chosen:
        raise UserError("There are no datasets to search." if everything else "Name the datasets to search.")
    return chosen


def check_same_model(datasets: Sequence[DatasetPaths], specs: Sequence[ModelSpec]) -> None:
    """Refuse to merge datasets embedded with different models, naming each one's model."""
    if len({spec.key for spec in specs}) > 1:
        listing = ", ".join(f"{p.name}: {s.key}" for p, s in zip(datasets, specs))
        raise UserError(f"These datasets are embedded with different models ({listing}).",
                        "Search datasets of one model together, or choose the model they share.")


def search_searchers(searchers: Sequence[Searcher], request: SearchRequest) -> list[dict]:
    """Rows of several loaded searchers (one model) merged by score; the first encodes the query once."""
    first = searchers[0]
    query = first.query_vector(list(request.terms))
    skip = {resolve_item(first.catalog, t.value).id for t in request.terms if t.kind == "like"}
    filters = first.with_item_values(request.filters, request.terms)
    merged = []
    for n, searcher in enumerate(searchers):
        rows = searcher.search_vector(query, request.k, request.min_score, skip if n == 0 else set(),
                                      filters, request.group)
        merged += [{**row, "dataset": searcher.paths.name} for row in rows]
    merged.sort(key=lambda r: -r["score"])
    return [{**row, "rank": n + 1} for n, row in enumerate(merged[:request.k])]
