"""``loadbalancer serve``'s configuration: flags or a TOML file, checked field by field into a
``ServeConfig``, and the ``Upstreams`` that turn one into ``ProxySettings`` (and back into new
ones on reload, keeping each pool's balancer where it can).

Every problem in a file raises ``ConfigError`` (``simulate``'s ``ScenarioError``) with the path
of the field at fault, such as ``pools.api.health.interval: must be a positive number, got
-1``: one line, as ``loadbalancer simulate`` reports a bad scenario.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, final

from .. import HedgingPolicy, LoadBalancer, OutlierDetection, RetryBudget, RetryPolicy, SlowStart
from ..cli.simulate.fields import (
    ScenarioError,
    Table,
    as_array,
    as_boolean,
    as_integer,
    as_name,
    as_non_negative,
    as_number,
    as_percentage,
    as_positive,
    as_positive_int,
    as_text,
    explain_misplaced_key,
    items,
    join,
    kind,
    library_error,
    one_of,
)
from ..cli.simulate.registry import known_names, resolve, strategy_options
from ..strategies.registry import strategy_class
from ._settings import (
    AccessRecord,
    Forwarding,
    Limits,
    Pool,
    ProxySettings,
    Route,
    Sticky,
    Timeouts,
)

__all__ = [
    "DEFAULT_LISTEN",
    "DEFAULT_MAX_SERVERS",
    "AccessLog",
    "BudgetSpec",
    "ConfigError",
    "HealthSpec",
    "PoolSpec",
    "ServeConfig",
    "StrategySpec",
    "Upstreams",
    "config_from_flags",
    "load_config",
    "parse_address",
    "parse_config",
]

ConfigError = ScenarioError
"""A configuration that cannot be served; ``path`` names the field at fault."""

DEFAULT_LISTEN = ("127.0.0.1", 8080)
"""Where the proxy listens when neither a flag nor the file says."""

DEFAULT_MAX_SERVERS = 1024
"""A pool's capacity (``LoadBalancer(max_servers=...)``) unless its ``max_servers`` says."""

_log = logging.getLogger("loadbalancer.serve")

_T = TypeVar("_T")


# -- what a file says ---------------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class StrategySpec:
    """A strategy by canonical name with its keyword options (sorted), built fresh by ``build``."""

    name: str
    options: tuple[tuple[str, Any], ...] = ()

    def build(self) -> Any:
        """A new strategy instance."""
        return strategy_class(self.name)(**dict(self.options))


@final
@dataclass(frozen=True, slots=True)
class HealthSpec:
    """Active health checks of a pool: an HTTP ``GET path`` or a TCP connect, on a schedule."""

    type: Literal["http", "tcp"] = "http"
    path: str = "/health"
    expect: tuple[int, ...] = tuple(range(200, 400))
    interval: float = 2.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 3
    jitter: float = 0.1
    initially_healthy: bool = True


@final
@dataclass(frozen=True, slots=True)
class BudgetSpec:
    """A pool's retry budget: ``RetryBudget(ratio, reserve)``, or unlimited (counting only)."""

    ratio: float = 0.2
    reserve: float = 10.0
    unlimited: bool = False

    def build(self) -> RetryBudget:
        """A new budget."""
        return RetryBudget.unlimited() if self.unlimited else RetryBudget(self.ratio, self.reserve)


