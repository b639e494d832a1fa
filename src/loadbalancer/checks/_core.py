"""What the threaded and the asyncio checker share: settings, verdicts, publishing, logging."""

from __future__ import annotations

import inspect
import logging
import random
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol, cast, final

from .._validation import check_callable, check_number, check_positive_int
from ..strategies._draw import resolve_rng
from ._result import ProbeResult
from ._state import HealthCheckStatus, RiseFall

__all__ = [
    "Core",
    "HealthCheckTarget",
    "call_async_probe",
    "call_sync_probe",
    "check_probe",
    "check_seconds",
    "describe_error",
    "describe_result",
    "is_async_callable",
    "logger",
]

# Named for what it reports, not for this package: applications configure it by this name,
# which predates the move of the checkers from loadbalancer.health to loadbalancer.checks.
logger = logging.getLogger("loadbalancer.health")


class HealthCheckTarget(Protocol):
    """What a checker needs from a balancer; ``LoadBalancer`` provides it."""

    @property
    def servers(self) -> tuple[str, ...]:
        """The servers to probe, read afresh every round."""
        ...

    def set_healthy(self, server: str, healthy: bool) -> bool:
        """Record the checker's verdict; False if ``server`` is no longer registered."""
        ...

    def refresh(self) -> None:
        """Apply time-driven changes; called once per round."""
        ...


def check_seconds(value: object, name: str, *, zero_ok: bool = False) -> float:
    """Return ``value`` as a float if it is a finite number > 0 (>= 0 if ``zero_ok``)."""
    if zero_ok:
        return check_number(value, name, at_least=0)
    return check_number(value, name, above=0)


def _check_target(lb: object) -> HealthCheckTarget:
    missing = [name for name in ("servers", "set_healthy", "refresh") if not hasattr(lb, name)]
    if missing:
        raise TypeError(
            f"lb must be a LoadBalancer (or provide servers, set_healthy and refresh); "
            f"{type(lb).__name__} lacks {', '.join(missing)}"
        )
    return lb  # type: ignore[return-value]  # checked structurally just above


def check_probe(probe: object) -> Callable[[str], object]:
    """Return ``probe`` if it is callable and not a class, else raise TypeError naming it."""
    if isinstance(probe, type):
        # Calling a class makes an instance, which is never True: every probe would fail,
        # silently. HealthChecker(lb, TcpProbe) for HealthChecker(lb, TcpProbe()) is the usual
        # slip.
        name = probe.__name__
        raise TypeError(f"probe must be a probe instance such as {name}(), not the class {name}")
    return check_callable(probe, "probe")


def is_async_callable(probe: object) -> bool:
    """Whether calling ``probe`` returns a coroutine: an ``async def`` or an async ``__call__``."""
    # iscoroutinefunction sees through functools.partial and bound methods, not through
    # instances, so look at the instance's __call__ as well (AsyncTcpProbe is one).
    return inspect.iscoroutinefunction(probe) or inspect.iscoroutinefunction(
        getattr(probe, "__call__", None)  # noqa: B004  # we want the coroutine check
    )


def describe_result(result: object) -> str | None:
    """None for a passing probe result, else the reason it counts as a failure."""
    if result is True:
        return None
    if isinstance(result, ProbeResult):
        if result.healthy:
            return None
        return result.reason or "probe returned an unhealthy ProbeResult without a reason"
    if result is False:
        return "probe returned False"
    return f"probe returned {type(result).__name__}, not True or a ProbeResult"


