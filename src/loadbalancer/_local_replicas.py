"""Small HTTP replicas on 127.0.0.1, to try the HTTP integrations on and to test code with.

Loaded by ``loadbalancer.testing.local_replicas`` only: the stdlib's ``http.server``, one
thread per replica, nothing to install.
"""

from __future__ import annotations

import http.server
import json
import threading
from types import TracebackType
from urllib.parse import parse_qs, urlsplit

__all__ = ["LocalReplicas"]

_MAX_EVENTS = 10_000


class _Handler(http.server.BaseHTTPRequestHandler):
    """Every method and path: 200 with JSON naming the replica; ``/status/N`` answers N;
    ``/events?count=N`` streams N server-sent events."""

    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        server = self.server
        assert isinstance(server, _Replica)
        served_by = server.address
        url = urlsplit(self.path)
        if url.path == "/events":
            count = int(parse_qs(url.query).get("count", ["3"])[0])
            self._events(served_by, min(max(count, 0), _MAX_EVENTS))
            return
        status = 200
        if url.path.startswith("/status/") and url.path[8:].isdigit():
            status = int(url.path[8:])
        document = {
            "served_by": served_by,
            "method": self.command,
            "path": self.path,
            "host": self.headers.get("host"),
            "body_length": len(body),
        }
        payload = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.send_header("x-served-by", served_by)
        self.end_headers()
        self.wfile.write(payload)

    def _events(self, served_by: str, count: int) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("x-served-by", served_by)
        self.send_header("connection", "close")  # the end of the stream is the end of the body
        self.end_headers()
        self.close_connection = True
        for i in range(count):
            self.wfile.write(f"data: {i}\n\n".encode())
            self.wfile.flush()

    # http.server's own names for its per-method handlers.
    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _answer  # noqa: N815

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: examples and tests print what they mean to."""


class _Replica(http.server.ThreadingHTTPServer):
    """One replica: a threading server that knows its own address."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.address = f"127.0.0.1:{self.server_port}"


class LocalReplicas:
    """``n`` HTTP servers on free ports of ``127.0.0.1``; ``addresses`` lists them.

    Use it as a context manager (the servers stop on exit). ``stop(address)`` takes one down
    mid-run: its port then refuses connections, as a crashed replica's does.
    """

    def __init__(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 100:
            raise ValueError(f"n must be an int in 1..100, got {n!r}")
        self._servers: dict[str, _Replica] = {}
        self._threads: list[threading.Thread] = []
        try:
            for _ in range(n):
                server = _Replica()
                self._servers[server.address] = server
                thread = threading.Thread(target=server.serve_forever, daemon=True)
                thread.start()
                self._threads.append(thread)
        except BaseException:
            self.close()
            raise

    @property
    def addresses(self) -> list[str]:
        """The replicas still up, as ``"127.0.0.1:PORT"``: the form a balancer holds."""
        return list(self._servers)

    def stop(self, address: str) -> None:
        """Take the replica at ``address`` down: new connections to it are refused."""
        server = self._servers.pop(address)
        server.shutdown()
        server.server_close()

    def close(self) -> None:
        """Stop every replica still up."""
        for address in list(self._servers):
            self.stop(address)
        for thread in self._threads:
            thread.join(5)

    def __enter__(self) -> LocalReplicas:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
