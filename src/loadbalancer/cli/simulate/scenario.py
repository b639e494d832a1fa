"""Scenarios: TOML files checked field by field into frozen dataclasses.

Every problem raises ``ScenarioError`` with the path of the field at fault, such as
``servers[3].latency.mean: must be a positive number, got -1``. Servers inherit whatever they
leave out from the ``[defaults]`` table; ``latency`` tables merge key by key, so a server may
change only its mean. Each server's ``changes`` are applied in order of ``at`` and likewise
name only what changes.
"""

from __future__ import annotations

import dataclasses
import random
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar, final

from ... import OutlierDetection, SlowStart
from .fields import (
    ScenarioError,
    Table,
    as_boolean,
    as_integer,
    as_name,
    as_non_negative,
    as_percentage,
    as_positive,
    as_positive_int,
    as_probability,
    as_text,
    explain_misplaced_key,
    items,
    join,
    kind,
    library_error,
    one_of,
)
from .registry import DEFAULT_STRATEGIES, build_strategy, known_names, resolve, strategy_options

__all__ = [
    "DEFAULT_SEED",
    "Arrivals",
    "Behaviour",
    "Change",
    "Keys",
    "Latency",
    "Scenario",
    "ScenarioError",
    "ServerSpec",
    "StrategySpec",
    "default_scenario",
    "load_scenario",
    "parse_scenario",
]

DEFAULT_SEED = 1
"""The seed used when neither the command line nor the scenario gives one."""

Distribution = Literal["lognormal", "exponential", "constant"]
_DISTRIBUTIONS: tuple[Distribution, ...] = ("lognormal", "exponential", "constant")
_KEY_DISTRIBUTIONS = ("uniform", "zipf")
_PACKAGE = __name__.rpartition(".")[0]


@final
@dataclass(frozen=True, slots=True)
class Latency:
    """How long a server takes to serve one request once it starts on it, in seconds.

    ``lognormal`` (the default) is the usual model of service times: skewed right with a long
    tail; ``sigma`` is the standard deviation of the log, so p99 is about ``exp(2.33 * sigma)``
    times the median (3.2x at the default 0.5). ``mean`` is the mean for every distribution,
    so a server's throughput is ``capacity / mean`` whichever is chosen. ``exponential`` is
    memoryless (sigma unused); ``constant`` always takes ``mean``.
    """

    mean: float
    distribution: Distribution = "lognormal"
    sigma: float = 0.5


@final
@dataclass(frozen=True, slots=True)
class Behaviour:
    """What a server does at some moment: its latency, capacity and failure rate.

    ``capacity`` requests are served at once; more wait in a FIFO queue at the server, so
    their latency includes the wait. Each served request fails with ``failure_rate``; a
    failure takes ``failure_latency`` seconds when set (a refused connection, an instant
    error page), else as long as a success would.
    """

    latency: Latency
    capacity: int
    failure_rate: float = 0.0
    failure_latency: float | None = None


@final
@dataclass(frozen=True, slots=True)
class Change:
    """From time ``at`` (seconds into the run) on, the server behaves as ``behaviour``."""

    at: float
    behaviour: Behaviour


@final
@dataclass(frozen=True, slots=True)
class ServerSpec:
    """A simulated server: its name and weight in the balancer, and how it behaves over time."""

    name: str
    weight: float
    behaviour: Behaviour
    changes: tuple[Change, ...] = ()


@final
@dataclass(frozen=True, slots=True)
class Arrivals:
    """Requests arrive as a Poisson process at ``rate`` per second."""

    rate: float


@final
@dataclass(frozen=True, slots=True)
class Keys:
    """Each request carries one of ``population`` keys (user ids), passed to ``acquire(key)``.

    ``uniform`` draws every key equally often; ``zipf`` draws the k-th most popular key with
    probability proportional to ``1 / k ** exponent``, the skew of real user populations.
    """

    population: int
    distribution: Literal["uniform", "zipf"] = "uniform"
    exponent: float = 1.0


