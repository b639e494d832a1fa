"""Every HTTP client integration behind one blocking interface, for the shared behavioural suite.

``tests/test_http_clients.py`` runs the same tests through each ``Client`` in ``CLIENTS``, so
the integrations cannot drift apart. A ``Client`` drives one library's real client through its
balanced integration (the httpx transports, the requests adapter, the aiohttp middleware) and
answers with plain ``Reply`` values. Async clients run on an event loop of their own, in a
thread (``LoopThread``): their methods block the calling thread, and several threads calling
at once make as many coroutines run concurrently on that loop.

Cancellation is each world's own: an async request is cancelled as a task; a blocking request
is interrupted by a ``BaseException`` raised in the calling thread (``interrupt_main``), which is
what Ctrl-C does to a blocking client.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import signal
import threading
from collections.abc import Callable, Coroutine, Iterator, Mapping
from concurrent.futures import Future
from typing import Any, Protocol, TypeVar

import httpx

from loadbalancer import LoadBalancer
from loadbalancer.integrations.httpx import (
    AsyncBalancedTransport,
    BalancedTransport,
    HttpPolicy,
    NoBackendAvailable,
)

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Reply:
    """A response as the tests see it: status, body, and headers with lower-case names."""

    status: int
    body: bytes
    headers: Mapping[str, str]

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def backend(self) -> str:
        """The name of the backend that answered (every test backend sends X-Backend)."""
        return self.headers["x-backend"]


class Client(Protocol):
    """One client library through its balanced integration, seen as blocking calls."""

    name: str
    timeout_error: type[BaseException]  # what an exhausted per-try timeout raises
    no_backend_error: type[BaseException]  # what "no server available" raises
    refused_error_type: str  # the error.type of an attempt whose connection was refused
    timeout_error_type: str  # the error.type of an attempt cut off by the per-try timeout

    def get(self, url: str, headers: Mapping[str, str] | None = None) -> Reply:
        """GET ``url`` and read the whole body."""
        ...

    def post(self, url: str, body: bytes) -> Reply:
        """POST ``body`` to ``url`` and read the whole answer."""
        ...

    def sse(self, url: str, on_event: Callable[[int], bool]) -> int:
        """Stream ``url``'s server-sent events, calling ``on_event(n)`` after event n (from
        1) while the body is open; stop early (closing the body) when it returns False.
        Return the number of events read."""
        ...

    def cancelled_get(self, url: str, arrived: Callable[[], None]) -> None:
        """GET ``url`` and cancel it once ``arrived()`` (which blocks until the backend has
        the request) returns; return when the cancellation has unwound."""
        ...

    def settle(self) -> None:
        """Wait until what the client left running is done (async: abandoned attempts, such
        as a hedge that lost, still unwinding); blocking clients leave nothing."""
        ...

    def close(self) -> None:
        """Close the client and its integration."""
        ...


class ClientFactory(Protocol):
    """Builds a ``Client`` over ``lb``; ``meter_provider`` goes to the integration as is (Any:
    the tests give bad values too)."""

    def __call__(
        self, lb: LoadBalancer, policy: HttpPolicy | None, *, meter_provider: Any = None
    ) -> Client: ...


# -- helpers the drivers share --------------------------------------------------------------------


class LoopThread:
    """An event loop running in a thread of its own; ``run`` blocks until a coroutine is done."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def cancel_when(
        self, coroutine: Coroutine[Any, Any, object], arrived: Callable[[], None]
    ) -> None:
        """Run ``coroutine``, cancel it once ``arrived()`` returns, and wait for it to unwind."""
        future = self.submit(coroutine)
        arrived()
        future.cancel()  # cancels the task on the loop
        with contextlib.suppress(BaseException):
            future.result(timeout=5)
        self.run(asyncio.sleep(0))  # let the task's own callbacks run

    def settle(self, timeout: float = 5.0) -> None:
        """Wait until every task on the loop, but the one waiting, is done."""

        async def settle() -> None:
            others = asyncio.all_tasks() - {asyncio.current_task()}
            if others:
                await asyncio.wait(others, timeout=timeout)

        self.run(settle())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


class Interrupted(BaseException):
    """Raised in the main thread to cancel a blocking request (as Ctrl-C would)."""


