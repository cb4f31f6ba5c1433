"""HTTP fetching for downloads and query images: URL checks, one total deadline per request,
redirects checked on every hop, size limit, retries with backoff, per-host politeness.
Requests go over pooled keep-alive connections (HTTP/2 where offered; connections.py).
`public_only` (the server's query images) also refuses hosts that resolve to loopback, private,
link-local or reserved addresses, checked on every connection (redirects too), and uses no proxy.

Only http(s) is ever requested: URLs are validated before fetching and every redirect target is
checked again. A request attempt ends by its deadline however slowly a server sends headers or body.
"""

from __future__ import annotations

import ipaddress
import random
import re
import string
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

from ..errors import UserError

if TYPE_CHECKING:
    from .connections import Deadline  # connections imports httpx: only where a fetch needs it

USER_AGENT = "stylesearch/0.1 (+image collection tool)"
TRANSIENT_CODES = {408, 425, 429, 500, 502, 503, 504}
ALLOWED_SCHEMES = ("http", "https")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class FetchOptions:
    retries: int = 3
    backoff: float = 0.5
    timeout: float = 20.0  # total seconds per request attempt: connect, headers, redirects and body
    max_bytes: int = 50 << 20
    public_only: bool = False  # refuse non-public addresses (every hop), no proxy: for a server's fetches


class FetchError(Exception):
    """Why a fetch failed; `transient` failures (timeouts, 429, 5xx) are worth retrying later."""

    def __init__(self, reason: str, transient: bool):
        super().__init__(reason)
        self.reason = reason
        self.transient = transient
        self.retry_after: float | None = None


class AddressRefused(FetchError):
    """The URL's host resolves to an address a `public_only` fetch must not reach."""

    def __init__(self, reason: str = "refused: the host is not a public address"):
        super().__init__(reason, transient=False)


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


NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: the IPv4 address in the last 32 bits
NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215 local-use NAT64: never public


def address_refused(address: str) -> bool:
    """True for loopback, private, link-local, reserved, multicast, unspecified and other non-global
    addresses. An IPv6 address that stands for an IPv4 one is judged as that IPv4 address: IPv4-mapped
    (::ffff:a.b.c.d), 6to4 (2002::/16) and NAT64 (64:ff9b::/96); local-use NAT64 (64:ff9b:1::/48) and
    the deprecated IPv4-compatible form (::a.b.c.d, in the reserved ::/8) are always refused."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return True
    if ip.version == 6:
        if ip in NAT64_LOCAL:
            return True
        embedded = ip.ipv4_mapped or ip.sixtofour or (ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
                                                      if ip in NAT64 else None)
        ip = ip if embedded is None else embedded
    return (ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_reserved or ip.is_multicast
            or ip.is_unspecified or not ip.is_global)


def _is_refused(address: str) -> bool:
    """The public-only connection check: `address_refused`, looked up when called."""
    return address_refused(address)


# ---------------------------------------------------------------- HTTP with a total deadline

REDIRECT_CODES = {301, 302, 303, 307, 308}
MAX_REDIRECTS = 10
HEADERS = {"User-Agent": USER_AGENT, "Accept": "image/*,*/*;q=0.5", "Accept-Encoding": "identity"}


def fetch_once(url: str, timeout: float, max_bytes: int, public_only: bool = False) -> bytes:
    """One GET that takes at most `timeout` seconds in all (connect, headers, redirects, body), over
    pooled keep-alive connections (connections.py); `public_only`: AddressRefused for a host (or
    redirect target) that is not a public address."""
    import httpx

    from .connections import AddressNotAllowed, DeadlineExceeded, request_deadline

    try:
        with request_deadline(timeout) as deadline:
            return _get(_wire_url(url), max_bytes, deadline, public_only)
    except FetchError:
        raise
    except AddressNotAllowed:
        raise AddressRefused() from None
    except (httpx.TimeoutException, DeadlineExceeded):
        raise FetchError("too slow (deadline exceeded)", transient=True) from None
    except (httpx.InvalidURL, httpx.UnsupportedProtocol, ValueError) as exc:
        raise FetchError(f"invalid URL ({exc})", transient=False) from None
    except (httpx.HTTPError, OSError) as exc:
        raise FetchError(f"network: {str(exc) or type(exc).__name__}", transient=True) from None


def _get(url: str, max_bytes: int, deadline: Deadline, public_only: bool) -> bytes:
    """GET, following redirects only to allowed (http or https) URLs, checked on every hop."""
    from .connections import env_proxy, shared_client

    for _ in range(MAX_REDIRECTS + 1):
        client = shared_client(_is_refused) if public_only else shared_client(None, env_proxy(url))
        with client.stream("GET", url, headers=HEADERS, timeout=deadline.left()) as resp:
            location = resp.headers.get("location")
            if resp.status_code in REDIRECT_CODES and location is not None:
                url = _redirect_target(url, location)
                continue
            if resp.status_code >= 300:
                raise _http_error(resp.status_code, resp.headers)
            if int(resp.headers.get("content-length") or 0) > max_bytes:
                raise FetchError(f"larger than {max_bytes} bytes", transient=False)
            return _read_limited(resp.iter_raw(64 << 10), max_bytes, deadline)
    raise FetchError("redirect loop or too many redirects", transient=False)


def _redirect_target(url: str, location: str) -> str:
    try:
        target = urljoin(url, location.strip())
    except ValueError:
        target = location
    if not valid_url(target):
        raise FetchError(f"blocked redirect to {target[:200]!s}", transient=False)
    return _wire_url(target)


def _read_limited(blocks, max_bytes: int, deadline: Deadline) -> bytes:
    chunks, total = [], 0
    for block in blocks:
        total += len(block)
        if total > max_bytes:
            raise FetchError(f"larger than {max_bytes} bytes", transient=False)
        deadline.left()
        chunks.append(block)
    return b"".join(chunks)


def _http_error(code: int, headers) -> FetchError:
    if 300 <= code < 400:
        return FetchError("redirect loop or too many redirects", transient=False)
    retry_after = headers.get("Retry-After")
    err = FetchError(f"HTTP {code}", transient=code in TRANSIENT_CODES)
    err.retry_after = float(retry_after) if retry_after and retry_after.isdigit() else None
    return err


def fetch_bytes(url: str, options: FetchOptions = FetchOptions()) -> bytes:
    """Fetch a URL with retries and backoff on 429/5xx/timeouts; raises UserError when it fails."""
    try:
        return fetch_with_retries(url, options)
    except FetchError as exc:
        raise UserError(f"Could not fetch {url}: {exc.reason}.") from None


def fetch_with_retries(url: str, options: FetchOptions) -> bytes:
    """Fetch a URL, retrying transient failures (429/5xx/timeouts); raises the last FetchError."""
    for attempt in range(options.retries + 1):
        try:
            return fetch_once(url, options.timeout, options.max_bytes, options.public_only)
        except FetchError as exc:
            if not exc.transient or attempt == options.retries:
                raise
            wait = exc.retry_after or options.backoff * (2 ** attempt) * (1 + random.random() / 2)
            time.sleep(min(wait, 30.0))
    raise AssertionError("unreachable")
