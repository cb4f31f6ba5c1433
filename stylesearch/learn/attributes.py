"""Learned attributes of a dataset: heads fitted on the items' own metadata (heads.py), saved per model,
and every embedded item's FIELD_pred / FIELD_prob.

FIELD_pred is the item's own value of FIELD where it has one (FIELD_prob 1.0), else the head's
prediction with its calibrated probability; FIELD itself is never written, and fields named
FIELD_pred / FIELD_prob that no head wrote are never overwritten (learning is refused instead). The
head sees the vectors in the learned metric's space when a metric exists and remembers which space;
after the metric changes, `learn_fields` refits it and `apply_heads` leaves it alone until then.
`apply_heads` is incremental: it predicts only items without FIELD_pred (new ones) and copies
given values, without refitting.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter

import numpy as np

from ..errors import NotReady, StyleSearchError, UserError
from ..store.catalog import open_catalog
from ..store.files import now_iso, writer_lock
from ..store.meta_values import meta_value
from ..store.paths import DatasetPaths
from .heads import Head, HeadOptions, check_labels, fit_head, load_head, save_head
from .metric import load_metric

PRED, PROB = "_pred", "_prob"


def label_of(value) -> tuple[str | None, str]:
    """(the class a metadata value names, or None; its kind: label, number, other or missing)."""
    if value is None:
        return None, "missing"
    if isinstance(value, bool):
        return ("true" if value else "false"), "label"
    if isinstance(value, (int, float)):
        return None, "number"
    if isinstance(value, str) and value.strip():
        return value.strip(), "label"
    return None, "other"


def _features(paths: DatasetPaths, model_key: str, vectors: np.ndarray) -> tuple[np.ndarray, str]:
    """Vectors in the learned metric's space (raw without one) and that space's name."""
    metric = load_metric(paths, model_key, dim=vectors.shape[1])
    return metric.to_euclidean(vectors), metric.version or "raw"


def learn_fields(paths: DatasetPaths, model_key: str, fields: list[str], refit: bool = False,
                 options: HeadOptions = HeadOptions()) -> dict[str, dict]:
    """Fit (or with a saved head of the same space, reuse; `refit`: fit anew) a head per field, save it,
    and write every embedded item's predictions. Returns a report per field."""
    if not fields:
        raise UserError("No fields to learn.", "Name at least one metadata field.")
    for name in fields:
        paths.head_arrays(model_key, name)  # refuses names that are no field names before any work
    with writer_lock(paths), open_catalog(paths) as catalog:
        return _learn(paths, catalog, model_key, list(dict.fromkeys(fields)), refit, options)


def _learn(paths, catalog, model_key: str, fields: list[str], refit: bool, options: HeadOptions) -> dict[str, dict]:
    ids, vectors = catalog.vectors.load(model_key)
    if not len(ids):
        raise NotReady(f"Dataset {paths.name!r} has no embedded items to learn from.", "Embed the dataset first.",
                       dataset=paths.name, step="embed")
    features, space = _features(paths, model_key, vectors)
    metas = catalog.metadata(ids)
    reports = {}
    for name in fields:
        head = None if refit else load_head(paths, model_key, name)
        fitted = head is None or head.meta.get("space") != space
        if fitted:
            _check_not_owned(paths, catalog, name)
            head = _fit_and_save(paths, model_key, name, ids, features, metas, space, options)
        written = _write(catalog, name, _desired(head, ids, features, metas), metas)
        reports[name] = {**head.meta.get("report", {}), "fitted": fitted, "version": head.version,
                         "space": space, "items": len(ids), "written": written}
    return reports


def _fit_and_save(paths, model_key, name, ids, features, metas, space, options) -> Head:
    kinds, rows, labels = Counter(), [], []
    for row, item_id in enumerate(ids):
        label, kind = label_of(meta_value(metas.get(int(item_id), {}), name))
        kinds[kind] += 1
        if label is not None:
            rows.append(row)
            labels.append(label)
    check_labels(name, labels, kinds["number"])
    start = time.perf_counter()
    head, report = fit_head(features[rows], labels, name, options)
    report.update(unusable=kinds["other"], fit_seconds=round(time.perf_counter() - start, 2))
    head.meta = {"model_key": model_key, "space": space, "report": report, "trained_at": now_iso(),
                 "seed": options.seed}
    save_head(paths, model_key, head)
    return head


