"""Active health checks: checkers that probe servers on a schedule, and the probes they run.

This package does network I/O (sockets, TLS, asyncio), so ``import loadbalancer`` does not
load it; ``loadbalancer.HealthChecker`` and the other names below import it on first use.
"""

from ._core import HealthCheckTarget as HealthCheckTarget
from ._result import ProbeResult as ProbeResult
from ._state import HealthCheckStatus as HealthCheckStatus
from .async_checker import AsyncHealthChecker as AsyncHealthChecker
from .checker import HealthChecker as HealthChecker
from .probes import AsyncHttpProbe as AsyncHttpProbe
from .probes import AsyncTcpProbe as AsyncTcpProbe
from .probes import HttpProbe as HttpProbe
from .probes import TcpProbe as TcpProbe

__all__ = [
    "AsyncHealthChecker",
    "AsyncHttpProbe",
    "AsyncTcpProbe",
    "HealthCheckStatus",
    "HealthCheckTarget",
    "HealthChecker",
    "HttpProbe",
    "ProbeResult",
    "TcpProbe",
]
