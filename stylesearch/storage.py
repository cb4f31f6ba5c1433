"""Dataset store: where a dataset's files live, atomic writes, and the writer lock."""

from __future__ import annotations

import contextlib
import errno
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
from .errors import DatasetBusy, DatasetNotFound, DiskFull, PathRefused, StyleSearchError, UserError

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


# ---------------------------------------------------------------- full disks and atomic writes

_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def is_disk_full(exc: BaseException) -> bool:
    """An error a full disk (or quota) causes, as the OS, SQLite or FAISS word it."""
    if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
        return True
    text = str(exc).lower()
    return "no space left" in text or "disk is full" in text or "quota exceeded" in text


@contextlib.contextmanager
def full_disk_as_error(path: str | os.PathLike) -> Iterator[None]:
    """Turn a full-disk failure of the writes inside into one DiskFull naming `path`."""
    try:
        yield
    except StyleSearchError:
        raise
    except Exception as exc:
        if is_disk_full(exc):
            raise DiskFull(f"Disk full: could not write {path}; its previous version is kept.",
                           "Free some space, then run the step again.") from None
        raise


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
    with full_disk_as_error(target):
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}{TEMP_MARK}", suffix=suffix or ".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        with full_disk_as_error(target):
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
    """Append one JSON line whole or not at all, fsynced so a crash loses nothing written.

    A write cut short (a full disk) is truncated away and raises DiskFull; a line an earlier crash
    left unfinished is closed first, so it can never swallow this one."""
    line = (json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
    with full_disk_as_error(target):
        fd = os.open(target, os.O_RDWR | os.O_APPEND | os.O_CREAT, file_mode())
        try:
            end = os.fstat(fd).st_size
            if end and os.pread(fd, 1, end - 1) != b"\n":
                line = b"\n" + line
            _append_whole(fd, line)
        finally:
            os.close(fd)


def _append_whole(fd: int, data: bytes) -> None:
    written = 0
    try:
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(errno.ENOSPC, "No space left on device (short write)")
        os.fsync(fd)
    except OSError:
        if written:
            os.ftruncate(fd, os.fstat(fd).st_size - written)
        raise


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


def remove_temp_files_of(target: str | os.PathLike) -> int:
    """Delete temp files that interrupted atomic writes of `target` left beside it (`.NAME.tmp-*`), and
    nothing else: for outputs anywhere (a map, a coordinates file), where no dataset lock is held."""
    target = Path(target)
    prefix = f".{target.name}{TEMP_MARK}"
    removed = 0
    with contextlib.suppress(OSError):
        for file in target.parent.iterdir():
            if file.name.startswith(prefix) and not file.is_dir():
                with contextlib.suppress(OSError):
                    file.unlink()
                    removed += 1
    return removed


def read_json_or_none(path: str | os.PathLike) -> Any:
    """A sidecar's JSON, or None when it is missing, unreadable or not JSON (damaged state is absent
    state: the step that writes it makes it again)."""
    try:
        return json.loads(Path(path).read_bytes())
    except (OSError, ValueError, RecursionError):
        return None


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
