"""Connections to the upstream servers: one ``asyncio.Protocol`` per connection, parsing
responses with llhttp, kept alive and pooled per server.

A connection carries one request at a time (no upstream pipelining: a response that goes
wrong would take the others with it). Its answer is an ``Answer``: the response head, and
the body as it arrives, handed to whoever ``attach``es to it (the client's exchange), or
buffered until then. A connection goes back to its server's idle list only when its last
response ended cleanly, on a keep-alive connection, with the whole request sent: any doubt
about its framing closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import ssl
from collections.abc import Callable
from typing import Protocol, cast, final

import httptools

from ._headers import HOP_BY_HOP, tokens

__all__ = [
    "Answer",
    "AnswerCallback",
    "ConnectFailedError",
    "Consumer",
    "UpstreamBrokenError",
    "UpstreamError",
    "UpstreamInvalidError",
    "UpstreamPool",
    "UpstreamTimeoutError",
    "address_of",
    "tls_context",
]

MAX_IDLE_PER_SERVER = 64
"""Idle keep-alive connections kept per upstream server; more are closed when they finish."""

MAX_RESPONSE_HEAD = 1024 * 1024
"""Bytes an upstream may send before its response head is complete."""

MAX_RESPONSE_FIELDS = 256
"""Fields an upstream's response head may have: a server is trusted, not without bound."""

_FRAMING = HOP_BY_HOP | {b"content-length"}
# A response's fields never forwarded as they came: the hop-by-hop ones, and Content-Length,
# which the proxy sets itself.
_CONNECTION_OPTIONS = frozenset({b"close", b"keep-alive", b"upgrade"})
# Connection tokens that are options, not the names of fields to drop.

IDLE_SECONDS = 30.0
"""An idle upstream connection older than this is closed (below most servers' own limits,
uvicorn's 5 s aside, whose closing is seen at once)."""


class UpstreamError(Exception):
    """An attempt on an upstream failed; ``cause`` is the name the proxy gives it."""

    cause = "upstream_error"


@final
class ConnectFailedError(UpstreamError):
    """No connection could be made: nothing of the request was sent."""

    def __init__(self, message: str, cause: str) -> None:
        super().__init__(message)
        self.cause = cause


@final
class UpstreamBrokenError(UpstreamError):
    """The connection closed or reset before the response head was complete."""

    cause = "upstream_reset"


@final
class UpstreamInvalidError(UpstreamError):
    """The upstream's response could not be parsed."""

    cause = "upstream_invalid"


@final
class UpstreamTimeoutError(UpstreamError):
    """No byte came from the upstream within the read timeout."""

    cause = "upstream_timeout"


AnswerCallback = Callable[["Answer | None", "Exception | None"], None]
"""Told an answer's head (``(answer, None)``) or why there is none (``(None, error)``)."""


class Consumer(Protocol):
    """Who receives an answer's body: the client's exchange."""

    def response_body(self, data: bytes) -> None:
        """A piece of the decoded body."""

    def response_end(self) -> None:
        """The body's last byte has arrived."""

    def response_lost(self, error: Exception) -> None:
        """The body broke off: the connection closed, stalled or sent garbage."""

    def tunnel_data(self, data: bytes) -> None:
        """Raw bytes from the upstream of an upgraded (101) connection."""

    def upstream_paused(self, paused: bool) -> None:
        """The upstream's send buffer filled (True) or drained (False)."""


@functools.lru_cache(maxsize=1024)
def address_of(server: str) -> tuple[str, int, bool]:
    """The host, port and TLS of a server name: ``host:port``, ``[v6]:port``,
    ``http://host:port``, ``https://host:port`` (TLS; port 443 by default)."""
    tls = server[:8].lower() == "https://"
    rest = server.split("://", 1)[1] if "://" in server else server
    rest = rest.rstrip("/")
    default = 443 if tls else 80
    if rest.startswith("["):
        host, _, port = rest[1:].partition("]")
        return host, int(port[1:]) if port.startswith(":") else default, tls
    host, colon, port = rest.rpartition(":")
    if not colon:
        return rest, default, tls
    return host, int(port), tls


