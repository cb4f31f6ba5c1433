"""Index kinds chosen by size and memory; streamed builds; memory-mapped loading."""

from __future__ import annotations

import numpy as np
import pytest

from stylesearch.errors import UserError
from stylesearch.index.build import build_index
from stylesearch.index.load import check_recall, load_index
from stylesearch.index.plan import choose_plan, nlist_for, parse_bytes
from stylesearch.store.catalog import open_catalog

from .conftest import unit_rows, vector_catalog

GiB = 1 << 30


def test_auto_follows_the_documented_table():
    assert choose_plan("auto", 512, 100_000, 16 * GiB).kind == "flat"
    assert choose_plan("auto", 512, 250_000, 16 * GiB).kind == "hnsw"
    one_m = choose_plan("auto", 512, 1_000_000, 16 * GiB)
    assert (one_m.kind, one_m.nlist, one_m.factory()) == ("ivf", 4096, "IVF4096,Flat")
    ten_m = choose_plan("auto", 512, 10_000_000, 14 * GiB)
    assert ten_m.kind == "ivfsq" and ten_m.factory() == "IVF16384_HNSW32,SQ8" and ten_m.peak_bytes() < 14 * GiB
    assert choose_plan("auto", 512, 10_000_000, 3 * GiB).factory() == "OPQ64,IVF16384_HNSW32,PQ64x8"
    assert choose_plan("auto", 512, 1_000_000, 2 * GiB).kind == "ivfsq"  # IVF-Flat would not fit


def test_a_kind_that_does_not_fit_is_refused_with_alternatives():
    with pytest.raises(UserError, match="needs about") as info:
        choose_plan("flat", 512, 10_000_000, 4 * GiB)
    assert "ivfpq" in info.value.hint
    with pytest.raises(UserError, match="No index"):
        choose_plan("auto", 512, 10_000_000, 100 << 20)


def test_sizes_and_lists():
    assert parse_bytes("4G") == 4 * GiB and parse_bytes("512MiB") == 512 << 20 and parse_bytes("1.5g") == int(1.5 * GiB)
    for bad in ("lots", "-1G", "0", "nanG"):
        with pytest.raises(UserError):
            parse_bytes(bad)
    assert nlist_for(100) == 2 and nlist_for(1_000_000) == 4096 and nlist_for(10**9) == 16384


def _dataset(tmp_path, n=6000, dim=32):
    rng = np.random.default_rng(0)
    centres = unit_rows(40, dim, seed=1)
    vectors = centres[rng.integers(0, 40, n)] + rng.normal(0, 0.15, (n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vector_catalog(tmp_path, "plans", vectors), vectors


def test_streamed_ivfsq_build_is_mmapped_and_accurate(tmp_path, monkeypatch):
    monkeypatch.setattr("stylesearch.index.plan.CHUNK", 700)  # many chunks
    monkeypatch.setattr("stylesearch.index.build.CHUNK", 700)
    paths, vectors = _dataset(tmp_path)
    meta = build_index(paths, "m", "ivfsq")
    assert meta["count"] == 6000 and meta["factory"].endswith(",SQ8") and meta["nprobe"] >= 16
    loaded = load_index(paths, "m")
    assert loaded.index.ntotal == 6000
    assert check_recall(paths, "m", sample=100) >= 0.9
    again = build_index(paths, "m", "ivfsq")  # nothing new: incremental on a writable copy, not the mmapped one
    assert again["mode"] == "incremental (+0)" and again["count"] == 6000


def test_cli_max_memory(cli, root):
    _dataset(root, n=3000)
    assert cli.json("index", "plans", "--max-memory", "4G", "--json")["kind"] == "flat"
    proc = cli("index", "plans", "--kind", "flat", "--max-memory", "100K", check=False)
    assert proc.returncode == 2 and "needs about" in proc.stderr


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_deleted_items_never_scramble_ids_after_an_incremental_update(tmp_path, kind):
    paths, vectors = _dataset(tmp_path, n=2000)
    build_index(paths, "m", kind)
    with open_catalog(paths) as cat, cat.transaction():
        cat.set_status([5, 6], "deleted")
    again = build_index(paths, "m", kind)
    assert again["mode"].startswith("incremental")
    loaded = load_index(paths, "m")
    _, found = loaded.search(vectors[[99, 499, 1499]], 1)
    assert found[:, 0].tolist() == [100, 500, 1500]  # item i+1 has vector row i


def test_trained_kinds_refuse_tiny_collections():
    with pytest.raises(UserError, match="too few"):
        choose_plan("ivfpq", 32, 10, 1 << 30)
