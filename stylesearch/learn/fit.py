"""Fitting metrics to triplet judgments on arrays (no dataset): the cross-validated choice of
regularisation and of the kind (the kinds' models live in kinds.py).

A judgment "x is nearer to a than y" is modelled as P = sigmoid(d2(a,y) - d2(a,x)) with the
learned squared distance d2 (logistic model, minimised with L-BFGS-B); "too similar" and "anchor
too different" skips are equality terms with target probability 1/2. Kinds:

- diagonal: d2 = sum_i w_i (x_i - y_i)^2 with w >= 0. Candidates: a pull toward uniform weights
  of several strengths, and sparse (reweighted L1) fits of several strengths.
- lowrank: d2 = ||P (x - y)||^2, P (rank x dim) started at (and pulled toward) the top principal
  directions of the vectors.

Regularisation is chosen by K-fold cross-validation on the judgments themselves: the default
(a weak pull toward uniform) is kept unless another candidate predicts the held-out folds
better by more than three standard errors (paired per judgment, after calibrating each
candidate's scale), so a few hundred judgments rarely move it but thousands do. `auto` fits
both kinds and keeps the low-rank one only where it agrees better held out, by the same test.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field

import numpy as np

from ..choices import METRIC_KINDS
from ..errors import UserError
from .kinds import MODELS, Fit, Model, logistic_scale

KINDS = METRIC_KINDS


@dataclass(frozen=True)
class FitOptions:
    kind: str = "diagonal"
    rank: int = 64
    seed: int = 0
    folds: int = 5
    equality_weight: float = 1.0
    max_iter: int = 400
    select: bool = True  # cross-validate the regularisation (else use the default candidate)


@dataclass
class Triplets:
    """Row indices into a vector array: decisive rows are (anchor, nearer, farther); equality
    rows (anchor, x, y) are judgments that neither option is nearer."""

    decisive: np.ndarray
    equal: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), dtype=np.int64))

    def __post_init__(self):
        self.decisive = np.asarray(self.decisive, dtype=np.int64).reshape(-1, 3)
        self.equal = np.asarray(self.equal, dtype=np.int64).reshape(-1, 3)


def _one_blas_thread(func):
    """Run with BLAS on one thread: fits are many small products, which threads only slow down."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # pragma: no cover - optional
            limits = contextlib.nullcontext()
        else:
            limits = threadpool_limits(1, user_api="blas")
        with limits:
            return func(*args, **kwargs)

    return wrapper


def _calibrated_losses(z: np.ndarray) -> np.ndarray:
    """Per-example log-loss of held-out logits after the best single scale factor (kinds.logistic_scale)."""
    t = logistic_scale(z, start=1.0, iterations=30, tolerance=1e-6)
    return np.logaddexp(0.0, -t * z)


def _folds(n: int, options: FitOptions) -> list[np.ndarray]:
    """Fold labels per repetition: repeated at small n where one split is noisy."""
    rng = np.random.default_rng(options.seed)
    k = options.folds if n < 5000 else min(options.folds, 3)
    repeats = 2 if n < 1000 else 1
    return [rng.permutation(n) % k for _ in range(repeats)]


def _out_of_fold(model: Model, n: int, options: FitOptions) -> np.ndarray:
    """Held-out logits of every candidate, shape (repetitions, candidates, n); along the list of
    candidates each fit starts from the previous one's solution."""
    blocks = []
    for labels in _folds(n, options):
        oof = np.zeros((len(model.candidates), n))
        for k in np.unique(labels):
            train, test = np.flatnonzero(labels != k), np.flatnonzero(labels == k)
            warm = None
            for c, candidate in enumerate(model.candidates):
                warm = model.fit(train, candidate, warm)
                oof[c, test] = model.logits(warm, test)
        blocks.append(oof)
    return np.stack(blocks)


def _pick(losses: np.ndarray, default: int, z_crit: float = 3.0) -> int:
    """The default candidate unless another one's paired mean loss (per judgment) is lower by
    more than z_crit standard errors; then the best of those."""
    diff = losses - losses[default]
    mean = diff.mean(axis=1)
    se = diff.std(axis=1) / np.sqrt(diff.shape[1]) + 1e-12
    better = np.flatnonzero(mean / se < -z_crit)
    better = better[better != default]
    return int(better[np.argmin(mean[better])]) if len(better) else default


