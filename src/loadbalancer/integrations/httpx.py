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
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any, TypeVar, final

import httpx

from loadbalancer import (
    Attempt,
    AttemptTimeoutError,
    HedgingPolicy,
    Key,
    Lease,
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
    host_header,
    parse_server,
)

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


def _check_policy(policy: object) -> HttpPolicy:
    """``policy``, or the default ``HttpPolicy()`` for None; anything else raises."""
    if policy is None:
        return HttpPolicy()
    if not isinstance(policy, HttpPolicy):
        raise TypeError(f"policy must be an HttpPolicy, not {type(policy).__name__}")
    return policy


def _status(response: httpx.Response) -> int:
    return response.status_code


def _retry_after(response: httpx.Response) -> str | None:
    value: str | None = response.headers.get("retry-after")
    return value


# -- leases held by response bodies ---------------------------------------------------------------


@final
class _Hold:
    """An attempt's lease, held by its response body until the body is closed."""

    __slots__ = ("lease", "ok", "owner")

    def __init__(self, lease: Lease, ok: bool | None, owner: _Holds) -> None:
        self.lease = lease
        self.ok = ok
        self.owner = owner

    def end(self, ok: bool | None) -> None:
        """Release the lease with ``ok`` (once: later calls do nothing)."""
        if self.lease.release(ok):
            self.owner.discard(self)


@final
class _Holds:
    """The transport's bodies still open, so that closing the transport ends their leases."""

    __slots__ = ("_holds", "_lock")

    def __init__(self) -> None:
        self._holds: set[_Hold] = set()
        # Reentrant: a garbage collection while the lock is held may run the finalizer of an
        # unclosed body of this very transport, which discards its hold under the same lock.
        self._lock = threading.RLock()

    def hold(self, lease: Lease, ok: bool | None) -> _Hold:
        hold = _Hold(lease, ok, self)
        with self._lock:
            self._holds.add(hold)
        return hold

    def discard(self, hold: _Hold) -> None:
        with self._lock:
            self._holds.discard(hold)

    def end_all(self) -> None:
        with self._lock:
            holds, self._holds = self._holds, set()
        for hold in holds:
            hold.lease.release(None)

    def __len__(self) -> int:
        return len(self._holds)


class _HeldStream(httpx.SyncByteStream):
    """A response body that ends its attempt's lease when closed (or collected)."""

    def __init__(self, inner: httpx.SyncByteStream, hold: _Hold) -> None:
        self._inner = inner
        self._hold = hold
        self._finalizer = weakref.finalize(self, hold.end, None)

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._inner
        except GeneratorExit:
            raise
        except Exception:
            self._hold.ok = False  # the body broke off: the server failed after all
            raise
        except BaseException:
            self._hold.ok = None
            raise

    def close(self) -> None:
        self._finalizer.detach()
        try:
            self._inner.close()
        finally:
            self._hold.end(self._hold.ok)


class _AsyncHeldStream(httpx.AsyncByteStream):
    """The asyncio twin of ``_HeldStream``; a body read cancelled records no outcome."""

    def __init__(self, inner: httpx.AsyncByteStream, hold: _Hold) -> None:
        self._inner = inner
        self._hold = hold
        self._finalizer = weakref.finalize(self, hold.end, None)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                yield chunk
        except GeneratorExit:
            raise
        except Exception:
            self._hold.ok = False
            raise
        except BaseException:
            self._hold.ok = None
            raise

    async def aclose(self) -> None:
        self._finalizer.detach()
        try:
            await self._inner.aclose()
        finally:
            self._hold.end(self._hold.ok)


# -- what both transports share --------------------------------------------------------------------


