"""The proxy's hardening (issue 14), each case with raw sockets against a real ``ProxyServer``
on 127.0.0.1: framing errors get 400 and a closed connection and never reach a backend;
limits get 414, 431 and 413; slow clients and upstreams time out; CONNECT, bad
absolute-form targets and unknown versions are refused; ``Expect: 100-continue`` and
``Upgrade`` tunnels work."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import cast

import pytest

from loadbalancer import LoadBalancer, RetryPolicy
from loadbalancer.serve._server import ProxyServer
from loadbalancer.serve._settings import Limits, Pool, ProxySettings, Route, Timeouts

from .serve_backends import AsyncBackend, RawClient, ScriptedBackend, run, started


@asynccontextmanager
async def proxy_over(
    addresses: list[str],
    *,
    limits: Limits | None = None,
    timeouts: Timeouts | None = None,
    retry: RetryPolicy | None = None,
) -> AsyncIterator[tuple[ProxyServer, LoadBalancer]]:
    """A proxy whose one pool is the servers at ``addresses``, retried as ``retry`` says
    (the default policy if None)."""
    lb = LoadBalancer()
    lb.replace(addresses)
    proxy_settings = ProxySettings(
        pools={"p": Pool("p", lb) if retry is None else Pool("p", lb, retry=retry)},
        routes=(Route("p"),),
        limits=limits or Limits(),
        timeouts=timeouts or Timeouts(),
    )
    server = ProxyServer(proxy_settings)
    await server.start("127.0.0.1", 0)
    try:
        yield server, lb
    finally:
        await server.close()


def proxy_for(
    backend: AsyncBackend, *, limits: Limits | None = None, timeouts: Timeouts | None = None
) -> contextlib.AbstractAsyncContextManager[tuple[ProxyServer, LoadBalancer]]:
    """A proxy in front of ``backend``."""
    return proxy_over([backend.address], limits=limits, timeouts=timeouts)


async def refused(
    request: bytes,
    status: int = 400,
    *,
    limits: Limits | None = None,
    split: bool = False,
) -> dict[str, str]:
    """Send ``request``; assert it is answered ``status`` by the proxy itself, the connection
    is closed, and the backend saw nothing. Returns the response's fields."""
    (backend,) = await started(1)
    async with proxy_for(backend, limits=limits) as (proxy, lb):
        raw = await RawClient.connect(proxy.port)
        try:
            if split:  # the head first, then the rest: the request may already be forwarded
                head, _, rest = request.partition(b"\r\n\r\n")
                await raw.send(head + b"\r\n\r\n")
                await asyncio.sleep(0.05)
                await raw.send(rest)
            else:
                await raw.send(request)
            got, fields, _ = await raw.response()
            assert got == status
            assert "x-loadbalancer-error" in fields
            assert await raw.closed()
        finally:
            raw.close()
        if not split:
            assert backend.requests == []
        else:  # forwarded head, never a whole request: the backend answered nothing
            assert all(r.body == b"" or r.method != "POST" for r in backend.requests)
        assert sum(s.in_flight for s in lb.stats().values()) == 0
        assert sum(s.failures for s in lb.stats().values()) == 0
    return fields


