"""Damaged or odd state heals or fails clearly: orphaned temp files of map and coordinate writes,
damaged index files, an emptied catalog, bad learned-metric weights, a poisoned query cache, and a
server that answers garbage or trickles bytes (issue #20, items 6-9)."""

from __future__ import annotations

import http.server
import json
import logging
import os
import sqlite3
import threading
import time

import numpy as np
import pytest

from stylesearch.embed.encoders.query import CachedQueryEncoder, QueryCache
from stylesearch.errors import StyleSearchError
from stylesearch.index.build import build_index
from stylesearch.index.load import load_index
from stylesearch.learn.metric import DiagonalMetric, LowRankMetric, save_metric
from stylesearch.maps.projection import render_map, save_projection, write_coords
from stylesearch.store.catalog import open_catalog
from stylesearch.store.files import TEMP_MARK

from .conftest import unit_rows, vector_catalog

# ---------------------------------------------------------------- item 6: temp files beside outputs


def test_map_and_coordinate_writes_remove_orphans_of_killed_writes_of_that_file_only(tmp_path):
    paths = vector_catalog(tmp_path / "datasets", "sweep", unit_rows(6, 4))
    out = tmp_path / "out"
    out.mkdir()
    orphans = [out / f".map.png{TEMP_MARK}k1ll3d.png", out / f".coords.csv{TEMP_MARK}x1.tmp",
               paths.projections / f".m.npz{TEMP_MARK}y2.npz"]
    others = [out / f".other.png{TEMP_MARK}busy.png", out / ".map.png.notes", out / "keep.txt"]
    paths.projections.mkdir(parents=True)
    for file in orphans + others:
        file.write_bytes(b"half-written by a killed run")
    rows = [{"id": i, "path": f"{i}.jpg", "x": float(i), "y": float(i % 3)} for i in range(6)]
    write_coords(rows, out / "coords.csv", "csv")
    report = render_map(paths, rows, out / "map.png", size=96, thumb=32)
    save_projection(paths, "m", np.arange(6), np.zeros((6, 2), np.float32))
    assert report["unreadable"] == 6 and (out / "map.png").stat().st_size > 0
    assert (out / "coords.csv").read_text().startswith("id,path,x,y")
    assert [f.name for f in orphans if f.exists()] == []
    assert [f.name for f in others if not f.exists()] == []


# ---------------------------------------------------------------- item 7: damaged index, catalog, metric


def indexed(root, name, n=80, dim=8):
    vectors = unit_rows(n, dim, seed=3)
    paths = vector_catalog(root, name, vectors)
    return paths, vectors, build_index(paths, "m", "flat")


def exact_like(vectors, item_id, k=10):
    scores = vectors @ vectors[item_id - 1]
    return [int(i) + 1 for i in np.argsort(-scores) if i != item_id - 1][:k]


