"""What only the cyclic garbage collector would free: objects left in reference cycles."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def left_for_the_collector() -> Iterator[list[str]]:
    """The names of the library's objects that only the cyclic collector would free (objects
    in reference cycles, or held by one) among those made in the block; filled as it ends."""
    found: list[str] = []
    gc.collect()
    # What lives now was made before the block: an earlier test's objects, let go of by a
    # thread of theirs during the block, are not the block's.
    before = {id(o) for o in gc.get_objects()}
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what the collector finds is kept, to be looked at
    try:
        yield found
        gc.collect()
        found += [
            type(o).__name__
            for o in gc.garbage
            if type(o).__module__.startswith("loadbalancer") and id(o) not in before
        ]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
