"""Where a dataset's files live: every file name (DatasetPaths, the one place the layout is decided),
the dataset root and names, and the containment check every reader and writer passes."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..choices import THUMB_FORMATS
from ..errors import DatasetNotFound, PathRefused, UserError
from .files import read_json_or_none

CATALOG_NAME = "catalog.sqlite"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def datasets_root(root: str | os.PathLike | None = None) -> Path:
    """The folder holding all datasets: explicit root, else $STYLESEARCH_HOME, else ./datasets."""
    if root:
        return Path(root).expanduser()
    env = os.environ.get("STYLESEARCH_HOME")
    return Path(env).expanduser() if env else Path("datasets")


def user_cache_dir() -> Path:
    """Per-user cache folder ($STYLESEARCH_CACHE, else $XDG_CACHE_HOME/stylesearch, else ~/.cache/stylesearch)."""
    explicit = os.environ.get("STYLESEARCH_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "stylesearch"


def check_dataset_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise UserError(
            f"Invalid dataset name {name!r}.",
            "Use letters, digits, '.', '_' or '-' (at most 100 characters, not starting with '.').",
        )
    return name


# ---------------------------------------------------------------- datasets


@dataclass(frozen=True)
class DatasetPaths:
    """Every file name of one dataset, derived from its folder: the one place layout is decided."""

    home: Path

    @property
    def name(self) -> str:
        return self.home.name

    @property
    def catalog(self) -> Path:
        return self.home / CATALOG_NAME

    @property
    def images(self) -> Path:
        return self.home / "images"

    @property
    def thumbs(self) -> Path:
        return self.home / "thumbs"

    @property
    def thumbs_params(self) -> Path:
        """Parameters the thumbnails were made with (max side, format, quality)."""
        return self.thumbs / ".transform.json"

    @property
    def atlas(self) -> Path:
        return self.home / "atlas"

    @property
    def atlas_manifest(self) -> Path:
        return self.atlas / "manifest.json"

    def atlas_page(self, page: int) -> Path:
        return self.atlas / self.atlas_page_name(page)

    @staticmethod
    def atlas_page_name(page: int) -> str:
        return f"atlas-{page}.png"

    @property
    def triplets(self) -> Path:
        return self.home / "triplets.jsonl"

    @property
    def lock(self) -> Path:
        return self.home / ".lock"

    @property
    def map_png(self) -> Path:
        """The thumbnail map the demo draws."""
        return self.home / "map.png"

    def index_dir(self, model_key: str) -> Path:
        return self.home / "index" / model_key

    def index_sidecar(self, model_key: str) -> Path:
        """JSON naming the current index and members files of a model (replaced last, atomically)."""
        return self.index_dir(model_key) / "index.json"

    @staticmethod
    def index_version_names(stamp: str) -> tuple[str, str]:
        """File names of one index version: the FAISS index and its members (ids + content keys)."""
        return f"index-{stamp}.faiss", f"members-{stamp}.npz"

    @staticmethod
    def is_index_version_name(name) -> bool:
        """A bare file name of an index version (a sidecar naming anything else is refused)."""
        return _bare_name(name, ("index-", ".faiss"), ("members-", ".npz"))

    @staticmethod
    def refine_store_name(stamp: str) -> str:
        """File name of one index version's refine store (float16 copies of its vectors, index/refine.py)."""
        return f"refine-{stamp}.npy"

    @staticmethod
    def is_refine_store_name(name) -> bool:
        return _bare_name(name, ("refine-", ".npy"))

    def metric_dir(self, model_key: str) -> Path:
        return self.home / "metric" / model_key

    def metric_meta(self, model_key: str) -> Path:
        """The learned metric's metadata (kind, dims, training report)."""
        return self.metric_dir(model_key) / "weights.json"

    def metric_arrays(self, model_key: str) -> Path:
        """The learned metric's parameters (an .npz of named arrays)."""
        return self.metric_dir(model_key) / "weights.npz"

    def legacy_metric_weights(self, model_key: str) -> Path:
        """Diagonal weights as written by stylesearch 0.1 (read, never written)."""
        return self.metric_dir(model_key) / "weights.npy"

    def heads_dir(self, model_key: str) -> Path:
        """Learned attribute heads of a model (learn/heads.py), one pair of files per metadata field."""
        return self.home / "heads" / model_key

    def head_arrays(self, model_key: str, field: str) -> Path:
        """A head's parameters (.npz); `field` is a filter field name (letters, digits, '_', '.', '-')."""
        return self.heads_dir(model_key) / f"{_head_name(field)}.npz"

    def head_meta(self, model_key: str, field: str) -> Path:
        """A head's description and training report (JSON)."""
        return self.heads_dir(model_key) / f"{_head_name(field)}.json"

    def head_fields(self, model_key: str) -> list[str]:
        """Fields with a saved head for the model, sorted."""
        folder = self.heads_dir(model_key)
        names = (p.stem for p in folder.glob("*.npz")) if folder.is_dir() else ()
        return sorted(n for n in names if _HEAD_NAME.fullmatch(n))

    def onnx_dir(self, model_key: str) -> Path:
        """ONNX exports of a model's towers (made once, used by torch-free queries)."""
        return self.home / "onnx" / model_key

    @property
    def projections(self) -> Path:
        return self.home / "projection"

    def projection_file(self, model_key: str) -> Path:
        return self.projections / f"{model_key}.npz"

    def item_file(self, item_path: str):
        """The file of an item: relative catalog paths live under images/, absolute ones (files given by
        the user from elsewhere) anywhere; a relative path that climbs out is refused (PathRefused).

        An image inside a tar shard (`shard.tar#member`) is a shards.ShardMember, read with read_bytes.
        """
        if "#" in item_path:
            from .shards import ShardMember, split_member_path

            parts = split_member_path(item_path)
            if parts:
                return ShardMember(self.item_file(parts[0]), parts[1])
        p = Path(item_path)
        return p if p.is_absolute() else self.images / self._plain_relative(item_path)

    def thumbnail_file(self, item_path: str, content_hash: str | None, fmt: str) -> Path:
        """Where `transform` puts an item's thumbnail: its path under thumbs/ with the format's extension
        (an absolute item path: a name from its content hash under thumbs/_external/)."""
        if Path(item_path).is_absolute():
            rel = Path("_external") / f"{(content_hash or Path(item_path).name)[:20]}"
        else:
            rel = self._plain_relative(item_path)
        return self.thumbs / rel.with_suffix(THUMB_FORMATS[fmt])

    def _plain_relative(self, item_path: str) -> Path:
        """A catalog path as a relative path that stays below its folder (no '..', empty or NUL parts)."""
        parts = item_path.split("/")
        if "\0" in item_path or any(part in ("", ".", "..") for part in parts):
            raise PathRefused(f"Refused item path {item_path!r}: it does not name a file inside dataset "
                              f"{self.name!r}.", dataset=self.name)
        return Path(*parts)

    def contain(self, path: str | os.PathLike) -> Path:
        """`path` when its real location (links followed) is inside the dataset folder, or inside the real
        folder its images/ links to; PathRefused otherwise. Every file the server sends and every file a
        writer replaces passes here."""
        real = Path(os.path.realpath(path))
        for base in {Path(os.path.realpath(self.home)), Path(os.path.realpath(self.images))}:
            if real == base or base in real.parents:
                return Path(path)
        raise PathRefused(f"Refused {path}: it leads outside dataset {self.name!r}.", dataset=self.name)

    def atlas_page_names(self, manifest: dict) -> list[str]:
        """The page names a manifest lists, each checked to be a page name this code writes (a manifest
        is data: a name like '../x' is never used as a path)."""
        pages = manifest.get("pages") if isinstance(manifest, dict) else None
        names = pages if isinstance(pages, list) else []
        return [n for n in names if isinstance(n, str) and _ATLAS_PAGE.fullmatch(n)]


