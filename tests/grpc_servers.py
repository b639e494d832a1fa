"""Real gRPC servers for the balanced channel's tests: grpcio servers on 127.0.0.1.

Each ``EchoServer`` is a ``grpc.server`` with a thread pool, bound to a port the kernel
picks, serving a small service defined with grpcio's generic handlers (raw ``bytes``
messages, no generated code), and the standard ``grpc.health.v1.Health`` service:

``/test.Echo/Unary``
    Answers ``<name>:<request>`` (``mode`` permitting).
``/test.Echo/Stream``
    Streams ``<name>:0``, ``<name>:1``, ... for as many messages as the request's digits say
    (``b"3"``: three), waiting for ``let_go()`` before the last one, so a test can hold a
    stream open; ``streams_open`` counts streams being served.
``/test.Echo/Collect``
    A client stream: answers ``<name>:<number of messages>``.
``/test.Echo/Chat``
    A bidirectional stream: answers each message with ``<name>:<message>``.

With ``tls=True`` it serves TLS with the tests' certificate for 127.0.0.1 (``CERT``).

``mode`` (for ``Unary`` and ``Stream``): ``"ok"``; ``"unavailable"`` aborts with UNAVAILABLE
(with ``grpc-retry-pushback-ms: <pushback>`` in the trailers if ``pushback`` is set);
``"not_found"`` aborts with NOT_FOUND; ``"committed_unavailable"`` sends response headers
with metadata, then aborts with UNAVAILABLE; ``"message_then_unavailable"`` (``Stream``)
sends one message, then aborts with UNAVAILABLE; ``"slow"`` (``Unary`` and ``Stream``)
answers only after ``let_go()``, or once the call is cancelled, then as ``mode`` says then.
Every call is counted on arrival, by method (``count(method)``), with its metadata recorded
(``metadata``). ``kill()`` stops the server
at once, cancelling its calls; the port then refuses connections.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

__all__ = ["EchoServer", "echo_servers"]

SERVICE = "test.Echo"
UNARY = f"/{SERVICE}/Unary"
STREAM = f"/{SERVICE}/Stream"
COLLECT = f"/{SERVICE}/Collect"
CHAT = f"/{SERVICE}/Chat"
CERTS = Path(__file__).resolve().parent / "certs"
CERT = CERTS / "localhost-cert.pem"
"""The certificate a ``tls=True`` server presents: the CA to trust for it."""
SERVER_THREADS = "echo-server"
"""The name of every thread the servers start (their handlers' pool)."""


class EchoServer:
    """One grpcio server of the test service, on 127.0.0.1 (see the module docstring)."""

    def __init__(self, name: str, *, tls: bool = False) -> None:
        self.name = name
        self.mode = "ok"
        self.pushback: str | None = None
        self.released = False
        self.arrived = threading.Event()  # set when the first call arrives
        self._gates: list[threading.Event] = []
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self.metadata: list[dict[str, str | bytes]] = []
        self.streams_open = 0
        self.health = health.HealthServicer()
        self._server = grpc.server(ThreadPoolExecutor(16, thread_name_prefix=SERVER_THREADS))
        handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
            "Unary": grpc.unary_unary_rpc_method_handler(self._unary),
            "Stream": grpc.unary_stream_rpc_method_handler(self._stream),
            "Collect": grpc.stream_unary_rpc_method_handler(self._collect),
            "Chat": grpc.stream_stream_rpc_method_handler(self._chat),
        }
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),)
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        if tls:  # the tests' self-signed certificate for 127.0.0.1 (tests/certs)
            pair = ((CERTS / "localhost-key.pem").read_bytes(), CERT.read_bytes())
            credentials = grpc.ssl_server_credentials([pair])
            self.port = self._server.add_secure_port("127.0.0.1:0", credentials)
        else:
            self.port = self._server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{self.port}"
        self._server.start()
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)

    def count(self, method: str = UNARY) -> int:
        """Calls of ``method`` that reached this server."""
        with self._lock:
            return self._counts[method]

    def kill(self) -> None:
        """Stop at once: calls in flight are cancelled, new connections refused."""
        self._server.stop(0).wait()

    def _arrive(self, method: str, context: grpc.ServicerContext) -> None:
        with self._lock:
            self._counts[method] += 1
            self.metadata.append(dict(context.invocation_metadata()))
        self.arrived.set()

    def _hold(self, context: grpc.ServicerContext) -> None:
        """Wait until ``let_go()`` (or the call ends: a cancel, the client gone)."""
        gate = threading.Event()
        context.add_callback(gate.set)
        with self._lock:
            self._gates.append(gate)
            if self.released:
                gate.set()
        gate.wait(30)

    def let_go(self) -> None:
        """Let every held call (``slow``, a stream's last message) go on, now and later."""
        with self._lock:
            self.released = True
            for gate in self._gates:
                gate.set()

    def _misbehave(self, context: grpc.ServicerContext) -> None:
        """Abort the call as ``mode`` says, or return to serve it. A ``slow`` call is held
        first, then treated as ``mode`` says when it is let go."""
        if self.mode == "slow":
            self._hold(context)
        mode = self.mode
        if mode == "unavailable":
            if self.pushback is not None:
                context.set_trailing_metadata((("grpc-retry-pushback-ms", self.pushback),))
            context.abort(grpc.StatusCode.UNAVAILABLE, f"{self.name} is unavailable")
        if mode == "not_found":
            context.abort(grpc.StatusCode.NOT_FOUND, f"{self.name} has no such thing")
        if mode == "committed_unavailable":
            context.send_initial_metadata((("served-by", self.name),))
            context.abort(grpc.StatusCode.UNAVAILABLE, f"{self.name} failed after headers")

    def _unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._arrive(UNARY, context)
        self._misbehave(context)
        return f"{self.name}:".encode() + request

    def _stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        self._arrive(STREAM, context)
        self._misbehave(context)  # "slow" holds the stream before its first message
        with self._lock:
            self.streams_open += 1
        try:
            count = int(request or b"1")
            for index in range(count):
                if index == count - 1 and count > 1:
                    self._hold(context)
                yield f"{self.name}:{index}".encode()
                if self.mode == "message_then_unavailable":
                    context.abort(grpc.StatusCode.UNAVAILABLE, f"{self.name} broke mid-stream")
        finally:
            with self._lock:
                self.streams_open -= 1

    def _collect(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        self._arrive(COLLECT, context)
        return f"{self.name}:{sum(1 for _ in requests)}".encode()

    def _chat(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[Any]:
        self._arrive(CHAT, context)
        for message in requests:
            yield f"{self.name}:".encode() + message


@contextlib.contextmanager
def echo_servers(count: int) -> Iterator[list[EchoServer]]:
    """``count`` servers named s0, s1, ..., stopped on exit."""
    servers: list[EchoServer] = []
    try:
        for index in range(count):
            servers.append(EchoServer(f"s{index}"))
        yield servers
    finally:
        for server in servers:
            server.let_go()
            server.kill()
