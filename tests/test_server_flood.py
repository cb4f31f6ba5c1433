"""A real server under a flood of connections that never finish their headers: it keeps below its
file-descriptor limit, answers an authenticated request at once, and closes idle, partial and
trickling connections after the header deadline. Loopback only, bounded (a few seconds)."""

from __future__ import annotations

import http.client
import json
import os
import resource
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from stylesearch.server.config import FD_RESERVE, connection_limits  # noqa: E402
from stylesearch.store.datasets import create_dataset  # noqa: E402
from stylesearch.store.paths import dataset_paths  # noqa: E402

TOKEN = "s3cret"
FD_LIMIT = 1024  # the server's RLIMIT_NOFILE, soft and hard: the flood is larger
FLOOD = 1500
GUARD = {"header_timeout": 1.5}  # what the server is run with besides the basics
SERVER = ("import json, resource, sys\n"
          "resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[2]), int(sys.argv[2])))\n"
          "from stylesearch.server.listen import serve\n"
          "from stylesearch.server.config import ServerConfig\n"
          "serve(ServerConfig(**json.loads(sys.argv[1])))")
PARTIAL = (b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n",
           f"GET /api/datasets HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n".encode())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root, guard: dict, fd_limit: int = FD_LIMIT):
    """The server in its own process with `fd_limit` descriptors; returns (process, port, stderr file)."""
    create_dataset(dataset_paths("tiny", root))
    port = free_port()
    config = {"root": str(root), "port": port, "token": TOKEN, "preload": False, **guard}
    log = open(root / "server.log", "w+b")  # noqa: SIM115 -- closed by the fixture
    proc = subprocess.Popen([sys.executable, "-c", SERVER, json.dumps(config), str(fd_limit)],
                            stdout=log, stderr=log, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise AssertionError(log.read().decode())
        try:
            status, _ = get(port, "/health", timeout=1)
            if status == 200:
                return proc, port, log
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError("server did not start")


def get(port: int, path: str, timeout: float) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def read_response(sock: socket.socket) -> bytes:
    """One whole response (headers and Content-Length body) from `sock`."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(1 << 16)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.lower().split(b"\r\n")
                      if line.startswith(b"content-length:")))
    while len(body) < length:
        body += sock.recv(1 << 16)
    return head + b"\r\n\r\n" + body


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """The server closed (or reset) `sock` within `within` seconds."""
    sock.settimeout(max(within, 0.001))
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except OSError:  # timeout
        return False


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < FLOOD + 200:
        pytest.skip("too few file descriptors for the flood")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, FLOOD + 400)), hard))
    proc, port, log = start_server(tmp_path_factory.mktemp("flood"), GUARD)
    yield port, log
    proc.terminate()
    proc.wait(timeout=10)
    log.close()
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_flood_of_partial_requests_does_not_starve_an_authenticated_one(server):
    port, log = server
    flood = []
    try:
        for i in range(FLOOD):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(PARTIAL[i % 2])
            flood.append(sock)
        start = time.monotonic()
        status, body = get(port, "/health", timeout=3)
        took = time.monotonic() - start
        assert status == 200 and json.loads(body)["status"] == "ok"
        assert took < 1.0, f"/health took {took:.2f} s during the flood"
        deadline = time.monotonic() + GUARD["header_timeout"] + 3
        still_open = [s for s in flood if not closed_by_server(s, deadline - time.monotonic())]
        assert not still_open, f"{len(still_open)} of {FLOOD} partial connections still open"
    finally:
        for sock in flood:
            sock.close()
    log.seek(0)
    assert b"out of system resource" not in log.read()  # asyncio's accept() EMFILE message
    assert get(port, "/health", timeout=3)[0] == 200


def test_the_header_deadline_closes_idle_partial_and_trickling_connections(server):
    port, _ = server
    timeout = GUARD["header_timeout"]
    idle = socket.create_connection(("127.0.0.1", port), timeout=5)
    partial = socket.create_connection(("127.0.0.1", port), timeout=5)
    partial.sendall(PARTIAL[1])
    trickle = socket.create_connection(("127.0.0.1", port), timeout=5)
    trickle.sendall(b"GET /health HTTP/1.1\r\nX-Slow: ")
    kept = socket.create_connection(("127.0.0.1", port), timeout=5)  # a response, then a partial next request
    kept.sendall(f"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
    assert read_response(kept).startswith(b"HTTP/1.1 200")
    kept.sendall(PARTIAL[0])
    start = time.monotonic()
    socks = (idle, partial, trickle, kept)
    closed_at: dict[int, float] = {}
    try:
        while len(closed_at) < len(socks) and time.monotonic() - start < timeout + 2.5:
            if trickle.fileno() not in closed_at:  # a byte of a header line every 0.1 s
                try:
                    trickle.sendall(b"X")
                except OSError:
                    pass
            for sock in socks:
                if sock.fileno() not in closed_at and closed_by_server(sock, 0.025):
                    closed_at[sock.fileno()] = time.monotonic() - start
            time.sleep(0.1)
        times = [closed_at.get(sock.fileno()) for sock in socks]
        assert None not in times, f"still open after {timeout + 2.5} s: {times}"
        assert all(timeout * 0.6 < t < timeout + 2 for t in times), times
    finally:
        for sock in socks:
            sock.close()


def test_connection_limits_raise_the_soft_limit_and_fit_under_it():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard < 1024:
        pytest.skip("needs a finite hard descriptor limit of 1024 or more")
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
        connections, batch = connection_limits()
        raised = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        in_use = len(os.listdir("/dev/fd"))
        assert raised == hard and 0 < batch <= 128 and connections > 0
        assert in_use + FD_RESERVE + connections + 4 * batch <= raised
        assert connection_limits(50) == (50, batch)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
