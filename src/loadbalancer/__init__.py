"""Client-side load balancing: fast, thread-safe picks over a pool of backend servers.

    >>> from loadbalancer import LoadBalancer
    >>> lb = LoadBalancer(max_servers=3)  # round-robin; room for 3 servers (10 by default)
    >>> lb.replace(["10.0.0.1:8080", "10.0.0.2:8080"])  # or lb.register() one at a time
    >>> [lb.get() for _ in range(3)]
    ['10.0.0.1:8080', '10.0.0.2:8080', '10.0.0.1:8080']
    >>> lb.register("10.0.0.3:8080"), lb.register("10.0.0.4:8080")  # False: the pool is full
    (True, False)
    >>> with lb.lease() as server:  # counted in flight; the block's outcome is recorded
    ...     print(f"GET http://{server}/items")
    GET http://10.0.0.2:8080/items
    >>> lb.stats()[server].successes
    1

The public API, every name importable from ``loadbalancer``:

The balancer
    LoadBalancer, NoServersAvailableError, LoadBalancerError, Lease
Strategies (``loadbalancer.strategies.registry.STRATEGIES`` lists them by name)
    RoundRobinStrategy, RandomStrategy, WeightedRandomStrategy, WeightedRoundRobinStrategy,
    LeastConnectionsStrategy, PowerOfTwoChoicesStrategy, PeakEWMAStrategy,
    RingHashStrategy, MaglevStrategy, RendezvousStrategy
Writing a strategy
    Strategy, Picker, Snapshot, Endpoint, Key
Failover: ``lb.call``, ``lb.acall``, ``lb.call_held``, ``lb.acall_held``
    RetryPolicy, HedgingPolicy, RetryBudget, RetryBudgetStats, Attempt, Verdict,
    AttemptTimeoutError, Held, Results, AsyncResults
Passive health: outlier detection, slow start, events
    OutlierDetection, SlowStart, HealthEvent, HealthEventKind, EJECTION_REASONS
Active health checks (``loadbalancer.checks``, imported on first use)
    HealthChecker, AsyncHealthChecker, TcpProbe, HttpProbe, AsyncTcpProbe, AsyncHttpProbe,
    ProbeResult, HealthCheckStatus
Statistics: ``lb.stats()``
    ServerStats, BalancerStats, LatencyHistogram, DEFAULT_LATENCY_BUCKETS

Beside them: ``loadbalancer.integrations`` (httpx, requests and aiohttp clients),
``loadbalancer.discovery`` (membership from files, DNS and etcd), ``loadbalancer.metrics``
(Prometheus and OpenTelemetry), ``loadbalancer.testing`` (local replicas, a virtual-time
loop), ``loadbalancer.serve`` (the reverse proxy) and ``loadbalancer.cli`` (the
``loadbalancer`` command: ``simulate``, ``discover``, ``serve``).
"""

import logging
import typing

from ._balancer import LoadBalancer as LoadBalancer
from ._errors import LoadBalancerError as LoadBalancerError
from ._errors import NoServersAvailableError as NoServersAvailableError
from ._events import EJECTION_REASONS as EJECTION_REASONS
from ._events import HealthEvent as HealthEvent
from ._events import HealthEventKind as HealthEventKind
from ._lease import Lease as Lease
from ._snapshot import Endpoint as Endpoint
from ._snapshot import Snapshot as Snapshot
from ._stats import DEFAULT_LATENCY_BUCKETS as DEFAULT_LATENCY_BUCKETS
from ._stats import BalancerStats as BalancerStats
from ._stats import LatencyHistogram as LatencyHistogram
from ._stats import ServerStats as ServerStats
from .failover import AsyncResults as AsyncResults
from .failover import Attempt as Attempt
from .failover import AttemptTimeoutError as AttemptTimeoutError
from .failover import HedgingPolicy as HedgingPolicy
from .failover import Held as Held
from .failover import Results as Results
from .failover import RetryBudget as RetryBudget
from .failover import RetryBudgetStats as RetryBudgetStats
from .failover import RetryPolicy as RetryPolicy
from .failover import Verdict as Verdict
from .health import OutlierDetection as OutlierDetection
from .health import SlowStart as SlowStart
from .strategies._base import Key as Key
from .strategies._base import Picker as Picker
from .strategies._base import Strategy as Strategy
from .strategies.hashing import MaglevStrategy as MaglevStrategy
from .strategies.hashing import RendezvousStrategy as RendezvousStrategy
from .strategies.hashing import RingHashStrategy as RingHashStrategy
from .strategies.least_loaded import LeastConnectionsStrategy as LeastConnectionsStrategy
from .strategies.least_loaded import PeakEWMAStrategy as PeakEWMAStrategy
from .strategies.least_loaded import PowerOfTwoChoicesStrategy as PowerOfTwoChoicesStrategy
from .strategies.random import RandomStrategy as RandomStrategy
from .strategies.round_robin import RoundRobinStrategy as RoundRobinStrategy
from .strategies.weighted import WeightedRandomStrategy as WeightedRandomStrategy
from .strategies.weighted import WeightedRoundRobinStrategy as WeightedRoundRobinStrategy

