"""Real HTTP backends for the integration tests: uvicorn servers on 127.0.0.1.

Each ``Backend`` is one uvicorn server (pure-Python h11 protocol, a raw ASGI app, no
framework) on its own thread and event loop, bound to a free port the kernel picks. Tests
drive it from their own thread: switch its behaviour (``mode``), kill it mid-run, restart it
on the same port, and read what it received (``requests()``, ``count()``) or wait for it
(``wait_until()`` and friends: events, never sleeps).

Endpoints (every response carries ``X-Backend: <name>``):

``/items/{id}`` (any method)
    200 with a small JSON body: ``backend``, ``address``, ``method``, ``path``, ``id``,
    ``query``, ``host`` (the request's Host header), ``headers`` (all request headers,
    lower-case names), ``body_length`` and ``request`` (the request's ``index``).
``/status/{code}``
    Answers ``code`` (200-599), with ``Retry-After: <value>`` when the query has
    ``retry_after=<value>``.
``/sse?events=N&interval=S``
    A ``text/event-stream`` of N events (``data: 0\\n\\n`` ...), each flushed as it is sent,
    S seconds apart (defaults: 1 event, no pause). The request's ``responded`` is when the
    stream started, ``events_sent`` how far it got, ``disconnected`` whether the client went
    away before the end.
``/slow?seconds=S``
    Answers like ``/items`` after S seconds (sooner never; a client that leaves ends it).

Anything else is 404; a bad query value or status code is 400.

``mode`` applies to every path: ``"ok"`` serves as above, ``"fail503"`` answers 503 (with
``Retry-After: <retry_after>`` if that attribute is set), ``"hang"`` reads the request and
never answers: the request stays open until the client leaves or the backend stops.

Every request is recorded on arrival, before its body is read, so ``count("POST")`` is the
number of POSTs that reached the server, answered or not. A stop is abrupt, like a crash:
the listening socket closes and every connection (idle keep-alive, hung, streaming) is
aborted, so it is prompt whatever is in flight; a client mid-request sees the connection
drop. ``kill()`` stops and keeps the port reserved (connections are refused at once);
``restart()`` serves again on the same port, with the records kept.

Usage::

    with backends(3) as (a, b, c), httpx.Client() as client:
        client.get(f"{a.url}/items/1").json()["backend"]  # "b0"
        b.mode = "fail503"
        c.kill()  # now refuses connections
        assert a.count("POST") == 0

or, as a fixture::

    @pytest.fixture
    def pool() -> Iterator[list[Backend]]:
        with backends(3) as started:
            yield started
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Literal, get_args

import uvicorn

from .health_servers import CERT, CERTS, client_tls

__all__ = [
    "CERT",
    "MAX_BACKENDS",
    "THREAD_PREFIX",
    "Backend",
    "Mode",
    "Request",
    "backend_threads",
    "backends",
    "client_tls",
    "close_all",
    "open_fds",
]

Mode = Literal["ok", "fail503", "hang"]
MODES: tuple[Mode, ...] = get_args(Mode)

THREAD_PREFIX = "http-backend"  # every backend thread's name starts with this
MAX_BACKENDS = 16  # backends() refuses more: each is a thread, a loop and a few sockets
START_TIMEOUT = 5.0  # seconds for a server to bind and start listening
STOP_TIMEOUT = 5.0  # seconds for a server's thread to end once told to stop
KEY = CERTS / "localhost-key.pem"

_Scope = dict[str, Any]
_Message = dict[str, Any]
_Receive = Callable[[], Awaitable[_Message]]
_Send = Callable[[_Message], Awaitable[None]]


@dataclasses.dataclass(frozen=True)
class Request:
    """One request as a backend saw it (a snapshot: later changes make new snapshots).

    Times are ``time.monotonic()`` values.
    """

    index: int  # arrival order on this backend, from 0; never reused, even after reset()
    method: str
    path: str
    query: str  # the raw query string, without "?"
    headers: dict[str, str]  # lower-case names; a repeated header's values joined by ", "
    client: str  # "127.0.0.1:PORT" of the client's end: one per connection
    arrived: float
    body_length: int | None = None  # None until the whole body has been read
    status: int | None = None  # the status answered; None if in flight or never answered
    responded: float | None = None  # when the status line went out (an SSE stream's start)
    events_sent: int = 0  # SSE events handed to the connection
    ended: float | None = None  # when the server was done with it; None while in flight
    disconnected: bool = False  # the client (or a stop) cut it before the answer was complete

    @property
    def in_flight(self) -> bool:
        """Whether the server is still handling it."""
        return self.ended is None


def _query(query: str) -> dict[str, str]:
    pairs = (part.partition("=") for part in query.split("&") if part)
    return {name: value for name, _, value in pairs}


def _number(
    query: dict[str, str], name: str, default: float, kind: type[float] | type[int]
) -> float:
    raw = query.get(name)
    if raw is None:
        return default
    value = kind(raw)  # ValueError for junk: the caller answers 400
    if value < 0:
        raise ValueError(name)
    return value


class _Exchange:
    """One request/response on the server side, with the client's departure watched."""

    def __init__(self, backend: Backend, index: int, receive: _Receive, send: _Send) -> None:
        self.backend = backend
        self.index = index
        self._receive = receive
        self._send = send
        self.gone = asyncio.Event()  # the client left, or the backend is stopping
        self.complete = False
        self._watcher: asyncio.Task[None] | None = None

    async def read_body(self) -> int | None:
        """Read the whole body, then start watching for the client's departure."""
        length = 0
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self._left()
                return None
            length += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        self.backend._update(self.index, body_length=length)
        self._watcher = asyncio.create_task(self._watch())
        return length

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass  # no more body is coming: only the disconnect is left to receive
        self._left()

    def _left(self) -> None:
        if not self.complete:
            self.backend._update(self.index, disconnected=True)
        self.gone.set()

    async def pause(self, seconds: float) -> None:
        """Wait ``seconds``, or less if the client leaves."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.gone.wait(), seconds)

    async def start(self, status: int, headers: Iterable[tuple[str, str]] = ()) -> None:
        if self.gone.is_set():
            return  # no one to answer
        raw = [(b"x-backend", self.backend.name.encode())]
        raw += [
            (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers
        ]
        # Recorded first, so a client that sees the answer finds it recorded.
        self.backend._update(self.index, status=status, responded=time.monotonic())
        await self._send({"type": "http.response.start", "status": status, "headers": raw})

    async def body(self, data: bytes, more: bool = False) -> None:
        if self.gone.is_set():
            return
        if not more:
            self.complete = True
        await self._send({"type": "http.response.body", "body": data, "more_body": more})

    async def answer(
        self, status: int, document: dict[str, Any], headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        """Answer ``status`` with ``document`` as JSON (no body for 204 and 304)."""
        data = b"" if status in (204, 304) else json.dumps(document).encode()
        framing = [] if status in (204, 304) else [("content-length", str(len(data)))]
        await self.start(status, [("content-type", "application/json"), *framing, *headers])
        await self.body(data)

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher


class _Server(uvicorn.Server):
    """A uvicorn server that waits on an event instead of polling, and stops abruptly."""

    def __init__(
        self, config: uvicorn.Config, stop: asyncio.Event, on_started: Callable[[_Server], None]
    ) -> None:
        super().__init__(config)
        self._stop = stop
        self._on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self._on_started(self)

    async def main_loop(self) -> None:
        await self.on_tick(0)  # sets the Date and Server headers once
        await self._stop.wait()

    def _abort_connections(self) -> None:
        for connection in list(self.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.abort()  # the app sees http.disconnect, so hung handlers end

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # No graceful drain (uvicorn's waits in 0.1 s steps): a stop is a crash.
        for server in self.servers:
            server.close()
            abort_clients = getattr(server, "abort_clients", None)  # Python 3.13+
            if abort_clients is not None:
                abort_clients()
        self._abort_connections()
        # A connection accepted just before the listening socket closed is registered on the
        # next turn of the loop (before 3.13, nothing aborts it for us): give it that turn,
        # and abort again, or it outlives the backend as an unclosed transport.
        await asyncio.sleep(0)
        self._abort_connections()
        tasks = list(self.server_state.tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=STOP_TIMEOUT / 2)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for server in self.servers:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), STOP_TIMEOUT / 2)


class Backend:
    """One real HTTP server on 127.0.0.1, on its own thread; see the module docstring.

    ``name`` appears in every answer (JSON ``backend`` and the ``X-Backend`` header);
    ``address`` ("127.0.0.1:PORT", what a balancer holds), ``port`` and ``url`` are known
    once started. With ``tls`` it serves HTTPS with the test certificate (for 127.0.0.1 and
    localhost; trust it with ``client_tls()`` or ``verify=str(CERT)``).

    Thread-safe: ``mode``, ``retry_after`` and the records may be used from any thread.
    """

    def __init__(
        self,
        name: str = "backend",
        *,
        tls: bool = False,
        changed: threading.Condition | None = None,
    ) -> None:
        self.name = name
        self.tls = tls
        # ``changed``, shared by a pool (``backends()``), lets ``wait_until`` on any one of
        # them wait for a predicate over all of them: every change notifies every waiter.
        self._changed = threading.Condition(threading.RLock()) if changed is None else changed
        self._lock = self._changed  # a Condition is also its own lock's context manager
        self._mode: Mode = "ok"
        self._retry_after: str | None = None
        self._records: dict[int, Request] = {}
        self._next_index = 0
        self._port = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._held: socket.socket | None = None  # keeps a killed backend's port

    # -- addresses -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port it listens on (kept by kill() and restart())."""
        if not self._port:
            raise RuntimeError(f"backend {self.name!r} was never started")
        return self._port

    @property
    def address(self) -> str:
        """``"127.0.0.1:PORT"``: the form a balancer holds."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (``https://`` with tls), without a trailing slash."""
        return f"{'https' if self.tls else 'http'}://{self.address}"

    # -- behaviour -------------------------------------------------------------------------

    @property
    def mode(self) -> Mode:
        """``"ok"``, ``"fail503"`` or ``"hang"``; takes effect for requests arriving next."""
        with self._lock:
            return self._mode

    @mode.setter
    def mode(self, mode: Mode) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        with self._lock:
            self._mode = mode

    @property
    def retry_after(self) -> str | None:
        """The ``Retry-After`` value that ``"fail503"`` answers carry (None: no header)."""
        with self._lock:
            return self._retry_after

    @retry_after.setter
    def retry_after(self, value: str | None) -> None:
        with self._lock:
            self._retry_after = value

    # -- records ---------------------------------------------------------------------------

    def requests(self) -> list[Request]:
        """Every request received since the start (or ``reset()``), in arrival order."""
        with self._lock:
            return list(self._records.values())

    def counts(self) -> Counter[tuple[str, str]]:
        """How many requests arrived, per (method, path)."""
        with self._lock:
            return Counter((r.method, r.path) for r in self._records.values())

    def count(self, method: str | None = None, path: str | None = None) -> int:
        """How many requests arrived with this method and/or path (None: any)."""
        with self._lock:
            return sum(
                1
                for r in self._records.values()
                if (method is None or r.method == method) and (path is None or r.path == path)
            )

    def in_flight(self) -> list[Request]:
        """The requests the server is handling now (hung, slow, streaming ...)."""
        with self._lock:
            return [r for r in self._records.values() if r.in_flight]

    def reset(self) -> None:
        """Forget every record (requests in flight are no longer updated either)."""
        with self._lock:
            self._records.clear()
            self._changed.notify_all()

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Block until ``predicate()`` holds, re-checking whenever a record changes.

        The predicate runs under the records' lock (it may call ``count()`` and the like).
        Raises TimeoutError after ``timeout`` seconds.
        """
        with self._changed:
            if not self._changed.wait_for(predicate, timeout):
                raise TimeoutError(f"backend {self.name!r}: condition not met in {timeout} s")

    def wait_requests(
        self, n: int, method: str | None = None, path: str | None = None, timeout: float = 5.0
    ) -> None:
        """Block until at least ``n`` matching requests have arrived."""
        self.wait_until(lambda: self.count(method, path) >= n, timeout)

    def wait_in_flight(self, n: int = 1, timeout: float = 5.0) -> None:
        """Block until at least ``n`` requests are in flight (e.g. hung) at once."""
        self.wait_until(lambda: len(self.in_flight()) >= n, timeout)

    def wait_ended(self, index: int, timeout: float = 5.0) -> Request:
        """Block until request ``index`` is no longer in flight; return its final record."""

        def ended() -> bool:
            record = self._records.get(index)
            return record is not None and not record.in_flight

        self.wait_until(ended, timeout)
        with self._lock:
            return self._records[index]

    def _arrive(
        self, method: str, path: str, query: str, headers: dict[str, str], client: str
    ) -> int:
        with self._lock:
            index = self._next_index
            self._next_index += 1
            self._records[index] = Request(
                index, method, path, query, headers, client, arrived=time.monotonic()
            )
            self._changed.notify_all()
            return index

    def _update(self, index: int, **changes: Any) -> None:
        with self._lock:
            record = self._records.get(index)
            if record is not None:  # else reset() dropped it
                self._records[index] = dataclasses.replace(record, **changes)
                self._changed.notify_all()

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the server is up (started and not killed or closed)."""
        return self._thread is not None

    def start(self) -> Backend:
        """Start serving, on a free port the first time, on the same port after kill()."""
        if self._thread is not None:
            raise RuntimeError(f"backend {self.name!r} is already running")
        self._release_port()
        started = threading.Event()
        outcome: list[BaseException | None] = []

        def on_started(
            server: _Server, loop: asyncio.AbstractEventLoop, stop: asyncio.Event
        ) -> None:
            sockets = server.servers[0].sockets
            self._port = sockets[0].getsockname()[1]
            self._loop, self._stop = loop, stop
            outcome.append(None)
            started.set()

        def run() -> None:
            try:
                asyncio.run(self._serve(on_started))
            except BaseException as exc:  # uvicorn exits (SystemExit) when it cannot bind
                outcome.append(exc)
            finally:
                started.set()

        thread = threading.Thread(target=run, name=f"{THREAD_PREFIX}-{self.name}", daemon=True)
        thread.start()
        if not started.wait(START_TIMEOUT):
            raise RuntimeError(f"backend {self.name!r} did not start in {START_TIMEOUT} s")
        if not outcome or outcome[0] is not None:
            thread.join(STOP_TIMEOUT)
            port = f" on port {self._port}" if self._port else ""
            error = outcome[0] if outcome else None
            raise RuntimeError(f"backend {self.name!r} could not start{port}") from error
        self._thread = thread
        return self

    async def _serve(
        self, on_started: Callable[[_Server, asyncio.AbstractEventLoop, asyncio.Event], None]
    ) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        config = uvicorn.Config(
            self._app,
            host="127.0.0.1",
            port=self._port,  # 0 the first time: the kernel picks a free one
            http="h11",
            ws="none",
            interface="asgi3",
            lifespan="off",
            log_config=None,  # leave the process's logging alone; warnings reach pytest
            log_level="warning",
            access_log=False,
            proxy_headers=False,  # keep the client's own address and headers
            ssl_certfile=CERT if self.tls else None,
            ssl_keyfile=KEY if self.tls else None,
        )
        server = _Server(config, stop, lambda s: on_started(s, loop, stop))
        await server.serve()

    def _signal_stop(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stop.set)

    def _join(self) -> None:
        thread = self._thread
        if thread is None:
            return
        thread.join(STOP_TIMEOUT)
        if thread.is_alive():
            raise RuntimeError(f"backend {self.name!r} did not stop in {STOP_TIMEOUT} s")
        self._thread = self._loop = self._stop = None

    def kill(self) -> None:
        """Stop now, like a crash: in-flight requests and keep-alive connections are cut,
        and new connections are refused (the port stays reserved for ``restart()``)."""
        self._signal_stop()
        self._join()
        self._hold_port()

    def restart(self) -> Backend:
        """Serve again on the same port (after ``kill()``); records, mode are kept."""
        if self._thread is not None:
            self.kill()
        return self.start()

    def close(self) -> None:
        """Stop (as ``kill()`` does) and free the port. Idempotent."""
        self._signal_stop()
        self._join()
        self._release_port()

    def _hold_port(self) -> None:
        if self._held is None and self._port:
            # Bound but not listening: connecting gets a refusal, and the kernel hands the
            # port to no one asking for a free one (an explicit SO_REUSEADDR bind still could).
            held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                held.bind(("127.0.0.1", self._port))
            except OSError:
                held.close()
                return
            self._held = held

    def _release_port(self) -> None:
        if self._held is not None:
            self._held.close()
            self._held = None

    def __enter__(self) -> Backend:
        if self._thread is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        where = f" {self.address}" if self._port else ""
        state = "running" if self.running else "stopped"
        return f"<Backend {self.name!r}{where} {state} mode={self.mode}>"

    # -- the ASGI app ----------------------------------------------------------------------

    async def _app(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] != "http":
            return
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope["headers"]:
            name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        client = scope.get("client")
        method, path = scope["method"], scope["path"]
        query = scope["query_string"].decode("latin-1")
        index = self._arrive(
            method, path, query, headers, f"{client[0]}:{client[1]}" if client else ""
        )
        exchange = _Exchange(self, index, receive, send)
        try:
            body_length = await exchange.read_body()
            if body_length is not None:
                await self._route(exchange, method, path, query, headers, body_length)
        finally:
            await exchange.close()
            self._update(index, ended=time.monotonic())

    async def _route(
        self,
        exchange: _Exchange,
        method: str,
        path: str,
        query: str,
        headers: dict[str, str],
        body_length: int,
    ) -> None:
        mode = self.mode
        if mode == "hang":
            await exchange.gone.wait()
            return
        if mode == "fail503":
            retry_after = self.retry_after
            extra = [] if retry_after is None else [("retry-after", retry_after)]
            await exchange.answer(503, {"backend": self.name, "error": "fail503"}, extra)
            return
        params = _query(query)
        try:
            if path.startswith("/items/") and path.count("/") == 2 and len(path) > len("/items/"):
                await exchange.answer(
                    200, self._item(exchange.index, method, path, query, headers, body_length)
                )
            elif path.startswith("/status/"):
                code = int(path[len("/status/") :])
                if not 200 <= code <= 599:
                    raise ValueError(code)
                retry_after = params.get("retry_after")
                extra = [] if retry_after is None else [("retry-after", retry_after)]
                await exchange.answer(code, {"backend": self.name, "status": code}, extra)
            elif path == "/sse":
                await self._sse(
                    exchange,
                    int(_number(params, "events", 1, int)),
                    _number(params, "interval", 0.0, float),
                )
            elif path == "/slow":
                seconds = _number(params, "seconds", 0.0, float)
                await exchange.pause(seconds)
                if not exchange.gone.is_set():
                    document = self._item(exchange.index, method, path, query, headers, body_length)
                    await exchange.answer(200, document)
            else:
                await exchange.answer(404, {"backend": self.name, "error": "not found"})
        except ValueError:
            await exchange.answer(400, {"backend": self.name, "error": "bad request"})

    def _item(
        self,
        index: int,
        method: str,
        path: str,
        query: str,
        headers: dict[str, str],
        body_length: int,
    ) -> dict[str, Any]:
        return {
            "backend": self.name,
            "address": self.address,
            "method": method,
            "path": path,
            "id": path.rsplit("/", 1)[1],
            "query": query,
            "host": headers.get("host"),
            "headers": headers,
            "body_length": body_length,
            "request": index,
        }

    async def _sse(self, exchange: _Exchange, events: int, interval: float) -> None:
        await exchange.start(
            200, [("content-type", "text/event-stream"), ("cache-control", "no-cache")]
        )
        for i in range(events):
            if exchange.gone.is_set():
                return
            self._update(exchange.index, events_sent=i + 1)  # first, as for the status
            await exchange.body(f"data: {i}\n\n".encode(), more=True)
            if i < events - 1:
                await exchange.pause(interval)
            await asyncio.sleep(0)  # let a disconnect be noticed even with no pause
        if not exchange.gone.is_set():
            await exchange.body(b"")


