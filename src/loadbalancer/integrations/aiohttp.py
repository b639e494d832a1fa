"""An aiohttp client middleware that sends each request to a replica picked by a ``LoadBalancer``.

``aiohttp.ClientSession(middlewares=(BalancedMiddleware(lb),))`` (aiohttp 3.12+): a request for
``http://inventory/items/42`` is sent to a server of ``lb``, with the server's scheme, host and
port and the request's own path and query; each attempt's outcome teaches the balancer, and
failed attempts are retried on other servers when that is safe (``HttpRetry``), within the
balancer's retry budget, with per-try timeouts and optional hedging.

Re-addressing: aiohttp hands a middleware the ``ClientRequest`` it built and the handler that
connects and sends it. The handler connects to ``request.url`` (with ``server_hostname`` for TLS)
and writes ``request.headers`` as they are, so each attempt sends a shallow copy of the request
of its own (its own URL, headers, SNI name and ``100-continue`` waiter; the body payload is
shared, which is safe because only bytes, text and form bodies are ever sent twice). The original
request is never sent, so attempts running side by side (hedging) share no mutable state, and the
answer's ``url`` stays the logical one (cookies and redirects see the service's name).

Leases: an answer's lease is held until its body has been read to the end (``read()``,
``json()``, ``text()``, or ``response.content`` to its end), or the response is released or
closed (``async with`` does), or garbage-collected, whichever is first; aiohttp gives the
connection back as soon as the body has arrived, but the lease, like httpx's, lasts while the
caller is still reading (an SSE stream holds it to the last event). No public aiohttp hook says
when a body has been read to the end, so the body's ``StreamReader`` has its class swapped for a
subclass that watches its reads (see ``_HeldContent``). A response with no body (HEAD, 204)
ends the lease with its headers. An unreleased response whose body is still arriving is held
by aiohttp's connection, so it is collected only after. A connection closed under a body (the
session closed) ends the lease then, through the protocol's public ``closed`` future. The
outcome is decided on the response headers (a 5xx is a failure), unless the body then breaks
off or stalls past aiohttp's read timeout (a failure), a body read is cancelled, the response is
collected unread, or the session is closed (no outcome). ``close()`` ends the leases still open
with no outcome; ``open_streams`` counts them.

Latency: the time from sending to the end of the body, for every response, as httpx's: to the
last byte read for a body read whole (``read()``, ``json()``, ``text()``: a buffered response)
or to the end of a stream, to the release or close of a body left unread; a response with no
body, to its headers.

TLS: a server given as an IP address, for an ``https`` request whose Host stays the logical
name, is sent with ``server_hostname`` set to the logical host, so that the TLS handshake names,
and the certificate is verified against, the service rather than the IP (a ``server_hostname``
the caller gave is kept). A server given by name is verified against its own name. aiohttp 3.14
pools connections per address *and* ``server_hostname``, so two services on one address never
share a connection; before 3.14, a connection opened for one logical name is reused for another
served by the same address: give each TLS service its own session if their certificates differ.

A retryable answer (a 503 being retried) is read, for at most the per-try timeout (1 s without
one), so that its connection goes back; should it still be the answer (no server left), its
``read()`` gives that body (an unreadable one raises ``ClientConnectionError``).

aiohttp itself re-runs an idempotent request once when it fails with ``ClientOSError`` or
``ServerDisconnectedError`` (its retry of a stale keep-alive connection), so a GET whose every
attempt broke goes through the balancer a second time.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, final

import aiohttp
from aiohttp import ClientHandlerType, ClientRequest, ClientResponse, hdrs
from aiohttp.payload import BytesPayload, Payload
from aiohttp.streams import StreamReader
from multidict import CIMultiDict
from yarl import URL

from loadbalancer import (
    Attempt,
    AttemptTimeoutError,
    Held,
    Key,
    Lease,
    LoadBalancer,
    NoServersAvailableError,
    Verdict,
)

from ._http import (
    ErrorKind,
    HttpPolicy,
    HttpRetry,
    Routes,
    StickyKey,
    UnknownHostError,
    check_policy,
    classifiers_by_kind,
    host_header,
    parse_server,
)
from ._semconv import HttpMetrics, http_metrics, protocol_version

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider

__all__ = [
    "IDEMPOTENT",
    "BalancedMiddleware",
    "HttpPolicy",
    "HttpRetry",
    "NoBackendAvailable",
    "PerTryTimeout",
    "StickyKey",
    "error_kind",
]

IDEMPOTENT = "X-Loadbalancer-Idempotent"
"""Request header: ``headers={IDEMPOTENT: "1"}`` lets a POST be retried (and hedged) like a
GET, ``"0"`` keeps a GET from being retried after it may have been sent (``true``/``false``
and ``yes``/``no`` too). The same header as the requests adapter's. The middleware strips it
from every attempt: no server sees it. aiohttp has no per-request place for such a mark other
than the headers (``trace_request_ctx`` never reaches a middleware), and a per-request
``middlewares=`` with another policy changes every rule at once."""


class NoBackendAvailable(aiohttp.ClientConnectionError):
    """No server could take a request for ``host``: the message says why.

    Raised chained to the ``NoServersAvailableError`` (empty pool, all ejected or unhealthy)
    or ``UnknownHostError`` (no balancer routes the host) behind it.
    """

    def __init__(self, message: str, *, host: str) -> None:
        super().__init__(message)
        self.host = host


class PerTryTimeout(aiohttp.ServerTimeoutError):
    """An attempt ran past ``policy.retry.per_try_timeout`` (up to its response headers).

    An ``aiohttp.ServerTimeoutError`` (so an ``asyncio.TimeoutError`` too); its cause is the
    engine's ``AttemptTimeoutError``.
    """


def error_kind(error: Exception) -> ErrorKind:
    """What an aiohttp exception says about the attempt (see ``ErrorKind``).

    ``ClientConnectorError`` (refused, DNS, TLS handshake), ``ConnectionTimeoutError`` and
    ``ServerFingerprintMismatch`` are ``NOT_SENT``; any other ``ServerTimeoutError`` or
    ``asyncio.TimeoutError`` is ``TIMEOUT``; ``ServerDisconnectedError``, ``ClientOSError``,
    ``ClientPayloadError`` and ``ClientResponseError`` (a malformed answer) are ``BROKEN``;
    anything else is ``LOCAL``.
    """
    # Connecting (refused, DNS, TLS handshake, timed out, wrong certificate fingerprint):
    # nothing of the request was sent. ConnectionTimeoutError is a ServerTimeoutError, so
    # it is tested first.
    not_sent = (
        aiohttp.ClientConnectorError,
        aiohttp.ConnectionTimeoutError,
        aiohttp.ServerFingerprintMismatch,
    )
    if isinstance(error, not_sent):
        return ErrorKind.NOT_SENT
    if isinstance(error, (aiohttp.ServerTimeoutError, asyncio.TimeoutError)):
        return ErrorKind.TIMEOUT
    broken = (
        aiohttp.ServerDisconnectedError,
        aiohttp.ClientOSError,
        aiohttp.ClientPayloadError,
        # Inside the middleware, only a malformed status line or headers raise this
        # (raise_for_status and redirects come after it).
        aiohttp.ClientResponseError,
    )
    if isinstance(error, broken):
        return ErrorKind.BROKEN
    return ErrorKind.LOCAL


def _status(response: ClientResponse) -> int:
    return response.status


def _retry_after(response: ClientResponse) -> str | None:
    return response.headers.get(hdrs.RETRY_AFTER)


def _version(response: ClientResponse) -> str | None:
    """``network.protocol.version`` of ``response`` (aiohttp's ``HttpVersion(1, 1)``: ``1.1``)."""
    version = response.version
    return None if version is None else protocol_version(version.major, version.minor)


def _replayable(body: Payload | bytes) -> bool:
    """True if ``body`` can be sent again, and by several attempts at once: no body, bytes,
    text, JSON, a urlencoded form, or a multipart form of those; not a file or a stream."""
    if not isinstance(body, Payload):
        return True  # b"": no body
    if isinstance(body, BytesPayload):
        return True
    if isinstance(body, aiohttp.MultipartWriter):
        return all(_replayable(part) for part, _, _ in body)
    return False


def _marked(headers: CIMultiDict[str]) -> bool | None:
    """The request's ``IDEMPOTENT`` header: True, False, or None if absent."""
    value = headers.get(IDEMPOTENT)
    if value is None:
        return None
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ValueError(f"header {IDEMPOTENT} must be 1 or 0 (true or false), not {value!r}")


def _attempt_request(request: ClientRequest, server: str, policy: HttpPolicy) -> ClientRequest:
    """A copy of ``request`` addressed to ``server``: its scheme, host and port; the path and
    query kept; Host as ``policy.host_header`` says; SNI naming the logical host for an IP."""
    backend = parse_server(server)  # cached: parsed once per server
    url = request.url
    scheme = backend.scheme or url.scheme
    port = backend.port if backend.port is not None else url.explicit_port
    # ClientRequest is a plain object, built once per request by the session: a shallow copy
    # has every setting of the original (timer, traces, TLS, proxy, body payload), and what
    # an attempt changes or send() writes to (URL, headers, SNI, response) becomes its own.
    # Made as copy.copy makes it, without its generic machinery (2 µs of 3).
    cls = request.__class__
    attempt = cls.__new__(cls)
    attempt.__dict__.update(request.__dict__)
    attempt.url = readdressed(url, scheme, backend.host, port)
    headers: CIMultiDict[str] = CIMultiDict(request.headers)  # send() adds to its headers
    headers.popall(IDEMPOTENT, None)
    if policy.host_header == "backend":
        headers[hdrs.HOST] = host_header(backend, scheme, port)
    elif scheme == "https" and backend.is_ip and request.server_hostname is None:
        attempt.server_hostname = url.host  # TLS names, and verifies, the service
    attempt.headers = headers
    attempt.update_expect_continue()  # a 100-continue waiter of its own, if one is expected
    return attempt


def readdressed(url: URL, scheme: str, host: str, port: int | None) -> URL:
    """``url`` with ``scheme``, ``host`` and ``port`` replaced; userinfo, path, query kept.

    ``with_scheme().with_host().with_port()`` builds and checks three URLs; ``host`` comes
    from ``parse_server`` (checked, lower-cased), so an ASCII name or IPv4 address goes into
    one ``URL.build`` of already encoded parts (a test checks the two ways agree). An IPv6 or
    non-ASCII host takes the public way, which brackets or IDNA-encodes it.
    """
    if host.isascii() and ":" not in host:
        return URL.build(
            scheme=scheme,
            user=url.raw_user,
            password=url.raw_password,
            host=host,
            port=port,
            path=url.raw_path,
            query_string=url.raw_query_string,
            fragment=url.raw_fragment,
            encoded=True,
        )
    return url.with_scheme(scheme).with_host(host).with_port(port)


# -- leases held by response bodies ---------------------------------------------------------------


def _retrieve(closing: asyncio.Future[None]) -> None:
    """Mark a connection's ``closed`` future as looked at: asyncio would otherwise log the
    error of a connection lost before anyone awaits it (the middleware made the future)."""
    if not closing.cancelled():
        closing.exception()


def _forget(
    closing: asyncio.Future[None], callback: Callable[[asyncio.Future[None]], None]
) -> None:
    """Take ``callback`` off ``closing``, from whichever thread (a finalizer may run in any)."""
    loop = closing.get_loop()
    try:
        here = asyncio.get_running_loop()
    except RuntimeError:
        here = None
    if here is loop:
        closing.remove_done_callback(callback)
    elif not loop.is_closed():
        loop.call_soon_threadsafe(closing.remove_done_callback, callback)


# The bodies being read whose answers hold leases, by id(): a StreamReader has __slots__ and
# no __weakref__, so neither an attribute nor a weak mapping can lead from it to its lease.
# The hold keeps its body alive, so an id is never reused while it is here.
_READING: dict[int, _Hold] = {}


class _Reading:
    """Around one read of a held body: a read cancelled marks it; one that reaches the end
    of the body ends the lease."""

    __slots__ = ("_content",)

    def __init__(self, content: StreamReader) -> None:
        self._content = content

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: object, tb: object) -> None:
        hold = _READING.get(id(self._content))
        if hold is None:
            return
        if kind is None:
            if self._content.at_eof():
                hold.end(hold.ok)  # read to the end
        elif not issubclass(kind, Exception):
            hold.ok = None  # cancelled (or interrupted) mid-body: nothing learnt


