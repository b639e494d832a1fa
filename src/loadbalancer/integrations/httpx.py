"""httpx transports that send each request to a replica picked by a ``LoadBalancer``.

``httpx.Client(transport=BalancedTransport(lb))`` (or ``mounts={"http://inventory":
...}``): a request for ``http://inventory/items/42`` is sent to a server of ``lb``, with the
server's scheme, host and port and the request's own path and query; the attempt's outcome
teaches the balancer, and failed attempts are retried on other servers when that is safe
(``HttpRetry``), within the balancer's retry budget. ``AsyncBalancedTransport`` is the same
for ``httpx.AsyncClient``, with per-try timeouts and optional hedging.

Leases and latency: every response body is streamed to httpx's client, so an attempt's lease
is held until its response is closed, which ``client.get()`` does once the body is read, and
``client.stream()`` when its block ends. In-flight counts are right for streams, and the
latency recorded is the time to the end of the body (to the close, for a stream closed early)
for every request: the transport cannot tell a streamed call from a buffered one. The outcome
is decided on the response headers (a 5xx is a failure), unless reading the body then fails
(a failure) or is cancelled (no outcome). A response never closed ends its lease with no
outcome when it is garbage-collected, or when the transport is closed, whichever is first.

TLS: a server given as an IP address, for an ``https`` request whose Host stays the logical
name, is sent with httpx's ``sni_hostname`` extension set to the logical host, so that the
TLS handshake names, and the certificate is verified against, the service rather than the IP.
A server given by name is verified against its own name. httpx pools connections per
backend address, so a connection opened for one logical name is reused for another name
served by the same address: give each TLS service its own transport (``mounts=``) if their
certificates differ.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, final

import httpx

from loadbalancer import (
    Attempt,
    AttemptTimeoutError,
    Held,
    Key,
    LoadBalancer,
    NoServersAvailableError,
    Verdict,
)

from ._http import (
    ErrorKind,
    HttpClassifier,
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
from ._semconv import HttpMetrics, http_metrics

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider

__all__ = [
    "IDEMPOTENT",
    "AsyncBalancedTransport",
    "BalancedTransport",
    "HttpPolicy",
    "HttpRetry",
    "NoBackendAvailable",
    "PerTryTimeout",
    "StickyKey",
    "error_kind",
]

IDEMPOTENT = "loadbalancer.idempotent"
"""Request extension: ``extensions={IDEMPOTENT: True}`` lets a POST be retried like a GET
(False keeps a GET from being retried after it may have been sent)."""


class NoBackendAvailable(httpx.TransportError):
    """No server could take a request for ``host``: the message says why.

    Raised chained to the ``NoServersAvailableError`` (empty pool, all ejected or unhealthy)
    or ``UnknownHostError`` (no balancer routes the host) behind it.
    """

    def __init__(self, message: str, *, host: str, request: httpx.Request) -> None:
        super().__init__(message, request=request)
        self.host = host


class PerTryTimeout(httpx.ReadTimeout):
    """An async attempt ran past ``policy.retry.per_try_timeout`` and was cancelled.

    An ``httpx.ReadTimeout``, so that ``except httpx.TimeoutException`` catches it; its cause
    is the engine's ``AttemptTimeoutError``.
    """


def error_kind(error: Exception) -> ErrorKind:
    """What an httpx exception says about the attempt (see ``ErrorKind``)."""
    if isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout)):
        return ErrorKind.NOT_SENT
    if isinstance(error, (httpx.ReadTimeout, httpx.WriteTimeout)):
        return ErrorKind.TIMEOUT
    if isinstance(error, (httpx.NetworkError, httpx.RemoteProtocolError)):
        return ErrorKind.BROKEN
    return ErrorKind.LOCAL  # PoolTimeout, UnsupportedProtocol, LocalProtocolError, the rest


_T = TypeVar("_T")


def _check_transport(transport: object, kind: type[_T]) -> _T:
    """Return ``transport`` if it is a ``kind`` (sync or async), else raise naming it."""
    if not isinstance(transport, kind):
        raise TypeError(
            f"transport must be an httpx.{kind.__name__}, not {type(transport).__name__}"
        )
    return transport


def _status(response: httpx.Response) -> int:
    return response.status_code


def _retry_after(response: httpx.Response) -> str | None:
    value: str | None = response.headers.get("retry-after")
    return value


def _version(response: httpx.Response) -> str | None:
    """``network.protocol.version`` of ``response`` (``HTTP/1.1``: ``1.1``), if httpx knows it."""
    version: str = response.http_version  # the "http_version" extension, or HTTP/1.1
    return version.removeprefix("HTTP/") or None


# -- leases held by response bodies ---------------------------------------------------------------


@final
class _Holds:
    """The answers whose bodies are still open, so that closing the transport ends their leases."""

    __slots__ = ("_held", "_lock")

    def __init__(self) -> None:
        self._held: set[Held[httpx.Response]] = set()
        # Reentrant: a garbage collection while the lock is held may run the finalizer of an
        # unclosed body of this very transport, which ends its lease under the same lock.
        self._lock = threading.RLock()

    def add(self, held: Held[httpx.Response]) -> None:
        with self._lock:
            self._held.add(held)

    def end(self, held: Held[httpx.Response], ok: bool | None) -> None:
        """End ``held``'s lease with ``ok`` (once: later calls do nothing)."""
        held.ok = ok
        if held.release():
            with self._lock:
                self._held.discard(held)

    def end_all(self) -> None:
        with self._lock:
            held, self._held = self._held, set()
        for answer in held:
            answer.ok = None
            answer.release()

    def __len__(self) -> int:
        return len(self._held)