@final
@dataclass(frozen=True, slots=True)
class StrategySpec:
    """A strategy to compare: its registry ``name``, keyword ``options`` and display ``label``."""

    name: str
    label: str
    options: tuple[tuple[str, Any], ...] = ()


@final
@dataclass(frozen=True, slots=True)
class Scenario:
    """A cluster, its workload, the balancer's health settings, and the strategies to compare."""

    name: str
    description: str
    duration: float
    arrivals: Arrivals
    servers: tuple[ServerSpec, ...]
    strategies: tuple[StrategySpec, ...]
    keys: Keys | None = None
    timeout: float | None = None
    seed: int | None = None
    outlier_detection: OutlierDetection | None = None
    slow_start: SlowStart | None = None
    panic_threshold: float = 50.0

    def replace(self, **changes: Any) -> Scenario:
        """A copy with ``changes`` applied (``duration``, ``strategies``, ...)."""
        return dataclasses.replace(self, **changes)


# -- servers ----------------------------------------------------------------------------------

_LATENCY_KEYS = ("distribution", "mean", "sigma")
_BEHAVIOUR_KEYS = ("capacity", "failure_latency", "failure_rate", "latency")
_SERVER_KEYS = ("changes", "name", "weight", *_BEHAVIOUR_KEYS)


def _latency_fields(value: object, path: str) -> dict[str, Any]:
    """The fields a latency table sets, each checked; the rest are inherited."""
    table = Table(value, path, _LATENCY_KEYS)
    fields: dict[str, Any] = {}
    if "distribution" in table:
        fields["distribution"] = one_of(*_DISTRIBUTIONS)(
            table.raw("distribution"), table.path("distribution")
        )
    if "mean" in table:
        fields["mean"] = as_positive(table.raw("mean"), table.path("mean"))
    if "sigma" in table:
        fields["sigma"] = as_positive(table.raw("sigma"), table.path("sigma"))
        if fields.get("distribution", "lognormal") != "lognormal":
            raise ScenarioError(table.path("sigma"), 'applies only to distribution = "lognormal"')
    return fields


