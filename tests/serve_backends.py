"""Backends and clients for the proxy's tests, all on the test's own event loop.

``AsyncBackend`` is a small HTTP/1.1 server on 127.0.0.1 built on h11 (a parser other than
the proxy's llhttp, so the two check each other). It counts the connections it accepts,
records every request (method, target, fields, body), and serves:

``/echo...`` (any method)
    200, JSON: ``backend``, ``method``, ``target``, ``headers`` (pairs, names lower-case),
    ``body`` (latin-1) and ``body_length``.
``/status/N``
    Answers status N with a short body.
``/chunks?n=N&size=S``
    A chunked body of N chunks of S bytes (``a``, ``b``, ...).
``/sse?n=N``
    ``text/event-stream``: N events ``data: i``; before each event after the first it waits
    for ``backend.gate`` to be set (then clears it), so a test decides when each comes.
    ``backend.sse_sent`` counts the events written.
``/hang``
    Reads the request, never answers.
``/slow?ms=M``
    Answers like ``/echo`` after M milliseconds (a slow server, not a synchronisation).
``/ws``
    An upgrade: 101, then echoes raw bytes back until the client closes.

``mode``: ``"ok"``; ``"hang"`` (every path hangs); ``"fail503"`` (every path answers 503);
``"once"`` (a connection's second request is met with a reset, unanswered: a kept-alive
connection the server dropped just as it was reused).
``kill()`` closes the listener and aborts every connection, like a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import h11

T = TypeVar("T")

_LIVE: list[AsyncBackend] = []  # the backends of the running test, killed when it ends


@dataclass
class Recorded:
    """One request as the backend received it."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first field named ``name`` (any case), or None."""
        for key, value in self.headers:
            if key == name.lower():
                return value
        return None


class AsyncBackend:
    """One h11 server on 127.0.0.1, on the running loop; see the module docstring."""

    def __init__(self, name: str = "b0") -> None:
        self.name = name
        self.mode = "ok"
        self.connections = 0
        self.requests: list[Recorded] = []
        self.gate = asyncio.Event()
        self.sse_sent = 0
        self.dropped = 0  # requests met with a reset in mode "once"
        self._closing = False
        self.arrived = asyncio.Event()  # set on every request's arrival
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``, as a balancer holds it."""
        return f"127.0.0.1:{self.port}"

    async def start(self) -> AsyncBackend:
        """Listen on a free port (stopped by ``run`` when the test ends)."""
        _LIVE.append(self)
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def kill(self) -> None:
        """Stop at once: the listener closes, every connection is aborted."""
        server, self._server = self._server, None
        self._closing = True
        self.gate.set()  # a stream waiting for its next event ends (never cancelled: 3.11's
        # start_server logs an error for every handler task cancelled at shutdown)
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        if server is not None:
            await server.wait_closed()
        await asyncio.sleep(0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        conn = h11.Connection(h11.SERVER)
        served = 0
        try:
            while True:
                request, body = await self._read(conn, reader)
                if request is None:
                    return
                served += 1
                if self.mode == "once" and served > 1:
                    self.dropped += 1
                    return  # aborted, unanswered, unrecorded
                recorded = Recorded(
                    request.method.decode(),
                    request.target.decode(),
                    [(k.decode().lower(), v.decode("latin-1")) for k, v in request.headers],
                    body,
                )
                self.requests.append(recorded)
                self.arrived.set()
                if not await self._answer(conn, recorded, reader, writer):
                    return
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (ConnectionError, h11.ProtocolError, asyncio.IncompleteReadError):
            return
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    async def _read(
        self, conn: h11.Connection, reader: asyncio.StreamReader
    ) -> tuple[h11.Request | None, bytes]:
        request: h11.Request | None = None
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return request, body
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None, b""

    async def _answer(
        self,
        conn: h11.Connection,
        request: Recorded,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        def send(*events: Any) -> None:
            for event in events:
                data = conn.send(event)
                if data:
                    writer.write(data)

        head = [("X-Backend", self.name)]
        path, _, query = request.target.partition("?")
        params = dict(p.partition("=")[::2] for p in query.split("&") if p)
        if self.mode == "hang" or path == "/hang":
            await reader.read()  # until the proxy gives up and closes
            return False
        if path == "/slow":
            await asyncio.sleep(int(params.get("ms", "100")) / 1000)
        if self.mode == "fail503":
            body = b"overloaded"
            send(h11.Response(status_code=503, headers=[*head, ("Content-Length", "10")]))
            send(h11.Data(data=body), h11.EndOfMessage())
        elif path.startswith("/status/"):
            status = int(path.rsplit("/", 1)[1])
            body = b"status %d" % status
            send(
                h11.Response(
                    status_code=status, headers=[*head, ("Content-Length", str(len(body)))]
                )
            )
            if request.method != "HEAD" and status not in (204, 304):
                send(h11.Data(data=body))
            send(h11.EndOfMessage())
        elif path == "/chunks":
            n, size = int(params.get("n", "3")), int(params.get("size", "10"))
            send(h11.Response(status_code=200, headers=[*head, ("Transfer-Encoding", "chunked")]))
            for i in range(n):
                send(h11.Data(data=bytes([97 + i % 26]) * size))
                await writer.drain()
            send(h11.EndOfMessage())
        elif path == "/sse":
            n = int(params.get("n", "3"))
            send(
                h11.Response(
                    status_code=200,
                    headers=[
                        *head,
                        ("Content-Type", "text/event-stream"),
                        ("Transfer-Encoding", "chunked"),
                    ],
                )
            )
            for i in range(n):
                if i:
                    await self.gate.wait()
                    if self._closing:
                        return False
                    self.gate.clear()
                send(h11.Data(data=b"data: %d\n\n" % i))
                await writer.drain()
                self.sse_sent += 1
            send(h11.EndOfMessage())
        elif path == "/ws":
            send(
                h11.InformationalResponse(
                    status_code=101, headers=[("Connection", "upgrade"), ("Upgrade", "echo")]
                )
            )
            await writer.drain()
            rest, _ = conn.trailing_data
            if rest:
                writer.write(rest)
            while data := await reader.read(65536):
                writer.write(data)
            return False
        else:
            body = json.dumps(
                {
                    "backend": self.name,
                    "method": request.method,
                    "target": request.target,
                    "headers": request.headers,
                    "body": request.body.decode("latin-1"),
                    "body_length": len(request.body),
                }
            ).encode()
            send(
                h11.Response(
                    status_code=200,
                    headers=[
                        *head,
                        ("Content-Type", "application/json"),
                        ("Content-Length", str(len(body))),
                    ],
                )
            )
            if request.method != "HEAD":
                send(h11.Data(data=body))
            send(h11.EndOfMessage())
        await writer.drain()
        return True


async def started(n: int) -> list[AsyncBackend]:
    """``n`` backends, ``b0``..., listening."""
    return [await AsyncBackend(f"b{i}").start() for i in range(n)]


def run(make: Callable[[], Awaitable[T]], timeout: float = 20.0) -> T:
    """Run a test's coroutine on a fresh loop, failing it past ``timeout`` seconds (on
    uvloop's loop when ``SERVE_TESTS_LOOP=uvloop``)."""

    async def bounded() -> T:
        try:
            return await asyncio.wait_for(make(), timeout)
        finally:
            live = list(_LIVE)
            _LIVE.clear()
            for backend in live:
                await backend.kill()

    if os.environ.get("SERVE_TESTS_LOOP") == "uvloop":  # the whole suite on uvloop, on demand
        import uvloop

        return uvloop.run(bounded())
    return asyncio.run(bounded())


