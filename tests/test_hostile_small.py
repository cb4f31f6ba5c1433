"""Small hostile-input cases: the Authorization scheme in any case, and IPv6 forms of IPv4 addresses
(6to4, NAT64, IPv4-mapped, IPv4-compatible) judged by the IPv4 address they stand for."""

from __future__ import annotations

import socket

import pytest

from stylesearch.ingest.fetch import AddressRefused, address_refused, fetch_once

NON_PUBLIC_V4 = ("127.0.0.1", "10.1.2.3", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0")


def v6_forms(v4: str) -> dict[str, str]:
    a, b, c, d = (int(x) for x in v4.split("."))
    hi, lo = f"{a << 8 | b:x}", f"{c << 8 | d:x}"
    return {"mapped": f"::ffff:{v4}", "compatible": f"::{v4}", "6to4": f"2002:{hi}:{lo}::1",
            "nat64": f"64:ff9b::{v4}", "nat64-local": f"64:ff9b:1::{hi}:{lo}"}


@pytest.mark.parametrize("v4", NON_PUBLIC_V4)
def test_ipv6_forms_of_non_public_ipv4_addresses_are_refused(v4):
    assert address_refused(v4)
    refused = {name: address_refused(form) for name, form in v6_forms(v4).items()}
    assert all(refused.values()), refused


def test_ipv6_forms_of_public_addresses_stay_allowed_where_routable():
    forms = v6_forms("8.8.8.8")
    allowed = {name: not address_refused(forms[name]) for name in ("mapped", "6to4", "nat64")}
    assert all(allowed.values()), allowed  # NAT64 (DNS64 networks) and 6to4 reach the public IPv4 host
    assert address_refused(forms["nat64-local"]) and address_refused(forms["compatible"])
    assert not address_refused("2606:4700::1111") and not address_refused("8.8.8.8")


def test_a_host_resolving_to_a_6to4_loopback_is_refused_before_connecting(monkeypatch):
    calls = []

    def resolve(host, port, *args, **kwargs):
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2002:7f00:1::1", port, 0, 0))]

    def connect(*args, **kwargs):
        calls.append(args)
        raise AssertionError("connected")

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    monkeypatch.setattr(socket.socket, "connect", connect)
    with pytest.raises(AddressRefused):
        fetch_once("http://sneaky.example/x.jpg", timeout=2, max_bytes=1000, public_only=True)
    assert calls == []


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_the_authorization_scheme_is_case_insensitive(tmp_path, scheme):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from stylesearch.server.app import create_app
    from stylesearch.server.config import ServerConfig

    client = TestClient(create_app(ServerConfig(root=str(tmp_path), token="s3cret", preload=False)))
    assert client.get("/health", headers={"Authorization": f"{scheme} s3cret"}).status_code == 200
    assert client.get("/health", headers={"Authorization": f"{scheme}  s3cret "}).status_code == 200
    for wrong in (f"{scheme} nope", "Basic s3cret", f"{scheme}s3cret", "s3cret", ""):
        r = client.get("/health", headers={"Authorization": wrong})
        assert r.status_code == 401 and "token" in r.json()["error"], wrong
