"""Images/s of `download` from loopback servers of generated JPEGs (320x240, ~28 KiB), every image
validated, hashed and cataloged, --workers workers (16) and as many per host, in two cases:

1. plain HTTP, no connection cost (--count images);
2. HTTPS (a self-signed certificate made here, trusted through SSL_CERT_FILE) where every NEW
   connection costs --connect-delay seconds (--https-count images).

Each case runs, against the same server in the same run: this checkout; with --previous DIR an
earlier revision (e.g. d7d31f5 from `git worktree add /tmp/prev d7d31f5`: urllib, one connection per
request); with --peers img2dataset (benchmarks/.venvs/img2dataset from `python benchmarks/peers.py
img2dataset`, --workers threads, no re-encoding; urllib, one connection per request). Each downloader
runs in its own process, imports only its own checkout (checked: the child reports the file it loaded)
and times only its download call; the server counts the connections each run opens.

The connection cost: the server gives every connection its own thread, which sleeps --connect-delay
before reading the client's TLS hello, so that connection's handshake, and the first request on it,
waits that long, like the round trips of a TCP and TLS handshake to a distant host. Connections
opened at the same time each wait their own delay, in parallel, as over a real network; a request on
an open (kept-alive) connection pays nothing. The server answers HTTP/1.1 with keep-alive, and with
--h2 it also offers HTTP/2 by ALPN (one connection then carries many concurrent requests).

Usage: python benchmarks/download_speed.py [--count 1000] [--https-count 2000] [--connect-delay 0.05]
                                           [--workers 16] [--h2] [--previous DIR] [--peers]
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from peers import peer_bin, peer_version

REPO = Path(__file__).resolve().parents[1]

STYLESEARCH = """
import json, sys, time
from pathlib import Path
import stylesearch.ingest.fetch
from stylesearch.ingest.download import DownloadOptions, download
from stylesearch.ingest.sources import Entry
from stylesearch.store.paths import dataset_paths
url, count, folder, workers = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
entries = [Entry(f"{url}/{n}.jpg") for n in range(count)]
options = DownloadOptions(workers=workers, per_host=workers)
start = time.perf_counter()
result = download(dataset_paths("bench", folder), entries, options)
seconds = time.perf_counter() - start
start = time.perf_counter()
again = download(dataset_paths("bench", folder), entries, options)
print(json.dumps({"ok": result.ok, "failed": result.failed, "seconds": seconds, "module": stylesearch.ingest.fetch.__file__,
                  "rerun": time.perf_counter() - start, "skipped": again.skipped_done}))
"""

IMG2DATASET = """
import glob, json, sys, time
from img2dataset import download
urls, out, count, workers = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
start = time.perf_counter()
download(url_list=urls, output_folder=out, processes_count=1, thread_count=workers, resize_mode="no",
         output_format="files", input_format="txt", disable_all_reencoding=True, timeout=20)
seconds = time.perf_counter() - start
print(json.dumps({"ok": len(glob.glob(out + "/*/*.jpg")), "failed": None, "seconds": seconds}))
"""


def jpegs(count: int) -> list[bytes]:
    sys.path.insert(0, str(REPO))
    from stylesearch.ingest.samples import render

    bodies = []
    for n in range(count):
        buf = io.BytesIO()
        render(("stripes", "dots", "rings")[n % 3], "cool", n, (320, 240)).save(buf, format="JPEG", quality=85)
        bodies.append(buf.getvalue())
    return bodies


def body_of(bodies: list[bytes], path: str) -> bytes:
    return bodies[int(path.rsplit("/", 1)[-1].split(".")[0])]


def serve_h2(sock, bodies: list[bytes]) -> None:
    """One HTTP/2 connection: answers every stream with its JPEG, within the client's flow-control windows."""
    import h2.config
    import h2.connection
    import h2.events

    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    pending: dict[int, bytes] = {}  # stream -> the part of its body not sent yet
    while data := sock.recv(1 << 16):
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                body = pending[event.stream_id] = body_of(bodies, dict(event.headers)[":path"])
                conn.send_headers(event.stream_id, [(":status", "200"), ("content-type", "image/jpeg"),
                                                    ("content-length", str(len(body)))])
            elif isinstance(event, h2.events.StreamReset):
                pending.pop(event.stream_id, None)
            elif isinstance(event, h2.events.ConnectionTerminated):
                return
        for stream in list(pending):
            body = pending.pop(stream)
            while n := min(len(body), conn.local_flow_control_window(stream), conn.max_outbound_frame_size):
                conn.send_data(stream, body[:n], end_stream=n == len(body))
                body = body[n:]
            if body:
                pending[stream] = body
        sock.sendall(conn.data_to_send())


