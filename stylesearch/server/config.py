"""Server settings and the bind-safety rule (light: no FastAPI import)."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass

from ..errors import UserError

TOKEN_ENV = "STYLESEARCH_TOKEN"
FD_RESERVE = 128  # descriptors kept for files opened while serving (catalogs, indexes, images)
LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}
CLIP_PATHS = ("/knn-service", "/metadata", "/indices-list")  # clip-retrieval's back-end routes (clip_compat.py)


@dataclass(frozen=True)
class ServerConfig:
    """What the server serves and its limits."""

    root: str | None = None  # dataset root (None: $STYLESEARCH_HOME or ./datasets)
    datasets: tuple[str, ...] = ()  # served datasets; empty: every dataset under the root
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None  # required from clients when set (Bearer header or cookie)
    device: str = "auto"
    threads: int | None = None  # torch/FAISS threads per query (None: as the libraries choose); see state.py
    preload: bool = True  # load indexes and query models at start-up, in the background
    max_upload_bytes: int = 16 << 20  # multipart search bodies (query images)
    max_body_bytes: int = 1 << 20  # every other request body
    max_pixels: int = 40_000_000  # uploaded query images
    max_k: int = 1000
    max_terms: int = 32
    max_queue: int = 256  # library calls waiting for the engine thread; beyond: 503
    fetch_timeout: float = 10.0  # seconds for all query image URLs of a request (one try each, public hosts only)
    check_host: bool | None = None  # refuse foreign Host headers (DNS rebinding); None: when loopback, no token
    header_timeout: float = 10.0  # seconds to send a request's headers (from connect or the last response)
    max_connections: int | None = None  # open connections at most; None: what the descriptor limit allows
    cors_origins: tuple[str, ...] = ()  # web origins trusted like the page itself (CORS allowed, not cross-site)

    @property
    def host_checked(self) -> bool:
        return self.check_host if self.check_host is not None else (is_loopback(self.host) and not self.token)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost names."""
    name = host.strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def web_origin(text: str) -> str:
    """A `--cors-origin` value as browsers send it in `Origin` (scheme://host[:port], lower case); UserError
    for anything else ("*" included: trusting every site would let any page drive the server)."""
    from urllib.parse import urlsplit

    origin = text.strip().lower().rstrip("/")
    try:
        parts = urlsplit(origin)
        parts.port  # noqa: B018 - a port that is not a number raises ValueError
        valid = bool(re.fullmatch(r"https?://[a-z0-9.\-\[\]:]+", origin)) and bool(parts.hostname)
    except ValueError:
        valid = False
    if not valid:
        raise UserError(f"Invalid CORS origin {text!r}.", "Give a web origin such as http://127.0.0.1:1235 "
                        "(scheme, host and port only; '*' is not accepted).")
    return origin


def token_from_env(token: str | None) -> str | None:
    return token or os.environ.get(TOKEN_ENV) or None


def set_thread_env(threads: int) -> None:
    """Thread counts for numerical libraries, before any of them is imported."""
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond this machine without a token."""
    if not is_loopback(host) and not token:
        raise UserError(f"Refusing to listen on {host} without a token: anyone who can reach it could read "
                        "the collection and write judgments.",
                        f"Pass --token SECRET (or set {TOKEN_ENV}); clients send 'Authorization: Bearer SECRET', "
                        "the page takes it once as /?token=SECRET. Or bind to 127.0.0.1.")


def check_port_free(host: str, port: int) -> None:
    """Refuse at once, before anything claims to serve, an address and port that cannot be listened on
    (bound with SO_REUSEADDR, as the server binds)."""
    import socket

    from ..errors import PortBusy

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise PortBusy(f"Cannot listen on {host}:{port}: {exc.strerror or exc}.",
                       "Give an address of this machine, e.g. 127.0.0.1.") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise PortBusy(f"Cannot listen on {host}:{port}: {exc.strerror or exc}.",
                           "Another program (another stylesearch serve?) may be using that port: stop it, or "
                           "choose another port.") from None


def connection_limits(max_connections: int | None = None) -> tuple[int, int]:
    """(connections, accept batch) that fit in this process's file descriptors, its soft
    RLIMIT_NOFILE first raised to the hard limit. Besides the descriptors open now and FD_RESERVE,
    there is room for the connections and four batches of accepts (asyncio accepts up to a batch
    per loop turn, uvicorn's `backlog`; a connection is counted, and one closed to make room, two
    turns later), so that accept() does not fail with EMFILE. Batches of at most 128 keep turns
    short under a flood. `max_connections` (if lower) caps the connections."""
    try:
        import resource
    except ImportError:  # Windows: no descriptor limit to raise
        return max_connections or 1000, 128
    unlimited = resource.RLIM_INFINITY
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft = 1 << 20 if soft == unlimited else soft
    for wanted in (1 << 20, 10240) if hard == unlimited else (hard,):  # 10240: macOS's OPEN_MAX
        if soft >= wanted:
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
            break
        except (ValueError, OSError):
            continue
    try:
        in_use = len(os.listdir("/dev/fd"))
    except OSError:
        in_use = 64
    room = max(64, soft - in_use - FD_RESERVE)
    batch = min(128, room // 8)
    connections = room - 4 * batch
    return (min(connections, max_connections) if max_connections else connections), batch
