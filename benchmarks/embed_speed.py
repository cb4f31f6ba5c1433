"""Embedding images/s with ViT-B-32 (random init: same compute as pretrained) and the tiny model,
on CPU and on CUDA when available. Usage: python benchmarks/embed_speed.py [COUNT] [--device cuda]"""

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from stylesearch.dataset import create_dataset
from stylesearch.embed import EmbedOptions, embed_dataset
from stylesearch.models import ModelSpec, load_model
from stylesearch.samples import write_samples
from stylesearch.storage import dataset_paths

parser = argparse.ArgumentParser()
parser.add_argument("count", nargs="?", type=int, default=500)
parser.add_argument("--device", default="auto")
parser.add_argument("--models", default="ViT-B-32,stylesearch-tiny")
args = parser.parse_args()

tmp = Path(tempfile.mkdtemp())
for name in args.models.split(","):
    paths = dataset_paths(name.lower(), tmp)
    create_dataset(paths)
    write_samples(paths.images, args.count, size=(640, 480))
    spec = ModelSpec(name, "random")
    model = load_model(spec, args.device)
    start = time.perf_counter()
    result = embed_dataset(paths, spec, options=EmbedOptions(batch_size=64, device=args.device), model=model)
    elapsed = time.perf_counter() - start
    print(f"{name:18s} on {model.device}: {result.embedded} images in {elapsed:.1f} s = "
          f"{result.embedded / elapsed:.1f} images/s (scan + decode + embed + store)")
shutil.rmtree(tmp)
