"""`loadbalancer serve`'s own work per request, without sockets, beside a minimal proxy.

bench_serve measures the proxy beside nginx over real sockets, where the kernel's share and this
shared machine's noise move every figure. This one isolates what the proxy's Python costs: the
same protocol objects that serve uses (``_ClientConnection``, ``Exchange``, the pooled upstream
``Connection``), wired to fake transports on one event loop. Each client sends a keep-alive GET
as wrk does; each upstream answers it on the next loop turn with nginx's own 200 "ok" head; the
next request goes once the answer is written. Everything above the socket runs: llhttp parsing
both ways, the hardening checks, routing, the balancer's lease and retry budget, the forwarded
head, the response head, and the pool giving the connection back.

Reference, same run, same fake wires: a minimal reverse proxy on httptools and asyncio
protocols (parse, pick the next kept-alive connection, forward, answer), with no balancer, no
limits, timeouts or header rules. The ratio is what the library's machinery costs over the least
a Python proxy does. CPU time per request, best of interleaved rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import httptools

from loadbalancer.serve._config import Upstreams, config_from_flags
from loadbalancer.serve._server import ProxyServer, _ClientConnection
from loadbalancer.serve._upstream import Connection

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Tue, 01 Dec 2026 21:00:00 GMT\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Length: 2\r\n"
    b"Connection: keep-alive\r\n\r\nok"
)
CONNECTIONS = 32  # clients, and kept-alive upstream connections, as bench_serve's wrk -c32
SERVERS = ["127.0.0.1:9001", "127.0.0.1:9002"]


class FakeTransport:
    """Enough of an asyncio transport for both proxies: writes go to ``on_write``."""

    def __init__(self, on_write: Callable[[bytes], None]) -> None:
        self.on_write = on_write
        self.closing = False

    def write(self, data: bytes) -> None:
        self.on_write(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 50000) if name == "peername" else default

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


# -- the reference: a minimal reverse proxy --------------------------------------------------


class MinimalUpstream(asyncio.Protocol):
    """One kept-alive upstream connection: parse the answer, hand it to the client."""

    def __init__(self, idle: deque[MinimalUpstream]) -> None:
        self.idle = idle
        self.parser = httptools.HttpResponseParser(self)
        self.transport: Any = None
        self.client: MinimalClient | None = None
        self.head: list[bytes] = []
        self.body: list[bytes] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() not in (b"connection", b"content-length", b"keep-alive"):
            self.head.append(b"%s: %s\r\n" % (name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        body = b"".join(self.body)
        answer = b"HTTP/1.1 %d OK\r\n%sContent-Length: %d\r\n\r\n%s" % (
            self.parser.get_status_code(),
            b"".join(self.head),
            len(body),
            body,
        )
        self.head, self.body = [], []
        client, self.client = self.client, None
        self.idle.append(self)
        assert client is not None
        client.transport.write(answer)


class MinimalClient(asyncio.Protocol):
    """One client connection: parse the request, send it on an idle upstream connection."""

    def __init__(self, idle: deque[MinimalUpstream]) -> None:
        self.idle = idle
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self.url = b""
        self.head: list[bytes] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head.append(b"%s: %s\r\n" % (name, value))

    def on_message_complete(self) -> None:
        request = b"%s %s HTTP/1.1\r\n%sX-Forwarded-For: 127.0.0.1\r\n\r\n" % (
            self.parser.get_method(),
            self.url,
            b"".join(self.head),
        )
        self.url, self.head = b"", []
        upstream = self.idle.popleft()
        upstream.client = self
        upstream.transport.write(request)


# -- the run ------------------------------------------------------------------------------------


def answered_by(loop: asyncio.AbstractEventLoop, protocol: asyncio.Protocol) -> FakeTransport:
    """An upstream's transport: each request written is answered on the next loop turn."""

    def answer(_: bytes) -> None:
        loop.call_soon(protocol.data_received, RESPONSE)

    return FakeTransport(answer)


async def exchanges(requests: int, proxy: str) -> float:
    """CPU µs per request for ``requests`` requests through ``proxy`` (serve or minimal)."""
    loop = asyncio.get_running_loop()
    finished = asyncio.Event()
    left = requests
    clients: list[asyncio.Protocol] = []
    server: ProxyServer | None = None
    if proxy == "serve":
        config = config_from_flags(
            listen=["127.0.0.1:0"],
            backends=SERVERS,
            strategy="round_robin",
            admin=None,
            workers=1,
            access_log="off",
            config=None,
        )
        upstreams = Upstreams()
        server = ProxyServer(await upstreams.apply(config))
        await server.start("127.0.0.1", 0)  # a listener nobody connects to: the loop and pool
        pool = server._upstreams  # white-box: fake kept-alive connections, as if warmed up
        for name in SERVERS:
            for _ in range(CONNECTIONS):
                conn = Connection(pool, name)
                conn.connection_made(answered_by(loop, conn))  # type: ignore[arg-type]
                conn.idle_since = loop.time()
                pool.put(conn)
        proxy_server = server

        def make_client() -> asyncio.Protocol:
            return _ClientConnection(proxy_server)

    else:
        idle: deque[MinimalUpstream] = deque()
        for _ in range(CONNECTIONS):
            upstream = MinimalUpstream(idle)
            upstream.connection_made(answered_by(loop, upstream))
            idle.append(upstream)

        def make_client() -> asyncio.Protocol:
            return MinimalClient(idle)

    def client_transport(client: asyncio.Protocol) -> FakeTransport:
        """What the proxy writes to ``client``: an answer's end sends the next request."""

        def wrote(data: bytes) -> None:
            nonlocal left
            if data.endswith(b"ok"):  # an answer's last bytes: the next request, or the end
                left -= 1
                if left <= 0:
                    finished.set()
                else:
                    loop.call_soon(client.data_received, REQUEST)

        return FakeTransport(wrote)

    for _ in range(CONNECTIONS):
        client = make_client()
        client.connection_made(client_transport(client))  # type: ignore[arg-type]
        clients.append(client)
    gc.collect()
    began = time.process_time()
    for client in clients:
        loop.call_soon(client.data_received, REQUEST)
    await finished.wait()
    spent = time.process_time() - began
    if server is not None:
        await server.close()
        await upstreams.close()
    return spent / requests * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50_000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds")
    args = parser.parse_args()
    try:
        import uvloop

        run: Callable[[Any], float] = uvloop.run
        loop_name = "uvloop"
    except ImportError:  # pragma: no cover - uvloop is in the serve extra on CPython/Linux
        run, loop_name = asyncio.run, "asyncio"
    results: dict[str, list[float]] = {"serve": [], "minimal": []}
    for _ in range(args.rounds):
        for proxy in results:
            results[proxy].append(run(exchanges(args.requests, proxy)))
    serve, minimal = min(results["serve"]), min(results["minimal"])
    print(
        f"proxy's own CPU per request, no sockets ({loop_name}; {args.requests} keep-alive GETs"
        f" over {CONNECTIONS} connections, best of {args.rounds} interleaved rounds)"
    )
    print(f"  {'minimal httptools proxy':<32} {minimal:6.2f} µs   1.00x")
    print(f"  {'loadbalancer serve':<32} {serve:6.2f} µs  {serve / minimal:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
