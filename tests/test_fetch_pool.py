"""fetch over pooled keep-alive connections (connections.py): one connection per host reused across
requests, HTTPS trusted through SSL_CERT_FILE, HTTP/2 when a server offers it, the deadline on a reused
connection, no cookies kept, environment proxies for downloads but never for public-only fetches."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from stylesearch.ingest import connections
from stylesearch.ingest.fetch import FetchError, fetch_once

BODY = b"\xff\xd8" + bytes(range(256)) * 40


class KeepAliveServer:
    """HTTP/1.1 with keep-alive; counts connections, records request lines and Cookie headers.
    /img sets a cookie, /close closes its connection after the answer without a Connection header, /trickle sends one body byte every 0.1 s, anything else (absolute proxy
    form too) answers BODY."""

    def __init__(self, tls: ssl.SSLContext | None = None):
        self.connections, self.paths, self.cookies = 0, [], []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def setup(self):
                server.connections += 1
                super().setup()

            def do_GET(self):
                server.paths.append(self.path)
                server.cookies.append(self.headers.get("Cookie"))
                if self.path.endswith("/trickle"):
                    return server.trickle(self)
                self.send_response(200)
                self.send_header("Content-Length", str(len(BODY)))
                if self.path.endswith("/img"):
                    self.send_header("Set-Cookie", "session=abc; Path=/")
                self.end_headers()
                self.wfile.write(BODY)
                self.close_connection = self.path.endswith("/close")  # closed without saying so

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.handle_error = lambda request, address: None
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://localhost:{self.httpd.server_address[1]}" if tls else \
            f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    @staticmethod
    def trickle(h):
        h.send_response(200)
        h.send_header("Content-Length", "100000")
        h.end_headers()
        try:
            for _ in range(100):
                h.wfile.write(b"a")
                h.wfile.flush()
                time.sleep(0.1)
        except OSError:
            pass

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fresh_pool():
    connections.reset_clients()
    yield
    connections.reset_clients()


@pytest.fixture
def keepalive(fresh_pool):
    s = KeepAliveServer()
    yield s
    s.close()


def self_signed(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def test_requests_to_one_host_share_one_kept_alive_connection(keepalive):
    bodies = [fetch_once(f"{keepalive.url}/{n}.jpg", timeout=5, max_bytes=1 << 20) for n in range(20)]
    assert bodies == [BODY] * 20 and keepalive.paths == [f"/{n}.jpg" for n in range(20)]
    assert keepalive.connections == 1  # one urllib connection per request before: 20


def test_a_request_deadline_cuts_every_wait_of_its_own_thread_until_its_block_ends():
    seen = []
    assert connections.time_left(7.0, TimeoutError) == 7.0  # no deadline: a wait keeps its own timeout
    with connections.request_deadline(0.3) as deadline:
        assert 0.2 < connections.time_left(7.0, TimeoutError) <= 0.3 and connections.time_left(0.05, OSError) == 0.05
        thread = threading.Thread(target=lambda: seen.append(connections.time_left(7.0, TimeoutError)))
        thread.start()
        thread.join()
        time.sleep(0.35)
        with pytest.raises(ConnectionAbortedError, match="deadline exceeded"):
            connections.time_left(7.0, ConnectionAbortedError)  # the wait's own error, for httpcore to map
        with pytest.raises(connections.DeadlineExceeded):
            deadline.left()
    assert seen == [7.0] and connections.time_left(None, TimeoutError) is None


def test_a_connection_the_server_closed_while_idle_is_not_reused(keepalive, monkeypatch):
    monkeypatch.setattr(connections, "IDLE_PROBE_SECONDS", 0.2)
    assert fetch_once(keepalive.url + "/close", timeout=5, max_bytes=1 << 20) == BODY
    time.sleep(0.3)  # idle past IDLE_PROBE_SECONDS: the pool polls it, sees the close and opens another
    assert fetch_once(keepalive.url + "/0.jpg", timeout=5, max_bytes=1 << 20) == BODY
    assert keepalive.connections == 2 and keepalive.paths == ["/close", "/0.jpg"]


def test_the_deadline_holds_on_a_reused_connection_and_cookies_are_not_kept(keepalive):
    fetch_once(keepalive.url + "/img", timeout=5, max_bytes=1 << 20)  # sets a cookie; its connection is pooled
    start = time.monotonic()
    with pytest.raises(FetchError, match="too slow"):
        fetch_once(keepalive.url + "/trickle", timeout=0.5, max_bytes=1 << 20)
    assert time.monotonic() - start < 1.5  # 0.5 s in all, although a byte comes every 0.1 s
    assert fetch_once(keepalive.url + "/img", timeout=5, max_bytes=1 << 20) == BODY
    assert keepalive.cookies == [None, None, None]


def test_https_trusts_the_certificate_named_by_ssl_cert_file(tmp_path, monkeypatch, fresh_pool):
    cert, key = self_signed(tmp_path)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    server = KeepAliveServer(tls)
    try:
        with pytest.raises(FetchError, match="network"):  # not trusted by the system store
            fetch_once(server.url + "/a.jpg", timeout=5, max_bytes=1 << 20)
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        connections.reset_clients()
        assert [fetch_once(f"{server.url}/{n}.jpg", timeout=5, max_bytes=1 << 20) for n in range(5)] == [BODY] * 5
        assert server.connections == 1  # one kept-alive connection for all five (the refused one got no handler)
    finally:
        server.close()


def test_environment_proxy_is_used_for_downloads_never_for_public_only_fetches(keepalive, monkeypatch):
    for name in ("no_proxy", "NO_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", keepalive.url)
    assert fetch_once("http://images.invalid/a.jpg", timeout=5, max_bytes=1 << 20) == BODY
    assert keepalive.paths == ["http://images.invalid/a.jpg"]  # the proxy got the absolute URL
    with pytest.raises(FetchError):  # the name resolves nowhere and no proxy is asked
        fetch_once("http://images.invalid/b.jpg", timeout=5, max_bytes=1 << 20, public_only=True)
    monkeypatch.setenv("no_proxy", "images.invalid")
    with pytest.raises(FetchError, match="network"):
        fetch_once("http://images.invalid/c.jpg", timeout=5, max_bytes=1 << 20)
    assert keepalive.paths == ["http://images.invalid/a.jpg"]


def test_http2_is_used_when_the_server_offers_it(tmp_path, monkeypatch, fresh_pool):
    pytest.importorskip("h2")
    import h2.config
    import h2.connection
    import h2.events

    cert, key = self_signed(tmp_path)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    tls.set_alpn_protocols(["h2"])
    listener = socket.create_server(("127.0.0.1", 0))
    accepted, streams = [], []

    def serve():
        sock, _ = listener.accept()
        conn = tls.wrap_socket(sock, server_side=True)
        accepted.append(conn.selected_alpn_protocol())
        h2conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        h2conn.initiate_connection()
        conn.sendall(h2conn.data_to_send())
        while data := conn.recv(65535):
            for event in h2conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    streams.append(dict(event.headers)[b":path"].decode())
                    h2conn.send_headers(event.stream_id, [(":status", "200"), ("content-length", str(len(BODY)))])
                    h2conn.send_data(event.stream_id, BODY, end_stream=True)
            conn.sendall(h2conn.data_to_send())

    threading.Thread(target=serve, daemon=True).start()
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    connections.reset_clients()
    url = f"https://localhost:{listener.getsockname()[1]}"
    assert [fetch_once(f"{url}/{n}.jpg", timeout=5, max_bytes=1 << 20) for n in range(3)] == [BODY] * 3
    assert accepted == ["h2"] and streams == ["/0.jpg", "/1.jpg", "/2.jpg"]  # three streams, one connection
    listener.close()
