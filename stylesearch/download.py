"""Concurrent, polite, retrying, resumable image download into a dataset.

Workers only fetch and validate; the calling thread writes files and catalog rows, so
deduplication by content hash is race-free and every finished URL is committed at once.
Each image is written to a temp file, recorded, renamed into place, then committed: a crash
leaves at worst a temp file (removed by the next run) or a renamed file without its record
(adopted by the next run, found by its content hash).
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import io
import itertools
import random
import re
import string
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from types import SimpleNamespace
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

from .catalog import open_catalog
from .dataset import create_dataset
from .errors import UserError
from .images import MAX_PIXELS, BadImage, file_sha256, load_rgb
from .progress import Progress, or_null
from .sources import Entry
from .storage import DatasetPaths, atomic_path, remove_stale_temp_files, writer_lock

USER_AGENT = "stylesearch/0.1 (+image collection tool)"
TRANSIENT_CODES = {408, 425, 429, 500, 502, 503, 504}
EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}
ALLOWED_SCHEMES = ("http", "https")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class DownloadOptions:
    workers: int = 16
    per_host: int = 4
    host_delay: float = 0.0  # minimum seconds between request starts to one host
    retries: int = 3
    backoff: float = 0.5
    timeout: float = 20.0  # total seconds per request attempt: connect, headers, redirects and body
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
    """An http(s) URL with a host and a valid port, free of control characters, storable as UTF-8."""
    if not isinstance(url, str) or _CONTROL.search(url):
        return False
    try:
        url.encode("utf-8")
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a bad port
    except ValueError:
        return False
    return parts.scheme in ALLOWED_SCHEMES and bool(parts.hostname)


def _wire_url(url: str) -> str:
    """The URL as requested: spaces and non-ASCII characters of path and query percent-encoded."""
    if url.isascii() and " " not in url:
        return url
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=quote(parts.path, safe=string.punctuation),
                                     query=quote(parts.query, safe=string.punctuation), fragment=""))


# ---------------------------------------------------------------- HTTP with a total deadline


class DeadlineExceeded(TimeoutError):
    """The request's total time (connect, headers, redirects, body) ran out."""


class _Deadline:
    def __init__(self, seconds: float):
        self.at = time.monotonic() + seconds

    def remaining(self) -> float:
        left = self.at - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded("deadline exceeded")
        return left


class _DeadlineReader(io.RawIOBase):
    """Socket reads that never wait past the deadline, however slowly the bytes trickle in."""

    def __init__(self, sock, deadline: _Deadline):
        super().__init__()
        self._sock, self._deadline = sock, deadline
        self._raw = sock.makefile("rb", buffering=0)  # keeps the socket open until this is closed

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int | None:
        self._sock.settimeout(self._deadline.remaining())
        try:
            return self._raw.readinto(buffer)
        except TimeoutError:  # the socket timeout was the time left
            raise DeadlineExceeded("deadline exceeded") from None

    def close(self) -> None:
        self._raw.close()
        super().close()


class _DeadlineConnection:
    """Mixin for http.client connections: connecting and every read end by the deadline."""

    def __init__(self, *args, deadline: _Deadline, **kwargs):
        super().__init__(*args, **kwargs)
        self._deadline = deadline

    def connect(self) -> None:
        self.timeout = self._deadline.remaining()
        super().connect()

    def response_class(self, sock, *args, **kwargs):
        """HTTPResponse only calls makefile() on its socket: give it the deadline-keeping reader."""
        def makefile(*_args, **_kwargs):
            return io.BufferedReader(_DeadlineReader(sock, self._deadline))
        return http.client.HTTPResponse(SimpleNamespace(makefile=makefile), *args, **kwargs)


_HTTPConnection = type("_HTTPConnection", (_DeadlineConnection, http.client.HTTPConnection), {})
_HTTPSConnection = type("_HTTPSConnection", (_DeadlineConnection, http.client.HTTPSConnection), {})


