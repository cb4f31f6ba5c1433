"""The Python API: open a collection, then embed, index, search, find similar items, train a metric and
map it, with the same library functions the command line calls. Results are dataclasses; errors are
StyleSearchError subclasses. Nothing heavy is imported until a method needs it.

    import stylesearch
    photos = stylesearch.open("photos", root="datasets")       # or create=True
    photos.embed(model="ViT-B-32")
    photos.index()
    for hit in photos.search("film grain portrait", k=20, where="year>2000"):
        print(hit.id, hit.score, hit.path, hit.caption, hit.meta)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .store.paths import DatasetPaths, dataset_paths, existing_dataset


@dataclass(frozen=True)
class Hit:
    """One search result: the item, its score (1 - d²/2 under the metric: cosine for raw vectors) and rank."""

    rank: int
    id: int
    score: float
    path: str  # as in the catalog (relative to images/, or absolute)
    file: str  # the file on disk (`shard.tar#member` for an image inside a tar shard)
    caption: str | None
    group: str | None
    meta: dict
    dataset: str


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset under the root: live, deleted and corrupt item counts and its embedded models
    (`error` set, counts None, when its catalog cannot be read)."""

    name: str
    path: str
    items: int | None
    deleted: int | None
    corrupt: int | None
    models: list[str]
    error: str | None


@dataclass(frozen=True)
class IndexInfo:
    """The index a build left: its kind, vector count, space (raw or a metric version) and build details."""

    kind: str
    count: int
    space: str
    details: dict = field(repr=False)


@dataclass(frozen=True)
class TrainReport:
    """A trained metric: its kind, judgments used, held-out agreement before -> after with a 95% interval,
    and the rebuilt index (None when the dataset had none)."""

    kind: str
    judgments_used: int
    agreement_before: float
    agreement_after: float
    agreement_ci: tuple[float, float]
    index: IndexInfo | None
    details: dict = field(repr=False)


@dataclass(frozen=True)
class MapPoint:
    """An item's 2D UMAP coordinates."""

    id: int
    path: str
    x: float
    y: float
    meta: dict


def datasets(root: str | os.PathLike | None = None) -> list[DatasetInfo]:
    """Every dataset under the root (default $STYLESEARCH_HOME, else ./datasets), as `stylesearch datasets`
    lists them."""
    from .store.datasets import list_datasets

    return [DatasetInfo(**row) for row in list_datasets(root)]


def open(name: str, root: str | os.PathLike | None = None, create: bool = False) -> "Dataset":  # noqa: A001
    """The dataset `name` under the root; with `create`, made (empty) when it does not exist yet."""
    if create:
        from .store.datasets import create_dataset

        paths = dataset_paths(name, root)
        if not paths.catalog.exists():
            create_dataset(paths)
        return Dataset(paths)
    return Dataset(existing_dataset(name, root))


