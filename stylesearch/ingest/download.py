"""Concurrent, polite, retrying, resumable image download into a dataset (HTTP in fetch.py).

Workers only fetch and validate; the calling thread writes files and catalog rows, so
deduplication by content hash is race-free and every finished URL is committed at once.
Each image is written to a temp file, recorded (item, metadata, download), renamed into place,
then committed: a crash leaves at worst a temp file (removed by the next run) or a renamed file
without its record (adopted by the next run, found by its content hash).

Metadata of a row (sources.Entry.meta, group, position) is merged into the item an entry ends
up as: a new item, the item a duplicate's content already is, or on a rerun the item a finished
URL was stored as, so a rerun with an updated list updates metadata without downloading again.
Fields merge: a later row's value wins, over the item's earlier value and over an earlier row of
this run. Rows of one run that give one item different values for a field (the same URL listed
twice, or two URLs of the same content) are conflicts: each is counted (`metadata_conflicts`) and
named in a warning. An item keeps the first group it was given, and its position there is the
lowest one any entry of that group gives it (a row's own `position` column wins over it).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import re
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..progress import Progress, or_null
from ..store.catalog import Item, open_catalog
from ..store.datasets import create_dataset
from ..store.files import atomic_path, remove_stale_temp_files, writer_lock
from ..store.images import MAX_PIXELS, BadImage, file_sha256, load_rgb
from ..store.paths import DatasetPaths
from .fetch import FetchError, FetchOptions, HostGate, fetch_with_retries, valid_url
from .sources import Entry

EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}


@dataclass(frozen=True)
class DownloadOptions(FetchOptions):
    workers: int = 16
    per_host: int = 4
    host_delay: float = 0.0  # minimum seconds between request starts to one host
    min_side: int = 32
    max_pixels: int = MAX_PIXELS
    retry_failed: bool = False


@dataclass
class Fetched:
    entry: Entry
    data: bytes | None = None
    fmt: str | None = None
    size: tuple[int, int] | None = None
    error: FetchError | None = None


def fetch_and_validate(entry: Entry, options: DownloadOptions, gate: HostGate) -> Fetched:
    """Runs in a worker thread: download then decode fully to prove it is a usable image."""
    sem = gate.acquire(urlsplit(entry.url).netloc)
    try:
        data = fetch_with_retries(entry.url, options)
    except FetchError as exc:
        return Fetched(entry, error=exc)
    finally:
        sem.release()
    try:
        img = load_rgb(data, max_pixels=options.max_pixels)
    except BadImage as exc:
        return Fetched(entry, error=FetchError(f"invalid image: {exc.message}", transient=False))
    if min(img.size) < options.min_side:
        return Fetched(entry, error=FetchError(f"too small ({img.width}x{img.height})", transient=False))
    from PIL import Image

    with Image.open(io.BytesIO(data)) as probe:
        fmt = probe.format
    return Fetched(entry, data=data, fmt=fmt, size=img.size)


@dataclass
class DownloadResult:
    ok: int = 0
    duplicates: int = 0
    failed: int = 0
    skipped_done: int = 0
    bad_urls: int = 0
    malformed_lines: int = 0
    metadata_updated: int = 0  # items already there (finished before, or duplicates) given new metadata
    metadata_conflicts: int = 0  # fields that rows of this run gave one item different values (later row won)
    given: dict[int, dict] = field(default_factory=dict, repr=False)  # item id -> fields this run's rows gave
    reasons: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"ok": self.ok, "duplicates": self.duplicates, "failed": self.failed,
                "skipped_done": self.skipped_done, "bad_urls": self.bad_urls,
                "malformed_lines": self.malformed_lines, "metadata_updated": self.metadata_updated,
                "metadata_conflicts": self.metadata_conflicts, "failure_reasons": self.reasons}

    def fail(self, url: str, reason: str) -> None:
        self.failed += 1
        key = re.sub(r"\(.*", "", reason).strip()
        self.reasons[key] = self.reasons.get(key, 0) + 1
        self.warnings.append(f"{url}: {reason}")


def _file_name(entry: Entry, digest: str, fmt: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", entry.id).strip("._")[:80] if entry.id else ""
    return f"{stem or digest[:20]}{EXTENSIONS.get(fmt, '.img')}"


def _name_candidates(name: str, digest: str):
    """The preferred name, then ones with the content hash added (for other content of that name)."""
    stem, dot, ext = name.rpartition(".")
    yield name
    yield f"{stem}-{digest[:8]}{dot}{ext}"
    for n in itertools.count(2):
        yield f"{stem}-{digest[:8]}-{n}{dot}{ext}"


def _has_content(path, digest: str) -> bool:
    try:
        return file_sha256(path) == digest
    except OSError:
        return False


def _plan(catalog, entries: list[Entry], options: DownloadOptions,
          result: DownloadResult) -> tuple[list[Entry], dict[str, list[Entry]]]:
    """(entries to fetch, one per URL; every valid entry by URL). Finished URLs are not fetched
    again, but their entries' metadata is merged into their items now."""
    todo, by_url, done = [], {}, []
    for entry in entries:
        if not valid_url(entry.url):
            result.bad_urls += 1
            result.warnings.append(f"not an http(s) URL: {entry.url[:200]!r}")
            continue
        if entry.url in by_url:
            by_url[entry.url].append(entry)
            continue
        by_url[entry.url] = [entry]
        record = catalog.download_record(entry.url)
        if record and (record["status"] == "ok" or (record["status"] == "failed" and not options.retry_failed)):
            result.skipped_done += 1
            done += [entry.url] if record["status"] == "ok" else []
        else:
            todo.append(entry)
    _refresh_metadata(catalog, [(url, by_url[url]) for url in done if _has_metadata(by_url[url])], result)
    return todo, by_url