def describe_error(exc: BaseException) -> str:
    """The reason a probe that raised ``exc`` failed, for statuses and logs."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def call_sync_probe(probe: Callable[[str], object], server: str) -> str | None:
    """Run a blocking probe; None if it passed, else why it failed. Never raises Exception."""
    try:
        result = probe(server)
    except Exception as exc:  # a probe that raises has failed, whatever it raised
        logger.debug("probe of %s raised", server, exc_info=True)
        return describe_error(exc)
    if inspect.isawaitable(result):
        if inspect.iscoroutine(result):
            result.close()  # never awaited, and saying so beats a RuntimeWarning at exit
        return "probe returned an awaitable; async probes need AsyncHealthChecker"
    return describe_result(result)


async def call_async_probe(probe: Callable[[str], object], server: str) -> str | None:
    """Await an async probe; None if it passed, else why it failed. Never raises Exception."""
    try:
        result = await cast(Awaitable[object], probe(server))
    except Exception as exc:  # a probe that raises has failed, whatever it raised
        logger.debug("probe of %s raised", server, exc_info=True)
        return describe_error(exc)
    return describe_result(result)


@final
class Core:
    """Settings, rise/fall state and verdict publishing, shared by both checkers.

    Every method but ``statuses`` and ``delay`` is called by one round at a time.
    """

    __slots__ = (
        "clock",
        "fall",
        "initially_healthy",
        "interval",
        "jitter",
        "lb",
        "probe",
        "rise",
        "rng",
        "timeout",
        "tracker",
    )

    def __init__(
        self,
        lb: HealthCheckTarget,
        probe: object,
        *,
        interval: float,
        timeout: float,
        rise: int,
        fall: int,
        jitter: float,
        initially_healthy: bool,
        clock: Callable[[], float],
        rng: random.Random | None,
    ) -> None:
        self.lb = _check_target(lb)
        self.probe = check_probe(probe)
        self.interval = check_seconds(interval, "interval")
        self.timeout = check_seconds(timeout, "timeout")
        self.rise = check_positive_int(rise, "rise")
        self.fall = check_positive_int(fall, "fall")
        self.jitter = check_seconds(jitter, "jitter", zero_ok=True)
        if not isinstance(initially_healthy, bool):
            raise TypeError(
                f"initially_healthy must be a bool, not {type(initially_healthy).__name__}"
            )
        self.initially_healthy = initially_healthy
        self.clock: Callable[[], float] = check_callable(clock, "clock")
        self.rng = resolve_rng(rng)
        self.tracker = RiseFall(self.rise, self.fall, initially_healthy)

    def delay(self) -> float:
        """Seconds from the end of one round to the start of the next.

        Envoy-style jitter: the interval plus a random extra of up to ``jitter`` x interval,
        so checkers started together (many clients, one backend) drift apart.
        """
        if not self.jitter:
            return self.interval
        return self.interval + self.rng.uniform(0.0, self.jitter * self.interval)

    def begin_round(self) -> tuple[str, ...]:
        """Read the servers for this round, follow new ones and publish their first verdict."""
        servers = tuple(self.lb.servers)
        for server in self.tracker.track(servers):
            # Published even when it is "healthy" (the balancer's default for a new server):
            # an earlier checker may have left its verdict behind.
            self.lb.set_healthy(server, self.initially_healthy)
            if not self.initially_healthy:
                logger.info(
                    "%s is unhealthy until it passes %d probe(s) in a row", server, self.rise
                )
        return servers

    def record(self, server: str, ok: bool, failure: str | None) -> None:
        """Apply one probe result, publish the verdict and log a flip."""
        change = self.tracker.record(server, ok, self.clock(), failure)
        if change is None:  # the server left the pool mid-round
            return
        before, after = change
        # Published after every result, not only on a flip: set_healthy is cheap when nothing
        # changes, and it heals a verdict lost when a server was removed and re-added between
        # two rounds (the balancer's new entry starts healthy).
        self.lb.set_healthy(server, after.healthy)
        if failure is not None:
            logger.debug("probe of %s failed: %s", server, failure)
        if after.healthy and not before.healthy:
            logger.info("%s is healthy: %d probe(s) passed in a row", server, after.successes)
        elif before.healthy and not after.healthy:
            logger.warning(
                "%s is unhealthy: %d probe(s) failed in a row (last: %s)",
                server,
                after.failures,
                failure,
            )

    def charge_busy(self, server: str) -> None:
        """Fail ``server`` without probing it: its previous probe is still running."""
        # Never two probes of one server at once; still no answer is another failure.
        self.record(server, False, "the previous probe has not returned")

    def charge_unanswered(self, servers: tuple[str, ...], pending: Iterable[str]) -> None:
        """Fail every server of ``pending`` (in round order): no answer by the deadline."""
        pending = set(pending)
        for server in servers:
            if server in pending:  # it may still answer; that late answer is dropped
                self.record(server, False, f"no answer within {self.timeout:g} s")

    def verdicts(self, servers: tuple[str, ...]) -> dict[str, bool]:
        """The current verdict of each of ``servers`` still followed."""
        statuses = self.tracker.statuses
        return {s: statuses[s].healthy for s in servers if s in statuses}

    def statuses(self) -> dict[str, HealthCheckStatus]:
        """A copy of every followed server's status, with its ages; safe from any thread."""
        statuses = self.tracker.statuses  # read once: a round may publish another meanwhile
        try:
            now = self.clock()
        except Exception:  # a status is how a broken clock gets diagnosed: give it, ageless
            return dict(statuses)
        return {server: status.as_of(now) for server, status in statuses.items()}
