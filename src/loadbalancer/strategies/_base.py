"""The extension point: a Strategy turns each snapshot of the pool into a Picker."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Set
from typing import ClassVar, TypeAlias

from .._snapshot import Endpoint, Snapshot

__all__ = ["REPICKS", "Key", "Picker", "Strategy"]

Key: TypeAlias = str | bytes
"""A hash key for sticky picks: the same key maps to the same server in every process."""


REPICKS = 8
"""How often the default ``Picker.pick_excluding`` picks again before it takes what it gets.

Envoy's previous-hosts retry predicate does the same (``host_selection_retry_max_attempts``).
"""


class Picker(ABC):
    """Selection over one immutable snapshot: what ``LoadBalancer.get`` calls per request.

    Contract for implementers:

    * ``pick`` is the hot path. It runs on many threads at once with no lock held, so any
      state it changes (a rotation position) must tolerate concurrent calls.
    * It returns one of the snapshot's servers. It is never built for an empty snapshot.
    * A ``key`` that is not ``None`` must be ``str`` or ``bytes``; strategies that do not hash
      ignore it after checking its type (see ``loadbalancer._validation.check_key``).
    * ``pick_excluding`` serves retries: the pick among the servers not yet tried. Its default
      picks again up to ``REPICKS`` times; the built-in pickers override it with the exact
      choice in their own terms.
    """

    __slots__ = ()

    next_server: Callable[[], str] | None = None
    """Optional: a callable (C-level, ideally) returning what ``pick(None)`` would.

    The lease path calls it for keyless first attempts instead of ``pick``, saving a Python
    frame per request. Only used while ``acquire`` is the default one.
    """

    @abstractmethod
    def pick(self, key: Key | None = None) -> str:
        """Return the server for one request."""

    def pick_excluding(self, key: Key | None, exclude: Set[str]) -> str:
        """Return a server not in ``exclude`` (servers already tried), if this picker has one.

        ``exclude`` is a non-empty set of server names, some of which may not be in the pool.
        When every server of the picker is excluded, return what ``pick`` returns: a retry
        then goes to a server already tried rather than nowhere. The default picks again up to
        ``REPICKS`` times and then takes what it gets, as Envoy's previous-hosts predicate does.
        """
        server = self.pick(key)
        for _ in range(REPICKS):
            if server not in exclude:
                break
            server = self.pick(key)
        return server

    def acquire(
        self, key: Key | None, endpoints: Mapping[str, Endpoint], exclude: Set[str] = frozenset()
    ) -> Endpoint:
        """Pick a server and count one request in flight on it: the lease path.

        ``endpoints`` maps this picker's servers to their live state; ``exclude`` is as for
        ``pick_excluding`` (empty for a first attempt). The default picks and calls
        ``Endpoint.begin``. Override it only when the choice depends on loads that must not
        change between choosing and counting (bounded loads).
        """
        endpoint = endpoints[self.pick_excluding(key, exclude) if exclude else self.pick(key)]
        endpoint.begin()
        return endpoint

    def acquire_is_pick(self) -> bool:
        """Whether this picker's ``acquire`` is the default: a pick, then ``Endpoint.begin``.

        The balancer then runs that itself, in fewer Python frames. True unless ``acquire`` is
        overridden; a picker that overrides it for some configurations only (bounded loads)
        says so per instance.
        """
        return type(self).acquire is Picker.acquire


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

    @property
    def failure_latency(self) -> float:
        """Seconds a failed request counts as at least, in latency estimates (default 1).

        A failure also never lowers a server's estimate, so a server that fails fast never
        looks faster than it did.
        """
        return 1.0

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