class Dataset:
    """One collection: the library's steps as methods. `model`/`pretrained` default to the dataset's
    embedded model (ViT-B-32 / laion2b_s34b_b79k for one not embedded yet), as on the command line."""

    def __init__(self, paths: DatasetPaths):
        self.paths = paths

    @property
    def name(self) -> str:
        return self.paths.name

    @property
    def path(self) -> Path:
        return self.paths.home

    def __repr__(self) -> str:
        return f"<stylesearch.Dataset {self.name!r} at {self.path}>"

    def spec(self, model: str | None = None, pretrained: str | None = None, embedded_only: bool = True):
        """The model these arguments choose (embed.choice.resolve_spec, as every command)."""
        from .embed.choice import resolve_spec

        return resolve_spec(self.paths, model, pretrained, embedded_only=embedded_only)

    def info(self) -> dict:
        """Everything `stylesearch info --json` shows."""
        from .store.datasets import describe

        return describe(self.name, self.paths.home.parent)

    def embed(self, model: str | None = None, pretrained: str | None = None, *, files: Sequence[str] | None = None,
              backend: str = "auto", device: str = "auto", batch_size: int = 32, progress=None):
        """Embed new and changed images (or just `files`), then give new items the saved attribute heads'
        predictions; returns the run's counts (embed.run.EmbedResult)."""
        from .embed.run import EmbedOptions, embed_dataset
        from .pipeline import predict_attributes

        options = EmbedOptions(backend=backend, device=device, batch_size=batch_size)
        chosen = [Path(f) for f in files] if files is not None else None
        spec = self.spec(model, pretrained, embedded_only=False)
        result = embed_dataset(self.paths, spec, chosen, options, progress)
        predict_attributes(self.paths, spec.key)
        return result

    def learn(self, *fields: str, refit: bool = False, seed: int = 0, model: str | None = None,
              pretrained: str | None = None) -> dict[str, dict]:
        """Learn metadata fields from the items that have them (as `tag --learn`): writes FIELD_pred and
        FIELD_prob for every item; returns each field's report (held-out accuracy and 95% interval beside
        the majority baseline, expected calibration error, confusions)."""
        from .learn.attributes import learn_fields
        from .learn.heads import HeadOptions

        return learn_fields(self.paths, self.spec(model, pretrained).key, list(fields), refit, HeadOptions(seed=seed))

    def index(self, kind: str = "auto", *, model: str | None = None, pretrained: str | None = None,
              full: bool = False, raw: bool = False, progress=None) -> IndexInfo:
        """Build or update the FAISS index (in the learned metric's space unless `raw`)."""
        from .index.build import build_index

        return _index_info(build_index(self.paths, self.spec(model, pretrained).key, kind, full, progress, raw=raw))

    def search(self, *terms: str, k: int = 10, where: str | Sequence[str] = (), image: str | Sequence[str] = (),
               like: str | int | Sequence[str | int] = (), min_score: float | None = None, raw: bool = False,
               group: bool = False, effort: int | None = None, model: str | None = None,
               pretrained: str | None = None, device: str = "auto") -> list[Hit]:
        """Search by text terms (the command line's grammar: "red dress", "-blue", "0.5*like:42"), query
        images and items; `where` filters on metadata."""
        from .query.search import SearchRequest, search

        request = SearchRequest.parse(terms, _strings(image), _strings(like), _strings(where), k=k,
                                      min_score=min_score, raw=raw, group=group, effort=effort, model=model,
                                      pretrained=pretrained, device=device)
        return self._hits(search(self.paths, request))

    def similar(self, item: str | int, k: int = 10, **options) -> list[Hit]:
        """The k items most like `item` (an id or a catalog path), the item itself left out."""
        return self.search(like=item, k=k, **options)

    def judge(self, anchor: str | int, left: str | int, right: str | int, choice: str, *,
              model: str | None = None, pretrained: str | None = None) -> dict:
        """Record which option is more like the anchor (choice: left, right, too_similar, anchor_different or
        unknown; items by id or path), as the labeller does; returns the line appended to triplets.jsonl."""
        from .learn.judgments import record_judgment
        from .store.catalog import open_catalog

        key = self.spec(model, pretrained).key
        with open_catalog(self.paths, readonly=True) as catalog:
            return record_judgment(self.paths, catalog, str(anchor), str(left), str(right), choice, key, "python")

    def train(self, kind: str = "diagonal", *, rank: int = 64, seed: int = 0, model: str | None = None,
              pretrained: str | None = None, force: bool = False, progress=None) -> TrainReport:
        """Learn a metric from the dataset's judgments; save it when its held-out agreement reliably beats the
        raw embedding (or with `force`; `meta["saved"]` says which), then rebuild an existing index in its space."""
        from .learn.train import TrainOptions
        from .pipeline import train_and_reindex

        meta = train_and_reindex(self.paths, self.spec(model, pretrained).key,
                                 TrainOptions(kind=kind, rank=rank, seed=seed), progress, force)
        return TrainReport(meta["kind"], meta["judgments_used"], meta["agreement_before"], meta["agreement_after"],
                           tuple(meta["agreement_ci"]), _index_info(meta["index"]) if "index" in meta else None,
                           meta)

    def umap(self, *, neighbors: int = 15, min_dist: float = 0.1, seed: int = 42, raw: bool = False,
             png: str | os.PathLike | None = None, model: str | None = None, pretrained: str | None = None,
             progress=None) -> list[MapPoint]:
        """2D UMAP coordinates of every embedded item (saved for the map and atlas order); with `png`, also a
        thumbnail map drawn there."""
        from .maps.projection import UmapOptions, project_dataset, render_map

        rows = project_dataset(self.paths, self.spec(model, pretrained).key,
                               UmapOptions(neighbors, min_dist, seed, raw=raw), progress)
        if png is not None:
            render_map(self.paths, rows, Path(png))
        return [MapPoint(r["id"], r["path"], r["x"], r["y"], r["meta"]) for r in rows]

    def _hits(self, rows: list[dict]) -> list[Hit]:
        return [Hit(r["rank"], r["id"], r["score"], r["path"], r["file"], r.get("caption"), r.get("group"),
                    r.get("meta", {}), r.get("dataset", self.name)) for r in rows]


def _strings(value) -> list[str]:
    """One value or several as a list of strings (an item id may be an int)."""
    if value is None:
        return []
    if isinstance(value, (str, int)):
        return [str(value)]
    return [str(v) for v in value]


def _index_info(meta: dict) -> IndexInfo:
    return IndexInfo(meta["kind"], meta["count"], meta.get("space", "raw"), meta)
