"""The asyncio twin of ``BalancedChannel``: a ``grpc.aio.Channel`` balancing each call.

``AsyncBalancedChannel(lb)`` holds one ``grpc.aio`` channel per server of ``lb`` and is a
``grpc.aio.Channel``, so generated stubs work on it unchanged (``await stub.Check(request)``).
Calls behave as on ``BalancedChannel`` (see ``loadbalancer.integrations.grpc``), and also:

* ``policy.retry.per_try_timeout`` is enforced: an attempt past it is cancelled and, the
  deadline allowing, retried (its server charged a DEADLINE_EXCEEDED).
* ``policy.hedging`` hedges unary calls to ``policy.hedged_methods``: another server is
  tried each ``hedging.delay`` without an answer; the first answer wins and the others are
  cancelled with no outcome.
* Cancelling a call (``call.cancel()``, or the task awaiting it) cancels its attempts, each
  with no outcome.

Make it, and its calls, inside a running event loop, as ``grpc.aio`` requires.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Generator, Iterable, Sequence
from typing import TYPE_CHECKING, Any, final

import grpc
import grpc.aio

from loadbalancer import (
    Attempt,
    AttemptTimeoutError,
    Key,
    Lease,
    LoadBalancer,
    NoServersAvailableError,
    ProbeResult,
)
from loadbalancer.failover import FirstAttempt

from ._grpc_shared import (
    Backend,
    Backends,
    Deserializer,
    GrpcPolicy,
    LocalRpcError,
    Metadata,
    MethodCalls,
    Opened,
    Serializer,
    StickyKey,
    best_state,
    check_channel_arguments,
    check_lb,
    deadline_of,
    time_left,
)
from .grpc import HealthProbeSettings, describe_rpc_error, health_verdict

__all__ = ["AsyncBalancedChannel", "AsyncGrpcHealthProbe", "LocalAioRpcError"]

if TYPE_CHECKING:
    _UnaryUnaryBase = grpc.aio.UnaryUnaryMultiCallable[Any, Any]
    _UnaryStreamBase = grpc.aio.UnaryStreamMultiCallable[Any, Any]
    _StreamUnaryBase = grpc.aio.StreamUnaryMultiCallable[Any, Any]
    _StreamStreamBase = grpc.aio.StreamStreamMultiCallable[Any, Any]
    _UnaryUnaryCallBase = grpc.aio.UnaryUnaryCall[Any, Any]
    _UnaryStreamCallBase = grpc.aio.UnaryStreamCall[Any, Any]
else:
    _UnaryUnaryBase = grpc.aio.UnaryUnaryMultiCallable
    _UnaryStreamBase = grpc.aio.UnaryStreamMultiCallable
    _StreamUnaryBase = grpc.aio.StreamUnaryMultiCallable
    _StreamStreamBase = grpc.aio.StreamStreamMultiCallable
    _UnaryUnaryCallBase = grpc.aio.UnaryUnaryCall
    _UnaryStreamCallBase = grpc.aio.UnaryStreamCall

_Channel = grpc.aio.Channel
_END = object()  # a stream read to its end before a first message
_ENDINGS: set[asyncio.Task[None]] = set()  # lease endings under way, held until they finish


class LocalAioRpcError(grpc.aio.AioRpcError):
    """A call that failed in the balanced channel before any server answered, as the
    ``grpc.aio.AioRpcError`` that ``except`` clauses for aio calls expect (UNAVAILABLE: no
    server could be picked; DEADLINE_EXCEEDED: the deadline, or the last attempt's
    ``per_try_timeout``, passed)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details, details)


def _aio_error(error: BaseException) -> BaseException:
    """``error`` as an aio caller expects it: an ``AioRpcError`` for the channel's own."""
    if isinstance(error, LocalRpcError):
        return LocalAioRpcError(error.code(), error.details())
    if isinstance(error, AttemptTimeoutError):
        return LocalAioRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, str(error))
    if isinstance(error, NoServersAvailableError):
        return LocalAioRpcError(grpc.StatusCode.UNAVAILABLE, str(error))
    return error


