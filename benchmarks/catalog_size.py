"""Bytes the catalog spends per stored vector (512-d float32 = 2,048 bytes raw) at the page size
new catalogs use, beside SQLite's default 4 KiB pages, in the same run.

Usage: python benchmarks/catalog_size.py [N]   (default 20000 vectors)
"""

import os
import sqlite3
import sys
import tempfile

import numpy as np

from stylesearch.store.catalog import PAGE_SIZE, open_catalog
from stylesearch.store.paths import dataset_paths

n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
vectors = np.random.default_rng(0).standard_normal((n, 512)).astype(np.float32)
hashes = [f"{i:064d}" for i in range(n)]


def size_after(paths) -> float:
    with open_catalog(paths) as cat:
        with cat.transaction():
            cat.vectors.ensure_model("m", "m", "t", 512, "float32")
            cat.vectors.put("m", hashes, vectors, "float32")
        cat.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return os.path.getsize(paths.catalog) / n


root = tempfile.mkdtemp()
default = dataset_paths("default", root)
default.home.mkdir(parents=True)
sqlite3.connect(default.catalog).execute("PRAGMA page_size=4096").connection.execute("VACUUM").connection.close()
ours = dataset_paths("ours", root)
open_catalog(ours, create=True).close()
print(f"{n} vectors of 2048 bytes: {size_after(ours):7.0f} bytes each with {PAGE_SIZE // 1024} KiB pages "
      f"vs {size_after(default):7.0f} with SQLite's default 4 KiB pages")