def select_candidate(model: Model, trips: Triplets, options: FitOptions) -> tuple[int, np.ndarray | None]:
    """Index of the chosen candidate and every candidate's held-out logits (repetitions,
    candidates, n); None when there are too few judgments to cross-validate."""
    if not options.select or len(trips.decisive) < 4 * options.folds:
        return model.default, None
    oof = _out_of_fold(model, len(trips.decisive), options)
    losses = np.stack([_calibrated_losses(oof[:, c].ravel()).reshape(oof.shape[0], -1).mean(axis=0)
                       for c in range(oof.shape[1])])
    return _pick(losses, model.default), oof


def _agreement_of_logits(z: np.ndarray) -> float:
    return float(np.mean((z > 0) + 0.5 * (z == 0)))


def _fit_kind(kind: str, vectors, trips: Triplets, options: FitOptions):
    """The kind's model, its chosen candidate, and that candidate's held-out logits."""
    model = MODELS[kind](vectors, trips, options)
    chosen, oof = select_candidate(model, trips, options)
    return model, chosen, (oof[:, chosen] if oof is not None else None)


@_one_blas_thread
def fit_metric(vectors: np.ndarray, trips: Triplets, options: FitOptions = FitOptions()) -> Fit:
    """Fit the metric kind asked for (auto: diagonal, or low-rank where it agrees better held out)."""
    if options.kind not in KINDS:
        raise UserError(f"Unknown metric kind {options.kind!r}.", f"Choose one of: {', '.join(KINDS)}.")
    kinds = ("diagonal", "lowrank") if options.kind == "auto" else (options.kind,)
    fitted = [_fit_kind(kind, vectors, trips, options) for kind in kinds]
    best = 0
    if len(fitted) == 2 and fitted[0][2] is not None and fitted[1][2] is not None:
        wrong = [(z <= 0).mean(axis=0) for _, _, z in fitted]  # per judgment, over repetitions
        best = _pick(np.stack(wrong), default=0)
    model, chosen, oof = fitted[best]
    return _finish(model, chosen, oof, trips)


def _finish(model: Model, chosen: int, oof, trips: Triplets) -> Fit:
    """Fit the chosen candidate on all judgments."""
    params = model.fit(np.arange(len(trips.decisive)), model.candidates[chosen], None)
    fit = model.result(params, chosen)
    fit.cv_agreement = _agreement_of_logits(oof) if oof is not None else None
    return fit


@_one_blas_thread
def refit(vectors: np.ndarray, trips: Triplets, kind: str, candidate: int, options: FitOptions) -> Fit:
    """Fit a given kind and regularisation candidate (no cross-validation)."""
    model = MODELS[kind](vectors, trips, options)
    return _finish(model, candidate, None, trips)


def _gaps(metric, vectors: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """d2(a, y) - d2(a, x) under the metric for rows (a, x, y)."""
    a, x, y = (metric.to_euclidean(vectors[rows[:, i]].astype(np.float64)) for i in range(3))
    return ((a - y) ** 2).sum(1) - ((a - x) ** 2).sum(1)


def agreement(metric, vectors: np.ndarray, decisive: np.ndarray) -> float:
    """Fraction of (anchor, nearer, farther) rows where the metric puts the nearer one nearer."""
    decisive = np.asarray(decisive).reshape(-1, 3)
    if not len(decisive):
        return float("nan")
    return _agreement_of_logits(_gaps(metric, vectors, decisive))


def wilson_interval(agree: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of an agreement measured on n judgments."""
    if n <= 0 or not np.isfinite(agree):
        return float("nan"), float("nan")
    centre = (agree + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(agree * (1 - agree) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(centre - half), float(centre + half)


__all__ = ["FitOptions", "Triplets", "Fit", "KINDS", "fit_metric", "refit", "agreement", "wilson_interval",
           "select_candidate"]
