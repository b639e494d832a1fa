"""What the sync and asyncio balanced gRPC channels share: policy, outcomes, keys, backends.

A call's outcome comes from its status code (``GrpcPolicy``); a retry follows gRPC A6: only
for a retryable code, only before the call is committed (response headers or a message have
arrived), never against server pushback that says no (``grpc-retry-pushback-ms``). One real
channel per backend is kept by ``Backends``, which follows the balancer's membership through
``LoadBalancer.watch_servers`` and closes a departed server's channel once its calls end.
"""

from __future__ import annotations

import abc
import logging
import re
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, final

import grpc

from loadbalancer import (
    Attempt,
    AttemptTimeoutError,
    HedgingPolicy,
    Key,
    Lease,
    LoadBalancer,
    NoServersAvailableError,
    RetryPolicy,
    Verdict,
)

_log = logging.getLogger("loadbalancer.integrations.grpc")

__all__ = [
    "DEFAULT_FAILURE_CODES",
    "DEFAULT_RETRYABLE_CODES",
    "PUSHBACK",
    "Backend",
    "Backends",
    "BalancedChannelBase",
    "Deserializer",
    "GrpcPolicy",
    "LocalRpcError",
    "Metadata",
    "MethodCalls",
    "Opened",
    "Serializer",
    "StickyKey",
    "best_state",
    "check_channel_arguments",
    "check_lb",
    "deadline_of",
    "first_value",
    "rpc_facts",
    "time_left",
]

C = TypeVar("C")

Metadata = Sequence[tuple[str, str | bytes]]
_AnyMetadata = Iterable[tuple[str, str | bytes]]  # a Metadata, or a grpc.aio.Metadata
Serializer = Callable[[Any], bytes] | None
Deserializer = Callable[[bytes], Any] | None

PUSHBACK = "grpc-retry-pushback-ms"
"""Trailing metadata by which a server asks for a retry after a delay, or for none (gRPC A6)."""

DEFAULT_RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})
"""Codes retried on another server, before the call is committed: UNAVAILABLE, which gRPC
documents as the one to retry, and CANCELLED, which an attempt only ever gets from the server
or the connection (a server shutting down cancels its calls): a caller's own cancel ends the
call instead, and is never retried."""

DEFAULT_FAILURE_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL}
)
"""Codes that count as the server failing; any other code is the server working (an
application error such as NOT_FOUND), except CANCELLED, which is no outcome."""

_SUCCESS = Verdict(True)
_NO_OUTCOME = Verdict(None)
_RETRY_ELSEWHERE = Verdict(None, retry=True)
_MILLISECONDS = re.compile(r"[0-9]{1,10}")  # ASCII digits only (str.isdigit takes any)


def _check_codes(codes: object, name: str) -> frozenset[grpc.StatusCode]:
    if isinstance(codes, (str, bytes)) or not isinstance(codes, Collection):
        raise TypeError(f"{name} must be a collection of grpc.StatusCode, not {codes!r}")
    bad = [c for c in codes if not isinstance(c, grpc.StatusCode)]
    if bad:
        raise TypeError(f"{name} must hold grpc.StatusCode values only, got {bad[0]!r}")
    return frozenset(codes)