@final
@dataclass(frozen=True, slots=True)
class PoolSpec:
    """One ``[pools.NAME]`` table, checked: everything to build (or keep) its balancer."""

    name: str
    strategy: StrategySpec
    servers: tuple[tuple[str, float], ...] = ()
    discovery: str | None = None
    max_servers: int = DEFAULT_MAX_SERVERS
    outlier_detection: OutlierDetection | None = None
    slow_start: SlowStart | None = None
    panic_threshold: float = 50.0
    budget: BudgetSpec = field(default_factory=BudgetSpec)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    retry_statuses: frozenset[int] = frozenset({502, 503, 504})
    failure_statuses: frozenset[int] = frozenset(range(500, 600))
    retry_non_idempotent: bool = False
    hedging: HedgingPolicy | None = None
    sticky: Sticky | None = None
    health: HealthSpec | None = None

    def balancer_key(self) -> tuple[object, ...]:
        """What the balancer is built from: a pool whose key is unchanged keeps its balancer."""
        return (
            self.strategy,
            self.max_servers,
            self.outlier_detection,
            self.slow_start,
            self.panic_threshold,
            self.budget,
        )

    def build_balancer(self) -> LoadBalancer:
        """A new balancer for this pool, empty."""
        return LoadBalancer(
            self.strategy.build(),
            self.max_servers,
            outlier_detection=self.outlier_detection,
            slow_start=self.slow_start,
            panic_threshold=self.panic_threshold,
            retry_budget=self.budget.build(),
        )


@final
@dataclass(frozen=True, slots=True)
class AccessLog:
    """Where access records go: ``"stdout"``, ``"off"`` or a file path (appended to)."""

    target: str = "stdout"


@final
@dataclass(frozen=True, slots=True)
class ServeConfig:
    """A whole configuration, checked: listeners, pools, routes, limits, admin, log, workers."""

    listen: tuple[tuple[str, int], ...]
    pools: tuple[PoolSpec, ...]
    routes: tuple[Route, ...]
    limits: Limits = field(default_factory=Limits)
    timeouts: Timeouts = field(default_factory=Timeouts)
    forwarding: Forwarding = field(default_factory=Forwarding)
    admin: tuple[str, int] | None = None
    access_log: AccessLog = field(default_factory=AccessLog)
    log_level: str = "info"
    workers: int = 1
    source: Path | None = None  # the file it was read from, for reloads

    def replace(self, **changes: Any) -> ServeConfig:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)


# -- field checks -------------------------------------------------------------------------------


def parse_address(text: str, path: str, *, default_host: str | None = None) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT``; ``:PORT`` with ``default_host``) as (host, port)."""
    if text.startswith("["):
        inside, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":") or not inside:
            raise ConfigError(path, f'must be HOST:PORT or [IPV6]:PORT, got "{text}"')
        host, port_text = inside, rest[1:]
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon or ":" in host:
            raise ConfigError(path, f'must be HOST:PORT or [IPV6]:PORT, got "{text}"')
    if not host:
        if default_host is None:
            raise ConfigError(path, f'must be HOST:PORT, got "{text}" (no host)')
        host = default_host
    if any(c in host for c in " \t\r\n/\\@?#%") or "://" in text:
        raise ConfigError(path, f'must be HOST:PORT, got "{text}"')
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(path, f'the port must be a number from 0 to 65535, got "{text}"')
    return host, int(port_text)


def _as_address(value: object, path: str) -> tuple[str, int]:
    return parse_address(as_name(value, path), path)


def _as_server(value: object, path: str) -> str:
    text = as_name(value, path)
    _, port = parse_address(text, path)
    if port == 0:
        raise ConfigError(path, f'a server needs a port from 1 to 65535, got "{text}"')
    return text


def _as_status(value: object, path: str) -> int:
    status = as_integer(value, path)
    if not 100 <= status <= 599:
        raise ConfigError(path, f"must be an HTTP status from 100 to 599, got {status}")
    return status


def _as_statuses(value: object, path: str) -> frozenset[int]:
    return frozenset(_as_status(v, f"{path}[{i}]") for i, v in enumerate(as_array(value, path)))


def _as_non_negative_int(value: object, path: str) -> int:
    number = as_integer(value, path)
    if number < 0:
        raise ConfigError(path, f"must be an integer >= 0, got {number}")
    return number


def _library(cls: type[_T], table: Table, path: str, names: tuple[str, ...], **fixed: Any) -> _T:
    """``cls(**fields)`` from ``table``'s keys in ``names``; its errors name the field."""
    options: dict[str, Any] = {name: table.raw(name) for name in names if name in table}
    for name, value in options.items():  # TOML has no None; a bool is never a number here
        if isinstance(value, bool) and name != "enabled":
            raise ConfigError(table.path(name), f"must be a number, not {kind(value)}")
    try:
        return cls(**options, **fixed)
    except (TypeError, ValueError) as error:
        raise library_error(error, path, names) from None


