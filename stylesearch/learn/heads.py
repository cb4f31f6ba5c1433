"""Attribute heads: a classifier of one metadata field, learned from the items that have a value.

A head is a multinomial logistic regression on standardised vectors (the caller passes them in the
learned metric's space when one exists). Its regularisation C is chosen by stratified
cross-validation; its probabilities are calibrated by a temperature fitted on a held-out calibration
split. The labelled items are split per class into train (60%), calibration (20%) and test (20%):
the report gives held-out accuracy with a 95% Wilson interval beside the majority-class baseline on
the same items, the expected calibration error (10 bins) before and after calibration, and a
confusion summary. The saved head is then refitted on train + test with the chosen C, and its
temperature fitted again on the calibration split (still held out from it).

Only fields of labels are learned: a field of numbers, one with fewer than two classes, or a class
with fewer than 5 examples is refused with a message naming what is missing. Predicting needs only
numpy (`Head.predict`); scikit-learn and scipy load only to fit. Saving and loading: `save_head`,
`load_head` (an .npz of arrays plus a JSON description, versioned like metrics).
"""

from __future__ import annotations

import hashlib
import zipfile
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ..errors import CatalogError, UserError
from ..store.files import atomic_path, atomic_write_json, read_json_or_none
from ..store.paths import DatasetPaths
from .fit import wilson_interval

MIN_PER_CLASS = 5  # one test, one calibration and three training examples at least
C_GRID = tuple(float(c) for c in np.logspace(-3, 3, 7))
ECE_BINS = 10


@dataclass(frozen=True)
class HeadOptions:
    seed: int = 0
    test_fraction: float = 0.2
    calibration_fraction: float = 0.2
    folds: int = 5
    cv_sample: int = 5000  # C is chosen by cross-validation on at most this many training items


@dataclass
class Head:
    """A fitted head: z = ((x - mean) / scale) @ coef.T + intercept, probabilities softmax(z / temperature)."""

    field: str
    classes: list[str]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray  # (classes, dim)
    intercept: np.ndarray  # (classes,)
    temperature: float = 1.0
    meta: dict = field(default_factory=dict)

    def probabilities(self, features: np.ndarray, calibrated: bool = True) -> np.ndarray:
        logits = ((features - self.mean) / self.scale) @ self.coef.T + self.intercept
        return softmax(logits / (self.temperature if calibrated else 1.0))

    def predict(self, features: np.ndarray) -> tuple[list[str], np.ndarray]:
        """(best class, its calibrated probability) per row."""
        if not len(features):
            return [], np.zeros(0)
        probs = self.probabilities(features)
        best = probs.argmax(axis=1)
        return [self.classes[b] for b in best], probs[np.arange(len(best)), best]

    def arrays(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "scale": self.scale, "coef": self.coef, "intercept": self.intercept,
                "temperature": np.array(self.temperature), "classes": np.array(self.classes, dtype=str)}

    @property
    def version(self) -> str:
        """A short hash of the parameters: changes whenever the head does."""
        digest = hashlib.sha256(self.field.encode())
        for name, array in sorted(self.arrays().items()):
            digest.update(name.encode() + np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()[:16]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by their item counts."""
    confidence, correct = np.asarray(confidence, float), np.asarray(correct, float)
    if not len(confidence):
        return float("nan")
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.sum() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total / len(confidence))


def check_labels(field_name: str, labels: list, numeric: int) -> None:
    """Refuse what a head cannot learn: numbers, fewer than two classes, a class with too few examples."""
    if numeric:
        raise UserError(f"Field {field_name!r} holds numbers ({numeric} items); a learned head predicts "
                        "classes (labels), not numbers.",
                        "Learn a field of labels, or store these values as text to treat each as a class.")
    counts = Counter(labels)
    if len(counts) < 2:
        only = f" (only {next(iter(counts))!r})" if counts else ""
        raise UserError(f"Field {field_name!r} has {len(counts)} class{'es' if len(counts) != 1 else ''} among "
                        f"labelled items{only}; a head needs at least two to choose between.",
                        "Give some items another value of this field first.")
    few = sorted((c for c, n in counts.items() if n < MIN_PER_CLASS), key=lambda c: (counts[c], c))
    if few:
        listing = ", ".join(f"{c!r} ({counts[c]})" for c in few[:10]) + (" ..." if len(few) > 10 else "")
        raise UserError(f"Field {field_name!r}: class{'es' if len(few) > 1 else ''} {listing} "
                        f"{'have' if len(few) > 1 else 'has'} fewer than {MIN_PER_CLASS} labelled examples.",
                        f"Label at least {MIN_PER_CLASS} items of each class, or merge or remove the rare ones.")


def split_labelled(y: np.ndarray, options: HeadOptions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices (train, calibration, test), stratified per class, deterministic for the seed."""
    rng = np.random.default_rng(options.seed)
    train, calib, test = [], [], []
    for c in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == c))
        n_test = max(1, int(round(len(rows) * options.test_fraction)))
        n_cal = max(1, int(round(len(rows) * options.calibration_fraction)))
        test += rows[:n_test].tolist()
        calib += rows[n_test:n_test + n_cal].tolist()
        train += rows[n_test + n_cal:].tolist()
    return np.sort(train), np.sort(calib), np.sort(test)


