"""clip-retrieval compatibility: /knn-service, /indices-list, /metadata over TestClient (no model: the
fake encoder), the guard around them, --cors-origin, /api/models and captions in every output format."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest

pytest.importorskip("fastapi")

from stylesearch.query.search import SearchRequest, Term  # noqa: E402
from stylesearch.query.search import search as lib_search  # noqa: E402
from stylesearch.server.app import create_app  # noqa: E402
from stylesearch.server.config import ServerConfig  # noqa: E402
from stylesearch.store.catalog import open_catalog  # noqa: E402

from .conftest import unit_rows, vector_catalog  # noqa: E402
from .test_server import FakeEncoder, free_port, live_server, picture_dataset  # noqa: E402, F401

FRONT = "http://127.0.0.1:1235"


@pytest.fixture
def fake_text(monkeypatch):
    monkeypatch.setattr("stylesearch.query.search.query_encoder", lambda p, spec, device="auto", **_: FakeEncoder(48))


@pytest.fixture
def client(root):
    from fastapi.testclient import TestClient

    def make(**config):
        return TestClient(create_app(ServerConfig(root=str(root), preload=False, **config)),
                          base_url="http://127.0.0.1")
    return make


def captioned_pictures(root):
    """picture_dataset with a caption on every item and a source URL on item 2."""
    paths = picture_dataset(root)
    with open_catalog(paths) as cat, cat.transaction():
        for item in cat.items():
            cat.upsert_item(item.path, caption=f"picture {item.id}",
                            source_url="https://images.example/2.jpg" if item.id == 2 else None)
    return paths


def knn(c, headers=None, **body):
    """A request as ClipClient sends it: the JSON text with no Content-Type."""
    return c.post("/knn-service", content=json.dumps(body).encode(), headers=headers or {})


def test_knn_service_answers_text_image_and_embedding_queries_like_the_library(client, root, fake_text):
    paths = captioned_pictures(root)
    c = client()
    results = knn(c, text="striped red", indice_name="pics", num_images=5, modality="image").json()
    expected = lib_search(paths, SearchRequest([Term(1.0, "text", "striped red")], k=5))
    assert [r["id"] for r in results] == [r["id"] for r in expected]
    assert [r["similarity"] for r in results] == [r["score"] for r in expected]
    first = results[0]
    assert first["caption"] == f"picture {first['id']}" and first["image_path"] == expected[0]["path"]
    assert {"palette", "pattern"} <= set(first)  # metadata beside the result fields, as clip-back's columns
    image_url = next(r["url"] for r in results if r["id"] != 2)
    assert image_url.startswith("http://127.0.0.1/api/datasets/pics/items/")
    assert c.get(image_url).content[:2] == b"\xff\xd8"  # the image itself
    source = knn(c, embedding_input=_vector_of(paths, 2).tolist(), indice_name="pics", num_images=1).json()
    assert source[0]["id"] == 2 and source[0]["url"] == "https://images.example/2.jpg"
    assert source[0]["similarity"] == pytest.approx(1.0, abs=1e-5)

    picture = paths.images / "cool/dots-0007.jpg"
    by_image = knn(c, image=base64.b64encode(picture.read_bytes()).decode(), indice_name="pics", num_images=3).json()
    assert by_image[0]["image_path"] == "cool/dots-0007.jpg" and len(by_image) == 3
    assert knn(c, text="dots", num_images=2).json()[0]["id"] == knn(c, text="dots", indice_name="pics",
                                                                    num_images=2).json()[0]["id"]  # default: first


def _vector_of(paths, item_id: int) -> np.ndarray:
    with open_catalog(paths, readonly=True) as cat:
        return cat.vectors.of_item("m", cat.item(str(item_id)))


def test_deduplicate_drops_near_duplicates_by_embedding(client, root):
    rng = np.random.default_rng(3)
    base = rng.normal(size=(4, 8))
    rows = [base[0], base[0] + 0.01, base[1], base[1] * 1.5, base[2], base[3]]  # 1~2, 3~4 near-identical
    vectors = np.array(rows, dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vector_catalog(root, "dups", vectors)
    c = client()
    query = (vectors[0] + 0.2 * vectors[2]).tolist()
    plain = knn(c, embedding_input=query, indice_name="dups", num_images=6).json()
    assert sorted(r["id"] for r in plain) == [1, 2, 3, 4, 5, 6]
    kept = knn(c, embedding_input=query, indice_name="dups", num_images=6, deduplicate=True).json()
    order = [r["id"] for r in plain]
    drop = {max(1, 2, key=order.index), max(3, 4, key=order.index)}  # the worse of each pair goes
    assert [r["id"] for r in kept] == [i for i in order if i not in drop]
    two = knn(c, embedding_input=query, indice_name="dups", num_images=2, num_result_ids=6, deduplicate=True).json()
    assert [r["id"] for r in two] == [r["id"] for r in kept]  # as clip-back: ids past num_images without metadata
    assert [set(r) for r in two[1:3]] == [{"id", "similarity", "url", "caption", "image_path"}, {"id", "similarity"}]


def test_errors_keep_clip_retrievals_shape(client, root, fake_text):
    picture_dataset(root)
    c = client()
    cases = [({"text": "x", "indice_name": "nope"}, 404, "nope"),
             ({"indice_name": "pics"}, 400, "must fill one of text"),
             ({"embedding_input": [1.0, 2.0], "indice_name": "pics"}, 400, "has 2 numbers"),
             ({"embedding_input": ["a"] * 48, "indice_name": "pics"}, 400, "list of numbers"),
             ({"text": "x", "num_images": 0}, 400, "num_images"),
             ({"image": "bm90IGFuIGltYWdl", "indice_name": "pics"}, 400, "not an image"),
             ({"image_url": "http://127.0.0.1:9/x.jpg", "indice_name": "pics"}, 400, "public addresses")]
    for body, status, words in cases:
        r = knn(c, **body)
        assert r.status_code == status and words in r.json()["message"], (body, r.text)
    r = c.post("/knn-service", content=b"{not json")
    assert r.status_code == 400 and r.json()["message"].startswith("Invalid request")
    assert c.post("/metadata", content=b'{"ids": "x"}').json()["message"].startswith("Invalid request: ids")


def test_indices_list_metadata_and_models(client, root):
    paths = captioned_pictures(root)
    vector_catalog(root, "other", np.eye(4, dtype=np.float32), key="k4")
    c = client()
    assert c.get("/indices-list").json() == ["other", "pics"]
    answer = c.post("/metadata", content=json.dumps({"ids": [3, 2, 999], "indice_name": "pics"})).json()
    assert [a["id"] for a in answer] == [3, 2, 999] and answer[2]["metadata"] == {}
    with open_catalog(paths, readonly=True) as cat:
        item = cat.item("3")
    assert answer[0]["metadata"]["caption"] == "picture 3" and answer[0]["metadata"]["image_path"] == item.path
    assert answer[1]["metadata"]["url"] == "https://images.example/2.jpg"
    assert c.post("/metadata", content=json.dumps({"ids": [], "indice_name": "pics"})).json() == []
    spec = c.get("/openapi.json").json()
    knn_doc = spec["paths"]["/knn-service"]["post"]
    fields = knn_doc["requestBody"]["content"]["application/json"]["schema"]["properties"]
    for name in ("modality", "use_mclip", "use_safety_model", "use_violence_detector", "aesthetic_score",
                 "aesthetic_weight"):
        assert "no effect here" in fields[name]["description"], name
    assert "no effect" not in fields["deduplicate"]["description"] and "/metadata" in knn_doc["description"]
    models = c.get("/api/models").json()
    assert [(m["model_key"], m["dim"], m["datasets"]) for m in models] == [("k4", 4, ["other"]), ("m", 48, ["pics"])]


def test_any_body_is_json_here_only_when_not_cross_site(client, root, fake_text):
    picture_dataset(root)
    body = json.dumps({"text": "red", "indice_name": "pics", "num_images": 2})
    c = client()
    for headers in ({}, {"content-type": "text/plain;charset=UTF-8"}, {"content-type": "application/x-www-form-urlencoded"},
                    {"origin": "http://127.0.0.1", "sec-fetch-site": "same-origin", "content-type": "text/plain"}):
        r = c.post("/knn-service", content=body, headers=headers)
        assert r.status_code == 200 and len(r.json()) == 2, headers
    for headers in ({"origin": FRONT, "content-type": "text/plain"}, {"sec-fetch-site": "cross-site"},
                    {"origin": "http://evil.example", "sec-fetch-site": "cross-site"}):
        r = c.post("/knn-service", content=body, headers=headers)
        assert r.status_code == 403 and "Cross-site" in r.json()["error"], headers
        assert "access-control-allow-origin" not in r.headers
    search = c.post("/api/datasets/pics/search", content=json.dumps({"terms": ["red"]}),
                    headers={"content-type": "text/plain"})
    assert search.status_code == 415  # elsewhere the Content-Type rule holds
    big = json.dumps({"text": "red", "image": "A" * 2_000_000})
    assert c.post("/knn-service", content=big).status_code != 413  # a base64 image: the upload limit
    assert c.post("/metadata", content=json.dumps({"ids": [1] * 400_000})).status_code == 413


def test_cors_origin_trusts_that_origin_only(client, root, fake_text):
    picture_dataset(root)
    c = client(cors_origins=(FRONT,))
    body = json.dumps({"text": "red", "indice_name": "pics", "num_images": 2})
    front = {"origin": FRONT, "sec-fetch-site": "same-site", "content-type": "text/plain;charset=UTF-8"}
    r = c.post("/knn-service", content=body, headers=front)
    assert r.status_code == 200 and len(r.json()) == 2
    assert r.headers["access-control-allow-origin"] == FRONT
    listed = c.get("/indices-list", headers={"origin": FRONT})
    assert listed.json() == ["pics"] and listed.headers["access-control-allow-origin"] == FRONT
    preflight = c.options("/api/datasets/pics/search", headers={
        "origin": FRONT, "access-control-request-method": "POST", "access-control-request-headers": "content-type"})
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == FRONT
    evil = {**front, "origin": "http://evil.example", "sec-fetch-site": "cross-site"}
    r = c.post("/knn-service", content=body, headers=evil)
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
    assert c.options("/knn-service", headers={"origin": "http://evil.example",
                                              "access-control-request-method": "POST"}).status_code == 400
    assert "access-control-allow-origin" not in client().get("/indices-list", headers={"origin": FRONT}).headers


def test_token_guards_the_clip_routes(client, root, fake_text):
    picture_dataset(root)
    c = client(token="s3cret")
    assert c.get("/indices-list").status_code == 401
    assert knn(c, text="red").status_code == 401
    ok = knn(c, headers={"Authorization": "Bearer s3cret"}, text="red", num_images=1)
    assert ok.status_code == 200 and len(ok.json()) == 1


def test_serve_cors_origin_option_reaches_the_server(cli, root, monkeypatch):
    from stylesearch.cli import serve_cmd
    from stylesearch.cli.main import app

    if not any(c.name == "serve" for c in app.registered_commands):
        serve_cmd.register(app)
    seen = []
    monkeypatch.setattr("stylesearch.server.listen.serve", seen.append)
    cli("serve", "--port", "8123", "--cors-origin", "HTTP://127.0.0.1:1235/", "--cors-origin", "https://a.example")
    assert seen[0].cors_origins == ("http://127.0.0.1:1235", "https://a.example")
    bad = cli("serve", "--cors-origin", "*", check=False)
    assert bad.returncode == 2 and "Invalid CORS origin '*'" in bad.stderr


def test_captions_appear_in_every_search_format(cli, root):
    from stylesearch.ingest.download import download

    from .test_download import Server
    from .test_download_metadata import OPTIONS, _entries, _feed

    server = Server(count=8)
    try:
        paths = vector_catalog(root, "shop", np.zeros((0, 4), dtype=np.float32), key="m")
        download(paths, _entries(_feed(server), "csv"), OPTIONS)  # the CSV's `title` becomes the caption
    finally:
        server.close()
    with open_catalog(paths) as cat, cat.transaction():
        items = cat.items()
        cat.vectors.put("m", [it.content_hash for it in items], unit_rows(len(items), 4), "float32")
    first = cli.json("search", "shop", "--like", "p1-1.jpg", "-k", "3", "-f", "json")
    assert [r["caption"] for r in first][:1] in (["Summer dress"], ["Wool coat"], ["Sun hat"])
    captions = {r["caption"] for r in first}
    assert captions <= {"Summer dress", "Wool coat", "Sun hat"} and captions
    lines = cli("search", "shop", "--like", "p1-1.jpg", "-k", "3", "-f", "jsonl").stdout.splitlines()
    assert [json.loads(line)["caption"] for line in lines] == [r["caption"] for r in first]
    tsv = cli("search", "shop", "--like", "p1-1.jpg", "-k", "3", "-f", "tsv").stdout.splitlines()
    column = tsv[0].split("\t").index("caption")
    assert [line.split("\t")[column] for line in tsv[1:]] == [r["caption"] for r in first]
    table = cli("search", "shop", "--like", "p1-1.jpg", "-k", "3", "-f", "table", env={"COLUMNS": "250"}).stdout
    assert "caption" in table and all(r["caption"] in table for r in first)


# -- clip-retrieval's own client and web front (its wheel, installed with `pip install --no-deps clip-retrieval`)

def clip_retrieval_folder():
    """The installed clip_retrieval package folder, found without importing it (its __init__ needs flask)."""
    import importlib.util

    spec = importlib.util.find_spec("clip_retrieval")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("clip-retrieval is not installed (pip install --no-deps clip-retrieval)")
    from pathlib import Path

    return Path(list(spec.submodule_search_locations)[0])


def clip_client_class():
    """ClipClient, loaded from clip_retrieval/clip_client.py by file path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("clip_retrieval_client", clip_retrieval_folder() / "clip_client.py")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ImportError as exc:  # requests, which it needs, comes with the test extras (ray)
        pytest.skip(f"clip-retrieval's client cannot be loaded: {exc}")
    return module.ClipClient


