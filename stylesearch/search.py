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

from .catalog import Catalog, open_catalog
from .errors import NotReady, UserError
from .images import item_file
from .index import load_index
from .metric import load_weights, weighted_scores
from .models import DEFAULT_MODEL, DEFAULT_PRETRAINED, LoadedModel, ModelSpec, load_model
from .storage import DatasetPaths

_TERM = re.compile(r"^(?P<sign>[+-]?)\s*(?:(?P<weight>\d+(?:\.\d+)?|\.\d+)\*)?(?:(?P<kind>text|image|like):)?(?P<value>.*)$",
                   re.S)
EXACT_LIMIT = 200_000  # below this many indexed vectors, weighted search reranks everything


@dataclass(frozen=True)
class Term:
    weight: float  # signed
    kind: str  # text | image | like
    value: str


def parse_terms(args: list[str], images: list[str] = (), likes: list[str] = ()) -> list[Term]:
    """Parse positional query terms plus --image/--like options into signed terms."""
    terms = []
    for raw in args:
        m = _TERM.match(raw.strip())
        value = m.group("value").strip()
        if not value:
            raise UserError(f"Empty query term {raw!r}.")
        sign = -1.0 if m.group("sign") == "-" else 1.0
        terms.append(Term(sign * float(m.group("weight") or 1.0), m.group("kind") or "text", value))
    terms += [Term(1.0, "image", v) for v in images] + [Term(1.0, "like", v) for v in likes]
    if not terms:
        raise UserError("Nothing to search for.", "Give a text query, --image PATH|URL or --like ITEM.")
    return terms


def pick_model_key(catalog: Catalog, spec: ModelSpec | None) -> tuple[str, ModelSpec]:
    """The model to search with: the one asked for, else the only/default/newest embedded one."""
    models = catalog.models()
    if spec is not None:
        if catalog.model(spec.key) is None:
            raise NotReady(f"No embeddings for {spec.key} in {catalog.paths.name!r}.",
                           f"Run `stylesearch embed {catalog.paths.name} --model {spec.name}` first.")
        return spec.key, spec
    if not models:
        raise NotReady(f"Dataset {catalog.paths.name!r} has no embeddings yet.",
                       f"Run `stylesearch embed {catalog.paths.name}` first.")
    default = ModelSpec(DEFAULT_MODEL, DEFAULT_PRETRAINED).key
    chosen = next((m for m in models if m["model_key"] == default), models[-1])
    name, pretrained = chosen["model_name"], chosen["pretrained"] or None
    return chosen["model_key"], ModelSpec(name, None if name.startswith(("hf-hub:", "local-dir:")) else pretrained)


def _image_bytes(ref: str) -> bytes:
    if re.match(r"^https?://", ref):
        from .download import fetch_bytes

        return fetch_bytes(ref)
    path = Path(ref).expanduser()
    if not path.is_file():
        raise UserError(f"Query image {ref} does not exist.")
    return path.read_bytes()


class Searcher:
    """Loaded search state for one dataset and model; the model is loaded only when needed."""

    def __init__(self, paths: DatasetPaths, spec: ModelSpec | None = None, raw: bool = False,
                 device: str = "auto", effort: int | None = None):
        self.paths = paths
        self.catalog = open_catalog(paths)
        self.model_key, self.spec = pick_model_key(self.catalog, spec)
        self.index = load_index(paths, self.model_key, effort)
        self.weights = None if raw else load_weights(paths, self.model_key)
        self.device = device
        self._model: LoadedModel | None = None

    def close(self) -> None:
        self.catalog.close()

    @property
    def model(self) -> LoadedModel:
        if self._model is None:
            self._model = load_model(self.spec, self.device)
        return self._model

    def term_vector(self, term: Term) -> np.ndarray:
        if term.kind == "like":
            return self.catalog.vector_for_item(self.model_key, self.catalog.item(term.value))
        if term.kind == "text":
            return self.model.encode_text([term.value])[0]
        from .images import load_rgb

        pixels = self.model.preprocess(load_rgb(_image_bytes(term.value))).unsqueeze(0)
        return self.model.encode_images(pixels)[0]

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
        fetch = k * 4 + 20
        if self.index is None:  # no index yet: exact search over the catalog's vectors
            ids, vectors = self.catalog.load_vectors(self.model_key)
            if not len(ids):
                raise NotReady("No embedded items to search.", f"Run `stylesearch embed {self.paths.name}`.")
            scores = weighted_scores(query, vectors, self.weights)
            top = np.argsort(-scores)[:fetch]
            return ids[top], scores[top]
        if self.weights is None:
            scores, ids = self.index.search(query[None], fetch)
            return ids[0], scores[0]
        total = self.index.index.ntotal
        pool = total if total <= EXACT_LIMIT and self.index.meta["kind"] == "flat" else max(fetch * 10, 1000)
        _, ids = self.index.search((query * self.weights)[None], pool)
        ids = ids[0][ids[0] >= 0]
        scores = weighted_scores(query, self.index.vectors(ids), self.weights)
        order = np.argsort(-scores)[:fetch]
        return ids[order], scores[order]

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
                         "file": str(item_file(self.paths.images, path).absolute())})
            if len(rows) == k:
                break
        return rows


def search(paths: DatasetPaths, terms: list[Term], k: int = 10, spec: ModelSpec | None = None,
           min_score: float | None = None, raw: bool = False, device: str = "auto",
           effort: int | None = None) -> list[dict]:
    """One-shot search; see Searcher for repeated queries."""
    searcher = Searcher(paths, spec, raw=raw, device=device, effort=effort)
    try:
        return searcher.search(terms, k, min_score)
    finally:
        searcher.close()
