"""Images/s of `download` from loopback servers of generated JPEGs (320x240, ~28 KiB), every image
validated, hashed and cataloged, 16 workers, 16 per host:

1. HTTP with no connection cost (--count images);
2. HTTPS (a self-signed certificate made here, trusted through SSL_CERT_FILE) where every NEW
   connection costs --connect-delay seconds before its TLS handshake, as round trips to a real host
   do (--https-count images): this checkout beside an earlier revision (--previous DIR, e.g. one made
   by `git worktree add /tmp/prev d7d31f5`: urllib, one connection per request) and img2dataset
   (--peers, from benchmarks/.venvs/img2dataset made by `python benchmarks/peers.py img2dataset`,
   16 threads, no re-encoding), all against the same server in the same run.

The server runs in its own process; each downloader runs in its own process and times only its
download call. Every server answer is HTTP/1.1 with keep-alive (the server offers no HTTP/2).

Usage: python benchmarks/download_speed.py [--count 1000] [--https-count 2000] [--connect-delay 0.05]
                                           [--previous DIR] [--peers]
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from peers import peer_bin

REPO = Path(__file__).resolve().parents[1]
WORKERS = 16

STYLESEARCH = """
import json, sys, time
from pathlib import Path
from stylesearch.ingest.download import DownloadOptions, download
from stylesearch.ingest.sources import Entry
from stylesearch.store.paths import dataset_paths
url, count, folder = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
entries = [Entry(f"{url}/{n}.jpg") for n in range(count)]
options = DownloadOptions(workers=%d, per_host=%d)
start = time.perf_counter()
result = download(dataset_paths("bench", folder), entries, options)
seconds = time.perf_counter() - start
start = time.perf_counter()
again = download(dataset_paths("bench", folder), entries, options)
print(json.dumps({"ok": result.ok, "failed": result.failed, "seconds": seconds,
                  "rerun": time.perf_counter() - start, "skipped": again.skipped_done}))
""" % (WORKERS, WORKERS)

IMG2DATASET = """
import json, sys, time
from img2dataset import download
urls, out, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
start = time.perf_counter()
download(url_list=urls, output_folder=out, processes_count=1, thread_count=%d, resize_mode="no",
         output_format="files", input_format="txt", disable_all_reencoding=True, timeout=20)
seconds = time.perf_counter() - start
import glob
print(json.dumps({"ok": len(glob.glob(out + "/*/*.jpg")), "failed": None, "seconds": seconds}))
""" % WORKERS


def jpegs(count: int) -> list[bytes]:
    sys.path.insert(0, str(REPO))
    from stylesearch.ingest.samples import render

    bodies = []
    for n in range(count):
        buf = io.BytesIO()
        render(("stripes", "dots", "rings")[n % 3], "cool", n, (320, 240)).save(buf, format="JPEG", quality=85)
        bodies.append(buf.getvalue())
    return bodies


def serve(ready, bodies: list[bytes], tls: tuple[str, str] | None, connect_delay: float) -> None:
    """Runs in a child process: serves /N.jpg; each new connection waits `connect_delay` seconds first."""
    context = None
    if tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def setup(self):
            time.sleep(connect_delay)
            if context is not None:
                self.request = context.wrap_socket(self.request, server_side=True)
            super().setup()

        def do_GET(self):
            body = bodies[int(self.path.strip("/").split(".")[0])]
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.handle_error = lambda request, address: None
    ready.put(httpd.server_address[1])
    httpd.serve_forever()


def start_server(bodies, tls, connect_delay) -> tuple[multiprocessing.Process, int]:
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Queue()
    proc = ctx.Process(target=serve, args=(ready, bodies, tls, connect_delay), daemon=True)
    proc.start()
    return proc, ready.get(timeout=30)


def self_signed(folder: Path) -> tuple[str, str]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return str(cert), str(key)


def run_json(command: list[str], env: dict) -> dict:
    out = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env})
    if out.returncode != 0:
        raise RuntimeError(f"{command[0]} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def stylesearch_run(checkout: Path, url: str, count: int, tmp: Path, env: dict) -> dict:
    folder = Path(tempfile.mkdtemp(dir=tmp))
    return run_json([sys.executable, "-c", STYLESEARCH, url, str(count), str(folder)],
                    {**env, "PYTHONPATH": str(checkout)})


def img2dataset_run(url: str, count: int, tmp: Path, env: dict) -> dict | None:
    python = peer_bin("img2dataset")
    if python is None:
        return None
    urls = tmp / "urls.txt"
    urls.write_text("".join(f"{url}/{n}.jpg\n" for n in range(count)))
    return run_json([str(python), "-c", IMG2DATASET, str(urls), str(tmp / "img2dataset"), str(count)], env)


def line(name: str, count: int, r: dict, base: dict | None = None) -> str:
    rate = count / r["seconds"]
    ratio = f"  {base['seconds'] / r['seconds']:.2f}x of {base['name']}" if base else ""
    failed = "" if r.get("failed") is None else f", {r['failed']} failed"
    rerun = f"; resume rerun {r['rerun']:.2f} s" if "rerun" in r else ""
    return f"  {name:<28} {r['ok']} ok{failed} in {r['seconds']:.2f} s = {rate:.1f} images/s{ratio}{rerun}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="images in the plain HTTP case (0: skip it)")
    parser.add_argument("--https-count", type=int, default=2000, help="images in the HTTPS case (0: skip it)")
    parser.add_argument("--connect-delay", type=float, default=0.05, help="seconds each new connection costs")
    parser.add_argument("--previous", type=Path, help="a checkout of an earlier revision to run beside this one")
    parser.add_argument("--peers", action="store_true", help="also run img2dataset (benchmarks/.venvs)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    bodies = jpegs(max(args.count, args.https_count))
    size = sum(map(len, bodies)) / len(bodies) / 1024
    try:
        if args.count:
            proc, port = start_server(bodies[:args.count], None, 0.0)
            print(f"HTTP loopback, no connection cost, {args.count} x {size:.0f} KiB JPEGs:")
            print(line("stylesearch", args.count, stylesearch_run(REPO, f"http://127.0.0.1:{port}", args.count,
                                                                   tmp, {})), flush=True)
            proc.terminate()
        if args.https_count:
            https_case(args, bodies[:args.https_count], size, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def https_case(args, bodies: list[bytes], size: float, tmp: Path) -> None:
    count, tls = len(bodies), self_signed(tmp)
    proc, port = start_server(bodies, tls, args.connect_delay)
    url, env = f"https://localhost:{port}", {"SSL_CERT_FILE": tls[0]}
    print(f"HTTPS loopback, {args.connect_delay * 1000:.0f} ms per new connection, {count} x {size:.0f} KiB JPEGs, "
          f"{WORKERS} workers:")
    now = {**stylesearch_run(REPO, url, count, tmp, env), "name": "this checkout"}
    if args.previous:
        before = {**stylesearch_run(args.previous.resolve(), url, count, tmp, env), "name": "previous"}
        print(line(f"stylesearch previous ({args.previous})", count, before))
    print(line("stylesearch (this checkout)", count, now, before if args.previous else None))
    if args.peers:
        peer = img2dataset_run(url, count, tmp, env)
        if peer is None:
            print("  img2dataset: not installed (python benchmarks/peers.py img2dataset)")
        else:
            print(line("img2dataset", count, {**peer, "name": "img2dataset"}))
            print(f"  stylesearch / img2dataset: {peer['seconds'] / now['seconds']:.2f}x")
    proc.terminate()


if __name__ == "__main__":
    main()
