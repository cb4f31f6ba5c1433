"""Thumbnails/s of `stylesearch transform` on generated 1600x1200 JPEGs, beside a plain
`Image.open().thumbnail()` loop measured in the same run. Usage: python benchmarks/transform_speed.py [COUNT]"""

import shutil
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from stylesearch.ingest.samples import render
from stylesearch.ingest.transform import TransformOptions, transform_dataset
from stylesearch.store.datasets import create_dataset
from stylesearch.store.paths import dataset_paths

count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
tmp = Path(tempfile.mkdtemp())
paths = dataset_paths("bench", tmp)
create_dataset(paths)
base = [render(k, "warm", n, (1600, 1200)) for n, k in enumerate(("stripes", "dots", "rings", "noise"))]
for n in range(count):
    base[n % 4].save(paths.images / f"{n:05d}.jpg", quality=90)

plain_out = tmp / "plain"
plain_out.mkdir()
start = time.perf_counter()
for src in sorted(paths.images.glob("*.jpg")):
    with Image.open(src) as im:
        im.thumbnail((336, 336))
        im.save(plain_out / src.name, quality=85)
plain = time.perf_counter() - start

start = time.perf_counter()
result = transform_dataset(paths, TransformOptions(max_side=336))
ours = time.perf_counter() - start
assert result.made == count, result.as_dict()
print(f"plain Image.open().thumbnail() loop: {count / plain:7.1f} thumbnails/s ({plain:.2f} s)")
print(f"stylesearch transform (scan incl.):  {count / ours:7.1f} thumbnails/s ({ours:.2f} s)")
print(f"speed-up: {plain / ours:.2f}x")
start = time.perf_counter()
transform_dataset(paths, TransformOptions(max_side=336))
print(f"incremental rerun (nothing to do):   {time.perf_counter() - start:.2f} s")
shutil.rmtree(tmp)