def _refresh_metadata(catalog, finished: list[tuple[str, list[Entry]]], result: DownloadResult) -> None:
    if not finished:
        return
    with catalog.transaction():
        for url, entries in finished:
            item_id = catalog.downloaded_item_id(url)
            if item_id is not None and _attach(catalog, item_id, entries, result):
                result.metadata_updated += 1


def _has_metadata(entries: list[Entry]) -> bool:
    return any(e.meta or e.group for e in entries)


def _attach(catalog, item_id: int, entries: list[Entry], result: DownloadResult) -> bool:
    """Merge the entries' metadata, group and position into an item (rules in the module
    docstring), counting conflicts in `result`; True when that changed it (an unchanged item is
    not written)."""
    if not _has_metadata(entries):
        return False
    item = catalog.item(item_id)
    before = catalog.metadata([item_id]).get(item_id, {})
    meta, group = dict(before), item.group_id
    given, conflicts = result.given.setdefault(item_id, {}), []
    for entry in entries:
        group = group or entry.group
        for key, value in entry.meta.items():
            if key in given and given[key] != value:
                conflicts.append(f"{key} {given[key]!r} -> {value!r}")
            given[key] = value
        meta.update(entry.meta)
        if entry.position is not None and entry.group == group and "position" not in entry.meta:
            old = meta.get("position")
            ordinal = isinstance(old, int) and not isinstance(old, bool)
            meta["position"] = min(old, entry.position) if ordinal else entry.position
    if conflicts:
        result.metadata_conflicts += len(conflicts)
        result.warnings.append(f"{item.path}: rows disagree on {', '.join(conflicts)}; the later row's value is kept")
    if meta == before and group == item.group_id:
        return False
    catalog.set_metadata(item_id, meta, replace=True)
    if group != item.group_id:
        catalog.set_group(item_id, group)
    return True


