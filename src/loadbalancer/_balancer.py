"""LoadBalancer: the pool, its mutation lock, and the picker that ``get`` calls."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import final

from ._errors import NoServersAvailableError
from ._lease import Lease, check_latency, check_ok
from ._snapshot import Endpoint, Snapshot
from ._stats import ServerStats
from ._validation import (
    check_callable,
    check_key,
    check_positive_int,
    check_server,
    check_weight,
)
from .strategies._base import Key, Picker, PickFunction, Strategy
from .strategies.round_robin import RoundRobinStrategy

__all__ = ["LoadBalancer"]


@final
class _EmptyPicker(Picker):
    __slots__ = ()

    def pick(self, key: Key | None = None) -> str:
        """Raise: there is nothing to pick."""
        if key is not None:
            check_key(key)
        raise NoServersAvailableError


_EMPTY_PICKER = _EmptyPicker()


@final
@dataclass(frozen=True, slots=True)
class _View:
    """Everything a reader needs, published together by one reference assignment."""

    endpoints: dict[str, Endpoint]  # registration order; never mutated once published
    picker: Picker

    @property
    def servers(self) -> tuple[str, ...]:
        return tuple(self.endpoints)


_EMPTY_VIEW = _View({}, _EMPTY_PICKER)


def _check_strategy(strategy: object) -> Strategy:
    if isinstance(strategy, Strategy):
        return strategy
    if isinstance(strategy, type) and issubclass(strategy, Strategy):
        raise TypeError(
            f"strategy must be a Strategy instance; did you mean {strategy.__name__}()?"
        )
    raise TypeError(f"strategy must be a Strategy instance, not {type(strategy).__name__}")


@final
class LoadBalancer:
    """A pool of up to ``max_servers`` unique servers and a strategy that picks among them.

    ``get()`` returns the next server (``NoServersAvailableError`` on an empty pool).

    Thread safety: every method may be called from any number of threads at once.

    * ``register``, ``unregister`` and ``replace`` are serialised by one lock. Each builds the
      new pool aside, asks the strategy for a picker, and publishes both with reference
      assignments; a call that raises changes nothing.
    * ``get`` takes no lock: it is the current picker's ``pick``, read once. Strategy code
      never runs under the balancer's lock on the request path.
    * Membership is linearisable: once ``unregister(s)`` has returned, no ``get`` that starts
      afterwards returns ``s``; of concurrent ``register(s)`` calls exactly one returns True;
      the pool never holds more than ``max_servers``, even for an instant.
    """

    __slots__ = (
        "__weakref__",
        "_clock",
        "_decay",
        "_lock",
        "_max_servers",
        "_strategy",
        "_view",
        "get",
    )

    get: PickFunction
    """Return the server for the next request; raise NoServersAvailableError if none."""

    def __init__(
        self,
        strategy: Strategy | None = None,
        max_servers: int = 10,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._strategy = RoundRobinStrategy() if strategy is None else _check_strategy(strategy)
        self._max_servers = check_positive_int(max_servers, "max_servers")
        self._clock: Callable[[], float] = check_callable(clock, "clock")
        self._decay = self._strategy.latency_decay
        self._lock = threading.Lock()
        self._view = _EMPTY_VIEW
        # get is the current picker's bound pick: a request costs one Python call, no more.
        self.get = _EMPTY_PICKER.pick

    # -- membership -------------------------------------------------------------------------

    def register(self, server: str, weight: float = 1) -> bool:
        """Add ``server``; return False if it is already present or the pool is full.

        ``weight`` (a positive finite number) matters to weight-aware strategies only.
        """
        check_server(server)
        check_weight(weight)
        with self._lock:
            endpoints = self._view.endpoints
            if server in endpoints or len(endpoints) >= self._max_servers:
                return False
            self._publish({**endpoints, server: Endpoint(server, weight, self._clock())})
            return True

    def set_weight(self, server: str, weight: float) -> bool:
        """Change the weight of ``server``; return False if it is not present."""
        check_server(server)
        check_weight(weight)
        with self._lock:
            endpoint = self._view.endpoints.get(server)
            if endpoint is None:
                return False
            previous, endpoint.weight = endpoint.weight, weight
            try:
                self._publish(dict(self._view.endpoints))
            except BaseException:
                endpoint.weight = previous
                raise
            return True

    def unregister(self, server: str) -> bool:
        """Remove ``server``; return False if it is not present."""
        check_server(server)
        with self._lock:
            endpoints = self._view.endpoints
            if server not in endpoints:
                return False
            self._publish({name: e for name, e in endpoints.items() if name != server})
            return True

    def replace(self, servers: Iterable[str] | Mapping[str, float]) -> None:
        """Make the pool exactly ``servers``, in that order, in one atomic step.

        Pass a mapping to set weights too; otherwise new servers get weight 1 and servers
        that stay keep theirs. Servers that stay keep their live state. Duplicates, bad names
        or weights, or more than ``max_servers`` raise ``ValueError``/``TypeError`` and change
        nothing.
        """
        if isinstance(servers, (str, bytes)) or not isinstance(servers, Iterable):
            raise TypeError(f"servers must be an iterable of str, not {type(servers).__name__}")
        weights: Mapping[str, float] = servers if isinstance(servers, Mapping) else {}
        wanted = [check_server(s, "servers[]") for s in servers]
        for server in weights:
            check_weight(weights[server], f"weight of {server!r}")
        duplicates = sorted(s for s, n in Counter(wanted).items() if n > 1)
        if duplicates:
            raise ValueError(f"servers contains duplicates: {duplicates}")
        if len(wanted) > self._max_servers:
            raise ValueError(
                f"servers has {len(wanted)} entries, more than max_servers={self._max_servers}"
            )
        with self._lock:
            current = self._view.endpoints
            now = self._clock()
            endpoints = {s: current[s] if s in current else Endpoint(s, 1, now) for s in wanted}
            changed = {
                s: endpoints[s].weight
                for s in weights
                if s in current and endpoints[s].weight != weights[s]
            }
            for server, weight in weights.items():
                endpoints[server].weight = weight
            try:
                self._publish(endpoints)
            except BaseException:
                for server, weight in changed.items():
                    current[server].weight = weight
                raise

    def _publish(self, endpoints: dict[str, Endpoint]) -> None:
        """Build a picker for ``endpoints`` and make both current. Caller holds ``_lock``."""
        if endpoints:
            previous = self._view.picker
            picker = self._strategy.build(
                Snapshot.of(tuple(endpoints.values()), self._clock),
                None if previous is _EMPTY_PICKER else previous,
            )
        else:
            picker = _EMPTY_PICKER
        # The strategy may raise above; nothing has changed until these two assignments.
        self._view = _View(endpoints, picker)
        self.get = picker.pick

    # -- the request lifecycle ----------------------------------------------------------------

    def acquire(self, key: Key | None = None) -> Lease:
        """Pick a server and count a request in flight on it until the lease is released."""
        view = self._view  # read once: the picker and the endpoints belong together
        endpoint = view.picker.acquire(key, view.endpoints)
        return Lease(endpoint, self._clock, self._decay, self._clock())

    # The same call, spelled for ``with lb.lease() as server:``; an alias saves a call.
    lease = acquire

    def done(self, server: str, ok: bool = True, latency: float | None = None) -> bool:
        """Report the outcome of a request sent after ``get()``; False if not registered.

        ``get()`` does not count requests in flight, so this records only the outcome and,
        when given, the latency in seconds.
        """
        check_server(server)
        check_ok(ok)
        latency = check_latency(latency)
        endpoint = self._view.endpoints.get(server)
        if endpoint is None:
            return False
        endpoint._complete(None, ok, latency, self._clock(), self._decay)
        return True

    def stats(self) -> dict[str, ServerStats]:
        """Frozen per-server statistics, in registration order."""
        return {name: ServerStats.of(e) for name, e in self._view.endpoints.items()}

    # -- introspection ----------------------------------------------------------------------

    @property
    def servers(self) -> tuple[str, ...]:
        """The registered servers, in registration order."""
        return self._view.servers

    @property
    def weights(self) -> dict[str, float]:
        """Each registered server's configured weight, in registration order."""
        return {name: e.weight for name, e in self._view.endpoints.items()}

    @property
    def max_servers(self) -> int:
        """The capacity fixed at construction."""
        return self._max_servers

    @property
    def strategy(self) -> Strategy:
        """The strategy fixed at construction."""
        return self._strategy

    def __len__(self) -> int:
        return len(self._view.endpoints)

    def __contains__(self, server: object) -> bool:
        return server in self._view.endpoints

    def __iter__(self) -> Iterator[str]:
        return iter(self._view.servers)

    def __repr__(self) -> str:
        return (
            f"LoadBalancer(strategy={self._strategy!r}, max_servers={self._max_servers}, "
            f"servers={list(self._view.endpoints)!r})"
        )
