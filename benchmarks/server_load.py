"""Load test of `stylesearch serve`: N concurrent clients for T seconds against a dataset of
COUNT items (random 512-d vectors, flat index, a `category` metadata field), over loopback.

Each client keeps one connection and loops: similar items of a random item (60%), a filtered
search with +/- item terms (30%), /health (10%). Prints requests/s, p50/p99 latency per kind and
overall, and the error count (any status but 200, or a failed connection).
Usage: python benchmarks/server_load.py [CLIENTS] [SECONDS] [COUNT]
"""

import http.client
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from stylesearch.index.build import build_index
from stylesearch.store.catalog import open_catalog
from stylesearch.store.paths import dataset_paths

SERVE = ("import sys; from stylesearch.cli.main import app, main; from stylesearch.cli import serve_cmd\n"
         "if not any(c.name == 'serve' for c in app.registered_commands): serve_cmd.register(app)\n"
         "sys.argv[0] = 'stylesearch'; main()")
clients = int(sys.argv[1]) if len(sys.argv) > 1 else 8
seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 30
count = int(sys.argv[3]) if len(sys.argv) > 3 else 100_000
CATEGORIES = ("summer", "winter", "spring", "autumn")


def build(root: str) -> None:
    paths = dataset_paths("load", root)
    data = np.random.default_rng(0).standard_normal((count, 512), dtype=np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    with open_catalog(paths, create=True) as cat, cat.transaction():
        cat.vectors.ensure_model("m", "m", "t", 512, "float32")
        cat.conn.executemany("INSERT INTO items(id, path, content_hash, status, meta) VALUES(?,?,?, 'ok', ?)",
                             [(i + 1, f"{i}.jpg", f"{i:064d}", json.dumps({"category": CATEGORIES[i % 4]}))
                              for i in range(count)])
        cat.conn.executemany("INSERT INTO item_meta VALUES(?,?,?,NULL)",
                             [(i + 1, "category", CATEGORIES[i % 4]) for i in range(count)])
        cat.vectors.put("m", [f"{i:064d}" for i in range(count)], data, "float32")
    build_index(paths, "m")


def request(conn, rng):
    kind = rng.choices(("similar", "search", "health"), (6, 3, 1))[0]
    if kind == "similar":
        conn.request("GET", f"/api/datasets/load/similar/{rng.randint(1, count)}?k=10")
    elif kind == "search":
        body = {"terms": [f"like:{rng.randint(1, count)}", f"-0.3*like:{rng.randint(1, count)}"], "k": 10,
                "where": [f"category={rng.choice(CATEGORIES)}"]}
        conn.request("POST", "/api/datasets/load/search", json.dumps(body), {"Content-Type": "application/json"})
    else:
        conn.request("GET", "/health")
    response = conn.getresponse()
    response.read()
    return kind, response.status


def client(port: int, stop: float, seed: int, out: list) -> None:
    rng = random.Random(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    while time.perf_counter() < stop:
        start = time.perf_counter()
        try:
            kind, status = request(conn, rng)
        except (OSError, http.client.HTTPException):
            kind, status = "failed", 0
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        out.append((kind, status, time.perf_counter() - start))
    conn.close()


def serve(root: str) -> tuple[subprocess.Popen, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-c", SERVE, "--root", root, "serve", "load", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("GET", "/api/datasets/load/similar/1?k=10")  # loads the index
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(proc.stderr.read().decode())
            time.sleep(0.2)
    raise SystemExit("server did not start")


def report(results: list, elapsed: float) -> None:
    errors = sum(status != 200 for _, status, _ in results)
    print(f"{clients} clients x {elapsed:.0f} s, {count} items, {os.cpu_count()} cores: "
          f"{len(results) / elapsed:.1f} requests/s, {errors} errors")
    for kind in ("similar", "search", "health", "all"):
        lat = np.array([t for k, _, t in results if kind in (k, "all")]) * 1e3
        if len(lat):
            p50, p99 = np.percentile(lat, [50, 99])
            print(f"  {kind:8s} n={len(lat):6d}  p50 {p50:7.1f} ms  p99 {p99:7.1f} ms")


def main() -> None:
    root = tempfile.mkdtemp()
    build(root)
    proc, port = serve(root)
    try:
        results: list = []
        stop = time.perf_counter() + seconds
        threads = [threading.Thread(target=client, args=(port, stop, n, results)) for n in range(clients)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        report(results, time.perf_counter() - started)
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
