"""The aiohttp driver of the shared behavioural suite (see ``tests/http_clients.py``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import aiohttp

from loadbalancer import LoadBalancer
from loadbalancer.integrations.aiohttp import BalancedMiddleware, HttpPolicy, NoBackendAvailable

# http_clients imports this module as it loads (for CLIENTS): importing its helpers here at the
# top would fail whenever this module is imported first, so they are imported where used.
if TYPE_CHECKING:
    from .http_clients import Reply


async def _reply(response: aiohttp.ClientResponse) -> Reply:
    from .http_clients import Reply

    body = await response.read()
    headers = {name.lower(): value for name, value in response.headers.items()}
    return Reply(response.status, body, headers)


class AiohttpClient:
    """``aiohttp.ClientSession`` through ``BalancedMiddleware``, on a loop of its own."""

    name = "aiohttp"
    timeout_error: type[BaseException] = aiohttp.ServerTimeoutError  # PerTryTimeout is one
    no_backend_error: type[BaseException] = NoBackendAvailable
    refused_error_type = "aiohttp.ClientConnectorError"
    timeout_error_type = "loadbalancer.AttemptTimeoutError"  # the engine cancels the attempt

    def __init__(
        self, lb: LoadBalancer, policy: HttpPolicy | None, *, meter_provider: Any = None
    ) -> None:
        from .http_clients import LoopThread

        self.middleware = BalancedMiddleware(lb, policy=policy, meter_provider=meter_provider)
        self._loop = LoopThread()

        async def session() -> aiohttp.ClientSession:  # a session belongs to its loop
            return aiohttp.ClientSession(middlewares=(self.middleware,))

        self._http = self._loop.run(session())

    def get(self, url: str, headers: Mapping[str, str] | None = None) -> Reply:
        async def get() -> Reply:
            async with self._http.get(url, headers=headers) as response:
                return await _reply(response)

        return self._loop.run(get())

    def post(self, url: str, body: bytes) -> Reply:
        async def post() -> Reply:
            async with self._http.post(url, data=body) as response:
                return await _reply(response)

        return self._loop.run(post())

    def sse(self, url: str, on_event: Callable[[int], bool]) -> int:
        async def sse() -> int:
            events = 0
            async with self._http.get(url) as response:
                async for line in response.content:
                    if line.startswith(b"data:"):
                        events += 1
                        if not on_event(events):
                            break
            return events

        return self._loop.run(sse())

    def cancelled_get(self, url: str, arrived: Callable[[], None]) -> None:
        async def get() -> None:
            async with self._http.get(url) as response:
                await response.read()

        self._loop.cancel_when(get(), arrived)

    def settle(self) -> None:
        self._loop.settle()

    def close(self) -> None:
        try:
            self._loop.run(self._http.close())
            self.middleware.close()
        finally:
            self._loop.close()
