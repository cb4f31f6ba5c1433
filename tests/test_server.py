"""The HTTP server: API over TestClient (no model: `like:` terms, a fake text encoder), reloading,
limits and safety, the triplets log under concurrency, and a real uvicorn process driven by
`stylesearch search --server` with byte-identical output."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("multipart")

from stylesearch.index.build import build_index  # noqa: E402
from stylesearch.learn.metric import DiagonalMetric, save_metric  # noqa: E402
from stylesearch.server.app import create_app  # noqa: E402
from stylesearch.server.config import ServerConfig  # noqa: E402
from stylesearch.store.catalog import open_catalog  # noqa: E402

from .conftest import make_dataset  # noqa: E402
from .test_metadata_search import feed_dataset  # noqa: E402

SERVE = ("import sys; from stylesearch.cli.main import app, main; from stylesearch.cli import serve_cmd\n"
         "if not any(c.name == 'serve' for c in app.registered_commands): serve_cmd.register(app)\n"
         "sys.argv[0] = 'stylesearch'; main()")


def picture_dataset(root: Path, name: str = "pics", count: int = 30):
    """Generated images with thumbnails, an atlas, colour-feature vectors, metadata and 2D coordinates
    (everything the page shows, without a model)."""
    from PIL import Image

    from stylesearch.ingest.transform import TransformOptions, transform_dataset
    from stylesearch.maps.atlas import AtlasOptions, build_atlas
    from stylesearch.maps.projection import save_projection

    paths = make_dataset(root, name, count)
    transform_dataset(paths, TransformOptions(max_side=128, workers=1))
    with open_catalog(paths) as cat, cat.transaction():
        items = cat.items("ok")
        rows = []
        for item in items:
            with Image.open(paths.item_file(item.path)) as img:
                rows.append(np.asarray(img.convert("RGB").resize((4, 4)), dtype=np.float32).ravel() / 255 - 0.5)
            palette, pattern = item.path.split("/")[0], item.path.split("/")[1].split("-")[0]
            cat.set_metadata(item.id, {"palette": palette, "pattern": pattern})
        vectors = np.stack(rows)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        cat.vectors.ensure_model("m", "m", "t", vectors.shape[1], "float32")
        cat.vectors.put("m", [it.content_hash for it in items], vectors, "float32")
    centred = vectors - vectors.mean(0)
    coords = centred @ np.linalg.svd(centred, full_matrices=False)[2][:2].T
    save_projection(paths, "m", np.array([it.id for it in items]), coords.astype(np.float32))
    build_atlas(paths, AtlasOptions(tile=48))
    return paths


class FakeEncoder:
    """Text vectors from a hash of the text (deterministic), so text search runs without a model."""

    text_id = "fake"

    def __init__(self, dim: int):
        self.dim = dim

    def encode_text(self, texts):
        out = []
        for text in texts:
            v = np.random.default_rng(sum(text.encode())).normal(size=self.dim).astype(np.float32)
            out.append(v / np.linalg.norm(v))
        return np.stack(out)

    def encode_image(self, image):
        v = np.asarray(image.convert("RGB").resize((4, 4)), dtype=np.float32).ravel() / 255 - 0.5
        return (v / np.linalg.norm(v))[: self.dim]


@pytest.fixture
def client(root):
    from fastapi.testclient import TestClient

    def make(**config):
        app = create_app(ServerConfig(root=str(root), preload=False, **config))
        return TestClient(app, base_url="http://127.0.0.1")
    return make


def search(c, name, **body):
    r = c.post(f"/api/datasets/{name}/search", json=body)
    assert r.status_code == 200, r.text
    return r.json()["rows"]


def test_search_similar_and_cross_dataset_match_the_library(client, root):
    from stylesearch.query.filters import parse_filters
    from stylesearch.query.search import SearchRequest, Term, search_datasets
    from stylesearch.query.search import search as lib_search

    a, _ = feed_dataset(root, "a", n=60, seed=1)
    b, _ = feed_dataset(root, "b", n=60, seed=2)
    c = client()
    rows = search(c, "a", likes=["3"], k=5, where=["category in (summer, winter)"], group=True)
    like3 = [Term(1.0, "like", "3")]
    assert rows == lib_search(a, SearchRequest(like3, k=5, filters=parse_filters(["category in (summer, winter)"]),
                                               group=True))
    assert c.get("/api/datasets/a/similar/3?k=5").json()["rows"] == lib_search(a, SearchRequest(like3, k=5))
    many = c.post("/api/search", json={"likes": ["1"], "k": 8, "all": True}).json()
    assert many["title"] == "a, b"
    assert many["rows"] == search_datasets([a, b], SearchRequest([Term(1.0, "like", "1")], k=8))
    health = c.get("/health").json()
    assert health["status"] == "ok" and {d["name"] for d in health["datasets"]} == {"a", "b"}


def test_items_files_distances_map_and_docs(client, root):
    paths = picture_dataset(root)
    c = client()
    page = c.get("/api/datasets/pics/items?limit=5&offset=2&where=palette=warm").json()
    assert page["total"] == 6 and [it["meta"]["palette"] for it in page["items"]] == ["warm"] * 4
    first = c.get("/api/datasets/pics/items/1").json()["path"]
    thumb = (paths.thumbs / first).with_suffix(".jpg")
    assert c.get("/api/datasets/pics/items/1/thumb").content == thumb.read_bytes()
    assert c.get("/api/datasets/pics/items/1/image").headers["content-type"] == "image/jpeg"
    assert c.get("/api/datasets/pics/items/999/image").status_code == 404
    assert c.get("/api/datasets/pics/items/..%2f..%2fcatalog.sqlite/image").status_code in (400, 404)
    d = c.get("/api/datasets/pics/distances/1").json()
    assert d["ids"][0] == 1 and d["distances"][0] == 0 and d["count"] == 30 and d["metric"]["kind"] == "identity"
    assert d["distances"] == sorted(d["distances"])
    m = c.get("/api/datasets/pics/map").json()
    assert m["count"] == 30 and len(m["x"]) == 30 and m["atlas"]["sprites"][0][0] == 0
    assert c.get("/api/datasets/pics/atlas/0").headers["content-type"] == "image/png"
    spec = c.get("/openapi.json").json()
    assert "/api/datasets/{name}/search" in spec["paths"] and "SearchBody" in spec["components"]["schemas"]
    assert c.get("/docs").status_code == 200 and b"stylesearch" in c.get("/").content


def test_text_and_uploaded_image_search(client, root, monkeypatch):
    paths = picture_dataset(root)
    monkeypatch.setattr("stylesearch.query.search.query_encoder", lambda p, spec, device="auto", **_: FakeEncoder(48))
    c = client()
    text = search(c, "pics", terms=["red dress", "-blue"], k=3)
    assert len(text) == 3
    image = (paths.images / "cool/dots-0007.jpg").read_bytes()
    r = c.post("/api/datasets/pics/search", data={"query": json.dumps({"terms": ["image:q.jpg"], "k": 1})},
               files=[("image", ("q.jpg", image, "image/jpeg"))])
    assert r.status_code == 200, r.text
    assert r.json()["rows"][0]["path"] == "cool/dots-0007.jpg"
    r = c.post("/api/datasets/pics/search", json={"images": ["/etc/passwd"]})
    assert r.status_code == 400 and "was not uploaded" in r.json()["error"]
    r = c.post("/api/datasets/pics/search", data={"query": json.dumps({"images": ["x"]})},
               files=[("image", ("x", b"not an image", "image/jpeg"))])
    assert r.status_code == 400 and "not an image" in r.json()["error"]


def test_errors_are_json_with_status_and_hint(client, root):
    feed_dataset(root, "a", n=20)
    big = make_dataset(root, "raw", 3)  # items, no embeddings
    c = client(max_upload_bytes=4000, max_body_bytes=1000)
    cases = [("get", "/api/datasets/nope", {}, 404, "No dataset named 'nope'"),
             ("get", "/api/datasets/a/similar/999", {}, 404, "No item '999'"),
             ("post", "/api/datasets/a/search", {"json": {"likes": ["1"], "k": 5000}}, 400, "k must be between"),
             ("post", "/api/datasets/a/search", {"json": {"likes": ["1"], "where": ["price<<3"]}}, 400, "position 7"),
             ("post", "/api/datasets/a/search", {"json": {}}, 400, "Nothing to search for"),
             ("post", "/api/datasets/a/search", {"content": b"{", "headers": {"content-type": "application/json"}},
              400, "Invalid search request"),
             ("get", f"/api/datasets/{big.name}/similar/1", {}, 409, "has no embeddings"),
             ("get", "/api/datasets/a/map", {}, 409, "No UMAP coordinates"),
             ("post", "/api/datasets/a/search", {"content": b"x" * 5000, "headers": {"content-type": "image/png"}},
              413, "too large")]
    for method, url, kw, status, text in cases:
        r = getattr(c, method)(url, **kw)
        assert r.status_code == status, (url, r.status_code, r.text)
        body = r.json()
        assert text in body["error"] and set(body) >= {"error", "hint", "step"}, body
    assert c.get(f"/api/datasets/{big.name}/similar/1").json()["step"] == "embed"
    chunked = c.post("/api/triplets", content=iter([b"{" + b" " * 1500 + b"}"]),
                     headers={"content-type": "application/json"})  # no Content-Length: counted as it comes
    assert chunked.status_code == 413 and "too large" in chunked.json()["error"]


def test_pixel_limit_on_uploads(client, root):
    import io

    from PIL import Image

    feed_dataset(root, "a", n=20)
    buf = io.BytesIO()
    Image.new("L", (3000, 3000)).save(buf, format="PNG")
    c = client(max_pixels=1_000_000)
    r = c.post("/api/datasets/a/search", data={"query": json.dumps({"images": ["big.png"]})},
               files=[("image", ("big.png", buf.getvalue(), "image/png"))])
    assert r.status_code == 413 and "pixels" in r.json()["error"]


def test_token_host_and_bind_safety(client, root):
    from stylesearch.errors import UserError
    from stylesearch.server.config import check_bind

    feed_dataset(root, "a", n=10)
    c = client(token="s3cret")
    assert c.get("/api/datasets").status_code == 401 and c.get("/health").status_code == 401
    assert c.get("/api/datasets", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert c.get("/static/app.js").status_code == 200
    c.get("/?token=s3cret")  # the page sets the cookie once
    assert c.get("/api/datasets").status_code == 200
    loopback = client()
    assert loopback.get("/health", headers={"host": "evil.example:8000"}).status_code == 400
    assert loopback.get("/health", headers={"host": "localhost:8000"}).status_code == 200
    with pytest.raises(UserError, match="without a token"):
        check_bind("0.0.0.0", None)
    check_bind("0.0.0.0", "t")
    check_bind("::1", None)


def test_reloads_new_embeddings_index_and_metric_without_restart(client, root):
    paths, vectors = feed_dataset(root, "a", n=40)
    c = client()
    before = search(c, "a", likes=["1"], k=40)  # exact search over the catalog's vectors (no index yet)
    with open_catalog(paths) as cat, cat.transaction():  # new items with vectors, as `embed` adds them
        for n in range(3):
            cat.upsert_item(f"new-{n}.jpg", content_hash=f"new{n:061d}", status="ok")
        cat.vectors.put("m", [f"new{n:061d}" for n in range(3)], np.tile(vectors[0], (3, 1)), "float32")
    after = search(c, "a", likes=["1"], k=3)
    assert {r["path"] for r in after} == {"new-0.jpg", "new-1.jpg", "new-2.jpg"} and len(before) == 39
    build_index(paths, "m", "flat")
    assert c.get("/health").json()["datasets"][0]["models"][0]["index"]["count"] == 43
    assert {r["path"] for r in search(c, "a", likes=["1"], k=3)} == {r["path"] for r in after}
    weights = np.ones(16, np.float32)
    weights[:8] = 0.0
    save_metric(paths, "m", DiagonalMetric(weights, {"agreement_after": 0.9}))
    assert c.get("/api/datasets/a/distances/1").json()["metric"]["kind"] == "diagonal"
    assert search(c, "a", likes=["2"], k=5) != search(c, "a", likes=["2"], k=5, raw=True)
    assert c.get("/health").json()["datasets"][0]["reloads"] >= 3


def test_triplets_validate_and_concurrent_posts_keep_the_log_whole(client, root):
    from stylesearch.learn.judgments import read_log

    paths = picture_dataset(root, count=12)
    c = client()
    items = [it["path"] for it in c.get("/api/datasets/pics/items").json()["items"]]
    bad = c.post("/api/triplets", json={"dataset": "pics", "anchor": items[0], "left": items[0], "right": items[1],
                                        "choice": "left"})
    assert bad.status_code == 400 and "three distinct" in bad.json()["hint"]
    assert c.post("/api/triplets", json={"dataset": "pics", "anchor": items[0], "left": items[1], "right": items[2],
                                         "choice": "maybe"}).status_code == 400
    assert c.post("/api/triplets", json={"dataset": "pics", "anchor": "nope.jpg", "left": items[1],
                                         "right": items[2], "choice": "left"}).status_code == 404

    def post(n):
        a, l, r = items[n % 12], items[(n + 1) % 12], items[(n + 2) % 12]
        resp = c.post("/api/triplets", json={"dataset": "pics", "anchor": a, "left": l, "right": r,
                                             "choice": "left", "session": None})
        assert resp.status_code == 200, resp.text
    threads = [threading.Thread(target=lambda k=k: [post(k * 10 + n) for n in range(10)]) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log = read_log(paths.triplets)
    assert len(log.judgments) == 60 and log.malformed == 0
    listed = c.get("/api/triplets?dataset=pics&limit=5").json()
    assert listed["total"] == 60 and len(listed["judgments"]) == 5 and listed["counts"]["left"] == 60


def test_labelling_session_judge_and_undo(client, root):
    from stylesearch.learn.judgments import read_log

    paths = picture_dataset(root, count=12)
    c = client()
    view = c.get("/api/datasets/pics/label?session=web-1").json()
    t = view["triplet"]
    answer = c.post("/api/triplets", json={"dataset": "pics", "session": "web-1", "anchor": t["anchor"]["path"],
                                           "left": t["left"]["path"], "right": t["right"]["path"],
                                           "choice": "right"}).json()
    assert answer["record"]["choice"] == "right" and answer["record"]["session"] == "web-1"
    assert answer["next"]["triplet"] != t and answer["next"]["status"]["total"] == 1
    undone = c.post("/api/triplets/undo", json={"dataset": "pics", "session": "web-1"}).json()
    assert undone["undone"]["id"] == answer["record"]["id"] and undone["next"]["triplet"] == t
    assert read_log(paths.triplets).judgments == [] and read_log(paths.triplets).undone == 1
    assert c.get("/api/datasets/pics/label?session=../x").status_code == 400


def test_cross_site_and_non_json_posts_are_refused(client, root):
    """What any web page can send to a token-less loopback server without CORS (text/plain or form
    bodies, or any request carrying a foreign Origin) is refused; the page and the CLI still work."""
    from stylesearch.learn.judgments import read_log

    paths, _ = feed_dataset(root, "a", n=20)
    c = client()
    url, body = "/api/datasets/a/search", json.dumps({"likes": ["1"], "k": 3})
    evil = {"origin": "http://evil.example"}
    judgment = {"dataset": "a", "anchor": "1.jpg", "left": "2.jpg", "right": "3.jpg", "choice": "left"}
    refused = [(url, {"content": body, "headers": {"content-type": "text/plain", **evil}}, 403),
               (url, {"json": {"likes": ["1"]}, "headers": evil}, 403),
               (url, {"json": {"likes": ["1"]}, "headers": {"origin": "null"}}, 403),
               (url, {"json": {"likes": ["1"]}, "headers": {"origin": "http://127.0.0.1:9999"}}, 403),
               (url, {"json": {"likes": ["1"]}, "headers": {"sec-fetch-site": "cross-site"}}, 403),
               (url, {"json": {"likes": ["1"]}, "headers": {"sec-fetch-site": "same-site"}}, 403),
               (url, {"data": {"query": body}, "files": [("image", ("x.jpg", b"x", "image/jpeg"))],
                      "headers": evil}, 403),
               ("/api/triplets", {"json": judgment, "headers": evil}, 403),
               (url, {"content": body, "headers": {"content-type": "text/plain"}}, 415),
               (url, {"content": body}, 415),
               (url, {"data": {"query": body}}, 415),  # application/x-www-form-urlencoded
               ("/api/search", {"content": json.dumps({"likes": ["1"], "all": True}),
                                "headers": {"content-type": "text/plain;charset=UTF-8"}}, 415),
               ("/api/triplets", {"content": json.dumps(judgment), "headers": {"content-type": "text/plain"}}, 415),
               ("/api/triplets", {"data": {"query": "{}"}, "files": [("image", ("x", b"x", "image/jpeg"))]}, 415)]
    for path, kw, status in refused:
        r = c.post(path, **kw)
        assert r.status_code == status, (path, kw, r.status_code, r.text)
        assert set(r.json()) >= {"error", "hint", "step"}
    assert read_log(paths.triplets).judgments == []
    same = {"origin": "http://127.0.0.1", "sec-fetch-site": "same-origin"}  # what the page sends
    assert c.post(url, json={"likes": ["1"], "k": 3}, headers=same).status_code == 200
    assert c.post(url, json={"likes": ["1"], "k": 3}).status_code == 200  # no Origin: the CLI, curl
    charset = {"content-type": "application/json; charset=utf-8"}
    assert c.post(url, json={"likes": ["1"]}, headers=charset).status_code == 200
    assert c.post("/api/triplets", json=judgment, headers=same).status_code == 200
    proxied = {"origin": "https://search.example", "x-forwarded-host": "search.example"}  # behind a proxy
    assert c.post(url, json={"likes": ["1"]}, headers=proxied).status_code == 200
    assert c.get("/api/datasets/a/similar/1", headers=evil).status_code == 200  # reads without a body


class ImageHost:
    """A local HTTP server standing in for remote image hosts: /img (a JPEG), /busy (503, Retry-After),
    /slow (answers once released), /hop (redirects to an IPv6 loopback URL); it counts requests."""

    def __init__(self, image: bytes):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.hits: list[str] = []
        self.arrived, self.release = threading.Event(), threading.Event()
        host = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                host.hits.append(self.path)
                if self.path == "/busy":
                    return self._send(503, b"internal detail", {"Retry-After": "1"})
                if self.path == "/hop":
                    return self._send(302, b"", {"Location": f"http://[::1]:{host.port}/img"})
                if self.path == "/slow":
                    host.arrived.set()
                    host.release.wait(3)
                self._send(200, image, {"Content-Type": "image/jpeg"})

            def _send(self, code, data, headers):
                self.send_response(code)
                for k, v in {**headers, "Content-Length": str(len(data))}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def test_query_image_urls_public_only_one_try_off_the_engine_thread(client, root, monkeypatch):
    paths = picture_dataset(root, count=12)
    monkeypatch.setattr("stylesearch.query.search.query_encoder", lambda p, spec, device="auto", **_: FakeEncoder(48))
    image_path = next(paths.images.rglob("dots-*.jpg"))
    host = ImageHost(image_path.read_bytes())
    c = client(fetch_timeout=0.5)
    url = "/api/datasets/pics/search"
    try:  # internal addresses are refused before any connection
        for target in (host.url("/img"), host.url("/img", "localhost"), host.url("/img", "[::1]"),
                       "http://10.1.2.3/x.jpg", "http://169.254.169.254/latest/meta-data", "http://0.0.0.0:1/"):
            r = c.post(url, json={"images": [target]})
            assert r.status_code == 400 and "only from public addresses" in r.json()["error"], (target, r.text)
        assert host.hits == []
        # from here on 127.0.0.1 stands in for a public host (::1 stays refused)
        monkeypatch.setattr("stylesearch.ingest.fetch.address_refused", lambda address: address == "::1")
        started = time.monotonic()
        r = c.post(url, json={"images": [host.url("/busy")]})  # one try, no Retry-After sleep, no remote detail
        assert r.status_code == 400 and r.json()["error"] == f"Could not fetch query image {host.url('/busy')}."
        assert "503" not in r.text and "internal detail" not in r.text and host.hits == ["/busy"]
        assert time.monotonic() - started < 2.5  # the old code slept on Retry-After between 4 tries
        r = c.post(url, json={"images": [host.url("/hop")]})  # every redirect hop is checked
        assert r.status_code == 400 and "only from public addresses" in r.json()["error"]
        assert c.post(url, json={"images": [host.url("/slow")]}).status_code == 400  # the deadline (0.5 s)
        rows = search(c, "pics", terms=[f"image:{host.url('/img')}"], k=1)
        assert rows[0]["path"] == image_path.relative_to(paths.images).as_posix()
        host.arrived.clear()
        c = client(fetch_timeout=5)
        answer = {}
        slow = threading.Thread(target=lambda: answer.update(r=c.post(url, json={"images": [host.url("/slow")]})))
        slow.start()
        assert host.arrived.wait(5)
        started = time.monotonic()  # the engine thread is free while an image is being fetched
        assert c.get("/api/datasets/pics/similar/1?k=2").status_code == 200
        assert time.monotonic() - started < 2  # the slow image host holds its answer for 3 s
        host.release.set()
        slow.join(10)
        assert answer["r"].status_code == 200
    finally:
        host.close()


def test_images_inside_tar_shards_are_served(client, root):
    import tarfile

    from stylesearch.ingest.scan import scan
    from stylesearch.ingest.transform import TransformOptions, transform_dataset
    from stylesearch.store.datasets import create_dataset
    from stylesearch.store.paths import dataset_paths, thumbnail_for

    from .test_shards import write_shard

    paths = dataset_paths("tars", root)
    create_dataset(paths)
    shard = paths.images / "shards" / "00000.tar"
    write_shard(shard, ["000000", "000001"])
    with open_catalog(paths) as cat:
        scan(cat)
        item = next(it for it in cat.items("ok") if it.path == "shards/00000.tar#000001.jpg")
    with tarfile.open(shard) as tar:
        original = tar.extractfile("000001.jpg").read()
    c = client()
    base = f"/api/datasets/tars/items/{item.id}"
    for kind in ("image", "thumb"):  # no thumbnails yet: the thumb is the original
        r = c.get(f"{base}/{kind}")
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg" and r.content == original, kind
    transform_dataset(paths, TransformOptions(max_side=32, workers=1))
    thumb = thumbnail_for(paths, item.path, item.content_hash)
    assert thumb.is_file() and c.get(f"{base}/thumb").content == thumb.read_bytes() != original
    write_shard(shard, ["000000"])  # the member is gone (not scanned again)
    r = c.get(f"{base}/image")
    assert r.status_code == 404 and "missing" in r.json()["error"]


def test_effort_is_set_per_query_and_query_encoders_are_shared(client, root, monkeypatch):
    import itertools

    import faiss

    import stylesearch.query.search as search_module
    from stylesearch.index.load import HNSW_EF_SEARCH, LoadedIndex

    a, _ = feed_dataset(root, "a", n=60, seed=1)
    feed_dataset(root, "b", n=60, seed=2)
    build_index(a, "m", "hnsw")
    loads, seen, encoders = [], [], []
    load_index, index_search = search_module.load_index, LoadedIndex.search
    monkeypatch.setattr(search_module, "load_index",
                        lambda *args, **kw: loads.append(args[1]) or load_index(*args, **kw))

    def spy(self, queries, k):
        seen.append(faiss.downcast_index(self.index.index).hnsw.efSearch)
        return index_search(self, queries, k)
    monkeypatch.setattr(LoadedIndex, "search", spy)
    monkeypatch.setattr("stylesearch.query.search.query_encoder",
                        lambda p, spec, device="auto", **_: encoders.append(p.name) or FakeEncoder(16))
    c = client()
    default = search(c, "a", likes=["1"], k=5)
    for effort in (8, 64, 8, 1000):
        assert [r["id"] for r in search(c, "a", likes=["1"], k=5, effort=effort)][:1] == [default[0]["id"]]
    many = c.post("/api/search", json={"likes": ["1"], "k": 5, "datasets": ["a", "b"], "effort": 32})
    assert many.status_code == 200, many.text
    assert search(c, "a", likes=["1"], k=5) == default
    assert len(loads) == 2  # one Searcher per dataset, whatever the effort (b: no index)
    assert [e for e, _ in itertools.groupby(seen)] == [HNSW_EF_SEARCH, 8, 64, 8, 1000, 32, HNSW_EF_SEARCH]
    for name in ("a", "b", "a"):  # one query encoder per model, for every dataset embedded with it
        assert len(search(c, name, terms=["red dress"], k=3)) == 3
    assert encoders == ["a"]


# ---------------------------------------------------------------- a real server and the CLI fast path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def live_server(root):
    """`stylesearch serve` in its own process on a loopback port (started by each test that uses it)."""
    procs = []

    def start(*datasets: str, extra=(), home=None, env=None):
        port = free_port()
        env = {**os.environ, "STYLESEARCH_HOME": str(home or root), "PYTHONWARNINGS": "ignore", **(env or {})}
        proc = subprocess.Popen([sys.executable, "-c", SERVE, "serve", *datasets, "--port", str(port), "--lazy",
                                 *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        from stylesearch.query.remote import ServerClient

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                ServerClient(url, timeout=1).get("/health")
                return url
            except Exception:
                if proc.poll() is not None:
                    raise AssertionError(proc.stderr.read().decode())
                time.sleep(0.1)
        raise AssertionError("server did not start")
    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


def test_cli_through_a_real_server_prints_identical_output(cli, root, live_server):
    feed_dataset(root, "a", n=80, seed=1)
    feed_dataset(root, "b", n=80, seed=2)
    url = live_server()
    queries = [(["search", "a", "--like", "3", "-k", "7", "--where", "price<60", "--group"],
                ("json", "jsonl", "tsv", "paths", "paths0", "table")),
               (["search", "a", "-k", "4", "like:5", "-0.5*like:9"], ("json", "table")),
               (["search", "--all", "--like", "2", "-k", "6"], ("jsonl", "tsv")),
               (["search", "-d", "b", "-d", "a", "like:4", "--min-score", "0.1"], ("json", "table"))]
    for args, formats in queries:
        for fmt in formats:
            local = cli(*args, "-f", fmt)
            remote = cli(*args, "-f", fmt, "--server", url)
            assert remote.stdout == local.stdout, (args, fmt)
    env_remote = cli("search", "a", "--like", "3", "-f", "json", env={"STYLESEARCH_SERVER": url})
    assert env_remote.stdout == cli("search", "a", "--like", "3", "-f", "json").stdout
    for args in (["search", "nope", "--like", "1"], ["search", "a", "--like", "999"],
                 ["search", "a", "--like", "1", "-w", "colour=red"]):
        local, remote = cli(*args, check=False), cli(*args, "--server", url, check=False)
        assert (remote.returncode, remote.stderr) == (local.returncode, local.stderr), args
    down = cli("search", "a", "--like", "1", "--server", f"http://127.0.0.1:{free_port()}", check=False)
    assert down.returncode == 1 and "Cannot reach the stylesearch server" in down.stderr
    assert_fast_path_imports_nothing_heavy(root, url)


def assert_fast_path_imports_nothing_heavy(root, url: str) -> None:
    """`search --server` in a fresh process: the answer, and no numpy/torch/faiss/FastAPI/PIL loaded."""
    code = ("import sys; from stylesearch.cli.main import main; sys.argv = ['stylesearch', 'search', 'a', '--like', "
            "'2', '-f', 'json', '--server', sys.argv[1]]\ntry: main()\nexcept SystemExit: pass\n"
            "heavy = [m for m in ('numpy', 'torch', 'open_clip', 'faiss', 'fastapi', 'uvicorn', 'PIL', 'httpx') "
            "if m in sys.modules]\nprint('HEAVY', heavy, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code, url], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "STYLESEARCH_HOME": str(root)})
    assert json.loads(proc.stdout)[0]["rank"] == 1
    assert "HEAVY []" in proc.stderr, proc.stderr


def test_serve_command_loads_no_web_stack_until_run_and_refuses_public_bind(cli):
    from stylesearch.cli import serve_cmd
    from stylesearch.cli.main import app

    help_code = ("import sys; from stylesearch.cli.main import app\nimport stylesearch.cli.serve_cmd\n"
                 "print([m for m in ('fastapi', 'uvicorn', 'starlette') if m in sys.modules])")
    assert subprocess.run([sys.executable, "-c", help_code], capture_output=True, text=True).stdout.strip() == "[]"
    if not any(c.name == "serve" for c in app.registered_commands):
        serve_cmd.register(app)
    refused = cli("serve", "--host", "0.0.0.0", "--port", "1", check=False, env={"STYLESEARCH_TOKEN": ""})
    assert refused.returncode == 2 and "Refusing to listen on 0.0.0.0 without a token" in refused.stderr
    assert "--token" in refused.stderr


@pytest.fixture
def threaded_server(root, monkeypatch):
    """A uvicorn server in a thread of this process, with the fake text encoder (as local searches here)."""
    import uvicorn

    monkeypatch.setattr("stylesearch.query.search.query_encoder", lambda p, spec, device="auto", **_: FakeEncoder(48))
    running = []

    def start() -> str:
        port = free_port()
        app = create_app(ServerConfig(root=str(root), preload=False, port=port))
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        running.append((server, thread, app))
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        return f"http://127.0.0.1:{port}"
    yield start
    for server, thread, app in running:
        server.should_exit = True
        thread.join(timeout=10)
        app.state.server.close()


def test_text_and_image_queries_through_the_server_print_what_local_search_prints(cli, root, threaded_server):
    paths = picture_dataset(root, count=18)
    url = threaded_server()
    image = str(next(paths.images.rglob("dots-*.jpg")))
    for args in (["striped red", "-blue", "-k", "4"], ["--image", image, "-k", "3"],
                 ["-k", "5", f"0.5*image:{image}", "dots", "-w", "palette!=warm"]):
        for fmt in ("json", "tsv", "table"):
            local = cli("search", "pics", *args, "-f", fmt)
            assert cli("search", "pics", *args, "-f", fmt, "--server", url).stdout == local.stdout, (args, fmt)


@pytest.mark.slow
def test_text_and_image_query_through_server_match_local_with_tiny_model(embedded, live_server, tmp_path):
    """Text and image queries encoded by the server's warm model print exactly what a local search prints."""
    from .conftest import CLI

    home = embedded.home.parent
    c = CLI(home, {"STYLESEARCH_CACHE": str(tmp_path / "cache")})
    url = live_server(home=home, env={"STYLESEARCH_CACHE": str(tmp_path / "server-cache")})
    image = str(next(embedded.images.rglob("*.jpg")))
    for args in (["striped red", "-blue", "-k", "5"], ["--image", image, "-k", "3"], [f"0.5*image:{image}", "dots"]):
        for fmt in ("json", "tsv"):
            local = c("search", "shared", *args, "-f", fmt)
            assert c("search", "shared", *args, "-f", fmt, "--server", url).stdout == local.stdout, args


