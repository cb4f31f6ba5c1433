"""README options that no test passed through the CLI (issue 27), each checked by what it does:
download --sample/--count/--timeout, transform --format, atlas --tile/--padding/--max-size,
index --check-recall/--raw, search --effort/--group/--raw, train --kind/--rank,
label --retrain-every, serve --threads/--token. No model is loaded."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from stylesearch.index.build import build_index
from stylesearch.learn.metric import DiagonalMetric, save_metric
from stylesearch.store.catalog import open_catalog

from .conftest import make_dataset, unit_rows, vector_catalog


def _jpeg(name: str) -> bytes:
    """A JPEG of a colour from `name` (distinct names: distinct images, so none is a duplicate)."""
    import hashlib

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), tuple(hashlib.sha256(name.encode()).digest()[:3])).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture
def image_server():
    """Any path is its own JPEG, except /slow/... which waits 3 s first; records the paths asked."""
    asked = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            asked.append(self.path)
            if self.path.startswith("/slow/"):
                time.sleep(3)
            body = _jpeg(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", asked
    httpd.shutdown()


def test_download_sample_with_count(cli, image_server, monkeypatch):
    url, asked = image_server
    from stylesearch.ingest import sources

    monkeypatch.setitem(sources.SAMPLE_SOURCES, "picsum", url + "/picsum")  # a loopback stand-in for picsum.photos
    out = cli.json("download", "pics", "--sample", "picsum", "--count", "3", "--json")
    assert out["ok"] == 3
    assert sorted(asked) == [f"/picsum/seed/stylesearch-0-{n}/640/480" for n in range(3)]
    assert sorted(p.name for p in (cli.root / "pics" / "images").iterdir()) == [
        f"picsum-0-{n:05d}.jpg" for n in range(3)]


def test_download_timeout_bounds_each_request(cli, image_server):
    url, _ = image_server
    proc = cli("download", "t", "-", "--timeout", "0.5", "--retries", "0", "--json",
               input=f"{url}/slow/a.jpg\n{url}/fast/b.jpg\n", check=False)
    out = json.loads(proc.stdout)  # the default timeout (20 s) would have waited the 3 s for the slow one
    assert out["ok"] == 1 and out["failure_reasons"] == {"too slow": 1}, out


def test_transform_format_and_atlas_layout_options(cli, root):
    from PIL import Image

    paths = make_dataset(root, "tr", 12)
    cli("transform", "tr", "--format", "webp", "--max-side", "40")
    thumbs = sorted(t for t in paths.thumbs.rglob("*.*") if not t.name.startswith("."))
    assert len(thumbs) == 12 and {t.suffix for t in thumbs} == {".webp"}
    with Image.open(thumbs[0]) as img:
        assert img.format == "WEBP" and max(img.size) == 40
    cli("atlas", "tr", "--tile", "32", "--padding", "3", "--max-size", "120")
    manifest = json.loads((paths.home / "atlas" / "manifest.json").read_text())
    pages = sorted((paths.home / "atlas").glob("atlas-*.png"))
    assert manifest["tile"] == 32 and manifest["padding"] == 3
    assert len(pages) > 1  # 12 tiles of 35 px do not fit one 120 px page
    for page in pages:
        with Image.open(page) as img:
            assert max(img.size) <= 120


def _hidden_metric(dim: int) -> DiagonalMetric:
    weights = np.ones(dim, np.float32)
    weights[: dim // 2] = 0.0
    return DiagonalMetric(weights, {"agreement_after": 0.9})


def test_index_check_recall_and_raw(cli, root):
    vectors = unit_rows(400, 16, seed=3)
    paths = vector_catalog(root, "ix", vectors)
    out = cli.json("index", "ix", "--kind", "flat", "--check-recall", "--json")
    assert out["recall_at_10"] == 1.0 and out["count"] == 400  # flat is exact
    save_metric(paths, "m", _hidden_metric(16))
    learned = cli.json("index", "ix", "--json")
    raw = cli.json("index", "ix", "--raw", "--json")
    assert learned["space"] != "raw" and raw["space"] == "raw"


def test_search_raw_group_and_effort(cli, root):
    from .test_metadata_search import feed_dataset

    paths, vectors = feed_dataset(root, "s", n=300)
    build_index(paths, "m", "hnsw")
    scores = vectors @ vectors[0]
    exact = [int(i) + 1 for i in np.argsort(-scores) if i != 0][:5]
    rows = cli.json("search", "s", "--like", "1", "-k", "5", "--effort", "400", "-f", "json")
    assert [r["id"] for r in rows] == exact
    groups = cli.json("search", "s", "--like", "1", "-k", "5", "--group", "-f", "json")
    with open_catalog(paths) as cat:
        group_of = {it.id: it.group_id for it in cat.items("ok")}
    expected, seen = [], set()  # only the query item is skipped, not its group
    for i in (int(i) + 1 for i in np.argsort(-scores) if i != 0):
        if group_of[i] not in seen:
            seen.add(group_of[i])
            expected.append(i)
    assert [r["id"] for r in groups] == expected[:5]
    save_metric(paths, "m", _hidden_metric(16))
    weighted = vectors[:, 8:]
    metric_order = [int(i) + 1 for i in np.argsort(((weighted - weighted[0]) ** 2).sum(1)) if i != 0][:5]
    assert [r["id"] for r in cli.json("search", "s", "--like", "1", "-k", "5", "-f", "json")] == metric_order
    assert [r["id"] for r in cli.json("search", "s", "--like", "1", "-k", "5", "--raw", "-f", "json")] == exact


def test_train_kind_and_rank(cli, tmp_path):
    from .test_metric import planted_dataset
    from .test_metric import simulate as simulate_user

    paths, vectors, hidden = planted_dataset(tmp_path / "datasets", n=120, dim=16, name="low")
    simulate_user(paths, vectors, hidden, 300, skips=0.02)
    cli.env["STYLESEARCH_HOME"] = str(tmp_path / "datasets")
    report = cli.json("train", "low", "--kind", "lowrank", "--rank", "5", "--json")
    assert report["kind"] == "lowrank" and report["rank"] == 5
    diagonal = cli.json("train", "low", "--kind", "diagonal", "--json")
    assert diagonal["kind"] == "diagonal"


def test_label_retrain_every_reaches_the_session(cli, root, monkeypatch):
    from .test_label_tui import labelled_dataset

    labelled_dataset(root)
    seen = {}

    def run(app):
        seen["retrain_every"] = app.session.loop.retrainer.every

    monkeypatch.setattr("stylesearch.tui.label_app.LabelApp.run", run)
    proc = cli("label", "lab", "--retrain-every", "7")
    assert seen == {"retrain_every": 7}
    assert "label: 0 judgments this session" in proc.stderr


def test_serve_threads_and_token(root):
    from .test_metadata_search import feed_dataset
    from .test_server import SERVE, free_port

    feed_dataset(root, "a", n=20)
    port = free_port()
    env = {**os.environ, "STYLESEARCH_HOME": str(root), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-c", SERVE, "serve", "a", "--port", str(port), "--lazy",
                             "--threads", "2", "--token", "t0ken"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        import httpx

        url = f"http://127.0.0.1:{port}/health"
        deadline = time.monotonic() + 30
        while True:
            try:
                status = httpx.get(url, timeout=1).status_code
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
                time.sleep(0.1)
        assert status == 401
        health = httpx.get(url, headers={"Authorization": "Bearer t0ken"}, timeout=5).json()
        assert health["status"] == "ok"
        assert health.get("threads", 2) == 2
    finally:
        proc.terminate()
        proc.wait(timeout=10)