class _Plan:
    """One request's routing, key and classifier, shared by its attempts."""

    __slots__ = ("classify", "host", "idempotent", "key", "lb", "request")

    def __init__(self, request: httpx.Request, routes: Routes, policy: HttpPolicy) -> None:
        host = request.url.host
        self.request = request
        self.host = host
        try:
            self.lb = routes.balancer(host)
        except UnknownHostError as exc:
            raise NoBackendAvailable(str(exc), host=host, request=request) from exc
        marked = request.extensions.get(IDEMPOTENT)
        rules = policy.rules
        idempotent = rules.idempotent(request.method, None if marked is None else bool(marked))
        replayable = isinstance(request.stream, httpx.ByteStream)  # bytes: sent again as is
        self.idempotent = idempotent and replayable  # may be sent twice: retried, hedged
        self.classify: HttpClassifier[httpx.Response] = HttpClassifier(
            rules,
            idempotent=idempotent,
            replayable=replayable,
            status=_status,
            retry_after=_retry_after,
            kind=error_kind,
        )
        sticky: StickyKey | None = policy.sticky
        self.key: Key | None = None if sticky is None else sticky.key(request, request.headers.get)

    def acquire(self, tried: list[str]) -> Lease:
        """Lease a server not tried yet; ``NoBackendAvailable`` if there is none."""
        try:
            lease = self.lb.acquire(self.key, tried) if tried else self.lb.acquire(self.key)
        except NoServersAvailableError as exc:
            raise NoBackendAvailable(
                f"no backend available for {self.host!r}: {exc}",
                host=self.host,
                request=self.request,
            ) from exc
        if lease.server in tried:
            # Every eligible server was tried: the balancer's pick then ignores exclude, but a
            # retry or hedge must go to another server, so none is left for this request.
            lease.release(None)
            raise NoBackendAvailable(
                f"no backend left for {self.host!r}: every eligible server was tried",
                host=self.host,
                request=self.request,
            )
        return lease


def _attempt_request(
    request: httpx.Request, server: str, policy: HttpPolicy, per_try: float | None
) -> httpx.Request:
    """``request`` addressed to ``server``: its scheme, host and port; the path and query kept."""
    backend = parse_server(server)
    url = request.url
    scheme = backend.scheme or url.scheme
    port = backend.port if backend.port is not None else url.port
    headers = request.headers.copy()
    extensions = dict(request.extensions)
    if policy.host_header == "backend":
        headers["Host"] = host_header(backend, scheme, port)
    elif scheme == "https" and backend.is_ip and "sni_hostname" not in extensions:
        extensions["sni_hostname"] = url.host
    if per_try is not None:
        given: Mapping[str, float | None] = extensions.get("timeout") or {}
        capped: dict[str, float] = {}
        for name in ("connect", "read", "write", "pool"):
            seconds = given.get(name)
            capped[name] = per_try if seconds is None else min(per_try, seconds)
        extensions["timeout"] = capped
    return httpx.Request(
        request.method,
        url.copy_with(scheme=scheme, host=backend.host, port=port),
        headers=headers,
        stream=request.stream,
        extensions=extensions,
    )


# -- the transports -------------------------------------------------------------------------------


