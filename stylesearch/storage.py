"""Dataset store: where a dataset's files live, atomic writes, and the writer lock."""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .errors import DatasetBusy, DatasetNotFound, UserError

CATALOG_NAME = "catalog.sqlite"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def datasets_root(root: str | os.PathLike | None = None) -> Path:
    """The folder holding all datasets: explicit root, else $STYLESEARCH_HOME, else ./datasets."""
    if root:
        return Path(root).expanduser()
    env = os.environ.get("STYLESEARCH_HOME")
    return Path(env).expanduser() if env else Path("datasets")


def check_dataset_name(name: str) -> str:
    if not _NAME_RE.match(name or ""):
        raise UserError(
            f"Invalid dataset name {name!r}.",
            "Use letters, digits, '.', '_' or '-' (at most 100 characters, not starting with '.').",
        )
    return name


# ---------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path beside `target`; on success it replaces `target` atomically."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or ".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


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


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default


# ---------------------------------------------------------------- datasets


@dataclass(frozen=True)
class DatasetPaths:
    """All the paths of one dataset, derived from its folder."""

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
    def atlas(self) -> Path:
        return self.home / "atlas"

    @property
    def triplets(self) -> Path:
        return self.home / "triplets.jsonl"

    @property
    def lock(self) -> Path:
        return self.home / ".lock"

    def index_dir(self, model_key: str) -> Path:
        return self.home / "index" / model_key

    def metric_dir(self, model_key: str) -> Path:
        return self.home / "metric" / model_key

    @property
    def projections(self) -> Path:
        return self.home / "projection"

    def projection_file(self, model_key: str) -> Path:
        return self.projections / f"{model_key}.npz"


def dataset_paths(name: str, root: str | os.PathLike | None = None) -> DatasetPaths:
    return DatasetPaths(datasets_root(root) / check_dataset_name(name))


def existing_dataset(name: str, root: str | os.PathLike | None = None) -> DatasetPaths:
    paths = dataset_paths(name, root)
    if not paths.catalog.exists():
        known = ", ".join(list_dataset_names(root)) or "none yet"
        raise DatasetNotFound(
            f"No dataset named {name!r} under {datasets_root(root)}.",
            f"Known datasets: {known}. Create one with `stylesearch download {name} URLS.txt` "
            f"or put images in {paths.images} and run `stylesearch embed {name} --create`.",
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
            f"Wait for it to finish, or pass --wait SECONDS. Lock file: {paths.lock}",
        ) from None
    try:
        yield
    finally:
        lock.release()