def test_text_queries_run_the_exported_onnx_text_tower_not_torch(client, root, cli, monkeypatch):
    """Without a stand-in encoder: the dataset's export (tokenizer port + onnxruntime) answers text terms,
    in the server and in the CLI, with the vectors its weights give and the +/- arithmetic applied."""
    from stylesearch.embed.encoders.query import TorchQueryEncoder

    from .onnx_text import write_text_export

    paths = picture_dataset(root)
    tower = write_text_export(paths.onnx_dir("m"), "m", 48)

    def no_torch(self, texts):
        raise AssertionError(f"torch asked to encode {texts}")
    monkeypatch.setattr(TorchQueryEncoder, "encode_text", no_torch)
    red, blue = tower.expected_vectors(["red dress", "blue"])
    query = (red - blue) / np.linalg.norm(red - blue)
    with open_catalog(paths, readonly=True) as cat:
        ids, vectors = cat.vectors.load("m")
    scores = vectors @ query
    best = np.argsort(-scores, kind="stable")[:5]
    rows = search(client(), "pics", terms=["red dress", "-blue"], k=5)
    assert [r["id"] for r in rows] == ids[best].tolist()
    np.testing.assert_allclose([r["score"] for r in rows], scores[best], atol=1e-5)
    out = cli("search", "pics", "red dress", "-blue", "-k", "5", "--format", "json")
    assert [r["id"] for r in json.loads(out.stdout)] == ids[best].tolist()