@final
@dataclass(frozen=True, slots=True)
class GrpcPolicy:
    """How a balanced channel judges and retries calls.

    * ``retry``: the engine's ``RetryPolicy`` (attempts, jittered exponential backoff, the
      longest pushback obeyed, ``per_try_timeout``); the default makes one retry. A call's
      ``timeout`` is a deadline for all its attempts, as in gRPC A6.
    * ``retryable_codes``: codes retried on another server, before the call is committed. An
      attempt past ``retry.per_try_timeout`` (DEADLINE_EXCEEDED, with time left before the
      call's deadline) is retried too.
    * ``failure_codes``: codes that count as a failure of the server (ejection, latency).
    * ``hedging`` with ``hedged_methods`` (full names, ``"/pkg.Service/Method"``): the asyncio
      channel hedges unary calls to those methods, which must be idempotent.
    Calls that stream requests are never retried: their requests are not kept for a replay.
    """

    retry: RetryPolicy = field(default_factory=RetryPolicy)
    retryable_codes: Collection[grpc.StatusCode] = DEFAULT_RETRYABLE_CODES
    failure_codes: Collection[grpc.StatusCode] = DEFAULT_FAILURE_CODES
    hedging: HedgingPolicy | None = None
    hedged_methods: Collection[str] = frozenset()

    def __post_init__(self) -> None:
        if not isinstance(self.retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy, not {type(self.retry).__name__}")
        set_ = object.__setattr__  # frozen: normalise once, here
        set_(self, "retryable_codes", _check_codes(self.retryable_codes, "retryable_codes"))
        set_(self, "failure_codes", _check_codes(self.failure_codes, "failure_codes"))
        if self.hedging is not None and not isinstance(self.hedging, HedgingPolicy):
            raise TypeError(
                f"hedging must be a HedgingPolicy or None, not {type(self.hedging).__name__}"
            )
        methods = self.hedged_methods
        if isinstance(methods, (str, bytes)) or not isinstance(methods, Collection):
            raise TypeError(f"hedged_methods must be a collection of str, not {methods!r}")
        bad = [m for m in methods if not isinstance(m, str) or not m.startswith("/")]
        if bad:
            raise ValueError(
                f"hedged_methods must be full method names such as '/pkg.Service/Method', "
                f"got {bad[0]!r}"
            )
        set_(self, "hedged_methods", frozenset(methods))
        if methods and self.hedging is None:
            raise ValueError("hedged_methods needs hedging: a HedgingPolicy")

    def outcome(self, code: grpc.StatusCode | None) -> bool | None:
        """The outcome a final status ``code`` records on its server."""
        if code is grpc.StatusCode.OK:
            return True
        if code is grpc.StatusCode.CANCELLED or code is None:
            return None
        return code not in self.failure_codes

    def verdict(
        self,
        code: grpc.StatusCode | None,
        trailing: Metadata | None,
        *,
        committed: bool,
        deadline: float | None,
        number: int = 1,
    ) -> Verdict:
        """The verdict of attempt ``number`` (from 1), which ended with ``code``: its outcome,
        and whether and when another server may be tried. A6: not once committed; not
        against a pushback that is not a non-negative integer of milliseconds; and not if
        the wait before it (the pushback, else the backoff) would end past the deadline."""
        ok = self.outcome(code)
        retryable = code in self.retryable_codes or (
            # past per_try_timeout, with time left on the call's deadline (checked below)
            code is grpc.StatusCode.DEADLINE_EXCEEDED and self.retry.per_try_timeout is not None
        )
        if committed or not retryable:
            return _SUCCESS if ok else Verdict(ok)
        pushback = first_value(trailing, PUSHBACK)
        if pushback is not None:
            text = pushback.decode("ascii", "replace") if isinstance(pushback, bytes) else pushback
            if _MILLISECONDS.fullmatch(text) is None:  # A6: negative or unparseable: no retry
                return Verdict(ok)
            wait = int(text) / 1000
        elif deadline is None:
            return Verdict(ok, retry=True)  # the engine draws the backoff
        else:  # drawn here, to know whether the retry would start before the deadline
            wait = self.retry.backoff(number)
        if deadline is not None and time.monotonic() + wait >= deadline:
            return Verdict(ok)
        if pushback is None and wait > self.retry.max_retry_after:
            # The engine obeys a retry_after only up to max_retry_after, which limits what a
            # server may ask for, not the policy's own backoff: let the engine draw that.
            return Verdict(ok, retry=True)
        return Verdict(ok, retry=True, retry_after=wait)


_BEST_FIRST = (
    grpc.ChannelConnectivity.READY,
    grpc.ChannelConnectivity.CONNECTING,
    grpc.ChannelConnectivity.IDLE,
)


def best_state(states: Collection[grpc.ChannelConnectivity]) -> grpc.ChannelConnectivity:
    """A balanced channel's state from its backends', as gRPC's round_robin reports it: the
    best of them (READY, then CONNECTING, IDLE), else TRANSIENT_FAILURE (none, or all
    failing)."""
    for state in _BEST_FIRST:
        if state in states:
            return state
    return grpc.ChannelConnectivity.TRANSIENT_FAILURE


def first_value(metadata: _AnyMetadata | None, name: str) -> str | bytes | None:
    """The first value of ``name`` in ``metadata`` (gRPC keys are lower-case), or None."""
    if metadata:
        for key, value in metadata:
            if key == name:
                return value
    return None


@final
@dataclass(frozen=True, slots=True)
class StickyKey:
    """Where a call's sticky key comes from: exactly one of ``metadata`` or ``function``.

    ``metadata`` names a request metadata key (lower-case, as gRPC requires); ``function``
    is called with the request message of a unary-request call, and its key is ignored for
    calls that stream requests (their first message is not yet sent when the server is
    picked). A call without the key, or for which ``function`` returns None, has no key.
    """

    metadata: str | None = None
    function: Callable[[Any], Key | None] | None = None

    def __post_init__(self) -> None:
        given = [n for n in ("metadata", "function") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(f"StickyKey needs exactly one of metadata, function; got {given}")
        name = self.metadata
        if name is not None and (not isinstance(name, str) or not name or name != name.lower()):
            raise ValueError(f"metadata must be a non-empty lower-case str, got {name!r}")
        if self.function is not None and not callable(self.function):
            raise TypeError(f"function must be callable, not {type(self.function).__name__}")

    def key(self, metadata: _AnyMetadata | None, request: object, *, streaming: bool) -> Key | None:
        """The key of a call with ``metadata`` and ``request`` (None when it has none)."""
        if self.metadata is not None:
            return first_value(metadata, self.metadata) or None
        if streaming:
            return None
        assert self.function is not None
        key = self.function(request)
        if key is not None and not isinstance(key, (str, bytes)):
            raise TypeError(f"StickyKey.function must return str, bytes or None, not {key!r}")
        return key


class LocalRpcError(grpc.RpcError):
    """A call that failed in the balanced channel, before any server: an ``RpcError`` with the
    code gRPC itself would give (UNAVAILABLE: no server could be picked; DEADLINE_EXCEEDED:
    the deadline passed between attempts), so one ``except grpc.RpcError`` catches all."""

    def __init__(
        self, code: grpc.StatusCode, details: str, *, retry_elsewhere: bool = False
    ) -> None:
        super().__init__(details)
        self._code = code
        self._details = details
        self.retry_elsewhere = retry_elsewhere  # the server picked had just left

    def code(self) -> grpc.StatusCode:
        """The status code."""
        return self._code

    def details(self) -> str:
        """Why the call failed."""
        return self._details

    def initial_metadata(self) -> tuple[()]:
        """None came: no server was called."""
        return ()

    def trailing_metadata(self) -> tuple[()]:
        """None came: no server was called."""
        return ()

    def debug_error_string(self) -> str:
        """The details, as grpc's own errors give a debug string."""
        return self._details


def rpc_facts(error: BaseException) -> tuple[grpc.StatusCode | None, Any, bool]:
    """``error``'s status code, trailing metadata, and whether its call had committed (its
    response headers came with metadata); no code for errors raised before any server."""
    if isinstance(error, LocalRpcError) or not isinstance(error, grpc.RpcError):
        return None, None, False
    facts: Any = error  # grpc's errors are also its Call objects (sync and aio alike)
    code = facts.code() if hasattr(facts, "code") else None
    trailing = facts.trailing_metadata() if hasattr(facts, "trailing_metadata") else None
    headers = facts.initial_metadata() if hasattr(facts, "initial_metadata") else None
    return code, trailing, bool(headers)


def deadline_of(timeout: float | None) -> float | None:
    """The ``time.monotonic`` deadline of a call given ``timeout`` seconds (None: none)."""
    return None if timeout is None else time.monotonic() + timeout


def time_left(deadline: float | None, per_try: float | None) -> float | None:
    """The timeout of the next attempt: what is left of the deadline, capped at ``per_try``.

    Raises ``LocalRpcError`` (DEADLINE_EXCEEDED) when the deadline has passed.
    """
    if deadline is None:
        return per_try
    left = deadline - time.monotonic()
    if left <= 0:
        raise LocalRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded between attempts")
    return left if per_try is None else min(left, per_try)


def check_channel_arguments(
    policy: object, sticky: object, credentials: object, channel_factory: object
) -> GrpcPolicy:
    """Check a balanced channel's arguments, naming the one that is wrong; its policy."""
    if policy is not None and not isinstance(policy, GrpcPolicy):
        raise TypeError(f"policy must be a GrpcPolicy, not {type(policy).__name__}")
    if sticky is not None and not isinstance(sticky, StickyKey):
        raise TypeError(f"sticky must be a StickyKey or None, not {type(sticky).__name__}")
    if credentials is not None and not isinstance(credentials, grpc.ChannelCredentials):
        raise TypeError(
            f"credentials must be grpc.ChannelCredentials, not {type(credentials).__name__}"
        )
    if channel_factory is not None and not callable(channel_factory):
        raise TypeError(f"channel_factory must be callable, not {type(channel_factory).__name__}")
    return GrpcPolicy() if policy is None else policy


def check_lb(lb: object) -> LoadBalancer:
    """Return ``lb`` if it is a ``LoadBalancer``, else raise naming it."""
    if not isinstance(lb, LoadBalancer):
        raise TypeError(f"lb must be a LoadBalancer, not {type(lb).__name__}")
    return lb


@final
class Backend(Generic[C]):
    """One server's real channel, and how many calls are on it (it closes once it is both
    departed and idle)."""

    __slots__ = ("active", "callables", "channel", "departed", "server")

    def __init__(self, server: str, channel: C) -> None:
        self.server = server
        self.channel = channel
        self.active = 0
        self.departed = False
        # Multi-callables made on this channel, by (kind, method, serializer, deserializer).
        self.callables: dict[tuple[object, ...], Any] = {}


@final
class Opened(Generic[C]):
    """A server-streaming attempt under way: its call, its backend, and its first message
    (read to commit it to its server), or ``end`` if the stream ended before one."""

    __slots__ = ("backend", "call", "first")

    def __init__(self, call: Any, backend: Backend[C], first: object) -> None:
        self.call = call
        self.backend = backend
        self.first = first


class Backends(Generic[C]):
    """One real channel per server of ``lb``: opened when it joins, closed when it has left
    and its last call has ended, and all closed by ``close()``.

    ``run(fn)``, if given, is how a membership change made on any thread is applied: the
    asyncio channel's runs ``fn`` on its event loop. A call that picks a server whose change
    is not applied yet opens its channel itself (``enter``). ``changed()``, if given, is
    called after each change is applied.
    """

    def __init__(
        self,
        lb: LoadBalancer,
        open_channel: Callable[[str], C],
        close_channel: Callable[[C], object],
        *,
        run: Callable[[Callable[[], None]], object] | None = None,
        changed: Callable[[], object] | None = None,
    ) -> None:
        self._lb = lb
        self._open = open_channel
        self._close = close_channel
        self._run = run
        self._changed = changed
        self._lock = threading.Lock()
        self._live: dict[str, Backend[C]] = {}
        self._draining: set[Backend[C]] = set()
        self._closed = False
        ref = weakref.ref(self)

        def follow(_: tuple[str, ...]) -> None:
            backends = ref()  # held weakly: a channel dropped unclosed is not kept alive
            if backends is None:
                return
            if backends._run is None:
                backends._follow()
            else:  # the asyncio channel's: reconciled on its event loop
                backends._run(backends._follow)

        self._stop = lb.watch_servers(follow)
        weakref.finalize(self, self._stop)

    def _follow(self) -> None:
        """Reconcile the channels to the balancer's servers as they are now.

        Read here, not passed in: a reconcile that runs late (queued to an event loop) must
        not undo a later one.
        """
        servers = self._lb.servers
        wanted = set(servers)
        to_close: list[Backend[C]] = []
        try:
            with self._lock:
                if self._closed:
                    return
                # Checked again here: a call may have opened a server that joined since.
                for server in [s for s in self._live if s not in wanted and s not in self._lb]:
                    backend = self._live.pop(server)
                    backend.departed = True
                    if backend.active:
                        self._draining.add(backend)
                    else:
                        to_close.append(backend)
                joining = [s for s in servers if s not in self._live]
            for server in joining:  # opened outside the lock: a factory may block
                try:
                    opened = Backend(server, self._open(server))
                except Exception:  # its calls will open it, and raise the error themselves
                    _log.exception("could not open a channel to %s", server)
                    continue
                with self._lock:
                    if self._closed or server in self._live or server not in self._lb:
                        to_close.append(opened)  # closed, or a call or change got there first
                    else:
                        self._live[server] = opened
        finally:
            for backend in to_close:
                self._close_quietly(backend)
        if self._changed is not None:
            self._changed()

    def _close_quietly(self, backend: Backend[C]) -> None:
        try:
            self._close(backend.channel)
        except Exception:
            _log.exception("could not close the channel to %s", backend.server)

    def enter(self, server: str) -> Backend[C]:
        """The channel of ``server`` for one call, counted until ``leave``.

        Raises ``LocalRpcError`` (UNAVAILABLE) if ``server`` has just left (marked
        ``retry_elsewhere``), or the channel is closed.
        """
        with self._lock:
            backend = self._live.get(server)
            if backend is not None:
                backend.active += 1
                return backend
        if self._closed:
            raise LocalRpcError(grpc.StatusCode.UNAVAILABLE, "the balanced channel is closed")
        opened = Backend(server, self._open(server))  # joined, and not yet followed
        with self._lock:
            # Checked under the lock: a departure made before this is seen here, and one made
            # after finds the channel in _live, counted, and drains it.
            backend = self._live.get(server)
            if backend is None and not self._closed and server in self._lb:
                backend = self._live[server] = opened
            if backend is not None:
                backend.active += 1
        if backend is not opened:  # another call, or the change itself, opened one first
            self._close_quietly(opened)
        if backend is None:
            closed = self._closed
            raise LocalRpcError(
                grpc.StatusCode.UNAVAILABLE,
                "the balanced channel is closed" if closed else f"{server} has left the pool",
                retry_elsewhere=not closed,
            )
        return backend

    def leave(self, backend: Backend[C]) -> None:
        """End a call on ``backend`` begun by ``enter``; close its channel if it was the last
        call on a departed server."""
        with self._lock:
            backend.active -= 1
            done = backend.departed and backend.active == 0 and backend in self._draining
            if done:
                self._draining.discard(backend)
        if done:
            self._close_quietly(backend)

    def live(self) -> dict[str, C]:
        """The channel of each server in the pool, by server."""
        with self._lock:
            return {server: b.channel for server, b in self._live.items()}

    def draining(self) -> int:
        """How many departed servers' channels wait for their last call to end."""
        with self._lock:
            return len(self._draining)

    def close(self) -> list[C]:
        """Stop following the balancer and return every channel, for the caller to close."""
        self._stop()
        with self._lock:
            self._closed = True
            every = [b.channel for b in (*self._live.values(), *self._draining)]
            self._live.clear()
            self._draining.clear()
        return every

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
        return self._closed


class BalancedChannelBase(Protocol[C]):
    """What a multi-callable reads from its balanced channel (sync or asyncio)."""

    lb: LoadBalancer
    policy: GrpcPolicy
    sticky: StickyKey | None
    backends: Backends[C]


class MethodCalls(Generic[C], abc.ABC):
    """A multi-callable's shared part: its method, its channel, its backends' callables, and
    how its attempts are judged and keyed."""

    def __init__(
        self,
        channel: BalancedChannelBase[C],
        kind: str,
        method: str,
        serializer: Serializer,
        deserializer: Deserializer,
        registered: bool | None,
    ) -> None:
        self._channel = channel
        self._kind = kind
        self._method = method
        self._codec = (kind, method, serializer, deserializer)
        self._registered = registered

    def _on(self, backend: Backend[C]) -> Any:
        """This method's multi-callable on ``backend``'s real channel, made once."""
        callable_ = backend.callables.get(self._codec)
        if callable_ is None:
            _, method, serializer, deserializer = self._codec
            make = getattr(backend.channel, self._kind)
            if self._registered:  # as generated stubs ask; not every channel type knows it
                callable_ = make(method, serializer, deserializer, _registered_method=True)
            else:
                callable_ = make(method, serializer, deserializer)
            backend.callables[self._codec] = callable_
        return callable_

    def _classify(self, deadline: float | None) -> Callable[[Attempt[Any]], Verdict]:
        policy = self._channel.policy

        def classify(attempt: Attempt[Any]) -> Verdict:
            error = attempt.error
            if error is None:
                return _SUCCESS
            number = attempt.number
            code: grpc.StatusCode | None
            if isinstance(error, AttemptTimeoutError):  # past per_try_timeout (asyncio)
                code, trailing, committed = grpc.StatusCode.DEADLINE_EXCEEDED, None, False
            elif isinstance(error, LocalRpcError):  # a server that left as it was picked
                return _RETRY_ELSEWHERE if error.retry_elsewhere else _NO_OUTCOME
            else:
                code, trailing, committed = rpc_facts(error)
                if code is None:  # failed before any server (in our own serializer, say)
                    return _NO_OUTCOME
            verdict = policy.verdict(
                code, trailing, committed=committed, deadline=deadline, number=number
            )
            if (
                code is grpc.StatusCode.DEADLINE_EXCEEDED
                and number > 1
                and deadline is not None
                and time.monotonic() >= deadline
            ):  # a retry cut short by the call's deadline, not the server's doing
                return _NO_OUTCOME
            return verdict

        return classify

    def _key(self, metadata: _AnyMetadata | None, request: object, streaming: bool) -> Key | None:
        sticky = self._channel.sticky
        return None if sticky is None else sticky.key(metadata, request, streaming=streaming)

    def _lease_one(self, key: Key | None) -> tuple[Lease, Backend[C]]:
        """A lease and its backend, for a call made in one attempt (not through the engine)."""
        lb = self._channel.lb
        lb.retry_budget.deposit()  # a request, as the engine counts one, for the retry ratio
        left: list[str] = []
        while True:
            try:
                lease = lb.acquire(key, exclude=left)
            except NoServersAvailableError as error:
                raise LocalRpcError(grpc.StatusCode.UNAVAILABLE, str(error)) from error
            try:
                return lease, self._channel.backends.enter(lease.server)
            except LocalRpcError as error:
                lease.release(None)
                if not error.retry_elsewhere or lease.server in left:
                    raise
                left.append(lease.server)  # it left as it was picked: pick another
            except BaseException:
                lease.release(None)
                raise

    @abc.abstractmethod
    def _end_with_rpc(self, call: Any, lease: Lease, backend: Backend[C]) -> None:
        """End ``lease`` and the backend's count when ``call`` terminates, with its outcome."""

    def _start_one(self, key: Key | None, start: Callable[[Any], Any]) -> Any:
        """Start a call in one attempt: ``start(multi_callable)`` on a leased server."""
        lease, backend = self._lease_one(key)
        try:
            call = start(self._on(backend))
        except BaseException:
            lease.release(None)
            self._channel.backends.leave(backend)
            raise
        self._end_with_rpc(call, lease, backend)
        return call
