"""Small server changes the web page needs: /health says ready only once the datasets are loaded (and
`search --server` waits for it), a favicon, HEAD on the image routes."""

from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("fastapi")

from stylesearch.server.app import create_app
from stylesearch.server.config import ServerConfig

from .test_server import FakeEncoder, free_port, picture_dataset


@pytest.fixture
def pics(root):
    return picture_dataset(root, count=12)


def test_health_is_ready_only_after_the_warm_up_and_head_and_favicon_answer(root, pics, monkeypatch):
    from fastapi.testclient import TestClient

    monkeypatch.setattr("stylesearch.query.search.query_encoder", lambda p, spec, device="auto", **_: FakeEncoder(48))
    app = create_app(ServerConfig(root=str(root)))
    server = app.state.server
    gate = threading.Event()
    server.engine.submit(gate.wait, 10)  # the engine is busy: the warm-up waits behind this
    server.start_warm_up()
    c = TestClient(app, base_url="http://127.0.0.1")
    health = c.get("/health").json()
    assert health["ready"] is False and health["datasets"][0]["loaded"] is False
    gate.set()
    deadline = time.monotonic() + 10
    while not c.get("/health").json()["ready"] and time.monotonic() < deadline:
        time.sleep(0.02)
    health = c.get("/health").json()
    assert health["ready"] is True and health["datasets"][0]["loaded"] is True

    icon = c.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    assert b"<svg" in icon.content
    assert 'rel="icon"' in c.get("/").text
    for path in ("/api/datasets/pics/items/1/thumb", "/api/datasets/pics/items/1/image", "/api/datasets/pics/atlas/0"):
        got, head = c.get(path), c.head(path)
        assert head.status_code == 200, (path, head.text)
        assert head.content == b"" and head.headers["content-length"] == str(len(got.content)) != "0"
        assert head.headers["content-type"] == got.headers["content-type"]
    assert c.head("/api/datasets/pics/items/99999/thumb").status_code == 404
    assert "head" not in c.get("/openapi.json").json()["paths"]["/api/datasets/{name}/items/{item_id}/thumb"]
    server.close()


def test_search_through_a_server_still_loading_waits_until_it_is_ready(cli, root, pics, monkeypatch):
    import uvicorn

    monkeypatch.setattr("stylesearch.query.search.query_encoder", lambda p, spec, device="auto", **_: FakeEncoder(48))
    port = free_port()
    app = create_app(ServerConfig(root=str(root), port=port))
    state = app.state.server
    state.warming = True  # as `serve` while it loads the datasets
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.02)
    url = f"http://127.0.0.1:{port}"
    local = cli("search", "pics", "--like", "3", "-k", "4", "-f", "tsv").stdout
    done = {}
    thread = threading.Thread(target=lambda: done.update(out=cli("search", "pics", "--like", "3", "-k", "4", "-f",
                                                                   "tsv", "--server", url).stdout))
    thread.start()
    time.sleep(0.8)
    assert "out" not in done  # still waiting for the server to be ready
    state.warming = False
    thread.join(10)
    assert done["out"] == local and local.count("\n") == 5
    server.should_exit = True
    state.close()


def test_browser_tests_fail_in_ci_instead_of_skipping(monkeypatch):
    from .test_server_browser import unavailable

    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match="cannot run in CI: no Chromium"):
        unavailable("no Chromium found")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="skipped: no Chromium"):
        unavailable("no Chromium found")


@pytest.mark.slow  # embeds with the tiny model and exports its ONNX towers
def test_serve_warm_up_readies_the_image_tower_onnx_without_torch_else_torch(tmp_path, tiny_spec, tiny_model):
    from PIL import Image

    from stylesearch.embed.export import export_onnx
    from stylesearch.embed.run import EmbedOptions, embed_dataset
    from stylesearch.server.state import ServerState

    from .conftest import make_dataset

    paths = make_dataset(tmp_path, "ox", 8)
    embed_dataset(paths, tiny_spec, options=EmbedOptions(workers=0, backend="torch"), model=tiny_model)
    bare = make_dataset(tmp_path, "bare", 4)  # no image tower: warming it would need torch
    embed_dataset(bare, tiny_spec, options=EmbedOptions(workers=0, backend="torch", export_onnx=False),
                  model=tiny_model)
    assert export_onnx(paths, tiny_spec, tiny_model, towers=("image",))["exported"] == ["image"]
    server = ServerState(ServerConfig(root=str(tmp_path), datasets=("ox",)))  # one encoder per model, shared
    server.start_warm_up()
    server.engine.submit(lambda: None).result(timeout=120)  # after the warm-up
    assert server.ready
    warmed = server.datasets["ox"].searcher().encoder.inner
    tower = warmed._towers["image"]
    assert tower is not None and tower._session is not None and not tower._single_run  # the fast session
    assert warmed.fallback._model is None  # torch's model never loaded
    vector = server.engine.submit(warmed.encode_image, Image.new("RGB", (50, 40), (200, 30, 30))).result()
    assert warmed._towers["image"] is tower and vector.shape == (tiny_spec_dim(paths, tiny_spec),)
    server.close()
    server = ServerState(ServerConfig(root=str(tmp_path), datasets=("bare",)))
    server.start_warm_up()
    server.engine.submit(lambda: None).result(timeout=120)
    torch_only = server.datasets["bare"].searcher().encoder.inner
    assert server.ready and torch_only._model is not None and torch_only.warm_image() == "torch"  # no export
    server.close()


def tiny_spec_dim(paths, spec) -> int:
    from stylesearch.store.catalog import open_catalog

    with open_catalog(paths, readonly=True) as cat:
        return cat.vectors.model(spec.key)["dim"]