def _stratified_sample(y: np.ndarray, limit: int, floor: int, seed: int) -> np.ndarray:
    """At most about `limit` rows in the classes' proportions, at least `floor` of each class (or all it has)."""
    if len(y) <= limit:
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        n = min(len(rows), max(floor, int(round(limit * len(rows) / len(y)))))
        keep += rng.choice(rows, n, replace=False).tolist()
    return np.sort(keep)


def _standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    return mean.astype(np.float32), np.where(scale > 1e-8, scale, 1.0).astype(np.float32)


def choose_c(x: np.ndarray, y: np.ndarray, options: HeadOptions) -> tuple[float, float]:
    """(C, its mean held-out log loss): the best of C_GRID by stratified k-fold on (a sample of) the rows."""
    from sklearn.metrics import log_loss
    from sklearn.model_selection import StratifiedKFold

    n_classes = int(y.max()) + 1
    folds = max(2, min(options.folds, int(np.bincount(y).min())))
    rows = _stratified_sample(y, options.cv_sample, folds, options.seed)
    splits = list(StratifiedKFold(folds, shuffle=True, random_state=options.seed).split(x[rows], y[rows]))
    xs, ys = x[rows], y[rows]
    losses = np.zeros((len(splits), len(C_GRID)))
    for f, (tr, va) in enumerate(splits):
        model = None
        for k, c in enumerate(C_GRID):  # ascending C, each fit starting from the previous one's solution
            model = _logistic(xs[tr], ys[tr], c, model)
            losses[f, k] = log_loss(ys[va], model.predict_proba(xs[va]), labels=list(range(n_classes)))
    mean = losses.mean(axis=0)
    best = int(np.argmin(mean))
    return C_GRID[best], float(mean[best])


