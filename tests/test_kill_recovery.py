"""Fault injection: `embed` and `index` killed with SIGKILL at random moments, then rerun.

After the rerun the catalog passes PRAGMA integrity_check, holds one item per file and one
vector per content, the index is complete, and no temp or orphan files are left.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from stylesearch.index.load import load_index
from stylesearch.ingest.samples import write_samples
from stylesearch.store.catalog import open_catalog
from stylesearch.store.files import TEMP_MARK
from stylesearch.store.paths import dataset_paths

from .conftest import TINY, unit_rows, vector_catalog

BUILD = """
import sys
from stylesearch.index.build import build_index
from stylesearch.store.paths import dataset_paths
build_index(dataset_paths(sys.argv[2], sys.argv[1]), "m", sys.argv[3], full=True)
"""


def kill_at_random_moments(cmd: list[str], moments: list[float], env: dict | None = None) -> int:
    """Start `cmd` once per moment and SIGKILL it then; returns how many runs were killed mid-way."""
    killed = 0
    for moment in moments:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        time.sleep(moment)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait()
    return killed


def leftovers(home) -> list[str]:
    return [str(p) for p in home.rglob(f"*{TEMP_MARK}*")]


def check_catalog(paths) -> None:
    with open_catalog(paths, readonly=True) as cat:
        assert cat.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        paths_ = [r[0] for r in cat.conn.execute("SELECT path FROM items")]
        assert len(paths_) == len(set(paths_))


@pytest.mark.slow  # builds a 40k index five times
def test_index_killed_mid_write_leaves_nothing_behind(tmp_path):
    n, dim = 40_000, 64
    paths = vector_catalog(tmp_path, "killidx", unit_rows(n, dim))
    cmd = [sys.executable, "-c", BUILD, str(tmp_path), "killidx", "hnsw"]
    rng = random.Random(7)
    killed = kill_at_random_moments(cmd, [rng.uniform(0.3, 2.5) for _ in range(4)])
    assert killed >= 2  # the runs really were interrupted
    subprocess.run(cmd, check=True)
    folder = paths.index_dir("m")
    loaded = load_index(paths, "m")
    assert loaded.index.ntotal == n
    assert sorted(p.name for p in folder.iterdir()) == sorted(["index.json", loaded.meta["file"],
                                                                loaded.meta["members"]])
    assert leftovers(paths.home) == []
    check_catalog(paths)


@pytest.mark.slow
def test_embed_killed_repeatedly_then_rerun_is_complete(tmp_path):
    paths = dataset_paths("killemb", tmp_path)
    write_samples(paths.images, 150, size=(96, 72))
    cmd = [sys.executable, "-m", "stylesearch", "--root", str(tmp_path), "embed", "killemb", "--create",
           "-m", TINY, "-p", "random", "--workers", "0", "--batch-size", "8"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    rng = random.Random(11)
    kill_at_random_moments(cmd, [rng.uniform(4.0, 9.0) for _ in range(3)], env)
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    check_catalog(paths)
    with open_catalog(paths, readonly=True) as cat:
        items = cat.items()
        assert len(items) == 150
        hashes = {it.content_hash for it in items}
        key = f"{TINY}__random"
        assert cat.vectors.hashes(key) == hashes
        ids, vectors = cat.vectors.load(key)
        assert len(ids) == 150 and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    assert leftovers(paths.home) == []