_tls_context: ssl.SSLContext | None = None


def tls_context() -> ssl.SSLContext:
    """The TLS context of ``https://`` upstreams: the system's trusted CAs, hostnames
    verified (made once; ``TLS_CONTEXT`` replaces it when set)."""
    global _tls_context
    if TLS_CONTEXT is not None:
        return TLS_CONTEXT
    if _tls_context is None:
        _tls_context = ssl.create_default_context()
    return _tls_context


TLS_CONTEXT: ssl.SSLContext | None = None
"""Set to use another TLS context for ``https://`` upstreams (a private CA)."""


@final
class Answer:
    """An upstream's response: its head at once, its body as it arrives.

    ``conn`` is the connection it arrives on (None once the body is buffered whole and the
    connection given back). ``length`` the Content-Length, ``chunked`` whether the upstream
    chunked it, ``until_close`` whether it ends only when the connection does.
    """

    __slots__ = (
        "aside_limit",
        "body",
        "buffered",
        "chunked",
        "complete",
        "conn",
        "consumer",
        "ended",
        "length",
        "lines",
        "lost",
        "no_body",
        "reason",
        "status",
        "tunnel",
        "until_close",
        "upgrade",
    )

    def __init__(
        self,
        conn: Connection,
        status: int,
        reason: bytes,
        lines: list[bytes],
        length: int | None = None,
        chunked: bool = False,
        upgrade: bytes | None = None,
    ) -> None:
        self.conn: Connection | None = conn
        self.status = status
        self.reason = reason
        # The end-to-end fields, as "Name: value\r\n" lines ready to forward: every field
        # but the hop-by-hop ones, those the upstream's Connection names, and the framing.
        self.lines = lines
        self.upgrade = upgrade  # the Upgrade field of a 101
        # The connection broke before the body's end, before anyone was attached (the exchange
        # answers a 502 instead, unless ``buffer`` made it whole, empty).
        self.lost: UpstreamError | None = None
        self.length = length
        self.chunked = chunked
        self.until_close = False
        self.no_body = False
        self.tunnel = False
        self.body: list[bytes] = []  # arrived before a consumer attached
        self.buffered = 0  # bytes in ``body``
        self.aside_limit: int | None = None  # set aside: bytes past this close the connection
        self.complete = False
        self.consumer: Consumer | None = None
        self.ended: asyncio.Future[None] | None = None  # set_aside waits on it

    def attach(self, consumer: Consumer) -> None:
        """Hand the body to ``consumer``: what has arrived at once, the rest as it comes."""
        self.consumer = consumer
        body, self.body = self.body, []
        for piece in body:
            consumer.response_body(piece)
        self.buffered = 0
        if self.complete:
            consumer.response_end()

    def abort(self) -> None:
        """Drop this answer: its connection (if still in use) is closed, never reused, and
        nothing more is handed to its consumer (which no longer holds it in a cycle)."""
        self.consumer = None
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.abort()

    async def buffer(self, limit: int, timeout: float, request_complete: bool = True) -> Answer:
        """Read the whole body (a retried answer's), so its connection can go back; past
        ``limit`` bytes or ``timeout`` seconds the connection is closed and the body dropped
        (should this answer still be sent, it goes with an empty body)."""
        self.aside_limit = limit
        if self.buffered > limit:
            self.abort()  # already past it: dropped below, the connection closed at once
        if not self.complete and self.conn is not None:
            self.ended = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self.ended), timeout)
            except (asyncio.TimeoutError, UpstreamError):
                pass
            except BaseException:
                self.abort()
                raise
        if not self.complete or self.buffered > limit:
            self.abort()
            self.body = []
            self.complete = True
            self.length = 0  # framed as what is kept: nothing
            self.chunked = self.until_close = False
        conn = self.conn
        if conn is not None:
            conn.finished(self, request_complete)
        return self


