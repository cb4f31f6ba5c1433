"""Cold CLI queries with and without a warm `stylesearch serve`, in the same run (target: a text
query under 0.3 s through the server on 2 cores).

Each figure is the median over RUNS fresh `python -m stylesearch search ...` processes on N random
512-d vectors (default 100k, flat index), model ViT-B-32 with random weights (`-p random`: the
compute of the default pretrained model, no download). Local text queries get an empty
query-vector cache each run, and every server text query is a new text: no cache hits.
Wall time depends on what else the machine runs, so CPU seconds are printed too: the CLI
process's, plus (with --server) the server's per query; their sum is the wall time on an idle machine.
Usage: python benchmarks/search_server.py [COUNT] [RUNS]
"""

import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from bench_data import random_vector_dataset

from stylesearch.embed.models import ModelSpec
from stylesearch.query.remote import ServerClient
from stylesearch.store.paths import dataset_paths

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
    random_vector_dataset(paths, count, spec)


def run(args: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one search process."""
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run([sys.executable, "-m", "stylesearch", "search", "cold", *args, "-k", "10", "--format", "tsv"],
                   check=True, capture_output=True, env={**env, "STYLESEARCH_CACHE": tempfile.mkdtemp(dir=tmp)})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter() - start, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def process_cpu(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def median(make_args, server_pid: int | None = None) -> tuple[float, float, float]:
    """Median wall and CPU of the search processes, and the server's mean CPU per query."""
    run(make_args(-1))  # warm-up run: file system cache
    start_cpu = process_cpu(server_pid) if server_pid else 0.0
    results = [run(make_args(n)) for n in range(runs)]
    served = (process_cpu(server_pid) - start_cpu) / runs if server_pid else 0.0
    return statistics.median(w for w, _ in results), statistics.median(c for _, c in results), served


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


def line(name: str, local: tuple, remote: tuple) -> str:
    return (f"  {name:10s} local {local[0]:6.3f} s wall ({local[1]:.2f} s CPU)   --server {remote[0]:6.3f} s wall "
            f"({remote[1]:.2f} s CPU + server {remote[2]:.3f} s CPU)")


build_dataset()
load_before = os.getloadavg()[0]
local_text = median(lambda n: [f"film grain portrait {n}"])
local_like = median(lambda n: ["--like", str(42 + n)])
proc, url, ready = start_server()
try:
    server_text = median(lambda n: [f"red dress on a beach {n}", "--server", url], proc.pid)
    server_like = median(lambda n: ["--like", str(42 + n), "--server", url], proc.pid)
finally:
    proc.terminate()
    proc.wait()
print(f"{count} vectors, {spec.name} ({spec.pretrained}), median of {runs} cold processes, {os.cpu_count()} cores, "
      f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}")
print(line("text query", local_text, server_text))
print(line("--like", local_like, server_like))
print(f"  server start until the model is warm: {ready:.1f} s (paid once)")
