"""The client side of the proxy: the listener, and one ``asyncio.Protocol`` per client
connection, parsing requests with llhttp (``httptools``).

Requests on a connection are answered in order: each complete head becomes an ``Exchange``
in the connection's queue, and only the oldest is being answered; the ones pipelined behind
it wait, their bodies buffered (reading stops once too much is waiting). Timeouts cost no
timer per request: one timer per connection wakes at the earliest deadline the current phase
could have and re-arms itself from the time of the last read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import deque
from typing import cast, final

import httptools

from ._headers import SPECIAL_FIELDS, BadRequestError, error_response, read_request, valid_host
from ._proxy import Exchange, route
from ._settings import Limits, Pool, ProxySettings
from ._upstream import UpstreamPool

__all__ = ["ProxyServer"]

_log = logging.getLogger("loadbalancer.serve")

_IDLE, _HEAD, _BODY, _BUSY = 0, 1, 2, 3  # what a client connection is waiting for
_MAX_QUEUE = 64  # pipelined requests waiting past which reading stops

DRAIN_IDLE_GRACE = 0.5
"""Seconds an idle connection stays open once a drain begins, for a request already sent."""


def _peer(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return "unix" if peer is not None else "-"


@final
class _ClientConnection(asyncio.Protocol):
    """One client connection: its parser, its queue of requests, its timeouts."""

    __slots__ = (
        "_current",
        "_ended_in_read",
        "_head_bytes",
        "_head_started",
        "_header_size",
        "_headers_done",
        "_held",
        "_kept",
        "_loop",
        "_parser",
        "_paused",
        "_queue",
        "_read_paused",
        "_server",
        "_since",
        "_special",
        "_state",
        "_stopped",
        "_target",
        "_timer",
        "_tunnel",
        "_tunnel_pending",
        "_write_paused_at",
        "closed",
        "draining",
        "peer",
        "transport",
        "write_paused",
    )

    def __init__(self, server: ProxyServer) -> None:
        self._server = server
        self._loop = server._loop
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._queue: deque[Exchange] = deque()
        self._current: Exchange | None = None  # the exchange being parsed
        self._ended_in_read = False  # a message ended in the read being parsed
        self._target = b""
        self._head_bytes = 0
        self._headers_done = False
        self._state = _IDLE
        self._since = 0.0  # the last read (the body and keep-alive clocks run from it)
        self._head_started = 0.0  # the current head's first byte (the header clock's start)
        self._timer: asyncio.TimerHandle | None = None
        self._tunnel: Exchange | None = None
        self._tunnel_pending = b""
        self._kept: list[bytes] = []  # the head's fields as forwarded: "Name: value\r\n"
        self._special: list[tuple[bytes, bytes]] = []  # (lower-case name, value): read_request's
        self._header_size = 0
        self._read_paused = False
        self.write_paused = False
        self._write_paused_at = 0.0
        self._paused = False
        self._stopped = False  # refused or closing: no byte more is read
        self._held: list[bytes] | None = None  # bytes of a connection past the limit
        self.closed = False
        self.draining = server._draining
        self.peer = "-"

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start the keep-alive clock: a connection that never speaks is closed."""
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        self.peer = _peer(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # not TCP
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        server = self._server
        server._connections.add(self)
        self._since = self._loop.time()
        self._arm()
        if (
            len(server._connections) - len(server._waiting)
            > server._settings.limits.max_connections
        ):
            # Over the limit: held unread (it costs a descriptor, no work) until one closes.
            server._waiting.append(self)
            self._state = _BUSY
            self._held = []
            self.read_paused(True)

    def admit(self) -> None:
        """A connection closed: this one, held back by the limit, is served now."""
        self._state = _IDLE
        self._since = self._loop.time()
        held, self._held = self._held, None
        self.read_paused(False)
        for data in held or ():
            self.data_received(data)

    def data_received(self, data: bytes) -> None:
        """Feed the parser (or the tunnel); refuse what llhttp or the limits refuse."""
        tunnel = self._tunnel
        if tunnel is not None:
            tunnel.tunnel_write(data)
            return
        if self._stopped:
            return
        held = self._held
        if held is not None:
            # Waiting for a slot (uvloop may deliver bytes read before the pause took).
            held.append(data)
            return
        now = self._since = self._loop.time()
        self._ended_in_read = False
        if self._state == _IDLE:
            self._state = _HEAD
            self._head_bytes = 0
            self._head_started = now
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._upgraded(data[upgrade.args[0] :])
        except httptools.HttpParserCallbackError as error:
            cause = error.__context__
            if isinstance(cause, BadRequestError):
                self._refuse(cause.status, cause.cause)
            elif isinstance(cause, _StopError):
                self._stopped = True  # the parser is spent: its refusal is queued
                self.read_paused(True)
            else:  # a bug of the proxy's: logged, and this connection (only) is dropped
                _log.error("a client connection failed", exc_info=cause)
                self.abort()
        except httptools.HttpParserError:
            self._refuse(400, "bad_request")
        else:
            if self._state == _HEAD and not self.closed:
                # A head still coming: its fields so far within the limits (checked per read,
                # not per field), and what llhttp buffers of an incomplete field bounded.
                if self._head_bytes < 0:
                    # It began after another message in this read (a body, perhaps large):
                    # counted from the next read. One read's slack, bounded by the read size.
                    self._head_bytes = 0
                else:
                    self._head_bytes += len(data)
                limits = self._server._settings.limits
                over = self._fields_over(limits)
                if over is not None:
                    self._refuse(431, over)
                elif self._head_bytes > limits.max_request_line + limits.max_header_bytes + 4096:
                    self._refuse(431 if self._target else 414, "head_too_large")

    def eof_received(self) -> bool | None:
        """The client closed its side: taken as the client leaving, as nginx does (a
        half-closed client that still waits for its answer is rare; a gone one is not)."""
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        """The client left: every request of its still in the proxy ends with no outcome."""
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._server._connection_closed(self)
        queue, self._queue = self._queue, deque()
        for exchange in queue:
            exchange.cancel()
        if self._tunnel is not None:
            self._tunnel.cancel()
        current = self._current
        if current is not None and current not in queue:
            current.cancel()
        self._tunnel = self._current = None
        # The parser holds this connection's callbacks: without it, the connection goes with
        # its reference count, not with the cyclic collector (per request, for a client that
        # does not keep alive). No byte is parsed after connection_lost.
        del self._parser

    def pause_writing(self) -> None:
        """The client reads slower than the upstream answers: stop reading the upstream."""
        self.write_paused = True
        self._write_paused_at = self._loop.time()
        if self._queue:
            self._queue[0].client_paused(True)

    def resume_writing(self) -> None:
        """The client caught up."""
        self.write_paused = False
        if self._queue:
            self._queue[0].client_paused(False)

    # -- llhttp callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        """A new request starts."""
        self._target = b""
        self._headers_done = False
        self._kept = []
        self._special = []
        if self._state != _HEAD:  # pipelined: its read began while another one was answered
            self._state = _HEAD
            # After another message in this same read, what of the read is this head's is not
            # known: it is counted from the next read (see ``data_received``).
            self._head_bytes = -1 if self._ended_in_read else 0
            self._head_started = self._since

    def on_url(self, url: bytes) -> None:
        """The request target (perhaps in pieces)."""
        self._target += url
        if len(self._target) > self._server._settings.limits.max_request_line:
            raise BadRequestError(414, "request_line_too_long")

    def on_header(self, name: bytes, value: bytes) -> None:
        """One field of the head (trailer fields after a chunked body are dropped): most go
        into the head forwarded as they came; the ones the proxy acts on are kept aside."""
        if self._headers_done:
            return
        lower = name.lower()
        if lower in SPECIAL_FIELDS:
            self._special.append((lower, value))
            self._header_size += len(name) + len(value) + 4
        else:
            self._kept.append(b"%s: %s\r\n" % (name, value))

    def on_headers_complete(self) -> None:
        """The head is in: check it, route it, queue it."""
        self._headers_done = True
        server = self._server
        settings = server._settings
        kept = self._kept
        special = self._special
        over = self._fields_over(settings.limits)
        if over is not None:
            raise BadRequestError(431, over)
        self._header_size = 0
        parser = self._parser
        method = parser.get_method()
        version = parser.get_http_version()
        http11 = version == "1.1"
        exchange = Exchange(
            self,
            self._loop,
            server._upstreams,
            settings,
            method,
            self._target,
            http11,
            self._head_started,
        )
        self._current = exchange
        self._state = _BODY  # its clock runs from this read, which ``data_received`` noted
        if version not in ("1.1", "1.0"):
            exchange.error_status, exchange.error = 505, "bad_version"
        elif method == b"CONNECT":
            exchange.error_status, exchange.error = 405, "connect_refused"
        else:
            try:
                head = exchange.head = read_request(kept, special, http11)
            except BadRequestError as error:
                exchange.error_status, exchange.error = error.status, error.cause
            else:
                self._route(exchange, head.host)
                limit = settings.limits.max_body
                if head.content_length is not None and head.content_length > limit:
                    exchange.error_status, exchange.error = 413, "body_too_large"
        if exchange.error_status and exchange.error_status != 404:
            exchange.close = True
        self._queue.append(exchange)
        if len(self._queue) == 1 and not (exchange.error_status and not exchange.close):
            exchange.start()  # a refusal that keeps the connection waits for the body's end
        elif len(self._queue) > _MAX_QUEUE:
            self.read_paused(True)
        if exchange.close and exchange.error_status:
            raise _StopError  # no byte more of this connection is read

    def _fields_over(self, limits: Limits) -> str | None:
        """Why the head's fields so far are over the limits, or None. Counted as nginx does:
        every field line, its name, ": ", its value and CRLF."""
        kept = self._kept
        if len(kept) + len(self._special) > limits.max_headers:
            return "too_many_headers"
        if self._header_size + sum(map(len, kept)) > limits.max_header_bytes:
            return "headers_too_large"
        return None

    def _route(self, exchange: Exchange, host: str) -> None:
        target = exchange.target
        if target[:1] != b"/":
            lowered = target[:8].lower()
            if lowered.startswith((b"http://", b"https://")):
                rest = target.split(b"://", 1)[1]
                end = len(rest)
                for mark in (b"/", b"?"):
                    at = rest.find(mark)
                    if at != -1 and at < end:
                        end = at
                authority, path = rest[:end], rest[end:]
                if not authority or not valid_host(authority):  # userinfo (@) included
                    exchange.error_status, exchange.error = 400, "absolute_form"
                    return
                # RFC 9112 3.2.2: the target's authority is the request's host; it is routed by
                # it and sent on as Host. One that names another host than the Host field is
                # refused: this is no forward proxy, and a request whose hosts disagree is
                # one that a cache or a backend behind it could read differently.
                head = exchange.head
                named_host = (
                    authority[: authority.find(b"]") + 1]
                    if authority.startswith(b"[")
                    else authority.partition(b":")[0]
                )
                named = named_host.decode("latin-1").lower()
                if host and host != named:
                    exchange.error_status, exchange.error = 400, "absolute_form"
                    return
                host = named
                if head is not None:
                    head.host = host
                    head.host_port = authority
                    head.has_host = True
                    head.fields = [f for f in head.fields if f[:5].lower() != b"host:"]
                    head.fields.append(b"Host: %s\r\n" % authority)
                target = exchange.target = path if path.startswith(b"/") else b"/" + path
            elif target == b"*" and exchange.method == b"OPTIONS":
                target = b"/"  # routed as the root; forwarded as asked, asterisk-form
            else:
                exchange.error_status, exchange.error = 400, "bad_target"
                return
        path = target.partition(b"?")[0]
        pool: Pool | None = route(self._server._routes, host, path)
        if pool is None:
            exchange.error_status, exchange.error = 404, "no_route"
        else:
            exchange.pool = pool

    def on_body(self, body: bytes) -> None:
        """A piece of the body: to the exchange, which sends or keeps it."""
        exchange = self._current
        if exchange is None:
            return
        exchange.request_body(body)
        if exchange.body_bytes > self._server._settings.limits.max_body:
            self._refuse(413, "body_too_large")
            raise _StopError

    def on_message_complete(self) -> None:
        """The request is whole; the connection waits for the next one (or the answer)."""
        exchange = self._current
        self._current = None
        self._ended_in_read = True
        self._state = _BUSY if self._queue else _IDLE
        if exchange is not None:
            exchange.request_end()
            queue = self._queue
            if exchange.error_status and queue and queue[0] is exchange and not exchange.done:
                exchange.start()

    # -- what the exchanges ask of the connection ---------------------------------------------

    def write(self, data: bytes) -> None:
        """Send bytes to the client."""
        transport = self.transport
        if transport is not None and not self.closed:
            transport.write(data)

    def last(self, exchange: Exchange) -> bool:
        """True if no request is queued or being read behind ``exchange``."""
        queue = self._queue
        return (not queue or queue[-1] is exchange) and self._current in (None, exchange)

    def exchange_done(self, exchange: Exchange, keep_alive: bool) -> None:
        """The oldest request is answered: the next one goes, or the connection closes."""
        queue = self._queue
        if queue and queue[0] is exchange:
            queue.popleft()
        if not keep_alive or exchange.close:
            self._close_after_write()  # the client was told (Connection: close), or must be
            return
        if self._read_paused and len(queue) <= _MAX_QUEUE:
            self.read_paused(False)
        if queue:
            queue[0].start(inline=False)
        elif self._current is None and self._state != _HEAD:  # not half-way through a head
            self._state = _IDLE
            self._since = self._loop.time()
            if self.draining:
                self.drain_idle()

    def drain_idle(self) -> None:
        """Draining, and idle: closed after ``DRAIN_IDLE_GRACE`` with no request. Not at
        once: a client told nothing (its last response went out before the drain began)
        may be sending its next request just now (RFC 9112 9.3.1's close race); that one is
        answered, with Connection: close."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(self._since + DRAIN_IDLE_GRACE, self._check_timeout)

    def read_paused(self, paused: bool) -> None:
        """Stop (or restart) reading the client."""
        transport = self.transport
        if transport is None or self.closed or paused == self._read_paused:
            return
        self._read_paused = paused
        if paused:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def start_tunnel(self, exchange: Exchange) -> None:
        """An upgrade was accepted: the client's bytes go raw to the upstream from now on."""
        self._tunnel = exchange
        self._state = _BUSY
        pending = self._tunnel_pending
        if pending:
            self._tunnel_pending = b""
            exchange.tunnel_write(pending)
        self.read_paused(False)

    def _upgraded(self, rest: bytes) -> None:
        """llhttp stopped at an upgrade (or CONNECT): what follows is not HTTP."""
        exchange = self._queue[-1] if self._queue else None
        if exchange is None or exchange.error_status:
            self._close_after_write()
            return
        self._tunnel_pending = rest
        self._current = None
        if exchange.head is None or exchange.head.upgrade is None:
            exchange.close = True  # Upgrade without Connection: upgrade: nothing more to read
        self.read_paused(True)  # until the upstream says yes (101) or no

    def abort(self) -> None:
        """Close the client connection at once."""
        if self.transport is not None and not self.closed:
            self.transport.abort()
        self.closed = True

    def finish(self) -> None:
        """Close once what is written has gone out."""
        self._close_after_write()

    def _close_after_write(self) -> None:
        self._stopped = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()  # flushes what is written first

    def _refuse(self, status: int, cause: str) -> None:
        """A request that cannot be read: answered (when nothing else is), and closed."""
        current = self._current
        queue = self._queue
        if current is not None and current in queue:
            if current is queue[0] and not current.done and current.answer is None:
                current.refuse(status, cause)
                return
            if current is not queue[0] and not current.done:
                # Queued behind requests still being answered: they are answered first, in
                # order; then this one is refused, and the connection closes.
                current.error_status, current.error = status, cause
                current.close = True
                self._stopped = True
                self.read_paused(True)
                return
            self.abort()
            return
        if not queue:
            self.write(error_response(status, cause, close=True))
            self._record_refused(status, cause)
            self._close_after_write()
            return
        # Earlier requests are still being answered: they finish, then the connection
        # closes (a pipelined request that cannot be read is never answered out of order).
        for exchange in queue:
            exchange.close = True
        self._stopped = True
        self.read_paused(True)

    def _record_refused(self, status: int, cause: str) -> None:
        on_access = self._server._settings.on_access
        if on_access is None:
            return
        from ._settings import AccessRecord

        record = AccessRecord(
            client=self.peer,
            method="",
            target=self._target.decode("latin-1"),
            host="",
            status=status,
            pool=None,
            upstream=None,
            attempts=0,
            upstream_time=None,
            total_time=self._loop.time() - self._head_started,
            bytes_sent=0,
            outcome="none",
            error=cause,
        )
        try:
            on_access(record)
        except Exception:  # the access log's failure must not break the proxying
            _log.exception("on_access failed")

    # -- timeouts ---------------------------------------------------------------------------

    def _arm(self) -> None:
        timeouts = self._server._settings.timeouts
        step = min(timeouts.client_header, timeouts.client_body, timeouts.keepalive)
        self._timer = self._loop.call_at(self._since + step, self._check_timeout)

    def _check_timeout(self) -> None:
        """Wake at a deadline the current phase may have: act if it has passed."""
        self._timer = None
        if self.closed:
            return
        timeouts = self._server._settings.timeouts
        state = self._state
        now = self._loop.time()
        step = min(timeouts.client_header, timeouts.client_body, timeouts.keepalive)
        if self._tunnel is not None or state == _BUSY:
            if self.write_paused:
                # A client that stops reading its answer (nginx's send_timeout): the body
                # timeout bounds how long it may hold the upstream back.
                stalled = self._write_paused_at + timeouts.client_body
                if now >= stalled:
                    self.abort()
                    return
                self._timer = self._loop.call_at(min(stalled, now + step), self._check_timeout)
                return
            self._timer = self._loop.call_at(now + step, self._check_timeout)
            return
        limit = (
            (min(timeouts.keepalive, DRAIN_IDLE_GRACE) if self.draining else timeouts.keepalive)
            if state == _IDLE
            else timeouts.client_header
            if state == _HEAD
            else timeouts.client_body
        )
        # The whole head must come within its timeout, however it trickles in (slowloris);
        # the body and an idle connection, within theirs of the last read.
        deadline = (self._head_started if state == _HEAD else self._since) + limit
        if now < deadline:
            self._timer = self._loop.call_at(min(deadline, now + step), self._check_timeout)
            return
        if state == _IDLE:
            self._close_after_write()
        elif state == _HEAD:
            self._refuse(408, "client_header_timeout")
        else:
            self._refuse(408, "client_body_timeout")


class _StopError(Exception):
    """Raised from a parser callback: stop parsing this connection's bytes."""


@final
class ProxyServer:
    """An HTTP/1.1 reverse proxy running on ``settings``: ``start``, ``reload``, ``drain``,
    ``close``."""

    def __init__(self, settings: ProxySettings) -> None:
        self._settings = settings
        self._routes: list[tuple[str | None, bytes, Pool]] = []
        self._compile(settings)
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[_ClientConnection] = set()
        self._waiting: deque[_ClientConnection] = deque()  # past max_connections
        self._draining = False
        self._all_closed: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set in start
        self._upstreams: UpstreamPool = None  # type: ignore[assignment]

    def _compile(self, settings: ProxySettings) -> None:
        routes = []
        for r in settings.routes:
            if r.pool not in settings.pools:
                raise ValueError(f"route to {r.pool!r}: no such pool")
            host = None if r.host is None else r.host.lower()
            routes.append((host, r.path_prefix.encode(), settings.pools[r.pool]))
        self._routes = routes

    @property
    def settings(self) -> ProxySettings:
        """The settings new requests run on."""
        return self._settings

    @property
    def port(self) -> int:
        """The port the listener is bound to (0 before ``start``)."""
        if self._server is None or not self._server.sockets:
            return 0
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def upstream_connections(self) -> int:
        """How many upstream connections were ever opened (reuse keeps this low)."""
        return 0 if self._upstreams is None else self._upstreams.connections

    @property
    def connections(self) -> int:
        """Client connections open now."""
        return len(self._connections)

    async def start(self, host: str, port: int, *, sock: socket.socket | None = None) -> None:
        """Listen on ``host``:``port`` (port 0: a free one), or on ``sock``, already bound."""
        loop = self._loop = asyncio.get_running_loop()
        self._upstreams = UpstreamPool(loop)
        backlog = min(self._settings.limits.max_connections, 65535)
        if sock is not None:
            self._server = await loop.create_server(
                lambda: _ClientConnection(self), sock=sock, backlog=backlog
            )
        else:
            self._server = await loop.create_server(
                lambda: _ClientConnection(self), host, port, backlog=backlog, reuse_address=True
            )

    def reload(self, settings: ProxySettings) -> None:
        """New requests run on ``settings`` at once; open connections and requests in flight
        are untouched (each keeps the pool it was routed to)."""
        self._compile(settings)
        self._settings = settings

    async def drain(self, deadline: float) -> None:
        """Stop accepting; let requests in flight finish for up to ``deadline`` seconds
        (idle connections close at once, busy ones after their response); then close."""
        self._draining = True
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.draining = True
            # Never read (past the limit): closed now. Idle: closed after a short grace
            # with no request. A head half read is a request begun: it is answered first.
            idle = conn._state == _IDLE and not conn._queue and conn._current is None
            if conn in self._waiting:
                conn._close_after_write()
            elif idle and conn._tunnel is None:
                conn._since = self._loop.time()  # the grace runs from the drain's start
                conn.drain_idle()
        if self._connections:
            self._all_closed = asyncio.Event()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._all_closed.wait(), deadline)
        await self.close()

    def _connection_closed(self, conn: _ClientConnection) -> None:
        self._connections.discard(conn)
        waiting = self._waiting
        if conn in waiting:
            waiting.remove(conn)
        else:
            while waiting:
                admitted = waiting.popleft()
                if not admitted.closed:
                    admitted.admit()
                    break
        if self._all_closed is not None and not self._connections:
            self._all_closed.set()

    async def close(self) -> None:
        """Close the listener, every client connection and every upstream connection."""
        self._draining = True
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.abort()
        if self._upstreams is not None:
            self._upstreams.close()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        await asyncio.sleep(0)  # let the aborted transports call connection_lost
