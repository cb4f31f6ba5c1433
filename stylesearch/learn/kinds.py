"""The logistic triplet models behind each learned metric kind (used by fit.py).

Each model precomputes its features for the decisive and equality triplets once; `fit` runs
L-BFGS-B on some of the decisive rows for one regularisation candidate (warm-started from a
neighbouring candidate during cross-validation), `logits` scores rows, `result` turns the
parameters into a Metric. Features are scaled so that candidates mean the same at any dimension.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from scipy.optimize import Bounds, minimize

from .metric import DiagonalMetric, LowRankMetric


@dataclass
class Fit:
    """A fitted metric and what is needed to reuse or explain it."""

    metric: object  # metric.Metric
    kind: str
    candidate: int
    regularisation: dict
    logit_scale: float  # P(x nearer) = sigmoid(logit_scale * (d2(a,y) - d2(a,x))) under `metric`
    cv_agreement: float | None = None
    norm: float = 1.0  # feature unit: weights in covariance units = weights * logit_scale * norm
    covariance_of: Callable[[], np.ndarray] | None = None
    _covariance: np.ndarray | None = field(default=None, repr=False)

    def covariance(self) -> np.ndarray | None:
        """Posterior covariance of the weights in feature units (diagonal kind; computed once)."""
        if self._covariance is None and self.covariance_of is not None:
            self._covariance = self.covariance_of()
        return self._covariance


def _softplus(z):
    return np.logaddexp(0.0, z)


def sigmoid(z):
    """The logistic function, computed without overflow."""
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def logistic_scale(g: np.ndarray, start: float = 0.0, cap: float = np.inf, iterations: int = 50,
                   tolerance: float = 1e-8) -> float:
    """Best s in [0, cap] for the logistic model P = sigmoid(s * g) of logits g: 1-D Newton on the log-loss
    (the one scale fit: a kind's logit scale, and the calibration of held-out logits in fit.py)."""
    s = start
    for _ in range(iterations):
        p = sigmoid(-s * g)
        grad, hess = -(g * p).sum(), (g * g * p * (1 - p)).sum() + 1e-12
        s_new = min(max(s - grad / hess, 0.0), cap)
        if abs(s_new - s) <= tolerance * max(s_new, 1e-12):
            return s_new
        s = s_new
    return s


def _scale(g: np.ndarray) -> float:
    """A kind's logit scale: logistic_scale capped where the logits are already decisive."""
    return logistic_scale(g, cap=100.0 / (np.abs(g).mean() + 1e-12))


def _loss_terms(z, ze, beta):
    """Loss and d loss / d logit for decisive logits z and equality logits ze."""
    loss = _softplus(-z).sum() + beta * 0.5 * (_softplus(-ze) + _softplus(ze)).sum()
    return loss, -sigmoid(-z), beta * (sigmoid(ze) - 0.5)


class Model:
    """Interface: candidates, default, fit, logits, result."""

    kind = ""
    candidates: list[tuple] = []
    default = 0

    def __init__(self, vectors: np.ndarray, trips, options):
        self.options = options
        self.beta = options.equality_weight
        self.dim = vectors.shape[1]

    def _minimize(self, objective, x0, bounds=None):
        res = minimize(objective, x0, jac=True, method="L-BFGS-B", bounds=bounds,
                       options={"maxiter": self.options.max_iter, "ftol": 1e-7})
        return res.x


@dataclass
class DiagonalParams:
    w: np.ndarray
    penalty: np.ndarray
    pull: float
    curvature: np.ndarray


class DiagonalModel(Model):
    """Non-negative weights w on squared differences; candidates (l1, pull, reweighted)."""

    kind = "diagonal"
    candidates = [(0.0, p, False) for p in (200.0, 60.0, 20.0, 6.0)] + \
                 [(l1, 0.01, True) for l1 in (1.0, 3.0, 10.0, 30.0)]
    default = 1

    def __init__(self, vectors, trips, options):
        super().__init__(vectors, trips, options)
        raw = self._features(vectors, trips.decisive)
        self.norm = float(np.abs(raw).mean()) or 1.0
        self.F = raw / self.norm
        self.Fe = self._features(vectors, trips.equal) / self.norm

    @staticmethod
    def _features(v, rows):
        """Per-dimension (a - y)^2 - (a - x)^2 for rows (a, x, y): positive where x is nearer."""
        a, x, y = (v[rows[:, i]].astype(np.float64) for i in range(3))
        return (a - y) ** 2 - (a - x) ** 2

    def _solve(self, F, w0, penalty, pull, centre):
        Fe, beta = self.Fe, self.beta

        def objective(w):
            loss, gz, ge = _loss_terms(F @ w, Fe @ w, beta)
            diff = w - centre
            return (loss + penalty @ w + 0.5 * pull * diff @ diff,
                    F.T @ gz + Fe.T @ ge + penalty + pull * diff)

        return self._minimize(objective, w0, Bounds(0.0, np.inf))

    def fit(self, rows, candidate, warm: DiagonalParams | None) -> DiagonalParams:
        l1, pull, reweight = candidate
        F = self.F[rows]
        centre = self.norm  # unit weights: the plain squared distance as the logit
        penalty = np.full(self.dim, l1)
        w = self._solve(F, warm.w if warm is not None else np.full(self.dim, centre), penalty, pull, centre)
        curvature = np.zeros(self.dim)
        for _ in range(2 if reweight else 0):
            eps = 0.1 * w[w > 0].mean() if (w > 0).any() else 1.0
            penalty = l1 * eps / (w + eps)
            curvature = l1 * eps / (w + eps) ** 2
            w = self._solve(F, w, penalty, pull, centre)
        return DiagonalParams(w, penalty, pull, curvature)

    def logits(self, params: DiagonalParams, rows) -> np.ndarray:
        return self.F[rows] @ params.w

    def covariance(self, params: DiagonalParams) -> np.ndarray:
        """Laplace approximation of the weights' posterior covariance (feature units)."""
        p = sigmoid(self.F @ params.w)
        pe = sigmoid(self.Fe @ params.w)
        h = (self.F * (p * (1 - p))[:, None]).T @ self.F
        h += self.beta * (self.Fe * (pe * (1 - pe))[:, None]).T @ self.Fe
        h[np.diag_indices_from(h)] += params.pull + params.curvature + 1e-9
        return np.linalg.inv(h)

    def result(self, params: DiagonalParams, chosen: int):
        mean = float(params.w.mean())
        weights = params.w / mean if mean > 0 else np.ones(self.dim)
        l1, pull, reweight = self.candidates[chosen]
        reg = {"family": "sparse" if l1 else "uniform", "l1": l1, "pull": pull, "reweighted": reweight,
               "active_dims": int((params.w > 0).sum())}
        return Fit(DiagonalMetric(weights), self.kind, chosen, reg, max(mean, 0.0) / self.norm,
                   norm=self.norm, covariance_of=functools.partial(self.covariance, params))


class LowRankModel(Model):
    """A projection P (rank x dim) on the difference vectors; candidates: pull toward the start."""

    kind = "lowrank"
    candidates = [(p,) for p in (10.0, 1.0, 0.1)]
    default = 1

    def __init__(self, vectors, trips, options):
        super().__init__(vectors, trips, options)
        self.rank = min(int(options.rank), self.dim)
        U, V = self._diffs(vectors, trips.decisive)
        self.norm = float(np.abs(U * U - V * V).mean()) or 1.0
        root = np.sqrt(self.norm)
        self.U, self.V = U / root, V / root
        self.Ue, self.Ve = (d / root for d in self._diffs(vectors, trips.equal))
        self.basis = self._basis(vectors, options.seed)

    @staticmethod
    def _diffs(v, rows):
        """(a - y, a - x) for rows (a, x, y)."""
        a, x, y = (v[rows[:, i]].astype(np.float64) for i in range(3))
        return a - y, a - x

    def _basis(self, v, seed):
        """Top principal directions of the vectors (the identity when the rank is full)."""
        if self.rank >= self.dim:
            return np.eye(self.dim)
        rows = np.sort(np.random.default_rng(seed).permutation(len(v))[:5000])
        sample = v[rows].astype(np.float64)
        sample -= sample.mean(axis=0)
        return np.linalg.svd(sample, full_matrices=False)[2][: self.rank]

    def _z(self, P, U, V):
        pu, pv = U @ P.T, V @ P.T
        return (pu * pu).sum(1) - (pv * pv).sum(1)

    def fit(self, rows, candidate, warm):
        (pull,) = candidate
        n, m, beta = len(rows), len(self.Ue), self.beta
        # One float32 matrix of all difference vectors: a product with it is the costly step.
        stack = np.concatenate([self.U[rows], self.V[rows], self.Ue, self.Ve]).astype(np.float32)
        start = np.sqrt(_scale(self._z(self.basis, self.U[rows], self.V[rows]))) * self.basis
        shape = start.shape

        def objective(flat):
            P = flat.reshape(shape)
            proj = stack @ P.T.astype(np.float32)
            sq = np.einsum("ij,ij->i", proj, proj, dtype=np.float64)
            loss, gz, ge = _loss_terms(sq[:n] - sq[n:2 * n], sq[2 * n:2 * n + m] - sq[2 * n + m:], beta)
            coef = np.concatenate([gz, -gz, ge, -ge]).astype(np.float32)
            grad = 2.0 * ((coef[:, None] * proj).T @ stack).astype(np.float64)
            diff = P - start
            return loss + 0.5 * pull * (diff * diff).sum(), (grad + pull * diff).ravel()

        x0 = warm if warm is not None else start
        return self._minimize(objective, x0.ravel()).reshape(shape)

    def logits(self, P, rows) -> np.ndarray:
        return self._z(P, self.U[rows], self.V[rows])

    def result(self, P, chosen: int):
        trace = float((P * P).sum())
        scale = np.sqrt(self.dim / trace) if trace > 0 else 1.0
        reg = {"family": "lowrank", "pull": self.candidates[chosen][0], "rank": self.rank}
        return Fit(LowRankMetric(P * scale), self.kind, chosen, reg, trace / self.dim / self.norm, norm=self.norm)


MODELS = {"diagonal": DiagonalModel, "lowrank": LowRankModel}