def _settings_table(value: object, path: str, cls: type[_T]) -> _T | None:
    """One of the library's settings dataclasses (``enabled = false``: None)."""
    names = tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
    table = Table(value, path, ("enabled", *names))
    if not table.get("enabled", as_boolean, True):
        return None
    return _library(cls, table, path, names)


def _dataclass_table(value: object, path: str, cls: type[_T], checks: Mapping[str, Any]) -> _T:
    """A frozen settings dataclass whose every field has a check in ``checks``."""
    table = Table(value, path, tuple(checks))
    options = {name: table.get(name, check, None) for name, check in checks.items()}
    return cls(**{k: v for k, v in options.items() if v is not None})


# -- pools --------------------------------------------------------------------------------------

_POOL_KEYS = (
    "discovery",
    "failure_statuses",
    "health",
    "hedging",
    "max_servers",
    "outlier_detection",
    "panic_threshold",
    "retry",
    "retry_budget",
    "servers",
    "slow_start",
    "sticky",
    "strategy",
)
_HASHING = ("ring_hash", "maglev", "rendezvous")  # the strategies a sticky key means anything to
_RETRY_FIELDS = ("attempts", "backoff_base", "backoff_max", "max_retry_after", "per_try_timeout")
_HEALTH_KEYS = (
    "expect",
    "fall",
    "initially_healthy",
    "interval",
    "jitter",
    "path",
    "rise",
    "timeout",
    "type",
)


def _strategy(value: object, path: str) -> StrategySpec:
    """``"peak_ewma"``, or a table ``{ name = "ring_hash", hash = "ketama" }``."""
    if isinstance(value, str):
        written, options, name_path = value, {}, path
    elif isinstance(value, dict):
        table = Table(value, path)
        written = table.require("name", as_name)
        name_path = table.path("name")
        options = {k: table.raw(k) for k in table if k != "name"}
    else:
        raise ConfigError(path, f"must be a strategy name or a table, not {kind(value)}")
    name = resolve(written)
    if name is None:
        raise ConfigError(name_path, f'unknown strategy "{written}" (choose from: {known_names()})')
    accepted = strategy_options(name)
    for key in options:
        if key not in accepted:
            choices = ", ".join(accepted) or "none"
            raise ConfigError(
                join(path, key), f"unknown option for {name} (expected one of: {choices})"
            )
    spec = StrategySpec(name, tuple(sorted(options.items())))
    try:  # build one now, so that a bad option fails here rather than at start
        spec.build()
    except (TypeError, ValueError) as error:
        raise library_error(error, path, accepted) from None
    return spec


def _servers(value: object, path: str) -> tuple[tuple[str, float], ...]:
    """A list of servers (weight 1), or a table of server to weight."""
    servers: dict[str, float] = {}
    if isinstance(value, dict):
        table = Table(value, path)
        for server in table:
            where = f'{path}."{server}"'
            servers[_as_server(server, where)] = as_positive(table.raw(server), where)
        return tuple(servers.items())
    for index, item in enumerate(as_array(value, path)):
        where = f"{path}[{index}]"
        server = _as_server(item, where)
        if server in servers:
            raise ConfigError(where, f'duplicate server "{server}"')
        servers[server] = 1.0
    return tuple(servers.items())


def _discovery(value: object, path: str) -> str:
    """A discovery source's URL, checked by building its source once."""
    from ..discovery import source_from_url

    url = as_name(value, path)
    try:
        source_from_url(url)
    except ValueError as error:
        raise ConfigError(path, str(error)) from None
    except ImportError as error:
        raise ConfigError(path, f"{error}: install the extra it needs (dns or etcd)") from None
    return url


