"""Training a learned metric from a dataset's judgments log: data preparation, a held-out
estimate of agreement, the fit (fit.py), and saving.

A random share of the decisive (A/B) judgments is held out; the metric fitted on the rest
(regularisation chosen by cross-validation within it) is scored on them, with a 95% interval.
The saved metric is then fitted on all judgments with the same kind and regularisation.
"too similar" / "anchor too different" answers are equality terms in every fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import NotReady, UserError
from ..store.catalog import open_catalog
from ..store.files import now_iso
from ..store.paths import DatasetPaths
from .fit import KINDS, FitOptions, Triplets, agreement, fit_metric, refit, wilson_interval
from .judgments import DECISIVE, EQUALITY, read_log
from .metric import IdentityMetric, save_metric


@dataclass(frozen=True)
class TrainOptions:
    kind: str = "diagonal"  # diagonal, lowrank or auto
    rank: int = 64  # lowrank: rows of the projection
    seed: int = 0
    val_fraction: float = 0.2
    folds: int = 5
    equality_weight: float = 1.0

    def fit_options(self) -> FitOptions:
        return FitOptions(kind=self.kind, rank=self.rank, seed=self.seed, folds=self.folds,
                          equality_weight=self.equality_weight)


def judgment_triplets(judgments: list[dict], row_of: dict) -> Triplets:
    """Row triplets of the judgments whose three items have vectors: decisive rows as
    (anchor, chosen, other), equality rows as (anchor, left, right)."""
    decisive, equal = [], []
    for j in judgments:
        rows = [row_of.get(j[k]) for k in ("anchor", "left", "right")]
        if None in rows:
            continue
        a, l, r = rows
        if j["choice"] in DECISIVE:
            decisive.append((a, l, r) if j["choice"] == "left" else (a, r, l))
        elif j["choice"] in EQUALITY:
            equal.append((a, l, r))
    return Triplets(np.array(decisive, dtype=np.int64), np.array(equal, dtype=np.int64))


def _check(options: TrainOptions) -> None:
    if options.kind not in KINDS:
        raise UserError(f"Unknown metric kind {options.kind!r}.", f"Choose one of: {', '.join(KINDS)}.")
    if options.rank < 1:
        raise UserError("The rank of a low-rank metric must be at least 1.")
    if not 0.0 < options.val_fraction < 1.0:
        raise UserError("The held-out share of judgments must be between 0 and 1.")


def _split(n: int, options: TrainOptions) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(options.seed).permutation(n)
    n_val = min(n - 4, max(1, int(round(n * options.val_fraction))))
    return order[n_val:], order[:n_val]


def train_arrays(vectors: np.ndarray, trips: Triplets, options: TrainOptions = TrainOptions()):
    """Held-out evaluation, then the fit on all judgments. Returns (fit, report dict)."""
    _check(options)
    train, val = _split(len(trips.decisive), options)
    fit_opts = options.fit_options()
    held = fit_metric(vectors, Triplets(trips.decisive[train], trips.equal), fit_opts)
    after = agreement(held.metric, vectors, trips.decisive[val])
    final = refit(vectors, trips, held.kind, held.candidate, fit_opts)
    report = {
        "kind": final.kind, "regularisation": final.regularisation,
        "train_triplets": len(train), "val_triplets": len(val), "equality_triplets": len(trips.equal),
        "judgments_used": len(trips.decisive) + len(trips.equal),
        "agreement_before": agreement(IdentityMetric(), vectors, trips.decisive[val]),
        "agreement_after": after, "agreement_ci": list(wilson_interval(after, len(val))),
        "cv_agreement": held.cv_agreement,
        "train_agreement_after": agreement(held.metric, vectors, trips.decisive[train]),
        "logit_scale": final.logit_scale,
    }
    return final, report


def beats_raw(report: dict) -> bool:
    """Whether the held-out 95% interval lies above the raw embedding's agreement."""
    return bool(report["agreement_ci"][0] > report["agreement_before"])


def judgments_to_beat(report: dict, val_fraction: float) -> int | None:
    """About how many more judgments would make the measured gain significant (None: no gain to confirm)."""
    p, gain = report["agreement_after"], report["agreement_after"] - report["agreement_before"]
    if not gain > 0:
        return None
    held_out = math.ceil(1.96 ** 2 * max(p * (1 - p), 0.01) / gain ** 2)
    have = report["train_triplets"] + report["val_triplets"]
    return max(1, math.ceil(held_out / val_fraction) - have)


def verdict(meta: dict) -> str:
    """The training result in plain words (for any frontend)."""
    lo, hi = meta["agreement_ci"]
    words = (f"The learned metric agrees with {meta['agreement_after']:.0%} of your {meta['val_triplets']} held-out "
             f"judgments (95% interval {lo:.0%}-{hi:.0%}); the raw embedding: {meta['agreement_before']:.0%}.")
    if beats_raw(meta):
        return words + " It was saved."
    more = meta.get("more_judgments")
    need = (f"judge ~{more} more to tell" if more else
            "judging more, or more consistently, may change that")
    kept = "it was saved anyway, as asked." if meta["saved"] else "it was not saved (the previous metric stays)."
    return f"{words} That is no reliable gain over the raw embedding yet ({need}); {kept}"


def train_metric(paths: DatasetPaths, model_key: str, opt: TrainOptions = TrainOptions(), force: bool = False) -> dict:
    """Learn a metric from the dataset's judgments log and save it atomically; returns metadata.

    A metric whose held-out agreement does not reliably beat the raw embedding (beats_raw) is not
    saved unless `force`: the metadata then has `saved` False, and the previous metric stays."""
    _check(opt)
    log = read_log(paths.triplets)
    with open_catalog(paths, readonly=True) as catalog:
        ids, vectors = catalog.vectors.load(model_key)
        path_of = {it.id: it.path for it in catalog.items("ok")}
    row_of = {path_of[int(i)]: k for k, i in enumerate(ids) if int(i) in path_of}
    trips = judgment_triplets(log.judgments, row_of)
    if len(trips.decisive) < 5:
        raise NotReady(f"Only {len(trips.decisive)} usable A/B judgments for {model_key}; at least 5 are needed.",
                       "Judge more triplets first.", dataset=paths.name, step="label")
    fit, report = train_arrays(vectors, trips, opt)
    usable = sum(j["choice"] in DECISIVE + EQUALITY for j in log.judgments)
    fit.metric.meta = {
        "model_key": model_key, "dim": int(vectors.shape[1]), **report,
        "rank": int(fit.metric.projection.shape[0]) if fit.kind == "lowrank" else None,
        "skipped_unknown": sum(j["choice"] == "unknown" for j in log.judgments),
        "skipped_missing": usable - report["judgments_used"],
        "malformed_lines": log.malformed, "undone": log.undone,
        "seed": opt.seed, "val_fraction": opt.val_fraction, "trained_at": now_iso(),
        "more_judgments": judgments_to_beat(report, opt.val_fraction),
    }
    fit.metric.meta["saved"] = force or beats_raw(report)
    if not fit.metric.meta["saved"]:
        return fit.metric.meta
    return save_metric(paths, model_key, fit.metric)
