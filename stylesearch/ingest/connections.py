"""Pooled keep-alive HTTP(S) connections for fetch.py: one shared httpx client per kind of fetch, HTTP/2
where a server offers it (ALPN), connections kept per host and reused across requests and threads.

Two guards live at the connection layer, so they hold for every connection the pool opens, redirects
and reconnects included:
- the deadline: a request's one `Deadline` (`request_deadline`, which fetch.py also checks between
  body blocks and hands httpx as the request's timeout) bounds every connect, TLS handshake, write and
  read the calling thread makes, so a request ends by its total deadline however slowly a server
  trickles bytes;
- public-only clients resolve the host, refuse it unless every address is allowed, connect only to
  those checked addresses (no second lookup to rebind) and check the address actually connected to.

Certificates are checked against the system store (`SSL_CERT_FILE` / `SSL_CERT_DIR` honoured, as with
Python's own `ssl` defaults). No cookies are kept, no .netrc is read; proxies come from the environment
(`*_PROXY`, `NO_PROXY`) for downloads only: public-only fetches never use one.
"""

from __future__ import annotations

import functools
import os
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.cookiejar import CookieJar, DefaultCookiePolicy
from urllib.parse import urlsplit

import httpcore
import httpx

KEEPALIVE_SECONDS = 20.0  # an idle pooled connection is closed after this long
KEEPALIVE_CONNECTIONS = 100  # idle connections kept open, all hosts together
IDLE_PROBE_SECONDS = 1.0  # a connection idle this long is probed for a server's close before it is reused

_local = threading.local()  # .deadline: the Deadline of the request the calling thread is making
_clients: dict[tuple, httpx.Client] = {}
_clients_lock = threading.Lock()


class AddressNotAllowed(Exception):
    """A public-only connection was asked to reach an address its check refuses."""


class DeadlineExceeded(TimeoutError):
    """A request's total time (connect, headers, redirects, body) ran out."""


class Deadline:
    """The monotonic time by which a request must end."""

    def __init__(self, seconds: float):
        self.at = time.monotonic() + seconds

    def left(self, timeout: float | None = None, error: type[Exception] = DeadlineExceeded) -> float:
        """The seconds left, cut to `timeout` when given; raises `error` once the deadline has passed."""
        left = self.at - time.monotonic()
        if left <= 0:
            raise error("deadline exceeded")
        return left if timeout is None else min(timeout, left)


@contextmanager
def request_deadline(seconds: float) -> Iterator[Deadline]:
    """A deadline `seconds` from now that every network wait of the calling thread inside this block
    keeps; yields it, for the caller's own checks between waits."""
    deadline = Deadline(seconds)
    before, _local.deadline = getattr(_local, "deadline", None), deadline
    try:
        yield deadline
    finally:
        _local.deadline = before