class RawClient:
    """A raw socket client on the running loop: for bytes no HTTP client would send."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        """Connect to 127.0.0.1:``port``."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        """Write ``data``."""
        self.writer.write(data)
        await self.writer.drain()

    async def response(self, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
        """Read one response (Content-Length, chunked, or to the close)."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        fields: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                fields[name.strip().lower()] = value.strip()
        if status in (100, 101, 204, 304):
            return status, fields, b""
        if "content-length" in fields:
            body = await asyncio.wait_for(
                self.reader.readexactly(int(fields["content-length"])), timeout
            )
        elif fields.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size = int((await asyncio.wait_for(self.reader.readline(), timeout)).strip(), 16)
                chunk = await asyncio.wait_for(self.reader.readexactly(size + 2), timeout)
                if size == 0:
                    break
                body += chunk[:-2]
        else:
            body = await asyncio.wait_for(self.reader.read(), timeout)
        return status, fields, body

    async def closed(self, timeout: float = 5.0) -> bool:
        """True if the server closes the connection (EOF) within ``timeout``."""
        try:
            rest = await asyncio.wait_for(self.reader.read(), timeout)
        except (ConnectionError, asyncio.TimeoutError):
            return True
        return rest == b""

    def close(self) -> None:
        """Close the socket."""
        self.writer.transport.abort()


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def chunks(items: Iterator[bytes]) -> Iterator[bytes]:
    """``items`` unchanged: an iterator body makes httpx send chunked."""
    yield from items


class ScriptedBackend:
    """A raw upstream on the running loop, for answers no real server should send: it reads
    each request (head, and a Content-Length body) and writes what ``answer(head, n)`` returns
    for the connection's ``n``-th request (None: nothing; ``b"CLOSE"``: closes it; a 101:
    the connection is read no more, a tunnel whose far end is stuck)."""

    def __init__(self, answer: Callable[[bytes, int], bytes | None]) -> None:
        self.answer = answer
        self.connections = 0
        self.heads: list[bytes] = []  # every request head received, in order
        self.received: list[bytearray] = []  # every connection's raw bytes, in order
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._stop = asyncio.Event()
        self.port = 0

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"

    async def start(self) -> ScriptedBackend:
        """Listen on a free port."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        """Stop listening, abort every connection."""
        server, self._server = self._server, None
        self._stop.set()
        for writer in list(self._writers):
            writer.transport.abort()
        if server is not None:
            server.close()
            await server.wait_closed()
        await asyncio.sleep(0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        raw = bytearray()
        self.received.append(raw)
        n = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                raw += head
                self.heads.append(head)
                for line in head.lower().split(b"\r\n"):
                    if line.startswith(b"content-length:"):
                        raw += await reader.readexactly(int(line.split(b":")[1]))
                n += 1
                out = self.answer(head, n)
                if out == b"CLOSE":
                    return
                if out:
                    writer.write(out)
                    await writer.drain()
                    if out.startswith(b"HTTP/1.1 101"):  # a tunnel whose end never reads
                        await self._stop.wait()
                        return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()
