"""Metrics export: ``lb.stats()`` as Prometheus and OpenTelemetry metrics, named after Envoy's.

``loadbalancer.metrics.prometheus`` (``loadbalancer[prometheus]``) and
``loadbalancer.metrics.opentelemetry`` (``loadbalancer[opentelemetry]``) each import their
library when imported themselves; this package imports neither. Both read the balancers at
collection time, so counting costs requests nothing beyond what leases already count, except
the optional latency histogram (``LoadBalancer.enable_latency_histogram``).
"""

from ._catalog import LABEL_ATTRIBUTES as LABEL_ATTRIBUTES
from ._catalog import METRICS as METRICS
from ._catalog import Metric as Metric
from ._catalog import Sample as Sample

__all__ = ["LABEL_ATTRIBUTES", "METRICS", "Metric", "Sample"]