class _HeldContent(StreamReader):
    """The body of an answer that holds its lease: the response's own ``StreamReader``, its
    class swapped for this one (no slot added, so the layout is the same).

    Why not a public hook: aiohttp tells nobody when a body has been read to the end (its
    ``on_eof`` fires when the body has *arrived*, maybe unread) or released early; every way
    to read it goes through these methods, and release and close through ``set_exception``.
    """

    __slots__ = ()

    async def read(self, n: int = -1) -> bytes:
        with _Reading(self):
            return await super().read(n)

    async def readany(self) -> bytes:
        with _Reading(self):
            return await super().readany()

    async def readchunk(self) -> tuple[bytes, bool]:
        with _Reading(self):
            return await super().readchunk()

    async def readexactly(self, n: int) -> bytes:
        with _Reading(self):
            return await super().readexactly(n)

    async def readuntil(self, *args: Any, **kwargs: Any) -> bytes:
        # readline and iteration by line come here; the arguments vary with aiohttp's version
        with _Reading(self):
            return await super().readuntil(*args, **kwargs)

    def read_nowait(self, n: int = -1) -> bytes:
        with _Reading(self):
            return super().read_nowait(n)

    def set_exception(self, exc: BaseException, *args: Any, **kwargs: Any) -> None:
        # aiohttp sets one on the body when the connection breaks or stalls, and when the
        # response is released or closed before the end (ClientConnectionError "closed").
        super().set_exception(exc, *args, **kwargs)
        hold = _READING.get(id(self))
        if hold is not None:
            hold.ended_early(exc)