if typing.TYPE_CHECKING:  # for mypy and IDEs; at run time __getattr__ imports these lazily
    from .checks import AsyncHealthChecker as AsyncHealthChecker
    from .checks import AsyncHttpProbe as AsyncHttpProbe
    from .checks import AsyncTcpProbe as AsyncTcpProbe
    from .checks import HealthChecker as HealthChecker
    from .checks import HealthCheckStatus as HealthCheckStatus
    from .checks import HttpProbe as HttpProbe
    from .checks import ProbeResult as ProbeResult
    from .checks import TcpProbe as TcpProbe

__all__ = [
    "DEFAULT_LATENCY_BUCKETS",
    "EJECTION_REASONS",
    "AsyncHealthChecker",
    "AsyncHttpProbe",
    "AsyncResults",
    "AsyncTcpProbe",
    "Attempt",
    "AttemptTimeoutError",
    "BalancerStats",
    "Endpoint",
    "HealthCheckStatus",
    "HealthChecker",
    "HealthEvent",
    "HealthEventKind",
    "HedgingPolicy",
    "Held",
    "HttpProbe",
    "Key",
    "LatencyHistogram",
    "Lease",
    "LeastConnectionsStrategy",
    "LoadBalancer",
    "LoadBalancerError",
    "MaglevStrategy",
    "NoServersAvailableError",
    "OutlierDetection",
    "PeakEWMAStrategy",
    "Picker",
    "PowerOfTwoChoicesStrategy",
    "ProbeResult",
    "RandomStrategy",
    "RendezvousStrategy",
    "Results",
    "RetryBudget",
    "RetryBudgetStats",
    "RetryPolicy",
    "RingHashStrategy",
    "RoundRobinStrategy",
    "ServerStats",
    "SlowStart",
    "Snapshot",
    "Strategy",
    "TcpProbe",
    "Verdict",
    "WeightedRandomStrategy",
    "WeightedRoundRobinStrategy",
]

__version__ = "0.1.0"

# The active checkers and probes do network I/O; importing them would load asyncio, ssl and
# socket into every program that only balances, so they are imported on first access.
_LAZY = frozenset(
    {
        "AsyncHealthChecker",
        "AsyncHttpProbe",
        "AsyncTcpProbe",
        "HealthCheckStatus",
        "HealthChecker",
        "HttpProbe",
        "ProbeResult",
        "TcpProbe",
    }
)


def __getattr__(name: str) -> object:
    """Import the active health checks on first access to one of their names (PEP 562)."""
    if name in _LAZY:
        from . import checks

        value = getattr(checks, name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """The module's names, the lazily imported ones included."""
    return sorted(set(globals()) | _LAZY)


# A library must not decide where its log records go, but without any handler Python's
# last-resort handler prints WARNING and above to stderr; the application's configuration
# (logging.basicConfig or its own handlers) still receives every record.
logging.getLogger(__name__).addHandler(logging.NullHandler())
