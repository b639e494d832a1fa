"""OpenTelemetry HTTP client metrics for the integrations: ``http.client.request.duration``.

Each integration takes ``meter_provider=`` (an ``opentelemetry.metrics.MeterProvider``; None,
the default, records nothing and never imports OpenTelemetry). Given one, every attempt (each
try against one server: retries and hedges included, as each is an HTTP request of its own on
the wire) records its duration on the histogram ``http.client.request.duration`` of the meter
``loadbalancer``, as the stable HTTP client semantic conventions define it:

* the duration runs from just before the attempt is sent to its response headers (or to the
  error that ended it); reading the body is not included, so a minute-long stream is one
  short point, whatever the lease's own latency says;
* unit ``s``, with the conventions' advised bucket boundaries (``BUCKETS``);
* attributes: ``http.request.method`` (a method not in ``known_methods()`` is ``_OTHER``),
  ``server.address`` and ``server.port`` (the server the attempt went to, not the logical
  host: the conventions' newest text would name the Host header's, but a balancer's
  operators need the replica; the logical host is ``loadbalancer.service``), ``url.scheme``,
  ``http.response.status_code`` and ``network.protocol.version`` (when a response came), and
  ``error.type`` (see ``status_error_type`` and ``error_type``).

``error.type`` is the status code (``"503"``) for a status of 400 or more, and otherwise the
class of the exception that ended the attempt, named from its package when the package
exports it (``httpx.ConnectError``, ``requests.ConnectionError``,
``aiohttp.ClientConnectorError``): in the async integrations, ``loadbalancer.AttemptTimeoutError``
for an attempt cut off by the per-try timeout and ``asyncio.CancelledError`` for one cancelled
otherwise (a hedge that lost, the caller's cancellation). Nothing here imports OpenTelemetry
until ``http_metrics`` is given a provider.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar, final

import loadbalancer
from loadbalancer import Attempt, AttemptTimeoutError, Verdict

from ._http import parse_server

if TYPE_CHECKING:
    from opentelemetry.metrics import Histogram

__all__ = [
    "BUCKETS",
    "DURATION",
    "KNOWN_METHODS",
    "SERVICE",
    "HttpMetrics",
    "RequestMetrics",
    "error_type",
    "http_metrics",
    "known_methods",
    "method_attribute",
    "protocol_version",
    "status_error_type",
]

R = TypeVar("R")

_log = logging.getLogger("loadbalancer.metrics")

DURATION = "http.client.request.duration"
"""The histogram every attempt is recorded on (semantic conventions: HTTP client metrics)."""

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
"""The bucket boundaries, in seconds, that the conventions advise for ``DURATION``."""

KNOWN_METHODS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"}
)
"""The methods of RFC 9110 and PATCH (RFC 5789): the conventions' default known methods."""

SERVICE = "loadbalancer.service"
"""The library's own attribute: the logical host a request was routed by."""

_KNOWN_METHODS_VARIABLE = "OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS"
_DEFAULT_PORTS = {"http": 80, "https": 443}


def known_methods(environ: Mapping[str, str] = os.environ) -> frozenset[str]:
    """The methods recorded as they are: ``OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS`` (a
    comma-separated, case-sensitive list that replaces the default) or ``KNOWN_METHODS``."""
    # The conventions require this override from any instrumentation that may turn a valid
    # method into _OTHER, under this very name.
    value = environ.get(_KNOWN_METHODS_VARIABLE)
    if value is None:
        return KNOWN_METHODS
    return frozenset(m.strip() for m in value.split(",") if m.strip())


def method_attribute(method: str, known: frozenset[str] = KNOWN_METHODS) -> str:
    """``http.request.method``: ``method`` if it is known (case-sensitive), else ``_OTHER``."""
    # Unknown methods are folded so that a client cannot make the metric's cardinality grow.
    return method if method in known else "_OTHER"


def status_error_type(status: int) -> str | None:
    """``error.type`` for a response: the status as a string if it is an error for a client
    (4xx, 5xx, or a code outside 100..599), else None."""
    return None if 100 <= status < 400 else str(status)


