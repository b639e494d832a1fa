"""Same-run references for bench_scale.py: the keyed floor and the minimal correct lease."""

from __future__ import annotations

import threading
import time
from math import exp

import xxhash

_xxh64 = xxhash.xxh64_intdigest


class KeyedFloor:
    """The cheapest keyed balancer: ``servers[xxh64(key) % n]``, keys hashed as the library does."""

    def __init__(self, servers: list[str]) -> None:
        """Index ``servers`` as given."""
        self._servers = list(servers)
        self._size = len(servers)

    def get(self, key: str) -> str:
        """The server of ``key``: XXH64 (seed 0) of its UTF-8 bytes, modulo the pool size."""
        return self._servers[_xxh64(key.encode()) % self._size]


class MinimalEndpoint:
    """What a minimal lease needs of a server: its lock, its count in flight, its latency."""

    __slots__ = ("in_flight", "latency", "latency_at", "lock")

    def __init__(self) -> None:
        """An idle server: nothing in flight, latency 0 as of now."""
        self.lock = threading.Lock()
        self.in_flight = 0
        self.latency = 0.0
        self.latency_at = time.monotonic()


class MinimalLease:
    """The minimal correct lease: two clock reads, +1 and -1 under the endpoint's lock, and EWMA.

    ``__enter__`` reads the clock and counts the request in flight; ``__exit__`` reads the
    clock, counts it out and folds its latency into a time-decayed average (one ``exp``), the
    decrement and the update under the lock, as the library's endpoint does them.
    """

    __slots__ = ("_decay", "_endpoint", "_started")

    def __init__(self, decay: float = 10.0) -> None:
        """A lease on a fresh endpoint, its latency decaying over ``decay`` seconds."""
        self._endpoint = MinimalEndpoint()
        self._decay = decay
        self._started = 0.0

    def __enter__(self) -> MinimalLease:
        """Read the clock and count the request in flight."""
        self._started = time.monotonic()
        endpoint = self._endpoint
        endpoint.lock.acquire()
        endpoint.in_flight += 1
        endpoint.lock.release()
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Read the clock, count the request out and fold its latency into the average."""
        now = time.monotonic()
        endpoint = self._endpoint
        endpoint.lock.acquire()
        endpoint.in_flight -= 1
        keep = exp((endpoint.latency_at - now) / self._decay)
        endpoint.latency = endpoint.latency * keep + (now - self._started) * (1.0 - keep)
        endpoint.latency_at = now
        endpoint.lock.release()