@pytest.mark.slow
def test_real_clip_client_queries_serve_by_text_image_and_embedding(embedded, live_server, tmp_path):  # noqa: F811
    """clip-retrieval's ClipClient, unchanged, against a `stylesearch serve` process (tiny random model)."""
    from stylesearch.embed.models import ModelSpec

    ClipClient = clip_client_class()
    home = embedded.home.parent
    url = live_server("shared", home=home, env={"STYLESEARCH_CACHE": str(tmp_path / "server-cache")})
    client = ClipClient(url=f"{url}/knn-service", indice_name="shared", num_images=6, deduplicate=False)
    with open_catalog(embedded, readonly=True) as cat:
        key = cat.vectors.models()[0]["model_key"]
        spec = ModelSpec(cat.vectors.models()[0]["model_name"], cat.vectors.models()[0]["pretrained"], stored_key=key)
        items = {it.id: it for it in cat.items()}
        target = items[7]
        vector = cat.vectors.of_item(key, target)

    by_text = client.query(text="striped red")
    local = lib_search(embedded, SearchRequest([Term(1.0, "text", "striped red")], k=6), spec)
    assert isinstance(by_text, list) and [r["id"] for r in by_text] == [r["id"] for r in local]
    assert [r["similarity"] for r in by_text] == pytest.approx([r["score"] for r in local], abs=1e-5)
    assert [r["image_path"] for r in by_text] == [r["path"] for r in local]
    assert all(r["url"] == f"{url}/api/datasets/shared/items/{r['id']}/image" and "caption" in r for r in by_text)

    by_image = client.query(image=str(embedded.item_file(target.path)))
    assert isinstance(by_image, list) and by_image[0]["id"] == 7 and by_image[0]["image_path"] == target.path
    assert by_image[0]["similarity"] == pytest.approx(1.0, abs=1e-4)
    by_embedding = client.query(embedding_input=vector.tolist())
    assert [r["id"] for r in by_embedding] == [r["id"] for r in by_image]
    similar = lib_search(embedded, SearchRequest([Term(1.0, "like", "7")], k=5), spec)
    assert [r["id"] for r in by_embedding[1:]] == [r["id"] for r in similar]  # the item itself first, then as --like

    wrong = ClipClient(url=f"{url}/knn-service", indice_name="nope").query(text="x")
    assert isinstance(wrong, dict) and "nope" in wrong["message"]  # the error, not a list of results


