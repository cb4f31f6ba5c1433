"""Concurrent, polite, retrying, resumable image download into a dataset.

Workers only fetch and validate; the calling thread writes files and catalog rows, so
deduplication by content hash is race-free and every finished URL is committed at once.
"""

from __future__ import annotations

import hashlib
import io
import random
import re
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .catalog import open_catalog
from .dataset import create_dataset
from .errors import UserError
from .images import MAX_PIXELS, BadImage, load_rgb
from .progress import Progress, or_null
from .sources import Entry
from .storage import DatasetPaths, atomic_write_bytes, writer_lock

USER_AGENT = "stylesearch/0.1 (+image collection tool)"
TRANSIENT_CODES = {408, 425, 429, 500, 502, 503, 504}
EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}


@dataclass(frozen=True)
class DownloadOptions:
    workers: int = 16
    per_host: int = 4
    host_delay: float = 0.0  # minimum seconds between request starts to one host
    retries: int = 3
    backoff: float = 0.5
    timeout: float = 20.0
    max_bytes: int = 50 << 20
    min_side: int = 32
    max_pixels: int = MAX_PIXELS
    retry_failed: bool = False


class FetchError(Exception):
    def __init__(self, reason: str, transient: bool):
        super().__init__(reason)
        self.reason = reason
        self.transient = transient


class HostGate:
    """Per-host concurrency limit and minimum spacing between requests."""

    def __init__(self, per_host: int, delay: float):
        self.per_host, self.delay = per_host, delay
        self._lock = threading.Lock()
        self._sems: dict[str, threading.Semaphore] = {}
        self._next: dict[str, float] = {}

    def acquire(self, host: str) -> threading.Semaphore:
        with self._lock:
            sem = self._sems.setdefault(host, threading.Semaphore(self.per_host))
        sem.acquire()
        if self.delay:
            with self._lock:
                start = max(time.monotonic(), self._next.get(host, 0.0))
                self._next[host] = start + self.delay
            time.sleep(max(0.0, start - time.monotonic()))
        return sem


def valid_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _read_limited(resp, max_bytes: int, deadline: float) -> bytes:
    chunks, total = [], 0
    while block := resp.read(64 << 10):
        total += len(block)
        if total > max_bytes:
            raise FetchError(f"larger than {max_bytes} bytes", transient=False)
        if time.monotonic() > deadline:
            raise FetchError("too slow (deadline exceeded)", transient=True)
        chunks.append(block)
    return b"".join(chunks)


def fetch_once(url: str, timeout: float, max_bytes: int) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept": "image/*,*/*;q=0.5"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return _read_limited(resp, max_bytes, time.monotonic() + timeout * 3)
    except urllib.error.HTTPError as exc:
        if 300 <= exc.code < 400:
            raise FetchError("redirect loop or too many redirects", transient=False) from None
        retry_after = exc.headers.get("Retry-After") if exc.headers else None
        err = FetchError(f"HTTP {exc.code}", transient=exc.code in TRANSIENT_CODES)
        err.retry_after = float(retry_after) if retry_after and retry_after.isdigit() else None
        raise err from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise FetchError(f"network: {reason}", transient=True) from None


def fetch_bytes(url: str, options: DownloadOptions = DownloadOptions()) -> bytes:
    """Fetch a URL with retries and backoff on 429/5xx/timeouts; raises UserError when it fails."""
    try:
        return _fetch_with_retries(url, options)
    except FetchError as exc:
        raise UserError(f"Could not fetch {url}: {exc.reason}.") from None


def _fetch_with_retries(url: str, options: DownloadOptions) -> bytes:
    for attempt in range(options.retries + 1):
        try:
            return fetch_once(url, options.timeout, options.max_bytes)
        except FetchError as exc:
            if not exc.transient or attempt == options.retries:
                raise
            wait = getattr(exc, "retry_after", None) or options.backoff * (2 ** attempt) * (1 + random.random() / 2)
            time.sleep(min(wait, 30.0))
    raise AssertionError("unreachable")


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
        data = _fetch_with_retries(entry.url, options)
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
    reasons: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"ok": self.ok, "duplicates": self.duplicates, "failed": self.failed,
                "skipped_done": self.skipped_done, "bad_urls": self.bad_urls,
                "malformed_lines": self.malformed_lines, "failure_reasons": self.reasons}

    def fail(self, url: str, reason: str) -> None:
        self.failed += 1
        key = re.sub(r"\(.*", "", reason).strip()
        self.reasons[key] = self.reasons.get(key, 0) + 1
        self.warnings.append(f"{url}: {reason}")


def _file_name(entry: Entry, digest: str, fmt: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", entry.id).strip("._")[:80] if entry.id else ""
    return f"{stem or digest[:20]}{EXTENSIONS.get(fmt, '.img')}"


def _plan(catalog, entries: list[Entry], options: DownloadOptions, result: DownloadResult) -> list[Entry]:
    todo, seen = [], set()
    for entry in entries:
        if not valid_url(entry.url):
            result.bad_urls += 1
            result.warnings.append(f"not an http(s) URL: {entry.url[:200]!r}")
            continue
        if entry.url in seen:
            continue
        seen.add(entry.url)
        record = catalog.download_record(entry.url)
        if record and (record["status"] == "ok" or (record["status"] == "failed" and not options.retry_failed)):
            result.skipped_done += 1
        else:
            todo.append(entry)
    return todo


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
        todo = _plan(catalog, entries, options, result)
        progress.start("downloading", len(todo))
        gate = HostGate(options.per_host, options.host_delay)
        with ThreadPoolExecutor(max_workers=max(1, options.workers)) as pool:
            futures = [pool.submit(fetch_and_validate, e, options, gate) for e in todo]
            try:
                for future in as_completed(futures):
                    _store(catalog, paths, future.result(), result)
                    progress.advance()
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
        progress.finish()
    return result


def _store(catalog, paths: DatasetPaths, fetched: Fetched, result: DownloadResult) -> None:
    url = fetched.entry.url
    if fetched.error is not None:
        status = "error" if fetched.error.transient else "failed"
        catalog.record_download(url, status, fetched.error.reason)
        result.fail(url, fetched.error.reason)
        return
    digest = hashlib.sha256(fetched.data).hexdigest()
    existing = [it for it in catalog.items_with_hash(digest) if it.status == "ok"]
    if existing:
        catalog.record_download(url, "ok", f"duplicate of {existing[0].path}", existing[0].path, digest)
        result.duplicates += 1
        return
    name = _file_name(fetched.entry, digest, fetched.fmt)
    if (paths.images / name).exists():
        name = f"{name.rsplit('.', 1)[0]}-{digest[:8]}.{name.rsplit('.', 1)[1]}"
    target = paths.images / name
    atomic_write_bytes(target, fetched.data)
    st = target.stat()
    with catalog.transaction():
        catalog.upsert_item(name, size=st.st_size, mtime=st.st_mtime, content_hash=digest, width=fetched.size[0],
                            height=fetched.size[1], status="ok", source_url=url, caption=fetched.entry.caption)
        catalog.record_download(url, "ok", None, name, digest)
    result.ok += 1
