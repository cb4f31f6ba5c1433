"""Search a dataset by text, image, or item, with +/- query arithmetic and the learned metric.

Query terms: `[+|-][WEIGHT*][text:|image:|like:]VALUE`, e.g. `"red dress"`, `-blue`,
`-0.5*image:ref.jpg`, `like:42`. The query vector is the weighted sum of the terms'
unit vectors, normalised. Searching only by `like:` terms needs no model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .catalog import open_catalog
from .errors import NotReady, UserError
from .index import load_index, metric_space
from .metric import load_metric
from .model_choice import resolve_spec
from .encoders.query import QueryEncoder, query_encoder
from .models import ModelSpec
from .storage import DatasetPaths

_TERM = re.compile(r"^(?P<sign>[+-]?)\s*(?:(?P<weight>\d+(?:\.\d+)?|\.\d+)\*)?(?:(?P<kind>text|image|like):)?(?P<value>.*)$",
                   re.S)


@dataclass(frozen=True)
class Term:
    weight: float  # signed
    kind: str  # text | image | like
    value: str


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
    if re.match(r"^https?://", ref):
        from .download import fetch_bytes

        return fetch_bytes(ref)
    path = Path(ref).expanduser()
    if not path.is_file():
        raise UserError(f"Query image {ref} does not exist.")
    return path.read_bytes()


class Searcher:
    """Loaded search state for one dataset and model; the query encoder is made only when needed."""

    def __init__(self, paths: DatasetPaths, spec: ModelSpec | None = None, raw: bool = False,
                 device: str = "auto", effort: int | None = None):
        self.paths = paths
        self.spec = spec or resolve_spec(paths, embedded_only=True)
        self.model_key = self.spec.key
        self.catalog = open_catalog(paths, readonly=True)
        model_meta = self.catalog.model(self.model_key)
        if model_meta is None:
            self.catalog.close()
            raise NotReady(f"Dataset {paths.name!r} has no embeddings of {self.model_key}.",
                           "Embed it with that model first.", dataset=paths.name, step="embed")
        self.index = load_index(paths, self.model_key, effort)
        self.metric = load_metric(paths, self.model_key, raw=raw, dim=model_meta["dim"])
        self.device = device
        self._encoder: QueryEncoder | None = None

    def close(self) -> None:
        self.catalog.close()

    @property
    def encoder(self) -> QueryEncoder:
        if self._encoder is None:
            self._encoder = query_encoder(self.paths, self.spec, self.device)
        return self._encoder

    def term_vector(self, term: Term) -> np.ndarray:
        if term.kind == "like":
            return self.catalog.vector_for_item(self.model_key, self.catalog.item(term.value))
        if term.kind == "text":
            return self.encoder.encode_text([term.value])[0]
        from .images import load_rgb

        return self.encoder.encode_image(load_rgb(_image_bytes(term.value)))

    def query_vector(self, terms: list[Term]) -> np.ndarray:
        q = sum(t.weight * self.term_vector(t) for t in terms)
        norm = float(np.linalg.norm(q))
        if norm < 1e-8:
            raise UserError("The query terms cancel out to nothing.", "Change the weights or the terms.")
        return (q / norm).astype(np.float32)

    def search(self, terms: list[Term], k: int = 10, min_score: float | None = None,
               exclude_like: bool = True) -> list[dict]:
        query = self.query_vector(terms)
        ids, scores = self._candidates(query, k)
        skip = {self.catalog.item(t.value).id for t in terms if t.kind == "like"} if exclude_like else set()
        return self._rows(ids, scores, k, min_score, skip)

    def _candidates(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Best ids and scores under the metric: from the index when it lives in the metric's
        space, else by exact search over the catalog's vectors."""
        fetch = k * 4 + 20
        if self.index is not None and self.index.space == metric_space(self.metric):
            scores, ids = self.index.search(self.metric.to_euclidean(query[None]), fetch)
            return ids[0], scores[0]
        ids, vectors = self.catalog.load_vectors(self.model_key)
        if not len(ids):
            raise NotReady("No embedded items to search.", "Embed the dataset first.",
                           dataset=self.paths.name, step="embed")
        return _top(ids, self.metric.scores(query, vectors), fetch)

    def _rows(self, ids, scores, k, min_score, skip) -> list[dict]:
        found = [(int(i), s) for i, s in zip(ids, scores) if i >= 0]  # faiss pads with -1; keep pairs aligned
        marks = ",".join("?" for _ in found) or "NULL"
        live = {r[0]: r[1] for r in self.catalog.conn.execute(
            f"SELECT id, path FROM items WHERE status='ok' AND id IN ({marks})", [i for i, _ in found])}
        rows = []
        for item_id, score in found:
            if item_id not in live or item_id in skip or (min_score is not None and score < min_score):
                continue
            path = live[item_id]
            rows.append({"rank": len(rows) + 1, "score": round(float(score), 6), "id": item_id, "path": path,
                         "file": str(self.paths.item_file(path).absolute())})
            if len(rows) == k:
                break
        return rows


def _top(ids: np.ndarray, scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-scores)[:n]
    return ids[order], scores[order]


def search(paths: DatasetPaths, terms: list[Term], k: int = 10, spec: ModelSpec | None = None,
           min_score: float | None = None, raw: bool = False, device: str = "auto",
           effort: int | None = None) -> list[dict]:
    """One-shot search; see Searcher for repeated queries."""
    searcher = Searcher(paths, spec, raw=raw, device=device, effort=effort)
    try:
        return searcher.search(terms, k, min_score)
    finally:
        searcher.close()
