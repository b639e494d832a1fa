"""Lease: one request in flight, from pick to outcome."""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, final

from ._snapshot import Endpoint
from ._validation import check_bool, check_number

if TYPE_CHECKING:
    from ._balancer import LoadBalancer

__all__ = ["Lease", "check_latency"]


def check_latency(latency: object) -> float | None:
    """Return ``latency`` if it is None or a finite number of seconds >= 0, else raise."""
    return None if latency is None else check_number(latency, "latency", at_least=0)


@final
class Lease:
    """A request in flight on ``server``, counted until released.

    As a context manager it yields the server and releases on exit: a clean exit is a success,
    an escaping exception a failure, unless ``mark(ok=...)`` said otherwise. Without ``with``,
    call ``release(ok=...)``; releasing again is harmless and not counted. Latency is measured
    with the balancer's clock from acquisition to release.
    """

    __slots__ = ("_balancer", "_endpoint", "_outcome", "_started", "released", "server")

    def __init__(self, balancer: LoadBalancer, endpoint: Endpoint, started: float) -> None:
        self.server = endpoint.server
        self._balancer = balancer
        self._endpoint = endpoint
        self._started = started
        self._outcome: bool | None = None
        self.released = False

    def mark(self, ok: bool) -> None:
        """Set the outcome recorded on exit, whatever the block raises."""
        self._outcome = check_bool(ok, "ok")

    def release(self, ok: bool = True, latency: float | None = None) -> bool:
        """Record the outcome and stop counting the request; False if already released."""
        check_bool(ok, "ok")
        given = check_latency(latency)
        now = self._balancer._clock()
        if given is None:
            given = max(now - self._started, 0.0)  # max: a clock that is not monotonic
        return self._end(ok, given, now)

    def __enter__(self) -> str:
        return self.server

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # release() and _end(), unrolled: this runs once per request.
        balancer = self._balancer
        endpoint = self._endpoint
        now = balancer._clock()
        latency = now - self._started
        ok = exc_type is None if self._outcome is None else self._outcome
        ended = endpoint._complete(
            self, ok, latency if latency > 0.0 else 0.0, now, balancer._decay, 1.0
        )
        if ended and not ok:
            balancer._after_failure(endpoint, now)

    def _end(self, ok: bool, latency: float, now: float) -> bool:
        balancer = self._balancer
        ended = self._endpoint._complete(self, ok, latency, now, balancer._decay, 1.0)
        if ended and not ok:
            balancer._after_failure(self._endpoint, now)
        return ended

    def __repr__(self) -> str:
        state = "released" if self.released else "in flight"
        return f"<Lease {self.server!r} {state}>"
