"""What metrics cost: the lease cycle with metrics off and on, and one scrape, beside references.

The exporters read ``lb.stats()`` when scraped, so the only cost on the request path is the
latency histogram, which a collector switches on (``enable_latency_histogram``). Target: a lease
cycle with metrics on within 15% of one with metrics off.

References, measured in the same run:
  minimal lease   two clock reads, +1 and -1 under a lock, one EWMA update (bench_scale's)
  metrics off     the same balancer with no exporter attached
"""

from __future__ import annotations

import time

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest

from _scale_refs import MinimalLease
from _timing import best_ns_per_call, print_table
from loadbalancer import LoadBalancer, PeakEWMAStrategy, RoundRobinStrategy, Strategy
from loadbalancer.metrics.opentelemetry import LoadBalancerInstruments
from loadbalancer.metrics.prometheus import LoadBalancerCollector

SERVERS = [f"10.0.{i // 250}.{i % 250}:8080" for i in range(1_000)]


def balancer(strategy: Strategy, size: int) -> LoadBalancer:
    lb = LoadBalancer(strategy, max_servers=size)
    lb.replace(SERVERS[:size])
    return lb


def lease_cycles() -> None:
    """The lease cycle, metrics off and on, for a rotation and a latency-aware strategy."""
    for label, make in (("round-robin", RoundRobinStrategy), ("peak EWMA", PeakEWMAStrategy)):
        off, prometheus, both = (balancer(make(), 10) for _ in range(3))
        LoadBalancerCollector({"lb": prometheus})  # histogram on; nothing scrapes it here
        LoadBalancerCollector({"lb": both})
        LoadBalancerInstruments({"lb": both}, meter_provider=MeterProvider())
        minimal = MinimalLease()
        results = best_ns_per_call(
            {
                "minimal lease": "with minimal: pass",
                "metrics off": "with off.lease(): pass",
                "metrics on (Prometheus collector)": "with prometheus.lease(): pass",
                "metrics on (Prometheus + OpenTelemetry)": "with both.lease(): pass",
            },
            namespace={"minimal": minimal, "off": off, "prometheus": prometheus, "both": both},
        )
        print_table(f"lease cycle, {label}, 10 servers (ns)", results, "metrics off")
        for name in list(results)[2:]:
            overhead = results[name] / results["metrics off"] - 1
            print(f"  overhead of {name}: {overhead:+.1%} (target <= +15%)")


def best_ms(fn: object, rounds: int = 15) -> float:
    """The best of ``rounds`` timings of ``fn()``, in ms."""
    assert callable(fn)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def scrapes() -> None:
    """One scrape of each exporter, and one lb.stats(), at 10 and 1,000 servers."""
    print("\none scrape (ms; stats() is what both exporters read)")
    for size in (10, 1_000):
        lb = balancer(RoundRobinStrategy(), size)
        registry = CollectorRegistry()
        registry.register(LoadBalancerCollector({"lb": lb}))
        reader = InMemoryMetricReader()
        LoadBalancerInstruments({"lb": lb}, meter_provider=MeterProvider(metric_readers=[reader]))
        for _ in range(size):
            with lb.lease():
                pass
        stats = best_ms(lb.stats)
        prometheus = best_ms(lambda: generate_latest(registry))  # noqa: B023 - called at once
        otel = best_ms(reader.get_metrics_data)
        print(
            f"  {size:>6,} servers: lb.stats() {stats:7.2f}   Prometheus generate_latest "
            f"{prometheus:7.2f} ({prometheus / stats:4.1f}x stats)   OpenTelemetry collect "
            f"{otel:7.2f} ({otel / stats:4.1f}x stats)"
        )


if __name__ == "__main__":
    lease_cycles()
    scrapes()
