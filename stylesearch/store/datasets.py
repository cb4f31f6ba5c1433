"""Dataset-level views: listing datasets and describing one (paths, models, index, labels, weights)."""

from __future__ import annotations

import os
import sqlite3

from ..errors import StyleSearchError
from .catalog import open_catalog
from .files import read_json_or_none
from .paths import DatasetPaths, datasets_root, existing_dataset, list_dataset_names


def create_dataset(paths: DatasetPaths) -> None:
    """Create the folder layout and an empty catalog (idempotent)."""
    paths.images.mkdir(parents=True, exist_ok=True)
    open_catalog(paths, create=True).close()


def adoptable_images(paths: DatasetPaths) -> bool:
    """Whether a dataset without a catalog has an images/ folder with something in it, which embedding
    can adopt as a new dataset."""
    if paths.catalog.exists() or not paths.images.is_dir():
        return False
    try:
        return any(True for _ in paths.images.iterdir())
    except OSError:
        return False


def list_datasets(root: str | os.PathLike | None = None) -> list[dict]:
    """Name, path and item counts of every dataset under the root.

    A dataset whose catalog cannot be read is listed with `error` set instead of failing the list.
    """
    out = []
    for name in list_dataset_names(root):
        paths = existing_dataset(name, root)
        row = {"name": name, "path": str(paths.home), "items": None, "deleted": None, "corrupt": None,
               "models": [], "error": None}
        try:
            with open_catalog(paths, readonly=True) as cat:
                counts = cat.status_counts()
                models = cat.vectors.models()
        except (StyleSearchError, sqlite3.DatabaseError) as exc:
            row["error"] = getattr(exc, "message", None) or f"{paths.catalog}: {exc}"
        else:
            row.update(items=counts.get("ok", 0), deleted=counts.get("deleted", 0), corrupt=counts.get("corrupt", 0),
                       models=[m["model_key"] for m in models])
        out.append(row)
    return out


def list_models(names: list[str], root: str | os.PathLike | None = None) -> list[dict]:
    """The models the named datasets are embedded with: key, name, weights, dimension and the datasets
    holding vectors of each (unreadable datasets are left out; see list_datasets)."""
    models: dict[str, dict] = {}
    for name in names:
        try:
            with open_catalog(existing_dataset(name, root), readonly=True) as cat:
                rows = cat.vectors.models()
        except (StyleSearchError, sqlite3.DatabaseError):
            continue
        for m in rows:
            entry = models.setdefault(m["model_key"], {"model_key": m["model_key"], "model": m["model_name"],
                                                       "pretrained": m["pretrained"], "dim": m["dim"], "datasets": []})
            entry["datasets"].append(name)
    return sorted(models.values(), key=lambda m: m["model_key"])


def count_lines(path) -> int:
    try:
        with open(path, "rb") as fh:
            return sum(1 for line in fh if line.strip())
    except FileNotFoundError:
        return 0


def describe(name: str, root: str | os.PathLike | None = None) -> dict:
    """Everything worth knowing about one dataset, as plain data."""
    paths = existing_dataset(name, root)
    with open_catalog(paths, readonly=True) as cat:
        counts = cat.status_counts()
        models = cat.vectors.models(with_counts=True)
        downloads = cat.download_counts()
        metadata_fields = cat.metadata_fields()
    for model in models:
        key = model["model_key"]
        model["index"] = read_json_or_none(paths.index_sidecar(key))  # None: missing or damaged
        model["metric"] = read_json_or_none(paths.metric_meta(key))
        model["heads"] = {f: read_json_or_none(paths.head_meta(key, f)) for f in paths.head_fields(key)}
    return {
        "name": name,
        "root": str(datasets_root(root)),
        "paths": {
            "home": str(paths.home),
            "catalog": str(paths.catalog),
            "images": str(paths.images),
            "thumbs": str(paths.thumbs),
            "atlas": str(paths.atlas),
            "triplets": str(paths.triplets),
        },
        "items": {"ok": counts.get("ok", 0), "deleted": counts.get("deleted", 0),
                  "corrupt": counts.get("corrupt", 0)},
        "downloads": downloads,
        "models": models,
        "labels": {"judgments": count_lines(paths.triplets)},
        "metadata": metadata_fields,
        "thumbnails": read_json_or_none(paths.thumbs_params),
        "atlas": paths.atlas_page_names(read_json_or_none(paths.atlas_manifest) or {}) or None,
    }
