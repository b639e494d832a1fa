"""Probes: address parsing, and TCP/HTTP probes (blocking and asyncio) against loopback servers."""

from __future__ import annotations

import asyncio
import ssl
import threading

import pytest

from loadbalancer.checks import AsyncHttpProbe, AsyncTcpProbe, HttpProbe, TcpProbe
from loadbalancer.checks._address import Address, parse_address
from loadbalancer.checks.probes import _request, _status

from .health_servers import HANG, ClosedPort, HealthServer, TcpListener

# -- addresses --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        ("127.0.0.1:8080", Address("127.0.0.1", 8080)),
        ("backend.local:1", Address("backend.local", 1)),
        ("[::1]:9000", Address("::1", 9000)),
        ("[fe80::1%eth0]:80", Address("fe80::1%eth0", 80)),
        ("http://10.0.0.1:8000", Address("10.0.0.1", 8000, "http", "")),
        ("http://host", Address("host", 80, "http", "")),
        ("HTTPS://Host/base/", Address("host", 443, "https", "/base/")),
        ("http://[::1]:81/svc", Address("::1", 81, "http", "/svc")),
        ("redis://cache:6379", Address("cache", 6379, "redis", "")),
    ],
)
def test_parse_address_accepts(server: str, expected: Address) -> None:
    assert parse_address(server) == expected


@pytest.mark.parametrize(
    "server",
    [
        "",
        "localhost",
        "host:",
        "host:http",
        "host:0",
        "host:65536",
        "host:８０",  # noqa: RUF001  # full-width digits: isdigit() says yes, we say no
        ":80",
        "::1:80",
        "[::1]80",
        "[::1]",
        "[not-v6]:80",
        "a b:80",
        "user@host:80",
        "redis://cache",
        "http://",
        "http://user:pw@host/",
        "http://host/?q=1",
        "http://host/#top",
        "http://host:99999/",
        "http://host:x/",
        "http://host/a b",
        "http://host/caf\u00e9",
    ],
)
def test_parse_address_rejects_naming_the_argument(server: str) -> None:
    with pytest.raises(ValueError, match=r"^server must be"):
        parse_address(server)


def test_parse_address_rejects_non_strings() -> None:
    with pytest.raises(TypeError, match="server must be a str"):
        parse_address(8080)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("base", "path", "joined"),
    [("", "/health", "/health"), ("/", "/health", "/health"), ("/api", "/h?x=1", "/api/h?x=1")],
)
def test_url_path_is_prefixed(base: str, path: str, joined: str) -> None:
    assert Address("h", 80, "http", base).join(path) == joined


# -- parameters -------------------------------------------------------------------------------


@pytest.mark.parametrize("probe", [TcpProbe, AsyncTcpProbe, HttpProbe, AsyncHttpProbe])
@pytest.mark.parametrize("timeout", [0, -1.0, float("nan"), float("inf")])
def test_timeout_must_be_positive_and_finite(probe: type[TcpProbe], timeout: float) -> None:
    with pytest.raises(ValueError, match="timeout"):
        probe(timeout=timeout)


@pytest.mark.parametrize("probe", [TcpProbe, HttpProbe])
def test_timeout_must_be_a_number(probe: type[TcpProbe]) -> None:
    with pytest.raises(TypeError, match="timeout"):
        probe(timeout="1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="timeout"):
        probe(timeout=True)


@pytest.mark.parametrize("probe", [HttpProbe, AsyncHttpProbe])
def test_http_parameters_are_checked(probe: type[HttpProbe]) -> None:
    with pytest.raises(ValueError, match="path"):
        probe(path="health")
    with pytest.raises(ValueError, match="path"):
        probe(path="/he alth")
    with pytest.raises(ValueError, match="path"):
        probe(path="/h\r\nX-Injected: 1")
    with pytest.raises(TypeError, match="path"):
        probe(path=b"/health")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="expect"):
        probe(expect=range(200, 200))
    with pytest.raises(ValueError, match="expect"):
        probe(expect=set())
    with pytest.raises(TypeError, match="expect"):
        probe(expect="200")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expect"):
        probe(expect=200)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="scheme"):
        probe(scheme="ftp")
    with pytest.raises(TypeError, match="ssl_context"):
        probe(ssl_context=object())  # type: ignore[arg-type]


def test_probe_attributes_and_repr() -> None:
    tcp = TcpProbe(timeout=0.5)
    assert tcp.timeout == 0.5
    assert repr(tcp) == "TcpProbe(timeout=0.5)"
    http = AsyncHttpProbe(path="/ready", expect={200}, timeout=2, scheme="https")
    assert (http.path, http.expect, http.timeout, http.scheme) == ("/ready", {200}, 2.0, "https")
    assert repr(http).startswith("AsyncHttpProbe(path='/ready'")


@pytest.mark.parametrize("server", ["nonsense", "[::1]:x"])
def test_probes_raise_for_unparseable_servers(server: str) -> None:
    with pytest.raises(ValueError, match="server"):
        TcpProbe()(server)
    with pytest.raises(ValueError, match="server"):
        HttpProbe()(server)
    with pytest.raises(ValueError, match="server"):
        asyncio.run(AsyncTcpProbe()(server))
    with pytest.raises(ValueError, match="server"):
        asyncio.run(AsyncHttpProbe()(server))


