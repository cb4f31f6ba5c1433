"""Embedding throughput: the Ray engine (local Ray instance, N model workers) against the local
torch engine on the same images, in the same run, and the largest difference between their vectors.

Usage: python benchmarks/ray_embed.py [IMAGES] [WORKERS] [MODEL]   (default 2000 2 stylesearch-tiny)
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from stylesearch.embed.encoders.ray import RayEncoder, RayOptions
from stylesearch.embed.models import ModelSpec
from stylesearch.embed.run import EmbedOptions, embed_dataset
from stylesearch.ingest.samples import write_samples
from stylesearch.store.catalog import open_catalog
from stylesearch.store.datasets import create_dataset
from stylesearch.store.paths import dataset_paths


def dataset(root: Path, name: str, images: Path):
    paths = dataset_paths(name, root)
    create_dataset(paths)
    paths.images.rmdir()
    paths.images.symlink_to(images, target_is_directory=True)
    return paths


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    workers = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    spec = ModelSpec(sys.argv[3] if len(sys.argv) > 3 else "stylesearch-tiny", "random")
    root = Path(tempfile.mkdtemp(prefix="stylesearch-ray-"))
    try:
        images = root / "images"
        write_samples(images, count, size=(320, 240))
        options = EmbedOptions(backend="torch", batch_size=32, export_onnx=False)
        results = {}
        for engine in ("local", "ray"):
            paths = dataset(root, engine, images)
            encoder = RayEncoder.load(spec, options, RayOptions(num_workers=workers)) if engine == "ray" else None
            start = time.perf_counter()
            result = embed_dataset(paths, spec, options=options, encoder=encoder)
            seconds = time.perf_counter() - start
            with open_catalog(paths, readonly=True) as cat:
                results[engine] = cat.vectors.load(spec.key)
            print(f"{engine:5s} engine: {result.embedded} images in {seconds:6.1f} s = {result.embedded / seconds:6.1f} "
                  f"images/s" + (f" ({workers} workers, local Ray instance on this machine)" if engine == "ray" else ""),
                  flush=True)
        diff = float(np.abs(results["local"][1] - results["ray"][1]).max())
        print(f"model {spec.key}; largest difference between local and Ray vectors: {diff:.2e}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
