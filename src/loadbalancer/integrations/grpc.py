"""A ``grpc.Channel`` that sends each call to a server picked by a ``LoadBalancer``.

``BalancedChannel(lb)`` holds one real channel per server of ``lb`` (opened when the server
joins, closed when it has left and its calls have ended) and is a ``grpc.Channel``, so
generated stubs work on it unchanged: ``HealthStub(BalancedChannel(lb)).Check(request)``.
Install ``loadbalancer[grpc]``.

Per call:

* Each call leases a server, keyed by ``sticky`` if given. A unary call's lease ends with its
  answer; a streaming call's when the RPC ends (its last message and status, or a cancel).
* The outcome is the status code's (``GrpcPolicy``): UNAVAILABLE, DEADLINE_EXCEEDED and
  INTERNAL are failures; an application error such as NOT_FOUND is the server working;
  CANCELLED is no outcome.
* Unary-request calls are retried through the failover engine as gRPC A6 describes: codes in
  ``retryable_codes``, at most ``retry.attempts`` attempts, exponential backoff with full
  jitter, server pushback (``grpc-retry-pushback-ms``) obeyed, never once the call is
  committed (response headers with metadata, or a message, have arrived), each retry on a
  server not tried yet and paid for from the balancer's retry budget. The call's ``timeout``
  is a deadline for all its attempts: no retry is made whose wait would end past it. A
  server-streaming call starts at once, and may still move to another server until its first
  message (or its status) has come, which it waits for when first used.
* ``per_try_timeout`` is each unary attempt's gRPC timeout: a blocking read cannot be
  interrupted, so streams get the call's whole deadline.
* ``future()`` makes one attempt: a blocking engine cannot retry behind a future. Calls that
  stream requests make one attempt too: their requests are not kept for a replay. Hedging
  needs asyncio: see ``loadbalancer.integrations.grpc_aio``.

``GrpcHealthProbe`` asks a server's standard ``grpc.health.v1.Health/Check``, for
``HealthChecker``.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, final

import grpc
from grpc_health.v1 import health_pb2

from loadbalancer import Attempt, Key, Lease, LoadBalancer, NoServersAvailableError, ProbeResult
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
    rpc_facts,
    time_left,
)

__all__ = ["BalancedChannel", "GrpcHealthProbe", "GrpcPolicy", "LocalRpcError", "StickyKey"]

# grpc's classes are generic in its type stubs only.
if TYPE_CHECKING:
    _UnaryUnaryBase = grpc.UnaryUnaryMultiCallable[Any, Any]
    _UnaryStreamBase = grpc.UnaryStreamMultiCallable[Any, Any]
    _StreamUnaryBase = grpc.StreamUnaryMultiCallable[Any, Any]
    _StreamStreamBase = grpc.StreamStreamMultiCallable[Any, Any]
    _FutureBase = grpc.Future[Any]
else:
    _UnaryUnaryBase = grpc.UnaryUnaryMultiCallable
    _UnaryStreamBase = grpc.UnaryStreamMultiCallable
    _StreamUnaryBase = grpc.StreamUnaryMultiCallable
    _StreamStreamBase = grpc.StreamStreamMultiCallable
    _FutureBase = grpc.Future


HEALTH_CHECK = "/grpc.health.v1.Health/Check"
"""The standard health-checking method that ``GrpcHealthProbe`` calls."""

_END = object()  # a stream read to its end before a first message
_NOT_READ = object()  # no first message read, or it has been handed out


class _Call(MethodCalls[grpc.Channel]):
    """What every multi-callable of the balanced channel shares."""

    def _end_with_rpc(self, call: Any, lease: Lease, backend: Backend[grpc.Channel]) -> None:
        """End ``lease`` and the backend's count when ``call`` terminates, with its outcome."""
        outcome = self._channel.policy.outcome
        backends = self._channel.backends
        # Held weakly: grpc keeps its callbacks until the RPC ends, and a call the caller
        # dropped must still be collected, which cancels it (no outcome).
        ref = weakref.ref(call)

        def done(*_: object) -> None:
            live = ref()
            lease.release(None if live is None else outcome(live.code()))
            backends.leave(backend)

        if not call.add_callback(done):  # already over: grpc will not call it
            done()