def download(paths: DatasetPaths, entries: list[Entry], options: DownloadOptions = DownloadOptions(),
             progress: Progress | None = None, malformed: int = 0) -> DownloadResult:
    """Download entries into the dataset's images folder; a rerun skips what is done.

    Permanent failures (4xx, not an image, too small) are not retried on rerun unless
    `retry_failed`; transient ones (timeouts, 429, 5xx after retries) are.
    """
    create_dataset(paths)
    result = DownloadResult(malformed_lines=malformed)
    progress = or_null(progress)
    with writer_lock(paths), open_catalog(paths) as catalog:
        if removed := remove_stale_temp_files(paths.images, recursive=True):
            result.warnings.append(f"removed {removed} temporary file(s) left by an interrupted run")
        todo, by_url = _plan(catalog, entries, options, result)
        progress.start("downloading", len(todo))
        gate, store = HostGate(options.per_host, options.host_delay), _Store(catalog, paths, result, by_url)
        with ThreadPoolExecutor(max_workers=max(1, options.workers)) as pool:
            futures = [pool.submit(fetch_and_validate, e, options, gate) for e in todo]
            try:
                for future in as_completed(futures):
                    store(future.result())
                    progress.advance()
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
        progress.finish()
    return result


class _Store:
    """Writes fetched images and their catalog rows (runs in the calling thread only)."""

    def __init__(self, catalog, paths: DatasetPaths, result: DownloadResult, by_url: dict[str, list[Entry]]):
        self.catalog, self.paths, self.result, self.by_url = catalog, paths, result, by_url
        self._orphans: dict[int, list[str]] | None = None  # size -> uncatalogued files, built when needed

    def __call__(self, fetched: Fetched) -> None:
        url = fetched.entry.url
        if fetched.error is not None:
            status = "error" if fetched.error.transient else "failed"
            self.catalog.record_download(url, status, fetched.error.reason)
            self.result.fail(url, fetched.error.reason)
            return
        digest = hashlib.sha256(fetched.data).hexdigest()
        entries = self.by_url.get(url, [fetched.entry])
        kept = self._catalogued_copy(digest)
        if kept is not None:
            with self.catalog.transaction():
                self.catalog.record_download(url, "ok", f"duplicate of {kept.path}", kept.path, digest)
                self.result.metadata_updated += int(_attach(self.catalog, kept.id, entries, self.result))
            self.result.duplicates += 1
            return
        orphan = self._take_orphan(len(fetched.data), digest)
        name, present = (orphan, True) if orphan else self._free_name(fetched, digest)
        with self.catalog.transaction():  # committed after the rename: no record without its file
            if present:
                self._record(fetched, entries, digest, name, (self.paths.images / name).stat())
            else:
                with atomic_path(self.paths.images / name) as tmp:
                    tmp.write_bytes(fetched.data)
                    self._record(fetched, entries, digest, name, tmp.stat())
        self.result.ok += 1

    def _record(self, fetched: Fetched, entries: list[Entry], digest: str, name: str, st) -> None:
        entry = fetched.entry
        item_id = self.catalog.upsert_item(name, size=st.st_size, mtime=st.st_mtime, content_hash=digest,
                                           width=fetched.size[0], height=fetched.size[1], status="ok",
                                           source_url=entry.url, caption=entry.caption)
        _attach(self.catalog, item_id, entries, self.result)
        self.catalog.record_download(entry.url, "ok", None, name, digest)

    def _catalogued_copy(self, digest: str) -> Item | None:
        """A live item with this content whose file is still there."""
        for item in self.catalog.items_with_hash(digest):
            if item.status == "ok" and self.paths.item_file(item.path).is_file():
                return item
        return None
    def _free_name(self, fetched: Fetched, digest: str) -> tuple[str, bool]:
        """A name that is free or already holds this very content (then True: adopt, don't write)."""
        for name in _name_candidates(_file_name(fetched.entry, digest, fetched.fmt), digest):
            target = self.paths.images / name
            if not target.exists() and not target.is_symlink():
                return name, False
            if target.is_file() and _has_content(target, digest):
                return name, True
        raise AssertionError("unreachable")

    def _take_orphan(self, size: int, digest: str) -> str | None:
        """An uncatalogued image file with this content (e.g. renamed just before a crash), to adopt."""
        if self._orphans is None:  # downloads are written at the top of images/ only
            known, self._orphans = self.catalog.item_paths(), {}
            for file in self.paths.images.iterdir():
                if file.name not in known and not file.name.startswith(".") and file.is_file():
                    self._orphans.setdefault(file.stat().st_size, []).append(file.name)
        for name in self._orphans.get(size, []):
            if _has_content(self.paths.images / name, digest):
                self._orphans[size].remove(name)
                return name
        return None