class _HeldStream(httpx.SyncByteStream):
    """A response body that ends its answer's lease when closed (or collected)."""

    def __init__(
        self, inner: httpx.SyncByteStream, held: Held[httpx.Response], holds: _Holds
    ) -> None:
        self._inner = inner
        self._held = held
        self._holds = holds

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._inner
        except GeneratorExit:
            raise
        except Exception:
            self._held.ok = False  # the body broke off: the server failed after all
            raise
        except BaseException:
            self._held.ok = None
            raise

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._holds.end(self._held, self._held.ok)

    def __del__(self) -> None:
        # Never closed (the caller dropped a streamed response): no outcome. A __del__ costs
        # nothing until it runs, where a weakref.finalize costs 3 µs per response.
        self._holds.end(self._held, None)


class _AsyncHeldStream(httpx.AsyncByteStream):
    """The asyncio twin of ``_HeldStream``; a body read cancelled records no outcome."""

    def __init__(
        self, inner: httpx.AsyncByteStream, held: Held[httpx.Response], holds: _Holds
    ) -> None:
        self._inner = inner
        self._held = held
        self._holds = holds

    def __aiter__(self) -> AsyncIterator[bytes]:
        # An iterator object, not an async generator: asyncio registers every async generator
        # (a weak set, a hook per first iteration), which costs more than the whole read.
        return _HeldChunks(self._inner.__aiter__(), self._held)

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._holds.end(self._held, self._held.ok)

    def __del__(self) -> None:
        self._holds.end(self._held, None)  # never closed: see _HeldStream.__del__


@final
class _HeldChunks:
    """The chunks of an async body, noting on its answer how reading them ended."""

    __slots__ = ("_chunks", "_held")

    def __init__(self, chunks: AsyncIterator[bytes], held: Held[httpx.Response]) -> None:
        self._chunks = chunks
        self._held = held

    def __aiter__(self) -> _HeldChunks:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self._chunks.__anext__()
        except StopAsyncIteration:
            raise
        except Exception:
            self._held.ok = False  # the body broke off: the server failed after all
            raise
        except BaseException:
            self._held.ok = None  # the read was cancelled: nothing learnt
            raise


def _with_stream(
    response: httpx.Response, stream: httpx.SyncByteStream | httpx.AsyncByteStream
) -> httpx.Response:
    return httpx.Response(
        response.status_code,
        headers=response.headers,
        stream=stream,
        extensions=response.extensions,
    )


# -- results that are not the answer ---------------------------------------------------------------