@final
class _Hold:
    """An answer's lease, held until its body is read to the end or the response is done."""

    __slots__ = (
        "__weakref__",
        "closing",
        "content",
        "finalizer",
        "lease",
        "ok",
        "owner",
        "session",
    )

    def __init__(self, held: Held[ClientResponse], request: ClientRequest, owner: _Holds) -> None:
        response = held.result
        assert held.lease is not None
        # The lease and verdict, not the Held: a reference to the response would keep an
        # unclosed one from ever being collected.
        self.lease: Lease = held.lease
        self.ok = held.ok
        self.owner = owner
        session = request.session
        self.session = None if session is None else weakref.ref(session)
        content = self.content = response.content
        _READING[id(content)] = self
        if type(content) is StreamReader:
            content.__class__ = _HeldContent
        # else: a body aiohttp never made before; the lease then ends when it has arrived
        content.on_eof(self.arrived)
        # Lost before the end (the session closed under it): nobody may touch the response
        # for a long while, so the protocol's closed future says so at once.
        connection = response.connection
        protocol = None if connection is None else connection.protocol
        # (ResponseHandler.closed is newer than aiohttp 3.12.0: without it, the lease ends
        # when the response is released or collected.)
        self.closing = None if protocol is None else getattr(protocol, "closed", None)
        if self.closing is not None:
            self.closing.remove_done_callback(_retrieve)  # once per connection, not per answer
            self.closing.add_done_callback(_retrieve)
            self.closing.add_done_callback(self.lost)
        # Dropped unread or half read: the lease ends, with no outcome, when it is collected.
        self.finalizer = weakref.finalize(response, self.end, None)

    def end(self, ok: bool | None) -> None:
        """Release the lease with ``ok`` (once: later calls do nothing)."""
        self.finalizer.detach()
        content = self.content
        if _READING.get(id(content)) is self:
            del _READING[id(content)]
        # The body keeps its class: swapping it back could race a read under way (a finalizer
        # runs in any thread), and its reads find no lease here any more.
        closing, self.closing = self.closing, None
        if closing is not None:  # the connection outlives the answer (keep-alive)
            _forget(closing, self.lost)
        if self.lease.release(ok):
            self.owner.discard(self)

    def arrived(self) -> None:
        """The whole body is in: if it is read already (or cannot be watched), that is the end."""
        if self.content.at_eof() or type(self.content) is not _HeldContent:
            self.end(self.ok)

    def ended_early(self, error: BaseException) -> None:
        """The body ended before it was read to the end, with ``error``."""
        ok = self.ok
        session = None if self.session is None else self.session()
        handling = sys.exc_info()[1]  # a read being unwound closes the response
        if session is None or session.closed:
            ok = None  # the client went away, not the server
        elif handling is not None and not isinstance(handling, Exception):
            ok = None  # closed while a cancellation unwinds: nothing learnt
        elif isinstance(error, Exception) and error_kind(error) in _SERVER_FAILED:
            ok = False  # the body broke off or stalled: the server failed after all
        # else: released or closed early by the caller: the headers' verdict stands
        self.end(ok)

    def lost(self, _: asyncio.Future[None]) -> None:
        """The connection closed: before the whole body arrived, nothing more will."""
        content = self.content
        if content.is_eof():
            return  # arrived whole (the server then closed): still there to be read
        failure = content.exception()
        if failure is not None:
            self.ended_early(failure)
        else:  # closed under the body with no word why: the session closing, or the caller
            self.end(None)


