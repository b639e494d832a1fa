"""Probes: address parsing, and TCP/HTTP probes (blocking and asyncio) against loopback servers."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time

import pytest

from loadbalancer.checks import AsyncHttpProbe, AsyncTcpProbe, HttpProbe, ProbeResult, TcpProbe
from loadbalancer.checks._address import Address, parse_address
from loadbalancer.checks.probes import _request, _status

from .health_servers import (
    HANG,
    ClosedPort,
    HealthServer,
    TcpListener,
    TrickleServer,
    client_tls,
    server_tls,
)

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
    with ClosedPort() as down:  # any scheme will do for TCP
        assert TcpProbe(timeout=0.5)(f"redis://{down.address}") == ProbeResult(
            False, "connection refused"
        )


# -- results ----------------------------------------------------------------------------------


def test_probe_results_are_truthy_when_healthy() -> None:
    assert ProbeResult(True)
    assert not ProbeResult(False, "status 503")
    assert ProbeResult(False, "status 503").reason == "status 503"
    assert ProbeResult(True).reason is None


def test_probe_result_fields_are_checked() -> None:
    with pytest.raises(TypeError, match="healthy must be a bool, not int"):
        ProbeResult(1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="reason must be a str or None, not int"):
        ProbeResult(False, 404)  # type: ignore[arg-type]


# -- TCP --------------------------------------------------------------------------------------


REFUSED = ProbeResult(False, "connection refused")


def test_tcp_probe_passes_when_listening_and_fails_when_refused() -> None:
    with TcpListener() as up, ClosedPort() as down:
        probe = TcpProbe(timeout=1.0)
        assert probe(up.address) == ProbeResult(True)
        assert probe(f"tcp://{up.address}") == ProbeResult(True)
        assert probe(down.address) == REFUSED


def test_async_tcp_probe_passes_when_listening_and_fails_when_refused() -> None:
    async def main(up: str, down: str) -> tuple[ProbeResult, ProbeResult]:
        probe = AsyncTcpProbe(timeout=1.0)
        return await probe(up), await probe(down)

    with TcpListener() as up, ClosedPort() as down:
        assert asyncio.run(main(up.address, down.address)) == (ProbeResult(True), REFUSED)


def test_tcp_probe_reports_a_name_that_does_not_resolve() -> None:
    # .invalid never resolves (RFC 6761); the resolver says so without a network.
    result = TcpProbe(timeout=1.0)("no-such-host.invalid:80")
    assert not result
    assert (result.reason or "").startswith("name resolution failed: ")


# -- HTTP -------------------------------------------------------------------------------------


def probe_both(
    probe: HttpProbe, async_probe: AsyncHttpProbe, target: str
) -> tuple[ProbeResult, ProbeResult]:
    return probe(target), asyncio.run(async_probe(target))


def failed_both(probe: HttpProbe, async_probe: AsyncHttpProbe, target: str) -> tuple[str, str]:
    """Probe ``target`` with both; assert both failed and return their reasons."""
    results = probe_both(probe, async_probe, target)
    assert not any(results), results
    return results[0].reason or "", results[1].reason or ""


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
    expected = ProbeResult(True) if healthy else ProbeResult(False, f"status {status}")
    assert result == (expected, expected)


def test_http_probes_request_the_path_below_the_url_path() -> None:
    with HealthServer() as server:
        probe_both(HttpProbe(), AsyncHttpProbe(), server.url + "/base")
        probe_both(
            HttpProbe(path="/ready?full=1"), AsyncHttpProbe(path="/ready?full=1"), server.url
        )
        probe_both(HttpProbe(), AsyncHttpProbe(), server.address)
    paths = [path for path, _ in server.requests]
    assert paths == ["/base/health"] * 2 + ["/ready?full=1"] * 2 + ["/health"] * 2


def test_http_probes_send_a_well_formed_request() -> None:
    with HealthServer() as server:
        assert all(probe_both(HttpProbe(), AsyncHttpProbe(), server.address))
    assert len(server.requests) == 2
    for _, headers in server.requests:
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
        assert probe_both(HttpProbe(), AsyncHttpProbe(), down.address) == (REFUSED, REFUSED)


def test_http_probes_fail_on_a_server_that_does_not_speak_http() -> None:
    # A listener that never answers: the probe times out waiting for the status line.
    with TcpListener() as silent:
        reasons = failed_both(HttpProbe(timeout=0.1), AsyncHttpProbe(timeout=0.1), silent.address)
    assert reasons == ("timed out after 0.1 s waiting for the status line",) * 2


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (b"SSH-2.0-OpenSSH_9.6\r\n", "not an HTTP status line: b'SSH-2.0-OpenSSH_9.6\\r\\n'"),
        (b"", "connection closed before the status line"),
        (b"HTTP/1.1 " + b"2" * 70000, "status line longer than 65536 bytes"),
    ],
)
def test_http_probes_fail_on_a_wrong_answer_saying_what_it_was(answer: bytes, reason: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        address = f"127.0.0.1:{listener.getsockname()[1]}"

        listener.settimeout(5.0)  # bounds the thread if a probe never connects

        def answer_twice() -> None:
            for _ in range(2):
                conn, _ = listener.accept()
                with conn:
                    # Read the request first: closing with it unread would send a reset.
                    request = b""
                    while b"\r\n\r\n" not in request:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        request += chunk
                    conn.sendall(answer)

        thread = threading.Thread(target=answer_twice)
        thread.start()
        try:
            reasons = failed_both(HttpProbe(timeout=2.0), AsyncHttpProbe(timeout=2.0), address)
        finally:
            thread.join(5.0)
    assert reasons == (reason, reason)


def test_http_probes_give_up_on_a_hanging_server_after_their_timeout() -> None:
    with HealthServer(HANG) as server:
        assert not HttpProbe(timeout=0.1)(server.address)
        assert server.hanging.is_set()
        assert not asyncio.run(AsyncHttpProbe(timeout=0.1)(server.address))


@pytest.mark.parametrize("make", [HttpProbe, AsyncHttpProbe])
def test_the_timeout_is_a_deadline_for_the_whole_probe_against_a_trickle(
    make: type[HttpProbe],
) -> None:
    # One byte every 0.2 s: each read succeeds well within 0.5 s, so a per-read timeout never
    # fires, and the status line would take over 3 s to arrive. The probe must give up at 0.5 s.
    probe = make(timeout=0.5)
    with TrickleServer(every=0.2) as server:
        started = time.monotonic()
        result = probe(server.address)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
        elapsed = time.monotonic() - started
        assert server.trickling.is_set()  # it did start answering
    assert result == ProbeResult(False, "timed out after 0.5 s waiting for the status line")
    assert elapsed < 0.75  # 1.5 x the timeout


def test_https_url_to_a_plain_http_server_fails_the_handshake() -> None:
    context = ssl.create_default_context()
    with HealthServer() as server:
        target = f"https://{server.address}"
        reasons = failed_both(
            HttpProbe(timeout=1.0, ssl_context=context),
            AsyncHttpProbe(timeout=1.0, ssl_context=context),
            target,
        )
    assert reasons[0].startswith("TLS error in the TLS handshake: ")
    assert reasons[1].startswith("TLS error connecting or in the TLS handshake: ")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_http_probes_speak_https(host: str) -> None:
    with HealthServer(204, tls=server_tls()) as server:
        target = server.url.replace("127.0.0.1", host) + "/base"
        context = client_tls()
        results = probe_both(
            HttpProbe(ssl_context=context), AsyncHttpProbe(ssl_context=context), target
        )
        # scheme="https" makes host:port servers HTTPS too.
        port_only = HttpProbe(scheme="https", ssl_context=context)(server.address)
    assert results == (ProbeResult(True), ProbeResult(True))
    assert port_only == ProbeResult(True)
    assert [path for path, _ in server.requests] == ["/base/health"] * 2 + ["/health"]


def test_http_probes_reject_an_untrusted_certificate() -> None:
    with HealthServer(tls=server_tls()) as server:
        context = ssl.create_default_context()  # the system CAs, which never signed ours
        reasons = failed_both(
            HttpProbe(ssl_context=context), AsyncHttpProbe(ssl_context=context), server.url
        )
    assert all(r.startswith("TLS certificate rejected: ") for r in reasons), reasons
    assert server.requests == []


def test_probes_leave_no_thread_behind() -> None:
    before = set(threading.enumerate())
    with HealthServer() as server:
        probe_both(HttpProbe(), AsyncHttpProbe(), server.address)
    assert set(threading.enumerate()) == before
