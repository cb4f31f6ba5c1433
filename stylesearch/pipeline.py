"""Multi-step jobs: reindex (lock + embed + index, for cron) and the offline demo."""

from __future__ import annotations

from .embed.models import DEFAULT_MODEL, DEFAULT_PRETRAINED, RANDOM, ModelSpec, weights_cached
from .embed.run import EmbedOptions, embed_dataset
from .index.build import build_index
from .index.load import index_meta
from .ingest.samples import write_samples
from .ingest.transform import TransformOptions, transform_dataset
from .learn.attributes import apply_heads
from .learn.train import TrainOptions, train_metric
from .maps.atlas import AtlasOptions, build_atlas
from .maps.projection import UmapOptions, project_dataset, render_map
from .progress import Progress, step
from .query.search import SearchRequest, Term, search
from .store.datasets import create_dataset
from .store.files import writer_lock
from .store.paths import DatasetPaths

DEMO_FALLBACK = ModelSpec("stylesearch-tiny", RANDOM)


def reindex(paths: DatasetPaths, spec: ModelSpec, kind: str | None = None, options: EmbedOptions = EmbedOptions(),
            wait: float = 0.0, progress: Progress | None = None) -> dict:
    """Embed new content and update the index under one writer lock; returns a summary.

    Without `kind`, an existing index keeps the kind it was built with (else auto, as when its files
    are damaged: the build replaces them). Raises DatasetBusy at once (or after `wait` seconds) when
    another writer holds the lock.
    """
    with writer_lock(paths, wait):
        embedded = embed_dataset(paths, spec, options=options, progress=progress, lock=False)
        kind = kind or (index_meta(paths, spec.key) or {}).get("kind", "auto")
        meta = build_index(paths, spec.key, kind, progress=progress, lock=False)
        predicted = apply_heads(paths, spec.key, lock=False)
    return {**embedded.as_dict(), "index_kind": meta["kind"], "index_count": meta["count"],
            "index_mode": meta["mode"], **_predictions(predicted), "warnings": embedded.warnings}


def predict_attributes(paths: DatasetPaths, model_key: str) -> dict:
    """After embedding: the saved attribute heads' predictions for new items (learn.attributes.apply_heads),
    under the writer lock; {} when the model has no heads."""
    if not paths.head_fields(model_key):
        return {}
    return _predictions(apply_heads(paths, model_key))


def _predictions(applied: dict) -> dict:
    """Summary fields of apply_heads: items given predictions per field, and heads left stale by a new metric."""
    if not applied:
        return {}
    return {"predicted": {f: r["written"] for f, r in applied.items()},
            "stale_heads": [f for f, r in applied.items() if r["stale"]]}


def mend_emptied_catalog(paths: DatasetPaths, wait: float = 0.0) -> bool:
    """Give a catalog emptied to 0 bytes its tables again, as a new one, so embedding rebuilds it from the
    images (readers refuse it: see catalog.open_catalog); True when it was empty."""
    try:
        if paths.catalog.stat().st_size:
            return False
    except OSError:
        return False
    with writer_lock(paths, wait):
        create_dataset(paths)
    return True


def train_and_reindex(paths: DatasetPaths, model_key: str, options: TrainOptions = TrainOptions(),
                      progress: Progress | None = None, force: bool = False) -> dict:
    """Train the metric, then rebuild the index in its space when there is one and the metric was saved
    (see learn.train.train_metric); returns the training report with the index's metadata under `index`."""
    with writer_lock(paths):
        with step(progress, "fitting the metric (cross-validated)"):
            report = train_metric(paths, model_key, options, force)
        if report["saved"] and paths.index_sidecar(model_key).exists():  # a damaged one is rebuilt too (auto kind)
            kind = (index_meta(paths, model_key) or {}).get("kind", "auto")
            report["index"] = build_index(paths, model_key, kind, progress=progress, lock=False)
    return report


def demo_model() -> tuple[ModelSpec, bool]:
    """The default CLIP model if its weights are cached, else a small random-init model."""
    default = ModelSpec(DEFAULT_MODEL, DEFAULT_PRETRAINED)
    return (default, True) if weights_cached(default) else (DEMO_FALLBACK, False)


def run_demo(paths: DatasetPaths, count: int = 90, spec: ModelSpec | None = None,
             progress: Progress | None = None, map_png: bool = True) -> dict:
    """Run every step on locally generated images; returns what each step produced."""
    pretrained = True
    if spec is None:
        spec, pretrained = demo_model()
    create_dataset(paths)
    write_samples(paths.images, count)
    report: dict = {"dataset": paths.name, "model": spec.key, "pretrained_weights": pretrained}
    report["transform"] = transform_dataset(paths, TransformOptions(max_side=128), progress).as_dict()
    report["atlas_pages"] = len(build_atlas(paths, AtlasOptions(tile=48), progress)["pages"])
    report["embed"] = embed_dataset(paths, spec, options=EmbedOptions(batch_size=32), progress=progress).as_dict()
    report["index"] = build_index(paths, spec.key, progress=progress)["kind"]
    first = "warm/stripes-0000.jpg"
    report["query"] = f"like:{first}"
    report["results"] = search(paths, SearchRequest([Term(1.0, "like", first)], k=5), spec)
    if map_png:
        rows = project_dataset(paths, spec.key, UmapOptions(seed=42), progress)
        report["map"] = render_map(paths, rows, paths.map_png, size=1024, thumb=48)
    return report
