"""The balanced gRPC channels beside one plain channel to the same local server, same run.

1. Own work in isolation: a unary call through the balanced channel over a fake backend
   channel that answers at once, beside the fake call alone (µs per call, best of
   interleaved rounds): the difference is what the balanced channel itself costs a call.
2. One grpcio server of the tests' echo service (tests/grpc_servers.py) runs in a process of its
own, so that it does not share the client's GIL. Unary calls go to it through a plain
``grpc`` channel and through ``BalancedChannel`` over a balancer of that one server, in
interleaved rounds (8 threads); then the same for ``grpc.aio`` and ``AsyncBalancedChannel``
(32 tasks). Printed: calls/s (best round), p50/p99 latency over every call, the client
process's CPU per call, and the paired ratios (see benchmarks/_http_load.py).

Target (the issue's): the balanced channel makes at most 10% fewer unary calls per second.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import grpc.aio

from _http_load import Load, async_case, backend_process, paired, sync_case, verdict
from _timing import best_ns_per_call
from loadbalancer import LoadBalancer
from loadbalancer.integrations.grpc import BalancedChannel
from loadbalancer.integrations.grpc_aio import AsyncBalancedChannel

RPS_TARGET = 0.10  # the issue's: at most 10% fewer calls per second
CALLS = 4_000  # per client per case ...
ROUNDS = 16  # ... in this many interleaved rounds
THREADS = 8
TASKS = 32
UNARY = "/test.Echo/Unary"
REQUEST = b"x" * 16

SERVE = """
import sys
sys.path.insert(0, sys.argv[1])
from tests.grpc_servers import EchoServer
server = EchoServer("s0")
print(server.address, flush=True)
sys.stdin.readline()
server.kill()
"""


def print_case(case: str, plain: Load, balanced: Load) -> bool:
    """The two rows, the paired ratios, and whether the target is met."""
    print(f"  {case}")
    for name, load in (("plain channel", plain), ("balanced channel", balanced)):
        print(
            f"    {name:<18} {load.rate:7.0f} calls/s  p50 {load.percentile(50) * 1000:6.3f} ms"
            f"  p99 {load.percentile(99) * 1000:7.3f} ms  CPU {load.cpu_us:6.1f} µs/call"
        )
    ratio, own = paired(plain, balanced)
    met = 1 - ratio <= RPS_TARGET
    print(
        f"    balanced/plain calls/s {balanced.rate / plain.rate:.3f} best rounds,"
        f" {ratio:.3f} paired: {(1 - ratio) * 100:+.1f}% fewer"
        f" (target <= {RPS_TARGET * 100:g}%: {verdict(met)});"
        f" own CPU {own:+.1f} µs/call"
    )
    return met


def sync_unary(address: str) -> bool:
    plain_channel = grpc.insecure_channel(address)
    lb = LoadBalancer()
    lb.register(address)
    balanced_channel = BalancedChannel(lb)
    plain_call: Any = plain_channel.unary_unary(UNARY)
    balanced_call: Any = balanced_channel.unary_unary(UNARY)

    def plain() -> int:
        plain_call(REQUEST)
        return 200

    def balanced() -> int:
        balanced_call(REQUEST)
        return 200

    try:
        loads = sync_case((plain, balanced), requests=CALLS, rounds=ROUNDS, threads=THREADS)
        return print_case(f"sync unary calls, {THREADS} threads", *loads)
    finally:
        balanced_channel.close()
        plain_channel.close()


async def aio_unary(address: str) -> bool:
    plain_channel = grpc.aio.insecure_channel(address)
    lb = LoadBalancer()
    lb.register(address)
    balanced_channel = AsyncBalancedChannel(lb)
    plain_call: Any = plain_channel.unary_unary(UNARY)
    balanced_call: Any = balanced_channel.unary_unary(UNARY)

    async def plain() -> int:
        await plain_call(REQUEST)
        return 200

    async def balanced() -> int:
        await balanced_call(REQUEST)
        return 200

    try:
        loads = await async_case((plain, balanced), requests=CALLS, rounds=ROUNDS, tasks=TASKS)
        return print_case(f"grpc.aio unary calls, {TASKS} tasks", *loads)
    finally:
        await balanced_channel.close()
        await plain_channel.close()


class _FakeCall:
    """What grpc's unary multi-callable returns and raises nothing: the request, at once."""

    def __call__(self, request: bytes, **_: object) -> bytes:
        return request


class _FakeAsyncCall:
    def __call__(self, request: bytes, **_: object) -> Any:
        return _answer(request)


async def _answer(request: bytes) -> bytes:
    return request


class _FakeChannel:
    """A backend channel whose every unary call answers at once, for the own-work figures."""

    def __init__(self, call: Any) -> None:
        self._call = call

    def unary_unary(self, *_: object, **__: object) -> Any:
        return self._call

    def close(self, grace: float | None = None) -> Any:
        return _answer(b"") if isinstance(self._call, _FakeAsyncCall) else None


def own_work() -> None:
    """µs per unary call: over a fake channel alone, and balanced over it (1 server)."""
    lb = LoadBalancer()
    lb.register("127.0.0.1:1")
    fake: Any = _FakeCall()
    make: Any = lambda server: _FakeChannel(fake)  # noqa: E731  # duck-typed, not a grpc.Channel
    channel = BalancedChannel(lb, channel_factory=make)
    balanced: Any = channel.unary_unary(UNARY)
    sync = best_ns_per_call(
        {"fake call": lambda: fake(REQUEST), "balanced": lambda: balanced(REQUEST)},
        calls=20_000,
        rounds=7,
    )
    channel.close()

    async def aio() -> tuple[float, float]:
        afake: Any = _FakeAsyncCall()
        amake: Any = lambda server: _FakeChannel(afake)  # noqa: E731
        achannel = AsyncBalancedChannel(lb, channel_factory=amake)
        abalanced: Any = achannel.unary_unary(UNARY)
        best = [float("inf"), float("inf")]
        for _ in range(7):
            for index, call in enumerate((afake, abalanced)):
                started = time.perf_counter()
                for _ in range(5_000):
                    await call(REQUEST)
                best[index] = min(best[index], (time.perf_counter() - started) / 5_000 * 1e9)
        await achannel.close()
        return best[0], best[1]

    afake_ns, abalanced_ns = asyncio.run(aio())
    print("  own work per unary call, over a fake backend channel that answers at once")
    for name, fake_ns, balanced_ns in (
        ("sync", sync["fake call"], sync["balanced"]),
        ("aio", afake_ns, abalanced_ns),
    ):
        own = (balanced_ns - fake_ns) / 1000
        print(
            f"    {name:<5} fake call {fake_ns / 1000:6.2f} µs"
            f"  balanced {balanced_ns / 1000:6.2f} µs  own work {own:6.2f} µs/call"
        )


def main() -> None:
    own_work()
    print(f"gRPC unary calls to one local grpcio server (another process), {CALLS} per case")
    with backend_process(SERVE) as address:
        results = [sync_unary(address), asyncio.run(aio_unary(address))]
    print(f"targets: {'all met' if all(results) else 'MISSED'}")


if __name__ == "__main__":
    main()
