"""Health-check test doubles: loopback servers that pass, fail or hang, and a fake balancer."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Literal

HANG: Literal["hang"] = "hang"

CERTS = Path(__file__).resolve().parent / "certs"
CERT = CERTS / "localhost-cert.pem"  # self-signed for 127.0.0.1 and localhost; see README


def server_tls() -> ssl.SSLContext:
    """A server-side TLS context presenting the test certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(CERT, CERTS / "localhost-key.pem")
    return context


def client_tls() -> ssl.SSLContext:
    """A client-side TLS context that trusts the test certificate and nothing else."""
    return ssl.create_default_context(cafile=str(CERT))


class FakeBalancer:
    """What a checker calls on a balancer, recording every verdict.

    ``on_verdict`` runs inside ``set_healthy``, on the checker's thread or event loop: tests
    use it to set an Event the moment a verdict arrives.
    """

    def __init__(
        self, *servers: str, on_verdict: Callable[[str, bool], None] | None = None
    ) -> None:
        self._lock = threading.Lock()
        self._servers = servers
        self.calls: list[tuple[str, bool]] = []
        self.verdicts: dict[str, bool] = {}
        self.refreshes = 0
        self.on_verdict = on_verdict
        self.on_refresh: Callable[[], None] | None = None
        self._waiters: list[tuple[str, bool, threading.Event]] = []

    @property
    def servers(self) -> tuple[str, ...]:
        return self._servers

    def set_servers(self, *servers: str) -> None:
        self._servers = servers

    def set_healthy(self, server: str, healthy: bool) -> bool:
        with self._lock:
            if server not in self._servers:
                return False
            self.calls.append((server, healthy))
            self.verdicts[server] = healthy
            for name, wanted, event in self._waiters:
                if name == server and wanted == healthy:
                    event.set()
        if self.on_verdict is not None:
            self.on_verdict(server, healthy)
        return True

    def refresh(self) -> None:
        with self._lock:
            self.refreshes += 1
        if self.on_refresh is not None:
            self.on_refresh()

    def when(self, server: str, healthy: bool) -> threading.Event:
        """An Event set once ``server`` has (or gets) the verdict ``healthy``."""
        event = threading.Event()
        with self._lock:
            if self.verdicts.get(server) == healthy:
                event.set()
            self._waiters.append((server, healthy, event))
        return event


class TcpListener:
    """A listening socket on 127.0.0.1; the kernel completes connections without accept()."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.address = f"127.0.0.1:{self._sock.getsockname()[1]}"

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> TcpListener:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ClosedPort:
    """A port bound on 127.0.0.1 but not listening: connections are refused at once.

    Holding the port (rather than closing a socket and reusing its number) means no other
    test can start listening on it meanwhile.
    """

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._sock.getsockname()[1]}"

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> ClosedPort:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class HealthServer:
    """A tiny HTTP server on 127.0.0.1 answering ``status`` (an int) or hanging.

    Set ``status = HANG`` to accept requests and never answer; ``hanging`` is set while a
    request is held, and ``close()`` releases it, so no server thread outlives the test.
    ``requests`` records (path, headers) of every request. With ``tls`` (e.g.
    ``server_tls()``) it speaks HTTPS, and ``url`` starts with ``https://``.
    """

    def __init__(
        self, status: int | Literal["hang"] = 200, tls: ssl.SSLContext | None = None
    ) -> None:
        self.status: int | Literal["hang"] = status
        self.hanging = threading.Event()
        self.release = threading.Event()
        self.requests: list[tuple[str, dict[str, str]]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests.append((self.path, dict(self.headers.items())))
                status = owner.status
                if status == HANG:
                    owner.hanging.set()
                    owner.release.wait()
                    return  # close without a word
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass  # keep test output clean

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            # accept() then does the handshake; one that fails drops that connection only.
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        # Non-daemon request threads, joined by server_close(): nothing outlives close().
        self._server.daemon_threads = False
        self._server.block_on_close = True
        port = self._server.server_address[1]
        self.address = f"127.0.0.1:{port}"
        self.url = f"{'http' if tls is None else 'https'}://127.0.0.1:{port}"
        # A short poll only bounds how long close() takes to stop the accept loop.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}
        )
        self._thread.start()

    def close(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> HealthServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class TrickleServer:
    """A server on 127.0.0.1 that sends ``data`` one byte every ``every`` seconds, then closes.

    It serves one connection at a time on its own thread, each from the start of ``data``
    (an HTTP status line by default, so a probe that waited long enough would pass).
    ``trickling`` is set once a first byte has gone out; ``close()`` ends it at once.
    """

    def __init__(self, data: bytes = b"HTTP/1.1 200 OK\r\n\r\n", every: float = 0.2) -> None:
        self._data = data
        self._every = every
        self._stop = threading.Event()
        self.trickling = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._sock.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:  # close() closed the listening socket
                return
            with conn:
                for i in range(len(self._data)):
                    try:
                        conn.sendall(self._data[i : i + 1])
                    except OSError:  # the client gave up and reset the connection
                        break
                    self.trickling.set()
                    # Paces the trickle; waiting on the Event lets close() end it at once.
                    if self._stop.wait(self._every):
                        return

    def close(self) -> None:
        self._stop.set()
        # shutdown() wakes a blocked accept() on Linux; close() alone may not.
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join()

    def __enter__(self) -> TrickleServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def health_threads() -> list[threading.Thread]:
    """Threads the checkers started (they all carry this name prefix) that are still alive."""
    return [t for t in threading.enumerate() if t.name.startswith("loadbalancer-health")]
