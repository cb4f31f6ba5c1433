"""Files of the store: atomic writes (temp + rename), whole-line appends, JSON lines and sidecars,
full-disk errors, and the writer lock. Nothing here knows a dataset's layout (see paths.py)."""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..errors import DatasetBusy, DiskFull, StyleSearchError


def now_iso(timespec: str = "seconds") -> str:
    """The current UTC time as ISO 8601: the one timestamp format of every file and record."""
    return datetime.now(timezone.utc).isoformat(timespec=timespec)


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


def read_json_or_none(path: str | os.PathLike) -> Any:
    """A sidecar's JSON, or None when it is missing, unreadable or not JSON (damaged state is absent
    state: the step that writes it makes it again)."""
    try:
        return json.loads(Path(path).read_bytes())
    except (OSError, ValueError, RecursionError):
        return None


@contextlib.contextmanager
def writer_lock(paths, wait_seconds: float = 0.0) -> Iterator[None]:
    """Exclusive writer lock for a dataset (its DatasetPaths); raises DatasetBusy if another writer holds it."""
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
