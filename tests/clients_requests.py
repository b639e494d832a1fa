"""The requests driver of the shared behavioural suite: a Session over ``BalancedAdapter``."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import requests

from loadbalancer import LoadBalancer
from loadbalancer.integrations.requests import BalancedAdapter, HttpPolicy, NoBackendAvailable

# http_clients imports this module as it loads (for CLIENTS): importing its helpers here at the
# top would fail whenever this module is imported first, so they are imported where used.
if TYPE_CHECKING:
    from .http_clients import Reply


def _reply(response: requests.Response) -> Reply:
    from .http_clients import Reply

    return Reply(
        response.status_code, response.content, {k.lower(): v for k, v in response.headers.items()}
    )


class RequestsClient:
    """``requests.Session`` with ``BalancedAdapter`` mounted for every http(s) URL."""

    name = "requests"
    timeout_error: type[BaseException] = requests.Timeout
    no_backend_error: type[BaseException] = NoBackendAvailable
    refused_error_type = "requests.ConnectionError"
    timeout_error_type = "requests.ReadTimeout"  # the per-try timeout caps requests' own

    def __init__(
        self, lb: LoadBalancer, policy: HttpPolicy | None, *, meter_provider: Any = None
    ) -> None:
        self.adapter = BalancedAdapter(lb, policy=policy, meter_provider=meter_provider)
        self._http = requests.Session()
        self._http.mount("http://", self.adapter)
        self._http.mount("https://", self.adapter)

    def get(self, url: str, headers: Mapping[str, str] | None = None) -> Reply:
        with self._http.get(url, headers=headers) as response:
            return _reply(response)

    def post(self, url: str, body: bytes) -> Reply:
        with self._http.post(url, data=body) as response:
            return _reply(response)

    def sse(self, url: str, on_event: Callable[[int], bool]) -> int:
        events = 0
        with self._http.get(url, stream=True) as response:
            for line in response.iter_lines():
                if line.startswith(b"data:"):
                    events += 1
                    if not on_event(events):
                        break
        return events

    def cancelled_get(self, url: str, arrived: Callable[[], None]) -> None:
        from .http_clients import Interrupted, interrupt_main

        with contextlib.suppress(Interrupted), interrupt_main(arrived):
            self._http.get(url)
            raise AssertionError("the request was not interrupted")

    def settle(self) -> None:
        pass  # a blocking request leaves nothing running

    def close(self) -> None:
        self._http.close()
