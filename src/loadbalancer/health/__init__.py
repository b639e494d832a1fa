"""In-process health settings: outlier detection and slow start. No I/O happens here.

The active checkers and probes, which do network I/O, live in ``loadbalancer.checks``.
"""

from .outlier import OutlierDetection as OutlierDetection
from .slow_start import SlowStart as SlowStart

__all__ = ["OutlierDetection", "SlowStart"]