_ATLAS_PAGE = re.compile(r"atlas-\d{1,6}\.png")


def _bare_name(name, *patterns: tuple[str, str]) -> bool:
    """A file name of this folder (a string, no '/') with one of the (prefix, suffix) patterns."""
    return isinstance(name, str) and "/" not in name and any(
        name.startswith(prefix) and name.endswith(suffix) for prefix, suffix in patterns)
_HEAD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,99}")


def _head_name(field: str) -> str:
    """A field name usable as a file name (the filter grammar's field names; never '..' or a path)."""
    if not _HEAD_NAME.fullmatch(field):
        raise UserError(f"Cannot learn field {field!r}: a field name is letters, digits, '_', '.' or '-', "
                        "starting with a letter or '_' (at most 100 characters).")
    return field


def thumb_format(paths: DatasetPaths) -> str | None:
    """The format of the dataset's thumbnails, or None when no thumbnails were made."""
    params = read_json_or_none(paths.thumbs_params)
    fmt = params.get("format") if isinstance(params, dict) else None
    return fmt if fmt in THUMB_FORMATS else None


_UNSET = object()


def thumbnail_for(paths: DatasetPaths, item_path: str, content_hash: str | None = None, fmt=_UNSET) -> Path:
    """The item's thumbnail when one was made, else the original file.

    Pass `fmt` (from thumb_format) when looking up many items, to read the parameters once.
    """
    fmt = thumb_format(paths) if fmt is _UNSET else fmt
    if fmt:
        thumb = paths.thumbnail_file(item_path, content_hash, fmt)
        if thumb.exists():
            return thumb
    return paths.item_file(item_path)


def served_file(paths: DatasetPaths, item_path: str, content_hash: str | None = None, thumb: bool = False):
    """The file the server may send for an item (its thumbnail when `thumb` and one exists, else the
    original): PathRefused unless its real location is inside the dataset (see DatasetPaths.contain)."""
    file = thumbnail_for(paths, item_path, content_hash) if thumb else paths.item_file(item_path)
    paths.contain(getattr(file, "shard", file))
    return file


def dataset_paths(name: str, root: str | os.PathLike | None = None) -> DatasetPaths:
    return DatasetPaths(datasets_root(root) / check_dataset_name(name))


def existing_dataset(name: str, root: str | os.PathLike | None = None) -> DatasetPaths:
    paths = dataset_paths(name, root)
    if not paths.catalog.exists():
        known = ", ".join(list_dataset_names(root)) or "none yet"
        raise DatasetNotFound(
            f"No dataset named {name!r} under {datasets_root(root)}.",
            f"Known datasets: {known}. A dataset is created by downloading images into it, or by "
            f"embedding images put in {paths.images}.",
            dataset=name,
        )
    return paths


def list_dataset_names(root: str | os.PathLike | None = None) -> list[str]:
    base = datasets_root(root)
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if (p / CATALOG_NAME).exists())
