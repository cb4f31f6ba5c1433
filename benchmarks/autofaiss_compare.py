"""stylesearch's auto index beside autofaiss's, built from the same clustered 512-d vectors in one run.

The vectors, held-out queries and exact neighbours are scale.py's (10k Gaussian centres, cosine to a
centre about 0.9). stylesearch: `stylesearch index` (auto kind) on a catalog filled by scale.py, measured
as scale.py measures it. autofaiss (benchmarks/.venvs/autofaiss, made by `python benchmarks/peers.py
autofaiss`): `autofaiss build_index` on the same vectors written as .npy files (its input format), inner
product, its default max_index_memory_usage (16G) and current_memory_available set to what the machine
has free; then a second process loads its index, applies the search parameters autofaiss chose
(`index_param` in its infos) and runs the same queries. For each tool: build wall time and peak RSS of
the build process, index size on disk, recall@10 against exact search (200 held-out queries), query
latency p50/p95 (warm, one query at a time, in-process). Both use faiss from their own venvs (the same
faiss-cpu version here; printed).

Peak RSS is GNU time's (/usr/bin/time) figure for each build process.

Usage: python benchmarks/autofaiss_compare.py [SIZES] [--tools stylesearch,autofaiss] [--timeout SECONDS]
                                              [--max-index-memory 16G] [--memory-available XG]
       e.g. 100000 or 1000000 (default 100000,1000000)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import scale
from peers import peer_bin, peer_version
from stylesearch.index.load import load_index
from stylesearch.store.paths import dataset_paths

GNU_TIME = "/usr/bin/time"
QUERY = """
import json, sys, time
import faiss, numpy as np
index_path, infos_path, queries_path, k = sys.argv[1:5]
index = faiss.read_index(index_path)
param = json.load(open(infos_path)).get("index_param", "")
if param:
    faiss.ParameterSpace().set_index_parameters(index, param)
queries, k, lat, found = np.load(queries_path), int(k), [], []
for q in queries:
    t = time.perf_counter()
    _, ids = index.search(q[None], k)
    lat.append(time.perf_counter() - t)
    found.append((ids[0] + 1).tolist())  # autofaiss numbers rows from 0 in file order; the catalog from 1
print(json.dumps({"faiss": faiss.__version__, "param": param, "lat": lat, "found": found}))
"""


class TimedOut(Exception):
    """A child ran past its time limit (it was killed); args[0] is its stderr so far."""


def run_alone(cmd: list[str], env: dict | None = None, timeout: float | None = None) -> tuple[float, float | None,
                                                                                             str, str]:
    """Wall seconds, the child's own peak RSS in GiB (None without GNU time), its stdout and stderr.

    The peak comes from GNU time, which forks the command from its own small process: a child forked
    from this one would report this process's resident size at the fork (Linux keeps the high-water
    mark of the memory an exec replaces), which is what getrusage(RUSAGE_CHILDREN) shows here. Past
    `timeout` seconds the whole process group is killed and TimedOut raised."""
    with tempfile.NamedTemporaryFile("r") as peak, tempfile.TemporaryFile("w+") as out, \
            tempfile.TemporaryFile("w+") as err:
        timed = [GNU_TIME, "-f", "%M", "-o", peak.name, *cmd] if os.path.exists(GNU_TIME) else cmd
        start = time.perf_counter()
        child = subprocess.Popen(timed, stdout=out, stderr=err, text=True, env=env, start_new_session=True)
        try:
            code = child.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            err.seek(0)
            raise TimedOut(err.read()) from None
        wall = time.perf_counter() - start
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
        if code != 0:
            raise RuntimeError(f"{cmd[:3]} failed ({code}):\n{stderr[-2000:]}")
        kib = peak.read().split()
    return wall, int(kib[-1]) / (1 << 20) if kib else None, stdout, stderr


def phases(log: str) -> dict[str, float]:
    """autofaiss's own step timings from its log (`>>> Finished "STEP" in S secs`)."""
    return {m[1]: float(m[2]) for m in re.finditer(r'>>> Finished "([^"]+)" in ([0-9.]+) secs', log)}


