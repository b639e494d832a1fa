"""What a running proxy needs, already checked and built: the contract between the command line
and configuration file (which produce it) and the proxy engine (which runs on it).

Everything here is a frozen dataclass, so a reload swaps one ``ProxySettings`` for another in one
reference assignment. Defaults follow nginx's where nginx has one (named beside each).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, final

from loadbalancer import HedgingPolicy, LoadBalancer, RetryPolicy

__all__ = [
    "AccessRecord",
    "Forwarding",
    "Limits",
    "Pool",
    "ProxySettings",
    "Route",
    "Sticky",
    "Timeouts",
]


@final
@dataclass(frozen=True, slots=True)
class Limits:
    """Sizes past which a request is refused, and how many connections are served at once."""

    max_request_line: int = 8_192  # 414 past it; nginx large_client_header_buffers 4 8k
    max_header_bytes: int = 32_768  # 431 past it: every field line together (4 x 8k)
    max_headers: int = 100  # 431 past it
    max_body: int = 10 * 1024 * 1024  # 413 past it; nginx's 1m, raised for APIs
    max_connections: int = 10_000  # client connections open at once; more wait in the backlog


@final
@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds each phase may take; the client ones are the slowloris defence."""

    client_header: float = 10.0  # the whole request head; nginx client_header_timeout 60s
    client_body: float = 60.0  # between two reads of the body; nginx client_body_timeout
    keepalive: float = 75.0  # an idle client connection; nginx keepalive_timeout
    upstream_connect: float = 5.0  # nginx proxy_connect_timeout 60s
    upstream_read: float = 60.0  # between two reads from the upstream; nginx proxy_read_timeout
    drain: float = 30.0  # on SIGTERM, how long in-flight requests may still run


@final
@dataclass(frozen=True, slots=True)
class Forwarding:
    """The forwarding headers: who the client is, as the backends are told.

    ``trusted_hops``: how many proxies in front of this one are trusted to have appended a true
    ``X-Forwarded-For`` (Envoy's ``xff_num_trusted_hops``, 0 by default: an incoming one is
    replaced, never believed). ``style``: ``X-Forwarded-For``/``-Proto``/``-Host``, or RFC
    7239's ``Forwarded``. ``via``: add ``Via: 1.1 <via_name>``.
    """

    trusted_hops: int = 0
    style: Literal["x-forwarded", "forwarded"] = "x-forwarded"
    via: bool = False
    via_name: str = "loadbalancer"


@final
@dataclass(frozen=True, slots=True)
class Sticky:
    """Where a request's sticky key comes from, for the hashing strategies: a header or a
    cookie (the first that is set). A request with neither is balanced without a key."""

    header: str | None = None
    cookie: str | None = None


@final
@dataclass(frozen=True, slots=True)
class Pool:
    """One upstream pool: its balancer (built, with its strategy, health and budget) and how
    requests to it are retried.

    ``retry``: the engine's policy (attempts, backoff, per-try timeout). Idempotent methods
    (RFC 9110: GET, HEAD, OPTIONS, PUT, DELETE, TRACE) are retried after they may have reached a
    server; others only when nothing of them was sent, unless ``retry_non_idempotent``.
    ``retry_statuses``: upstream statuses that retry an idempotent request on another server.
    ``failure_statuses``: statuses recorded as the server's failure. ``hedging``: hedge
    idempotent requests (off by default).
    """

    name: str
    lb: LoadBalancer
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    retry_statuses: frozenset[int] = frozenset({502, 503, 504})
    failure_statuses: frozenset[int] = frozenset(range(500, 600))
    retry_non_idempotent: bool = False
    hedging: HedgingPolicy | None = None
    sticky: Sticky | None = None


@final
@dataclass(frozen=True, slots=True)
class Route:
    """Requests whose Host is ``host`` (any host if None; matched without case or port) and
    whose path starts with ``path_prefix`` go to the pool named ``pool``. The first route that
    matches wins, in the order given."""

    pool: str
    host: str | None = None
    path_prefix: str = "/"


@final
@dataclass(frozen=True, slots=True)
class AccessRecord:
    """One line of the access log: one client request, from its head to its last byte.

    ``upstream`` is the server of the attempt that answered (None if none did); ``attempts``
    how many were made; ``upstream_time`` the seconds from sending the answering attempt to its
    response's last byte, ``total_time`` from the request's first byte to the response's last;
    ``outcome`` what the lease recorded: ``"success"``, ``"failure"`` or ``"none"`` (the client
    went away); ``error`` the cause of a response the proxy made itself (``"no_upstream"``,
    ``"upstream_timeout"``, ``"upstream_refused"``...), None for an upstream's own response.
    """

    client: str
    method: str
    target: str
    host: str
    status: int
    pool: str | None
    upstream: str | None
    attempts: int
    upstream_time: float | None
    total_time: float
    bytes_sent: int
    outcome: Literal["success", "failure", "none"]
    error: str | None = None


@final
@dataclass(frozen=True, slots=True)
class ProxySettings:
    """Everything the proxy engine runs on: pools by name, the routes into them, the limits,
    timeouts and forwarding rules, and where access records go (``on_access``, called on the
    event loop for every finished request; None logs nothing)."""

    pools: Mapping[str, Pool]
    routes: tuple[Route, ...]
    limits: Limits = field(default_factory=Limits)
    timeouts: Timeouts = field(default_factory=Timeouts)
    forwarding: Forwarding = field(default_factory=Forwarding)
    on_access: Callable[[AccessRecord], object] | None = None
