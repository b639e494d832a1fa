"""The balanced gRPC channels, sync and asyncio, behind one blocking interface for the tests.

``SyncClient`` drives a ``BalancedChannel`` directly; ``AsyncClient`` drives an
``AsyncBalancedChannel`` on an event loop in a thread of its own, so the same behavioural
test (8 threads calling at once included) runs against both.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, Protocol, TypeVar

import grpc
import grpc.aio

from loadbalancer import LoadBalancer
from loadbalancer.integrations.grpc import BalancedChannel
from loadbalancer.integrations.grpc_aio import AsyncBalancedChannel

from .grpc_servers import CHAT, COLLECT, STREAM, UNARY

T = TypeVar("T")
Metadata = tuple[tuple[str, str], ...]


class Stream(Protocol):
    """A server stream in progress."""

    def next(self) -> bytes: ...
    def rest(self) -> list[bytes]: ...
    def cancel(self) -> None: ...
    def code(self) -> grpc.StatusCode: ...


class Client(Protocol):
    """A balanced channel, sync or asyncio, as the behavioural tests use it."""

    channel: Any

    def unary(
        self, request: bytes = b"x", *, metadata: Metadata = (), timeout: float | None = None
    ) -> bytes: ...
    def unary_with_code(self, request: bytes = b"x") -> tuple[bytes, grpc.StatusCode]: ...
    def stream(self, request: bytes, *, metadata: Metadata = ()) -> Stream: ...
    def collect(self, messages: list[bytes]) -> bytes: ...
    def chat(self, messages: list[bytes]) -> list[bytes]: ...
    def call_soon(self, fn: Callable[[], T]) -> T: ...
    def close(self) -> None: ...


class _SyncStream:
    def __init__(self, call: Any) -> None:
        self._call = call

    def next(self) -> bytes:
        message: bytes = next(self._call)
        return message

    def rest(self) -> list[bytes]:
        return list(self._call)

    def cancel(self) -> None:
        self._call.cancel()

    def code(self) -> grpc.StatusCode:
        code: grpc.StatusCode = self._call.code()
        return code


class SyncClient:
    """``BalancedChannel(lb, **options)``."""

    def __init__(self, lb: LoadBalancer, **options: Any) -> None:
        self.channel = BalancedChannel(lb, **options)

    def unary(
        self, request: bytes = b"x", *, metadata: Metadata = (), timeout: float | None = None
    ) -> bytes:
        answer: bytes = self.channel.unary_unary(UNARY)(request, metadata=metadata, timeout=timeout)
        return answer

    def unary_with_code(self, request: bytes = b"x") -> tuple[bytes, grpc.StatusCode]:
        answer, call = self.channel.unary_unary(UNARY).with_call(request)
        return answer, call.code()

    def stream(self, request: bytes, *, metadata: Metadata = ()) -> Stream:
        return _SyncStream(self.channel.unary_stream(STREAM)(request, metadata=metadata))

    def collect(self, messages: list[bytes]) -> bytes:
        answer: bytes = self.channel.stream_unary(COLLECT)(iter(messages))
        return answer

    def chat(self, messages: list[bytes]) -> list[bytes]:
        return list(self.channel.stream_stream(CHAT)(iter(messages)))

    def call_soon(self, fn: Callable[[], T]) -> T:
        return fn()

    def close(self) -> None:
        self.channel.close()


class _AsyncStream:
    def __init__(self, client: AsyncClient, call: Any) -> None:
        self._client = client
        self._call = call

    def next(self) -> bytes:
        async def read() -> bytes:
            message = await self._call.read()
            if message is grpc.aio.EOF:
                raise StopIteration
            answer: bytes = message
            return answer

        return self._client.run(read())

    def rest(self) -> list[bytes]:
        async def drain() -> list[bytes]:
            return [message async for message in self._call]

        return self._client.run(drain())

    def cancel(self) -> None:
        self._client.call_soon(self._call.cancel)

    def code(self) -> grpc.StatusCode:
        async def code() -> grpc.StatusCode:
            answer: grpc.StatusCode = await self._call.code()
            return answer

        return self._client.run(code())


class AsyncClient:
    """``AsyncBalancedChannel(lb, **options)`` on an event loop in its own thread."""

    def __init__(self, lb: LoadBalancer, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="grpc aio client")
        self._thread.start()

        async def make() -> AsyncBalancedChannel:
            return AsyncBalancedChannel(lb, **options)

        self.channel = self.run(make())

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=30)

    def call_soon(self, fn: Callable[[], T]) -> T:
        async def call() -> T:
            return fn()

        return self.run(call())

    def unary(
        self, request: bytes = b"x", *, metadata: Metadata = (), timeout: float | None = None
    ) -> bytes:
        async def call() -> bytes:
            answer: bytes = await self.channel.unary_unary(UNARY)(
                request, metadata=metadata, timeout=timeout
            )
            return answer

        return self.run(call())

    def unary_with_code(self, request: bytes = b"x") -> tuple[bytes, grpc.StatusCode]:
        async def call() -> tuple[bytes, grpc.StatusCode]:
            pending = self.channel.unary_unary(UNARY)(request)
            answer: bytes = await pending
            return answer, await pending.code()

        return self.run(call())

    def stream(self, request: bytes, *, metadata: Metadata = ()) -> Stream:
        async def start() -> Any:
            return self.channel.unary_stream(STREAM)(request, metadata=metadata)

        return _AsyncStream(self, self.run(start()))

    def collect(self, messages: list[bytes]) -> bytes:
        async def call() -> bytes:
            answer: bytes = await self.channel.stream_unary(COLLECT)(iter(messages))
            return answer

        return self.run(call())

    def chat(self, messages: list[bytes]) -> list[bytes]:
        async def call() -> list[bytes]:
            return [m async for m in self.channel.stream_stream(CHAT)(iter(messages))]

        return self.run(call())

    def close(self) -> None:
        try:
            self.run(self.channel.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()


MakeClient = Callable[..., Client]


def clients() -> Iterator[tuple[str, MakeClient]]:
    """Each client kind, by name, for ``pytest.mark.parametrize``."""
    yield "sync", SyncClient
    yield "aio", AsyncClient
