"""Embedding images/s per backend in the same run: torch, onnx and onnx-int8 (with its cosine agreement
to fp32), for ViT-B-32 (random init: the same compute as pretrained weights) and the tiny model.
The ONNX export is made once per model beforehand (its time is printed, not counted).
Usage: python benchmarks/embed_speed.py [COUNT] [--device cuda] [--models A,B] [--backends torch,onnx,onnx-int8]"""

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from stylesearch.embed.export import export_onnx
from stylesearch.embed.models import ModelSpec, load_model
from stylesearch.embed.run import EmbedOptions, embed_dataset
from stylesearch.ingest.samples import write_samples
from stylesearch.store.catalog import open_catalog
from stylesearch.store.datasets import create_dataset
from stylesearch.store.paths import dataset_paths

parser = argparse.ArgumentParser()
parser.add_argument("count", nargs="?", type=int, default=500)
parser.add_argument("--device", default="cpu", help="torch's device (the onnx backends always run on the CPU)")
parser.add_argument("--models", default="ViT-B-32,stylesearch-tiny")
parser.add_argument("--backends", default="torch,onnx,onnx-int8")
args = parser.parse_args()

tmp = Path(tempfile.mkdtemp())
images = tmp / "images"
write_samples(images, args.count, size=(640, 480))


def run(spec: ModelSpec, backend: str, model, export_from=None):
    paths = dataset_paths(f"{spec.name.lower()}-{backend}", tmp)
    shutil.copytree(images, paths.images)
    create_dataset(paths)
    if export_from is not None:
        shutil.copytree(export_from, paths.onnx_dir(spec.key))
    options = EmbedOptions(batch_size=64, device=args.device if backend == "torch" else "cpu", backend=backend,
                           export_onnx=False)
    start = time.perf_counter()
    result = embed_dataset(paths, spec, options=options, model=model if backend == "torch" else None)
    elapsed = time.perf_counter() - start
    with open_catalog(paths, readonly=True) as cat:
        _, vectors = cat.vectors.load(spec.key)
    return result, elapsed, vectors


for name in args.models.split(","):
    spec = ModelSpec(name, "random")
    model = load_model(spec, "cpu")
    source = dataset_paths(f"{name.lower()}-export", tmp)
    create_dataset(source)
    start = time.perf_counter()
    export_onnx(source, spec, model, towers=("image-int8",))
    print(f"{name}: ONNX export of the image tower (+ int8) took {time.perf_counter() - start:.1f} s (once)")
    if args.device != "cpu":
        model = load_model(spec, args.device)
    baseline, vectors = None, {}
    for backend in args.backends.split(","):
        result, elapsed, vectors[backend] = run(spec, backend, model, source.onnx_dir(spec.key))
        rate = result.embedded / elapsed
        baseline = baseline or rate
        extra = ""
        if "torch" in vectors and backend != "torch":
            cos = np.sum(vectors[backend] * vectors["torch"], axis=1)
            extra = f"; cosine to torch mean {cos.mean():.5f} min {cos.min():.5f}"
        if "int8_cosine_mean" in result.backend:
            extra += f"; int8 vs fp32 (reported) mean {result.backend['int8_cosine_mean']:.5f}"
        print(f"  {backend:10s} on {result.device}: {result.embedded} images in {elapsed:.1f} s = {rate:.1f} images/s "
              f"({rate / baseline:.2f}x {args.backends.split(',')[0]}){extra}", flush=True)
shutil.rmtree(tmp)
