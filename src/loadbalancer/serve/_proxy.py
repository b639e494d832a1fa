"""One proxied request, from its head to its response's last byte: routing, the failover
engine's attempts, the lease held by the answer, and the body streamed both ways.

An ``Exchange`` is made by the client connection when a request head is complete. Its
attempts run through ``lb.acall_held``: each takes a pooled connection to the server the
balancer picked (or opens one), writes the head and whatever body has arrived, and waits for
the response head. The answer's lease is held while its body streams to the client and ends
at its last byte, with the verdict's outcome; a client that leaves first ends it with no
outcome, an upstream that breaks off with a failure.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Protocol, final

from loadbalancer import (
    Attempt,
    AttemptTimeoutError,
    HedgingPolicy,
    Lease,
    NoServersAvailableError,
    Verdict,
)
from loadbalancer.failover import FirstAttempt

from ._headers import RequestHead, error_response, request_head, response_head, sticky_key
from ._settings import AccessRecord, Pool, ProxySettings
from ._upstream import (
    Answer,
    ConnectFailedError,
    Connection,
    UpstreamBrokenError,
    UpstreamError,
    UpstreamPool,
    UpstreamTimeoutError,
)

__all__ = ["IDEMPOTENT", "REPLAY_LIMIT", "Client", "Exchange", "route"]

_log = logging.getLogger("loadbalancer.serve")

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
"""Methods retried after they may have reached a server (RFC 9110 9.2.2)."""

REPLAY_LIMIT = 64 * 1024
"""Request bodies up to this size are kept whole, so a retry can send them again; a larger
one streams through and is never retried once any of it was sent."""

SET_ASIDE_LIMIT = 1024 * 1024
"""A retried answer's body is read (to reuse its connection) up to this size."""

_PAUSE_BODY = 256 * 1024  # unsent request body past which the client is read no more

_SUCCESS, _FAILURE, _NO_OUTCOME = Verdict(True), Verdict(False), Verdict(None)
_RETRY_FAILURE, _RETRY_SUCCESS = Verdict(False, retry=True), Verdict(True, retry=True)
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_LAST_CHUNK = b"0\r\n\r\n"


class Client(Protocol):
    """What an exchange needs from its client connection."""

    peer: str
    draining: bool
    write_paused: bool  # the client's send buffer is full

    def write(self, data: bytes) -> None:
        """Send bytes to the client."""

    def last(self, exchange: Exchange) -> bool:
        """True if no request is queued or being read behind ``exchange``."""

    def exchange_done(self, exchange: Exchange, keep_alive: bool) -> None:
        """The response's last byte is written: on to the next request, or close."""

    def abort(self) -> None:
        """Close the client connection at once."""

    def finish(self) -> None:
        """Close the client connection once what is written has gone out."""

    def read_paused(self, paused: bool) -> None:
        """Stop (or restart) reading the client: its body waits for the upstream."""

    def start_tunnel(self, exchange: Exchange) -> None:
        """From now on, the client's bytes go raw to ``exchange.tunnel_write``."""


def _retry_after(lines: Sequence[bytes]) -> float | None:
    """A ``Retry-After`` in delay-seconds, or None (an HTTP date is left to the backoff)."""
    for line in lines:
        if line[:12].lower() == b"retry-after:":
            value = line[12:].strip()
            if value.isdigit() and len(value) <= 10:
                return float(value)
            return None
    return None


def route(routes: Sequence[tuple[str | None, bytes, Pool]], host: str, path: bytes) -> Pool | None:
    """The pool of the first route matching ``host`` (lower-case, no port) and ``path``."""
    for want, prefix, pool in routes:
        if (want is None or want == host) and path.startswith(prefix):
            return pool
    return None


