"""HTTP fetching for downloads and query images: URL checks, one total deadline per request,
redirects checked on every hop, size limit, retries with backoff, per-host politeness.
`public_only` (the server's query images) also refuses hosts that resolve to loopback, private,
link-local or reserved addresses, checked on every connection (redirects too), and uses no proxy.

Only http(s) is ever requested: URLs are validated before fetching and every redirect target is
checked again. A request attempt ends by its deadline however slowly a server sends headers or body.
"""

from __future__ import annotations

import functools
import http.client
import io
import ipaddress
import random
import re
import socket
import string
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from types import SimpleNamespace
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

from ..errors import UserError

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


def _public_connection(address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None):
    """socket.create_connection that first resolves the host and refuses it unless every address it
    resolves to is public; then connects to those checked addresses (no second lookup to rebind)."""
    host, port = address
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos or any(address_refused(str(info[4][0])) for info in infos):
        raise AddressRefused()
    last: OSError | None = None
    for family, kind, proto, _, sockaddr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    raise last or OSError("no address to connect to")


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

    def __init__(self, *args, deadline: _Deadline, public_only: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self._deadline = deadline
        if public_only:
            self._create_connection = _public_connection

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

    def __init__(self, deadline: _Deadline, public_only: bool = False):
        super().__init__()
        self._deadline, self._public_only = deadline, public_only

    def http_open(self, req):
        return self.do_open(functools.partial(_HTTPConnection, deadline=self._deadline,
                                              public_only=self._public_only), req)

    def https_open(self, req):
        return self.do_open(functools.partial(_HTTPSConnection, deadline=self._deadline,
                                              public_only=self._public_only), req)

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


def _opener(deadline: _Deadline, public_only: bool = False) -> urllib.request.OpenerDirector:
    """Only http(s) handlers: other schemes fail as unknown even if a redirect slipped through.
    `public_only`: no proxy (each connection's own address is what gets checked)."""
    opener = urllib.request.OpenerDirector()
    proxies = urllib.request.ProxyHandler({} if public_only else None)
    for handler in (proxies, _DeadlineHandler(deadline, public_only), _RedirectHandler(),
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


def fetch_once(url: str, timeout: float, max_bytes: int, public_only: bool = False) -> bytes:
    """One GET that takes at most `timeout` seconds in all (connect, headers, redirects, body);
    `public_only`: AddressRefused for a host (or redirect target) that is not a public address."""
    deadline = _Deadline(timeout)
    try:
        request = urllib.request.Request(_wire_url(url), headers={"User-Agent": USER_AGENT,
                                                                  "Accept": "image/*,*/*;q=0.5"})
        with _opener(deadline, public_only).open(request, timeout=timeout) as resp:
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