class _Call(MethodCalls[_Channel]):
    """What every multi-callable of the asyncio balanced channel shares."""

    def _start_one(self, key: Key | None, start: Callable[[Any], Any]) -> Any:
        """As ``MethodCalls._start_one``, its errors the ``AioRpcError`` aio callers catch."""
        try:
            return super()._start_one(key, start)
        except LocalRpcError as error:
            raise _aio_error(error) from error

    def _end_with_rpc(self, call: Any, lease: Lease, backend: Backend[_Channel]) -> None:
        """End ``lease`` and the backend's count when ``call`` terminates, with its outcome."""
        outcome = self._channel.policy.outcome
        backends = self._channel.backends

        async def end() -> None:
            code = None  # if the loop closes first: no outcome
            try:
                code = await call.code()
            finally:
                lease.release(outcome(code))
                backends.leave(backend)

        def done(_: object) -> None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # the call was collected after its loop ended: no outcome
                lease.release(None)
                backends.leave(backend)
                return
            task = loop.create_task(end())
            _ENDINGS.add(task)
            task.add_done_callback(_ENDINGS.discard)

        call.add_done_callback(done)


@final
class _BalancedUnaryCall(_UnaryUnaryCallBase):
    """A unary call running through the failover engine, as a ``grpc.aio.UnaryUnaryCall``."""

    def __init__(self, attempts: Any, deadline: float | None) -> None:
        self._task: asyncio.Task[tuple[Any, Any]] = asyncio.get_running_loop().create_task(attempts)
        self._deadline = deadline

    def __await__(self) -> Generator[Any, None, Any]:
        response, _ = yield from self._task.__await__()
        return response

    async def _answered(self) -> Any:
        """The call that answered, or the error that ended the call."""
        try:
            return (await asyncio.shield(self._task))[1]
        except asyncio.CancelledError:
            if not self._task.cancelled():
                raise  # our caller was cancelled, not the call
            return LocalAioRpcError(grpc.StatusCode.CANCELLED, "call cancelled")
        except grpc.RpcError as error:
            return error
        except Exception as error:  # not an RPC's: a serializer's, say
            return LocalAioRpcError(grpc.StatusCode.UNKNOWN, f"{type(error).__name__}: {error}")

    def cancelled(self) -> bool:
        """Whether the call was cancelled."""
        return self._task.cancelled()

    def done(self) -> bool:
        """Whether the call has ended."""
        return self._task.done()

    def time_remaining(self) -> float | None:
        """Seconds before the call's deadline (None: no deadline)."""
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def cancel(self) -> bool:
        """Cancel the call and every attempt in flight (each with no outcome)."""
        return self._task.cancel()

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        """Call ``callback(call)`` when the call ends."""
        self._task.add_done_callback(lambda _: callback(self))

    async def initial_metadata(self) -> Any:
        """The answering server's response headers."""
        return await _maybe_await((await self._answered()).initial_metadata())

    async def trailing_metadata(self) -> Any:
        """The answering server's trailing metadata."""
        answered = await self._answered()
        return await _maybe_await(answered.trailing_metadata())

    async def code(self) -> grpc.StatusCode:
        """The call's status code."""
        code: grpc.StatusCode = await _maybe_await((await self._answered()).code())
        return code

    async def details(self) -> str:
        """The call's status details."""
        details: str = await _maybe_await((await self._answered()).details())
        return details

    async def wait_for_connection(self) -> None:
        """Wait until the call has an answer (a balanced call connects per attempt)."""
        await self._answered()


async def _maybe_await(value: Any) -> Any:
    """``value``, awaited if the call it came from is asynchronous (aio calls' methods are
    coroutines; an ``AioRpcError``'s and ``LocalRpcError``'s are not)."""
    return await value if asyncio.iscoroutine(value) else value