@final
class Exchange:
    """One client request and its response."""

    __slots__ = (
        "_chunks",
        "_first",
        "_key",
        "_task",
        "answer",
        "answered_by",
        "attempts",
        "body_bytes",
        "body_complete",
        "body_intact",
        "bytes_sent",
        "chunked_out",
        "client",
        "close",
        "dispatched",
        "done",
        "error",
        "error_status",
        "head",
        "http11",
        "idempotent",
        "lease",
        "loop",
        "method",
        "ok",
        "outcome",
        "pool",
        "request_bytes",
        "retain",
        "server",
        "settings",
        "sink",
        "started",
        "status",
        "target",
        "upstream_started",
        "upstreams",
    )

    def __init__(
        self,
        client: Client,
        loop: asyncio.AbstractEventLoop,
        upstreams: UpstreamPool,
        settings: ProxySettings,
        method: bytes,
        target: bytes,
        http11: bool,
        started: float,
    ) -> None:
        self.client = client
        self.loop = loop
        self.upstreams = upstreams
        self.settings = settings
        self.method = method
        self.target = target
        self.http11 = http11
        self.started = started
        self.head: RequestHead | None = None
        self.pool: Pool | None = None
        self.idempotent = method in IDEMPOTENT
        self.request_bytes = b""
        self._chunks: list[bytes] = []
        self.retain = True
        self.body_bytes = 0
        self.body_complete = False
        self.body_intact = True
        self.sink: Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._key: str | None = None
        # The first attempt made without the engine: its lease and connection.
        self._first: tuple[Lease, Connection] | None = None
        self.dispatched = False
        # The answer's lease (None once it holds none: set aside, never retried) and outcome.
        self.lease: Lease | None = None
        self.ok: bool | None = None
        self.answered_by: str | None = None  # the server whose answer is sent
        self.answer: Answer | None = None
        self.attempts = 0
        self.server: str | None = None
        self.status = 0
        self.bytes_sent = 0
        self.chunked_out = False
        self.close = False
        self.done = False
        self.error: str | None = None  # the cause of a response the proxy made
        self.error_status = 0  # set before dispatch: answer this instead of proxying
        self.outcome: str = "none"
        self.upstream_started: float | None = None

    # -- the request body, as the client sends it ---------------------------------------------

    def request_body(self, data: bytes) -> None:
        """A piece of the request body (decoded from its chunks, if chunked)."""
        self.body_bytes += len(data)
        head = self.head
        framed = b"%x\r\n%b\r\n" % (len(data), data) if head is not None and head.chunked else data
        self._add(framed)

    def request_end(self) -> None:
        """The request body (if any) is complete."""
        self.body_complete = True
        head = self.head
        if head is not None and head.chunked:
            self._add(_LAST_CHUNK)
        sink = self.sink
        if sink is not None:
            self.upstreams.senders.pop(sink, None)
            sink.request_sent()

    def _add(self, framed: bytes) -> None:
        sink = self.sink
        if self.retain:
            self._chunks.append(framed)
            if self.body_bytes > REPLAY_LIMIT:
                self.retain = False  # too big to keep: a retry can no longer replay it
                if sink is not None:
                    self._chunks.clear()
                    self.body_intact = False
        elif sink is None:
            self._chunks.append(framed)
            if sum(map(len, self._chunks)) > _PAUSE_BODY:
                self.client.read_paused(True)
        else:
            self.body_intact = False
        if sink is not None:
            sink.write(framed)

    # -- dispatch -------------------------------------------------------------------------------

    def start(self, inline: bool = True) -> None:
        """Answer this request: it is the oldest one the client is waiting for. ``inline``:
        called from the client's parser (not from an upstream's, which a first attempt made
        at once could reenter)."""
        if self.error_status:
            self.respond_error(self.error_status, self.error or "bad_request")
            return
        self.dispatched = True
        pool = self.pool
        head = self.head
        assert pool is not None
        assert head is not None
        bodyless = not head.chunked and not head.content_length
        plain = bodyless and head.upgrade is None
        hedging = pool.hedging if plain and self.idempotent else None
        if (
            inline
            and hedging is None
            and plain
            and not head.expect_continue
            and pool.retry.per_try_timeout is None
        ):
            self._prepare(pool, head)
            self._start_first(pool)
        else:
            # In a task, which runs once the client's bytes at hand are read (a body too).
            self._task = self.loop.create_task(self._run(hedging, None, True))

    def _prepare(self, pool: Pool, head: RequestHead) -> None:
        """The head for the upstream, the sticky key; a 100 Continue if the client waits."""
        if head.expect_continue and not self.body_complete:
            # nginx's way: the proxy itself invites the body, and sends it on as it comes.
            self.client.write(_CONTINUE)
        self.request_bytes = request_head(
            self.method,
            self.target,
            head,
            self.client.peer,
            self.settings.forwarding,
            self.body_bytes > 0 or head.chunked,
            pool.name.encode("latin-1", "replace"),
        )
        self._key = None if pool.sticky is None else sticky_key(head, pool.sticky)

    # -- the first attempt, made without a task or the engine, which take over for a retry ---

    def _start_first(self, pool: Pool) -> None:
        """The engine's first step, as it would make it: the request deposited in the budget,
        a lease, a pooled connection (else a task connects), the request sent."""
        lb = pool.lb
        lb.retry_budget.deposit()
        try:
            lease = lb.acquire(self._key)
        except NoServersAvailableError as error:
            # Answered once the client's bytes at hand are read, as from a task: the request
            # is whole by then, and the connection can stay open.
            self.loop.call_soon(self._failed, error)
            return
        server = lease.server
        self.attempts += 1
        self.server = server
        conn = self.upstreams.take(server)
        if conn is None:
            self._task = self.loop.create_task(self._first_in_task(lease, False))
            return
        # The request is bodyless (see ``start``): sent whole, and its answer comes to
        # ``_first_answered`` from the upstream's own callback, with no future between.
        self.sink = conn
        self._first = (lease, conn)
        try:
            conn.send_then(
                self.request_bytes,
                self.method == b"HEAD",
                self.settings.timeouts.upstream_read,
                self._first_answered,
            )
        except Exception as error:
            self._first = self.sink = None
            conn.abort()
            self.loop.call_soon(self._first_judged, lease, None, error)
            return
        self.upstream_started = conn.sent_at

    def _first_answered(self, answer: Answer | None, error: Exception | None) -> None:
        first = self._first
        if first is None:  # dropped by ``cancel`` or ``refuse``, which ended its lease
            if answer is not None:
                answer.abort()
            return
        self._first = None
        lease, conn = first
        if self.done:  # the request was answered another way: nothing learnt about the server
            self._drop_first(lease, conn, answer)
            return
        if error is None:
            assert answer is not None
            pool = self.pool
            assert pool is not None
            status = answer.status
            if status not in pool.retry_statuses:
                # Never retried, so ``_classify``'s verdict comes to this, without its objects.
                ok = status not in pool.failure_statuses
                if not self._answer_whole(answer, lease, ok):
                    self._respond(answer, lease, ok)
                return
            self._first_judged(lease, answer, None)
            return
        if self.sink is conn:
            self.sink = None
        if isinstance(error, UpstreamBrokenError):
            if conn.reused and self.idempotent and self.body_intact:
                # A stale kept-alive connection: again on a new one (see _attempt).
                self._task = self.loop.create_task(self._first_in_task(lease, True))
                return
        else:
            conn.abort()
        self._first_judged(lease, None, error)

    def _drop_first(self, lease: Lease, conn: Connection, answer: Answer | None) -> None:
        """The first attempt is abandoned (the client left, the request was refused):
        its connection closed, its lease ended with no outcome."""
        if self.sink is conn:
            self.sink = None
        if answer is not None:
            answer.abort()
        conn.abort()
        lease.release(None)

    async def _first_in_task(self, lease: Lease, stale: bool) -> None:
        """The first attempt, when it must connect: in a task, as the engine would make it."""
        server = lease.server
        try:
            if stale:
                result: Answer | None = await self._reconnected(server)
            else:
                result = await self._attempt_on(server)
            error: Exception | None = None
        except Exception as exc:
            result, error = None, exc
        except BaseException:
            lease.release(None)  # the client went away: nothing learnt about the server
            raise
        first = self._first_judged(lease, result, error)
        error = None  # caught here, its traceback holds this frame: the frame lets go of it
        if first is not None:
            await self._run(None, first)

    def _first_judged(
        self, lease: Lease, result: Answer | None, error: Exception | None
    ) -> FirstAttempt[Answer] | None:
        """The first attempt's verdict, answered at once unless it is a retry: then the
        engine goes on (in a task, if none runs yet), and its first attempt is returned."""
        if self.done:  # the client left, or the request was refused: nothing learnt
            lease.release(None)
            if result is not None:
                self.discard(result)
            return None
        try:
            verdict = self._classify(Attempt(lease.server, 1, result, error))
        except Exception:
            lease.release(None)
            if result is not None:
                self.discard(result)
            _log.exception("proxying %r failed", self.target)
            self.outcome = "none"
            self.respond_error(502, "proxy_error")
            return None
        if verdict.retry:
            first = FirstAttempt(lease, result, error, verdict)
            if self._task is None:
                self._task = self.loop.create_task(self._run(None, first))
                return None
            return first
        if error is not None:
            lease.release(verdict.ok)
            self._failed(error)
            return None
        assert result is not None
        self._respond(result, lease, verdict.ok)
        return None

    # -- the engine's attempts ------------------------------------------------------------------

    async def _run(
        self,
        hedging: HedgingPolicy | None,
        first: FirstAttempt[Answer] | None,
        prepare: bool = False,
    ) -> None:
        pool = self.pool
        assert pool is not None
        if prepare:
            assert self.head is not None
            self._prepare(pool, self.head)
        try:
            held = await pool.lb.acall_held(
                self._attempt,
                results=self,
                key=self._key,
                retry=pool.retry,
                hedging=hedging,
                classify=self._classify,
                first=first,
            )
        except Exception as error:
            self._failed(error)
            return
        self._respond(held.result, held.lease, held.ok)

    def _failed(self, error: Exception) -> None:
        """The call's error, answered (unless the exchange is over)."""
        if self.done:
            return
        if isinstance(error, NoServersAvailableError):
            self.outcome = "none"
            self.respond_error(503, "no_upstream")
        elif isinstance(error, AttemptTimeoutError):
            self.outcome = "failure"
            self.respond_error(504, "upstream_timeout")
        elif isinstance(error, UpstreamError):
            self.outcome = "failure"
            timed_out = isinstance(error, UpstreamTimeoutError) or error.cause.endswith("timeout")
            status = 504 if timed_out else 502  # nginx: a connect timeout is a 504 too
            self.respond_error(status, error.cause)
        else:
            # A bug of the proxy's, not the server's: answered, logged, never left hanging.
            _log.error("proxying %r failed", self.target, exc_info=error)
            self.outcome = "none"
            self.respond_error(502, "proxy_error")

    async def _attempt(self, server: str) -> Answer:
        """One attempt on ``server``: a pooled connection (or a new one), the request sent,
        the response head awaited."""
        self.attempts += 1
        self.server = server
        return await self._attempt_on(server)

    async def _attempt_on(self, server: str) -> Answer:
        upstreams = self.upstreams
        timeouts = self.settings.timeouts
        conn = upstreams.take(server)
        if conn is None:
            conn = await upstreams.connect(server, timeouts.upstream_connect)
        try:
            return await self._send(conn, timeouts.upstream_read)
        except UpstreamBrokenError:
            # A kept-alive connection the server closed as it was reused: nothing was
            # answered, and the server most likely read nothing. An idempotent request
            # goes again on a new connection to the same server, so that a stale
            # connection is not counted as the server's failure.
            if self.sink is conn:
                self.sink = None
            if not (conn.reused and self.idempotent and self.body_intact):
                raise
        except BaseException:
            if self.sink is conn:
                self.sink = None
            conn.abort()
            raise
        return await self._reconnected(server)

    async def _reconnected(self, server: str) -> Answer:
        """The attempt again on a new connection: the pooled one was stale."""
        timeouts = self.settings.timeouts
        conn = await self.upstreams.connect(server, timeouts.upstream_connect)
        try:
            return await self._send(conn, timeouts.upstream_read)
        except BaseException:
            if self.sink is conn:
                self.sink = None
            conn.abort()
            raise

    def _send(self, conn: Connection, read_timeout: float) -> asyncio.Future[Answer]:
        """Write the head and the body so far on ``conn``; the future gets the answer.
        (Not a coroutine: one frame less per request.)"""
        chunks = self._chunks
        data = self.request_bytes + b"".join(chunks) if chunks else self.request_bytes
        if not self.retain and chunks:
            chunks.clear()
            self.body_intact = False
        self.sink = conn
        if not self.body_complete:
            self.upstreams.senders[conn] = self
            self.client.read_paused(False)
        self.upstream_started = self.loop.time()
        head = self.head
        upgrade = head is not None and head.upgrade is not None
        return conn.send(data, self.method == b"HEAD", read_timeout, self.body_complete, upgrade)

    def _classify(self, attempt: Attempt[Answer]) -> Verdict:
        """The verdict on one attempt, as the pool's statuses and the request's kind say."""
        error = attempt.error
        pool = self.pool
        assert pool is not None
        if error is None:
            answer = attempt.result
            assert answer is not None
            status = answer.status
            ok = status not in pool.failure_statuses
            if status in pool.retry_statuses and self.body_intact and self._after_send():
                pushback = _retry_after(answer.lines)
                if pushback is not None:  # the server's own wait replaces the backoff
                    return Verdict(ok, retry=True, retry_after=pushback)
                return _RETRY_SUCCESS if ok else _RETRY_FAILURE
            return _SUCCESS if ok else _FAILURE
        if isinstance(error, ConnectFailedError):
            return _RETRY_FAILURE if self.body_intact else _FAILURE
        if isinstance(error, (UpstreamError, AttemptTimeoutError)):
            retry = self.body_intact and self._after_send()
            return _RETRY_FAILURE if retry else _FAILURE
        return _NO_OUTCOME

    def _after_send(self) -> bool:
        pool = self.pool
        return self.idempotent or (pool is not None and pool.retry_non_idempotent)

    # -- AsyncResults: answers that are retried or lose a hedge --------------------------------

    async def set_aside(self, result: Answer) -> Answer:
        """Read a retried answer's body, so that its connection goes back to the pool."""
        if self.sink is result.conn:
            self.sink = None
        return await result.buffer(SET_ASIDE_LIMIT, 1.0, self.body_complete)

    def discard(self, result: Answer) -> None:
        """An answer that will never be sent: its connection is closed."""
        if self.sink is not None and self.sink is result.conn:
            self.sink = None
        result.abort()

    # -- the response -----------------------------------------------------------------------

    def _respond(self, answer: Answer, lease: Lease | None, ok: bool | None) -> None:
        """Send ``answer``, held by ``lease`` and judged ``ok``: its head and what has come of
        its body go out in one write; a whole answer ends here, a longer one is handed the
        rest as it comes. Should the proxy itself fail here, the lease ends with no outcome
        and the client is cut off, never left waiting."""
        self.lease = lease
        self.ok = ok
        self.answered_by = self.server if lease is None else lease.server
        try:
            if answer.lost is not None and not answer.complete:
                # The upstream broke off after the head, before any of it was sent on (in the
                # read that brought it): the server's failure, answered as one, not a head cut
                # short.
                self.ok = False
                self._release()
                self._failed(answer.lost)
                return
            self.answer = answer
            self.status = answer.status
            head = self.head
            assert head is not None
            client = self.client
            # Draining: the requests already read are answered, and the last one closes. An
            # answer that comes before the request's body has all been read closes too (the
            # rest of the body is never read), and says so.
            close = (
                self.close
                or head.close
                or not self.body_complete
                or (client.draining and client.last(self))
            )
            tunnel = answer.tunnel and head.upgrade is not None
            length = answer.length
            chunked = False
            if tunnel:
                close = False
            elif answer.no_body or self.method == b"HEAD":
                pass  # the upstream's Content-Length (of a HEAD) goes back unchanged
            elif length is None:
                if self.http11:
                    chunked = True
                else:
                    close = True  # an HTTP/1.0 client reads to the close
            if head.upgrade is not None and not tunnel:
                close = True  # a refused upgrade: the client may already be sending frames
            self.chunked_out = chunked
            self.close = close
            out = response_head(
                answer.status,
                answer.reason,
                answer.lines,
                length=length,
                chunked=chunked,
                close=close,
                tunnel=tunnel,
                upgrade=answer.upgrade,
                keep_alive=not close and not self.http11,
            )
            whole = answer.complete and not answer.tunnel
            body = answer.body
            if body and not tunnel:
                # What has arrived goes out with the head, in one write: one system call less.
                answer.body = []
                for piece in body:
                    self.bytes_sent += len(piece)
                    out += b"%x\r\n%b\r\n" % (len(piece), piece) if chunked else piece
            if whole and chunked:
                out += _LAST_CHUNK
            client.write(out)
            conn = answer.conn
            if whole:  # all of it written above: nothing to hand over
                self._finish(answer)
                return
            if tunnel:
                client.start_tunnel(self)
                if conn is not None:  # a client that floods a slow upstream is slowed down
                    self.upstreams.senders[conn] = self
            if conn is not None and client.write_paused:
                conn.pause_reading(True)  # the client is still slow from the previous answer
            answer.attach(self)
        except Exception:
            _log.exception("answering %r failed", self.target)
            self.ok = None
            self._release()
            self.done = True
            answer.abort()  # its connection's state is in doubt: closed, not left open
            self.client.abort()

    def _answer_whole(self, answer: Answer, lease: Lease, ok: bool) -> bool:
        """The usual answer, sent and ended in one step: a first attempt's, whole in hand and
        framed by its Content-Length, to a kept-alive HTTP/1.1 request read whole (on a
        connection not draining). What ``_respond`` and ``_finish`` would do, without their
        general cases; False, having done nothing, for any other answer."""
        head = self.head
        client = self.client
        length = answer.length
        if (
            length is None
            or not answer.complete
            or answer.no_body
            or answer.tunnel
            or self.close
            or not self.body_complete
            or not self.http11
            or client.draining
            or head is None
            or head.close
            or head.upgrade is not None
        ):
            return False
        self.lease = lease
        self.ok = ok
        self.answered_by = lease.server
        self.answer = answer
        self.status = answer.status
        self.done = True
        self.outcome = "success" if ok else "failure"
        body = answer.body
        data = body[0] if len(body) == 1 else b"".join(body)
        answer.body = []
        self.bytes_sent = len(data)
        try:
            # response_head's framing for this case: the upstream's length, kept alive.
            client.write(
                b"HTTP/1.1 %d %s\r\n%sContent-Length: %d\r\n\r\n%s"
                % (answer.status, answer.reason, b"".join(answer.lines), length, data)
            )
            lease.release(ok)
            conn = answer.conn
            if conn is not None:
                conn.finished(answer)
            if self.settings.on_access is not None:
                self._record()
            client.exchange_done(self, True)
        except Exception:
            _log.exception("answering %r failed", self.target)
            lease.release(None)
            answer.abort()  # its connection's state is in doubt: closed, not left open
            client.abort()
        return True

    def _release(self) -> None:
        """End the answer's lease with its outcome (harmless if it has ended)."""
        lease = self.lease
        if lease is not None:
            lease.release(self.ok)

    def response_body(self, data: bytes) -> None:
        """A piece of the response body: forwarded at once (re-chunked when chunked)."""
        if self.done:
            return
        self.bytes_sent += len(data)
        if self.chunked_out:
            self.client.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self.client.write(data)

    def response_end(self) -> None:
        """The response's last byte: the lease ends, the connection goes back."""
        if self.done:
            return
        if self.chunked_out:
            self.client.write(_LAST_CHUNK)
        answer = self.answer
        if answer is not None and answer.tunnel:
            self._tunnel_closed()
        else:
            self._finish(answer)

    def _finish(self, answer: Answer | None) -> None:
        """The answer's last byte is written: the lease ends with its outcome, the upstream
        connection goes back, the client goes on to its next request."""
        self.done = True
        ok = self.ok
        self.outcome = "success" if ok else ("failure" if ok is False else "none")
        self._release()
        if answer is not None:
            # Not its consumer any more: an exchange and its answer, each naming the other,
            # would be freed only by the cyclic collector, not as the request ends.
            answer.consumer = None
            if answer.conn is not None:
                answer.conn.finished(answer, self.body_complete)
        self._record()
        self.client.exchange_done(self, not self.close and self.body_complete)

    def response_lost(self, error: Exception) -> None:
        """The upstream broke off mid-body: the server's failure; the client is cut off."""
        if self.done:
            return
        answer = self.answer
        if answer is not None and answer.tunnel:
            self._tunnel_closed()
            return
        self.done = True
        if self.answered_by is not None:
            self.ok = False
            self.outcome = "failure"
            self._release()
        if answer is not None:
            answer.consumer = None  # it broke off: nothing more comes, and no cycle stays
        self.error = getattr(error, "cause", "upstream_reset")
        self._record()
        self.client.abort()

    def upstream_paused(self, paused: bool) -> None:
        """The upstream reads the body slower than the client sends it: slow the client."""
        self.client.read_paused(paused)

    def client_paused(self, paused: bool) -> None:
        """The client reads slower than the upstream answers: slow the upstream."""
        answer = self.answer
        if answer is not None and answer.conn is not None:
            answer.conn.pause_reading(paused)

    # -- tunnels (Upgrade) --------------------------------------------------------------------

    def tunnel_data(self, data: bytes) -> None:
        """Raw bytes from the upstream: straight to the client."""
        self.bytes_sent += len(data)
        self.client.write(data)

    def tunnel_write(self, data: bytes) -> None:
        """Raw bytes from the client: straight to the upstream."""
        answer = self.answer
        if answer is not None and answer.conn is not None:
            answer.conn.tunnel_write(data)

    def _tunnel_closed(self) -> None:
        """Either side of a tunnel closed: both go, and the lease ends (a success: the
        tunnel worked for as long as it lasted)."""
        if self.done:
            return
        self.done = True
        if self.answered_by is not None:
            self.outcome = "success" if self.ok else "failure"
            self._release()
        answer = self.answer
        if answer is not None:
            answer.abort()
        self._record()
        self.client.finish()  # what the upstream sent last still reaches the client

    # -- the client going away, and answers the proxy makes ---------------------------------

    def cancel(self) -> None:
        """The client left (or the connection is being closed): nothing learnt about the
        server; the upstream connection is closed, never reused."""
        if self.done:
            return
        self.done = True
        task, self._task = self._task, None  # its frames name this exchange: no cycle kept
        if task is not None and not task.done():
            task.cancel()  # the engine ends the attempt's lease with no outcome
        first = self._first
        if first is not None:
            self._first = None
            self._drop_first(*first, None)
        answer = self.answer
        if answer is not None and answer.tunnel:
            self.outcome = "success" if self.ok else "failure"
            self._release()
        elif self.answered_by is not None:
            self.ok = None
            self.outcome = "none"
            self._release()
        if answer is not None:
            answer.abort()
        sink = self.sink
        if sink is not None and not self.body_complete:
            sink.abort()  # the upstream would wait for the rest of a body that never comes
        if self.dispatched or self.answered_by is not None:
            self._record()

    def refuse(self, status: int, cause: str) -> None:
        """The request itself turned out bad (its body, its timing) before any answer: the
        attempt in flight is dropped with no outcome, and the proxy answers ``status``."""
        task = self._task
        if task is not None and not task.done():
            task.cancel()
        first = self._first
        if first is not None:
            self._first = None
            self._drop_first(*first, None)
        sink = self.sink
        if sink is not None:
            sink.abort()
            self.sink = None
        self.respond_error(status, cause, close=True)

    def respond_error(self, status: int, cause: str, *, close: bool = False) -> None:
        """Answer with a response of the proxy's own, naming ``cause``."""
        if self.done:
            return
        self.done = True
        self.status = status
        self.error = cause
        head = self.head
        close = (
            close
            or self.close
            or head is None
            or head.close
            or head.upgrade is not None
            or not self.body_complete
            or (self.client.draining and self.client.last(self))
        )
        self.close = close
        body = error_response(
            status,
            cause,
            close=close,
            head_only=self.method == b"HEAD",
            keep_alive=not self.http11,
        )
        self.bytes_sent = len(body)
        self.client.write(body)
        sink = self.sink
        if sink is not None:
            sink.abort()
        self._record()
        self.client.exchange_done(self, not close)

    def _record(self) -> None:
        on_access = self.settings.on_access
        if on_access is None:
            return
        now = self.loop.time()
        head = self.head
        started = self.upstream_started
        record = AccessRecord(
            client=self.client.peer,
            method=self.method.decode("latin-1"),
            target=self.target.decode("latin-1"),
            host=head.host if head is not None else "",
            status=self.status,
            pool=None if self.pool is None else self.pool.name,
            upstream=self.answered_by,
            attempts=self.attempts,
            upstream_time=None if started is None or self.answered_by is None else now - started,
            total_time=now - self.started,
            bytes_sent=self.bytes_sent,
            outcome="success"
            if self.outcome == "success"
            else ("failure" if self.outcome == "failure" else "none"),
            error=self.error,
        )
        try:
            on_access(record)
        except Exception:  # the access log's failure must not break the proxying
            _log.exception("on_access failed for %r", record)
