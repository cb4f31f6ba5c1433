"""server/config.py: the descriptor budget, thread variables, the port probe and bind rules, with
exact expected values (the limits are computed from faked rlimits and descriptor counts)."""

from __future__ import annotations

import os
import socket

import pytest

from stylesearch.errors import PortBusy, UserError
from stylesearch.server import config
from stylesearch.server.config import FD_RESERVE, check_bind, check_port_free, connection_limits, set_thread_env


class FakeLimits:
    """resource.getrlimit/setrlimit over a soft and hard limit; setrlimit refuses values in `refused`."""

    def __init__(self, soft, hard, refused=()):
        self.soft, self.hard, self.refused, self.calls = soft, hard, set(refused), []

    def install(self, monkeypatch, open_descriptors: int | None):
        import resource

        monkeypatch.setattr(resource, "getrlimit", lambda which: (self.soft, self.hard))
        monkeypatch.setattr(resource, "setrlimit", self.setrlimit)

        def listdir(path):
            assert path == "/dev/fd"
            if open_descriptors is None:
                raise OSError("no /dev/fd")
            return [str(n) for n in range(open_descriptors)]
        monkeypatch.setattr(config.os, "listdir", listdir)
        return self

    def setrlimit(self, which, limits):
        self.calls.append(limits)
        if limits[0] in self.refused:
            raise ValueError("not allowed")
        self.soft = limits[0]


def test_the_soft_limit_is_raised_to_the_hard_one_and_the_room_split(monkeypatch):
    limits = FakeLimits(1024, 4096).install(monkeypatch, open_descriptors=10)
    room = 4096 - 10 - FD_RESERVE
    assert connection_limits() == (room - 4 * 128, 128)
    assert limits.calls == [(4096, 4096)]
    assert connection_limits(50) == (50, 128)
    assert connection_limits(10**9) == (room - 4 * 128, 128)  # a cap above the room changes nothing


def test_a_small_limit_gives_smaller_batches(monkeypatch):
    FakeLimits(300, 300).install(monkeypatch, open_descriptors=10)
    room = 300 - 10 - FD_RESERVE  # 162
    batch = room // 8
    assert (batch, connection_limits()) == (20, (room - 4 * batch, batch))


def test_the_room_never_drops_under_64(monkeypatch):
    FakeLimits(150, 150).install(monkeypatch, open_descriptors=100)
    assert connection_limits() == (64 - 4 * 8, 8)


def test_an_unlimited_hard_limit_tries_a_million_then_macos_open_max(monkeypatch):
    import resource

    limits = FakeLimits(1024, resource.RLIM_INFINITY, refused={1 << 20}).install(monkeypatch, open_descriptors=0)
    connections, batch = connection_limits()
    assert limits.calls == [(1 << 20, resource.RLIM_INFINITY), (10240, resource.RLIM_INFINITY)]
    assert (connections, batch) == (10240 - FD_RESERVE - 4 * 128, 128)


def test_an_unlimited_soft_limit_counts_as_a_million(monkeypatch):
    import resource

    limits = FakeLimits(resource.RLIM_INFINITY, resource.RLIM_INFINITY).install(monkeypatch, open_descriptors=0)
    assert connection_limits() == ((1 << 20) - FD_RESERVE - 4 * 128, 128)
    assert limits.calls == []


def test_without_dev_fd_sixty_four_descriptors_are_assumed_in_use(monkeypatch):
    FakeLimits(2048, 2048).install(monkeypatch, open_descriptors=None)
    assert connection_limits() == (2048 - 64 - FD_RESERVE - 4 * 128, 128)


def test_a_refused_raise_keeps_the_soft_limit(monkeypatch):
    limits = FakeLimits(1024, 4096, refused={4096}).install(monkeypatch, open_descriptors=0)
    assert connection_limits() == (1024 - FD_RESERVE - 4 * 112, 112)
    assert limits.calls == [(4096, 4096)]


