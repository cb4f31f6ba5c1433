"""Dataset store: where a dataset's files live, atomic writes, and the writer lock."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

from .choices import THUMB_FORMATS
from .errors import DatasetBusy, DatasetNotFound, UserError

CATALOG_NAME = "catalog.sqlite"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def now_iso(timespec: str = "seconds") -> str:
    """The current UTC time as ISO 8601: the one timestamp format of every file and record."""
    return datetime.now(timezone.utc).isoformat(timespec=timespec)


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


# ---------------------------------------------------------------- atomic writes


TEMP_MARK = ".tmp-"  # in the name of every temp file an atomic write makes (see remove_stale_temp_files)


@functools.lru_cache(maxsize=1)
def file_mode() -> int:
    """Mode for new files: 0666 less the process umask, as `touch` or `cp` would make them."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path beside `target`; on success it replaces `target` atomically.

    The file gets the usual permissions (umask honoured), so other users can read shared datasets.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}{TEMP_MARK}", suffix=suffix or ".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, file_mode())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def remove_stale_temp_files(folder: Path, recursive: bool = False) -> int:
    """Delete temp files that interrupted atomic writes left behind; call only while holding the lock."""
    removed = 0
    files = folder.rglob(f".*{TEMP_MARK}*") if recursive else folder.glob(f".*{TEMP_MARK}*")
    for file in files:
        with contextlib.suppress(OSError):
            file.unlink()
            removed += 1
    return removed


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


def atomic_write_json(target: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(target, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def append_jsonl(target: str | os.PathLike, record: dict) -> None:
    """Append one JSON line, flushed and fsynced so a crash loses nothing written."""
    line = json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n"
    with open(target, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def json_lines(lines: Iterable[str]) -> Iterator[Any]:
    """The JSON value of each non-blank line, None for a line that is not JSON (bad syntax,
    numbers too long to convert, nesting too deep): callers count those as malformed."""
    for line in lines:
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
            yield None


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default


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
    def is_index_version_name(name: str) -> bool:
        return (name.startswith("index-") and name.endswith(".faiss")) or (
            name.startswith("members-") and name.endswith(".npz"))

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

    def onnx_dir(self, model_key: str) -> Path:
        """ONNX exports of a model's towers (made once, used by torch-free queries)."""
        return self.home / "onnx" / model_key

    @property
    def projections(self) -> Path:
        return self.home / "projection"

    def projection_file(self, model_key: str) -> Path:
        return self.projections / f"{model_key}.npz"

    def item_file(self, item_path: str):
        """The file of an item: relative catalog paths live under images/, absolute ones anywhere.

        An image inside a tar shard (`shard.tar#member`) is a shards.ShardMember, read with read_bytes.
        """
        if "#" in item_path:
            from .shards import ShardMember, split_member_path

            parts = split_member_path(item_path)
            if parts:
                return ShardMember(self.item_file(parts[0]), parts[1])
        p = Path(item_path)
        return p if p.is_absolute() else self.images / p

    def thumbnail_file(self, item_path: str, content_hash: str | None, fmt: str) -> Path:
        """Where `transform` puts an item's thumbnail: its path under thumbs/ with the format's extension."""
        p = Path(item_path)
        if p.is_absolute():
            p = Path("_external") / f"{(content_hash or p.name)[:20]}"
        return self.thumbs / p.with_suffix(THUMB_FORMATS[fmt])


def thumb_format(paths: DatasetPaths) -> str | None:
    """The format of the dataset's thumbnails, or None when no thumbnails were made."""
    fmt = (read_json(paths.thumbs_params) or {}).get("format")
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


@contextlib.contextmanager
def writer_lock(paths: DatasetPaths, wait_seconds: float = 0.0) -> Iterator[None]:
    """Exclusive writer lock for a dataset; raises DatasetBusy if another writer holds it."""
    from filelock import FileLock, Timeout

    paths.home.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(paths.lock))
    try:
        lock.acquire(timeout=wait_seconds)
    except Timeout:
        raise DatasetBusy(
            f"Dataset {paths.name!r} is busy: another stylesearch process is writing to it.",
            f"Wait for it to finish, or allow a waiting time. Lock file: {paths.lock}",
            dataset=paths.name,
        ) from None
    try:
        yield
    finally:
        lock.release()
