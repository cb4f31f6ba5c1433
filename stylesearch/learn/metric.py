"""Learned similarity metrics behind one interface.

A Metric turns embedding vectors into similarity scores and into a Euclidean space where
plain L2 distance equals the metric's distance (what the index and UMAP use). Kinds:

- `IdentityMetric`: no learned metric (or `raw`): cosine similarity of the unit vectors.
- `DiagonalMetric`: d(x,y) = sqrt(sum_i w_i (x_i - y_i)^2), non-negative w with mean 1.
- `LowRankMetric`: d(x,y) = ||P (x - y)||, a learned linear projection head P (rank x dim).

Scores are 1 - d^2/2, which equals cosine similarity for unit vectors under the identity.
`weights.json` names the kind; its parameters live in `weights.npz`. Fitting lives in
train.py. Parameters that cannot rank (NaN, infinite, negative weights, absurdly large,
all zero) are refused at load, never used to rank.
"""

from __future__ import annotations

import hashlib
import zipfile
from typing import ClassVar

import numpy as np

from ..errors import CatalogError, StyleSearchError
from ..store.files import atomic_path, atomic_write_json, read_json_or_none
from ..store.paths import DatasetPaths

PARAMETER_LIMIT = 1e6  # trained parameters are near 1 (weights of mean 1, a projection of trace dim)


def similarity(squared_distance: np.ndarray) -> np.ndarray:
    """The score of a squared distance, 1 - d^2/2: cosine similarity for unit vectors under the identity."""
    return 1.0 - 0.5 * squared_distance


def distance_of_score(score: np.ndarray) -> np.ndarray:
    """The distance a score stands for, the inverse of `similarity`: sqrt(2 - 2 score), never negative."""
    return np.sqrt(np.maximum(0.0, 2.0 - 2.0 * np.asarray(score)))


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

    Damaged files, parameters that cannot rank (see `parameter_problem`) and, with `dim`, a metric
    trained for vectors of another size are refused with a clear error.
    """
    if raw:
        return IdentityMetric()
    arrays, legacy = paths.metric_arrays(model_key), paths.legacy_metric_weights(model_key)
    file = arrays if arrays.exists() else legacy if legacy.exists() else None
    if file is None:
        return IdentityMetric()
    meta_file = paths.metric_meta(model_key)
    meta = read_json_or_none(meta_file) if meta_file.exists() else {}
    if not isinstance(meta, dict):
        raise _unusable(paths, model_key, f"The learned metric's description {meta_file} is damaged.")
    try:
        if file == arrays:
            with np.load(file) as data:
                metric = _from_arrays(data, meta)
        else:
            metric = DiagonalMetric(np.load(file), meta)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise _unusable(paths, model_key, f"The learned metric in {file} cannot be read ({exc}).") from None
    problem = parameter_problem(metric)
    if problem:
        raise _unusable(paths, model_key, f"The learned metric in {file} has {problem}.")
    if dim is not None and metric.input_dim != dim:
        raise _unusable(paths, model_key, f"The learned metric in {paths.metric_dir(model_key)} is for "
                        f"{metric.input_dim}-dimensional vectors, but model {model_key} gives {dim} dimensions.",
                        "for this model")
    return metric


def parameter_problem(metric: Metric) -> str | None:
    """Why a metric's parameters cannot rank (NaN, infinite, negative weights, beyond PARAMETER_LIMIT,
    all zero), or None."""
    for name, array in metric.arrays().items():
        values = np.asarray(array, dtype=np.float64)
        if not np.isfinite(values).all():
            return f"{name} that are NaN or infinite"
        if np.abs(values).max(initial=0.0) > PARAMETER_LIMIT:
            return f"{name} beyond {PARAMETER_LIMIT:g}"
        if not values.any():
            return f"{name} that are all zero"
    if isinstance(metric, DiagonalMetric) and (metric.weights < 0).any():
        return "negative weights"
    return None


def _unusable(paths: DatasetPaths, model_key: str, message: str, purpose: str = "") -> CatalogError:
    return CatalogError(message, f"Train the metric again{' ' + purpose if purpose else ''}, or delete "
                        f"{paths.metric_dir(model_key)} to search without it.", dataset=paths.name, step="train")


def metric_version(metric: Metric) -> str:
    """A short hash of the kind and parameters: changes whenever the metric does."""
    digest = hashlib.sha256(metric.kind.encode())
    for name, array in sorted(metric.arrays().items()):
        digest.update(name.encode() + np.ascontiguousarray(array, dtype=np.float32).tobytes())
    return digest.hexdigest()[:16]


def save_metric(paths: DatasetPaths, model_key: str, metric: Metric) -> dict:
    """Save parameters (with kind and version, one atomic file), then the metadata; returns it.
    Parameters that cannot rank are refused, so a saved metric always loads."""
    problem = parameter_problem(metric)
    if problem:
        raise StyleSearchError(f"The trained metric has {problem}; it was not saved.",
                               "Judge more triplets, or train another kind of metric.", dataset=paths.name)
    version = metric_version(metric)
    with atomic_path(paths.metric_arrays(model_key), suffix=".npz") as tmp:
        np.savez(tmp, kind=np.array(metric.kind), version=np.array(version), **metric.arrays())
    meta = {**metric.meta, "kind": metric.kind, "version": version}
    atomic_write_json(paths.metric_meta(model_key), meta)
    paths.legacy_metric_weights(model_key).unlink(missing_ok=True)
    metric.meta = meta
    return meta