def test_thread_variables_are_set_for_every_library(monkeypatch):
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(name, "7")
    set_thread_env(3)
    assert [os.environ[n] for n in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")] == ["3"] * 3


def test_a_free_port_passes_and_a_listening_one_is_refused():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        listener.listen(1)
        with pytest.raises(PortBusy) as refused:
            check_port_free("127.0.0.1", port)
        assert refused.value.message == f"Cannot listen on 127.0.0.1:{port}: Address already in use."
        assert "Another program" in refused.value.hint
    check_port_free("127.0.0.1", port)  # closed again: free


def test_a_port_held_without_listening_is_free_as_the_server_binds_with_reuseaddr():
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", 0))
        check_port_free("127.0.0.1", holder.getsockname()[1])


def test_an_address_that_is_not_this_machines_is_refused():
    with pytest.raises(PortBusy) as refused:
        check_port_free("host.invalid", 8000)
    assert str(refused.value).startswith("Cannot listen on host.invalid:8000: ")
    assert "127.0.0.1" in refused.value.hint
    with pytest.raises(PortBusy, match="Cannot listen on 192.0.2.1:8000"):  # TEST-NET: no interface has it
        check_port_free("192.0.2.1", 8000)


@pytest.mark.parametrize("host, token, refused", [
    ("127.0.0.1", None, False), ("::1", None, False), ("localhost", None, False),
    ("0.0.0.0", None, True), ("192.168.1.5", None, True), ("0.0.0.0", "secret", False)])
def test_binding_beyond_this_machine_needs_a_token(host, token, refused):
    if refused:
        with pytest.raises(UserError, match=f"Refusing to listen on {host} without a token"):
            check_bind(host, token)
    else:
        check_bind(host, token)


def test_token_from_the_environment_only_when_none_is_given(monkeypatch):
    from stylesearch.server.config import TOKEN_ENV, token_from_env

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert (token_from_env(None), token_from_env("given")) == (None, "given")
    monkeypatch.setenv(TOKEN_ENV, "")
    assert token_from_env(None) is None
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert (token_from_env(None), token_from_env("given")) == ("from-env", "given")


def test_without_descriptor_limits_a_thousand_connections(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "resource", None)  # as on Windows: the import fails
    assert (connection_limits(), connection_limits(5)) == ((1000, 128), (5, 128))


def test_refusal_texts_name_the_way_out():
    from stylesearch.server.config import web_origin

    with pytest.raises(UserError) as bind:
        check_bind("0.0.0.0", None)
    assert bind.value.message == ("Refusing to listen on 0.0.0.0 without a token: anyone who can reach it could "
                                  "read the collection and write judgments.")
    assert bind.value.hint.endswith("the page takes it once as /?token=SECRET. Or bind to 127.0.0.1.")
    assert web_origin(" HTTP://Example.COM:8080/ ") == "http://example.com:8080"
    with pytest.raises(UserError) as origin:
        web_origin("*")
    assert origin.value.hint == ("Give a web origin such as http://127.0.0.1:1235 (scheme, host and port only; "
                                 "'*' is not accepted).")


# --- the request guards at the ASGI level: bodies without a Content-Length ---

def _guarded(limit: int = 10, **config):
    """A Guard over an app that echoes the body it reads (all of it, as an ASGI app reads) as 200, and
    `post(*messages, headers=...)`, which sends one request through it and returns what was sent back."""
    from stylesearch.server.config import ServerConfig
    from stylesearch.server.guards import Guard

    seen = []

    async def echo(scope, receive, send):
        body, more = b"", scope["type"] == "http"
        while more:
            message = await receive()
            seen.append(message)
            body, more = body + message.get("body", b""), message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    guard = Guard(echo, ServerConfig(**{"max_body_bytes": limit, "check_host": False, **config}))

    def post(*messages, path="/api/datasets/x/judgments", method="POST", headers=None, kind="http"):
        return _call(guard, {"type": kind, "method": method, "path": path, "headers": [
            (k.encode("latin-1"), v.encode("latin-1"))
            for k, v in (headers or {"content-type": "application/json"}).items()]},
            messages or [{"type": "http.request", "body": b"", "more_body": False}])
    return post, seen


def _call(app, scope, messages) -> list:
    import asyncio

    queue, sent = list(messages), []

    async def receive():
        return queue.pop(0)

    async def send(message):
        sent.append(message)
    asyncio.run(app(scope, receive, send))
    return sent


def _status(sent) -> int:
    return sent[0]["status"]


def _error(sent) -> dict:
    import json

    return json.loads(sent[1]["body"])


def _chunk(data: bytes, more: bool) -> dict:
    return {"type": "http.request", "body": data, "more_body": more}


def test_a_body_sent_in_chunks_reaches_the_app_whole_in_one_message():
    post, seen = _guarded(limit=10)
    sent = post(_chunk(b"abc", True), _chunk(b"", True), _chunk(b"defghij", False))
    assert [m.get("status") for m in sent] == [200, None] and sent[1]["body"] == b"abcdefghij"  # exactly the limit
    assert seen == [{"type": "http.request", "body": b"abcdefghij", "more_body": False}]


def test_chunks_adding_up_past_the_limit_are_refused_before_the_app_runs():
    post, seen = _guarded(limit=10)
    sent = post(_chunk(b"123456", True), _chunk(b"78901", False))  # each under the limit, 11 together
    assert sent[0]["status"] == 413 and sent[0]["headers"] == [(b"content-type", b"application/json")]
    assert b"Request body too large (limit 10 bytes)." in sent[1]["body"]
    assert b"Send less: smaller or fewer query images." in sent[1]["body"] and seen == []


def test_a_client_gone_mid_body_reaches_no_app_and_gets_no_answer():
    post, seen = _guarded()
    assert post(_chunk(b"abc", True), {"type": "http.disconnect"}) == [] and seen == []


def test_other_asgi_events_pass_through_with_their_receive_and_send():
    post, seen = _guarded()
    assert _status(post(kind="lifespan")) == 200 and seen == []


def test_host_header_rules_with_ports_and_ipv6():
    post, _ = _guarded(check_host=True)
    get = lambda host: post(method="GET", path="/health", headers={"host": host})
    assert [_status(get(h)) for h in ("127.0.0.1:8000", "[::1]", "[::1]:8000", "localhost", "LOCALHOST:1")] == [
        200] * 5
    for foreign in ("evil.example:8000", "localhost:1:2", "X127.0.0.1", "127.0.0.1.evil.example"):
        refused = get(foreign)
        assert _status(refused) == 400, foreign
    assert _error(refused) == {**_error(refused), "error": "Host '127.0.0.1.evil.example' is not this machine.",
                               "hint": "Use http://127.0.0.1:PORT/."}


def test_a_token_equal_to_any_default_is_still_required():
    post, seen = _guarded(token="XXXX")
    refused = post(method="GET", path="/api/datasets", headers={})
    assert _status(refused) == 401 and seen == []
    assert _error(refused)["hint"] == "Send 'Authorization: Bearer TOKEN', or open /?token=TOKEN once."
    assert _status(post(method="GET", path="/api/datasets", headers={"cookie": "stylesearch_token=XXXX"})) == 200


def test_cross_site_origins_compared_by_host_with_proxies_and_trusted_origins():
    from stylesearch.server.guards import cross_site

    assert cross_site({"origin": "http://example.com", "host": "Example.COM"}) is False
    assert cross_site({"origin": "ftp://127.0.0.1", "host": "127.0.0.1"}) is True  # not a web origin
    assert cross_site({"origin": "http://xxxx", "host": "127.0.0.1"}) is True
    assert cross_site({"origin": "https://proxy.example", "host": "127.0.0.1:8000",
                       "x-forwarded-host": "proxy.example, inner, other"}) is False
    assert cross_site({"origin": "https://inner", "host": "127.0.0.1:8000",
                       "x-forwarded-host": "proxy.example, inner"}) is True  # only the first proxy's name
    assert cross_site({"host": "127.0.0.1"}, trusted=("http://a.example",)) is False  # no Origin: not a page
    assert cross_site({"origin": "http://A.example/", "host": "127.0.0.1"}, trusted=("http://a.example",)) is False


def test_the_cross_site_refusal_says_what_to_use():
    post, seen = _guarded()
    refused = post(_chunk(b"{}", False), headers={"content-type": "application/json", "origin": "http://evil.example",
                                                  "host": "127.0.0.1:8000"})
    assert _status(refused) == 403 and seen == []
    assert _error(refused)["hint"] == ("Use the page this server serves, or a client that sends no Origin header "
                                       "(the CLI, curl).")


def test_media_types_with_parameters_and_the_refusal_text():
    post, _ = _guarded(limit=100)
    ok = post(_chunk(b"{}", False), headers={"content-type": "Application/JSON; charset=utf-8; x=y"})
    assert _status(ok) == 200
    refused = post(_chunk(b"x", False), headers={"content-type": "text/plain; charset=utf-8"})
    assert _status(refused) == 415
    assert _error(refused)["error"] == "Unsupported Content-Type 'text/plain': send the body as application/json."
    assert _error(refused)["hint"] == ("Send JSON with 'Content-Type: application/json' (query images as a "
                                       "multipart/form-data search).")


def test_is_loopback_names_and_addresses():
    from stylesearch.server.config import is_loopback

    assert [is_loopback(h) for h in ("[::1]", "::1", "127.8.9.1", "LocalHost", "ip6-localhost")] == [True] * 5
    assert [is_loopback(h) for h in ("X127.0.0.1", "10.0.0.1", "[::2]", "localhost.evil", "")] == [False] * 5