# error.type by exception class: a class is named once (the names are bounded by the classes
# a client raises, so the cache stays small).
_ERROR_TYPES: dict[type[BaseException], str] = {}


def _class_name(kind: type[BaseException]) -> str:
    qualname = getattr(kind, "__qualname__", None)
    module = getattr(kind, "__module__", None)
    if not isinstance(qualname, str) or not qualname:
        return "_OTHER"  # the conventions' fallback, for a class that cannot be named
    if not isinstance(module, str) or module == "builtins":
        return qualname
    # httpx.ConnectError lives in httpx._exceptions: the name users write (and see in
    # tracebacks of their own code) is the package's, and it survives a move of the module.
    package = module.partition(".")[0]
    if getattr(sys.modules.get(package), qualname, None) is kind:
        return f"{package}.{qualname}"
    return f"{module}.{qualname}"


def error_type(error: BaseException) -> str:
    """``error.type`` for an attempt that ended with ``error``: its class's qualified name,
    from the package that exports it when there is one (``httpx.ConnectError``)."""
    kind = type(error)
    name = _ERROR_TYPES.get(kind)
    if name is None:
        name = _ERROR_TYPES[kind] = _class_name(kind)
    return name


def protocol_version(major: int, minor: int) -> str:
    """``network.protocol.version`` as the conventions write it: ``1.1``, ``2``, ``3``."""
    return str(major) if major >= 2 and minor == 0 else f"{major}.{minor}"


@final
class HttpMetrics(Generic[R]):
    """One adapter's histogram, and how it reads its client's responses (``R``)."""

    __slots__ = ("_histogram", "_known", "_status", "_version")

    def __init__(
        self,
        histogram: Histogram,
        known: frozenset[str],
        status: Callable[[R], int],
        version: Callable[[R], str | None],
    ) -> None:
        self._histogram = histogram
        self._known = known
        self._status = status
        self._version = version

    def request(
        self, method: str, service: str, scheme: str, port: int | None
    ) -> RequestMetrics[R]:
        """The recorder of one request's attempts: ``method`` as sent, ``service`` the logical
        host, ``scheme`` and ``port`` the request's own (a server's replace them)."""
        return RequestMetrics(self, method_attribute(method, self._known), service, scheme, port)

    def record(
        self,
        attributes: dict[str, Any],
        seconds: float,
        response: R | None,
        error: BaseException | None,
    ) -> None:
        """Record one attempt of ``seconds`` that got ``response`` or ended with ``error``."""
        if response is not None:
            status = self._status(response)
            attributes["http.response.status_code"] = status
            version = self._version(response)
            if version is not None:
                attributes["network.protocol.version"] = version
            failed = status_error_type(status)
            if failed is not None:
                attributes["error.type"] = failed
        elif error is not None:
            attributes["error.type"] = error_type(error)
        self._histogram.record(seconds, attributes)


