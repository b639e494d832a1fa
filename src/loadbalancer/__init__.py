"""Client-side load balancing: fast, thread-safe picks over a pool of backend servers."""

from ._balancer import LoadBalancer as LoadBalancer
from ._errors import LoadBalancerError as LoadBalancerError
from ._errors import NoServersAvailableError as NoServersAvailableError
from ._events import HealthEvent as HealthEvent
from ._events import HealthEventKind as HealthEventKind
from ._lease import Lease as Lease
from ._snapshot import Endpoint as Endpoint
from ._snapshot import Snapshot as Snapshot
from ._stats import ServerStats as ServerStats
from .health import AsyncHealthChecker as AsyncHealthChecker
from .health import AsyncHttpProbe as AsyncHttpProbe
from .health import AsyncTcpProbe as AsyncTcpProbe
from .health import HealthChecker as HealthChecker
from .health import HealthCheckStatus as HealthCheckStatus
from .health import HttpProbe as HttpProbe
from .health import OutlierDetection as OutlierDetection
from .health import SlowStart as SlowStart
from .health import TcpProbe as TcpProbe
from .strategies._base import Key as Key
from .strategies._base import Picker as Picker
from .strategies._base import PickFunction as PickFunction
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

__all__ = [
    "AsyncHealthChecker",
    "AsyncHttpProbe",
    "AsyncTcpProbe",
    "Endpoint",
    "HealthCheckStatus",
    "HealthChecker",
    "HealthEvent",
    "HealthEventKind",
    "HttpProbe",
    "Key",
    "Lease",
    "LeastConnectionsStrategy",
    "LoadBalancer",
    "LoadBalancerError",
    "MaglevStrategy",
    "NoServersAvailableError",
    "OutlierDetection",
    "PeakEWMAStrategy",
    "PickFunction",
    "Picker",
    "PowerOfTwoChoicesStrategy",
    "RandomStrategy",
    "RendezvousStrategy",
    "RingHashStrategy",
    "RoundRobinStrategy",
    "ServerStats",
    "SlowStart",
    "Snapshot",
    "Strategy",
    "TcpProbe",
    "WeightedRandomStrategy",
    "WeightedRoundRobinStrategy",
]

__version__ = "0.1.0"
