"""The extension point: a Strategy turns each snapshot of the pool into a Picker."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import ClassVar, Protocol, TypeAlias

from .._snapshot import Endpoint, Snapshot

__all__ = ["Key", "PickFunction", "Picker", "Strategy"]

Key: TypeAlias = str | bytes
"""A hash key for sticky picks: the same key maps to the same server in every process."""


class PickFunction(Protocol):
    """The signature of ``LoadBalancer.get`` and ``Picker.pick``."""

    def __call__(self, key: Key | None = None) -> str:
        """Return the server for one request; ``key`` pins it for hashing strategies."""
        ...


class Picker(ABC):
    """Selection over one immutable snapshot: what ``LoadBalancer.get`` calls per request.

    Contract for implementers:

    * ``pick`` is the hot path. It runs on many threads at once with no lock held, so any
      state it changes (a rotation position) must tolerate concurrent calls.
    * It returns one of the snapshot's servers. It is never built for an empty snapshot.
    * A ``key`` that is not ``None`` must be ``str`` or ``bytes``; strategies that do not hash
      ignore it after checking its type (see ``loadbalancer._validation.check_key``).
    """

    __slots__ = ()

    @abstractmethod
    def pick(self, key: Key | None = None) -> str:
        """Return the server for one request."""

    def acquire(self, key: Key | None, endpoints: Mapping[str, Endpoint]) -> Endpoint:
        """Pick a server and count one request in flight on it: the lease path.

        ``endpoints`` maps this picker's servers to their live state. The default picks with
        ``pick`` and counts the request. Override it only when the choice depends on loads that
        must not change between choosing and counting (bounded loads).
        """
        endpoint = endpoints[self.pick(key)]
        endpoint._start()
        return endpoint


class Strategy(ABC):
    """How servers are chosen. Subclass it to write your own.

    ``build`` is called under the balancer's mutation lock every time the eligible servers
    or their weights change, never inside ``get``: precompute tables, prefix sums or rings
    there. ``previous`` is the picker this strategy built for the same balancer last time (or
    ``None``); a stateful strategy hands its state from it to the new picker, so that, say, a
    rotation continues where it was. A strategy holds configuration only, so one instance may
    serve several balancers.
    """

    __slots__ = ()

    accepts_slow_start: ClassVar[bool] = True
    """Whether slow start may scale this strategy's weights. False where weights are ignored
    (round-robin, random) or where changing them would move sticky keys (hashing)."""

    @abstractmethod
    def build(self, snapshot: Snapshot, previous: Picker | None = None) -> Picker:
        """Return a picker over ``snapshot`` (which is never empty)."""

    @property
    def latency_decay(self) -> float:
        """Seconds over which per-server latency estimates forget old samples (default 10)."""
        return 10.0

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
