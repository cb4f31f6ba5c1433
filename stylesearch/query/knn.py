"""Searching by an embedding a caller computed, and dropping near-duplicates among results by their
embeddings: what clip-retrieval's knn service offers (the server's compatibility routes call these)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import UserError
from .search import Searcher

DUPLICATE_COSINE = 0.94  # results this similar to a better one are near-duplicates (clip-retrieval's threshold)


def unit_query(values: Sequence, dim: int) -> np.ndarray:
    """A caller's embedding as a unit query vector of the dataset's dimension (UserError otherwise)."""
    try:
        vector = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise UserError("The query embedding must be a list of numbers.") from None
    if vector.shape != (dim,):
        raise UserError(f"The query embedding has {vector.size} numbers; this dataset's vectors have {dim}.",
                        "Embed the query with the model the dataset was embedded with.")
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(vector).all() or norm < 1e-12:
        raise UserError("The query embedding must be finite and not all zeros.")
    return (vector / norm).astype(np.float32)


def search_embedding(searcher: Searcher, values: Sequence, k: int) -> list[dict]:
    """The k items nearest to a caller's embedding (under the searcher's metric, like any query vector)."""
    return searcher.search_vector(unit_query(values, searcher.dim), k)


def without_near_duplicates(searcher: Searcher, rows: list[dict], threshold: float = DUPLICATE_COSINE) -> list[dict]:
    """Rows (best first) without those whose raw embedding has a cosine of at least `threshold` with a
    better row kept before them; ranks renumbered."""
    if len(rows) < 2:
        return rows
    found, vectors = searcher.catalog.vectors.load_for_ids(searcher.model_key, [r["id"] for r in rows])
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = dict(zip(found.tolist(), vectors / np.maximum(norms, 1e-12)))
    kept, kept_vectors = [], []
    for row in rows:
        vector = unit.get(row["id"])
        if vector is not None and kept_vectors and float(np.max(np.stack(kept_vectors) @ vector)) >= threshold:
            continue
        kept.append({**row, "rank": len(kept) + 1})
        if vector is not None:
            kept_vectors.append(vector)
    return kept
