"""The HTTP layer every client adapter shares: routing, addresses, Host, sticky keys, retries.

Nothing here imports an HTTP client. An adapter (httpx, requests, aiohttp)
routes a request's logical host to a balancer with ``Routes``, turns the picked server into a
``Backend`` with ``parse_server``, picks the Host header with ``host_header``, reads a sticky
key with ``StickyKey``, and judges each attempt with ``HttpClassifier``, after mapping its
client's exceptions to an ``ErrorKind``. Settings are frozen dataclasses that check their
arguments when built, naming the one that is wrong.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import math
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar, final

from loadbalancer import (
    Attempt,
    AttemptTimeoutError,
    HedgingPolicy,
    Key,
    LoadBalancer,
    LoadBalancerError,
    RetryPolicy,
    Verdict,
)

__all__ = [
    "DEFAULT_FAILURE_STATUSES",
    "DEFAULT_RETRY_STATUSES",
    "IDEMPOTENT_METHODS",
    "Backend",
    "ErrorKind",
    "HostHeader",
    "HttpClassifier",
    "HttpPolicy",
    "HttpRetry",
    "Routes",
    "StickyKey",
    "UnknownHostError",
    "check_policy",
    "classifiers_by_kind",
    "host_header",
    "parse_retry_after",
    "parse_server",
]

R = TypeVar("R")

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
"""Methods retried after they may have reached a server (RFC 9110 9.2.2; urllib3's default)."""

DEFAULT_RETRY_STATUSES = frozenset({502, 503, 504})
"""Statuses that send an idempotent request to another server."""

DEFAULT_FAILURE_STATUSES = frozenset(range(500, 600))
"""Statuses recorded as the server's failure; every other status is its success."""

HostHeader = Literal["logical", "backend"]
"""``"logical"``: keep the request's own Host (``inventory``); ``"backend"``: the server's."""

_DEFAULT_PORTS = {"http": 80, "https": 443}


# -- routing ------------------------------------------------------------------------------------


@final
class UnknownHostError(LoadBalancerError, LookupError):
    """A request named a logical host that no balancer serves."""

    def __init__(self, host: str, known: Iterable[str]) -> None:
        self.host = host
        super().__init__(f"no balancer for host {host!r}; routed hosts: {sorted(known)}")


@final
class Routes:
    """Which balancer serves a request's logical host.

    ``balancers`` is one ``LoadBalancer`` for every host, or a mapping from logical host
    (``"inventory"``, matched without case) to its balancer; a host missing from the mapping
    raises ``UnknownHostError`` naming it.
    """

    __slots__ = ("_by_host", "_every")

    def __init__(self, balancers: LoadBalancer | Mapping[str, LoadBalancer]) -> None:
        self._every: LoadBalancer | None = None
        self._by_host: dict[str, LoadBalancer] = {}
        if isinstance(balancers, LoadBalancer):
            self._every = balancers
            return
        if not isinstance(balancers, Mapping):
            raise TypeError(
                "balancers must be a LoadBalancer or a mapping of host to LoadBalancer, "
                f"not {type(balancers).__name__}"
            )
        if not balancers:
            raise ValueError("balancers must map at least one host")
        for host, lb in balancers.items():
            if not isinstance(host, str) or not host:
                raise TypeError(f"balancers keys must be non-empty host names, got {host!r}")
            if not isinstance(lb, LoadBalancer):
                raise TypeError(
                    f"balancers[{host!r}] must be a LoadBalancer, not {type(lb).__name__}"
                )
            name = host.lower()
            if name in self._by_host:
                raise ValueError(f"balancers names host {name!r} twice (hosts match without case)")
            self._by_host[name] = lb

    def balancer(self, host: str) -> LoadBalancer:
        """The balancer for ``host``; ``UnknownHostError`` if none serves it."""
        if self._every is not None:
            return self._every
        lb = self._by_host.get(host.lower())
        if lb is None:
            raise UnknownHostError(host, self._by_host)
        return lb


# -- server addresses -----------------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class Backend:
    """Where a picked server is: ``scheme`` and ``port`` None keep the request's own."""

    scheme: Literal["http", "https"] | None
    host: str  # an IPv6 address without its brackets
    port: int | None
    is_ip: bool = field(init=False, compare=False)
    """True if ``host`` is an IP address literal rather than a name (for SNI)."""

    def __post_init__(self) -> None:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            object.__setattr__(self, "is_ip", False)
        else:
            object.__setattr__(self, "is_ip", True)


@functools.lru_cache(maxsize=1024)
def parse_server(server: str) -> Backend:
    """Parse a server name: ``host``, ``host:port``, ``[v6]:port``, ``http(s)://host:port``.

    Raise ``ValueError`` naming ``server`` if it is none of these.
    """
    if not isinstance(server, str):
        raise TypeError(f"server must be a str, not {type(server).__name__}")
    rest = server
    scheme: Literal["http", "https"] | None = None
    if "://" in rest:
        given, rest = rest.split("://", 1)
        lowered = given.lower()
        if lowered == "http":
            scheme = "http"
        elif lowered == "https":
            scheme = "https"
        else:
            raise ValueError(f"server {server!r}: scheme must be http or https, not {given!r}")
        rest = rest.removesuffix("/")
    if not rest or any(c in rest for c in "/?#@ \t\r\n"):
        raise ValueError(f"server {server!r} must be host, host:port or scheme://host:port")
    port_text: str | None = None
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            raise ValueError(f"server {server!r}: '[' without ']'")
        host, after = rest[1:end], rest[end + 1 :]
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise ValueError(f"server {server!r}: {host!r} is not an IPv6 address") from None
        if after:
            if not after.startswith(":"):
                raise ValueError(f"server {server!r}: expected ':port' after ']'")
            port_text = after[1:]
    elif rest.count(":") > 1:
        raise ValueError(f"server {server!r}: write an IPv6 address as [address]:port")
    else:
        host, colon, after = rest.partition(":")
        port_text = after if colon else None
    if not host:
        raise ValueError(f"server {server!r} has no host")
    port: int | None = None
    if port_text is not None:
        if not port_text.isdigit() or not port_text.isascii():
            raise ValueError(f"server {server!r}: port must be digits, got {port_text!r}")
        port = int(port_text)
        if not 1 <= port <= 65535:
            raise ValueError(f"server {server!r}: port must be in 1..65535, got {port}")
    return Backend(scheme, host.lower(), port)


def host_header(backend: Backend, scheme: str, port: int | None) -> str:
    """The Host header naming ``backend`` (default port left out, IPv6 in brackets).

    ``scheme`` and ``port`` are the attempt's own, after the backend's replaced the request's.
    """
    # RFC 6874 section 4: an IPv6 zone id is local to this machine and never goes on the wire.
    host = f"[{backend.host.split('%', 1)[0]}]" if ":" in backend.host else backend.host
    if port is None or _DEFAULT_PORTS.get(scheme) == port:
        return host
    return f"{host}:{port}"


# -- sticky keys ----------------------------------------------------------------------------------


def _cookie(header: str, name: str) -> str | None:
    """The value of cookie ``name`` in a Cookie header (``a=1; b=2``), or None."""
    for part in header.split(";"):
        key, eq, value = part.strip().partition("=")
        if eq and key == name:
            return value.strip().strip('"')
    return None


@final
@dataclass(frozen=True, slots=True)
class StickyKey:
    """Where a request's sticky key comes from: exactly one of ``header``, ``cookie``, ``function``.

    The key goes to the balancer's strategy (hashing strategies pin it to a server). A request
    without the header or cookie, or for which ``function(request)`` returns None, has no key.
    ``function`` receives the client's own request object (an ``httpx.Request``, a
    ``requests.PreparedRequest``, an ``aiohttp.ClientRequest``).
    """

    header: str | None = None
    cookie: str | None = None
    function: Callable[[Any], Key | None] | None = None

    def __post_init__(self) -> None:
        given = [n for n in ("header", "cookie", "function") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(
                f"StickyKey needs exactly one of header, cookie, function; got {given}"
            )
        for name in ("header", "cookie"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise TypeError(f"{name} must be a non-empty str, got {value!r}")
        if self.function is not None and not callable(self.function):
            raise TypeError(f"function must be callable, not {type(self.function).__name__}")

    def key(self, request: object, get_header: Callable[[str], str | None]) -> Key | None:
        """The key of ``request``, whose headers ``get_header(name)`` reads (None: absent)."""
        if self.header is not None:
            return get_header(self.header) or None
        if self.cookie is not None:
            cookies = get_header("cookie")
            return None if cookies is None else (_cookie(cookies, self.cookie) or None)
        assert self.function is not None
        key = self.function(request)
        if key is not None and not isinstance(key, (str, bytes)):
            raise TypeError(f"StickyKey.function must return str, bytes or None, not {key!r}")
        return key


# -- retries and outcomes -------------------------------------------------------------------------


class ErrorKind(enum.Enum):
    """What an attempt's exception says about the request and the server.

    * ``NOT_SENT``: no byte of the request reached the server (connection refused or timed
      out while connecting, TLS handshake failed): a failure, retried for any method.
    * ``BROKEN``: the connection failed after the request may have been sent and before the
      response headers arrived (reset, closed, a malformed answer): a failure, retried only
      for idempotent requests.
    * ``TIMEOUT``: no answer in time (a read or write timeout, the per-try timeout): a
      failure, retried only for idempotent requests.
    * ``LOCAL``: the client's own problem (an invalid request, its pool exhausted, anything
      not known to come from the server): no outcome, not retried.
    """

    NOT_SENT = "not sent"
    BROKEN = "broken"
    TIMEOUT = "timeout"
    LOCAL = "local"


def _statuses(value: object, name: str) -> frozenset[int]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"{name} must be a collection of status codes, not {type(value).__name__}")
    statuses = frozenset(value)
    for status in statuses:
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            raise ValueError(f"{name} must hold status codes in 100..599, got {status!r}")
    return statuses


@final
@dataclass(frozen=True, slots=True)
class HttpRetry:
    """Which attempts are failures, and which may be retried on another server.

    * ``methods``: the idempotent methods, retried even when the request may have reached a
      server (default ``IDEMPOTENT_METHODS``). Any request marked idempotent is too; others
      are retried only when nothing of them was sent (``ErrorKind.NOT_SENT``).
    * ``retry_statuses``: statuses that retry an idempotent request (default 502, 503, 504).
    * ``failure_statuses``: statuses recorded as failures (default every 5xx); every other
      status, a 4xx included, is a success: the server worked, the request was the problem.
    * ``retry_after``: honour a ``Retry-After`` header on a retried status: wait that long
      instead of the backoff, up to ``RetryPolicy.max_retry_after`` (longer: no retry).

    A request whose body is a one-shot stream is never retried.
    """

    methods: Collection[str] = IDEMPOTENT_METHODS  # each stored as a frozenset
    retry_statuses: Collection[int] = DEFAULT_RETRY_STATUSES
    failure_statuses: Collection[int] = DEFAULT_FAILURE_STATUSES
    retry_after: bool = True

    def __post_init__(self) -> None:
        methods = self.methods
        if isinstance(methods, (str, bytes)) or not isinstance(methods, Iterable):
            raise TypeError(f"methods must be a collection of str, not {type(methods).__name__}")
        upper = []
        for method in methods:
            if not isinstance(method, str) or not method:
                raise TypeError(f"methods must hold non-empty str, got {method!r}")
            upper.append(method.upper())
        object.__setattr__(self, "methods", frozenset(upper))
        for name in ("retry_statuses", "failure_statuses"):
            object.__setattr__(self, name, _statuses(getattr(self, name), name))
        if not isinstance(self.retry_after, bool):
            raise TypeError(f"retry_after must be a bool, not {type(self.retry_after).__name__}")

    def idempotent(self, method: str, marked: bool | None = None) -> bool:
        """True if ``method`` may be sent twice: ``marked`` (the caller's say) first."""
        return marked if marked is not None else method.upper() in self.methods


@final
@dataclass(frozen=True, slots=True)
class HttpPolicy:
    """How an HTTP integration sends each request.

    * ``retry``: attempts, backoff and per-try timeout (``RetryPolicy``; default one retry).
    * ``rules``: which attempts are failures and which are retried (``HttpRetry``).
    * ``hedging``: hedge idempotent requests in async clients (off by default).
    * ``host_header``: ``"logical"`` (default) keeps the request's Host, so virtual hosts and
      TLS see the service's name; ``"backend"`` sends the picked server's host and port.
    * ``sticky``: where each request's sticky key comes from (``StickyKey``), or None.
    """

    retry: RetryPolicy = field(default_factory=RetryPolicy)
    rules: HttpRetry = field(default_factory=HttpRetry)
    hedging: HedgingPolicy | None = None
    host_header: HostHeader = "logical"
    sticky: StickyKey | None = None

    def __post_init__(self) -> None:
        for name, kind in (("retry", RetryPolicy), ("rules", HttpRetry)):
            value = getattr(self, name)
            if not isinstance(value, kind):
                raise TypeError(f"{name} must be a {kind.__name__}, not {type(value).__name__}")
        if self.hedging is not None and not isinstance(self.hedging, HedgingPolicy):
            raise TypeError(
                f"hedging must be a HedgingPolicy or None, not {type(self.hedging).__name__}"
            )
        if self.host_header not in ("logical", "backend"):
            raise ValueError(
                f"host_header must be 'logical' or 'backend', not {self.host_header!r}"
            )
        if self.sticky is not None and not isinstance(self.sticky, StickyKey):
            raise TypeError(f"sticky must be a StickyKey or None, not {type(self.sticky).__name__}")


def parse_retry_after(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """Seconds a ``Retry-After`` value asks to wait: delay-seconds or an HTTP date.

    A date in the past is 0; a value that is neither (or None) is None. ``now`` reads the
    wall clock, in seconds since the epoch, for dates.
    """
    if value is None:
        return None
    text = value.strip()
    if text.isdigit() and text.isascii():
        # Ten digits are over 300 years; a longer value (a server's junk or malice) is only
        # "longer than any cap", and converting it could overflow a float.
        return float(text) if len(text) <= 10 else math.inf
    from datetime import timezone
    from email.utils import parsedate_to_datetime  # only servers that send dates pay for this

    try:
        when = parsedate_to_datetime(text)
        if when.tzinfo is None:  # asctime and "-0000" dates: RFC 9110 reads both as GMT
            when = when.replace(tzinfo=timezone.utc)
        seconds = when.timestamp() - now()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(seconds, 0.0) if math.isfinite(seconds) else None


# The verdicts without pushback, made once: a Verdict checks its fields when built.
_SUCCESS, _FAILURE, _NO_OUTCOME = Verdict(True), Verdict(False), Verdict(None)
_RETRYABLE_FAILURE = Verdict(False, retry=True)


@final
class HttpClassifier(Generic[R]):
    """The ``Classifier`` of one request's attempts, under ``rules``.

    ``idempotent`` says whether the request may be sent twice, ``replayable`` whether its
    body can be sent again (False for a one-shot stream: never retried). The adapter supplies
    ``status(response)``, ``retry_after(response)`` (the header's value or None) and
    ``kind(exception)``; an ``AttemptTimeoutError`` is always ``ErrorKind.TIMEOUT``.
    """

    __slots__ = ("_after_send", "_kind", "_not_sent", "_retry_after", "_rules", "_status")

    def __init__(
        self,
        rules: HttpRetry,
        *,
        idempotent: bool,
        replayable: bool,
        status: Callable[[R], int],
        retry_after: Callable[[R], str | None],
        kind: Callable[[Exception], ErrorKind],
    ) -> None:
        self._rules = rules
        self._not_sent = replayable
        self._after_send = replayable and idempotent
        self._status = status
        self._retry_after = retry_after
        self._kind = kind

    def __call__(self, attempt: Attempt[R]) -> Verdict:
        """The verdict on ``attempt``."""
        error = attempt.error
        if error is not None:
            kind = (
                ErrorKind.TIMEOUT if isinstance(error, AttemptTimeoutError) else self._kind(error)
            )
            if kind is ErrorKind.LOCAL:
                return _NO_OUTCOME
            retry = self._not_sent if kind is ErrorKind.NOT_SENT else self._after_send
            return _RETRYABLE_FAILURE if retry else _FAILURE
        assert attempt.result is not None
        result = attempt.result
        status = self._status(result)
        rules = self._rules
        ok = status not in rules.failure_statuses
        if not (self._after_send and status in rules.retry_statuses):
            return _SUCCESS if ok else _FAILURE
        pushback = parse_retry_after(self._retry_after(result)) if rules.retry_after else None
        return Verdict(ok, retry=True, retry_after=pushback)


def check_policy(policy: object) -> HttpPolicy:
    """``policy``, or the default ``HttpPolicy()`` for None; anything else raises naming it."""
    if policy is None:
        return HttpPolicy()
    if not isinstance(policy, HttpPolicy):
        raise TypeError(f"policy must be an HttpPolicy, not {type(policy).__name__}")
    return policy


def classifiers_by_kind(
    rules: HttpRetry,
    *,
    status: Callable[[R], int],
    retry_after: Callable[[R], str | None],
    kind: Callable[[Exception], ErrorKind],
) -> dict[tuple[bool, bool], HttpClassifier[R]]:
    """One classifier per kind of request, made once by an adapter: keyed by
    ``(idempotent, replayable)``, so that no request builds its own."""
    return {
        (idempotent, replayable): HttpClassifier(
            rules,
            idempotent=idempotent,
            replayable=replayable,
            status=status,
            retry_after=retry_after,
            kind=kind,
        )
        for idempotent in (False, True)
        for replayable in (False, True)
    }