@final
class RequestMetrics(Generic[R]):
    """The attempts of one request: wraps the attempt function (and, for async clients, the
    classifier) given to the balancer so that each attempt records one point.

    An async attempt that is cancelled is recorded once its cause is known: the per-try
    timeout if the classifier then judges it (``AttemptTimeoutError``), else a cancellation,
    when ``done()`` says the request is over or the attempt unwinds after that.
    """

    __slots__ = ("_base", "_metrics", "_over", "_pending", "_port", "_scheme")

    def __init__(
        self, metrics: HttpMetrics[R], method: str, service: str, scheme: str, port: int | None
    ) -> None:
        self._metrics = metrics
        self._base = {"http.request.method": method, SERVICE: service}
        self._scheme = scheme
        self._port = port
        self._over = False
        # Cancelled attempts whose cause is not known yet, by server (a request never tries a
        # server twice): how long each ran, and the cancellation.
        self._pending: dict[str, tuple[float, BaseException]] = {}

    def _record(
        self, server: str, seconds: float, response: R | None, error: BaseException | None
    ) -> None:
        try:
            backend = parse_server(server)
        except (TypeError, ValueError):
            return  # not a server an HTTP request can go to: the attempt sent nothing
        scheme = backend.scheme or self._scheme
        port = backend.port if backend.port is not None else self._port
        if port is None:
            port = _DEFAULT_PORTS.get(scheme, 0)
        attributes: dict[str, Any] = {
            **self._base,
            "server.address": backend.host,
            "server.port": port,
            "url.scheme": scheme,
        }
        try:
            self._metrics.record(attributes, seconds, response, error)
        except Exception:  # a metric must never fail the request it measures
            _log.exception("recording http.client.request.duration failed")

    def sync(self, attempt: Callable[[str], R]) -> Callable[[str], R]:
        """``attempt``, each call of which records its duration and outcome."""
        record = self._record
        clock = time.perf_counter

        def timed(server: str) -> R:
            started = clock()
            try:
                response = attempt(server)
            except BaseException as exc:  # an interrupt too: the request was on the wire
                record(server, clock() - started, None, exc)
                raise
            record(server, clock() - started, response, None)
            return response

        return timed

    def asynchronous(self, attempt: Callable[[str], Awaitable[R]]) -> Callable[[str], Awaitable[R]]:
        """The asyncio twin of ``sync``: a cancelled attempt waits for its cause."""
        from asyncio import CancelledError  # only async adapters come here: loaded already

        record = self._record
        pending = self._pending
        clock = time.perf_counter

        async def timed(server: str) -> R:
            started = clock()
            try:
                response = await attempt(server)
            except CancelledError as exc:
                # The per-try timeout cancels an attempt as a lost hedge or the caller does:
                # only the classifier, called next if it was the timeout, can tell them apart.
                if self._over:
                    record(server, clock() - started, None, exc)
                else:
                    pending[server] = (clock() - started, exc)
                raise
            except BaseException as exc:
                record(server, clock() - started, None, exc)
                raise
            record(server, clock() - started, response, None)
            return response

        return timed

    def classify(
        self, classify: Callable[[Attempt[R]], Verdict]
    ) -> Callable[[Attempt[R]], Verdict]:
        """``classify``, first recording an attempt the per-try timeout cancelled."""
        pending = self._pending
        record = self._record

        def judged(attempt: Attempt[R]) -> Verdict:
            if isinstance(attempt.error, AttemptTimeoutError):
                cancelled = pending.pop(attempt.server, None)
                if cancelled is not None:
                    record(attempt.server, cancelled[0], None, attempt.error)
            return classify(attempt)

        return judged

    def done(self) -> None:
        """The request is over: attempts still cancelled without a cause were the caller's
        cancellation, and those still unwinding (lost hedges) record when they end."""
        self._over = True
        pending, self._pending = self._pending, {}
        for server, (seconds, cancellation) in pending.items():
            self._record(server, seconds, None, cancellation)


def http_metrics(
    meter_provider: object,
    *,
    status: Callable[[R], int],
    version: Callable[[R], str | None],
) -> HttpMetrics[R] | None:
    """The metrics of an adapter given ``meter_provider``: None for None (nothing recorded,
    OpenTelemetry never imported); ``TypeError`` naming ``meter_provider`` for a value that is
    not an ``opentelemetry.metrics.MeterProvider``."""
    if meter_provider is None:
        return None
    try:
        from opentelemetry.metrics import MeterProvider
    except ImportError as exc:
        raise ImportError(
            "meter_provider needs opentelemetry-api: pip install 'loadbalancer[opentelemetry]'"
        ) from exc
    if not isinstance(meter_provider, MeterProvider):
        raise TypeError(
            "meter_provider must be an opentelemetry.metrics.MeterProvider or None, not "
            f"{type(meter_provider).__name__}"
        )
    meter = meter_provider.get_meter("loadbalancer", loadbalancer.__version__)
    histogram = meter.create_histogram(
        DURATION,
        unit="s",
        description="Duration of HTTP client requests.",
        explicit_bucket_boundaries_advisory=BUCKETS,
    )
    return HttpMetrics(histogram, known_methods(), status, version)