DAMAGES = {
    "sidecar garbage": lambda p, meta: p.index_sidecar("m").write_text("{not json"),
    "sidecar wrong shape": lambda p, meta: p.index_sidecar("m").write_text("[1, 2]"),
    "sidecar names a file outside": lambda p, meta: p.index_sidecar("m").write_text(
        json.dumps({**meta, "file": "../../catalog.sqlite"})),
    "sidecar of unknown kind": lambda p, meta: p.index_sidecar("m").write_text(json.dumps({**meta, "kind": 7})),
    "faiss garbage": lambda p, meta: (p.index_dir("m") / meta["file"]).write_bytes(b"\x00garbage" * 40),
    "faiss missing": lambda p, meta: (p.index_dir("m") / meta["file"]).unlink(),
    "members garbage": lambda p, meta: (p.index_dir("m") / meta["members"]).write_bytes(b"PK\x03\x04 cut"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_index_searches_exactly_and_index_rebuilds_without_full(cli, root, damage, caplog):
    paths, vectors, meta = indexed(root, "dmg")
    DAMAGES[damage](paths, meta)
    with caplog.at_level(logging.WARNING, logger="stylesearch"):
        rows = cli.json("search", "dmg", "--like", "5", "--format", "json")
    assert [r["id"] for r in rows] == exact_like(vectors, 5)
    if damage != "members garbage":  # searching never reads the members file
        assert "damaged" in caplog.text and "index" in caplog.text
    caplog.clear()
    rebuilt = cli.json("index", "dmg", "--json")  # no --full: a cron job heals by itself
    assert rebuilt["mode"] == "full" and rebuilt["count"] == len(vectors)
    assert load_index(paths, "m").index.ntotal == len(vectors)
    with caplog.at_level(logging.WARNING, logger="stylesearch"):
        assert [r["id"] for r in cli.json("search", "dmg", "--like", "5", "--format", "json")] == exact_like(vectors, 5)
    assert "damaged" not in caplog.text
    assert sorted(f.name for f in paths.index_dir("m").iterdir()) == sorted(
        ["index.json", rebuilt["file"], rebuilt["members"]])


def test_damaged_index_warning_is_one_line_on_stderr_of_the_real_command(cli, root):
    paths, vectors, _ = indexed(root, "stderr")
    paths.index_sidecar("m").write_text("{not json")
    proc = cli.process("search", "stderr", "--like", "5", "--format", "json", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert [r["id"] for r in json.loads(proc.stdout)] == exact_like(vectors, 5)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "damaged" in lines[0] and str(paths.index_sidecar("m")) in lines[0], proc.stderr


def test_reindex_reads_a_damaged_sidecar_as_absent_and_rebuilds(root, monkeypatch):
    from types import SimpleNamespace

    from stylesearch import pipeline

    class Embedded:
        warnings: list = []

        def as_dict(self):
            return {"embedded": 0}

    monkeypatch.setattr(pipeline, "embed_dataset", lambda *a, **kw: Embedded())
    paths, vectors, _ = indexed(root, "cron")
    paths.index_sidecar("m").write_text("\x00\x01 not json")
    report = pipeline.reindex(paths, SimpleNamespace(key="m"))
    assert report["index_kind"] == "flat" and report["index_count"] == len(vectors)
    assert load_index(paths, "m").meta["mode"] == "full"


def test_empty_catalog_is_a_clear_error_for_search_and_index(cli, root):
    paths, _, _ = indexed(root, "zero")
    for extra in ("-wal", "-shm"):
        paths.catalog.with_name(paths.catalog.name + extra).unlink(missing_ok=True)
    paths.catalog.write_bytes(b"")
    for args in (("search", "zero", "--like", "1"), ("index", "zero")):
        proc = cli(*args, check=False)
        assert proc.returncode in (1, 2) and proc.stdout == ""
        first = proc.stderr.splitlines()[0]
        assert first.startswith("error:") and str(paths.catalog) in first and "empty" in first, proc.stderr
        assert "embed" in proc.stderr


def test_reindex_rebuilds_an_emptied_catalog_from_the_images(cli, root, monkeypatch):
    from stylesearch import pipeline

    def embed_everything(paths, spec, **kw):  # stands in for the model: the catalog must take writes again
        with open_catalog(paths) as cat, cat.transaction():
            cat.vectors.ensure_model(spec.key, spec.name, "t", 8, "float32")
            for i in range(12):
                cat.upsert_item(f"{i}.jpg", content_hash=f"{i:064d}", status="ok")
            cat.vectors.put(spec.key, [f"{i:064d}" for i in range(12)], unit_rows(12, 8), "float32")

        class Embedded:
            warnings: list = []

            def as_dict(self):
                return {"embedded": 12}
        return Embedded()

    monkeypatch.setattr(pipeline, "embed_dataset", embed_everything)
    paths, _, _ = indexed(root, "emptied")
    paths.catalog.write_bytes(b"")
    proc = cli("reindex", "emptied", "--json")
    assert json.loads(proc.stdout)["index_count"] == 12
    assert "was empty" in proc.stderr and str(paths.catalog) in proc.stderr
    with open_catalog(paths, readonly=True) as cat:
        assert len(cat.items()) == 12


BAD_METRICS = {
    "nan": lambda dim: DiagonalMetric(np.full(dim, np.nan)),
    "inf": lambda dim: DiagonalMetric(np.r_[np.inf, np.ones(dim - 1)]),
    "negative": lambda dim: DiagonalMetric(-np.ones(dim)),
    "absurd": lambda dim: DiagonalMetric(np.full(dim, 1e30)),
    "all zero": lambda dim: DiagonalMetric(np.zeros(dim)),
    "lowrank nan": lambda dim: LowRankMetric(np.full((2, dim), np.nan)),
}


def write_metric(paths, metric) -> None:
    """Metric files as a damaged disk, a hand edit or another program leaves them (save_metric refuses these)."""
    paths.metric_dir("m").mkdir(parents=True, exist_ok=True)
    np.savez(paths.metric_arrays("m"), kind=np.array(metric.kind), version=np.array("v1"), **metric.arrays())
    paths.metric_meta("m").write_text(json.dumps({"kind": metric.kind, "version": "v1"}))


@pytest.mark.parametrize("bad", list(BAD_METRICS))
def test_metric_with_unusable_weights_is_refused_with_a_clear_error(cli, root, bad):
    paths, _, _ = indexed(root, "met")
    write_metric(paths, BAD_METRICS[bad](8))
    with pytest.raises(StyleSearchError, match="not saved"):
        save_metric(paths, "m", BAD_METRICS[bad](8))
    for args in (("search", "met", "--like", "1", "--min-score", "0"), ("index", "met")):
        proc = cli(*args, check=False)
        assert proc.returncode == 1 and proc.stdout == "", proc.stdout
        first = proc.stderr.splitlines()[0]
        assert first.startswith("error:") and str(paths.metric_arrays("m")) in first, proc.stderr
        assert "Train the metric again" in proc.stderr and "delete" in proc.stderr


def test_garbage_metric_metadata_is_refused_with_a_clear_error(cli, root):
    paths, _, _ = indexed(root, "metjson")
    save_metric(paths, "m", DiagonalMetric(np.ones(8)))
    paths.metric_meta("m").write_text("{garbage")
    proc = cli("search", "metjson", "--like", "1", check=False)
    assert proc.returncode == 1 and str(paths.metric_meta("m")) in proc.stderr.splitlines()[0], proc.stderr
    assert "Train the metric again" in proc.stderr


def test_health_answers_while_dataset_files_are_damaged(root):
    from fastapi.testclient import TestClient

    from stylesearch.server.app import create_app
    from stylesearch.server.config import ServerConfig

    paths, vectors, _ = indexed(root, "served")
    zero, _, _ = indexed(root, "zeroed")
    client = TestClient(create_app(ServerConfig(root=str(root), preload=False)), base_url="http://127.0.0.1")
    assert client.post("/api/datasets/served/search", json={"likes": ["5"]}).status_code == 200  # warm searcher
    paths.index_sidecar("m").write_text("{garbage")
    paths.thumbs.mkdir(parents=True, exist_ok=True)
    paths.thumbs_params.write_text("{garbage")
    paths.atlas.mkdir(parents=True, exist_ok=True)
    paths.atlas_manifest.write_text("[[[")
    zero.catalog.write_bytes(b"")
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert {d["name"] for d in health.json()["datasets"]} == {"served", "zeroed"}
    found = client.post("/api/datasets/served/search", json={"likes": ["5"], "k": 10})
    assert found.status_code == 200 and [r["id"] for r in found.json()["rows"]] == exact_like(vectors, 5)
    served = next(d for d in client.get("/health").json()["datasets"] if d["name"] == "served")
    assert served["loaded"] and served["models"][0]["index"] is None  # damaged: no index named
    info = client.get("/api/datasets/served")
    assert info.status_code == 200 and info.json()["models"][0]["index"] is None
    assert info.json()["thumbnails"] is None and info.json()["atlas"] is None


def test_info_describes_a_dataset_whose_sidecars_are_garbage(cli, root):
    paths, _, _ = indexed(root, "garbled")
    paths.index_sidecar("m").write_text("{garbage")
    paths.metric_dir("m").mkdir(parents=True)
    paths.metric_meta("m").write_text("nan nan")
    paths.atlas.mkdir(parents=True)
    paths.atlas_manifest.write_text(json.dumps({"pages": ["../../../etc/passwd", "atlas-0.png"]}))
    info = cli.json("info", "garbled", "--json")
    assert info["models"][0]["index"] is None and info["models"][0]["metric"] is None
    assert info["atlas"] == ["atlas-0.png"]


# ---------------------------------------------------------------- item 8: the query cache


class Counting:
    text_id = "fake:1"

    def __init__(self, dim=4):
        self.dim, self.calls = dim, []

    def encode_text(self, texts):
        self.calls.append(list(texts))
        return np.stack([np.full(self.dim, 0.5, np.float32) * (1 + n) for n, _ in enumerate(texts)])


def test_query_cache_rows_of_wrong_size_nan_or_wrong_type_are_misses_and_rewritten(tmp_path):
    cache = QueryCache("m", tmp_path / "cache", dim=4)
    inner = Counting()
    encoder = CachedQueryEncoder(inner, cache)
    texts = ["ok", "short", "long", "odd", "nan", "text"]
    encoder.encode_text(texts)
    with sqlite3.connect(cache.path) as conn:
        for text, value in (("short", np.ones(3, np.float32).tobytes()), ("long", np.ones(8, np.float32).tobytes()),
                            ("odd", b"\x01\x02\x03"), ("nan", np.full(4, np.nan, np.float32).tobytes()),
                            ("text", "not a vector")):
            conn.execute("UPDATE vectors SET vector=? WHERE text=?", (value, text))
    inner.calls.clear()
    out = encoder.encode_text(texts)
    assert out.shape == (6, 4) and np.isfinite(out).all()
    assert inner.calls == [["short", "long", "odd", "nan", "text"]]
    inner.calls.clear()
    encoder.encode_text(texts)  # the bad rows were overwritten
    assert inner.calls == []


def test_query_cache_without_known_size_never_mixes_sizes(tmp_path):
    cache = QueryCache("m", tmp_path / "cache")
    inner = Counting()
    encoder = CachedQueryEncoder(inner, cache)
    encoder.encode_text(["a", "b"])
    with sqlite3.connect(cache.path) as conn:
        conn.execute("UPDATE vectors SET vector=? WHERE text='a'", (np.ones(3, np.float32).tobytes(),))
    out = encoder.encode_text(["a", "b"])
    assert out.shape == (2, 4)


def _unblock(fifo) -> None:
    """Let a reader stuck on the FIFO go (old code opened it and waited for a writer)."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


def test_query_cache_refuses_a_fifo_instead_of_waiting_on_it(tmp_path):
    cache = QueryCache("m", tmp_path / "cache", dim=4)
    cache.path.parent.mkdir(parents=True)
    fifo = cache.path
    os.mkfifo(fifo)
    inner = Counting()
    result = {}
    worker = threading.Thread(target=lambda: result.update(out=CachedQueryEncoder(inner, cache).encode_text(["a"])),
                              daemon=True)
    worker.start()
    worker.join(5)
    if worker.is_alive():
        _unblock(fifo)
        worker.join(5)
        pytest.fail("the query cache waited on a FIFO")
    assert result["out"].shape == (1, 4) and inner.calls == [["a"]]
    assert fifo.exists() and not fifo.is_file()  # left alone


# ---------------------------------------------------------------- item 9: a misbehaving server


class Misbehaving(http.server.BaseHTTPRequestHandler):
    """Answers every POST by its path: garbage, JSON of the wrong shape, or a slow trickle."""

    REPLIES = {
        "garbage": b"<html>surprise</html>",
        "list": b"[1, 2, 3]",
        "norows": b'{"title": "x", "terms": []}',
        "badrows": b'{"rows": [1, "x"], "title": "x", "terms": []}',
        "badterms": b'{"rows": [], "title": "x", "terms": [{"weight": 1}]}',
    }

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        kind = self.path.split("/")[3]
        body = self.REPLIES.get(kind, b'{"rows": [], "title": "t", "terms": []}')
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body) + (40 if kind == "trickle" else 0)))
        self.end_headers()
        if kind == "trickle":  # one byte every 0.2 s: each read is quick, the whole takes 8 s
            for _ in range(40):
                try:
                    self.wfile.write(b" ")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.2)
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def bad_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Misbehaving)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("kind", ["garbage", "list", "norows", "badrows", "badterms", "trickle"])
def test_server_search_against_a_misbehaving_server_is_one_clear_line(cli, bad_server, monkeypatch, kind):
    monkeypatch.setattr("stylesearch.query.remote.TIMEOUT_SECONDS", 1.0, raising=False)
    started = time.monotonic()
    proc = cli("search", kind, "--like", "1", "--server", bad_server, check=False)
    took = time.monotonic() - started
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("error:") and bad_server in lines[0], proc.stderr
    assert took < 3.5, f"took {took:.1f} s"
    if kind == "trickle":
        assert "1 s" in lines[0] or "1.0 s" in lines[0]

