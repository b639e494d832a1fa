"""Health: active checks that probe servers, outlier detection, and slow start settings."""

from ._core import HealthCheckTarget as HealthCheckTarget
from ._state import HealthCheckStatus as HealthCheckStatus
from .async_checker import AsyncHealthChecker as AsyncHealthChecker
from .checker import HealthChecker as HealthChecker
from .outlier import OutlierDetection as OutlierDetection
from .probes import AsyncHttpProbe as AsyncHttpProbe
from .probes import AsyncTcpProbe as AsyncTcpProbe
from .probes import HttpProbe as HttpProbe
from .probes import TcpProbe as TcpProbe
from .slow_start import SlowStart as SlowStart

__all__ = [
    "AsyncHealthChecker",
    "AsyncHttpProbe",
    "AsyncTcpProbe",
    "HealthCheckStatus",
    "HealthCheckTarget",
    "HealthChecker",
    "HttpProbe",
    "OutlierDetection",
    "SlowStart",
    "TcpProbe",
]