_SERVER_FAILED = (ErrorKind.BROKEN, ErrorKind.TIMEOUT)


@final
class _Holds:
    """The middleware's responses still holding leases, so that ``close()`` ends them."""

    __slots__ = ("_holds", "_lock")

    def __init__(self) -> None:
        self._holds: set[_Hold] = set()
        # Reentrant: a garbage collection while the lock is held may collect an unclosed
        # response of this very middleware, whose finalizer discards its hold under the lock.
        self._lock = threading.RLock()

    def add(self, hold: _Hold) -> None:
        with self._lock:
            self._holds.add(hold)

    def discard(self, hold: _Hold) -> None:
        with self._lock:
            self._holds.discard(hold)

    def end_all(self) -> None:
        with self._lock:
            holds, self._holds = self._holds, set()
        for hold in holds:
            hold.end(None)

    def __len__(self) -> int:
        return len(self._holds)


# The longest a retryable answer's body is read for, when no per-try timeout bounds it: a
# 503 whose body stalls must not hold up its retry, or the other hedges.
_BUFFER_TIMEOUT = 1.0


@final
class _Results:
    """How the engine frees the responses that will not be the answer (``AsyncResults``)."""

    __slots__ = ("_timeout",)

    def __init__(self, timeout: float | None) -> None:
        self._timeout = _BUFFER_TIMEOUT if timeout is None else timeout

    async def set_aside(self, result: ClientResponse) -> ClientResponse:
        """Read ``result``'s body (for a bounded time) so that its connection goes back; it
        stays readable (``read()`` answers the buffered body) should it be the answer."""
        try:
            await asyncio.wait_for(result.read(), self._timeout)
        except Exception:  # unreadable or too slow: the attempt is being retried anyway
            pass
        finally:
            if result.connection is not None:  # cancelled or failed: not given back yet
                result.close()
        return result

    def discard(self, result: ClientResponse) -> None:
        """Give ``result``'s connection back (or close it, if its body is unread)."""
        result.release()


