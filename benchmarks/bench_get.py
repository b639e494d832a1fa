"""ns per get() for each strategy beside same-run references.

References:
  floor     one Python method call: a class whose get() is next() on an itertools.cycle
  textbook  a threading.Lock around indexing a list, as most hand-written balancers do
"""

from __future__ import annotations

import itertools
import random
import sys
import threading

from _timing import best_ns_per_call, print_table
from loadbalancer import LoadBalancer, RandomStrategy, RoundRobinStrategy, Strategy

SERVERS = [f"10.0.0.{i}:8080" for i in range(10)]


class Floor:
    """The cheapest possible balancer: one Python call around a C iterator."""

    def __init__(self, servers: list[str]) -> None:
        self._it = itertools.cycle(servers)

    def get(self) -> str:
        return next(self._it)


class Textbook:
    """A lock around list indexing: the usual interview answer."""

    def __init__(self, servers: list[str]) -> None:
        self._servers = list(servers)
        self._index = 0
        self._lock = threading.Lock()

    def get(self) -> str:
        with self._lock:
            server = self._servers[self._index % len(self._servers)]
            self._index += 1
            return server


def balancer(strategy: Strategy) -> LoadBalancer:
    lb = LoadBalancer(strategy=strategy)
    for server in SERVERS:
        lb.register(server)
    return lb


def main() -> None:
    print(f"Python {sys.version.split()[0]}, {len(SERVERS)} servers")
    candidates = {
        "floor (itertools.cycle in a method)": Floor(SERVERS).get,
        "textbook (Lock + list index)": Textbook(SERVERS).get,
        "RoundRobinStrategy get()": balancer(RoundRobinStrategy()).get,
        "RandomStrategy get()": balancer(RandomStrategy(random.Random(1))).get,
    }
    results = best_ns_per_call(candidates)
    print_table("get(), 10 servers", results, "floor (itertools.cycle in a method)")


if __name__ == "__main__":
    main()
