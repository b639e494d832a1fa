"""Round-robin: each server in turn, in registration order."""

from __future__ import annotations

import sysconfig
from collections.abc import Callable, Iterator, Set
from itertools import chain, count, cycle, repeat
from operator import mod
from typing import final

from .._snapshot import Snapshot
from .._validation import check_key
from ._base import Key, Picker, Strategy
from ._exclude import all_in, first_not_in

__all__ = ["RoundRobinStrategy"]

# Concurrent next() on one itertools.cycle is atomic only under the GIL: on free-threaded builds
# CPython's maintainers make it merely not crash, and it may skip, repeat or raise StopIteration
# (python/cpython#124397, #135639), whatever the version. There the rotation is derived from
# itertools.count, which is atomic on free-threaded builds (gh-117657). Both keep the whole pick
# in C.
_CYCLE_IS_THREAD_SAFE = not sysconfig.get_config_var("Py_GIL_DISABLED")


def _rotation(order: tuple[str, ...]) -> Callable[[], str]:
    """Return a thread-safe, C-level function yielding ``order`` endlessly."""
    if _CYCLE_IS_THREAD_SAFE:
        return cycle(order).__next__
    return map(order.__getitem__, positions(len(order), 0)).__next__


def positions(size: int, start: int) -> Iterator[int]:
    """Thread-safe, C-level iterator over ``start, start + 1, ... size - 1, 0, 1, ...``."""
    if _CYCLE_IS_THREAD_SAFE:
        return cycle(chain(range(start, size), range(start)))
    return map(mod, count(start), repeat(size))


@final
class _RoundRobinPicker(Picker):
    __slots__ = ("_index", "_next", "next_server", "order")

    def __init__(self, order: tuple[str, ...]) -> None:
        self.order = order
        self._next = self.next_server = _rotation(order)
        # For retries only: where a turn's server sits in the rotation. Built by the first
        # retry, not here, so a pool change stays a few C-level copies.
        self._index: dict[str, int] | None = None

    def pick(self, key: Key | None = None) -> str:
        """Return the next server in the rotation."""
        if key is not None:
            check_key(key)
        return self._next()

    def pick_excluding(self, key: Key | None, exclude: Set[str]) -> str:
        """Take the next turn; if its server is excluded, the first one after it that is not.

        The rotation advances by one turn only, so a retry does not skew the shares of the
        servers it walks past. With every server excluded, the turn's own server.
        """
        server = self.pick(key)
        order = self.order
        if server not in exclude or all_in(exclude, order):
            return server
        index = self._index
        if index is None:  # two threads may both build it: the same dict, harmlessly
            index = self._index = dict(zip(order, range(len(order)), strict=True))
        return first_not_in(order, len(order), index[server] + 1, exclude)


def _continue_from(previous: _RoundRobinPicker, servers: tuple[str, ...]) -> int:
    """Index in ``servers`` at which the rotation of ``previous`` continues."""
    # Drawing one pick from a picker that is about to be retired tells where it stood; a few
    # concurrent gets may still use it, and they simply share the rotation a moment longer.
    upcoming = previous.pick()
    if upcoming in servers:  # the usual case, and a C-level scan: no set of the pool
        return servers.index(upcoming)
    present = set(servers)
    old = previous.order
    at = old.index(upcoming)
    for server in old[at:] + old[:at]:
        if server in present:
            return servers.index(server)
    return 0


@final
class RoundRobinStrategy(Strategy):
    """Each server in turn, in registration order; the rotation survives pool changes.

    A retry (``pick_excluding``) takes one turn and, if that server was already tried, walks on
    to the next one in the rotation that was not.
    """

    __slots__ = ()

    accepts_slow_start = False

    def build(self, snapshot: Snapshot, previous: Picker | None = None) -> Picker:
        """Return a picker that rotates over the snapshot's servers."""
        servers = snapshot.servers
        start = _continue_from(previous, servers) if isinstance(previous, _RoundRobinPicker) else 0
        return _RoundRobinPicker(servers[start:] + servers[:start])