def serve_front(folder, backend: str, index: str):
    """clip-retrieval's front (its static build) on a loopback port, its config.json naming `backend`."""
    import functools
    import shutil
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    shutil.copytree(clip_retrieval_folder().parent / "front" / "build", folder)
    (folder / "config.json").write_text(json.dumps({"defaultBackend": backend, "defaultIndex": index,
                                                    "urlColumn": "url"}))

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


@pytest.mark.slow
def test_clip_retrieval_front_renders_results_from_serve_in_chromium(root, fake_text, tmp_path):
    """The front from clip-retrieval's wheel, on its own port, searches `serve --cors-origin` (its origin)
    in Chromium: result images render; a server without that origin gives the front nothing."""
    import threading
    import time

    import uvicorn

    from .test_server_browser import BROWSER_ARGS, chromium, shot

    clip_retrieval_folder()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed")
    if chromium() is None:
        pytest.skip("no Chromium found")
    captioned_pictures(root)
    servers, urls = [], {}
    for name, origins in (("trusting", True), ("plain", False)):
        port = free_port()
        front = serve_front(tmp_path / f"front-{name}", f"http://127.0.0.1:{port}", "pics")
        config = ServerConfig(root=str(root), preload=False, port=port,
                              cors_origins=(f"http://127.0.0.1:{front.server_address[1]}",) if origins else ())
        server = uvicorn.Server(uvicorn.Config(create_app(config), host="127.0.0.1", port=port, log_level="warning"))
        threading.Thread(target=server.run, daemon=True).start()
        servers.append((server, front))
        urls[name] = f"http://127.0.0.1:{front.server_address[1]}/?query=striped%20red"
    deadline = time.monotonic() + 20
    while not all(s.started for s, _ in servers) and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium(), args=BROWSER_ARGS, timeout=30_000)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(urls["trusting"])
            page.wait_for_function("() => { const f = document.querySelector('clip-front'); const pics = f && "
                                   "f.shadowRoot.querySelectorAll('img.pic'); return pics && pics.length >= 5 && "
                                   "[...pics].every(i => i.complete && i.naturalWidth > 0); }", timeout=30_000)
            sources = page.locator("img.pic").evaluate_all("els => els.map(e => e.getAttribute('src'))")
            shot(page, tmp_path, "clip-front.png")
            assert all(re.match(r"http://127\.0\.0\.1:\d+/api/datasets/pics/items/\d+/image$", s) or
                       s == "https://images.example/2.jpg" for s in sources), sources
            page.goto(urls["plain"])
            page.wait_for_timeout(3000)
            assert page.locator("img.pic").count() == 0  # refused: no --cors-origin for that front
            browser.close()
    finally:
        for server, front in servers:
            server.should_exit = True
            front.shutdown()


def test_cors_origin_values_parse_or_are_refused_clearly():
    """Any --cors-origin text: an origin a browser could send (scheme://host[:port]) or a UserError."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from stylesearch.errors import UserError
    from stylesearch.server.config import web_origin

    @settings(max_examples=300, deadline=None)
    @given(st.text(max_size=40) | st.builds("{}://{}{}{}".format, st.sampled_from(["http", "https", "ftp", ""]),
                                               st.text(max_size=10), st.sampled_from(["", ":80", ":x", ":99999"]),
                                               st.sampled_from(["", "/", "/p", "?q"])))
    def check(text):
        try:
            origin = web_origin(text)
        except UserError as exc:
            assert "Invalid CORS origin" in exc.message
            return
        assert origin.startswith(("http://", "https://")) and "/" not in origin.split("://", 1)[1]
        assert origin == origin.lower() and web_origin(origin) == origin

    check()