def test_http_probes_refuse_non_http_urls() -> None:
    with pytest.raises(ValueError, match="http or https URL"):
        HttpProbe()("redis://cache:6379")
    assert TcpProbe(timeout=0.5)("redis://127.0.0.1:1") is False  # any scheme will do for TCP


# -- TCP --------------------------------------------------------------------------------------


def test_tcp_probe_passes_when_listening_and_fails_when_refused() -> None:
    with TcpListener() as up, ClosedPort() as down:
        probe = TcpProbe(timeout=1.0)
        assert probe(up.address) is True
        assert probe(f"tcp://{up.address}") is True
        assert probe(down.address) is False


def test_async_tcp_probe_passes_when_listening_and_fails_when_refused() -> None:
    async def main(up: str, down: str) -> tuple[bool, bool]:
        probe = AsyncTcpProbe(timeout=1.0)
        return await probe(up), await probe(down)

    with TcpListener() as up, ClosedPort() as down:
        assert asyncio.run(main(up.address, down.address)) == (True, False)


# -- HTTP -------------------------------------------------------------------------------------


def probe_both(probe: HttpProbe, async_probe: AsyncHttpProbe, target: str) -> tuple[bool, bool]:
    return probe(target), asyncio.run(async_probe(target))


@pytest.mark.parametrize(
    ("status", "expect", "healthy"),
    [
        (200, range(200, 400), True),
        (302, range(200, 400), True),
        (503, range(200, 400), False),
        (404, range(200, 400), False),
        (503, {503}, True),
        (200, (204,), False),
    ],
)
def test_http_probes_judge_the_status(status: int, expect: range | set[int], healthy: bool) -> None:
    with HealthServer(status) as server:
        result = probe_both(HttpProbe(expect=expect), AsyncHttpProbe(expect=expect), server.address)
    assert result == (healthy, healthy)


def test_http_probes_request_the_path_below_the_url_path() -> None:
    with HealthServer() as server:
        probe_both(HttpProbe(), AsyncHttpProbe(), server.url + "/base")
        probe_both(
            HttpProbe(path="/ready?full=1"), AsyncHttpProbe(path="/ready?full=1"), server.url
        )
        probe_both(HttpProbe(), AsyncHttpProbe(), server.address)
    paths = [path for path, _ in server.requests]
    assert paths == ["/base/health"] * 2 + ["/ready?full=1"] * 2 + ["/health"] * 2


def test_async_http_probe_sends_a_well_formed_request() -> None:
    with HealthServer() as server:
        assert asyncio.run(AsyncHttpProbe()(server.address)) is True
    _, headers = server.requests[0]
    assert headers["Host"] == server.address
    assert headers["Connection"] == "close"
    assert headers["User-Agent"].startswith("loadbalancer-health/")


def test_request_host_header() -> None:
    assert b"Host: [::1]:8080\r\n" in _request(Address("::1", 8080), "http", "/h")
    assert b"Host: example.com\r\n" in _request(Address("example.com", 443), "https", "/h")
    assert b"Host: xn--bcher-kva.example:81\r\n" in _request(
        Address("b\u00fccher.example", 81), "http", "/h"
    )


@pytest.mark.parametrize(
    ("line", "status"), [(b"HTTP/1.1 200 OK\r\n", 200), (b"HTTP/1.0 503\r\n", 503)]
)
def test_status_line_is_parsed(line: bytes, status: int) -> None:
    assert _status(line) == status


@pytest.mark.parametrize(
    "line", [b"", b"\r\n", b"SSH-2.0-OpenSSH\r\n", b"HTTP/1.1 20 OK", b"HTTP/2 x"]
)
def test_malformed_status_lines_are_rejected(line: bytes) -> None:
    with pytest.raises(ValueError, match="HTTP status"):
        _status(line)


def test_http_probes_fail_when_refused() -> None:
    with ClosedPort() as down:
        assert probe_both(HttpProbe(), AsyncHttpProbe(), down.address) == (False, False)


def test_http_probes_fail_on_a_server_that_does_not_speak_http() -> None:
    # A listener that never answers: the probe times out waiting for the status line.
    with TcpListener() as silent:
        result = probe_both(HttpProbe(timeout=0.1), AsyncHttpProbe(timeout=0.1), silent.address)
    assert result == (False, False)


def test_http_probes_give_up_on_a_hanging_server_after_their_timeout() -> None:
    with HealthServer(HANG) as server:
        assert HttpProbe(timeout=0.1)(server.address) is False
        assert server.hanging.is_set()
        assert asyncio.run(AsyncHttpProbe(timeout=0.1)(server.address)) is False


def test_https_url_to_a_plain_http_server_fails_the_handshake() -> None:
    context = ssl.create_default_context()
    with HealthServer() as server:
        target = f"https://{server.address}"
        result = probe_both(
            HttpProbe(timeout=1.0, ssl_context=context),
            AsyncHttpProbe(timeout=1.0, ssl_context=context),
            target,
        )
    assert result == (False, False)


def test_probes_leave_no_thread_behind() -> None:
    before = set(threading.enumerate())
    with HealthServer() as server:
        probe_both(HttpProbe(), AsyncHttpProbe(), server.address)
    assert set(threading.enumerate()) == before
