"""Fake wires beneath requests and aiohttp: every layer of the client runs, bar the socket.

What httpx's MockTransport is to httpx, for the other two clients, so that a balanced and a
plain client can be timed per request without network or server noise:

requests: ``fake_socket(adapter)`` gives the adapter's urllib3 pool manager a pool class whose
connections "connect" to a ``FakeSocket``. Everything above the kernel runs for real and alike
for the plain ``HTTPAdapter`` and ``BalancedAdapter`` (an ``HTTPAdapter`` subclass): requests'
Session and adapter (``send``, the pool-key hook the balancer overrides, ``build_response``),
urllib3's pool manager, pool, connection checkout and release, http.client writing the
request and parsing the response's status line and headers, and the body read whose end
releases the connection (and the balancer's lease). The socket swallows what is sent and
answers each request with a canned response from memory.

aiohttp: ``FakeConnector`` is an aiohttp ``BaseConnector`` (with its real keep-alive pooling)
whose new connections are aiohttp's own ``ResponseHandler`` protocol on a ``FakeTransport``:
aiohttp writes the request to it, and once the request's head is complete the transport feeds
the canned response to the protocol, on the next loop iteration as a socket would. aiohttp's
request building, writer, response parser, connection reuse and body reads all run for real.
"""

from __future__ import annotations

import asyncio
import io
import socket
from typing import Any, cast

import aiohttp
from aiohttp.client_proto import ResponseHandler
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool


def canned_response(body: bytes) -> bytes:
    """A keep-alive HTTP/1.1 200 with ``body``, as uvicorn sends one."""
    head = (
        "HTTP/1.1 200 OK\r\n"
        "date: Tue, 01 Dec 2026 12:00:00 GMT\r\n"
        "server: uvicorn\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "\r\n"
    )
    return head.encode("latin-1") + body


# -- requests / urllib3 ---------------------------------------------------------------------------


class FakeSocket:
    """A connected socket as http.client uses it: what is sent is dropped; each response
    (http.client makes one file per response) reads the canned answer."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer

    def sendall(self, data: bytes) -> None:
        pass

    def makefile(self, mode: str) -> io.BytesIO:
        return io.BytesIO(self.answer)

    def settimeout(self, timeout: float | None) -> None:
        pass

    def close(self) -> None:
        pass


class FakeConnection(HTTPConnection):
    """urllib3's connection, connecting to a ``FakeSocket`` instead of the network."""

    answer = b""

    def _new_conn(self) -> socket.socket:
        return cast(socket.socket, FakeSocket(self.answer))

    @property
    def is_connected(self) -> bool:
        # urllib3 polls a real socket for an unexpected read (the server closed); this one
        # never closes.
        return self.sock is not None


def fake_socket(adapter: HTTPAdapter, body: bytes) -> None:
    """Make ``adapter``'s http connections talk to fake sockets answering ``body``."""

    class Connection(FakeConnection):
        answer = canned_response(body)

    class Pool(HTTPConnectionPool):
        ConnectionCls = Connection

    adapter.poolmanager.pool_classes_by_scheme = {"http": Pool}


# -- aiohttp --------------------------------------------------------------------------------------


class FakeTransport(asyncio.Transport):
    """A connection to a server answering each request's head with a canned response."""

    def __init__(self, protocol: ResponseHandler, answer: bytes) -> None:
        super().__init__()
        self._protocol = protocol
        self._answer = answer
        self._loop = asyncio.get_running_loop()
        self._sent = b""
        self._closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._sent += bytes(data)
        # A GET has no body: its head's end is the request's end.
        if b"\r\n\r\n" in self._sent:
            self._sent = b""
            self._loop.call_soon(self._protocol.data_received, self._answer)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._loop.call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_reading(self) -> bool:
        return True


class FakeConnector(aiohttp.BaseConnector):
    """aiohttp's connector, its new connections on ``FakeTransport``s answering ``body``."""

    def __init__(self, body: bytes) -> None:
        super().__init__()
        self._answer = canned_response(body)

    async def _create_connection(
        self, req: aiohttp.ClientRequest, traces: Any, timeout: aiohttp.ClientTimeout
    ) -> ResponseHandler:
        protocol = ResponseHandler(asyncio.get_running_loop())
        protocol.connection_made(FakeTransport(protocol, self._answer))
        return protocol
