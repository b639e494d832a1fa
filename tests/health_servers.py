"""Health-check test doubles: loopback servers that pass, fail or hang, and a fake balancer."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Literal

HANG: Literal["hang"] = "hang"


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
    ``requests`` records (path, headers) of every request.
    """

    def __init__(self, status: int | Literal["hang"] = 200) -> None:
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
        # Non-daemon request threads, joined by server_close(): nothing outlives close().
        self._server.daemon_threads = False
        self._server.block_on_close = True
        port = self._server.server_address[1]
        self.address = f"127.0.0.1:{port}"
        self.url = f"http://127.0.0.1:{port}"
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


def health_threads() -> list[threading.Thread]:
    """Threads the checkers started (they all carry this name prefix) that are still alive."""
    return [t for t in threading.enumerate() if t.name.startswith("loadbalancer-health")]
