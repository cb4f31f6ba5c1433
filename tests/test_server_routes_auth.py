"""Auth and browser guards by the route table (issue 27): every route the app registers, walked at run
time (so a route added later is covered without editing this file), is requested

- on a token-protected server without a token, with a wrong one (header and cookie): 401 for every
  route except the named allow-list below; with the right token: never 401;
- cross-site (a foreign Origin, or Sec-Fetch-Site cross-site) for every state-changing route: 403,
  with or without the token;
- with a body a page can send without CORS (text/plain, a form, none) for every state-changing /api
  route: 415 (multipart only where uploads are taken), except the named exemptions.
"""

from __future__ import annotations

import re

import pytest

pytest.importorskip("fastapi")

from stylesearch.server.app import create_app  # noqa: E402
from stylesearch.server.config import ServerConfig  # noqa: E402

from .test_metadata_search import feed_dataset  # noqa: E402

TOKEN = "s3cret"
# Routes anyone may read without the token, and why: the page must load to receive the token, and
# these hold no dataset content.
OPEN_WITHOUT_TOKEN = {
    "/": "the page itself; /?token= is how a browser gets the token cookie",
    "/favicon.ico": "the page's icon",
    "/static": "the page's scripts and styles (a mount)",
    "/docs": "the API documentation page",
    "/docs-assets": "Swagger UI's files for /docs (a mount)",
    "/openapi.json": "the API's schema (no data)",
}
# State-changing routes that read bodies of any content type, and why: clip-retrieval's own client
# and front send JSON as text/plain or without a type; the cross-site refusal guards them.
ANY_CONTENT_TYPE = {
    "/knn-service": "clip-retrieval compatible: its clients send text/plain",
    "/metadata": "clip-retrieval compatible: its clients send text/plain",
}
SAFE = {"GET", "HEAD", "OPTIONS"}
_PARAM = re.compile(r"\{(\w+)(?::\w+)?\}")


def registered_routes(app) -> list[tuple[str, str, str]]:
    """(method, path template, request path) for every route and mount, nested routers included."""
    out = []

    def walk(routes, prefix=""):
        for route in routes:
            if hasattr(route, "original_router"):  # an included router (FastAPI >= 0.120 keeps them nested)
                walk(route.original_router.routes, prefix + (route.include_context.prefix or ""))
                continue
            path = prefix + route.path
            methods = getattr(route, "methods", None)
            if methods is None:  # a mount: any file below it
                out.append(("GET", path, path + "/anything.js"))
                continue
            concrete = _PARAM.sub(lambda m: "a" if m.group(1) == "name" else "1", path)
            out.extend((method, path, concrete) for method in sorted(methods))
    walk(app.routes)
    return out


def _protected(template: str) -> bool:
    return template not in OPEN_WITHOUT_TOKEN


@pytest.fixture
def apps(root):
    from fastapi.testclient import TestClient

    feed_dataset(root, "a", n=12)

    def make(**config):
        app = create_app(ServerConfig(root=str(root), preload=False, **config))
        return app, TestClient(app, base_url="http://127.0.0.1")
    return make


def _send(client, method: str, path: str, **kw):
    if method in SAFE:
        return client.request(method, path, **kw)
    return client.request(method, path, json={}, **kw)


def test_every_route_but_the_named_ones_needs_the_token(apps):
    app, client = apps(token=TOKEN)
    routes = registered_routes(app)
    templates = {template for _, template, _ in routes}
    assert set(OPEN_WITHOUT_TOKEN) <= templates, "an allow-listed route is gone: update the list"
    assert sum(_protected(t) for t in templates) >= 10  # the walk found the API
    wrong = [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
             {"Authorization": "Bearer "}, {"Cookie": "stylesearch_token=wrong"},
             {"Authorization": f"Bearer {TOKEN}x"}]
    for method, template, path in routes:
        for headers in wrong:
            status = _send(client, method, path, headers=headers).status_code
            if _protected(template):
                assert status == 401, (method, path, headers, status)
            else:
                assert status != 401, (method, path, headers, status)
        right = _send(client, method, path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code
        assert right != 401, (method, path, right)
    body = _send(client, "GET", "/api/datasets").json()
    assert body["error"] == "Missing or wrong token." and "Bearer" in body["hint"]


@pytest.mark.parametrize("token", [None, TOKEN])
def test_every_state_changing_route_refuses_cross_site_requests(apps, token):
    app, client = apps(token=token)
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    changing = [(m, t, p) for m, t, p in registered_routes(app) if m not in SAFE]
    assert len(changing) >= 4  # searches, triplets, undo
    foreign = [{"Origin": "http://evil.example"}, {"Origin": "null"}, {"Origin": "http://127.0.0.1:1"},
               {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}]
    for method, _, path in changing:
        for headers in foreign:
            r = client.request(method, path, json={}, headers={**auth, **headers})
            assert r.status_code == 403, (method, path, headers, r.status_code)
            assert r.json()["error"] == "Cross-site request refused."


def test_every_state_changing_api_route_takes_only_json(apps):
    app, client = apps()
    changing = [(m, t, p) for m, t, p in registered_routes(app)
                if m not in SAFE and t.startswith("/api") and t not in ANY_CONTENT_TYPE]
    assert len(changing) >= 4
    for method, template, path in changing:
        bodies = [{"content": "{}", "headers": {"Content-Type": "text/plain"}},
                  {"content": "{}", "headers": {"Content-Type": "text/plain;charset=UTF-8"}},
                  {"data": {"query": "{}"}},  # application/x-www-form-urlencoded
                  {"content": "{}"}]  # no Content-Type
        if not template.endswith("/search"):  # multipart only where query images are uploaded
            bodies.append({"data": {"query": "{}"}, "files": [("image", ("x.jpg", b"x", "image/jpeg"))]})
        for kw in bodies:
            r = client.request(method, path, **kw)
            assert r.status_code == 415, (method, path, kw, r.status_code)
            assert "Unsupported Content-Type" in r.json()["error"]
        assert client.request(method, path, json={}).status_code != 415
    assert set(ANY_CONTENT_TYPE) <= {t for _, t, _ in registered_routes(app)} or not ANY_CONTENT_TYPE