def serve(ready, opened, bodies: list[bytes], tls: tuple[str, str] | None, connect_delay: float, h2: bool) -> None:
    """Runs in a child process: serves /N.jpg, a thread per connection; each new connection waits
    `connect_delay` seconds before its TLS handshake; `opened` counts connections."""
    context = None
    if tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
        context.set_alpn_protocols(["h2", "http/1.1"] if h2 else ["http/1.1"])

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def setup(self):
            with opened.get_lock():
                opened.value += 1
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as nginx and CDNs do
            time.sleep(connect_delay)
            if context is not None:
                self.request = context.wrap_socket(self.request, server_side=True)
            super().setup()

        def handle(self):
            if context is not None and self.request.selected_alpn_protocol() == "h2":
                return serve_h2(self.request, bodies)
            super().handle()

        def do_GET(self):
            body = body_of(bodies, self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    ThreadingHTTPServer.request_queue_size = 1024  # a burst of connects is never held back by the backlog
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.handle_error = lambda request, address: None
    ready.put(httpd.server_address[1])
    httpd.serve_forever()


class Server:
    """The loopback server in its own process, with the count of connections opened so far."""

    def __init__(self, bodies, tls=None, connect_delay: float = 0.0, h2: bool = False):
        ctx = multiprocessing.get_context("fork")
        ready, self.opened = ctx.Queue(), ctx.Value("l", 0)
        self.proc = ctx.Process(target=serve, args=(ready, self.opened, bodies, tls, connect_delay, h2), daemon=True)
        self.proc.start()
        self.port = ready.get(timeout=30)

    def run(self, downloader, *args) -> dict:
        """`downloader(*args)`'s result with the connections it opened."""
        before = self.opened.value
        result = downloader(*args)
        return {**result, "connections": self.opened.value - before}

    def close(self) -> None:
        self.proc.terminate()
        self.proc.join()


def self_signed(folder: Path) -> tuple[str, str]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return str(cert), str(key)


def run_json(command: list[str], env: dict, cwd: Path) -> dict:
    out = subprocess.run(command, check=False, capture_output=True, text=True, env={**os.environ, **env}, cwd=cwd)
    if out.returncode != 0:
        raise RuntimeError(f"{command[0]} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def stylesearch_run(checkout: Path, url: str, count: int, workers: int, tmp: Path, env: dict) -> dict:
    """`download` of one checkout: -P and a neutral working folder, so only PYTHONPATH names the code
    (`python -c` would otherwise put the current folder first, and the project's editable install after)."""
    folder = Path(tempfile.mkdtemp(dir=tmp))
    result = run_json([sys.executable, "-P", "-c", STYLESEARCH, url, str(count), str(folder), str(workers)],
                      {**env, "PYTHONPATH": str(checkout)}, tmp)
    if not Path(result["module"]).resolve().is_relative_to(checkout.resolve()):
        raise RuntimeError(f"the run for {checkout} imported {result['module']}")
    return result


def img2dataset_run(url: str, count: int, workers: int, tmp: Path, env: dict) -> dict:
    urls = Path(tempfile.mkdtemp(dir=tmp))
    (urls / "urls.txt").write_text("".join(f"{url}/{n}.jpg\n" for n in range(count)))
    return run_json([str(peer_bin("img2dataset")), "-c", IMG2DATASET, str(urls / "urls.txt"), str(urls / "out"),
                     str(count), str(workers)], env, tmp)


def line(name: str, count: int, r: dict, base: dict | None = None) -> str:
    rate = count / r["seconds"]
    ratio = f"  {base['seconds'] / r['seconds']:.2f}x of {base['name']}" if base else ""
    failed = "" if r.get("failed") is None else f", {r['failed']} failed"
    rerun = f"; resume rerun {r['rerun']:.2f} s" if "rerun" in r else ""
    return (f"  {name:<34} {r['ok']} ok{failed} in {r['seconds']:.2f} s = {rate:.1f} images/s over "
            f"{r['connections']} connections{ratio}{rerun}")


def compare(args, server: Server, url: str, count: int, tmp: Path, env: dict) -> None:
    """Every downloader against one server; prints each beside the previous revision and img2dataset."""
    now = {**server.run(stylesearch_run, REPO, url, count, args.workers, tmp, env), "name": "this checkout"}
    before = None
    if args.previous:
        before = {**server.run(stylesearch_run, args.previous, url, count, args.workers, tmp, env),
                  "name": "previous"}
        print(line(f"stylesearch previous ({args.previous})", count, before))
    print(line("stylesearch (this checkout)", count, now, before), flush=True)
    if not args.peers:
        return
    if peer_bin("img2dataset") is None:
        print("  img2dataset: not installed (python benchmarks/peers.py img2dataset)")
        return
    peer = {**server.run(img2dataset_run, url, count, args.workers, tmp, env), "name": "img2dataset"}
    print(line(f"img2dataset {peer_version('img2dataset')}", count, peer))
    print(f"  stylesearch / img2dataset: {peer['seconds'] / now['seconds']:.2f}x", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="images in the plain HTTP case (0: skip it)")
    parser.add_argument("--https-count", type=int, default=2000, help="images in the HTTPS case (0: skip it)")
    parser.add_argument("--connect-delay", type=float, default=0.05, help="seconds each new connection costs")
    parser.add_argument("--workers", type=int, default=16, help="download threads (and connections per host)")
    parser.add_argument("--h2", action="store_true", help="the HTTPS server also offers HTTP/2")
    parser.add_argument("--previous", type=Path, help="a checkout of an earlier revision to run beside this one")
    parser.add_argument("--peers", action="store_true", help="also run img2dataset (benchmarks/.venvs)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    bodies = jpegs(max(args.count, args.https_count))
    size = sum(map(len, bodies)) / len(bodies) / 1024
    try:
        if args.count:
            server = Server(bodies[:args.count])
            print(f"HTTP loopback, no connection cost, {args.count} x {size:.0f} KiB JPEGs, {args.workers} workers:")
            compare(args, server, f"http://127.0.0.1:{server.port}", args.count, tmp, {})
            server.close()
        if args.https_count:
            tls = self_signed(tmp)
            server = Server(bodies[:args.https_count], tls, args.connect_delay, args.h2)
            print(f"HTTPS loopback{' offering HTTP/2' if args.h2 else ''}, {args.connect_delay * 1000:.0f} ms per "
                  f"new connection, {args.https_count} x {size:.0f} KiB JPEGs, {args.workers} workers:")
            compare(args, server, f"https://localhost:{server.port}", args.https_count, tmp,
                    {"SSL_CERT_FILE": tls[0]})
            server.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