def _health(value: object, path: str) -> HealthSpec:
    table = Table(value, path, _HEALTH_KEYS)
    check_type = table.get("type", one_of("http", "tcp"), "http")
    if check_type == "tcp":
        for key in ("path", "expect"):
            if key in table:
                raise ConfigError(table.path(key), 'applies only to type = "http"')
    path_value = table.get("path", as_name, "/health")
    if not path_value.startswith("/"):
        raise ConfigError(table.path("path"), f'must start with "/", got "{path_value}"')
    expect = table.get("expect", _as_statuses, frozenset(range(200, 400)))
    if not expect:
        raise ConfigError(table.path("expect"), "must list at least one status")
    interval = table.get("interval", as_positive, 2.0)
    timeout = table.get("timeout", as_positive, 1.0)
    if timeout > interval:
        raise ConfigError(
            table.path("timeout"), f"must be at most the interval ({interval:g} s), got {timeout:g}"
        )
    jitter = table.get("jitter", as_non_negative, 0.1)
    if jitter >= 1:
        raise ConfigError(table.path("jitter"), f"must be below 1, got {jitter:g}")
    return HealthSpec(
        type="tcp" if check_type == "tcp" else "http",
        path=path_value,
        expect=tuple(sorted(expect)),
        interval=interval,
        timeout=timeout,
        rise=table.get("rise", as_positive_int, 2),
        fall=table.get("fall", as_positive_int, 3),
        jitter=jitter,
        initially_healthy=table.get("initially_healthy", as_boolean, True),
    )


def _retry(value: object, path: str) -> tuple[RetryPolicy, frozenset[int], bool]:
    table = Table(value, path, (*_RETRY_FIELDS, "non_idempotent", "statuses"))
    policy = _library(RetryPolicy, table, path, _RETRY_FIELDS)
    statuses = table.get("statuses", _as_statuses, frozenset({502, 503, 504}))
    return policy, statuses, table.get("non_idempotent", as_boolean, False)


def _budget(value: object, path: str) -> BudgetSpec:
    table = Table(value, path, ("ratio", "reserve", "unlimited"))
    unlimited = table.get("unlimited", as_boolean, False)
    if unlimited:
        for key in ("ratio", "reserve"):
            if key in table:
                raise ConfigError(table.path(key), "does not apply to an unlimited budget")
        return BudgetSpec(unlimited=True)
    _library(RetryBudget, table, path, ("ratio", "reserve"))  # checked; each pool builds its own
    return BudgetSpec(table.get("ratio", as_number, 0.2), table.get("reserve", as_number, 10.0))


def _hedging(value: object, path: str) -> HedgingPolicy | None:
    table = Table(value, path, ("attempts", "delay", "enabled"))
    if not table.get("enabled", as_boolean, True):
        return None
    if "delay" not in table:
        raise ConfigError(table.path("delay"), "missing: seconds without an answer before a hedge")
    return _library(HedgingPolicy, table, path, ("attempts", "delay"))


def _sticky(value: object, path: str) -> Sticky:
    table = Table(value, path, ("cookie", "header"))
    header = table.get("header", as_name, None)
    cookie = table.get("cookie", as_name, None)
    if header is None and cookie is None:
        raise ConfigError(path, "set header or cookie (or both: the header is read first)")
    return Sticky(header=header, cookie=cookie)