class _DeadlineHandler(urllib.request.AbstractHTTPHandler):
    """urllib's http and https handlers, with connections that keep the request's deadline."""

    def __init__(self, deadline: _Deadline):
        super().__init__()
        self._deadline = deadline

    def http_open(self, req):
        return self.do_open(functools.partial(_HTTPConnection, deadline=self._deadline), req)

    def https_open(self, req):
        return self.do_open(functools.partial(_HTTPSConnection, deadline=self._deadline), req)

    http_request = https_request = urllib.request.AbstractHTTPHandler.do_request_


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to an allowed (http or https) URL, checked on every hop."""

    def http_error_302(self, req, fp, code, msg, headers):
        target = headers.get("location") or headers.get("uri")
        if target is not None:
            try:
                newurl = urljoin(req.full_url, target.strip())
            except ValueError:
                newurl = target
            if not valid_url(newurl):
                fp.close()
                raise FetchError(f"blocked redirect to {newurl[:200]!s}", transient=False)
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _opener(deadline: _Deadline) -> urllib.request.OpenerDirector:
    """Only http(s) handlers: other schemes fail as unknown even if a redirect slipped through."""
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), _DeadlineHandler(deadline), _RedirectHandler(),
                    urllib.request.HTTPDefaultErrorHandler(),
                    urllib.request.HTTPErrorProcessor(), urllib.request.UnknownHandler()):
        opener.add_handler(handler)
    return opener


def _read_limited(resp, max_bytes: int, deadline: _Deadline) -> bytes:
    chunks, total = [], 0
    while block := resp.read(64 << 10):
        total += len(block)
        if total > max_bytes:
            raise FetchError(f"larger than {max_bytes} bytes", transient=False)
        deadline.remaining()
        chunks.append(block)
    return b"".join(chunks)


def fetch_once(url: str, timeout: float, max_bytes: int) -> bytes:
    """One GET that takes at most `timeout` seconds in all (connect, headers, redirects, body)."""
    deadline = _Deadline(timeout)
    try:
        request = urllib.request.Request(_wire_url(url), headers={"User-Agent": USER_AGENT,
                                                                  "Accept": "image/*,*/*;q=0.5"})
        with _opener(deadline).open(request, timeout=timeout) as resp:
            return _read_limited(resp, max_bytes, deadline)
    except FetchError:
        raise
    except urllib.error.HTTPError as exc:
        exc.close()
        raise _http_error(exc) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, DeadlineExceeded):
            raise FetchError("too slow (deadline exceeded)", transient=True) from None
        raise FetchError(f"network: {reason or type(reason).__name__}", transient=True) from None
    except ValueError as exc:  # http.client refuses the URL
        raise FetchError(f"invalid URL ({exc})", transient=False) from None


def _http_error(exc: urllib.error.HTTPError) -> FetchError:
    if 300 <= exc.code < 400:
        return FetchError("redirect loop or too many redirects", transient=False)
    retry_after = exc.headers.get("Retry-After") if exc.headers else None
    err = FetchError(f"HTTP {exc.code}", transient=exc.code in TRANSIENT_CODES)
    err.retry_after = float(retry_after) if retry_after and retry_after.isdigit() else None
    return err


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
        if removed := remove_stale_temp_files(paths.images, recursive=True):
            result.warnings.append(f"removed {removed} temporary file(s) left by an interrupted run")
        todo = _plan(catalog, entries, options, result)
        progress.start("downloading", len(todo))
        gate, store = HostGate(options.per_host, options.host_delay), _Store(catalog, paths, result)
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

    def __init__(self, catalog, paths: DatasetPaths, result: DownloadResult):
        self.catalog, self.paths, self.result = catalog, paths, result
        self._orphans: dict[int, list[str]] | None = None  # size -> uncatalogued files, built when needed

    def __call__(self, fetched: Fetched) -> None:
        url = fetched.entry.url
        if fetched.error is not None:
            status = "error" if fetched.error.transient else "failed"
            self.catalog.record_download(url, status, fetched.error.reason)
            self.result.fail(url, fetched.error.reason)
            return
        digest = hashlib.sha256(fetched.data).hexdigest()
        kept = self._catalogued_copy(digest)
        if kept is not None:
            self.catalog.record_download(url, "ok", f"duplicate of {kept}", kept, digest)
            self.result.duplicates += 1
            return
        orphan = self._take_orphan(len(fetched.data), digest)
        name, present = (orphan, True) if orphan else self._free_name(fetched, digest)
        with self.catalog.transaction():  # committed after the rename: no record without its file
            if present:
                self._record(fetched, digest, name, (self.paths.images / name).stat())
            else:
                with atomic_path(self.paths.images / name) as tmp:
                    tmp.write_bytes(fetched.data)
                    self._record(fetched, digest, name, tmp.stat())
        self.result.ok += 1

    def _record(self, fetched: Fetched, digest: str, name: str, st) -> None:
        entry = fetched.entry
        self.catalog.upsert_item(name, size=st.st_size, mtime=st.st_mtime, content_hash=digest,
                                 width=fetched.size[0], height=fetched.size[1], status="ok",
                                 source_url=entry.url, caption=entry.caption)
        self.catalog.record_download(entry.url, "ok", None, name, digest)

    def _catalogued_copy(self, digest: str) -> str | None:
        """Path of a live item with this content whose file is still there."""
        for item in self.catalog.items_with_hash(digest):
            if item.status == "ok" and self.paths.item_file(item.path).is_file():
                return item.path
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