def write_npy(folder: Path, n: int, queries: np.ndarray) -> np.ndarray:
    """The same n vectors scale.fill_catalog writes (its generator replayed), as .npy chunks in order;
    returns the exact top-K ids (numbered from 1, as in the catalog) per query."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    c = scale.centres(rng)
    scores = np.empty((len(queries), n), dtype=np.float32)
    for part, start in enumerate(range(0, n, scale.CHUNK)):
        x = scale.sample(rng, c, min(scale.CHUNK, n - start))
        np.save(folder / f"{part:05d}.npy", x)
        scores[:, start:start + len(x)] = queries @ x.T
    top = np.argpartition(-scores, scale.K, axis=1)[:, :scale.K]
    return top + 1


def recall_latency(found: list[list[int]], lat: list[float], exact: np.ndarray) -> tuple[float, float, float]:
    hits = sum(len(set(f) & set(t.tolist())) for f, t in zip(found, exact))
    return hits / exact.size, np.percentile(lat, 50) * 1e3, np.percentile(lat, 95) * 1e3


def ours(paths, root: Path, queries: np.ndarray, exact: np.ndarray) -> dict:
    cli = [sys.executable, "-m", "stylesearch", "--root", str(root)]
    build, peak, out, _ = run_alone([*cli, "index", paths.name, "--json"])
    meta = json.loads(out)
    size = sum(f.stat().st_size for f in paths.index_dir("m").glob("index-*.faiss"))
    recall, p50, p95 = scale.measure(load_index(paths, "m", None), queries, exact)
    return {"what": f"{meta['factory']} (nprobe {meta['nprobe']})", "build": build, "peak": peak, "size": size,
            "recall": recall, "p50": p50, "p95": p95}


def autofaiss(vectors: Path, work: Path, queries: np.ndarray, exact: np.ndarray, args) -> dict:
    index, infos, qfile = work / "knn.index", work / "index_infos.json", work / "queries.npy"
    np.save(qfile, queries)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    try:
        build, peak, _, log = run_alone(
            [str(peer_bin("autofaiss", "autofaiss")), "build_index", f"--embeddings={vectors}", f"--index_path={index}",
             f"--index_infos_path={infos}", "--metric_type=ip", f"--max_index_memory_usage={args.max_index_memory}",
             f"--current_memory_available={args.memory_available}"], env, args.timeout)
    except TimedOut as exc:
        done = "; ".join(f"{k} {v:.0f} s" for k, v in phases(exc.args[0]).items())
        last = [x for x in exc.args[0].splitlines() if "[INFO]" in x][-1:]
        print(f"   autofaiss   build_index did not finish in {args.timeout:.0f} s (killed); steps finished: "
              f"{done or 'none'}; last log line: {last[0][:160] if last else '-'}", flush=True)
        return None
    steps = phases(log)
    tune = sum(v for k, v in steps.items() if k.startswith(("Computing best hyperparameters", "Compute fast")))
    _, _, out, _ = run_alone([str(peer_bin("autofaiss")), "-c", QUERY, str(index), str(infos), str(qfile),
                           str(scale.K)], env)
    got = json.loads(out.strip().splitlines()[-1])
    recall, p50, p95 = recall_latency(got["found"], got["lat"], exact)
    key = json.loads(infos.read_text()).get("index_key", "?")
    return {"what": f"{key} ({got['param']}; faiss {got['faiss']}); of the build, choosing the search parameters "
                    f"and its own metrics took {tune:.1f} s", "build": build, "peak": peak,
            "size": index.stat().st_size, "recall": recall, "p50": p50, "p95": p95}


def line(name: str, r: dict) -> str:
    peak = f"{r['peak']:5.2f} GiB" if r["peak"] else "n/a"
    return (f"   {name:11s} build {r['build']:7.1f} s   peak RSS {peak}   index "
            f"{r['size'] / (1 << 30):5.2f} GiB   recall@10 {r['recall']:.3f}   p50 {r['p50']:6.2f} ms   "
            f"p95 {r['p95']:6.2f} ms   {r['what']}")


def bench(n: int, root: Path, args) -> None:
    rng = np.random.default_rng(0)
    c = scale.centres(rng)
    queries = scale.sample(np.random.default_rng(99), c, scale.QUERIES)  # held out, as in scale.py
    paths = dataset_paths(f"scale{n}", root)
    start = time.perf_counter()
    vectors = root / f"npy{n}"
    exact = write_npy(vectors, n, queries)
    if "stylesearch" in args.tools:
        from_catalog = scale.fill_catalog(paths, n, queries, c, rng)
        assert np.array_equal(np.sort(from_catalog, axis=1), np.sort(exact, axis=1)), "the two copies differ"
    print(f"n={n:>9,}  .npy files (and catalog) written in {time.perf_counter() - start:.0f} s (not counted)",
          flush=True)
    results = {}
    for tool in args.tools:
        results[tool] = ours(paths, root, queries, exact) if tool == "stylesearch" else \
            autofaiss(vectors, root, queries, exact, args)
        if results[tool]:
            print(line(tool, results[tool]), flush=True)
    if len(results) == 2 and all(results.values()):
        mine, peer = results["stylesearch"], results["autofaiss"]
        rss = f"{mine['peak'] / peer['peak']:.2f}x" if mine["peak"] and peer["peak"] else "n/a"
        print(f"   stylesearch vs autofaiss: build {peer['build'] / mine['build']:.2f}x faster, peak RSS {rss}, "
              f"index size {mine['size'] / peer['size']:.2f}x, recall@10 {mine['recall']:.3f} vs "
              f"{peer['recall']:.3f}, p50 {peer['p50'] / mine['p50']:.2f}x faster", flush=True)
    shutil.rmtree(vectors, ignore_errors=True)


def free_memory() -> str:
    """MemAvailable, whole GiB rounded down, in autofaiss's notation."""
    kib = next(int(x.split()[1]) for x in Path("/proc/meminfo").read_text().splitlines()
               if x.startswith("MemAvailable:"))
    return f"{kib >> 20}G"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sizes", nargs="?", default="100000,1000000")
    parser.add_argument("--tools", default="stylesearch,autofaiss", help="measure only these (the vectors "
                        "are the same in every run: fixed seeds)")
    parser.add_argument("--timeout", type=float, help="kill autofaiss's build_index after this many seconds")
    parser.add_argument("--max-index-memory", default="16G", help="autofaiss's max_index_memory_usage (its default)")
    parser.add_argument("--memory-available", default=free_memory(), help="autofaiss's current_memory_available "
                        "(default: this machine's MemAvailable)")
    args = parser.parse_args()
    args.tools = args.tools.split(",")
    if "autofaiss" in args.tools and peer_bin("autofaiss", "autofaiss") is None:
        sys.exit("autofaiss is not installed: python benchmarks/peers.py autofaiss")
    root = Path(tempfile.mkdtemp(prefix="stylesearch-autofaiss-"))
    print(f"{scale.DIM}-d vectors around {scale.CENTRES} centres, {os.cpu_count()} cores; autofaiss "
          f"{peer_version('autofaiss')}, max_index_memory_usage {args.max_index_memory}, current_memory_available "
          f"{args.memory_available}", flush=True)
    try:
        for n in (int(s) for s in args.sizes.split(",")):
            bench(n, root, args)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