@final
class _Answers:
    """How the engine frees unary answers: they hold nothing."""

    def set_aside(self, result: tuple[Any, grpc.Call | None]) -> tuple[Any, grpc.Call | None]:
        return result

    def discard(self, result: tuple[Any, grpc.Call | None]) -> None:
        """Nothing to free."""


_ANSWERS = _Answers()


@final
class _UnaryUnary(_Call, _UnaryUnaryBase):
    def _invoke(
        self,
        request: Any,
        timeout: float | None,
        metadata: Metadata | None,
        credentials: grpc.CallCredentials | None,
        wait_for_ready: bool | None,
        compression: grpc.Compression | None,
        with_call: bool,
    ) -> tuple[Any, grpc.Call | None]:
        """The response, and the answering ``grpc.Call`` if ``with_call`` (else None: grpc
        makes a call object for ``with_call`` only, and it is not free)."""
        channel = self._channel
        backends = channel.backends
        deadline = deadline_of(timeout)
        per_try = channel.policy.retry.per_try_timeout

        def call_on(backend: Backend[grpc.Channel]) -> tuple[Any, grpc.Call | None]:
            multi_callable = self._on(backend)
            if with_call:
                answer: tuple[Any, grpc.Call] = multi_callable.with_call(
                    request,
                    timeout=time_left(deadline, per_try),
                    metadata=metadata,
                    credentials=credentials,
                    wait_for_ready=wait_for_ready,
                    compression=compression,
                )
                return answer
            response = multi_callable(
                request,
                timeout=time_left(deadline, per_try),
                metadata=metadata,
                credentials=credentials,
                wait_for_ready=wait_for_ready,
                compression=compression,
            )
            return response, None

        def attempt(server: str) -> tuple[Any, grpc.Call | None]:
            backend = backends.enter(server)
            try:
                return call_on(backend)
            finally:
                backends.leave(backend)

        # The first attempt is made here, and the engine is called only for a retry: most
        # calls need none, and the engine's own setup would cost as much as this whole path.
        lb = channel.lb
        key = self._key(metadata, request, False)
        classify = self._classify(deadline)
        # Leased and entered together: a server that left as it was picked is picked again
        # for free, rather than costing an attempt and a retry token.
        lease, backend = self._lease_one(key)
        result: tuple[Any, grpc.Call | None] | None = None
        error: Exception | None = None
        try:
            try:
                try:
                    result = call_on(backend)
                except Exception as failed:
                    error = failed
                finally:
                    backends.leave(backend)
                verdict = classify(Attempt(lease.server, 1, result, error))
            except BaseException:  # interrupted, or a classifier that broke: no outcome
                lease.release(None)
                raise
            if not verdict.retry or channel.policy.retry.attempts == 1:
                lease.release(verdict.ok)
                if error is not None:
                    raise error
                assert result is not None
                return result
            try:
                held = lb.call_held(
                    attempt,
                    results=_ANSWERS,
                    key=key,
                    retry=channel.policy.retry,
                    classify=classify,
                    first=FirstAttempt(lease, result, error, verdict),
                )
            except NoServersAvailableError as no_server:
                raise LocalRpcError(grpc.StatusCode.UNAVAILABLE, str(no_server)) from no_server
            held.release()
            answer: tuple[Any, grpc.Call | None] = held.result
            return answer
        finally:
            error = None  # caught here, its traceback holds this frame: the frame lets go of it

    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        """Make the call on a balanced server, retrying as the policy allows; its response."""
        return self._invoke(
            request, timeout, metadata, credentials, wait_for_ready, compression, False
        )[0]

    def with_call(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> tuple[Any, grpc.Call]:
        """As ``__call__``; the response and the ``grpc.Call`` of the attempt that answered."""
        response, call = self._invoke(
            request, timeout, metadata, credentials, wait_for_ready, compression, True
        )
        assert call is not None  # asked for
        return response, call

    def future(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        """Start the call on a balanced server, in one attempt; its ``grpc.Future``."""
        return self._start_one(
            self._key(metadata, request, False),
            lambda multi_callable: multi_callable.future(
                request, timeout, metadata, credentials, wait_for_ready, compression
            ),
        )


@final
class _OpenedResults:
    """How the engine frees a server stream that is not the answer: cancel it."""

    def __init__(self, backends: Backends[grpc.Channel]) -> None:
        self._backends = backends

    def set_aside(self, result: Opened[grpc.Channel]) -> Opened[grpc.Channel]:
        return result  # a started stream is never retried: the classifier sees to it

    def discard(self, result: Opened[grpc.Channel]) -> None:
        result.call.cancel()
        self._backends.leave(result.backend)


@final
class _RetryingStream(grpc.Call, _FutureBase, Iterator[Any]):
    """A server stream that may still move to another server until its first message.

    The first attempt starts at once, as grpc's own calls do. Its first message (or status)
    is read when the stream is first used (iterated, or asked for its metadata, status or
    result); if it failed retryably before committing, the engine goes on from it
    (``call_held(first=...)``) and the stream continues on the server that answered.
    """

    def __init__(
        self,
        owner: _UnaryStream,
        lease: Lease,
        backend: Backend[grpc.Channel],
        call: Any,
        attempt: Callable[[str], Opened[grpc.Channel]],
        key: Key | None,
        deadline: float | None,
    ) -> None:
        self._owner = owner
        self._lease = lease
        self._backend = backend
        self._call = call  # the real call now: the first attempt's, then the answer's
        self._attempt = attempt
        self._key = key
        self._deadline = deadline
        self._first: object = _NOT_READ
        self._error: BaseException | None = None  # the call's end, if it ended before a message
        self._lock = threading.Lock()
        self._settled = False
        self._cancelled = False
        # The first call's lease and count end when that RPC ends, read or not (cancelled,
        # dropped, or finished unread); a retry, if any, releases the lease first, the same.
        owner._end_with_rpc(call, lease, backend)

    def _settle(self) -> None:
        """Read the first message, retrying elsewhere as the policy allows (once)."""
        with self._lock:
            if self._settled:
                return
            self._settled = True
            try:
                first: object = next(self._call)
            except StopIteration:
                first = _END
            except grpc.RpcError as error:
                try:
                    self._first_failed(error)
                except BaseException as broken:  # a classifier that raised, an interrupt
                    self._error = broken
                    raise
                return
            except BaseException:  # interrupted mid-read: the stream is over for its reader
                self._call.cancel()
                self._error = LocalRpcError(grpc.StatusCode.CANCELLED, "stream interrupted")
                raise
            self._first = first

    def _first_failed(self, error: grpc.RpcError) -> None:
        """The first attempt ended before a message: answer with it, or go on elsewhere."""
        owner = self._owner
        channel = owner._channel
        backends = channel.backends
        verdict = owner._classify(self._deadline)(Attempt(self._lease.server, 1, None, error))
        if self._cancelled or not verdict.retry:
            self._lease.release(None if self._cancelled else verdict.ok)
            self._error = error
            return
        try:
            held = channel.lb.call_held(
                self._attempt,
                results=_OpenedResults(backends),
                key=self._key,
                retry=channel.policy.retry,
                classify=owner._classify(self._deadline),
                first=FirstAttempt(self._lease, None, error, verdict),
            )
        except NoServersAvailableError as no_server:
            self._error = LocalRpcError(grpc.StatusCode.UNAVAILABLE, str(no_server))
            return
        except Exception as failed:  # every attempt failed: the last one's error
            self._error = failed
            return
        opened = held.result
        self._call, self._backend, self._first = opened.call, opened.backend, opened.first
        if held.lease is None:  # not for an answer the engine hands back; be safe
            backends.leave(opened.backend)
        else:
            owner._end_with_rpc(opened.call, held.lease, opened.backend)
        if self._cancelled:  # cancelled while the retry was under way
            opened.call.cancel()

    def _settled_call(self) -> Any:
        """The call that answers (or the error that ended the stream), once settled."""
        self._settle()
        return self._call if self._error is None else self._error

    def __iter__(self) -> _RetryingStream:
        return self

    def __next__(self) -> Any:
        self._settle()
        if self._error is not None:
            raise self._error
        with self._lock:  # two readers must not both be handed the first message
            first, self._first = self._first, _NOT_READ
        if first is _END:
            raise StopIteration
        if first is not _NOT_READ:
            return first
        return next(self._call)

    next = __next__

    def is_active(self) -> bool:
        """Whether the RPC is active."""
        return self._error is None and bool(self._call.is_active())

    def time_remaining(self) -> float:
        """Seconds before the RPC's deadline."""
        remaining: float = self._call.time_remaining()
        return remaining

    def cancel(self) -> bool:
        """Cancel the RPC (it is not retried)."""
        self._cancelled = True
        return bool(self._call.cancel())

    def add_callback(self, callback: Callable[[], None]) -> bool:
        """Call ``callback`` when the RPC ends (False if it has ended)."""
        call = self._settled_call()
        return self._error is None and bool(call.add_callback(callback))

    def initial_metadata(self) -> Any:
        """The server's response headers."""
        return self._settled_call().initial_metadata()

    def trailing_metadata(self) -> Any:
        """The server's trailing metadata, once the RPC has ended."""
        return self._settled_call().trailing_metadata()

    def code(self) -> grpc.StatusCode:
        """The status code, once the RPC has ended."""
        code: grpc.StatusCode = self._settled_call().code()
        return code

    def details(self) -> str:
        """The status details, once the RPC has ended."""
        details: str = self._settled_call().details()
        return details

    def debug_error_string(self) -> str:
        """The real call's debug string."""
        return str(self._settled_call().debug_error_string())

    def cancelled(self) -> bool:
        """Whether the RPC was cancelled."""
        return self._cancelled or bool(self._call.cancelled())

    def running(self) -> bool:
        """Whether the RPC is running."""
        return self._error is None and bool(self._call.running())

    def done(self) -> bool:
        """Whether the RPC has ended."""
        return self._error is not None or bool(self._call.done())

    def result(self, timeout: float | None = None) -> Any:
        """As the real call's ``result``."""
        call = self._settled_call()
        if self._error is not None:
            raise self._error
        return call.result(timeout)

    def exception(self, timeout: float | None = None) -> Any:
        """As the real call's ``exception``."""
        call = self._settled_call()
        return self._error if self._error is not None else call.exception(timeout)

    def traceback(self, timeout: float | None = None) -> Any:
        """As the real call's ``traceback``."""
        call = self._settled_call()
        return None if self._error is not None else call.traceback(timeout)

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        """Call ``fn(self)`` when the stream ends."""
        call = self._settled_call()
        if self._error is not None:
            fn(self)
        else:
            call.add_done_callback(lambda _: fn(self))


@final
class _UnaryStream(_Call, _UnaryStreamBase):
    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        """Start the stream on a balanced server; it may move until its first message."""
        channel = self._channel
        backends = channel.backends
        deadline = deadline_of(timeout)
        key = self._key(metadata, request, False)

        def start(multi_callable: Any) -> Any:
            # The call's whole deadline, not per_try_timeout: that would cut a committed
            # stream short, and a blocking read cannot be interrupted before it.
            return multi_callable(
                request,
                timeout=time_left(deadline, None),
                metadata=metadata,
                credentials=credentials,
                wait_for_ready=wait_for_ready,
                compression=compression,
            )

        if channel.policy.retry.attempts == 1:
            return self._start_one(key, start)

        def attempt(server: str) -> Opened[grpc.Channel]:
            if stream is not None and stream._cancelled:  # cancelled while waiting to retry
                raise LocalRpcError(grpc.StatusCode.CANCELLED, "stream cancelled")
            backend = backends.enter(server)
            try:
                call = start(self._on(backend))
                try:
                    first: object = next(call)
                except StopIteration:
                    first = _END
            except BaseException:
                backends.leave(backend)
                raise
            return Opened(call, backend, first)

        stream: _RetryingStream | None = None
        lease, backend = self._lease_one(key)
        try:
            call = start(self._on(backend))
        except BaseException:
            lease.release(None)
            backends.leave(backend)
            raise
        stream = _RetryingStream(self, lease, backend, call, attempt, key, deadline)
        return stream


@final
class _StreamUnary(_Call, _StreamUnaryBase):
    def with_call(
        self,
        request_iterator: Iterator[Any],
        timeout: float | None = None,
        metadata: Metadata | None = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> tuple[Any, grpc.Call]:
        """Make the call on a balanced server, in one attempt; the response and its call."""
        lease, backend = self._lease_one(self._key(metadata, None, True))
        ok: bool | None = None
        try:
            answer: tuple[Any, grpc.Call] = self._on(backend).with_call(
                request_iterator, timeout, metadata, credentials, wait_for_ready, compression
            )
            ok = True
            return answer
        except grpc.RpcError as error:
            ok = self._channel.policy.outcome(rpc_facts(error)[0])
            raise
        finally:
            lease.release(ok)
            self._channel.backends.leave(backend)

    def __call__(
        self,
        request_iterator: Iterator[Any],
        timeout: float | None = None,
        metadata: Metadata | None = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        """As ``with_call``; the response."""
        return self.with_call(
            request_iterator, timeout, metadata, credentials, wait_for_ready, compression
        )[0]

    def future(
        self,
        request_iterator: Iterator[Any],
        timeout: float | None = None,
        metadata: Metadata | None = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        """Start the call on a balanced server, in one attempt; its ``grpc.Future``."""
        return self._start_one(
            self._key(metadata, None, True),
            lambda multi_callable: multi_callable.future(
                request_iterator, timeout, metadata, credentials, wait_for_ready, compression
            ),
        )


@final
class _StreamStream(_Call, _StreamStreamBase):
    def __call__(
        self,
        request_iterator: Iterator[Any],
        timeout: float | None = None,
        metadata: Metadata | None = None,
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
class BalancedChannel(grpc.Channel):
    """A ``grpc.Channel`` over one real channel per server of ``lb``: each call is balanced.

    Backend channels are made by ``channel_factory(server)`` if given, else
    ``grpc.secure_channel`` (with ``credentials``) or ``grpc.insecure_channel``, with
    ``options`` and ``compression``, and wrapped with ``interceptors``. ``policy`` judges
    and retries calls (``GrpcPolicy``); ``sticky`` gives calls a key (``StickyKey``).
    ``close()`` closes every backend channel.
    """

    def __init__(
        self,
        lb: LoadBalancer,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
        compression: grpc.Compression | None = None,
        interceptors: Sequence[Any] = (),
        channel_factory: Callable[[str], grpc.Channel] | None = None,
        policy: GrpcPolicy | None = None,
        sticky: StickyKey | None = None,
    ) -> None:
        self.lb = check_lb(lb)
        self.policy = check_channel_arguments(policy, sticky, credentials, channel_factory)
        self.sticky = sticky
        self._credentials = credentials
        self._options = tuple(options)
        self._compression = compression
        self._interceptors = tuple(interceptors)
        self._factory = channel_factory
        self._watch_lock = threading.Lock()
        self._subscribers: list[Callable[[grpc.ChannelConnectivity], None]] = []
        self._states: dict[str, grpc.ChannelConnectivity] = {}
        self._state: grpc.ChannelConnectivity | None = None
        self._watched: dict[grpc.Channel, str] = {}  # backend channels followed, and whose
        self._connect = False  # whether a subscriber asked every backend to connect
        self.backends: Backends[grpc.Channel] = Backends(
            lb, self._open, self._close_departed, changed=self._changed
        )

    def _open(self, server: str) -> grpc.Channel:
        if self._factory is not None:
            channel = self._factory(server)
        elif self._credentials is not None:
            channel = grpc.secure_channel(
                server, self._credentials, self._options, self._compression
            )
        else:
            channel = grpc.insecure_channel(server, self._options, self._compression)
        if self._interceptors:
            channel = grpc.intercept_channel(channel, *self._interceptors)
        with self._watch_lock:
            watched, connect = bool(self._subscribers), self._connect
        if watched:
            self._watch(server, channel)
        if connect:
            _connect(channel)
        return channel

    def _close_backend(self, channel: grpc.Channel) -> None:
        with self._watch_lock:
            server = self._watched.pop(channel, None)
            if server is not None:
                self._states.pop(server, None)
        channel.close()

    def _close_departed(self, channel: grpc.Channel) -> None:
        """Close a departed server's channel, in a thread of its own: its last call may end
        in a done callback on that channel's own grpc thread, which ``close()`` waits for."""
        threading.Thread(
            target=self._close_backend,
            args=(channel,),
            name="loadbalancer grpc close",
            daemon=True,
        ).start()

    # -- the grpc.Channel interface --------------------------------------------------------

    def unary_unary(
        self,
        method: str,
        request_serializer: Serializer = None,
        response_deserializer: Deserializer = None,
        _registered_method: bool | None = False,
    ) -> grpc.UnaryUnaryMultiCallable[Any, Any]:
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
    ) -> grpc.UnaryStreamMultiCallable[Any, Any]:
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
    ) -> grpc.StreamUnaryMultiCallable[Any, Any]:
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
    ) -> grpc.StreamStreamMultiCallable[Any, Any]:
        """A multi-callable for a bidirectional-streaming method, balanced per call."""
        return _StreamStream(
            self, "stream_stream", method, request_serializer, response_deserializer,
            _registered_method,
        )  # fmt: skip

    def subscribe(
        self, callback: Callable[[grpc.ChannelConnectivity], None], try_to_connect: bool = False
    ) -> None:
        """Call ``callback`` with the channel's state now and whenever it changes.

        The state is the best of the backends' (READY if any is ready, then CONNECTING, IDLE,
        TRANSIENT_FAILURE; TRANSIENT_FAILURE with no servers; SHUTDOWN once closed), as
        gRPC's own round_robin reports it. ``try_to_connect`` asks every backend to connect.
        """
        with self._watch_lock:
            self._subscribers.append(callback)
            self._connect = self._connect or try_to_connect  # servers joining later too
        for server, channel in self.backends.live().items():
            self._watch(server, channel)
            if try_to_connect:
                _connect(channel)
        callback(self._aggregate())

    def unsubscribe(self, callback: Callable[[grpc.ChannelConnectivity], None]) -> None:
        """Stop calling ``callback``."""
        with self._watch_lock:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

    def close(self) -> None:
        """Close every backend channel and stop following the balancer (calls are cancelled).

        Not from a grpc callback (a future's done callback, say): grpc's own ``close()``
        waits for the thread that runs those.
        """
        for channel in self.backends.close():
            self._close_backend(channel)
        self._changed()

    def __enter__(self) -> BalancedChannel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"BalancedChannel({self.lb!r})"

    # -- connectivity -------------------------------------------------------------------------

    def _watch(self, server: str, channel: grpc.Channel) -> None:
        """Follow ``channel``'s state (once per channel, however often subscribed)."""
        with self._watch_lock:
            if channel in self._watched:
                return
            self._watched[channel] = server

        def on_state(state: grpc.ChannelConnectivity) -> None:
            with self._watch_lock:
                if self._watched.get(channel) != server:
                    return  # closed since
                self._states[server] = state
            self._changed()

        channel.subscribe(on_state)

    def _aggregate(self) -> grpc.ChannelConnectivity:
        if self.backends.closed:
            return grpc.ChannelConnectivity.SHUTDOWN
        live = self.backends.live()
        with self._watch_lock:
            states = {state for server, state in self._states.items() if server in live}
        return best_state(states)

    def _changed(self) -> None:
        with self._watch_lock:
            if not self._subscribers:
                return
        state = self._aggregate()
        with self._watch_lock:
            if state is self._state:
                return
            self._state = state
            subscribers = list(self._subscribers)
        for callback in subscribers:
            callback(state)


def _ignore(_: grpc.ChannelConnectivity) -> None:
    """A connectivity callback that does nothing, to ask a channel to connect."""


def _connect(channel: grpc.Channel) -> None:
    """Ask ``channel`` to connect now (grpc's channels connect on their first call)."""
    channel.subscribe(_ignore, try_to_connect=True)
    channel.unsubscribe(_ignore)


class HealthProbeSettings:
    """What the sync and asyncio gRPC health probes are given, checked once, and their call."""

    def __init__(
        self,
        service: str = "",
        *,
        timeout: float = 1.0,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        if not isinstance(service, str):
            raise TypeError(f"service must be a str, not {type(service).__name__}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.service = service
        self.timeout = float(timeout)
        self._credentials = credentials
        self._options = tuple(options)

    def _check(self, channel: Any) -> Any:
        """``Health/Check`` for ``service`` on ``channel``, started (a sync or aio call)."""
        return channel.unary_unary(
            HEALTH_CHECK,
            health_pb2.HealthCheckRequest.SerializeToString,
            health_pb2.HealthCheckResponse.FromString,
        )(health_pb2.HealthCheckRequest(service=self.service), timeout=self.timeout)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(service={self.service!r}, timeout={self.timeout:g})"


@final
class GrpcHealthProbe(HealthProbeSettings):
    """A probe asking a server's ``grpc.health.v1.Health/Check`` for ``service``.

    Healthy when the answer is SERVING. Each probe opens a channel to the server (with
    ``credentials`` if given, else insecure) and closes it; ``timeout`` bounds the whole
    probe. Not healthy, with the reason: NOT_SERVING or another status, the RPC's code (a
    server without the health service answers UNIMPLEMENTED), or the timeout.
    """

    def __call__(self, server: str) -> ProbeResult:
        """Probe ``server`` (``host:port``) once."""
        if self._credentials is None:
            channel = grpc.insecure_channel(server, self._options)
        else:
            channel = grpc.secure_channel(server, self._credentials, self._options)
        try:
            answer = self._check(channel)
        except grpc.RpcError as error:
            return ProbeResult(False, describe_rpc_error(error, self.timeout))
        finally:
            channel.close()
        return health_verdict(answer.status)


def describe_rpc_error(error: grpc.RpcError, timeout: float) -> str:
    """Why a health RPC failed, in the words a checker's status shows."""
    code = rpc_facts(error)[0]
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"timed out after {timeout:g} s"
    if code is grpc.StatusCode.UNIMPLEMENTED:
        return "no grpc.health.v1.Health service (UNIMPLEMENTED)"
    facts: Any = error  # grpc's errors are also its Call objects: they have details()
    details = facts.details() if hasattr(facts, "details") else ""
    name = code.name if code is not None else type(error).__name__
    return f"{name}: {details}" if details else name


def health_verdict(status: int) -> ProbeResult:
    """The probe result of a ``HealthCheckResponse`` status."""
    if status == health_pb2.HealthCheckResponse.SERVING:
        return ProbeResult(True)
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    return ProbeResult(False, f"status {name}")
