"""The first image query through `stylesearch serve` on N random vectors (default 100k), ViT-B-32 with
random weights (`-p random`: the default model's compute, no download), in the same run:

- onnx: a dataset whose ONNX export has the image tower (made by `embed` on the CPU from 256 pending
  images, or `export-onnx`); torch: one whose export has only the text tower (what every first
  `embed` makes), so image queries need torch's model;
- warmed: `serve` (the default, preloading) makes the image tower ready while it starts (the ONNX
  one, else torch's model), and /health says ready once it has (this change);
- lazy: `serve --lazy`, as image queries were before this change (its warm-up loaded only the text
  side): the first image query loads the image tower.

Each figure is the wall time of one multipart search request (the query image uploaded) from the
moment /health says ready, then a second query for comparison.
Usage: python benchmarks/image_query_first.py [COUNT] [FOLDER]  (FOLDER: made once, reused by later runs)
"""

import io
import os
import socket
import subprocess
import sys
import tempfile
import time

from bench_data import random_vector_dataset
from PIL import Image

from stylesearch.embed.export import export_onnx
from stylesearch.embed.models import ModelSpec
from stylesearch.query.remote import ServerClient
from stylesearch.store.paths import dataset_paths

SERVE = ("import sys; from stylesearch.cli.main import app, main; from stylesearch.cli import serve_cmd\n"
         "if not any(c.name == 'serve' for c in app.registered_commands): serve_cmd.register(app)\n"
         "sys.argv[0] = 'stylesearch'; main()")
count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
spec = ModelSpec("ViT-B-32", "random")
tmp = sys.argv[2] if len(sys.argv) > 2 else tempfile.mkdtemp()
env = {**os.environ, "HF_HUB_OFFLINE": "1", "STYLESEARCH_HOME": tmp}


def query_image(seed: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (640, 480), (40 * seed % 255, 90, 160)).save(out, "JPEG")
    return out.getvalue()


def serve(dataset: str, *extra: str) -> tuple[subprocess.Popen, str, float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", SERVE, "serve", dataset, "--port", str(port), *extra],
                            env={**env, "STYLESEARCH_CACHE": tempfile.mkdtemp(dir=tmp)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            if ServerClient(url, timeout=2).get("/health").get("ready"):
                return proc, url, time.perf_counter() - started
        except Exception:  # noqa: BLE001 - not listening yet
            if proc.poll() is not None:
                raise SystemExit("server exited")
        time.sleep(0.1)


def first_queries(dataset: str, *extra: str) -> tuple[float, float, float]:
    """(seconds until ready, first image query, second image query)."""
    proc, url, ready = serve(dataset, *extra)
    try:
        client, times = ServerClient(url), []
        for seed in (1, 2):
            started = time.perf_counter()
            client.post(f"/api/datasets/{dataset}/search", {"images": ["q.jpg"], "k": 10},
                        {"q.jpg": query_image(seed)})
            times.append(time.perf_counter() - started)
    finally:
        proc.terminate()
        proc.wait()
    return ready, times[0], times[1]


def main() -> None:
    started = time.perf_counter()
    with_tower, without = dataset_paths("photos", tmp), dataset_paths("plain", tmp)
    if not without.onnx_dir(spec.key).is_dir():  # else made by an earlier run in FOLDER
        random_vector_dataset(with_tower, count, spec)
        random_vector_dataset(without, count, spec)
        export_onnx(with_tower, spec, towers=("text", "image"))
        export_onnx(without, spec, towers=("text",))
    print(f"2 x {count:,} vectors + ONNX exports of {spec.name} ({spec.pretrained}) ready in "
          f"{time.perf_counter() - started:.0f} s; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    for name, dataset, extra in (("onnx, warmed", "photos", ()), ("onnx, lazy", "photos", ("--lazy",)),
                                 ("torch, warmed", "plain", ()), ("torch, lazy", "plain", ("--lazy",))):
        ready, first, second = first_queries(dataset, *extra)
        print(f"  {name:14s} ready after {ready:5.1f} s   first image query {first:6.3f} s   second {second:6.3f} s")


if __name__ == "__main__":
    main()