def _behaviour_fields(table: Table) -> dict[str, Any]:
    """The behaviour fields ``table`` sets, each checked."""
    fields: dict[str, Any] = {}
    if "latency" in table:
        fields["latency"] = _latency_fields(table.raw("latency"), table.path("latency"))
    if "capacity" in table:
        fields["capacity"] = as_positive_int(table.raw("capacity"), table.path("capacity"))
    if "failure_rate" in table:
        fields["failure_rate"] = as_probability(
            table.raw("failure_rate"), table.path("failure_rate")
        )
    if "failure_latency" in table:
        fields["failure_latency"] = as_positive(
            table.raw("failure_latency"), table.path("failure_latency")
        )
    return fields


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` over ``base``; latency tables merge key by key."""
    merged = {**base, **override}
    if "latency" in base and "latency" in override:
        merged["latency"] = {**base["latency"], **override["latency"]}
    return merged


def _behaviour(fields: Mapping[str, Any], path: str) -> Behaviour:
    """A complete behaviour from merged fields; anything still missing is named under ``path``."""
    hint = " (set it here or in [defaults])"
    if "latency" not in fields:
        raise ScenarioError(join(path, "latency"), f"missing{hint}")
    latency = fields["latency"]
    if "mean" not in latency:
        raise ScenarioError(join(path, "latency.mean"), f"missing{hint}")
    if "capacity" not in fields:
        raise ScenarioError(join(path, "capacity"), f"missing{hint}")
    return Behaviour(
        Latency(**latency),
        fields["capacity"],
        fields.get("failure_rate", 0.0),
        fields.get("failure_latency"),
    )


def _changes(server: Table, start: dict[str, Any], path: str) -> tuple[Change, ...]:
    """The server's changes, sorted by time, each resolved to a complete behaviour."""
    parsed = []
    for item, item_path in items(server, "changes"):
        table = Table(item, item_path, ("at", *_BEHAVIOUR_KEYS))
        at = table.require("at", as_non_negative)
        fields = _behaviour_fields(table)
        if not fields:
            raise ScenarioError(item_path, "changes nothing: set latency, capacity or failure_rate")
        parsed.append((at, fields))
    changes = []
    current = start
    for at, fields in sorted(parsed, key=lambda change: change[0]):
        current = _merge(current, fields)
        changes.append(Change(at, _behaviour(current, path)))
    return tuple(changes)


def _servers(root: Table) -> tuple[ServerSpec, ...]:
    defaults: dict[str, Any] = {}
    if "defaults" in root:
        table = Table(root.raw("defaults"), "defaults", ("weight", *_BEHAVIOUR_KEYS))
        defaults = _behaviour_fields(table)
        default_weight = table.get("weight", as_positive, 1.0)
    else:
        default_weight = 1.0
    if "servers" not in root:
        raise ScenarioError("servers", "missing: list at least one [[servers]] table")
    servers: list[ServerSpec] = []
    seen: set[str] = set()
    for item, path in items(root, "servers"):
        table = Table(item, path, _SERVER_KEYS)
        name = table.require("name", as_name)
        if name in seen:
            raise ScenarioError(join(path, "name"), f'duplicate server name "{name}"')
        seen.add(name)
        weight = table.get("weight", as_positive, default_weight)
        fields = _merge(defaults, _behaviour_fields(table))
        behaviour = _behaviour(fields, path)
        changes = _changes(table, fields, path)
        servers.append(ServerSpec(name, weight, behaviour, changes))
    if not servers:
        raise ScenarioError("servers", "must list at least one server")
    return tuple(servers)


# -- health and strategies -------------------------------------------------------------------

_Settings = TypeVar("_Settings", OutlierDetection, SlowStart)


def _library_settings(value: object, path: str, cls: type[_Settings]) -> _Settings | None:
    """One of the library's settings dataclasses, built from a table; None if disabled.

    The library checks the values itself; its messages begin with the argument's name, which
    becomes part of the path here.
    """
    names: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(cls))
    table = Table(value, path, ("enabled", *names))
    enabled = table.get("enabled", as_boolean, True)
    options: dict[str, Any] = {name: table.raw(name) for name in names if name in table}
    if not enabled:
        return None
    try:
        return cls(**options)
    except (TypeError, ValueError) as error:
        raise library_error(error, path, names) from None


def _strategy(item: object, path: str) -> StrategySpec:
    """A strategy entry: a name, or a table with ``name``, optional ``label`` and options.

    An alias stands for its canonical name, which is also the default label: ``"p2c"`` is
    reported as ``power_of_two_choices``, as if it had been written so.
    """
    if isinstance(item, str):
        written, label, options = item, None, {}
        name_path = path
    elif isinstance(item, dict):
        table = Table(item, path)
        written = table.require("name", as_name)
        name_path = table.path("name")
        label = table.get("label", as_name, None)
        options = {k: table.raw(k) for k in table if k not in ("label", "name")}
    else:
        raise ScenarioError(path, f"must be a strategy name or a table, not {kind(item)}")
    name = resolve(written)
    if name is None:
        raise ScenarioError(
            name_path, f'unknown strategy "{written}" (choose from: {known_names()})'
        )
    if label is None:
        label = name
    accepted = strategy_options(name)
    for key in options:
        if key not in accepted:
            choices = ", ".join(accepted) or "none"
            raise ScenarioError(
                join(path, key), f"unknown option for {name} (expected one of: {choices})"
            )
    try:  # build one now, so a bad option fails here rather than mid-run
        build_strategy(name, options, random.Random(0))
    except (TypeError, ValueError) as error:
        raise library_error(error, path, accepted) from None
    return StrategySpec(name, label, tuple(sorted(options.items())))


def _strategies(root: Table) -> tuple[StrategySpec, ...]:
    if "strategies" not in root:
        return tuple(StrategySpec(name, name) for name in DEFAULT_STRATEGIES)
    specs = []
    labels: set[str] = set()
    for item, path in items(root, "strategies"):
        spec = _strategy(item, path)
        if spec.label in labels:
            where = path if isinstance(item, str) else join(path, "label")
            raise ScenarioError(where, f'duplicate strategy label "{spec.label}"')
        labels.add(spec.label)
        specs.append(spec)
    if not specs:
        raise ScenarioError("strategies", "must list at least one strategy")
    return tuple(specs)


# -- the whole file ----------------------------------------------------------------------------

_ROOT_KEYS = (
    "arrivals",
    "defaults",
    "description",
    "duration",
    "keys",
    "name",
    "outlier_detection",
    "panic_threshold",
    "seed",
    "servers",
    "slow_start",
    "strategies",
    "timeout",
)


def _arrivals(value: object, path: str) -> Arrivals:
    table = Table(value, path, ("rate",))
    return Arrivals(table.require("rate", as_positive))


def _keys(value: object, path: str) -> Keys:
    table = Table(value, path, ("distribution", "exponent", "population"))
    population = table.require("population", as_positive_int)
    distribution = table.get("distribution", one_of(*_KEY_DISTRIBUTIONS), "uniform")
    exponent = table.get("exponent", as_positive, 1.0)
    if "exponent" in table and distribution != "zipf":
        raise ScenarioError(table.path("exponent"), 'applies only to distribution = "zipf"')
    return Keys(population, "zipf" if distribution == "zipf" else "uniform", exponent)


def parse_scenario(document: Mapping[str, object], *, name: str = "scenario") -> Scenario:
    """Check a parsed TOML document and build its ``Scenario``; raise ``ScenarioError``."""
    try:
        return _parse_root(document, name)
    except ScenarioError as error:
        explain_misplaced_key(error, _ROOT_KEYS, "[table] or [[servers]]")


def _parse_root(document: Mapping[str, object], name: str) -> Scenario:
    root = Table(dict(document), "", _ROOT_KEYS)
    if "arrivals" not in root:
        raise ScenarioError("arrivals", "missing: add an [arrivals] table with a rate")
    return Scenario(
        name=root.get("name", as_name, name),
        description=root.get("description", as_text, ""),
        duration=root.require("duration", as_positive),
        arrivals=_arrivals(root.raw("arrivals"), "arrivals"),
        servers=_servers(root),
        strategies=_strategies(root),
        keys=root.get("keys", _keys, None),
        timeout=root.get("timeout", as_positive, None),
        seed=root.get("seed", as_integer, None),
        outlier_detection=root.get(
            "outlier_detection",
            lambda v, p: _library_settings(v, p, OutlierDetection),
            None,
        ),
        slow_start=root.get("slow_start", lambda v, p: _library_settings(v, p, SlowStart), None),
        panic_threshold=root.get("panic_threshold", as_percentage, 50.0),
    )


def _parse_text(text: str, name: str) -> Scenario:
    # Imported here, so that this module (and `loadbalancer --help`) loads without tomli.
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # the `cli` extra installs tomli on these versions
        import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ScenarioError("", f"not valid TOML: {error}") from None
    return parse_scenario(document, name=name)


def load_scenario(path: str | Path) -> Scenario:
    """Read and check the scenario file at ``path``; raise ``ScenarioError`` or ``OSError``."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ScenarioError("", f"not UTF-8 text: {error}") from None
    return _parse_text(text, file.stem)


def default_scenario() -> Scenario:
    """The scenario ``loadbalancer simulate`` runs when given no file."""
    text = resources.files(_PACKAGE).joinpath("default_scenario.toml").read_text("utf-8")
    return _parse_text(text, "default")