@final
class _Answers:
    """How the engine frees unary answers: they hold nothing."""

    async def set_aside(self, result: tuple[Any, Any]) -> tuple[Any, Any]:
        return result

    def discard(self, result: tuple[Any, Any]) -> None:
        """Nothing to free."""


_ANSWERS = _Answers()


@final
class _UnaryUnary(_Call, _UnaryUnaryBase):
    def __call__(
        self,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: grpc.aio.Metadata | Metadata | None = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        """Start the call on a balanced server, retrying or hedging as the policy allows."""
        channel = self._channel
        backends = channel.backends
        policy = channel.policy
        deadline = deadline_of(timeout)
        per_try = policy.retry.per_try_timeout

        async def call_on(backend: Backend[_Channel]) -> tuple[Any, Any]:
            call = self._on(backend)(
                request,
                timeout=time_left(deadline, per_try),
                metadata=metadata,
                credentials=credentials,
                wait_for_ready=wait_for_ready,
                compression=compression,
            )
            return await call, call

        async def attempt(server: str) -> tuple[Any, Any]:
            backend = backends.enter(server)
            try:
                return await call_on(backend)
            finally:
                backends.leave(backend)

        hedging = policy.hedging if self._method in policy.hedged_methods else None
        key = self._key(metadata, request, False)
        classify = self._classify(deadline)
        lb = channel.lb

        async def attempts() -> tuple[Any, Any]:
            try:
                if hedging is not None:
                    hedged: tuple[Any, Any] = await lb.acall(
                        attempt, key=key, retry=policy.retry, hedging=hedging, classify=classify
                    )
                    return hedged
                # The first attempt is made here, and the engine is called only for a retry:
                # most calls need none, and the engine's setup costs as much as this path.
                # Leased and entered together: a server that left as it was picked is
                # picked again for free, rather than costing an attempt and a retry token.
                lease, backend = self._lease_one(key)
                result: tuple[Any, Any] | None = None
                failure: Exception | None = None
                try:
                    try:
                        result = await call_on(backend)
                    except Exception as failed:
                        failure = failed
                    finally:
                        backends.leave(backend)
                    verdict = classify(Attempt(lease.server, 1, result, failure))
                except BaseException:  # cancelled, or a classifier that broke: no outcome
                    lease.release(None)
                    raise
                if not verdict.retry or policy.retry.attempts == 1:
                    lease.release(verdict.ok)
                    if failure is not None:
                        raise failure
                    assert result is not None
                    return result
                held = await lb.acall_held(
                    attempt,
                    results=_ANSWERS,
                    key=key,
                    retry=policy.retry,
                    classify=classify,
                    first=FirstAttempt(lease, result, failure, verdict),
                )
                held.release()
                answer: tuple[Any, Any] = held.result
                return answer
            except (LocalRpcError, AttemptTimeoutError, NoServersAvailableError) as error:
                raise _aio_error(error) from error
            finally:
                failure = None  # caught here, its traceback holds this frame: the frame lets go

        return _BalancedUnaryCall(attempts(), deadline)


@final
class _OpenedResults:
    """How the engine frees a server stream that is not the answer: cancel it."""

    def __init__(self, backends: Backends[_Channel]) -> None:
        self._backends = backends

    async def set_aside(self, result: Opened[_Channel]) -> Opened[_Channel]:
        return result  # a started stream is never retried: the classifier sees to it

    def discard(self, result: Opened[_Channel]) -> None:
        result.call.cancel()
        self._backends.leave(result.backend)


@final
class _BalancedStreamCall(_UnaryStreamCallBase):
    """A server stream started through the failover engine, as a ``grpc.aio.UnaryStreamCall``:
    its first message read before it was committed to its server."""

    def __init__(self, opening: Any, deadline: float | None) -> None:
        self._task: asyncio.Task[Opened[_Channel]] = asyncio.ensure_future(opening)
        self._deadline = deadline
        self._first_taken = False

    async def read(self) -> Any:
        """The next message, or ``grpc.aio.EOF`` at the end (``CancelledError`` once the
        call is cancelled, as for grpc.aio's own calls)."""
        opened = await asyncio.shield(self._task)
        if not self._first_taken:
            self._first_taken = True
            return grpc.aio.EOF if opened.first is _END else opened.first
        return await opened.call.read()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[Any]:
        while True:
            message = await self.read()
            if message is grpc.aio.EOF:
                return
            yield message

    async def _call(self) -> Any:
        """The stream's real call, or the error that ended it before it began."""
        try:
            return (await asyncio.shield(self._task)).call
        except asyncio.CancelledError:
            if not self._task.cancelled():
                raise  # our caller was cancelled, not the call
            return LocalAioRpcError(grpc.StatusCode.CANCELLED, "call cancelled")
        except grpc.RpcError as error:
            return error
        except Exception as error:  # not an RPC's: a serializer's, say
            return LocalAioRpcError(grpc.StatusCode.UNKNOWN, f"{type(error).__name__}: {error}")

    def cancelled(self) -> bool:
        """Whether the call was cancelled."""
        if not self._task.done():
            return False
        if self._task.cancelled() or self._task.exception() is not None:
            return self._task.cancelled()
        return bool(self._task.result().call.cancelled())

    def done(self) -> bool:
        """Whether the call has ended."""
        if not self._task.done():
            return False
        if self._task.cancelled() or self._task.exception() is not None:
            return True
        return bool(self._task.result().call.done())

    def time_remaining(self) -> float | None:
        """Seconds before the call's deadline (None: no deadline)."""
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def cancel(self) -> bool:
        """Cancel the call, whether it has begun streaming or not."""
        if not self._task.done():
            return self._task.cancel()
        if self._task.cancelled() or self._task.exception() is not None:
            return False
        return bool(self._task.result().call.cancel())

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        """Call ``callback(call)`` when the stream ends."""

        def opened(task: asyncio.Task[Opened[_Channel]]) -> None:
            if task.cancelled() or task.exception() is not None:
                callback(self)
            else:
                task.result().call.add_done_callback(lambda _: callback(self))

        self._task.add_done_callback(opened)

    async def initial_metadata(self) -> Any:
        """The server's response headers."""
        return await _maybe_await((await self._call()).initial_metadata())

    async def trailing_metadata(self) -> Any:
        """The server's trailing metadata, once the stream has ended."""
        return await _maybe_await((await self._call()).trailing_metadata())

    async def code(self) -> grpc.StatusCode:
        """The status code, once the stream has ended."""
        code: grpc.StatusCode = await _maybe_await((await self._call()).code())
        return code

    async def details(self) -> str:
        """The status details, once the stream has ended."""
        details: str = await _maybe_await((await self._call()).details())
        return details

    async def wait_for_connection(self) -> None:
        """Wait until the stream has begun (its first message, or its end, is in)."""
        await self._call()


@final
class _UnaryStream(_Call, _UnaryStreamBase):
    def __call__(
        self,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: grpc.aio.Metadata | Metadata | None = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        """Start the stream on a balanced server; with retries, it is committed to its server
        once its first message is in."""
        channel = self._channel
        policy = channel.policy
        key = self._key(metadata, request, False)

        def start(multi_callable: Any, timeout: float | None = timeout) -> Any:
            return multi_callable(
                request,
                timeout=timeout,
                metadata=metadata,
                credentials=credentials,
                wait_for_ready=wait_for_ready,
                compression=compression,
            )

        if policy.retry.attempts == 1:
            return self._start_one(key, start)
        backends = channel.backends
        deadline = deadline_of(timeout)

        async def attempt(server: str) -> Opened[_Channel]:
            backend = backends.enter(server)
            try:
                # The call's whole deadline: the engine's per_try_timeout bounds this attempt
                # until its first message, and must not cut a committed stream short.
                call = start(self._on(backend), time_left(deadline, None))
                first = await call.read()
            except BaseException:
                backends.leave(backend)
                raise
            return Opened(call, backend, _END if first is grpc.aio.EOF else first)

        async def opening() -> Opened[_Channel]:
            try:
                held = await channel.lb.acall_held(
                    attempt,
                    results=_OpenedResults(backends),
                    key=key,
                    retry=policy.retry,
                    classify=self._classify(deadline),
                )
            except (LocalRpcError, AttemptTimeoutError, NoServersAvailableError) as error:
                raise _aio_error(error) from error
            opened = held.result
            if held.lease is None:  # not for an answer the engine hands back; be safe
                backends.leave(opened.backend)
            else:
                self._end_with_rpc(opened.call, held.lease, opened.backend)
            return opened

        return _BalancedStreamCall(opening(), deadline)


@final
class _StreamUnary(_Call, _StreamUnaryBase):
    def __call__(
        self,
        request_iterator: AsyncIterable[Any] | Iterable[Any] | None = None,
        timeout: float | None = None,
        metadata: grpc.aio.Metadata | Metadata | None = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        """Start the call on a balanced server, in one attempt; the real ``StreamUnaryCall``."""
        return self._start_one(
            self._key(metadata, None, True),
            lambda multi_callable: multi_callable(
                request_iterator, timeout, metadata, credentials, wait_for_ready, compression
            ),
        )


@final
class _StreamStream(_Call, _StreamStreamBase):
    def __call__(
        self,
        request_iterator: AsyncIterable[Any] | Iterable[Any] | None = None,
        timeout: float | None = None,
        metadata: grpc.aio.Metadata | Metadata | None = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        """Start the stream on a balanced server, in one attempt; the real call."""
        return self._start_one(
            self._key(metadata, None, True),
            lambda multi_callable: multi_callable(
                request_iterator, timeout, metadata, credentials, wait_for_ready, compression
            ),
        )


@final
class AsyncBalancedChannel(grpc.aio.Channel):
    """A ``grpc.aio.Channel`` over one ``grpc.aio`` channel per server of ``lb``.

    Backend channels are made by ``channel_factory(server)`` if given, else
    ``grpc.aio.secure_channel`` (with ``credentials``) or ``grpc.aio.insecure_channel``, with
    ``options``, ``compression`` and ``interceptors``. ``policy`` judges, retries and hedges
    calls (``GrpcPolicy``); ``sticky`` gives calls a key (``StickyKey``).
    """

    def __init__(
        self,
        lb: LoadBalancer,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
        compression: grpc.Compression | None = None,
        interceptors: Sequence[Any] = (),
        channel_factory: Callable[[str], grpc.aio.Channel] | None = None,
        policy: GrpcPolicy | None = None,
        sticky: StickyKey | None = None,
    ) -> None:
        self.lb = check_lb(lb)
        self.policy = check_channel_arguments(policy, sticky, credentials, channel_factory)
        self.sticky = sticky
        self._credentials = credentials
        self._options = tuple(options)
        self._compression = compression
        self._interceptors = tuple(interceptors) or None
        self._factory = channel_factory
        self._closing: set[asyncio.Task[None]] = set()
        self._loop = asyncio.get_running_loop()  # grpc.aio channels belong to one loop
        self._membership = asyncio.Event()  # set, then replaced, at each membership change
        self.backends: Backends[_Channel] = Backends(
            lb, self._open, self._close_later, run=self._on_loop, changed=self._changed
        )

    def _changed(self) -> None:
        self._membership.set()
        self._membership = asyncio.Event()

    def _on_loop(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the channel's event loop: now if this is it, else soon after."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            fn()
        elif not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn)

    def _open(self, server: str) -> grpc.aio.Channel:
        if self._factory is not None:
            return self._factory(server)
        if self._credentials is not None:
            return grpc.aio.secure_channel(
                server, self._credentials, self._options, self._compression, self._interceptors
            )
        return grpc.aio.insecure_channel(
            server, self._options, self._compression, self._interceptors
        )

    def _close_later(self, channel: grpc.aio.Channel) -> None:
        """Close a departed server's channel: ``close`` is a coroutine, so in a task."""
        task = self._loop.create_task(channel.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    # -- the grpc.aio.Channel interface ------------------------------------------------------

    def unary_unary(
        self,
        method: str,
        request_serializer: Serializer = None,
        response_deserializer: Deserializer = None,
        _registered_method: bool | None = False,
    ) -> grpc.aio.UnaryUnaryMultiCallable[Any, Any]:
        """A multi-callable for a unary-unary method, balanced per call."""
        return _UnaryUnary(
            self, "unary_unary", method, request_serializer, response_deserializer,
            _registered_method,
        )  # fmt: skip

    def unary_stream(
        self,
        method: str,
        request_serializer: Serializer = None,
        response_deserializer: Deserializer = None,
        _registered_method: bool | None = False,
    ) -> grpc.aio.UnaryStreamMultiCallable[Any, Any]:
        """A multi-callable for a server-streaming method, balanced per call."""
        return _UnaryStream(
            self, "unary_stream", method, request_serializer, response_deserializer,
            _registered_method,
        )  # fmt: skip

    def stream_unary(
        self,
        method: str,
        request_serializer: Serializer = None,
        response_deserializer: Deserializer = None,
        _registered_method: bool | None = False,
    ) -> grpc.aio.StreamUnaryMultiCallable[Any, Any]:
        """A multi-callable for a client-streaming method, balanced per call."""
        return _StreamUnary(
            self, "stream_unary", method, request_serializer, response_deserializer,
            _registered_method,
        )  # fmt: skip

    def stream_stream(
        self,
        method: str,
        request_serializer: Serializer = None,
        response_deserializer: Deserializer = None,
        _registered_method: bool | None = False,
    ) -> grpc.aio.StreamStreamMultiCallable[Any, Any]:
        """A multi-callable for a bidirectional-streaming method, balanced per call."""
        return _StreamStream(
            self, "stream_stream", method, request_serializer, response_deserializer,
            _registered_method,
        )  # fmt: skip

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        """The best of the backends' states, as gRPC's round_robin reports it (READY if any
        is; TRANSIENT_FAILURE with no servers; SHUTDOWN once closed)."""
        if self.backends.closed:
            return grpc.ChannelConnectivity.SHUTDOWN
        return best_state({c.get_state(try_to_connect) for c in self.backends.live().values()})

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        """Return once ``get_state()`` differs from ``last_observed_state``."""
        while self.get_state() is last_observed_state:
            waits: list[asyncio.Future[Any]] = [
                asyncio.ensure_future(c.wait_for_state_change(c.get_state()))
                for c in self.backends.live().values()
            ]
            waits.append(asyncio.ensure_future(self._membership.wait()))  # servers come or go
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()

    async def channel_ready(self) -> None:
        """Return once some backend is READY, asking each to connect."""
        state = self.get_state(try_to_connect=True)
        while state is not grpc.ChannelConnectivity.READY:
            await self.wait_for_state_change(state)
            state = self.get_state(try_to_connect=True)

    async def close(self, grace: float | None = None) -> None:
        """Close every backend channel (``grace``: seconds for calls in flight to finish)."""
        channels = self.backends.close()
        await asyncio.gather(*(c.close(grace) for c in channels), *self._closing)

    async def __aenter__(self) -> AsyncBalancedChannel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncBalancedChannel({self.lb!r})"


@final
class AsyncGrpcHealthProbe(HealthProbeSettings):
    """The asyncio twin of ``GrpcHealthProbe``, for ``AsyncHealthChecker``."""

    async def __call__(self, server: str) -> ProbeResult:
        """Probe ``server`` (``host:port``) once."""
        if self._credentials is None:
            channel = grpc.aio.insecure_channel(server, self._options)
        else:
            channel = grpc.aio.secure_channel(server, self._credentials, self._options)
        try:
            answer = await self._check(channel)
        except grpc.RpcError as error:
            return ProbeResult(False, describe_rpc_error(error, self.timeout))
        finally:
            await channel.close()
        return health_verdict(answer.status)