@contextlib.contextmanager
def interrupt_main(arrived: Callable[[], None]) -> Iterator[None]:
    """Raise ``Interrupted`` in the main thread once ``arrived()`` returns, within the block.

    The block must run in the main thread (signal handlers run there); a blocking socket call
    in it is interrupted (PEP 475 runs the handler, whose exception propagates).
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("interrupt_main needs the main thread")
    main = threading.main_thread().ident
    assert main is not None
    fired = threading.Event()

    def handler(signum: int, frame: object) -> None:
        raise Interrupted

    def watcher() -> None:
        arrived()
        fired.set()
        signal.pthread_kill(main, signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, handler)
    thread = threading.Thread(target=watcher, daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join(10)
        signal.signal(signal.SIGUSR1, previous)
    assert fired.is_set()


# -- httpx ----------------------------------------------------------------------------------------


def _reply(response: httpx.Response) -> Reply:
    return Reply(response.status_code, response.content, dict(response.headers))


class HttpxClient:
    """``httpx.Client`` over ``BalancedTransport``."""

    name = "httpx"
    timeout_error: type[BaseException] = httpx.TimeoutException
    no_backend_error: type[BaseException] = NoBackendAvailable
    refused_error_type = "httpx.ConnectError"
    timeout_error_type = "httpx.ReadTimeout"  # the per-try timeout caps httpx's own

    def __init__(
        self, lb: LoadBalancer, policy: HttpPolicy | None, *, meter_provider: Any = None
    ) -> None:
        transport = BalancedTransport(lb, policy=policy, meter_provider=meter_provider)
        self._http = httpx.Client(transport=transport)

    def get(self, url: str, headers: Mapping[str, str] | None = None) -> Reply:
        return _reply(self._http.get(url, headers=headers))

    def post(self, url: str, body: bytes) -> Reply:
        return _reply(self._http.post(url, content=body))

    def sse(self, url: str, on_event: Callable[[int], bool]) -> int:
        events = 0
        with self._http.stream("GET", url) as response:
            for line in response.iter_lines():
                if line.startswith("data:"):
                    events += 1
                    if not on_event(events):
                        break
        return events

    def cancelled_get(self, url: str, arrived: Callable[[], None]) -> None:
        with contextlib.suppress(Interrupted), interrupt_main(arrived):
            self._http.get(url)
            raise AssertionError("the request was not interrupted")

    def settle(self) -> None:
        pass  # a blocking request leaves nothing running

    def close(self) -> None:
        self._http.close()


class AsyncHttpxClient:
    """``httpx.AsyncClient`` over ``AsyncBalancedTransport``, on a loop of its own."""

    name = "httpx-async"
    timeout_error: type[BaseException] = httpx.TimeoutException
    no_backend_error: type[BaseException] = NoBackendAvailable
    refused_error_type = "httpx.ConnectError"
    timeout_error_type = "loadbalancer.AttemptTimeoutError"  # the engine cancels the attempt

    def __init__(
        self, lb: LoadBalancer, policy: HttpPolicy | None, *, meter_provider: Any = None
    ) -> None:
        transport = AsyncBalancedTransport(lb, policy=policy, meter_provider=meter_provider)
        self._loop = LoopThread()
        self._http = httpx.AsyncClient(transport=transport)

    def get(self, url: str, headers: Mapping[str, str] | None = None) -> Reply:
        async def get() -> Reply:
            return _reply(await self._http.get(url, headers=headers))

        return self._loop.run(get())

    def post(self, url: str, body: bytes) -> Reply:
        async def post() -> Reply:
            return _reply(await self._http.post(url, content=body))

        return self._loop.run(post())

    def sse(self, url: str, on_event: Callable[[int], bool]) -> int:
        async def sse() -> int:
            events = 0
            async with self._http.stream("GET", url) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data:"):
                        events += 1
                        if not on_event(events):
                            break
            return events

        return self._loop.run(sse())

    def cancelled_get(self, url: str, arrived: Callable[[], None]) -> None:
        self._loop.cancel_when(self._http.get(url), arrived)

    def settle(self) -> None:
        self._loop.settle()

    def close(self) -> None:
        self._loop.run(self._http.aclose())
        self._loop.close()


def _clients() -> dict[str, ClientFactory]:
    # Imported here: those modules import this one for Reply and the helpers above.
    from .clients_aiohttp import AiohttpClient
    from .clients_requests import RequestsClient

    every: list[ClientFactory] = [HttpxClient, AsyncHttpxClient, RequestsClient, AiohttpClient]
    return {factory.name: factory for factory in every}  # type: ignore[attr-defined]


CLIENTS: dict[str, ClientFactory] = _clients()
"""Every client the shared suite runs through, by name (a test checks it names every
integration in ``loadbalancer.integrations``)."""