@final
class _SyncResults:
    """``Results`` for httpx responses: a response being retried is read and closed."""

    __slots__ = ()

    def set_aside(self, response: httpx.Response) -> httpx.Response:
        """``response`` with its raw body read and its connection given back (a body that
        cannot be read is left empty: the attempt is being retried anyway)."""
        stream = response.stream
        assert isinstance(stream, httpx.SyncByteStream)
        try:
            body = b"".join(stream)  # the stream itself: raw bytes, as the server sent them
        except Exception:
            body = b""
        finally:
            response.close()
        return _with_stream(response, httpx.ByteStream(body))

    def discard(self, response: httpx.Response) -> None:
        """Close ``response``: its connection goes back to the pool."""
        response.close()


# The longest a retryable answer's body is read for, when no per-try timeout bounds it: a
# 503 whose body stalls must not hold up its retry, or the other hedges.
_BUFFER_TIMEOUT = 1.0

# Tasks nobody awaits (responses being closed), held until they finish: asyncio keeps only
# weak references to tasks.
_closing: set[asyncio.Task[Any]] = set()


@final
class _AsyncResults:
    """``AsyncResults`` for httpx responses: read with a bound, or closed in a task."""

    __slots__ = ("_timeout",)

    def __init__(self, timeout: float | None) -> None:
        self._timeout = _BUFFER_TIMEOUT if timeout is None else timeout

    async def set_aside(self, response: httpx.Response) -> httpx.Response:
        """The asyncio twin of ``_SyncResults.set_aside``, reading for at most the per-try
        timeout (1 s without one)."""
        stream = response.stream
        assert isinstance(stream, httpx.AsyncByteStream)

        async def read() -> bytes:
            return b"".join([chunk async for chunk in stream])

        try:
            body = await asyncio.wait_for(read(), self._timeout)
        except Exception:  # unreadable or too slow: the attempt is being retried anyway
            body = b""
        finally:
            await response.aclose()
        return _with_stream(response, httpx.ByteStream(body))

    def discard(self, response: httpx.Response) -> None:
        """Close ``response`` in a task of its own, so that nobody waits for it."""
        closing = asyncio.ensure_future(response.aclose())
        _closing.add(closing)
        closing.add_done_callback(_closing.discard)


# -- what both transports share --------------------------------------------------------------------


@final
class _Router:
    """A transport's routes and policy, and the classifiers its requests are judged by."""

    __slots__ = ("_classifiers", "_routes", "metrics", "policy")

    def __init__(
        self,
        balancers: LoadBalancer | Mapping[str, LoadBalancer],
        policy: object,
        meter_provider: object,
    ) -> None:
        self._routes = Routes(balancers)
        self.policy = check_policy(policy)
        self._classifiers = classifiers_by_kind(
            self.policy.rules, status=_status, retry_after=_retry_after, kind=error_kind
        )
        self.metrics: HttpMetrics[httpx.Response] | None = http_metrics(
            meter_provider, status=_status, version=_version
        )

    def route(
        self, request: httpx.Request
    ) -> tuple[LoadBalancer, Key | None, bool, HttpClassifier[httpx.Response]]:
        """The balancer, sticky key, whether it may be sent twice, and classifier of ``request``."""
        host = request.url.host
        try:
            lb = self._routes.balancer(host)
        except UnknownHostError as exc:
            raise NoBackendAvailable(str(exc), host=host, request=request) from exc
        policy = self.policy
        marked = request.extensions.get(IDEMPOTENT)
        idempotent = policy.rules.idempotent(
            request.method, None if marked is None else bool(marked)
        )
        replayable = isinstance(request.stream, httpx.ByteStream)  # bytes: sent again as is
        sticky = policy.sticky
        key = None if sticky is None else sticky.key(request, request.headers.get)
        return lb, key, idempotent and replayable, self._classifiers[idempotent, replayable]


def _no_backend(request: httpx.Request, error: NoServersAvailableError) -> NoBackendAvailable:
    host = request.url.host
    return NoBackendAvailable(
        f"no backend available for {host!r}: {error}", host=host, request=request
    )