def _pool(name: str, value: object, path: str) -> PoolSpec:
    table = Table(value, path, _POOL_KEYS)
    strategy = table.get("strategy", _strategy, StrategySpec("round_robin"))
    no_servers: tuple[tuple[str, float], ...] = ()
    servers = table.get("servers", _servers, no_servers)
    discovery = table.get("discovery", _discovery, None)
    if discovery is not None and "servers" in table:
        raise ConfigError(table.path("servers"), "give servers or discovery, not both")
    if discovery is None and not servers:
        raise ConfigError(table.path("servers"), "missing: list servers, or give a discovery URL")
    max_servers = table.get("max_servers", as_positive_int, max(DEFAULT_MAX_SERVERS, len(servers)))
    if len(servers) > max_servers:
        raise ConfigError(
            table.path("servers"), f"lists {len(servers)} servers, more than max_servers"
        )
    slow_start = table.get("slow_start", lambda v, p: _settings_table(v, p, SlowStart), None)
    if slow_start is not None and not strategy.build().accepts_slow_start:
        raise ConfigError(
            table.path("slow_start"),
            f"does not apply to {strategy.name}: it ignores weights or pins keys to servers",
        )
    sticky = table.get("sticky", _sticky, None)
    if sticky is not None and strategy.name not in _HASHING:
        raise ConfigError(
            table.path("sticky"),
            f"applies only to the hashing strategies ({', '.join(_HASHING)}), not {strategy.name}",
        )
    retry, retry_statuses, non_idempotent = table.get(
        "retry", _retry, (RetryPolicy(), frozenset({502, 503, 504}), False)
    )
    return PoolSpec(
        name=name,
        strategy=strategy,
        servers=servers,
        discovery=discovery,
        max_servers=max_servers,
        outlier_detection=table.get(
            "outlier_detection", lambda v, p: _settings_table(v, p, OutlierDetection), None
        ),
        slow_start=slow_start,
        panic_threshold=table.get("panic_threshold", as_percentage, 50.0),
        budget=table.get("retry_budget", _budget, BudgetSpec()),
        retry=retry,
        retry_statuses=retry_statuses,
        failure_statuses=table.get("failure_statuses", _as_statuses, frozenset(range(500, 600))),
        retry_non_idempotent=non_idempotent,
        hedging=table.get("hedging", _hedging, None),
        sticky=sticky,
        health=table.get("health", _health, None),
    )


def _pools(value: object, path: str) -> tuple[PoolSpec, ...]:
    table = Table(value, path)
    pools = tuple(_pool(name, table.raw(name), table.path(name)) for name in table)
    if not pools:
        raise ConfigError(path, "must hold at least one [pools.NAME] table")
    return pools


def _routes(root: Table, pools: tuple[PoolSpec, ...]) -> tuple[Route, ...]:
    names = [pool.name for pool in pools]
    routes = []
    for item, path in items(root, "routes"):
        table = Table(item, path, ("host", "path_prefix", "pool"))
        pool = table.require("pool", as_name)
        if pool not in names:
            raise ConfigError(
                table.path("pool"), f'unknown pool "{pool}" (the pools are: {", ".join(names)})'
            )
        host = table.get("host", as_name, None)
        if host is not None and any(c in host for c in " /\t"):
            raise ConfigError(table.path("host"), f'must be a host name, got "{host}"')
        prefix = table.get("path_prefix", as_text, "/")
        if not prefix.startswith("/"):
            raise ConfigError(table.path("path_prefix"), f'must start with "/", got "{prefix}"')
        routes.append(
            Route(pool=pool, host=None if host is None else host.lower(), path_prefix=prefix)
        )
    if "routes" in root and not routes:
        raise ConfigError("routes", "must list at least one route")
    if not routes:
        if len(pools) > 1:
            raise ConfigError(
                "routes", "missing: with several pools, [[routes]] must say which gets what"
            )
        routes.append(Route(pool=pools[0].name))
    return tuple(routes)


# -- the whole file ------------------------------------------------------------------------------

_ROOT_KEYS = (
    "admin",
    "forwarding",
    "limits",
    "listen",
    "log",
    "pools",
    "routes",
    "timeouts",
    "workers",
)


def _listen(value: object, path: str) -> tuple[tuple[str, int], ...]:
    if isinstance(value, str):
        return (_as_address(value, path),)
    addresses = tuple(_as_address(v, f"{path}[{i}]") for i, v in enumerate(as_array(value, path)))
    if not addresses:
        raise ConfigError(path, "must list at least one address")
    if len(set(addresses)) < len(addresses):
        raise ConfigError(path, "lists an address twice")
    return addresses


def _limits(value: object, path: str) -> Limits:
    checks = {f.name: as_positive_int for f in dataclasses.fields(Limits)}
    return _dataclass_table(value, path, Limits, checks)


def _timeouts(value: object, path: str) -> Timeouts:
    checks = {f.name: as_positive for f in dataclasses.fields(Timeouts)}
    return _dataclass_table(value, path, Timeouts, checks)


