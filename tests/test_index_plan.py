"""Index kinds chosen by size and memory; streamed builds; memory-mapped loading."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from stylesearch.errors import UserError
from stylesearch.index.build import build_index
from stylesearch.index.load import check_recall, load_index, recall_at_k
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


def _tight_dataset(tmp_path, n=3000, dim=32):
    """20 tight clusters: neighbours differ by less than SQ8's steps, so the codes alone misorder them."""
    rng = np.random.default_rng(0)
    vectors = unit_rows(20, dim, seed=1)[rng.integers(0, 20, n)] + rng.normal(0, 0.05, (n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vector_catalog(tmp_path, "tight", vectors), vectors


def test_quantised_index_reranks_candidates_with_its_refine_store(tmp_path):
    paths, vectors = _tight_dataset(tmp_path)
    meta = build_index(paths, "m", "ivfsq")
    assert meta["refine"].startswith("refine-") and (paths.index_dir("m") / meta["refine"]).exists()
    loaded = load_index(paths, "m")
    assert loaded.refine.shape == (3000, 32) and loaded.refine.dtype == np.float16
    ids = np.arange(1, 3001)
    codes_only = dataclasses.replace(loaded, refine=None)
    refined, plain = recall_at_k(loaded, ids, vectors, 100), recall_at_k(codes_only, ids, vectors, 100)
    assert refined >= 0.99 and plain < 0.98
    queries = vectors[[3, 1500]]
    scores, found = loaded.search(queries, 10)
    exact = np.einsum("qd,qkd->qk", queries, vectors[found - 1])
    np.testing.assert_allclose(scores, exact, atol=2e-3)  # float16 copies, not 8-bit codes
    assert (np.diff(scores, axis=1) <= 0).all() and found[:, 0].tolist() == [4, 1501]
    plain_scores, _ = codes_only.search(queries, 10)
    assert not np.allclose(plain_scores, scores, atol=1e-4)  # the re-rank changed the scores it reports


def test_incremental_build_extends_the_refine_store_and_old_indexes_still_search(tmp_path, caplog):
    paths, vectors = _tight_dataset(tmp_path)
    with open_catalog(paths) as cat, cat.transaction():
        cat.set_status(list(range(2501, 3001)), "deleted")
    first = build_index(paths, "m", "ivfsq")
    with open_catalog(paths) as cat, cat.transaction():
        cat.set_status(list(range(2501, 3001)), "ok")
    again = build_index(paths, "m", "ivfsq")
    assert again["mode"] == "incremental (+500)" and again["refine"] != first["refine"]
    assert not (paths.index_dir("m") / first["refine"]).exists()  # the old store went with its version
    loaded = load_index(paths, "m")
    assert loaded.refine.shape == (3000, 32)
    np.testing.assert_allclose(loaded.refine[2500:], vectors[2500:], atol=1e-3)  # new rows after the old
    _, found = loaded.search(vectors[[10, 2999]], 1)
    assert found[:, 0].tolist() == [11, 3000]
    (paths.index_dir("m") / again["refine"]).unlink()  # a store gone missing: codes alone, with a warning
    missing = load_index(paths, "m")
    assert missing.refine is None and "refine store" in caplog.text
    sidecar = paths.index_sidecar("m")
    json_meta = json.loads(sidecar.read_text())
    del json_meta["refine"]  # an index built before refine stores existed
    sidecar.write_text(json.dumps(json_meta))
    old = load_index(paths, "m")
    assert old.refine is None and old.search(vectors[[10]], 1)[1][0, 0] == 11
    rebuilt = build_index(paths, "m", "ivfsq")  # it gets a store by a full build, not an incremental one
    assert rebuilt["mode"] == "full" and "refine" in rebuilt


def test_single_queries_split_their_probes_across_threads_and_answer_as_a_batch(tmp_path, monkeypatch):
    import faiss

    paths, vectors = _tight_dataset(tmp_path)
    build_index(paths, "m", "ivfsq")
    loaded = load_index(paths, "m", effort=8)
    ivf = faiss.extract_index_ivf(loaded.index)
    queries = vectors[[3, 700, 1500, 2999]]
    # the split is decided for two threads whatever the machine (or OMP_NUM_THREADS) gives; no thread is
    # started here (a test process forked after starting FAISS's threads can hang: mutation runs)
    monkeypatch.setattr(faiss, "omp_get_max_threads", lambda: 2)
    batch_scores, batch_ids = loaded.search(queries, 10)
    assert ivf.parallel_mode == 0
    for q, scores, ids in zip(queries, batch_scores, batch_ids):
        one_scores, one_ids = loaded.search(q[None], 10)
        assert ivf.parallel_mode == 1
        assert one_ids[0].tolist() == ids.tolist()
        np.testing.assert_allclose(one_scores[0], scores, rtol=1e-6)
    codes_only = dataclasses.replace(loaded, refine=None)  # the unrefined path splits too
    ivf.parallel_mode = 0
    codes_only.search(queries[:1], 10)
    assert ivf.parallel_mode == 1


@pytest.mark.parametrize("space", ["raw", "diagonal:v1"])
def test_single_flat_queries_rank_as_the_batch_does_in_either_space(space):
    """One query at a time on a flat index gives the ids, order and scores the batch gives, in the
    raw (inner product) and a metric's (L2) space, scores as similarities (higher is better)."""
    import faiss

    from stylesearch.index.load import LoadedIndex

    rng = np.random.default_rng(5)
    rows = rng.normal(size=(2000, 24)).astype(np.float32)
    inner = faiss.IndexFlatIP(24) if space == "raw" else faiss.IndexFlatL2(24)
    index = faiss.IndexIDMap2(inner)
    index.add_with_ids(rows, np.arange(2000, dtype=np.int64) * 3 + 10)
    loaded = LoadedIndex(index, {"kind": "flat", "space": space})
    queries = np.concatenate([rows[[700]] + 0.01, rng.normal(size=(40, 24)).astype(np.float32)])
    batch_scores, batch_ids = loaded.search(queries, 7)
    assert batch_ids[0][0] == 700 * 3 + 10
    assert (np.diff(batch_scores, axis=1) <= 1e-6).all()
    for q, scores, ids in zip(queries, batch_scores, batch_ids):
        one_scores, one_ids = loaded.search(q[None], 7)
        assert one_ids[0].tolist() == ids.tolist()
        np.testing.assert_allclose(one_scores[0], scores, rtol=1e-4, atol=1e-4)


class _Recorder:
    """A Progress that records what it is told."""

    def __init__(self):
        self.events = []

    def start(self, description, total):
        self.events.append(("start", description, total))

    def advance(self, n=1):
        self.events.append(("advance", n))

    def finish(self):
        self.events.append(("finish",))


def test_a_build_reports_its_steps_and_writes_a_complete_sidecar(tmp_path):
    from stylesearch.errors import NotReady

    paths = vector_catalog(tmp_path, "small", unit_rows(300, 8, seed=3))
    progress = _Recorder()
    meta = build_index(paths, "m", "ivf", progress=progress)
    assert progress.events[:2] == [("start", f"training ivf ({meta['nlist']} lists)", None),
                                   ("start", "indexing (ivf)", 300)]
    assert sum(e[1] for e in progress.events if e[0] == "advance") == 300
    sidecar = json.loads(paths.index_sidecar("m").read_text())
    assert (sidecar["model_key"], sidecar["model"], sidecar["dim"], sidecar["count"]) == ("m", "m", 8, 300)
    assert sidecar["nprobe"] == 16 and sidecar["kind"] == "ivf"  # the floor of default_nprobe: few lists
    with open_catalog(paths) as cat, cat.transaction():
        cat.conn.execute("DELETE FROM vectors")
    with pytest.raises(NotReady) as empty:
        build_index(paths, "m")
    assert (empty.value.message, empty.value.hint, empty.value.step) == (
        "No embeddings for model m in 'small'.", "Embed the dataset first.", "embed")


def test_damaged_sidecars_and_index_files_are_named_in_the_refusal(tmp_path):
    from stylesearch.index.load import IndexDamaged, read_index

    paths = vector_catalog(tmp_path, "dmg", unit_rows(50, 8, seed=4))
    meta = build_index(paths, "m", "flat")
    sidecar = paths.index_sidecar("m")
    fix = "Build the index again; the catalog is intact."
    for content, problem in [([1, 2], "is not a JSON object"),
                             ({**meta, "file": "../" + meta["file"]}, "names no index files of this folder"),
                             ({**meta, "file": "index-1/../../../escape.faiss"}, "names no index files of this folder")]:
        sidecar.write_text(json.dumps(content))
        with pytest.raises(IndexDamaged) as damaged:
            read_index(paths, "m")
        assert damaged.value.message == f"The index of m in dataset 'dmg' is damaged: {sidecar} {problem}."
        assert damaged.value.hint == fix
    sidecar.write_text(json.dumps(meta))
    index_file = paths.index_dir("m") / meta["file"]
    index_file.write_bytes(b"not a faiss index" * 10)
    with pytest.raises(IndexDamaged) as unreadable:
        read_index(paths, "m")
    assert unreadable.value.message == f"The index of m in dataset 'dmg' is damaged: {index_file} cannot be read."
    assert load_index(paths, "m") is None  # searches fall back to exact, with a warning


def test_recall_refuses_an_index_of_another_metric_version(tmp_path):
    from stylesearch.errors import NotReady

    paths = vector_catalog(tmp_path, "metric", unit_rows(60, 8, seed=5))
    meta = build_index(paths, "m", "flat")
    assert check_recall(paths, "m", sample=20) == 1.0
    paths.index_sidecar("m").write_text(json.dumps({**meta, "space": "diagonal:v9"}))
    with pytest.raises(NotReady) as stale:
        check_recall(paths, "m", sample=20)
    assert (stale.value.message, stale.value.hint, stale.value.step) == (
        "The index was built for another version of the learned metric.", "Build the index again.", "index")


def test_indexes_load_memory_mapped_and_quantised_scores_are_float32(tmp_path):
    import faiss

    from stylesearch.index.load import _space
    from stylesearch.learn.metric import load_metric

    paths, vectors = _tight_dataset(tmp_path)
    build_index(paths, "m", "ivfsq")
    loaded = load_index(paths, "m")
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(loaded.index).invlists)
    assert isinstance(lists, faiss.OnDiskInvertedLists)  # memory-mapped unless asked to be writable
    in_memory = load_index(paths, "m", writable=True)
    assert not isinstance(faiss.downcast_InvertedLists(faiss.extract_index_ivf(in_memory.index).invlists),
                          faiss.OnDiskInvertedLists)
    scores, found = loaded.search(vectors[[0, 1]], 5)
    assert scores.dtype == np.float32 and found[:, 0].tolist() == [1, 2]  # position 0 is item 1
    raw = load_metric(paths, "m", raw=True, dim=32)
    assert _space(raw, vectors[:3].astype(np.float64)).dtype == np.float32


def test_plans_name_their_sizes_and_factories():
    import os

    from stylesearch.index.plan import format_bytes, memory_budget

    assert choose_plan("ivfpq", 512, 50_000).factory() == "IVF1024,PQ64x8"  # too few vectors for OPQ
    assert choose_plan("ivfpq", 512, 100_000).factory().startswith("OPQ64,")
    hnsw = choose_plan("hnsw", 512, 250_000, 16 * GiB)
    assert hnsw.index_bytes() == 250_000 * (4 * 512 + 2 * 32 * 4)
    assert [format_bytes(n) for n in (512, 1_024_000, 1536 << 20, 5 << 40)] == [
        "512 B", "1000.0 KiB", "1.5 GiB", "5.0 TiB"]
    with open("/proc/meminfo") as fh:
        total = int(next(line for line in fh if line.startswith("MemTotal:")).split()[1]) * 1024
    assert abs(memory_budget() - 0.6 * total) < 0.02 * total  # 60% of physical memory
    assert memory_budget(123) == 123 and os.sysconf("SC_PAGE_SIZE") > 0
