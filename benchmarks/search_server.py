"""Cold CLI queries with and without a warm `stylesearch serve`, in the same run (target: a text
query under 0.3 s through the server on 2 cores).

Each figure is the median whole-process wall time of `python -m stylesearch search ...` over RUNS
fresh processes on N random 512-d vectors (default 100k, flat index), model ViT-B-32 with random
weights (`-p random`: the compute of the default pretrained model, no download). Local text
queries get an empty query-vector cache each run, and every server text query is a new text, so
neither is a cache hit. Usage: python benchmarks/search_server.py [COUNT] [RUNS]
"""

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from stylesearch.catalog import open_catalog
from stylesearch.client import ServerClient
from stylesearch.index_build import build_index
from stylesearch.models import ModelSpec
from stylesearch.storage import dataset_paths

SERVE = ("import sys; from stylesearch.cli.main import app, main; from stylesearch.cli import serve_cmd\n"
         "if not any(c.name == 'serve' for c in app.registered_commands): serve_cmd.register(app)\n"
         "sys.argv[0] = 'stylesearch'; main()")
count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
runs = int(sys.argv[2]) if len(sys.argv) > 2 else 5
spec = ModelSpec("ViT-B-32", "random")
tmp = tempfile.mkdtemp()
paths = dataset_paths("cold", tmp)
env = {**os.environ, "HF_HUB_OFFLINE": "1", "STYLESEARCH_HOME": tmp}


def build_dataset() -> None:
    rng = np.random.default_rng(0)
    data = rng.standard_normal((count, 512), dtype=np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    with open_catalog(paths, create=True) as cat, cat.transaction():
        cat.ensure_model(spec.key, spec.name, spec.pretrained, 512, "float32")
        cat.conn.executemany("INSERT INTO items(path, content_hash, status) VALUES(?,?, 'ok')",
                             [(f"{i}.jpg", f"{i:064d}") for i in range(count)])
        cat.put_vectors(spec.key, [f"{i:064d}" for i in range(count)], data, "float32")
    build_index(paths, spec.key)


def wall(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "stylesearch", "search", "cold", *args, "-k", "10", "--format", "tsv"],
                   check=True, capture_output=True, env={**env, "STYLESEARCH_CACHE": tempfile.mkdtemp(dir=tmp)})
    return time.perf_counter() - start


def median(make_args) -> float:
    wall(make_args(-1))  # warm-up run: file system cache
    return statistics.median(wall(make_args(n)) for n in range(runs))


def start_server() -> tuple[subprocess.Popen, str, float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", SERVE, "serve", "cold", "--port", str(port)],
                            env={**env, "STYLESEARCH_CACHE": tempfile.mkdtemp(dir=tmp)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    while True:  # ready when the model is warm
        try:
            health = ServerClient(url, timeout=2).get("/health")
            if health["models"]:
                return proc, url, time.perf_counter() - started
        except Exception:
            if proc.poll() is not None:
                raise SystemExit("server exited")
        time.sleep(0.2)


build_dataset()
local_text = median(lambda n: [f"film grain portrait {n}"])
local_like = median(lambda n: ["--like", str(42 + n)])
proc, url, ready = start_server()
try:
    server_text = median(lambda n: [f"red dress on a beach {n}", "--server", url])
    server_like = median(lambda n: ["--like", str(42 + n), "--server", url])
finally:
    proc.terminate()
    proc.wait()
print(f"{count} vectors, {spec.name} ({spec.pretrained}), median of {runs} cold processes, {os.cpu_count()} cores")
print(f"  text query   local {local_text:6.3f} s   --server {server_text:6.3f} s")
print(f"  --like       local {local_like:6.3f} s   --server {server_like:6.3f} s")
print(f"  server start until the model is warm: {ready:.1f} s (paid once)")