def _forwarding(value: object, path: str) -> Forwarding:
    checks: dict[str, Callable[[object, str], object]] = {
        "trusted_hops": _as_non_negative_int,
        "style": one_of("x-forwarded", "forwarded"),
        "via": as_boolean,
        "via_name": _as_token,
    }
    return _dataclass_table(value, path, Forwarding, checks)


def _as_token(value: object, path: str) -> str:
    text = as_name(value, path)
    if not all(c.isalnum() or c in "!#$%&'*+-.^_`|~" for c in text):
        raise ConfigError(path, f'must be a token (letters, digits, "-", "."...), got "{text}"')
    return text


def _admin(value: object, path: str) -> tuple[str, int] | None:
    table = Table(value, path, ("enabled", "listen"))
    if not table.get("enabled", as_boolean, True):
        return None
    return table.require("listen", _as_address, ': the address, such as "127.0.0.1:9901"')


def _log_table(value: object, path: str) -> tuple[AccessLog, str]:
    table = Table(value, path, ("access", "level"))
    access = table.get("access", as_name, "stdout")
    level = table.get("level", one_of("debug", "info", "warning", "error"), "info")
    return AccessLog(access), level


def parse_config(document: Mapping[str, object], *, source: Path | None = None) -> ServeConfig:
    """Check a parsed TOML document and build its ``ServeConfig``; raise ``ConfigError``."""
    try:
        return _parse_root(document, source)
    except ConfigError as error:
        explain_misplaced_key(error, _ROOT_KEYS, "[table]")


def _parse_root(document: Mapping[str, object], source: Path | None) -> ServeConfig:
    root = Table(dict(document), "", _ROOT_KEYS)
    pools = root.require("pools", _pools, ": add a [pools.NAME] table with servers")
    access_log, level = root.get("log", _log_table, (AccessLog(), "info"))
    return ServeConfig(
        listen=root.get("listen", _listen, (DEFAULT_LISTEN,)),
        pools=pools,
        routes=_routes(root, pools),
        limits=root.get("limits", _limits, Limits()),
        timeouts=root.get("timeouts", _timeouts, Timeouts()),
        forwarding=root.get("forwarding", _forwarding, Forwarding()),
        admin=root.get("admin", _admin, None),
        access_log=access_log,
        log_level=level,
        workers=root.get("workers", as_positive_int, 1),
        source=source,
    )


