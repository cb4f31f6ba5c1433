"""Whole-process wall time of `stylesearch search` on N random 512-d vectors (default 100k):
a cold text query, the same query repeated (query-vector cache), and `--like`, with the torch
path and the ONNX path measured in the same run.

The model is ViT-B-32 with random weights (`-p random`): the same architecture and compute
as the default pretrained model, which is what users pay for. The text tower is exported once
(its time is printed too); "torch" runs move the export aside so search falls back to torch.
Every figure is a median over RUNS fresh processes, after one untimed warm-up run.
Usage: python benchmarks/search_cold.py [COUNT] [RUNS]
"""

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from bench_data import random_vector_dataset

from stylesearch.embed.export import export_onnx
from stylesearch.embed.models import ModelSpec
from stylesearch.store.paths import dataset_paths

count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
runs = int(sys.argv[2]) if len(sys.argv) > 2 else 5
spec = ModelSpec("ViT-B-32", "random")
tmp = tempfile.mkdtemp()
paths = dataset_paths("cold", tmp)


def build_dataset() -> None:
    random_vector_dataset(paths, count, spec)


def wall(args: list[str], cache: str) -> float:
    env = {**os.environ, "STYLESEARCH_CACHE": cache, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "stylesearch", "--root", tmp, "search", "cold", *args, "-k", "10",
                    "--format", "tsv"], check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def median(args: list[str], fresh_cache: bool) -> float:
    """Median wall time; a fresh (empty) query cache per run when `fresh_cache`, else one shared warm cache."""
    shared = tempfile.mkdtemp(dir=tmp)
    wall(args, shared)  # warm-up: file system cache, and the query cache for repeated runs
    return statistics.median(wall(args, tempfile.mkdtemp(dir=tmp) if fresh_cache else shared) for _ in range(runs))


def measure(label: str) -> dict:
    figures = {"cold text": median(["red stripes"], True), "repeated text": median(["red stripes"], False),
               "--like": median(["--like", "42"], False)}
    print(f"  {label:5s} " + "  ".join(f"{k} {v:.3f} s" for k, v in figures.items()), flush=True)
    return figures


build_dataset()
start = time.perf_counter()
report = export_onnx(paths, spec, towers=("text",))
print(f"{count} vectors, ViT-B-32 random init; text tower exported once in {time.perf_counter() - start:.1f} s "
      f"({report['bytes'] / 1e6:.0f} MB). Whole-process wall time, median of {runs}:")
onnx_dir, aside = paths.onnx_dir(spec.key), paths.home / "onnx-aside"
shutil.move(onnx_dir, aside)
torch_figures = measure("torch")
shutil.move(aside, onnx_dir)
onnx_figures = measure("onnx")
for key in torch_figures:
    print(f"  {key:14s} torch {torch_figures[key]:.3f} s -> onnx {onnx_figures[key]:.3f} s "
          f"({torch_figures[key] / onnx_figures[key]:.1f}x)")
print("  targets on 2 cores: cold text under 1.0 s, repeated under 0.5 s")
shutil.rmtree(tmp)
