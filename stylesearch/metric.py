"""Learned similarity metrics behind one interface.

A Metric turns embedding vectors into similarity scores and into a Euclidean space where
plain L2 distance equals the metric's distance (what the index and UMAP use). Kinds:

- `IdentityMetric`: no learned metric (or `raw`): cosine similarity of the unit vectors.
- `DiagonalMetric`: d(x,y) = sqrt(sum_i w_i (x_i - y_i)^2), non-negative w with mean 1.
- `LowRankMetric`: d(x,y) = ||P (x - y)||, a learned linear projection head P (rank x dim).

Scores are 1 - d^2/2, which equals cosine similarity for unit vectors under the identity.
`weights.json` names the kind; its parameters live in `weights.npz`. Fitting lives in
metric_train.py.
"""

from __future__ import annotations

import hashlib
from typing import ClassVar

import numpy as np

from .errors import CatalogError
from .storage import DatasetPaths, atomic_path, atomic_write_json, read_json


def similarity(squared_distance: np.ndarray) -> np.ndarray:
    """The score of a squared distance, 1 - d^2/2: cosine similarity for unit vectors under the identity."""
    return 1.0 - 0.5 * squared_distance


class Metric:
    """Interface of every metric kind."""

    kind: ClassVar[str] = "identity"
    learned: ClassVar[bool] = False

    def __init__(self, meta: dict | None = None):
        self.meta = dict(meta or {})

    @property
    def version(self) -> str | None:
        """Identity of the trained parameters (None for the identity metric)."""
        return self.meta.get("version")

    def to_euclidean(self, vectors: np.ndarray) -> np.ndarray:
        """Vectors whose plain Euclidean distances equal this metric's distances."""
        return vectors

    def scores(self, query: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """Similarity of each row of `vectors` to `query`: 1 - d^2/2 (cosine for the identity)."""
        return self.space_scores(self.to_euclidean(query[None, :])[0], self.to_euclidean(vectors))

    def space_scores(self, query: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """`scores` of a query and vectors already mapped by `to_euclidean`."""
        diff = vectors - query[None, :]
        return similarity(np.einsum("ij,ij->i", diff, diff))

    def arrays(self) -> dict[str, np.ndarray]:
        """Parameters to save."""
        return {}

    @property
    def input_dim(self) -> int | None:
        return None


class IdentityMetric(Metric):
    """Plain cosine similarity of unit vectors."""

    def space_scores(self, query: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        return vectors @ query

    scores = space_scores


class DiagonalMetric(Metric):
    """Per-dimension weighted Euclidean distance."""

    kind = "diagonal"
    learned = True

    def __init__(self, weights: np.ndarray, meta: dict | None = None):
        super().__init__(meta)
        self.weights = np.asarray(weights, dtype=np.float32).reshape(-1)
        self._scale = np.sqrt(np.maximum(self.weights, 0.0))

    def to_euclidean(self, vectors: np.ndarray) -> np.ndarray:
        return vectors * self._scale.astype(vectors.dtype, copy=False)

    def scores(self, query: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        diff = vectors - query
        return similarity((diff * diff) @ self.weights)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"weights": self.weights}

    @property
    def input_dim(self) -> int:
        return len(self.weights)


class LowRankMetric(Metric):
    """A learned linear projection head: d(x,y) = ||P (x - y)||, P of shape (rank, dim)."""

    kind = "lowrank"
    learned = True

    def __init__(self, projection: np.ndarray, meta: dict | None = None):
        super().__init__(meta)
        self.projection = np.asarray(projection, dtype=np.float32)
        if self.projection.ndim != 2:
            raise ValueError("projection must be a (rank, dim) matrix")

    def to_euclidean(self, vectors: np.ndarray) -> np.ndarray:
        return vectors @ self.projection.T.astype(vectors.dtype, copy=False)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"projection": self.projection}

    @property
    def input_dim(self) -> int:
        return int(self.projection.shape[1])


KINDS: dict[str, type[Metric]] = {"diagonal": DiagonalMetric, "lowrank": LowRankMetric}


def _from_arrays(arrays, meta: dict) -> Metric:
    kind = str(arrays["kind"]) if "kind" in arrays else meta.get("kind", "diagonal")
    meta = {**meta, "kind": kind, "version": str(arrays["version"]) if "version" in arrays else meta.get("version")}
    if kind == "diagonal":
        return DiagonalMetric(arrays["weights"], meta)
    if kind == "lowrank":
        return LowRankMetric(arrays["projection"], meta)
    raise CatalogError(f"Unknown metric kind {kind!r}.",
                       "It was written by a newer stylesearch; upgrade, or train the metric again.")


def load_metric(paths: DatasetPaths, model_key: str, raw: bool = False, dim: int | None = None) -> Metric:
    """The learned metric of a model (IdentityMetric when none is trained, or when `raw`).

    With `dim`, a metric trained for vectors of another size is refused with a clear error.
    """
    if raw:
        return IdentityMetric()
    meta = read_json(paths.metric_meta(model_key))
    try:
        if paths.metric_arrays(model_key).exists():
            with np.load(paths.metric_arrays(model_key)) as data:
                metric = _from_arrays(data, meta or {})
        elif paths.legacy_metric_weights(model_key).exists():
            metric = DiagonalMetric(np.load(paths.legacy_metric_weights(model_key)), meta)
        else:
            return IdentityMetric()
    except (OSError, ValueError, KeyError) as exc:
        raise CatalogError(f"The learned metric in {paths.metric_dir(model_key)} cannot be read ({exc}).",
                           "Train the metric again, or delete that folder to search without it.",
                           dataset=paths.name, step="train") from None
    if dim is not None and metric.input_dim != dim:
        raise CatalogError(
            f"The learned metric in {paths.metric_dir(model_key)} is for {metric.input_dim}-dimensional "
            f"vectors, but model {model_key} gives {dim} dimensions.",
            "Train the metric again for this model, or delete that folder to search without it.",
            dataset=paths.name, step="train")
    return metric


def metric_version(metric: Metric) -> str:
    """A short hash of the kind and parameters: changes whenever the metric does."""
    digest = hashlib.sha256(metric.kind.encode())
    for name, array in sorted(metric.arrays().items()):
        digest.update(name.encode() + np.ascontiguousarray(array, dtype=np.float32).tobytes())
    return digest.hexdigest()[:16]


def save_metric(paths: DatasetPaths, model_key: str, metric: Metric) -> dict:
    """Save parameters (with kind and version, one atomic file), then the metadata; returns it."""
    version = metric_version(metric)
    with atomic_path(paths.metric_arrays(model_key), suffix=".npz") as tmp:
        np.savez(tmp, kind=np.array(metric.kind), version=np.array(version), **metric.arrays())
    meta = {**metric.meta, "kind": metric.kind, "version": version}
    atomic_write_json(paths.metric_meta(model_key), meta)
    paths.legacy_metric_weights(model_key).unlink(missing_ok=True)
    metric.meta = meta
    return meta
