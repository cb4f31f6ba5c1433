"""Fitting learned metrics from the judgments log: data preparation, training, validation.

Today's kind is the diagonal metric (see metric.DiagonalMetric): a triplet margin loss on
decisive judgments; "too similar" and "anchor too different" skips add equality terms pulling
d(a,x) and d(a,y) together; a penalty keeps the weights near uniform. Weights are
non-negative (softplus) and normalised to mean 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .catalog import open_catalog
from .errors import NotReady
from .judgments import DECISIVE, EQUALITY, read_log
from .metric import DiagonalMetric, save_metric
from .storage import DatasetPaths, now_iso


@dataclass(frozen=True)
class TrainOptions:
    epochs: int = 60
    margin: float = 0.05
    lr: float = 0.05
    seed: int = 0
    val_fraction: float = 0.2
    equality_weight: float = 1.0
    regularization: float = 0.01
    batch_size: int = 512


@dataclass
class TripletArrays:
    """Squared differences (a-x)^2, (a-y)^2 per triplet; for decisive ones x is the chosen option."""

    near: np.ndarray
    far: np.ndarray

    def __len__(self) -> int:
        return len(self.near)

    def subset(self, idx) -> "TripletArrays":
        return TripletArrays(self.near[idx], self.far[idx])


def _sq_diffs(vec: dict, rows: list[tuple[str, str, str]]) -> TripletArrays:
    dim = len(next(iter(vec.values())))
    near = np.array([(vec[a] - vec[x]) ** 2 for a, x, _ in rows], dtype=np.float64).reshape(-1, dim)
    far = np.array([(vec[a] - vec[y]) ** 2 for a, _, y in rows], dtype=np.float64).reshape(-1, dim)
    return TripletArrays(near, far)


def normalise(s: np.ndarray) -> np.ndarray:
    return s * (len(s) / s.sum())


def _softplus(x):
    return np.logaddexp(0.0, x)


def agreement(data: TripletArrays, weights: np.ndarray) -> float:
    """Fraction of decisive triplets where the chosen option is the nearer one."""
    if not len(data):
        return float("nan")
    return float(np.mean(data.near @ weights < data.far @ weights))


def _gradient(w: np.ndarray, dec: TripletArrays, eq: TripletArrays, opt: TrainOptions) -> np.ndarray:
    eps = 1e-9
    grad = 2.0 * opt.regularization * (w - 1.0) / len(w)
    if len(dec):
        dn, df = np.sqrt(dec.near @ w + eps), np.sqrt(dec.far @ w + eps)
        active = (opt.margin + dn - df) > 0
        if active.any():
            grad += ((dec.near[active] / (2 * dn[active, None])) - (dec.far[active] / (2 * df[active, None]))).sum(0) / len(dec)
    if len(eq):
        dl, dr = np.sqrt(eq.near @ w + eps), np.sqrt(eq.far @ w + eps)
        coef = 2.0 * (dl - dr) * opt.equality_weight / len(eq)
        grad += (coef[:, None] * (eq.near / (2 * dl[:, None]) - eq.far / (2 * dr[:, None]))).sum(0)
    return grad


def fit_weights(dec: TripletArrays, eq: TripletArrays, dim: int, opt: TrainOptions) -> np.ndarray:
    """Adam on theta, with w = normalise(softplus(theta)); returns the mean-1 weights."""
    rng = np.random.default_rng(opt.seed)
    theta = np.zeros(dim)
    m, v = np.zeros(dim), np.zeros(dim)
    step = 0
    n = max(len(dec), len(eq), 1)
    for _ in range(opt.epochs):
        order_d, order_e = rng.permutation(len(dec)), rng.permutation(len(eq))
        for start in range(0, n, opt.batch_size):
            s = _softplus(theta)
            w = normalise(s)
            batch_d = dec.subset(order_d[start:start + opt.batch_size]) if len(dec) else dec
            batch_e = eq.subset(order_e[start % max(1, len(eq)):][: opt.batch_size]) if len(eq) else eq
            g_w = _gradient(w, batch_d, batch_e, opt)
            total = s.sum()
            g_s = dim / total * g_w - dim / total**2 * (g_w @ s)
            g = g_s / (1.0 + np.exp(-theta))
            step += 1
            m = 0.9 * m + 0.1 * g
            v = 0.999 * v + 0.001 * g * g
            theta -= opt.lr * (m / (1 - 0.9**step)) / (np.sqrt(v / (1 - 0.999**step)) + 1e-8)
    return normalise(_softplus(theta)).astype(np.float32)


def _rows(judgments: list[dict], known: dict) -> tuple[list, list]:
    decisive, equal = [], []
    for j in judgments:
        a, l, r = j["anchor"], j["left"], j["right"]
        if not all(p in known for p in (a, l, r)):
            continue
        if j["choice"] in DECISIVE:
            decisive.append((a, l, r) if j["choice"] == "left" else (a, r, l))
        elif j["choice"] in EQUALITY:
            equal.append((a, l, r))
    return decisive, equal


def train_metric(paths: DatasetPaths, model_key: str, opt: TrainOptions = TrainOptions()) -> dict:
    """Learn weights from the dataset's judgments log and save them atomically; returns metadata."""
    log = read_log(paths.triplets)
    with open_catalog(paths, readonly=True) as catalog:
        ids, vectors = catalog.load_vectors(model_key)
        path_of = {it.id: it.path for it in catalog.items("ok")}
    vec = {path_of[int(i)]: vectors[k].astype(np.float64) for k, i in enumerate(ids)}
    decisive, equal = _rows(log.judgments, vec)
    if len(decisive) < 5:
        raise NotReady(f"Only {len(decisive)} usable A/B judgments for {model_key}; at least 5 are needed.",
                       "Judge more triplets first.", dataset=paths.name, step="label")
    rng = np.random.default_rng(opt.seed)
    order = rng.permutation(len(decisive))
    n_val = max(1, int(round(len(decisive) * opt.val_fraction)))
    val = _sq_diffs(vec, [decisive[i] for i in order[:n_val]])
    train = _sq_diffs(vec, [decisive[i] for i in order[n_val:]])
    eq = _sq_diffs(vec, equal) if equal else TripletArrays(np.zeros((0, vectors.shape[1])), np.zeros((0, vectors.shape[1])))
    weights = fit_weights(train, eq, vectors.shape[1], opt)
    meta = {
        "model_key": model_key, "dim": int(vectors.shape[1]),
        "train_triplets": len(train), "val_triplets": len(val), "equality_triplets": len(eq),
        "skipped_unknown": sum(j["choice"] == "unknown" for j in log.judgments),
        "malformed_lines": log.malformed, "undone": log.undone,
        "agreement_before": agreement(val, np.ones(vectors.shape[1])),
        "agreement_after": agreement(val, weights.astype(np.float64)),
        "train_agreement_after": agreement(train, weights.astype(np.float64)),
        "epochs": opt.epochs, "margin": opt.margin, "lr": opt.lr, "seed": opt.seed,
        "trained_at": now_iso(),
    }
    return save_metric(paths, model_key, DiagonalMetric(weights, meta))