def time_left(timeout: float | None, timeout_error: type[Exception]) -> float | None:
    """`timeout` cut to the calling thread's deadline; `timeout_error` once the deadline has passed."""
    deadline: Deadline | None = getattr(_local, "deadline", None)
    return timeout if deadline is None else deadline.left(timeout, timeout_error)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every wait keeps the deadline of the request using it at the time.

    The pool asks every idle connection whether it is readable (the server closed it) each time it
    hands out or takes back a connection, holding its lock: one poll per idle connection, each giving
    up the GIL, which a busy process takes milliseconds to get back, so with many threads requests
    queued on that lock. A connection used less than IDLE_PROBE_SECONDS ago is answered without a
    poll: no server's keep-alive timeout is that short (1 s is below gunicorn's 2 s and the 5 s of
    Apache, Node and uvicorn), and one that does close it makes a transient failure that is retried."""

    def __init__(self, stream: httpcore.NetworkStream):
        self._stream, self._used = stream, time.monotonic()

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data = self._stream.read(max_bytes, time_left(timeout, httpcore.ReadTimeout))
        self._used = time.monotonic()
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, time_left(timeout, httpcore.WriteTimeout))
        self._used = time.monotonic()

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        timeout = time_left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str):
        if info == "is_readable" and time.monotonic() - self._used < IDLE_PROBE_SECONDS:
            return False
        return self._stream.get_extra_info(info)


class _GuardedBackend(httpcore.NetworkBackend):
    """httpcore's socket backend with the deadline kept and, given `refuse`, only allowed addresses."""

    def __init__(self, refuse: Callable[[str], bool] | None):
        self._base, self._refuse = httpcore.SyncBackend(), refuse

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options=None) -> httpcore.NetworkStream:
        timeout = time_left(timeout, httpcore.ConnectTimeout)
        if self._refuse is None:
            return _DeadlineStream(self._base.connect_tcp(host, port, timeout, local_address, socket_options))
        return _DeadlineStream(self._connect_allowed(host, port, timeout, local_address, socket_options))

    def _connect_allowed(self, host, port, timeout, local_address, socket_options) -> httpcore.NetworkStream:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not addresses or any(self._refuse(address) for address in addresses):
            raise AddressNotAllowed(host)
        error: Exception | None = None
        for address in addresses:  # numeric addresses: connecting looks nothing up again
            try:
                stream = self._base.connect_tcp(address, port, time_left(timeout, httpcore.ConnectTimeout),
                                                local_address, socket_options)
            except httpcore.ConnectError as exc:
                error = exc
                continue
            if self._refuse(str(stream.get_extra_info("server_addr")[0])):
                stream.close()
                raise AddressNotAllowed(host)
            return stream
        raise error or httpcore.ConnectError("no address to connect to")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class _GuardedTransport(httpx.HTTPTransport):
    """httpx's transport over a connection pool (or an HTTP proxy) that opens connections through
    `_GuardedBackend`; HTTP/2 is offered when the h2 package is installed."""

    def __init__(self, refuse: Callable[[str], bool] | None, proxy: str | None):
        context = ssl.create_default_context()
        super().__init__(verify=context, trust_env=False)
        backend = _GuardedBackend(refuse)
        pool = dict(ssl_context=context, max_connections=None, max_keepalive_connections=KEEPALIVE_CONNECTIONS,
                    keepalive_expiry=KEEPALIVE_SECONDS, http1=True, http2=http2_available(),
                    network_backend=backend)
        if proxy is None:
            self._pool = httpcore.ConnectionPool(**pool)
        else:
            url = httpx.URL(proxy)
            self._pool = httpcore.HTTPProxy(
                proxy_url=httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=b"/"),
                proxy_auth=(url.username, url.password) if url.username else None, **pool)


def http2_available() -> bool:
    try:
        import h2  # noqa: F401
    except ImportError:
        return False
    return True


PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY", "REQUEST_METHOD")


def env_proxy(url: str) -> str | None:
    """The proxy the environment names for this URL (urllib's rules: `*_PROXY`, `NO_PROXY`); http(s) only.
    Worked out again whenever a variable those rules read changes (reading all the environment each
    request would cost more than a pooled request itself)."""
    parts = urlsplit(url)
    return _env_proxy(parts.scheme, parts.netloc, tuple(os.environ.get(name) for name in PROXY_VARIABLES))


@functools.lru_cache(maxsize=1024)
def _env_proxy(scheme: str, netloc: str, environment: tuple) -> str | None:
    proxy = urllib.request.getproxies().get(scheme)
    if not proxy or urllib.request.proxy_bypass(netloc) or urlsplit(proxy).scheme not in ("http", "https"):
        return None
    return proxy


def shared_client(refuse: Callable[[str], bool] | None, proxy: str | None = None) -> httpx.Client:
    """The process's pooled client for this kind of fetch: `refuse` set = public-only (never proxied)."""
    key = (refuse is not None, None if refuse else proxy)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            transport = _GuardedTransport(refuse, key[1])
            client = _clients[key] = httpx.Client(transport=transport, trust_env=False, follow_redirects=False,
                                                  cookies=CookieJar(DefaultCookiePolicy(allowed_domains=[])))
    return client


def reset_clients() -> None:
    """Close every pooled connection; the next fetch makes new clients that read the environment
    (certificate store, proxies) again."""
    with _clients_lock:
        clients = list(_clients.values())
        _clients.clear()
        _env_proxy.cache_clear()
    for client in clients:
        client.close()
