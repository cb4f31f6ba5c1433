"""Synthetic datasets the benchmarks share: random unit vectors written straight into a catalog
(no images, no model), indexed as `stylesearch index` would."""

from __future__ import annotations

import numpy as np

from stylesearch.index.build import build_index
from stylesearch.store.catalog import open_catalog


def random_vector_dataset(paths, count: int, spec, dim: int = 512, seed: int = 0) -> np.ndarray:
    """`count` random 512-d unit vectors as items 0.jpg, 1.jpg, ... of `spec`'s model; returns them."""
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((count, dim), dtype=np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    with open_catalog(paths, create=True) as cat, cat.transaction():
        cat.vectors.ensure_model(spec.key, spec.name, spec.pretrained or "", dim, "float32")
        cat.conn.executemany("INSERT INTO items(path, content_hash, status) VALUES(?,?, 'ok')",
                             [(f"{i}.jpg", f"{i:064d}") for i in range(count)])
        cat.vectors.put(spec.key, [f"{i:064d}" for i in range(count)], data, "float32")
    build_index(paths, spec.key)
    return data


def photo_folder(folder, count: int, size: tuple[int, int] = (4032, 3024), bases: int = 12) -> list:
    """`count` distinct photo-sized JPEGs (quality 90) in `folder`, quickly: `bases` rendered sample images
    reused, each file stamped with its own block of random pixels so no two files share content or a hash."""
    from pathlib import Path

    from PIL import Image

    from stylesearch.ingest.samples import PALETTES, PATTERNS, render

    combos = [(k, p) for p in PALETTES for k in PATTERNS]
    rendered = [np.asarray(render(*combos[b % len(combos)], b, size)) for b in range(min(bases, count))]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for n in range(count):
        pixels = rendered[n % len(rendered)].copy()
        pixels[:64, :64] = np.random.default_rng(n).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        out.append(folder / f"photo-{n:05d}.jpg")
        Image.fromarray(pixels).save(out[-1], quality=90)
    return out