def _check_not_owned(paths: DatasetPaths, catalog, name: str) -> None:
    """Refuse to write FIELD_pred / FIELD_prob over fields of those names that no head of this field wrote."""
    if any(paths.head_arrays(m["model_key"], name).exists() for m in catalog.vectors.models()):
        return
    known = catalog.metadata_fields()
    taken = [n for n in (name + PRED, name + PROB) if n in known]
    if taken:
        raise UserError(f"Items already have field {taken[0]!r}, which no learned head wrote; learning {name!r} "
                        "would overwrite it.", "Rename that field in your metadata, or learn another field.")


def _desired(head: Head, ids, features: np.ndarray, metas: dict) -> list[tuple[int, str, float]]:
    """(item, value, probability): the item's own value with 1.0 where it has one, else the prediction."""
    predicted, probs = head.predict(features)
    out = []
    for item_id, guess, prob in zip(ids, predicted, probs):
        given, _ = label_of(meta_value(metas.get(int(item_id), {}), head.field))
        out.append((int(item_id), given, 1.0) if given is not None else (int(item_id), guess, round(float(prob), 4)))
    return out


def _write(catalog, name: str, rows: list[tuple[int, str, float]], metas: dict) -> int:
    """Write FIELD_pred / FIELD_prob where they differ from what the item has; returns how many changed."""
    changed = [(i, v, p) for i, v, p in rows
               if (metas.get(i, {}).get(name + PRED), metas.get(i, {}).get(name + PROB)) != (v, p)]
    with catalog.transaction():
        for item_id, value, prob in changed:
            catalog.set_metadata(item_id, {name + PRED: value, name + PROB: prob})
    return len(changed)


def apply_heads(paths: DatasetPaths, model_key: str, lock: bool = True) -> dict[str, dict]:
    """Predictions of every saved head for items that have none yet (and given values copied), without
    refitting; a head fitted in another metric space than the current one (the metric was trained since)
    is refitted on the current labels, or left `stale` with the reason when they no longer fit a head."""
    fields = paths.head_fields(model_key)
    if not fields:
        return {}
    out = {}
    with (writer_lock(paths) if lock else contextlib.nullcontext()), open_catalog(paths) as catalog:
        dim = (catalog.vectors.model(model_key) or {}).get("dim")
        if dim is None:
            return {}
        metric = load_metric(paths, model_key, dim=int(dim))
        for name in fields:
            head = load_head(paths, model_key, name)
            if head.meta.get("space") == (metric.version or "raw"):
                out[name] = {"written": _apply_one(catalog, model_key, head, metric), "stale": False}
                continue
            try:
                report = _learn(paths, catalog, model_key, [name], True, HeadOptions(seed=head.meta.get("seed", 0)))
                out[name] = {"written": report[name]["written"], "stale": False, "refitted": True}
            except StyleSearchError as exc:
                out[name] = {"written": 0, "stale": True, "reason": exc.message}
    return out


def _apply_one(catalog, model_key: str, head: Head, metric) -> int:
    name = head.field
    labelled = catalog.live_ids_where("id IN (SELECT item_id FROM item_meta WHERE key = ?)", [name])
    missing = catalog.live_ids_where("id NOT IN (SELECT item_id FROM item_meta WHERE key = ?)", [name + PRED])
    todo = sorted(labelled | missing)
    metas = catalog.metadata(todo)
    given = [(i, *_given(metas, i, name)) for i in todo]
    rows = [(i, v, 1.0) for i, v, kind in given if v is not None]
    ids, vectors = catalog.vectors.load_for_ids(model_key, [i for i, v, _ in given if v is None and i in missing])
    if len(ids):
        rows += _desired(head, ids, metric.to_euclidean(vectors), metas)
    return _write(catalog, name, rows, metas)


def _given(metas: dict, item_id: int, name: str) -> tuple[str | None, str]:
    return label_of(meta_value(metas.get(item_id, {}), name))