@final
class Connection(asyncio.Protocol):
    """One keep-alive connection to an upstream server."""

    __slots__ = (
        "_answer",
        "_framing",
        "_head_bytes",
        "_head_ended",
        "_head_request",
        "_held_back",
        "_keep_alive",
        "_last_read",
        "_lines",
        "_loop",
        "_name",
        "_notify",
        "_parser",
        "_pool",
        "_ready",
        "_sending",
        "_timer",
        "_trailer_bytes",
        "_upgrade",
        "_waiter",
        "closed",
        "idle_since",
        "paused",
        "read_timeout",
        "reused",
        "sent_at",
        "server",
        "transport",
    )

    def __init__(self, pool: UpstreamPool, server: str) -> None:
        self._pool = pool
        self.server = server
        self._loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self._answer: Answer | None = None
        # Who waits for the answer's head: a future (the engine's attempts), or a callback
        # (a first attempt, made without a task), called once the bytes at hand are parsed.
        self._waiter: asyncio.Future[Answer] | None = None
        self._notify: AnswerCallback | None = None
        self._ready: Answer | None = None  # a head in, for ``_notify`` once the read is parsed
        self._lines: list[bytes] = []  # the response's end-to-end fields, as forwarded
        self._framing: list[tuple[bytes, bytes]] = []  # its hop-by-hop fields, lower-cased
        self._head_request = False
        self._head_ended = False  # a HEAD's answer is in: any byte more is a forgery
        self._upgrade = False  # the request asked for an upgrade: a 101 may answer it
        self._sending = False  # the request body is still being written: no read timeout
        self._head_bytes = 0
        self._trailer_bytes = 0  # bytes since the body's last piece (a trailer's, bounded)
        self._held_back = False  # reading paused for a slow client: no read timeout then
        self._keep_alive = True
        self._last_read = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self.read_timeout = 60.0
        self.closed = False
        self.reused = False
        self.paused = False
        self.idle_since = 0.0
        self.sent_at = 0.0
        self._name = b""

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport and make the parser; Nagle off, so a small response head is not
        held back."""
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        # Made here, not in __init__: the parser holds this connection's callbacks, and a
        # connection that never connects has no connection_lost to let go of it.
        self._parser = httptools.HttpResponseParser(self)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # not TCP
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        """Feed the parser; bytes on an idle connection make it unusable."""
        self._last_read = self._loop.time()
        answer = self._answer
        if answer is not None and answer.tunnel:
            consumer = answer.consumer
            if consumer is not None:
                consumer.tunnel_data(data)
            else:
                answer.body.append(data)
            return
        if self._waiter is None and self._notify is None:
            if answer is None or answer.complete:
                self.abort()  # unasked-for bytes: the framing is in doubt
                return
        else:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_RESPONSE_HEAD:  # llhttp would buffer a field whole
                self._fail(UpstreamInvalidError(f"{self.server} sent an endless head"))
                return
        try:
            self._parser.feed_data(data)
            if answer is not None and answer.chunked and not answer.complete:
                # After the last chunk, llhttp buffers a trailer field whole: bounded as
                # the head is (on_body restarts the count).
                self._trailer_bytes += len(data)
                if self._trailer_bytes > MAX_RESPONSE_HEAD:
                    self._fail(UpstreamInvalidError(f"{self.server} sent an endless trailer"))
        except httptools.HttpParserUpgrade as upgrade:
            rest = data[upgrade.args[0] :]
            answer = self._answer
            if answer is not None and answer.status == 101 and rest:
                if answer.consumer is not None:
                    answer.consumer.tunnel_data(rest)
                else:
                    answer.body.append(rest)
        except httptools.HttpParserError as error:
            cause = error.__context__
            if isinstance(cause, UpstreamError):
                self._fail(cause)
            else:
                self._fail(UpstreamInvalidError(f"invalid response from {self.server}: {error}"))
            return
        ready = self._ready
        if ready is not None:
            # The head is in, with whatever of the body came with it: one write to the client.
            self._ready = None
            notify, self._notify = self._notify, None
            if notify is not None:
                notify(ready, None)

    def eof_received(self) -> bool | None:
        """The upstream closed its side: a close-delimited body ends here."""
        answer = self._answer
        if answer is not None and answer.until_close and not answer.complete:
            self._keep_alive = False
            self.on_message_complete()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        """Whatever is waiting on this connection learns that it broke."""
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pool.forget(self)
        answer = self._answer
        if answer is not None and answer.until_close and not answer.complete:
            self._keep_alive = False
            self.on_message_complete()
        else:
            self._fail(UpstreamBrokenError(f"connection to {self.server} lost: {exc or 'closed'}"))
        # As the client connection's: the parser holds this connection's callbacks.
        del self._parser

    def pause_writing(self) -> None:
        """The upstream reads the request body slower than the client sends it."""
        self.paused = True
        consumer = self._pool.senders.get(self)
        if consumer is not None:
            consumer.upstream_paused(True)

    def resume_writing(self) -> None:
        """The upstream caught up."""
        self.paused = False
        consumer = self._pool.senders.get(self)
        if consumer is not None:
            consumer.upstream_paused(False)

    # -- llhttp callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        """A response starts: the fields gathered so far (a trailer's) are not its own."""
        if self._head_ended:  # bytes after a HEAD's answer, on the parser it left behind
            raise UpstreamInvalidError(f"{self.server} sent more after a HEAD's answer")
        if self._waiter is None and self._notify is None:
            # A response nobody asked for: after a whole one (perhaps in the read that ended
            # it, the connection already given back), or on an idle connection.
            raise UpstreamInvalidError(f"{self.server} sent a response nobody asked for")
        answer = self._answer
        if answer is not None and answer.complete:
            # The same, while the answer before it waits to be handed over (in this read):
            # that answer stands, and the connection is not reused.
            self._keep_alive = False
        if self._lines or self._framing or self._name:  # a trailer's, or a head cut short
            self._lines = []
            self._framing = []
            self._name = b""

    def on_status(self, status: bytes) -> None:
        """The reason phrase (llhttp may deliver it in pieces)."""
        self._name += status

    def on_header(self, name: bytes, value: bytes) -> None:
        """One response field: an end-to-end one goes into the head forwarded as it came;
        a hop-by-hop one is kept aside for the framing (the count is checked with the head:
        its bytes are bounded as they arrive)."""
        lower = name.lower()
        if lower in _FRAMING:
            self._framing.append((lower, value))
        else:
            self._lines.append(b"%s: %s\r\n" % (name, value))

    def on_headers_complete(self) -> None:
        """The head is in: make the answer, framed as the fields say."""
        status = self._parser.get_status_code()
        lines, self._lines = self._lines, []
        framing, self._framing = self._framing, []
        reason, self._name = self._name, b""
        if len(lines) + len(framing) > MAX_RESPONSE_FIELDS:
            raise UpstreamInvalidError(f"{self.server} sent over {MAX_RESPONSE_FIELDS} fields")
        if status < 200 or status > 599:
            if status < 100 or status > 599:
                raise UpstreamInvalidError(f"{self.server} answered status {status}")
            if status != 101:
                return  # interim (100 Continue): the final response follows
            if not self._upgrade:
                raise UpstreamInvalidError(f"{self.server} switched protocols unasked")
        length: int | None = None
        chunked = False
        upgrade: bytes | None = None
        for lower, value in framing:
            if lower == b"content-length":
                length = int(value)
            elif lower == b"transfer-encoding":
                # Another coding (gzip, or gzip then chunked) cannot be re-framed faithfully:
                # refused, as nginx does.
                if chunked or value.strip().lower() != b"chunked":
                    raise UpstreamInvalidError(f"{self.server} sent Transfer-Encoding {value!r}")
                chunked = True
            elif lower == b"connection":
                if value == b"keep-alive":
                    continue  # what nearly every kept-alive upstream says
                options = tokens(value)
                if b"close" in options:
                    self._keep_alive = False
                named = [t + b":" for t in options if t not in _CONNECTION_OPTIONS]
                if named:  # fields the Connection field names are this hop's too: dropped
                    lines = [f for f in lines if not f.lower().startswith(tuple(named))]
            elif lower == b"upgrade":
                upgrade = value
        if chunked:
            length = None  # the chunks frame it (llhttp refuses both, besides)
        if (status == 101 or status == 204) and (length is not None or chunked):
            # No body, whatever it says (RFC 9110 8.6): the field is dropped, not passed on.
            length = None
            chunked = False
        answer = Answer(self, status, reason, lines, length, chunked, upgrade)
        if status == 101:
            answer.tunnel = True
            self._keep_alive = False
        elif self._head_request:
            answer.no_body = True
            if answer.length or chunked:
                # A server that announces a body to a HEAD may well send one: never reused.
                self._keep_alive = False
        elif status == 204 or status == 304:
            answer.no_body = True
        elif not chunked and answer.length is None:
            answer.until_close = True
            self._keep_alive = False
        if self._parser.get_http_version() != "1.1":
            self._keep_alive = False
        self._answer = answer
        waiter, self._waiter = self._waiter, None
        if self._head_request:
            # llhttp cannot be told the request was HEAD: it would wait for Content-Length
            # bytes that never come. The answer ends here, on a parser of its own next time.
            self._parser = httptools.HttpResponseParser(self)
            self._head_ended = True
            self._complete(answer)
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(answer)
        elif self._notify is not None and self._ready is None:  # the first head is the answer
            self._ready = answer

    def on_body(self, body: bytes) -> None:
        """A piece of the body, decoded from its chunks."""
        answer = self._answer
        if answer is None:
            return
        if self._head_ended:  # a body sent with a HEAD's answer: never forwarded
            raise UpstreamInvalidError(f"{self.server} sent a body with a HEAD's answer")
        self._trailer_bytes = 0
        consumer = answer.consumer
        if consumer is not None:
            consumer.response_body(body)
            return
        answer.body.append(body)
        answer.buffered += len(body)
        limit = answer.aside_limit
        if limit is not None and answer.buffered > limit:
            # A retried answer's body, past what is kept of it: closed at once.
            raise UpstreamInvalidError(f"{self.server}'s set-aside body is over {limit} bytes")

    def on_message_complete(self) -> None:
        """The response ended (an interim one is not the end)."""
        answer = self._answer
        if answer is None or answer.complete or answer.tunnel:
            return
        self._complete(answer)

    # -- the connection's work ----------------------------------------------------------------

    def _complete(self, answer: Answer) -> None:
        answer.complete = True
        ended = answer.ended
        if ended is not None and not ended.done():
            ended.set_result(None)
        consumer = answer.consumer
        if consumer is not None:
            consumer.response_end()

    def _fail(self, error: UpstreamError) -> None:
        """Tell whoever waits (a head or a body) that this connection failed, and close it."""
        waiter, self._waiter = self._waiter, None
        notify, self._notify = self._notify, None
        ready, self._ready = self._ready, None
        answer, self._answer = self._answer, None
        self._keep_alive = False
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.abort()
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        if notify is not None:
            # A head parsed in this read, not yet handed over: a whole answer stands (what
            # broke came after it); one cut short is the error, answered as one.
            if ready is not None and ready.complete:
                notify(ready, None)
            else:
                notify(None, error)
            return
        if answer is not None and not answer.complete:
            answer.conn = None
            answer.lost = error  # for the exchange that has yet to attach (see Exchange._respond)
            ended = answer.ended
            if ended is not None and not ended.done():
                ended.set_exception(error)
            if answer.consumer is not None:
                answer.consumer.response_lost(error)

    def send(
        self,
        data: bytes,
        head_request: bool,
        read_timeout: float,
        complete: bool = True,
        upgrade: bool = False,
    ) -> asyncio.Future[Answer]:
        """Write a request head (and what body there is); the future gets the answer's head.
        ``complete``: the request is sent whole (else ``request_sent`` says when it is; the
        read timeout runs from then, nginx's proxy_send_timeout/proxy_read_timeout split)."""
        waiter = self._waiter = self._loop.create_future()
        self._write_request(data, head_request, read_timeout, complete, upgrade)
        return waiter

    def send_then(
        self, data: bytes, head_request: bool, read_timeout: float, on_answer: AnswerCallback
    ) -> None:
        """Write a whole request; ``on_answer(answer, None)`` once its head is in (with the
        body that came with it), or ``on_answer(None, error)``. No future, no loop turn: the
        proxy's first attempts, made from the protocols' callbacks."""
        self._notify = on_answer
        self._write_request(data, head_request, read_timeout, True, False)

    def _write_request(
        self, data: bytes, head_request: bool, read_timeout: float, complete: bool, upgrade: bool
    ) -> None:
        assert self.transport is not None
        self._answer = None
        self._head_bytes = 0
        self._head_request = head_request
        self._head_ended = False
        self._upgrade = upgrade
        self._sending = not complete
        self.read_timeout = read_timeout
        self.transport.write(data)
        now = self.sent_at = self._last_read = self._loop.time()
        if self._timer is None:
            self._timer = self._loop.call_at(now + read_timeout, self._check_read)

    def request_sent(self) -> None:
        """The request's last byte is written: the read timeout runs from now."""
        if self._sending:
            self._sending = False
            self._last_read = self._loop.time()

    def write(self, data: bytes) -> None:
        """More of the request body."""
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def _check_read(self) -> None:
        """The read timeout: lazy, so a request costs no timer of its own."""
        self._timer = None
        if self.closed or (
            self._waiter is None
            and self._notify is None
            and (self._answer is None or self._answer.complete)
        ):
            return  # idle: the pool's own age limit applies
        now = self._loop.time()
        if self._answer is not None and self._answer.tunnel:
            # A tunnel's idle timeout: no byte either way for the read timeout closes it.
            deadline = self._last_read + self.read_timeout
            if now < deadline or self._held_back:
                self._timer = self._loop.call_at(
                    max(deadline, now + 0.001) if not self._held_back else now + self.read_timeout,
                    self._check_read,
                )
                return
            self._fail(
                UpstreamTimeoutError(f"tunnel to {self.server} idle {self.read_timeout:g} s")
            )
            return
        waiting = self._waiter is not None or self._notify is not None
        if self._held_back or (self._sending and waiting):
            # Not reading is the slow client's doing, not the server's: no timeout for it
            # (nor for the head while the client's body still comes: the client's own
            # timeout bounds that; an answer's body that stalls still times out).
            self._timer = self._loop.call_at(now + self.read_timeout, self._check_read)
            return
        deadline = self._last_read + self.read_timeout
        if now < deadline:
            self._timer = self._loop.call_at(deadline, self._check_read)
            return
        self._fail(UpstreamTimeoutError(f"no answer from {self.server} in {self.read_timeout:g} s"))

    def pause_reading(self, paused: bool) -> None:
        """Stop (or restart) reading the response: the client reads slower than it comes."""
        transport = self.transport
        if transport is None or self.closed or paused == self._held_back:
            return
        self._held_back = paused
        if paused:
            transport.pause_reading()
        else:
            self._last_read = self._loop.time()  # the read clock restarts with reading
            transport.resume_reading()

    def finished(self, answer: Answer, request_complete: bool = True) -> None:
        """The answer ended: back to the idle list if nothing about it is in doubt."""
        if answer.conn is self:
            answer.conn = None
        self._pool.senders.pop(self, None)
        if (
            self._keep_alive
            and request_complete
            and answer.complete
            and not self.closed
            and self._answer is answer
            and self._waiter is None
            and self._notify is None
        ):
            self._answer = None
            if self._held_back:  # paused for the last client: the next one reads it afresh
                self.pause_reading(False)
            self.idle_since = self._last_read  # its answer's last bytes: a moment ago
            self._pool.put(self)
        else:
            self.abort()

    def abort(self) -> None:
        """Close at once; never reused."""
        self._keep_alive = False
        self._pool.senders.pop(self, None)
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()

    def tunnel_write(self, data: bytes) -> None:
        """Raw bytes from the client, for an upgraded connection (activity: the tunnel's
        idle clock restarts)."""
        self._last_read = self._loop.time()
        self.write(data)


@final
class UpstreamPool:
    """Idle keep-alive connections, per server: taken last-in first-out (the warmest)."""

    __slots__ = ("_idle", "_sweeper", "connections", "loop", "max_idle", "senders")

    def __init__(self, loop: asyncio.AbstractEventLoop, max_idle: int | None = None) -> None:
        self.loop = loop
        self.max_idle = MAX_IDLE_PER_SERVER if max_idle is None else max_idle
        self._idle: dict[str, list[Connection]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self.connections = 0  # ever opened: tests and stats count reuse with it
        self.senders: dict[Connection, Consumer] = {}  # whose request body each one carries

    def take(self, server: str) -> Connection | None:
        """An idle connection to ``server``, or None."""
        idle = self._idle.get(server)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                conn.reused = True
                return conn
        return None

    def put(self, conn: Connection) -> None:
        """Keep ``conn`` (idle since ``conn.idle_since``) for the next request to its server,
        unless enough are kept."""
        idle = self._idle.setdefault(conn.server, [])
        if len(idle) >= self.max_idle:
            conn.abort()
            return
        idle.append(conn)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(IDLE_SECONDS / 2, self._sweep)

    def forget(self, conn: Connection) -> None:
        """``conn`` closed: off its idle list."""
        idle = self._idle.get(conn.server)
        if idle and conn in idle:
            idle.remove(conn)
        self.senders.pop(conn, None)

    def _sweep(self) -> None:
        self._sweeper = None
        cutoff = self.loop.time() - IDLE_SECONDS
        for idle in self._idle.values():
            for conn in [c for c in idle if c.idle_since < cutoff]:
                conn.abort()
        if any(self._idle.values()):
            self._sweeper = self.loop.call_later(IDLE_SECONDS / 2, self._sweep)

    async def connect(self, server: str, timeout: float) -> Connection:
        """A new connection to ``server``; ``ConnectFailedError`` if refused or too slow."""
        host, port, tls = address_of(server)
        factory: Callable[[], Connection] = functools.partial(Connection, self, server)
        try:
            if tls:  # the TLS handshake is part of connecting: nothing was sent before it
                connecting = self.loop.create_connection(
                    factory, host, port, ssl=tls_context(), server_hostname=host
                )
            else:
                connecting = self.loop.create_connection(factory, host, port)
            _, conn = await asyncio.wait_for(connecting, timeout)
        except asyncio.TimeoutError:
            raise ConnectFailedError(
                f"connecting to {server} took over {timeout:g} s", "upstream_connect_timeout"
            ) from None
        except ssl.SSLError as error:
            raise ConnectFailedError(f"TLS to {server}: {error}", "upstream_tls") from None
        except OSError as error:
            raise ConnectFailedError(
                f"connecting to {server}: {error}", "upstream_refused"
            ) from None
        self.connections += 1
        return conn

    def idle(self, server: str) -> int:
        """How many idle connections to ``server`` are kept."""
        return sum(1 for c in self._idle.get(server, ()) if not c.closed)

    def close(self) -> None:
        """Close every idle connection."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.abort()