CASES = {
    "content-length and transfer-encoding": (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n"
    ),
    "differing content-lengths": (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"
    ),
    "content-length list": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 4\r\n\r\nabcd",
    "invalid content-length": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3x\r\n\r\nabc",
    "negative content-length": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    "final coding not chunked": (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n"
    ),
    "only coding not chunked": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nab",
    "coding before chunked": (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
    ),
    "transfer-encoding twice": (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "transfer-encoding in http/1.0": (
        b"POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "whitespace before colon": b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: b\r\n  c\r\n\r\n",
    "bare LF after request line": b"GET / HTTP/1.1\nHost: x\r\n\r\n",
    "bare LF after field": b"GET / HTTP/1.1\r\nHost: x\nX: y\r\n\r\n",
    "bare LF ending head": b"GET / HTTP/1.1\r\nHost: x\r\n\n",
    "bare CR after request line": b"GET / HTTP/1.1\rHost: x\r\n\r\n",
    "bare CR in field": b"GET / HTTP/1.1\r\nHost: x\rX: y\r\n\r\n",
    "invalid chunk size": (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"
    ),
    "chunk size overflow": (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"fffffffffffffffffff\r\nabc\r\n0\r\n\r\n"
    ),
    "chunk size with whitespace": (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n"
    ),
    "chunk data longer than its size": (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n"
    ),
    "chunk size with bare LF": (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n"
    ),
    "NUL in a field value": b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n",
    "control character in a field value": b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x01b\r\n\r\n",
    "DEL in a field value": b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x7fb\r\n\r\n",
    "NUL in a field name": b"GET / HTTP/1.1\r\nHost: x\r\nX\x00Y: ab\r\n\r\n",
    "space in the target": b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
    "no host in http/1.1": b"GET / HTTP/1.1\r\nX: y\r\n\r\n",
    "two hosts": b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
    "absolute-form with userinfo": b"GET http://u:p@x/ HTTP/1.1\r\nHost: x\r\n\r\n",
    "absolute-form with an empty authority": b"GET http:///a HTTP/1.1\r\nHost: x\r\n\r\n",
    "a target that is no path": b"GET evil.example HTTP/1.1\r\nHost: x\r\n\r\n",
    "upgrade with a content-length body": (
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
        b"Content-Length: 3\r\n\r\nabc"
    ),
    "upgrade with a chunked body": (
        b"POST / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    ),
    "host with userinfo": b"GET / HTTP/1.1\r\nHost: x:80@evil.example\r\n\r\n",
    "host with a list": b"GET / HTTP/1.1\r\nHost: x:1,evil.example\r\n\r\n",
    "host with a port that is no number": b"GET / HTTP/1.1\r\nHost: x:evil\r\n\r\n",
    "host with a path": b"GET / HTTP/1.1\r\nHost: x/evil\r\n\r\n",
    "host with a space": b"GET / HTTP/1.1\r\nHost: x y\r\n\r\n",
    "host with a backslash": b"GET / HTTP/1.1\r\nHost: x\\\r\n\r\n",
    "host with a bad ip literal": b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n",
    "host with junk after an ip literal": b"GET / HTTP/1.1\r\nHost: [::1]x\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_framing_errors_are_400_and_close(name: str) -> None:
    run(lambda: refused(CASES[name]))


def test_an_invalid_chunk_arriving_after_the_head_was_forwarded_is_400_and_close() -> None:
    request = (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n"
    )
    run(lambda: refused(request, split=True))


def test_connect_is_refused_405() -> None:
    fields = run(
        lambda: refused(b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n", 405)
    )
    assert fields["x-loadbalancer-error"] == "connect_refused"


def test_unknown_http_version_is_505() -> None:
    run(lambda: refused(b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505))


def test_unknown_expectation_is_417() -> None:
    run(lambda: refused(b"GET / HTTP/1.1\r\nHost: x\r\nExpect: magic\r\n\r\n", 417))


def test_absolute_form_naming_the_host_itself_is_served_in_origin_form() -> None:
    async def main() -> None:
        (backend,) = await started(1)
        async with proxy_for(backend) as (proxy, _):
            raw = await RawClient.connect(proxy.port)
            await raw.send(b"GET http://X:80/echo?a=1 HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, _ = await raw.response()
            raw.close()
            assert status == 200
            assert backend.requests[0].target == "/echo?a=1"

    run(main)


# -- limits --------------------------------------------------------------------------------


def test_a_long_request_line_is_414() -> None:
    limits = Limits(max_request_line=100)
    request = b"GET /" + b"a" * 200 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    run(lambda: refused(request, 414, limits=limits))


def test_a_huge_request_line_arriving_in_pieces_is_414_before_it_ends() -> None:
    async def main() -> None:
        (backend,) = await started(1)
        async with proxy_for(backend, limits=Limits(max_request_line=1000)) as (proxy, _):
            raw = await RawClient.connect(proxy.port)
            await raw.send(b"GET /")
            for _ in range(10):
                await raw.send(b"a" * 500)
            status, _, _ = await raw.response()
            assert status == 414
            assert await raw.closed()
            raw.close()

    run(main)


def test_too_many_header_bytes_is_431() -> None:
    limits = Limits(max_header_bytes=1000)
    request = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * 2000 + b"\r\n\r\n"
    run(lambda: refused(request, 431, limits=limits))


def test_one_endless_field_is_431_before_it_ends() -> None:
    async def main() -> None:
        (backend,) = await started(1)
        limits = Limits(max_request_line=100, max_header_bytes=1000)
        async with proxy_for(backend, limits=limits) as (proxy, _):
            raw = await RawClient.connect(proxy.port)
            await raw.send(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ")
            status = 0
            for _ in range(20):
                try:
                    await raw.send(b"v" * 1000)
                except ConnectionError:
                    break
            status, _, _ = await raw.response()
            assert status == 431
            raw.close()

    run(main)


def test_too_many_fields_is_431() -> None:
    limits = Limits(max_headers=10)
    request = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(20))
    run(lambda: refused(request + b"\r\n", 431, limits=limits))


def test_a_declared_body_past_the_limit_is_413() -> None:
    limits = Limits(max_body=100)
    request = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\n\r\n" + b"a" * 101
    run(lambda: refused(request, 413, limits=limits))


def test_a_chunked_body_past_the_limit_is_413() -> None:
    limits = Limits(max_body=100)
    request = (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"40\r\n"
        + b"a" * 64
        + b"\r\n"
        + b"40\r\n"
        + b"a" * 64
        + b"\r\n0\r\n\r\n"
    )
    run(lambda: refused(request, 413, limits=limits))


def test_a_declared_body_past_the_limit_is_413_before_any_100_continue() -> None:
    async def main() -> None:
        (backend,) = await started(1)
        async with proxy_for(backend, limits=Limits(max_body=100)) as (proxy, _):
            raw = await RawClient.connect(proxy.port)
            await raw.send(
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
                b"Expect: 100-continue\r\n\r\n"
            )
            status, _, _ = await raw.response()
            raw.close()
            assert status == 413

    run(main)


# -- timeouts ------------------------------------------------------------------------------


def test_a_slow_head_is_408_and_closed_slowloris() -> None:
    async def main() -> None:
        (backend,) = await started(1)
        timeouts = Timeouts(client_header=0.3)
        async with proxy_for(backend, timeouts=timeouts) as (proxy, _):
            raw = await RawClient.connect(proxy.port)
            loop = asyncio.get_running_loop()
            began = loop.time()
            await raw.send(b"GET / HTTP/1.1\r\nHost: x\r\n")

            async def trickle() -> None:
                # a field every 50 ms: reads must not reset the head's clock
                with contextlib.suppress(ConnectionError):
                    for _ in range(40):
                        await asyncio.sleep(0.05)
                        await raw.send(b"X-A: b\r\n")

            trickling = asyncio.ensure_future(trickle())
            status, fields, _ = await raw.response()
            assert status == 408
            assert fields["x-loadbalancer-error"] == "client_header_timeout"
            assert loop.time() - began < 1.0  # 0.3 s after the first byte, not the last
            trickling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await trickling
            assert await raw.closed()
            raw.close()
            assert backend.requests == []

    run(main)


def test_many_slowloris_connections_do_not_stop_a_normal_client() -> None:
    async def main() -> None:
        (backend,) = await started(1)
        async with proxy_for(backend, timeouts=Timeouts(client_header=30)) as (proxy, _):
            slow = [await RawClient.connect(proxy.port) for _ in range(1000)]
            for raw in slow:
                await raw.send(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            assert proxy.connections == 1000
            loop = asyncio.get_running_loop()
            for _ in range(20):  # a normal client, at normal latency, beside them
                began = loop.time()
                normal = await RawClient.connect(proxy.port)
                await normal.send(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
                status, _, _ = await normal.response(timeout=2.0)
                assert status == 200
                assert loop.time() - began < 0.5
                normal.close()
            for raw in slow:
                raw.close()

    run(main)


def test_a_stalled_body_is_408_and_the_attempt_has_no_outcome() -> None:
    async def main() -> None:
        (backend,) = await started(1)
        timeouts = Timeouts(client_body=0.3)
        async with proxy_for(backend, timeouts=timeouts) as (proxy, lb):
            raw = await RawClient.connect(proxy.port)
            await raw.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
            status, fields, _ = await raw.response()
            assert status == 408
            assert fields["x-loadbalancer-error"] == "client_body_timeout"
            assert await raw.closed()
            raw.close()
            stats = lb.stats()[backend.address]
            assert (stats.in_flight, stats.failures, stats.successes) == (0, 0, 0)

    run(main)


def test_an_idle_keep_alive_connection_is_closed() -> None:
    async def main() -> None:
        (backend,) = await started(1)
        async with proxy_for(backend, timeouts=Timeouts(keepalive=0.3)) as (proxy, _):
            raw = await RawClient.connect(proxy.port)
            await raw.send(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, _ = await raw.response()
            assert status == 200
            assert await raw.closed(timeout=3.0)
            raw.close()

    run(main)


def test_an_upstream_that_never_accepts_is_a_connect_timeout_and_a_failure() -> None:
    async def main() -> None:
        # A listener whose accept queue is full drops further SYNs: connecting hangs.
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        fillers = []
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(listener.getsockname())
            fillers.append(filler)
        lb = LoadBalancer()
        lb.replace([address])
        proxy_settings = ProxySettings(
            pools={"p": Pool("p", lb)},
            routes=(Route("p"),),
            timeouts=Timeouts(upstream_connect=0.2),
        )
        server = ProxyServer(proxy_settings)
        await server.start("127.0.0.1", 0)
        try:
            raw = await RawClient.connect(server.port)
            await raw.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            status, fields, _ = await raw.response()
            raw.close()
            assert status == 504
            assert fields["x-loadbalancer-error"] == "upstream_connect_timeout"
            assert lb.stats()[address].failures == 1
        finally:
            await server.close()
            for sock in (*fillers, listener):
                sock.close()

    run(main)


# -- Expect and Upgrade ------------------------------------------------------------------


def test_expect_100_continue_is_answered_by_the_proxy_and_the_body_forwarded() -> None:
    async def main() -> None:
        (backend,) = await started(1)
        async with proxy_for(backend) as (proxy, _):
            raw = await RawClient.connect(proxy.port)
            await raw.send(
                b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                b"Expect: 100-continue\r\n\r\n"
            )
            status, _, _ = await raw.response()
            assert status == 100
            await raw.send(b"hello")
            status, _, body = await raw.response()
            raw.close()
            assert status == 200
            assert b'"body": "hello"' in body
            assert backend.requests[0].header("expect") is None  # not forwarded

    run(main)


def test_upgrade_is_tunnelled_and_the_lease_spans_the_tunnel() -> None:
    async def main() -> None:
        (backend,) = await started(1)
        async with proxy_for(backend) as (proxy, lb):
            raw = await RawClient.connect(proxy.port)
            await raw.send(
                b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nfirst"
            )
            status, fields, _ = await raw.response()
            assert status == 101
            assert fields["upgrade"] == "echo"
            assert await asyncio.wait_for(raw.reader.readexactly(5), 5) == b"first"
            await raw.send(b"\x00\x01raw bytes\r\n\r\n")
            echoed = await asyncio.wait_for(raw.reader.readexactly(15), 5)
            assert echoed == b"\x00\x01raw bytes\r\n\r\n"
            assert sum(s.in_flight for s in lb.stats().values()) == 1
            raw.close()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 5
            while sum(s.in_flight for s in lb.stats().values()) and loop.time() < deadline:
                await asyncio.sleep(0.01)
            assert sum(s.in_flight for s in lb.stats().values()) == 0

    run(main)


def test_connections_past_the_limit_wait_until_one_closes() -> None:
    async def main() -> None:
        (backend,) = await started(1)
        async with proxy_for(backend, limits=Limits(max_connections=1)) as (proxy, _):
            first = await RawClient.connect(proxy.port)
            await first.send(b"GET /echo/1 HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await first.response())[0] == 200
            second = await RawClient.connect(proxy.port)
            await second.send(b"GET /echo/2 HTTP/1.1\r\nHost: x\r\n\r\n")
            with pytest.raises(asyncio.TimeoutError):
                await second.response(timeout=0.3)  # held, unread, while the first is open
            first.close()
            assert (await second.response())[0] == 200
            second.close()

    run(main)


def test_a_client_that_stops_reading_is_cut_off_with_no_outcome_for_the_server() -> None:
    async def main() -> None:
        (backend,) = await started(1)
        # The upstream read timeout is shorter than the client's: a server held back by a
        # client that does not read must not time out for it.
        timeouts = Timeouts(client_body=1.0, upstream_read=0.3)
        async with proxy_for(backend, timeouts=timeouts) as (proxy, lb):
            raw = await RawClient.connect(proxy.port)
            transport = cast(asyncio.Transport, raw.writer.transport)  # uvloop's: alike only
            transport.pause_reading()  # never read: the proxy's buffer fills
            sock = raw.writer.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            await raw.send(b"GET /chunks?n=2000&size=10000 HTTP/1.1\r\nHost: x\r\n\r\n")
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 8
            while sum(s.in_flight for s in lb.stats().values()) == 0 and loop.time() < deadline:
                await asyncio.sleep(0.01)
            while sum(s.in_flight for s in lb.stats().values()) and loop.time() < deadline:
                await asyncio.sleep(0.05)
            stats = lb.stats()[backend.address]
            assert (stats.in_flight, stats.failures, stats.cancelled) == (0, 0, 1)
            raw.close()

    run(main)


# -- upstreams that misbehave (raw scripted answers) ---------------------------------------


@asynccontextmanager
async def scripted(
    answer: Callable[[bytes, int], bytes | None],
    *,
    timeouts: Timeouts | None = None,
    attempts: int = 1,
    servers: int = 1,
) -> AsyncIterator[tuple[ProxyServer, LoadBalancer, ScriptedBackend]]:
    """A proxy in front of ``servers`` ``ScriptedBackend``s answering with ``answer`` (the
    first one yielded)."""
    backends = [await ScriptedBackend(answer).start() for _ in range(servers)]
    try:
        async with proxy_over(
            [b.address for b in backends],
            timeouts=timeouts,
            retry=RetryPolicy(attempts=attempts),
        ) as (server, lb):
            yield server, lb, backends[0]
    finally:
        for b in backends:
            await b.close()


def _stats(lb: LoadBalancer) -> tuple[int, int, int]:
    stats = list(lb.stats().values())
    return (
        sum(s.in_flight for s in stats),
        sum(s.successes for s in stats),
        sum(s.failures for s in stats),
    )


async def _exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    raw = await RawClient.connect(port)
    try:
        await raw.send(request)
        return await raw.response()
    finally:
        raw.close()


_GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
_ONCE = RetryPolicy(attempts=1)  # no retry: what one attempt does is what the client sees
_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext"


def test_valid_hosts_are_routed() -> None:
    async def main() -> None:
        async with scripted(lambda head, n: _OK) as (proxy, _lb, backend):
            for host in (b"x", b"x:8080", b"a-b.example:", b"127.0.0.1:80", b"[::1]:8080", b""):
                status, _, body = await _exchange(
                    proxy.port, b"GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % host
                )
                assert (status, body) == (200, b"next"), host
            # An empty Host (allowed: RFC 9110 7.2) is sent on as it came, once.
            assert backend.heads[-1].lower().count(b"\r\nhost:") == 1

    run(main)


def test_connection_naming_host_or_framing_fields_never_drops_them() -> None:
    async def main() -> None:
        async with scripted(lambda head, n: _OK) as (proxy, _lb, backend):
            request = (
                b"POST / HTTP/1.1\r\nHost: x\r\nConnection: host, content-length, foo\r\n"
                b"Foo: dropped\r\nContent-Length: 3\r\n\r\nabc"
            )
            status, _, _ = await _exchange(proxy.port, request)
            assert status == 200
            (head,) = backend.heads
            assert b"\r\nHost: x\r\n" in head
            assert b"\r\nContent-Length: 3\r\n" in head
            assert b"foo:" not in head.lower()
            assert backend.received[0].endswith(b"\r\n\r\nabc")

    run(main)


def test_an_empty_host_is_forwarded_once_not_twice() -> None:
    async def main() -> None:
        async with scripted(lambda head, n: _OK) as (proxy, _lb, backend):
            status, _, _ = await _exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: \r\n\r\n")
            assert status == 200
            (head,) = backend.heads
            assert head.lower().count(b"\r\nhost:") == 1

    run(main)


def test_a_body_sent_with_a_head_answer_is_dropped_and_never_poisons_the_next_request() -> None:
    forged = b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nforged!"

    def answer(head: bytes, n: int) -> bytes:
        if head.startswith(b"HEAD"):
            return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(forged), forged)
        return _OK

    async def main() -> None:
        async with scripted(answer) as (proxy, _lb, backend):
            raw = await RawClient.connect(proxy.port)
            try:
                await raw.send(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n" + _GET)
                head = await asyncio.wait_for(raw.reader.readuntil(b"\r\n\r\n"), 5)
                assert head.startswith(b"HTTP/1.1 200")
                assert b"Content-Length: %d\r\n" % len(forged) in head
                status, _, body = await raw.response()
                assert (status, body) == (200, b"next")
            finally:
                raw.close()
            assert backend.connections == 2  # the HEAD's connection was never reused

    run(main)


def test_a_head_answer_that_announces_a_body_closes_its_connection() -> None:
    def answer(head: bytes, n: int) -> bytes:
        if head.startswith(b"HEAD"):
            return b"HTTP/1.1 200 OK\r\nContent-Length: 38\r\n\r\n"  # its body may follow
        return _OK

    async def main() -> None:
        async with scripted(answer) as (proxy, _lb, backend):
            raw = await RawClient.connect(proxy.port)
            try:
                await raw.send(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
                head = await asyncio.wait_for(raw.reader.readuntil(b"\r\n\r\n"), 5)
                assert b"Content-Length: 38\r\n" in head
            finally:
                raw.close()
            status, _, body = await _exchange(proxy.port, _GET)
            assert (status, body) == (200, b"next")
            assert backend.connections == 2
            chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            backend.answer = lambda head, n: chunked if head.startswith(b"HEAD") else _OK
            raw = await RawClient.connect(proxy.port)
            try:
                await raw.send(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
                await asyncio.wait_for(raw.reader.readuntil(b"\r\n\r\n"), 5)
            finally:
                raw.close()
            status, _, body = await _exchange(proxy.port, _GET)
            assert (status, body) == (200, b"next")
            assert backend.connections == 3  # the HEAD took the GET's; closed after

    run(main)


def test_a_retried_answers_body_past_the_set_aside_limit_is_dropped_at_once() -> None:
    from loadbalancer.serve._proxy import SET_ASIDE_LIMIT

    served = 0

    def answer(head: bytes, n: int) -> bytes:
        nonlocal served
        served += 1
        if served == 1:  # a 503 with an endless body, retried on the other server
            size = 64 * SET_ASIDE_LIMIT
            return b"HTTP/1.1 503 Busy\r\nContent-Length: %d\r\n\r\n%s" % (
                size,
                b"z" * (2 * SET_ASIDE_LIMIT),
            )
        return _OK

    async def main() -> None:
        async with scripted(answer, attempts=2, servers=2) as (proxy, lb, _backend):
            loop = asyncio.get_running_loop()
            started_at = loop.time()
            status, _, body = await _exchange(proxy.port, _GET)
            elapsed = loop.time() - started_at
            assert (status, body) == (200, b"next")
            assert elapsed < 0.8  # not buffered for the whole second the set-aside allows
            assert _stats(lb)[0] == 0

    run(main)


def test_an_unsolicited_101_is_502_and_a_failure() -> None:
    switch = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\nRAW"

    async def main() -> None:
        async with scripted(lambda head, n: switch) as (proxy, lb, _backend):
            raw = await RawClient.connect(proxy.port)
            try:
                await raw.send(_GET)
                status, fields, _ = await raw.response()
                assert status == 502
                assert fields["x-loadbalancer-error"] == "upstream_invalid"
            finally:
                raw.close()
            assert _stats(lb) == (0, 0, 1)

    run(main)


def test_a_client_sending_its_body_slowly_is_no_failure_of_the_server() -> None:
    async def main() -> None:
        timeouts = Timeouts(client_body=2.0, upstream_read=0.3)
        async with scripted(lambda head, n: _OK, timeouts=timeouts) as (proxy, lb, _backend):
            raw = await RawClient.connect(proxy.port)
            try:
                await raw.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\n")
                for _ in range(6):  # 0.9 s in all, past the upstream's read timeout
                    await asyncio.sleep(0.15)
                    await raw.send(b"a")
                status, _, body = await raw.response()
                assert (status, body) == (200, b"next")
            finally:
                raw.close()
            assert _stats(lb) == (0, 1, 0)

    run(main)


def test_a_client_body_that_stalls_is_408_with_no_outcome_even_past_the_read_timeout() -> None:
    async def main() -> None:
        timeouts = Timeouts(client_body=0.6, upstream_read=0.2)
        async with scripted(lambda head, n: _OK, timeouts=timeouts) as (proxy, lb, _backend):
            raw = await RawClient.connect(proxy.port)
            try:
                await raw.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nab")
                status, _fields, _ = await raw.response()
                assert status == 408
                assert await raw.closed()
            finally:
                raw.close()
            assert _stats(lb) == (0, 0, 0)

    run(main)


@pytest.mark.parametrize(
    "coding", [b"gzip", b"gzip, chunked", b"chunked, chunked", b"identity"], ids=repr
)
def test_an_upstream_transfer_coding_other_than_chunked_is_502(coding: bytes) -> None:
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: %s\r\n\r\n5\r\nhello\r\n0\r\n\r\n" % coding

    async def main() -> None:
        async with scripted(lambda head, n: answer) as (proxy, lb, _backend):
            status, fields, _ = await _exchange(proxy.port, _GET)
            assert status == 502
            assert fields["x-loadbalancer-error"] == "upstream_invalid"
            assert _stats(lb) == (0, 0, 1)

    run(main)


@pytest.mark.parametrize("status", [b"099", b"600", b"999"])
def test_an_upstream_status_out_of_range_is_502(status: bytes) -> None:
    answer = b"HTTP/1.1 %s Weird\r\nContent-Length: 2\r\n\r\nok" % status

    async def main() -> None:
        async with scripted(lambda head, n: answer) as (proxy, _lb, _backend):
            got, fields, _ = await _exchange(proxy.port, _GET)
            assert got == 502
            assert fields["x-loadbalancer-error"] == "upstream_invalid"

    run(main)


def test_a_204_with_content_length_is_sent_without_it_and_a_304_keeps_it() -> None:
    def answer(head: bytes, n: int) -> bytes:
        if head.startswith(b"GET /204"):
            return b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"
        if head.startswith(b"GET /304"):
            return b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n"
        return _OK

    async def main() -> None:
        async with scripted(answer) as (proxy, _lb, _backend):
            raw = await RawClient.connect(proxy.port)
            try:
                await raw.send(b"GET /204 HTTP/1.1\r\nHost: x\r\n\r\n")
                head = await asyncio.wait_for(raw.reader.readuntil(b"\r\n\r\n"), 5)
                assert head.startswith(b"HTTP/1.1 204")
                assert b"content-length" not in head.lower()
                assert b"transfer-encoding" not in head.lower()
                await raw.send(b"GET /304 HTTP/1.1\r\nHost: x\r\n\r\n")
                head = await asyncio.wait_for(raw.reader.readuntil(b"\r\n\r\n"), 5)
                assert head.startswith(b"HTTP/1.1 304")
                assert b"Content-Length: 5\r\n" in head  # metadata: no body follows
                await raw.send(_GET)
                status, _, body = await raw.response()
                assert (status, body) == (200, b"next")
            finally:
                raw.close()

    run(main)


def test_a_bad_pipelined_body_is_refused_after_the_request_before_it_is_answered() -> None:
    async def main() -> None:
        async with scripted(lambda head, n: _OK) as (proxy, lb, _backend):
            raw = await RawClient.connect(proxy.port)
            try:
                await raw.send(
                    _GET + b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"5\r\nhello\r\nZZ\r\n"
                )
                status, _, body = await raw.response()
                assert (status, body) == (200, b"next")
                status, fields, _ = await raw.response()
                assert status == 400
                assert fields["connection"] == "close"
                assert await raw.closed()
            finally:
                raw.close()
            assert _stats(lb) == (0, 1, 0)

    run(main)


def test_an_upstream_connection_paused_for_a_slow_client_is_read_again_when_reused() -> None:
    chunks = b"".join(b"%x\r\n%s\r\n" % (40000, bytes([65 + i]) * 40000) for i in range(4))

    def answer(head: bytes, n: int) -> bytes:
        if head.startswith(b"GET /chunks"):
            return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
        return _OK

    async def main() -> None:
        timeouts = Timeouts(upstream_read=2.0)
        async with scripted(answer, timeouts=timeouts) as (proxy, _lb, _backend):
            slow = await RawClient.connect(proxy.port)
            try:
                transport = cast(asyncio.Transport, slow.writer.transport)
                transport.pause_reading()  # never read: the proxy's buffer fills
                sock = slow.writer.transport.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                await asyncio.sleep(0.05)
                for conn in proxy._connections:
                    conn_sock = conn.transport.get_extra_info("socket") if conn.transport else None
                    if conn_sock is not None:
                        conn_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
                await slow.send(b"GET /chunks HTTP/1.1\r\nHost: x\r\n\r\n")
                await asyncio.sleep(0.5)
                # Another client, on the connection the slow one's answer came on if it went
                # back to the pool (uvloop reads it whole at once): answered, never stuck.
                status, _, body = await _exchange(proxy.port, _GET)
                assert (status, body) == (200, b"next")
            finally:
                slow.close()

    run(main)


def test_a_tunnel_slows_a_client_that_floods_a_stuck_upstream() -> None:
    switch = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
    )

    async def main() -> None:
        async with scripted(lambda head, n: switch) as (proxy, _lb, _backend):
            raw = await RawClient.connect(proxy.port)
            try:
                await raw.send(
                    b"GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\n"
                    b"Upgrade: websocket\r\n\r\n"
                )
                status, _, _ = await raw.response()
                assert status == 101
                blob = b"w" * 65536
                for _ in range(512):  # 32 MiB the upstream never reads
                    raw.writer.write(blob)
                    await asyncio.sleep(0)
                await asyncio.sleep(0.5)
                conns = list(proxy._upstreams.senders)
                assert conns  # the tunnel's upstream connection
                for conn in conns:
                    assert conn.transport is not None
                    assert conn.transport.get_write_buffer_size() < 4 * 1024 * 1024
            finally:
                raw.close()

    run(main)


def test_an_endless_trailer_from_an_upstream_is_cut_off_and_a_failure() -> None:
    answer = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-Trailer: "
        + b"v" * (3 * 1024 * 1024)
    )

    async def main() -> None:
        async with scripted(lambda head, n: answer) as (proxy, lb, _backend):
            raw = await RawClient.connect(proxy.port)
            try:
                await raw.send(_GET)
                head = await asyncio.wait_for(raw.reader.readuntil(b"\r\n\r\n"), 5)
                assert head.startswith(b"HTTP/1.1 200")
                # Cut off (the connection closes, the body never ends): the trailer is never
                # read whole.
                rest = await asyncio.wait_for(raw.reader.read(), 5)
                assert rest == b"2\r\nok\r\n"
            finally:
                raw.close()
            assert _stats(lb) == (0, 0, 1)

    run(main)


def test_an_http10_expectation_is_ignored_never_answered_100() -> None:
    async def main() -> None:
        async with scripted(lambda head, n: _OK) as (proxy, _lb, backend):
            raw = await RawClient.connect(proxy.port)
            try:
                await raw.send(
                    b"POST / HTTP/1.0\r\nHost: x\r\nExpect: 100-continue\r\n"
                    b"Content-Length: 3\r\n\r\n"
                )
                await asyncio.sleep(0.2)
                await raw.send(b"abc")
                status, _, body = await raw.response()
                assert (status, body) == (200, b"next")  # not 100 first
            finally:
                raw.close()
            assert b"expect" not in backend.heads[0].lower()
            for other in (b"Expect: something-else\r\n", b"Expect: 100-continue\r\n"):
                status, _, _ = await _exchange(
                    proxy.port, b"GET / HTTP/1.0\r\nHost: x\r\n%s\r\n" % other
                )
                assert status == 200

    run(main)


def test_a_tunnel_idle_past_the_upstream_read_timeout_is_closed_a_busy_one_is_not() -> None:
    async def main() -> None:
        (backend,) = await started(1)
        timeouts = Timeouts(upstream_read=0.4)
        async with proxy_for(backend, timeouts=timeouts) as (proxy, lb):
            raw = await RawClient.connect(proxy.port)
            try:
                await raw.send(
                    b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"
                )
                status, _, _ = await raw.response()
                assert status == 101
                for _ in range(8):  # 1.2 s of traffic, past the timeout: kept open
                    await asyncio.sleep(0.15)
                    await raw.send(b"ping")
                    assert await asyncio.wait_for(raw.reader.readexactly(4), 5) == b"ping"
                loop = asyncio.get_running_loop()
                quiet = loop.time()
                assert await raw.closed(5)  # then quiet: closed
                assert loop.time() - quiet < 2
            finally:
                raw.close()
            deadline = asyncio.get_running_loop().time() + 5
            while _stats(lb)[0] and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.01)
            assert _stats(lb)[0] == 0

    run(main)


def test_absolute_form_is_routed_by_its_authority_which_is_sent_as_host() -> None:
    async def main() -> None:
        async with scripted(lambda head, n: _OK) as (proxy, _lb, backend):
            for target, host_field, sent, host in (
                (b"http://other.example/a?b=1", b"other.example", b"/a?b=1", b"other.example"),
                (b"http://x?a=1", b"x", b"/?a=1", b"x"),
                (b"http://x:8080", b"X", b"/", b"x:8080"),  # the target's port is the one sent
                (b"http://[::1]:8080", b"[::1]", b"/", b"[::1]:8080"),
            ):
                request = b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, host_field)
                status, _, _ = await _exchange(proxy.port, request)
                assert status == 200, target
                head = backend.heads[-1]
                assert head.startswith(b"GET %s HTTP/1.1\r\n" % sent)
                assert head.lower().count(b"\r\nhost:") == 1
                assert b"\r\nHost: %s\r\n" % host in head

    run(main)


def test_absolute_form_naming_another_host_than_the_host_field_is_refused() -> None:
    async def main() -> None:
        async with scripted(lambda head, n: _OK) as (proxy, _lb, backend):
            for target in (b"http://other.example/a", b"http://[::1]:8080/"):
                request = b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % target
                status, headers, _ = await _exchange(proxy.port, request)
                assert status == 400, target
                assert headers.get("x-loadbalancer-error") == "absolute_form"
            assert backend.heads == []  # this is no forward proxy: nothing went anywhere

    run(main)


def test_an_answer_that_stalls_while_the_client_still_sends_its_body_times_out() -> None:
    # The server answers early (before the body is whole), then stalls mid-body: the read
    # timeout applies to that answer, though the request is not sent whole.
    early = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\npart"

    async def main() -> None:
        timeouts = Timeouts(client_body=5.0, upstream_read=0.3)
        async with scripted(lambda head, n: None, timeouts=timeouts) as (proxy, lb, backend):
            backend.answer = lambda head, n: None
            raw = await RawClient.connect(proxy.port)
            try:
                await raw.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 5
                while not backend.heads and loop.time() < deadline:
                    await asyncio.sleep(0.01)
                for writer in backend._writers:  # the early, stalling answer
                    writer.write(early)
                head = await asyncio.wait_for(raw.reader.readuntil(b"\r\n\r\n"), 5)
                assert head.startswith(b"HTTP/1.1 200")
                for _ in range(10):  # the client keeps sending, 1.5 s in all
                    try:
                        await raw.send(b"a")
                    except (ConnectionError, RuntimeError):  # uvloop: RuntimeError
                        break  # cut off already
                    await asyncio.sleep(0.15)
                    if raw.reader.at_eof():
                        break
                assert await raw.closed(2)  # cut off by the read timeout
            finally:
                raw.close()
            assert _stats(lb) == (0, 0, 1)

    run(main)


async def _in_turn(port: int, requests: list[bytes]) -> list[tuple[int, bytes]]:
    """Each request in turn on one connection: the status and body of each answer."""
    raw = await RawClient.connect(port)
    try:
        answers = []
        for request in requests:
            await raw.send(request)
            status, _, body = await raw.response()
            answers.append((status, body))
        return answers
    finally:
        raw.close()


def test_a_second_response_in_the_same_read_is_never_forwarded_nor_its_connection_reused() -> None:
    def answer(head: bytes, n: int) -> bytes:
        if n == 2:  # on the kept-alive connection: an answer, and one nobody asked for
            return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi" + (
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 6\r\n\r\nforged"
            )
        return _OK

    async def main() -> None:
        async with scripted(answer) as (proxy, lb, backend):
            answers = await _in_turn(proxy.port, [_GET, _GET, _GET])
            assert answers == [(200, b"next"), (200, b"hi"), (200, b"next")]
            assert backend.connections == 2  # the one that sent two answers was closed
            assert _stats(lb) == (0, 3, 0)

    run(main)


def test_a_head_answer_with_bytes_after_it_on_a_kept_alive_connection_is_still_answered() -> None:
    def answer(head: bytes, n: int) -> bytes:
        if head.startswith(b"HEAD"):
            return b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nforged!"
        return _OK

    async def main() -> None:
        async with scripted(answer, attempts=2) as (proxy, lb, backend):
            raw = await RawClient.connect(proxy.port)
            try:
                await raw.send(_GET)
                assert (await raw.response())[0] == 200
                await raw.send(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
                head = await asyncio.wait_for(raw.reader.readuntil(b"\r\n\r\n"), 5)
                assert head.startswith(b"HTTP/1.1 200")
                await raw.send(_GET)
                assert await raw.response() == (200, {"content-length": "4"}, b"next")
            finally:
                raw.close()
            assert backend.connections == 2  # the HEAD's connection was not reused
            assert _stats(lb) == (0, 3, 0)  # the answer stood: no failure, no retry

    run(main)


@pytest.mark.parametrize("kept_alive", [False, True])
def test_an_upstream_breaking_off_in_the_read_of_its_head_is_a_502_and_a_failure(
    kept_alive: bool,
) -> None:
    bad = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\nzz\r\n"

    def answer(head: bytes, n: int) -> bytes:
        return bad if n == (2 if kept_alive else 1) else _OK

    async def main() -> None:
        async with scripted(answer) as (proxy, lb, _backend):
            requests = [_GET, _GET] if kept_alive else [_GET]
            raw = await RawClient.connect(proxy.port)
            try:
                for _ in requests[:-1]:
                    await raw.send(_GET)
                    assert (await raw.response())[0] == 200
                await raw.send(_GET)
                status, fields, _ = await raw.response(5)
            finally:
                raw.close()
            assert (status, fields["x-loadbalancer-error"]) == (502, "upstream_invalid")
            assert _stats(lb) == (0, len(requests) - 1, 1)

    run(main)


def test_fields_past_the_limits_are_431_before_the_head_ends() -> None:
    many = b"".join(b"F%d: v\r\n" % i for i in range(150))
    large = b"".join(b"F%d: %s\r\n" % (i, b"v" * 1000) for i in range(40))

    async def main() -> None:
        async with scripted(lambda head, n: _OK) as (proxy, _lb, backend):
            for fields, cause in ((many, "too_many_headers"), (large, "headers_too_large")):
                raw = await RawClient.connect(proxy.port)
                try:
                    await raw.send(b"GET / HTTP/1.1\r\nHost: x\r\n" + fields)  # no end yet
                    status, answered, _ = await raw.response(5)  # well before the 10 s timeout
                finally:
                    raw.close()
                assert (status, answered["x-loadbalancer-error"]) == (431, cause)
            assert backend.heads == []  # nothing of them was forwarded

    run(main)


def test_a_sticky_key_may_come_from_a_field_that_the_connection_field_names() -> None:
    from loadbalancer.serve._headers import read_request, sticky_key
    from loadbalancer.serve._settings import Sticky

    special = [(b"host", b"x"), (b"connection", b"x-user")]
    head = read_request([b"X-User: 42\r\n", b"Accept: */*\r\n"], special, True)
    assert head.fields == [b"Host: x\r\n", b"Accept: */*\r\n"]  # never forwarded: hop-by-hop
    assert sticky_key(head, Sticky(header="X-User")) == "42"  # yet it pins the request


@asynccontextmanager
async def raw_backend(
    serve: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[str]:
    """A backend on 127.0.0.1 whose every connection ``serve`` handles (until it returns or the
    connection goes); yields its address, and aborts every connection after."""
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await serve(reader, writer)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        for writer in writers:
            writer.transport.abort()
        await server.wait_closed()


@pytest.mark.parametrize(
    "stray",
    [
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 6\r\n\r\nforged",
        b"HTTP/1.1 404 Not Fo",  # a head cut short
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 60\r\n\r\nforg",  # a body cut short
    ],
)
def test_a_response_nobody_asked_for_after_a_streamed_answer_closes_its_connection(
    stray: bytes,
) -> None:
    async def main() -> None:
        head_forwarded = asyncio.Event()
        connections = 0

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal connections
            connections += 1
            first = connections == 1
            while True:
                await reader.readuntil(b"\r\n\r\n")
                if first:
                    first = False  # the head and some of the body; the rest comes later
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nne")
                    await writer.drain()
                    await head_forwarded.wait()
                    writer.write(b"xt" + stray)  # the body's end, and a stray response
                else:
                    writer.write(_OK)
                await writer.drain()

        async with (
            raw_backend(serve) as address,
            proxy_over([address], retry=RetryPolicy(attempts=1)) as (proxy, lb),
        ):
            raw = await RawClient.connect(proxy.port)
            try:
                await raw.send(_GET)
                await asyncio.wait_for(raw.reader.readuntil(b"\r\n\r\nne"), 5)
                head_forwarded.set()
                assert await asyncio.wait_for(raw.reader.readexactly(2), 5) == b"xt"
                await raw.send(_GET)
                assert await raw.response(5) == (200, {"content-length": "4"}, b"next")
            finally:
                raw.close()
        assert connections == 2  # the stray's connection was never reused
        assert _stats(lb) == (0, 2, 0)

    run(main)


def test_a_head_cut_short_after_a_whole_answer_in_one_read_closes_its_connection() -> None:
    def answer(head: bytes, n: int) -> bytes:
        if n == 2:
            return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiHTTP/1.1 404 Not Fo"
        return _OK

    async def main() -> None:
        async with scripted(answer) as (proxy, lb, backend):
            answers = await _in_turn(proxy.port, [_GET, _GET, _GET])
            assert answers == [(200, b"next"), (200, b"hi"), (200, b"next")]
            assert backend.connections == 2
            assert _stats(lb) == (0, 3, 0)

    run(main)


def test_a_retried_answer_set_aside_and_cut_off_is_sent_as_itself_when_no_server_is_left() -> None:
    busy = b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\nzz\r\n"

    async def main() -> None:
        async with scripted(lambda head, n: busy, attempts=2) as (proxy, _lb, _backend):
            status, fields, body = await _exchange(proxy.port, _GET)
            # The server's own 503, with what was kept of it (nothing), not a 502 of ours.
            assert (status, body, "x-loadbalancer-error" in fields) == (503, b"", False)

    run(main)


def test_a_pipelined_head_after_a_large_body_in_one_read_is_not_too_large() -> None:
    async def main() -> None:
        async with scripted(lambda head, n: _OK) as (proxy, _lb, backend):
            raw = await RawClient.connect(proxy.port)
            try:
                body = b"x" * 60_000  # more than every head limit together
                post = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
                await raw.send(post + body + _GET[:20])  # and the start of the next head
                assert (await raw.response(5))[0] == 200
                await raw.send(_GET[20:])
                assert await raw.response(5) == (200, {"content-length": "4"}, b"next")
            finally:
                raw.close()
            assert len(backend.heads) == 2

    run(main)


def test_a_sticky_cookie_may_come_from_a_cookie_field_that_the_connection_field_names() -> None:
    from loadbalancer.serve._headers import read_request, sticky_key
    from loadbalancer.serve._settings import Sticky

    head = read_request(
        [b"Cookie: a=1; sid=zed\r\n"], [(b"host", b"x"), (b"connection", b"cookie")], True
    )
    assert head.fields == [b"Host: x\r\n"]
    assert sticky_key(head, Sticky(cookie="sid")) == "zed"


def test_a_pipelined_head_read_while_the_answer_before_it_waits_is_held_to_the_limits() -> None:
    async def main() -> None:
        received, answer = asyncio.Event(), asyncio.Event()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            received.set()
            await answer.wait()
            writer.write(_OK)
            await writer.drain()
            await reader.read()

        limits = Limits(max_request_line=100, max_header_bytes=1000)
        async with (
            raw_backend(serve) as address,
            proxy_over([address], limits=limits) as (proxy, _),
        ):
            raw = await RawClient.connect(proxy.port)
            try:
                await raw.send(_GET)
                await asyncio.wait_for(received.wait(), 5)
                (client,) = proxy._connections
                # The next head, in one read while the first waits for its answer: a field
                # that never ends, past every limit. It is refused then, not left to grow.
                await raw.send(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * 20_000)

                async def refused() -> None:
                    while not client._stopped:  # the proxy reads no more of this connection
                        await asyncio.sleep(0)

                await asyncio.wait_for(refused(), 5)
                answer.set()
                status, fields, body = await raw.response(5)
                assert (status, body, fields.get("connection")) == (200, b"next", "close")
                assert await raw.closed()
            finally:
                raw.close()

    run(main)


def test_a_half_read_pipelined_head_keeps_its_header_timeout_once_the_answer_before_it_ends() -> (
    None
):
    timeouts = Timeouts(client_header=1.0, keepalive=30.0)

    async def main() -> None:
        async with scripted(lambda head, n: _OK, timeouts=timeouts) as (proxy, _lb, _backend):
            raw = await RawClient.connect(proxy.port)
            try:
                await raw.send(_GET + b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # stalls
                assert (await raw.response(5))[0] == 200
                status, fields, _ = await raw.response(10)  # its header timeout: not 30 s idle
            finally:
                raw.close()
            assert (status, fields["x-loadbalancer-error"]) == (408, "client_header_timeout")

    run(main)


def test_an_answer_before_the_whole_request_body_says_the_connection_closes() -> None:
    async def main() -> None:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")  # answered before the body is read
            writer.write(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            await reader.read()

        async with (
            raw_backend(serve) as address,
            proxy_over([address], retry=RetryPolicy(attempts=1)) as (proxy, _),
        ):
            raw = await RawClient.connect(proxy.port)
            try:
                await raw.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nxx")
                status, fields, _ = await raw.response(5)
                assert (status, fields.get("connection")) == (413, "close")
                assert await raw.closed()
            finally:
                raw.close()

    run(main)