# -- pools and leak checks -----------------------------------------------------------------


def close_all(started: Iterable[Backend]) -> None:
    """Close backends, all at once (each stop takes a few milliseconds, not in series)."""
    started = list(started)
    for backend in started:
        backend._signal_stop()
    errors: list[Exception] = []
    for backend in started:
        try:
            backend.close()
        except RuntimeError as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


@contextlib.contextmanager
def backends(n: int, *, tls: bool = False, prefix: str = "b") -> Iterator[list[Backend]]:
    """Start ``n`` backends named ``b0``, ``b1`` ...; always close them all on exit.

    They share one condition, so ``pool[0].wait_until(predicate)`` may watch them all.
    """
    if not 1 <= n <= MAX_BACKENDS:
        raise ValueError(f"1 to {MAX_BACKENDS} backends, not {n}")
    started: list[Backend] = []
    changed = threading.Condition(threading.RLock())  # one for the pool: see Backend
    try:
        for i in range(n):
            started.append(Backend(f"{prefix}{i}", tls=tls, changed=changed).start())
        yield started
    finally:
        close_all(started)


def backend_threads() -> list[threading.Thread]:
    """Backend threads still alive (a test can assert there are none left)."""
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX)]


def open_fds() -> int | None:
    """How many file descriptors this process has open (None where /proc is missing)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None
