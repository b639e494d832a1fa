"""Client-side load balancing: fast, thread-safe picks over a pool of backend servers."""

from ._balancer import LoadBalancer as LoadBalancer
from ._errors import LoadBalancerError as LoadBalancerError
from ._errors import NoServersAvailableError as NoServersAvailableError
from ._lease import Lease as Lease
from ._snapshot import Endpoint as Endpoint
from ._snapshot import Snapshot as Snapshot
from ._stats import ServerStats as ServerStats
from .strategies._base import Key as Key
from .strategies._base import Picker as Picker
from .strategies._base import PickFunction as PickFunction
from .strategies._base import Strategy as Strategy
from .strategies.random import RandomStrategy as RandomStrategy
from .strategies.round_robin import RoundRobinStrategy as RoundRobinStrategy

__all__ = [
    "Endpoint",
    "Key",
    "Lease",
    "LoadBalancer",
    "LoadBalancerError",
    "NoServersAvailableError",
    "PickFunction",
    "Picker",
    "RandomStrategy",
    "RoundRobinStrategy",
    "ServerStats",
    "Snapshot",
    "Strategy",
]

__version__ = "0.1.0"