def _attempt_request(
    request: httpx.Request, server: str, policy: HttpPolicy, per_try: float | None
) -> httpx.Request:
    """``request`` addressed to ``server``: its scheme, host and port; the path and query kept."""
    backend = parse_server(server)
    url = request.url
    scheme = backend.scheme or url.scheme
    port = backend.port if backend.port is not None else url.port
    # httpx.Request copies the headers and extensions it is given: change the copies.
    attempt = httpx.Request(
        request.method,
        readdressed(url, scheme, backend.host, port),
        headers=request.headers,
        stream=request.stream,
        extensions=request.extensions,
    )
    extensions = attempt.extensions
    if policy.host_header == "backend":
        attempt.headers["Host"] = host_header(backend, scheme, port)
    elif scheme == "https" and backend.is_ip and "sni_hostname" not in extensions:
        extensions["sni_hostname"] = url.host
    if per_try is not None:
        given: Mapping[str, float | None] = extensions.get("timeout") or {}
        capped: dict[str, float] = {}
        for name in ("connect", "read", "write", "pool"):
            seconds = given.get(name)
            capped[name] = per_try if seconds is None else min(per_try, seconds)
        extensions["timeout"] = capped
    return attempt


def _can_readdress_fast() -> bool:
    """Whether this httpx keeps a URL's parts in the ``_uri_reference`` named tuple that
    ``readdressed`` replaces them in (true of httpx 0.23 to 0.28, at least)."""
    try:
        parts = httpx.URL("http://a:81/p?q")._uri_reference
        return tuple(parts) == ("http", "", "a", 81, "/p", "q", None) and hasattr(parts, "_replace")
    except Exception:  # another httpx: the public way still works
        return False


_FAST_URLS = _can_readdress_fast()
_DEFAULT_PORTS = {"http": 80, "https": 443}


def readdressed(url: httpx.URL, scheme: str, host: str, port: int | None) -> httpx.URL:
    """``url`` with ``scheme``, ``host`` and ``port`` replaced; userinfo, path and query kept.

    ``url.copy_with`` parses and validates the whole URL again, some 15 µs: more than all the
    rest of the balancer's work per request. ``host`` and ``port`` come from ``parse_server``,
    already checked, so an ASCII host (a name lower-cased, or an IP address) goes straight
    into httpx's own parts tuple, normalised as httpx does (a default port is None); a test
    checks the two ways agree. Any other host, or an httpx without that tuple, takes the
    public way.
    """
    if _FAST_URLS and host.isascii():
        parts = url._uri_reference
        fast = httpx.URL.__new__(httpx.URL)
        fast._uri_reference = parts._replace(
            scheme=scheme, host=host, port=None if _DEFAULT_PORTS.get(scheme) == port else port
        )
        return fast
    return url.copy_with(scheme=scheme, host=host, port=port)


# -- the transports -------------------------------------------------------------------------------