def load_config(path: str | Path) -> ServeConfig:
    """Read and check the configuration file at ``path``; raise ``ConfigError`` or ``OSError``."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # the `serve` extra installs tomli on these versions
        import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError("", f"not UTF-8 text: {error}") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError("", f"not valid TOML: {error}") from None
    return parse_config(document, source=file)


def config_from_flags(
    *,
    listen: Sequence[str] = (),
    backends: Sequence[str] = (),
    strategy: str | None = None,
    admin: str | None = None,
    workers: int | None = None,
    access_log: str | None = None,
    config: ServeConfig | None = None,
) -> ServeConfig:
    """The configuration the flags describe, over ``config`` (the file's) if given.

    Without a file, ``--backend`` (at least one) makes the one pool ``default``, balanced with
    ``--strategy`` (round robin by default). With one, ``--listen``, ``--admin``,
    ``--workers`` and ``--access-log`` override it, and pools come from the file only.
    Raise ``ConfigError`` whose path is the flag.
    """
    if config is None:
        if not backends:
            raise ConfigError("--backend", "missing: give at least one, or --config FILE")
        spec = (
            StrategySpec("round_robin") if strategy is None else _strategy(strategy, "--strategy")
        )
        servers: dict[str, float] = {}
        for backend in backends:
            server = _as_server(backend, "--backend")
            if server in servers:
                raise ConfigError("--backend", f'"{server}" given twice')
            servers[server] = 1.0
        pool = PoolSpec("default", spec, tuple(servers.items()))
        config = ServeConfig(listen=(DEFAULT_LISTEN,), pools=(pool,), routes=(Route("default"),))
    else:
        for flag, given in (("--backend", bool(backends)), ("--strategy", strategy is not None)):
            if given:
                raise ConfigError(flag, "not with --config: the file's pools say it")
    changes: dict[str, Any] = {}
    if listen:
        addresses = tuple(parse_address(a, "--listen", default_host="0.0.0.0") for a in listen)
        changes["listen"] = addresses
    if admin is not None:
        changes["admin"] = parse_address(admin, "--admin", default_host="127.0.0.1")
    if workers is not None:
        if workers < 1:
            raise ConfigError("--workers", f"must be at least 1, got {workers}")
        changes["workers"] = workers
    if access_log is not None:
        changes["access_log"] = AccessLog(as_name(access_log, "--access-log"))
    return config.replace(**changes)


# -- running pools: balancers, health checkers, discovery runners ---------------------------------


@final
class _LivePool:
    """A pool's balancer and what feeds it: its spec, health checker and discovery runner."""

    __slots__ = ("checker", "discovery", "lb", "spec")

    def __init__(self, spec: PoolSpec, lb: LoadBalancer) -> None:
        self.spec = spec
        self.lb = lb
        self.checker: Any = None  # an AsyncHealthChecker while running
        self.discovery: Any = None  # an AsyncDiscovery while running


def _health_checker(spec: HealthSpec, lb: LoadBalancer) -> Any:
    from ..checks import AsyncHealthChecker, AsyncHttpProbe, AsyncTcpProbe

    probe: Any
    if spec.type == "tcp":
        probe = AsyncTcpProbe(timeout=spec.timeout)
    else:
        probe = AsyncHttpProbe(path=spec.path, expect=frozenset(spec.expect), timeout=spec.timeout)
    return AsyncHealthChecker(
        lb,
        probe,
        interval=spec.interval,
        timeout=spec.timeout,
        rise=spec.rise,
        fall=spec.fall,
        jitter=spec.jitter,
        initially_healthy=spec.initially_healthy,
    )


@final
class Upstreams:
    """The live pools of a running proxy, built from a ``ServeConfig`` and rebuilt on reload.

    ``await apply(config)`` makes the pools those of ``config`` and returns the
    ``ProxySettings`` to run on. A pool that stays with the same balancer settings (strategy
    and its options, ``max_servers``, outlier detection, slow start, panic threshold, retry
    budget) keeps its ``LoadBalancer``: ``lb.replace(servers)``, so servers that stay keep
    their state (in flight, latency, ejections, health). Otherwise the pool gets a new one.
    Health checkers and discovery runners start with their pools, restart when their settings
    change, and stop when their pools go. ``on_pools`` is told of every change (for the
    admin's collector): ``(added, removed)`` as name-to-balancer mappings. Use from one loop.
    """

    __slots__ = ("_on_access", "_on_pools", "_pools")

    def __init__(
        self,
        *,
        on_access: Callable[[AccessRecord], object] | None = None,
        on_pools: Callable[[Mapping[str, LoadBalancer], Mapping[str, LoadBalancer]], object]
        | None = None,
    ) -> None:
        self._pools: dict[str, _LivePool] = {}
        self._on_access = on_access
        self._on_pools = on_pools

    @property
    def balancers(self) -> dict[str, LoadBalancer]:
        """Each pool's balancer by pool name."""
        return {name: live.lb for name, live in self._pools.items()}

    def health_status(self, pool: str) -> dict[str, Any]:
        """The active checker's status of each server of ``pool`` (empty without checks)."""
        live = self._pools.get(pool)
        if live is None or live.checker is None:
            return {}
        status: dict[str, Any] = live.checker.status()
        return status

    def specs(self) -> dict[str, PoolSpec]:
        """Each live pool's spec by name."""
        return {name: live.spec for name, live in self._pools.items()}

    async def apply(self, config: ServeConfig) -> ProxySettings:
        """Make the live pools those of ``config``; return the settings to run on.

        A new balancer is given its servers before anything else changes, so a membership it
        refuses leaves the pools as they were. Feeders that go or change are stopped before a
        kept balancer is given its new static membership, so no late discovery update lands
        over it.
        """
        old = self._pools
        new: dict[str, _LivePool] = {}
        for spec in config.pools:
            previous = old.get(spec.name)
            if previous is not None and previous.spec.balancer_key() == spec.balancer_key():
                live = _LivePool(spec, previous.lb)
                live.checker, live.discovery = previous.checker, previous.discovery
            else:
                live = _LivePool(spec, spec.build_balancer())
            new[spec.name] = live
        kept = {name for name, live in new.items() if name in old and old[name].lb is live.lb}
        for name, live in new.items():
            if name not in kept:
                _replace(live)
        # Feeders: keep the ones whose settings and balancer are unchanged; stop the others.
        stopping: list[Any] = []
        for name, previous in old.items():
            staying = new[name] if name in kept else None  # None: a new balancer, or none
            if previous.checker is not None and (
                staying is None or staying.spec.health != previous.spec.health
            ):
                stopping.append(previous.checker.aclose())
                if staying is not None:
                    staying.checker = None
            if previous.discovery is not None and (
                staying is None or staying.spec.discovery != previous.spec.discovery
            ):
                stopping.append(previous.discovery.stop())
                if staying is not None:
                    staying.discovery = None
        if stopping:
            await asyncio.gather(*stopping)
        for name in kept:
            _replace(new[name])
        for name, live in new.items():
            if live.spec.health is not None and live.checker is None:
                live.checker = _health_checker(live.spec.health, live.lb)
                await live.checker.start()
            if live.spec.discovery is not None and live.discovery is None:
                live.discovery = _start_discovery(live.spec.discovery, live.lb, name)
        self._pools = new
        if self._on_pools is not None:
            added = {n: p.lb for n, p in new.items() if n not in old or old[n].lb is not p.lb}
            removed = {n: p.lb for n, p in old.items() if n not in new or new[n].lb is not p.lb}
            self._on_pools(added, removed)
        return self.settings(config)

    def settings(self, config: ServeConfig) -> ProxySettings:
        """The ``ProxySettings`` of ``config`` over the live pools (call ``apply`` first)."""
        pools = {}
        for spec in config.pools:
            pools[spec.name] = Pool(
                name=spec.name,
                lb=self._pools[spec.name].lb,
                retry=spec.retry,
                retry_statuses=spec.retry_statuses,
                failure_statuses=spec.failure_statuses,
                retry_non_idempotent=spec.retry_non_idempotent,
                hedging=spec.hedging,
                sticky=spec.sticky,
            )
        return ProxySettings(
            pools=pools,
            routes=config.routes,
            limits=config.limits,
            timeouts=config.timeouts,
            forwarding=config.forwarding,
            on_access=self._on_access,
        )

    async def wait_ready(self, timeout: float) -> bool:
        """Wait until every discovery runner has its first membership; False on timeout."""
        waits = [
            live.discovery.wait_ready(timeout) for live in self._pools.values() if live.discovery
        ]
        return all(await asyncio.gather(*waits)) if waits else True

    async def close(self) -> None:
        """Stop every health checker and discovery runner."""
        stopping = []
        for live in self._pools.values():
            if live.checker is not None:
                stopping.append(live.checker.aclose())
            if live.discovery is not None:
                stopping.append(live.discovery.stop())
        await asyncio.gather(*stopping)


def _replace(live: _LivePool) -> None:
    """Give a pool with a static membership its servers (a discovered one is left alone)."""
    if live.spec.discovery is not None:
        return
    try:
        live.lb.replace(dict(live.spec.servers))
    except (TypeError, ValueError) as error:
        raise ConfigError(f"pools.{live.spec.name}.servers", str(error)) from None


def _start_discovery(url: str, lb: LoadBalancer, pool: str) -> Any:
    from ..discovery import AsyncDiscovery, source_from_url

    runner = AsyncDiscovery(lb, source_from_url(url))
    runner.start()
    _log.info("pool %s: following %s", pool, url)
    return runner