class BalancedTransport(httpx.BaseTransport):
    """An httpx transport that sends each request to a server picked by a balancer.

    ``balancers``: one ``LoadBalancer`` for every host, or a mapping from logical host to
    balancer. ``transport`` sends each attempt (default ``httpx.HTTPTransport()``, so
    pooling, HTTP/2 and TLS stay httpx's); ``policy`` how (``HttpPolicy``); ``sleep`` waits
    before a retry. ``policy.retry.per_try_timeout`` caps httpx's connect, read, write and
    pool timeouts of each attempt (a blocking attempt cannot be cut off as a whole).
    ``close()`` closes the inner transport and ends the leases of bodies still open.
    """

    def __init__(
        self,
        balancers: LoadBalancer | Mapping[str, LoadBalancer],
        *,
        transport: httpx.BaseTransport | None = None,
        policy: HttpPolicy | None = None,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        self._routes = Routes(balancers)
        self._policy = _check_policy(policy)
        if not callable(sleep):
            raise TypeError(f"sleep must be callable, not {type(sleep).__name__}")
        self._transport = (
            httpx.HTTPTransport()
            if transport is None
            else _check_transport(transport, httpx.BaseTransport)
        )
        self._sleep = sleep
        self._holds = _Holds()

    @property
    def open_streams(self) -> int:
        """Responses returned whose bodies are not closed yet, each holding its lease."""
        return len(self._holds)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` to a server of its host's balancer, retrying where safe."""
        plan = _Plan(request, self._routes, self._policy)
        policy = self._policy
        retry = policy.retry
        budget = plan.lb.retry_budget
        budget.deposit()
        tried: list[str] = []
        lease = plan.acquire(tried)
        number = 1
        while True:
            response: httpx.Response | None = None
            error: Exception | None = None
            try:
                response = self._transport.handle_request(
                    _attempt_request(request, lease.server, policy, retry.per_try_timeout)
                )
            except Exception as exc:
                error = exc
            except BaseException:
                lease.release(None)  # the caller went away: nothing learnt about the server
                raise
            try:
                verdict = plan.classify(Attempt(lease.server, number, response, error))
            except BaseException:
                lease.release(None)
                if response is not None:
                    response.close()
                raise
            delay = retry.delay(number, verdict) if verdict.retry else None
            wanted = delay is not None and number < retry.attempts
            if wanted and budget.withdraw():
                assert delay is not None
                lease.release(verdict.ok)
                if response is not None:
                    response = _buffered(response)  # kept in case no server is left to retry
                tried.append(lease.server)
                try:
                    self._sleep(delay)
                    next_lease: Lease | None = plan.acquire(tried)
                except NoBackendAvailable:
                    budget.refund()  # every server went away meanwhile: this is the answer
                    next_lease = None
                except BaseException:
                    budget.refund()  # interrupted while waiting: the retry never went out
                    raise
                if next_lease is None:
                    if response is None:
                        assert error is not None
                        raise error  # outside the except: its own cause chain stays intact
                    return response
                lease = next_lease
                number += 1
                continue
            if response is None:
                lease.release(verdict.ok)
                assert error is not None
                if wanted:  # a retry was due, and the budget refused it
                    _note_budget(error, plan.host)
                raise error
            return self._held(response, lease, verdict.ok)

    def _held(self, response: httpx.Response, lease: Lease, ok: bool | None) -> httpx.Response:
        stream = response.stream
        assert isinstance(stream, httpx.SyncByteStream)
        hold = self._holds.hold(lease, ok)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_HeldStream(stream, hold),
            extensions=response.extensions,
        )

    def close(self) -> None:
        """Close the inner transport; bodies still open end their leases with no outcome."""
        try:
            self._transport.close()
        finally:
            self._holds.end_all()


def _note_budget(error: Exception, host: str) -> None:
    """Say on ``error`` (Python 3.11+: ``add_note``) that the budget stopped its retry."""
    if sys.version_info >= (3, 11):
        error.add_note(
            f"loadbalancer: not retried on another server of {host!r}: "
            "the retry budget is exhausted"
        )


def _buffered(response: httpx.Response) -> httpx.Response:
    """``response`` with its raw body read and its connection given back (a body that cannot
    be read is left empty: the attempt is being retried anyway)."""
    stream = response.stream
    assert isinstance(stream, httpx.SyncByteStream)
    try:
        body = b"".join(stream)  # the stream itself: raw bytes, whatever the Response has read
    except Exception:
        body = b""
    finally:
        response.close()
    return httpx.Response(
        response.status_code,
        headers=response.headers,
        stream=httpx.ByteStream(body),
        extensions=response.extensions,
    )


# The longest a retryable answer's body is read for, when no per-try timeout bounds it: a
# 503 whose body stalls must not hold up its retry, or the other hedges.
_BUFFER_TIMEOUT = 1.0


async def _abuffered(response: httpx.Response, timeout: float | None) -> httpx.Response:
    """The asyncio twin of ``_buffered``, reading for at most ``timeout`` (default 1 s)."""
    stream = response.stream
    assert isinstance(stream, httpx.AsyncByteStream)

    async def read() -> bytes:
        return b"".join([chunk async for chunk in stream])

    try:
        body = await asyncio.wait_for(read(), _BUFFER_TIMEOUT if timeout is None else timeout)
    except Exception:  # unreadable or too slow: the attempt is being retried anyway
        body = b""
    finally:
        await response.aclose()
    return httpx.Response(
        response.status_code,
        headers=response.headers,
        stream=httpx.ByteStream(body),
        extensions=response.extensions,
    )


_Answer = tuple["httpx.Response | None", "Exception | None"]


class AsyncBalancedTransport(httpx.AsyncBaseTransport):
    """The asyncio twin of ``BalancedTransport``, for ``httpx.AsyncClient``.

    ``policy.retry.per_try_timeout`` bounds each attempt up to its response headers: past it
    the attempt is cancelled, recorded as a failure, and retried elsewhere if idempotent.
    ``policy.hedging`` hedges idempotent requests with replayable bodies (off by default).
    Cancelling the request cancels every attempt, each with no outcome. ``aclose()`` closes
    the inner transport and ends the leases of bodies still open.
    """

    def __init__(
        self,
        balancers: LoadBalancer | Mapping[str, LoadBalancer],
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        policy: HttpPolicy | None = None,
    ) -> None:
        self._routes = Routes(balancers)
        self._policy = _check_policy(policy)
        self._transport = (
            httpx.AsyncHTTPTransport()
            if transport is None
            else _check_transport(transport, httpx.AsyncBaseTransport)
        )
        self._holds = _Holds()

    @property
    def open_streams(self) -> int:
        """Responses returned whose bodies are not closed yet, each holding its lease."""
        return len(self._holds)

    async def _attempt(self, request: httpx.Request, server: str) -> _Answer:
        timeout = self._policy.retry.per_try_timeout
        send: Awaitable[httpx.Response] = self._transport.handle_async_request(
            _attempt_request(request, server, self._policy, None)
        )
        try:
            if timeout is None:
                return await send, None
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            try:
                return await asyncio.wait_for(send, timeout), None
            except asyncio.TimeoutError as exc:  # httpx's own timeouts are TimeoutException
                if loop.time() < deadline:
                    return None, exc  # raised by the transport itself, not the policy's timeout
                message = f"attempt on {server} took over {timeout:g} s"
                error = PerTryTimeout(message, request=request)
                error.__cause__ = AttemptTimeoutError(message)
                return None, error
        except Exception as exc:
            return None, exc

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` to a server of its host's balancer, retrying or hedging."""
        plan = _Plan(request, self._routes, self._policy)
        flight = _Flight(self, plan, request)
        try:
            response, lease, ok = await flight.run()
        finally:
            flight.abandon()
        if lease is None:
            return response
        stream = response.stream
        assert isinstance(stream, httpx.AsyncByteStream)
        hold = self._holds.hold(lease, ok)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_AsyncHeldStream(stream, hold),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        """Close the inner transport; bodies still open end their leases with no outcome."""
        try:
            await self._transport.aclose()
        finally:
            self._holds.end_all()


@final
class _Flight:
    """The attempts of one async request: retries one after another, or hedges side by side."""

    __slots__ = ("_hedging", "_plan", "_request", "_transport", "launched", "running", "tried")

    def __init__(
        self, transport: AsyncBalancedTransport, plan: _Plan, request: httpx.Request
    ) -> None:
        self._transport = transport
        self._plan = plan
        self._request = request
        hedging: HedgingPolicy | None = transport._policy.hedging
        self._hedging = hedging if plan.idempotent else None
        self.launched = 0
        self.running: dict[asyncio.Task[_Answer], tuple[Lease, int]] = {}
        self.tried: list[str] = []

    def launch(self) -> bool:
        """Start an attempt on a server not tried yet; False if none is left (the first
        attempt raises ``NoBackendAvailable`` instead)."""
        try:
            lease = self._plan.acquire(self.tried)
        except NoBackendAvailable:
            if self.launched == 0:
                raise
            return False
        self.launched += 1
        self.tried.append(lease.server)
        task = asyncio.ensure_future(self._transport._attempt(self._request, lease.server))
        self.running[task] = (lease, self.launched)
        return True

    def launch_hedge(self) -> bool:
        budget = self._plan.lb.retry_budget
        if not budget.withdraw(hedge=True):
            return False
        if self.launch():
            return True
        budget.refund(hedge=True)
        return False

    async def run(self) -> tuple[httpx.Response, Lease | None, bool | None]:
        """The answer: a response and the lease its body holds (None: already released)."""
        plan = self._plan
        retry = self._transport._policy.retry
        budget = plan.lb.retry_budget
        hedging = self._hedging
        limit = retry.attempts if hedging is None else hedging.attempts
        loop = asyncio.get_running_loop()
        budget.deposit()
        self.launch()
        next_hedge = None if hedging is None else loop.time() + hedging.delay
        last: _Answer = (None, None)
        refused = False  # a retry was due, and the budget refused it
        while self.running:
            wait = None
            if next_hedge is not None and self.launched < limit:
                wait = max(next_hedge - loop.time(), 0.0)
            done, _ = await asyncio.wait(
                self.running, timeout=wait, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:  # no answer within the hedging delay: one more, elsewhere
                assert hedging is not None
                next_hedge = loop.time() + hedging.delay
                if not self.launch_hedge():
                    next_hedge = None
                continue
            judged = self._judge(done)
            winner = next((j for j in judged if not j[4].retry), None)
            for entry in judged:  # every lease ends now: nothing below can leak one
                if entry is not winner:
                    entry[0].release(entry[4].ok)
            if winner is not None:
                for entry in judged:
                    if entry is not winner and entry[2] is not None:
                        _close_soon(entry[2])  # a loser's answer: its connection goes back
                lease, number, response, error, verdict = winner
                if response is None:
                    lease.release(verdict.ok)
                    assert error is not None
                    raise error
                return response, lease, verdict.ok
            for entry in judged[:-1]:
                if entry[2] is not None:
                    _close_soon(entry[2])
            response, error = judged[-1][2], judged[-1][3]
            # Kept, read and closed, in case no retry goes out: then it is the answer.
            if response is not None:
                response = await _abuffered(response, retry.per_try_timeout)
            last = (response, error)
            _, number, _, _, verdict = judged[-1]
            if hedging is not None:
                for _ in judged:  # gRPC A6: each retryable failure sends the next hedge at once
                    if self.launched < limit and self.launch_hedge():
                        next_hedge = loop.time() + hedging.delay
            elif self.launched < limit:
                delay = retry.delay(number, verdict)
                if delay is not None and budget.withdraw():
                    try:
                        await asyncio.sleep(delay)
                    except BaseException:
                        budget.refund()  # cancelled while waiting: the retry never went out
                        raise
                    if not self.launch():
                        budget.refund()
                elif delay is not None:
                    refused = True
        response, error = last
        if error is not None:
            if refused:
                _note_budget(error, plan.host)
            raise error
        assert response is not None
        return response, None, None

    def _judge(
        self, done: set[asyncio.Task[_Answer]]
    ) -> list[tuple[Lease, int, httpx.Response | None, Exception | None, Verdict]]:
        """Classify the finished attempts, in attempt order; if anything raises, every
        lease of theirs ends with no outcome and their responses are closed."""
        answers = []
        for task in sorted(done, key=lambda t: self.running[t][1]):
            lease, number = self.running.pop(task)
            answers.append((lease, number, task))
        judged = []
        try:
            for lease, number, task in answers:
                response, error = task.result()
                verdict = self._plan.classify(Attempt(lease.server, number, response, error))
                judged.append((lease, number, response, error, verdict))
        except BaseException:
            for lease, _, task in answers:
                lease.release(None)
                _close_later(task)
            raise
        return judged

    def abandon(self) -> None:
        """Cancel the attempts still running, each lease ending with no outcome; a response
        that arrived meanwhile is closed."""
        running, self.running = self.running, {}
        for task, (lease, _) in running.items():
            lease.release(None)
            if task.done():
                _close_later(task)
            else:
                task.cancel()
                _closing.add(task)  # held until done: asyncio keeps only weak references
                task.add_done_callback(_closing.discard)
                task.add_done_callback(_close_later)


# Tasks nobody awaits (abandoned attempts, responses being closed), held until they finish.
_closing: set[asyncio.Task[Any]] = set()


def _close_later(task: asyncio.Task[_Answer]) -> None:
    """Close the response of an attempt whose answer nobody will read."""
    if task.cancelled() or task.exception() is not None:
        return
    response, _ = task.result()
    if response is not None:
        _close_soon(response)


def _close_soon(response: httpx.Response) -> None:
    """Close ``response`` in a task of its own, so that nobody waits for it."""
    closing = asyncio.ensure_future(response.aclose())
    _closing.add(closing)
    closing.add_done_callback(_closing.discard)