class BalancedTransport(httpx.BaseTransport):
    """An httpx transport that sends each request to a server picked by a balancer.

    ``balancers``: one ``LoadBalancer`` for every host, or a mapping from logical host to
    balancer. ``transport`` sends each attempt (default ``httpx.HTTPTransport()``, so
    pooling, HTTP/2 and TLS stay httpx's); ``policy`` how (``HttpPolicy``). A retry waits
    with the balancer's ``sleep``. ``policy.retry.per_try_timeout`` caps httpx's connect,
    read, write and pool timeouts of each attempt (a blocking attempt cannot be cut off as a
    whole). ``close()`` closes the inner transport and ends the leases of bodies still open.
    ``meter_provider`` (an ``opentelemetry.metrics.MeterProvider``) records every attempt on
    ``http.client.request.duration`` (see ``loadbalancer.integrations._semconv``); None, the
    default, records nothing.
    """

    def __init__(
        self,
        balancers: LoadBalancer | Mapping[str, LoadBalancer],
        *,
        transport: httpx.BaseTransport | None = None,
        policy: HttpPolicy | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        self._router = _Router(balancers, policy, meter_provider)
        self._transport = (
            httpx.HTTPTransport()
            if transport is None
            else _check_transport(transport, httpx.BaseTransport)
        )
        self._holds = _Holds()

    @property
    def open_streams(self) -> int:
        """Responses returned whose bodies are not closed yet, each holding its lease."""
        return len(self._holds)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` to a server of its host's balancer, retrying where safe."""
        lb, key, _, classify = self._router.route(request)
        policy = self._router.policy
        per_try = policy.retry.per_try_timeout
        send = self._transport.handle_request

        def attempt(server: str) -> httpx.Response:
            return send(_attempt_request(request, server, policy, per_try))

        run: Callable[[str], httpx.Response] = attempt
        metrics = self._router.metrics
        if metrics is not None:
            url = request.url
            run = metrics.request(request.method, url.host, url.scheme, url.port).sync(attempt)
        try:
            held = lb.call_held(
                run, results=_SYNC_RESULTS, key=key, retry=policy.retry, classify=classify
            )
        except NoServersAvailableError as exc:
            raise _no_backend(request, exc) from exc
        response = held.result
        if held.lease is None or response.is_closed:
            # Set aside for a retry that never went out, or read whole by the inner transport
            # (a MockTransport does): the body holds nothing, so neither does the answer.
            held.release()
            return response
        stream = response.stream
        assert isinstance(stream, httpx.SyncByteStream)
        self._holds.add(held)
        # A new Response, not the inner one with its stream swapped: ``held`` keeps the inner
        # one, so the caller's must be another for a dropped body to be collected.
        return _with_stream(response, _HeldStream(stream, held, self._holds))

    def close(self) -> None:
        """Close the inner transport; bodies still open end their leases with no outcome."""
        try:
            self._transport.close()
        finally:
            self._holds.end_all()


_SYNC_RESULTS = _SyncResults()


class AsyncBalancedTransport(httpx.AsyncBaseTransport):
    """The asyncio twin of ``BalancedTransport``, for ``httpx.AsyncClient``.

    ``policy.retry.per_try_timeout`` bounds each attempt up to its response headers: past it
    the attempt is cancelled, recorded as a failure, and retried elsewhere if idempotent (the
    last raises ``PerTryTimeout``); httpx's own read timeout bounds each read of the body.
    ``policy.hedging`` hedges idempotent requests with replayable bodies (off by default).
    Cancelling the request cancels every attempt, each with no outcome. ``aclose()`` closes
    the inner transport and ends the leases of bodies still open. ``meter_provider``: as
    ``BalancedTransport``'s.
    """

    def __init__(
        self,
        balancers: LoadBalancer | Mapping[str, LoadBalancer],
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        policy: HttpPolicy | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        self._router = _Router(balancers, policy, meter_provider)
        self._transport = (
            httpx.AsyncHTTPTransport()
            if transport is None
            else _check_transport(transport, httpx.AsyncBaseTransport)
        )
        self._results = _AsyncResults(self._router.policy.retry.per_try_timeout)
        self._holds = _Holds()

    @property
    def open_streams(self) -> int:
        """Responses returned whose bodies are not closed yet, each holding its lease."""
        return len(self._holds)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` to a server of its host's balancer, retrying or hedging."""
        lb, key, twice, classify = self._router.route(request)
        policy = self._router.policy
        send = self._transport.handle_async_request

        def attempt(server: str) -> Awaitable[httpx.Response]:
            return send(_attempt_request(request, server, policy, None))

        run: Callable[[str], Awaitable[httpx.Response]] = attempt
        judge: Callable[[Attempt[httpx.Response]], Verdict] = classify
        metrics = self._router.metrics
        recorder = None
        if metrics is not None:
            url = request.url
            recorder = metrics.request(request.method, url.host, url.scheme, url.port)
            run, judge = recorder.asynchronous(attempt), recorder.classify(classify)
        try:
            held = await lb.acall_held(
                run,
                results=self._results,
                key=key,
                retry=policy.retry,
                hedging=policy.hedging if twice else None,
                classify=judge,
            )
        except NoServersAvailableError as exc:
            raise _no_backend(request, exc) from exc
        except AttemptTimeoutError as exc:
            error = PerTryTimeout(str(exc), request=request)
            if sys.version_info >= (3, 11):  # notes: the budget's, if it refused a retry
                for note in getattr(exc, "__notes__", ()):
                    error.add_note(note)
            raise error from exc
        finally:
            if recorder is not None:
                recorder.done()
        response = held.result
        if held.lease is None or response.is_closed:
            held.release()  # nothing left to read: see BalancedTransport.handle_request
            return response
        stream = response.stream
        assert isinstance(stream, httpx.AsyncByteStream)
        self._holds.add(held)
        return _with_stream(response, _AsyncHeldStream(stream, held, self._holds))

    async def aclose(self) -> None:
        """Close the inner transport; bodies still open end their leases with no outcome."""
        try:
            await self._transport.aclose()
        finally:
            self._holds.end_all()