def _logistic(x: np.ndarray, y: np.ndarray, c: float, previous=None):
    """A fitted LogisticRegression (lbfgs, multinomial); `previous`: a fitted one to warm-start from."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    model = previous if previous is not None else LogisticRegression(max_iter=300, warm_start=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.set_params(C=c).fit(x, y)


def fit_logistic(x: np.ndarray, y: np.ndarray, n_classes: int, c: float) -> tuple[np.ndarray, np.ndarray]:
    """(coef (classes, dim), intercept (classes,)) of a multinomial logistic regression; a two-class fit
    is written as two rows whose softmax is its sigmoid."""
    model = _logistic(x, y, c)
    coef, intercept = model.coef_.astype(np.float32), model.intercept_.astype(np.float32)
    if n_classes == 2 and coef.shape[0] == 1:
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    return coef, intercept


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature T minimising the negative log-likelihood of softmax(logits / T) (0.05 <= T <= 20)."""
    from scipy.optimize import minimize_scalar

    def nll(log_t: float) -> float:
        z = logits / np.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y]))

    return float(np.exp(minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded").x))


def _fit(x: np.ndarray, y: np.ndarray, rows: np.ndarray, calib: np.ndarray, classes: list[str], c: float,
         field_name: str) -> Head:
    mean, scale = _standardiser(x[rows])
    coef, intercept = fit_logistic((x[rows] - mean) / scale, y[rows], len(classes), c)
    head = Head(field_name, classes, mean, scale, coef, intercept)
    head.temperature = fit_temperature(np.log(np.maximum(head.probabilities(x[calib], calibrated=False), 1e-12)),
                                       y[calib])
    return head


def confusion_summary(truth: np.ndarray, predicted: np.ndarray, classes: list[str], top: int = 5) -> dict:
    """Per class: held-out items and recall; the most frequent confusions as [true, predicted, count]."""
    per_class = {}
    for k, name in enumerate(classes):
        mine = truth == k
        per_class[name] = {"n": int(mine.sum()),
                           "recall": round(float((predicted[mine] == k).mean()), 4) if mine.any() else None}
    pairs = Counter((classes[t], classes[p]) for t, p in zip(truth, predicted) if t != p)
    return {"per_class": per_class, "top_confusions": [[t, p, n] for (t, p), n in pairs.most_common(top)]}


def fit_head(x: np.ndarray, labels: list[str], field_name: str,
             options: HeadOptions = HeadOptions()) -> tuple[Head, dict]:
    """Held-out evaluation, then the saved head (see the module's docstring). Returns (head, report)."""
    from threadpoolctl import threadpool_limits

    # one BLAS thread: lbfgs on these matrices gains little from more, and on a busy machine the default
    # threads made a 20,000 x 512 fit ten times slower (benchmarks/attribute_heads.py)
    with threadpool_limits(1):
        return _fit_head(x, labels, field_name, options)


def _fit_head(x: np.ndarray, labels: list[str], field_name: str, options: HeadOptions) -> tuple[Head, dict]:
    check_labels(field_name, labels, 0)
    classes = sorted(set(labels))
    y = np.array([classes.index(label) for label in labels])
    train, calib, test = split_labelled(y, options)
    mean, scale = _standardiser(x[train])
    c, cv_loss = choose_c((x[train] - mean) / scale, y[train], options)
    held = _fit(x, y, train, calib, classes, c, field_name)
    probs_raw = held.probabilities(x[test], calibrated=False)
    probs = held.probabilities(x[test])
    predicted = probs.argmax(axis=1)
    correct = predicted == y[test]
    accuracy = float(correct.mean())
    majority = int(np.bincount(y[train], minlength=len(classes)).argmax())
    baseline = float((y[test] == majority).mean())
    report = {
        "field": field_name, "labelled": len(labels),
        "classes": {k: int(n) for k, n in sorted(Counter(labels).items())},
        "train": len(train), "calibration": len(calib), "test": len(test), "C": c, "cv_log_loss": round(cv_loss, 4),
        "accuracy": round(accuracy, 4), "accuracy_ci": [round(v, 4) for v in wilson_interval(accuracy, len(test))],
        "majority_class": classes[majority], "majority_accuracy": round(baseline, 4),
        "majority_ci": [round(v, 4) for v in wilson_interval(baseline, len(test))],
        "ece": round(expected_calibration_error(probs.max(axis=1), correct), 4),
        "ece_uncalibrated": round(expected_calibration_error(probs_raw.max(axis=1),
                                                             probs_raw.argmax(axis=1) == y[test]), 4),
        "confusion": confusion_summary(y[test], predicted, classes),
    }
    final = _fit(x, y, np.union1d(train, test), calib, classes, c, field_name)
    report["temperature"] = round(final.temperature, 4)
    return final, report


# ---------------------------------------------------------------- files


def save_head(paths: DatasetPaths, model_key: str, head: Head) -> dict:
    """Parameters (one atomic .npz with the version), then the description; returns the description."""
    version = head.version
    with atomic_path(paths.head_arrays(model_key, head.field), suffix=".npz") as tmp:
        np.savez(tmp, version=np.array(version), **head.arrays())
    head.meta = {**head.meta, "field": head.field, "classes": head.classes, "version": version}
    atomic_write_json(paths.head_meta(model_key, head.field), head.meta)
    return head.meta


def load_head(paths: DatasetPaths, model_key: str, field_name: str) -> Head | None:
    """The saved head of a field (None when there is none); a damaged file is a CatalogError naming it."""
    file = paths.head_arrays(model_key, field_name)
    if not file.exists():
        return None
    meta = read_json_or_none(paths.head_meta(model_key, field_name))
    try:
        with np.load(file) as data:
            head = Head(field_name, [str(c) for c in data["classes"]], data["mean"], data["scale"], data["coef"],
                        data["intercept"], float(data["temperature"]), meta if isinstance(meta, dict) else {})
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise CatalogError(f"The attribute head in {file} cannot be read ({exc}).",
                           "Learn the field again with a refit, or delete that file.", dataset=paths.name) from None
    if not all(np.isfinite(a).all() for a in (head.mean, head.scale, head.coef, head.intercept)):
        raise CatalogError(f"The attribute head in {file} has parameters that are NaN or infinite.",
                           "Learn the field again with a refit, or delete that file.", dataset=paths.name)
    return head
