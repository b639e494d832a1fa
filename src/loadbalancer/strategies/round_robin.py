"""Round-robin: each server in turn, in registration order."""

from __future__ import annotations

import sysconfig
from collections.abc import Callable, Iterator
from itertools import chain, count, cycle, repeat
from operator import mod
from typing import final

from .._snapshot import Snapshot
from .._validation import check_key
from ._base import Key, Picker, Strategy

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
    __slots__ = ("_next", "order")

    def __init__(self, order: tuple[str, ...]) -> None:
        self.order = order
        self._next = _rotation(order)

    def pick(self, key: Key | None = None) -> str:
        """Return the next server in the rotation."""
        if key is not None:
            check_key(key)
        return self._next()


def _continue_from(previous: _RoundRobinPicker, servers: tuple[str, ...]) -> int:
    """Index in ``servers`` at which the rotation of ``previous`` continues."""
    # Drawing one pick from a picker that is about to be retired tells where it stood; a few
    # concurrent gets may still use it, and they simply share the rotation a moment longer.
    upcoming = previous.pick()
    present = set(servers)
    old = previous.order
    at = old.index(upcoming)
    for server in old[at:] + old[:at]:
        if server in present:
            return servers.index(server)
    return 0


@final
class RoundRobinStrategy(Strategy):
    """Each server in turn, in registration order; the rotation survives pool changes."""

    __slots__ = ()

    accepts_slow_start = False

    def build(self, snapshot: Snapshot, previous: Picker | None = None) -> Picker:
        """Return a picker that rotates over the snapshot's servers."""
        servers = snapshot.servers
        start = _continue_from(previous, servers) if isinstance(previous, _RoundRobinPicker) else 0
        return _RoundRobinPicker(servers[start:] + servers[:start])