# -- the middleware -------------------------------------------------------------------------------


class BalancedMiddleware:
    """An aiohttp client middleware that sends each request to a server picked by a balancer.

    ``balancers``: one ``LoadBalancer`` for every host, or a mapping from logical host to
    balancer; ``policy`` how (``HttpPolicy``). ``policy.retry.per_try_timeout`` bounds each
    attempt up to its response headers: past it the attempt is cancelled, recorded as a
    failure, and retried elsewhere if idempotent (``PerTryTimeout`` if it is the answer).
    ``policy.hedging`` hedges idempotent requests with replayable bodies. A request whose host
    no balancer routes, or whose balancer has no server, raises ``NoBackendAvailable``.
    ``close()`` ends the leases of bodies still open (``open_streams``) with no outcome; the
    session, which the middleware does not own, is closed by its owner. ``meter_provider``
    (an ``opentelemetry.metrics.MeterProvider``) records every attempt on
    ``http.client.request.duration`` (see ``loadbalancer.integrations._semconv``); None, the
    default, records nothing.
    """

    def __init__(
        self,
        balancers: LoadBalancer | Mapping[str, LoadBalancer],
        *,
        policy: HttpPolicy | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        self._routes = Routes(balancers)
        self._policy = check_policy(policy)
        self._results = _Results(self._policy.retry.per_try_timeout)
        self._holds = _Holds()
        self._classifiers = classifiers_by_kind(
            self._policy.rules, status=_status, retry_after=_retry_after, kind=error_kind
        )
        self._metrics: HttpMetrics[ClientResponse] | None = http_metrics(
            meter_provider, status=_status, version=_version
        )

    @property
    def open_streams(self) -> int:
        """Responses returned whose bodies are not read to the end, released or closed yet,
        each holding its lease."""
        return len(self._holds)

    async def __call__(self, request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        """Send ``request`` to a server of its host's balancer, retrying or hedging."""
        policy = self._policy
        host = request.url.host or ""
        try:
            lb = self._routes.balancer(host)
        except UnknownHostError as exc:
            raise NoBackendAvailable(str(exc), host=host) from exc
        idempotent = policy.rules.idempotent(request.method, _marked(request.headers))
        replayable = _replayable(request.body)
        classify = self._classifiers[idempotent, replayable]
        sticky: StickyKey | None = policy.sticky
        key: Key | None = None if sticky is None else sticky.key(request, request.headers.get)

        async def attempt(server: str) -> ClientResponse:
            return await handler(_attempt_request(request, server, policy))

        run: Callable[[str], Awaitable[ClientResponse]] = attempt
        judge: Callable[[Attempt[ClientResponse]], Verdict] = classify
        metrics = self._metrics
        recorder = None
        if metrics is not None:
            url = request.url
            recorder = metrics.request(request.method, host, url.scheme, url.explicit_port)
            run, judge = recorder.asynchronous(attempt), recorder.classify(classify)
        try:
            held = await lb.acall_held(
                run,
                results=self._results,
                key=key,
                retry=policy.retry,
                hedging=policy.hedging if idempotent and replayable else None,
                classify=judge,
            )
        except NoServersAvailableError as exc:
            raise NoBackendAvailable(
                f"no backend available for {host!r}: {exc}", host=host
            ) from exc
        except AttemptTimeoutError as exc:
            error = PerTryTimeout(str(exc))
            if sys.version_info >= (3, 11):  # the budget's say, if it refused a retry
                for note in getattr(exc, "__notes__", ()):
                    error.add_note(note)
            raise error from exc
        finally:
            if recorder is not None:
                recorder.done()
        return self._held(held, request)

    def _held(self, held: Held[ClientResponse], request: ClientRequest) -> ClientResponse:
        """The answer, its lease ending when its connection is given back."""
        response = held.result
        if held.lease is None:
            return response
        if response.content.at_eof():  # no body (HEAD, 204, 304), or an empty one, read
            held.release()
            return response
        self._holds.add(_Hold(held, request, self._holds))
        return response

    def close(self) -> None:
        """End the leases of responses still open, with no outcome (they stay readable)."""
        self._holds.end_all()
