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
from . import limits
from .fields import (
    ScenarioError,
    Table,
    as_boolean,
    as_name,
    explain_misplaced_key,
    items,
    join,
    kind,
    library_error,
)
from .registry import DEFAULT_STRATEGIES, build_strategy, known_names, resolve, strategy_options
from .schema import ARRIVALS, BEHAVIOUR_KEYS, CHANGE, DEFAULTS, KEYS, LATENCY, ROOT, SERVER, Section
from .trace import Trace, scan_trace

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
    "Trace",
    "default_scenario",
    "load_scenario",
    "parse_scenario",
]

DEFAULT_SEED = 1
"""The seed used when neither the command line nor the scenario gives one."""

Distribution = Literal["lognormal", "exponential", "constant"]
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
    """Requests arrive as a Poisson process at ``rate`` per second, or as recorded in ``trace``.

    With a trace, ``rate`` is its mean rate over the run.
    """

    rate: float
    trace: Trace | None = None


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
    warnings: tuple[str, ...] = ()
    """What in the file has no effect on the run, one line each, such as a change after its end."""

    def replace(self, **changes: Any) -> Scenario:
        """A copy with ``changes`` applied (``duration``, ``strategies``, ...)."""
        return dataclasses.replace(self, **changes)


# -- servers ----------------------------------------------------------------------------------


def _latency_fields(value: object, path: str) -> dict[str, Any]:
    """The fields a latency table sets, each checked; the rest are inherited."""
    table = Table(value, path, LATENCY.keys())
    fields: dict[str, Any] = {name: LATENCY.read(table, name) for name in table}
    if "sigma" in table and fields.get("distribution", "lognormal") != "lognormal":
        raise ScenarioError(table.path("sigma"), 'applies only to distribution = "lognormal"')
    return fields


def _behaviour_fields(table: Table, section: Section) -> dict[str, Any]:
    """The behaviour fields ``table`` (one of ``section``) sets, each checked."""
    fields: dict[str, Any] = {}
    for name in BEHAVIOUR_KEYS:
        if name == "latency" and name in table:
            fields[name] = _latency_fields(table.raw(name), table.path(name))
        elif name in table:
            fields[name] = section.read(table, name)
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
    latency = Latency(**latency)
    limits.check_draws(latency.distribution, latency.mean, latency.sigma, join(path, "latency"))
    return Behaviour(
        latency,
        fields["capacity"],
        fields.get("failure_rate", 0.0),
        fields.get("failure_latency"),
    )


def _changes(
    server: Table, start: dict[str, Any], name: str, end: float, warnings: list[str]
) -> tuple[Change, ...]:
    """The server's changes, sorted by time, each resolved to a complete behaviour.

    A change at or after ``end`` (the run's) is kept but never applies: ``warnings`` says so.
    """
    parsed = []
    for item, item_path in items(server, "changes"):
        table = Table(item, item_path, CHANGE.keys())
        at = CHANGE.require(table, "at")
        fields = _behaviour_fields(table, CHANGE)
        if not fields:
            raise ScenarioError(item_path, "changes nothing: set latency, capacity or failure_rate")
        if at >= end:
            warnings.append(
                f"{table.path('at')}: server {name}'s change at {at:g} s is not before the end "
                f"of the run ({end:g} s), so it never applies"
            )
        parsed.append((at, fields, item_path))
    changes = []
    current = start
    for at, fields, item_path in sorted(parsed, key=lambda change: change[0]):
        current = _merge(current, fields)
        changes.append(Change(at, _behaviour(current, item_path)))
    return tuple(changes)


def _servers(root: Table, end: float, warnings: list[str]) -> tuple[ServerSpec, ...]:
    defaults: dict[str, Any] = {}
    if "defaults" in root:
        table = Table(root.raw("defaults"), "defaults", DEFAULTS.keys())
        defaults = _behaviour_fields(table, DEFAULTS)
        default_weight = DEFAULTS.read(table, "weight")
    else:
        default_weight = DEFAULTS["weight"].default
    if "servers" not in root:
        raise ScenarioError("servers", "missing: list at least one [[servers]] table")
    servers: list[ServerSpec] = []
    seen: set[str] = set()
    for item, path in items(root, "servers"):
        table = Table(item, path, SERVER.keys())
        name = table.require("name", as_name)
        if name in seen:
            raise ScenarioError(join(path, "name"), f'duplicate server name "{name}"')
        seen.add(name)
        weight = SERVER.read(table, "weight", default_weight)
        fields = _merge(defaults, _behaviour_fields(table, SERVER))
        behaviour = _behaviour(fields, path)
        changes = _changes(table, fields, name, end, warnings)
        servers.append(ServerSpec(name, weight, behaviour, changes))
    if not servers:
        raise ScenarioError("servers", "must list at least one server")
    return tuple(servers)


# -- health and strategies -------------------------------------------------------------------

_Settings = TypeVar("_Settings", OutlierDetection, SlowStart)


def _library_settings(value: object, path: str, cls: type[_Settings]) -> _Settings | None:
    """One of the library's settings dataclasses, built from a table; None if disabled.

    The library checks the values itself; its messages begin with the argument's name, which
    becomes part of the path here. When that argument is one the file left out (its default
    is at odds with a value written, as max_ejection_time's 300 with base_ejection_time 1000),
    the path names what was written, and the message says the other's default.
    """
    defaults: dict[str, object] = {f.name: f.default for f in dataclasses.fields(cls)}
    names: tuple[str, ...] = tuple(defaults)
    table = Table(value, path, ("enabled", *names))
    enabled = table.get("enabled", as_boolean, True)
    options: dict[str, Any] = {name: table.raw(name) for name in names if name in table}
    if not enabled:
        return None
    try:
        return cls(**options)
    except (TypeError, ValueError) as error:
        fault = library_error(error, path, names)
        unset = fault.path.rpartition(".")[2]
        if fault.path == path or unset in options:
            raise fault from None
        default = defaults[unset]
        shown = f"{default:g}" if isinstance(default, float) else repr(default)
        written = ", ".join(f"{name} = {option!r}" for name, option in options.items())
        raise ScenarioError(
            join(path, next(iter(options))) if len(options) == 1 else path,
            f"with {written}, {unset} (not set: it defaults to {shown}) {fault.message}; "
            f"set {unset} too",
        ) from None


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
    limits.check_cycle(options, path)
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

_ROOT_KEYS = ROOT.keys()


def _arrivals(
    value: object, path: str, duration: float | None, base: Path
) -> tuple[Arrivals, float | None]:
    """The arrivals, and the run's duration: ``duration``, else a trace's span."""
    table = Table(value, path, ARRIVALS.keys())
    if "trace" not in table:
        return Arrivals(ARRIVALS.require(table, "rate", " (or a trace)")), duration
    if "rate" in table:
        raise ScenarioError(table.path("rate"), "set a rate or a trace, not both")
    written: str = ARRIVALS.read(table, "trace")
    trace = scan_trace(base / written, written, duration)
    if duration is None:
        if trace.span <= 0:
            raise ScenarioError(
                table.path("trace"), f"{written} spans no time (one arrival time): set duration"
            )
        duration = trace.span
    return Arrivals(trace.requests / duration, trace), duration


def _keys(value: object, path: str) -> Keys:
    table = Table(value, path, KEYS.keys())
    population = KEYS.require(table, "population")
    limits.check_keys(population, table.path("population"))
    distribution = KEYS.read(table, "distribution")
    exponent = KEYS.read(table, "exponent")
    if "exponent" in table and distribution != "zipf":
        raise ScenarioError(table.path("exponent"), 'applies only to distribution = "zipf"')
    if distribution == "zipf":
        limits.check_zipf(population, exponent, table.path("exponent"))
    return Keys(population, "zipf" if distribution == "zipf" else "uniform", exponent)


def parse_scenario(
    document: Mapping[str, object],
    *,
    name: str = "scenario",
    duration: float | None = None,
    base: str | Path = ".",
) -> Scenario:
    """Check a parsed TOML document and build its ``Scenario``; raise ``ScenarioError``.

    ``duration`` (``--duration``) overrides the file's, or supplies it; a trace's path is
    relative to ``base``, the scenario file's folder.
    """
    try:
        return _parse_root(document, name, duration, Path(base))
    except ScenarioError as error:
        explain_misplaced_key(error, _ROOT_KEYS, "[table] or [[servers]]")


def _parse_root(
    document: Mapping[str, object], name: str, override: float | None, base: Path
) -> Scenario:
    root = Table(dict(document), "", _ROOT_KEYS)
    if "arrivals" not in root:
        raise ScenarioError("arrivals", "missing: add an [arrivals] table with a rate or a trace")
    duration_path = "duration" if override is None else "--duration"
    written = ROOT.read(root, "duration")
    arrivals, duration = _arrivals(
        root.raw("arrivals"), "arrivals", written if override is None else override, base
    )
    if duration is None:
        raise ScenarioError("duration", "missing: set it in the file or pass --duration")
    limits.check_requests(arrivals.rate, duration, duration_path)
    trace = arrivals.trace
    keys = root.get("keys", _keys, None)
    if trace is not None and trace.keys and keys is not None:
        raise ScenarioError("keys", f"{trace.name} has keys: remove [keys], or its key column")
    warnings: list[str] = []
    if trace is not None and (ignored := trace.warning()) is not None:
        warnings.append(ignored)
    servers = _servers(root, duration, warnings)
    if keys is not None:
        limits.check_key_counts(keys.population, len(servers), "keys.population")
    elif trace is not None:
        limits.check_key_counts(trace.keys, len(servers), "arrivals.trace")
    strategies = _strategies(root)
    weights = {s.name: s.weight for s in servers}
    paths = [p for _, p in items(root, "strategies")] or ["strategies"] * len(strategies)
    for spec, path in zip(strategies, paths, strict=True):
        limits.check_pool(spec.name, dict(spec.options), weights, path)
    description = ROOT.read(root, "description")
    return Scenario(
        name=root.get("name", as_name, name),
        description=" ".join(filter(None, (description, _cut_short(servers, duration)))),
        duration=duration,
        arrivals=arrivals,
        servers=servers,
        strategies=strategies,
        keys=keys,
        timeout=ROOT.read(root, "timeout"),
        seed=ROOT.read(root, "seed"),
        outlier_detection=root.get(
            "outlier_detection",
            lambda v, p: _library_settings(v, p, OutlierDetection),
            None,
        ),
        slow_start=root.get("slow_start", lambda v, p: _library_settings(v, p, SlowStart), None),
        panic_threshold=ROOT.read(root, "panic_threshold"),
        warnings=tuple(warnings),
    )


def _cut_short(servers: tuple[ServerSpec, ...], end: float) -> str:
    """A note for the description when the run ends before some changes: then what it says
    about them (the default's "failing from 10 s to 20 s") is not what the run does."""
    late = sorted({c.at for s in servers for c in s.changes if c.at >= end})
    if not late:
        return ""
    times = [f"{at:g} s" for at in late]
    listed = times[0] if len(times) == 1 else f"{', '.join(times[:-1])} and {times[-1]}"
    count = sum(c.at >= end for s in servers for c in s.changes)
    return f"(the run ends at {end:g} s, before the change{'s' * (count > 1)} at {listed})"


def _parse_text(text: str, name: str, duration: float | None, base: Path) -> Scenario:
    # Imported here, so that this module (and `loadbalancer --help`) loads without tomli.
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # the `cli` extra installs tomli on these versions
        import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ScenarioError("", f"not valid TOML: {error}") from None
    return parse_scenario(document, name=name, duration=duration, base=base)


def load_scenario(path: str | Path, *, duration: float | None = None) -> Scenario:
    """Read and check the scenario file at ``path``; raise ``ScenarioError`` or ``OSError``.

    ``duration`` (``--duration``) overrides the file's, or supplies it.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ScenarioError("", f"not UTF-8 text: {error}") from None
    return _parse_text(text, file.stem, duration, file.parent)


def default_scenario(*, duration: float | None = None) -> Scenario:
    """The scenario ``loadbalancer simulate`` runs when given no file (for ``duration`` s)."""
    text = resources.files(_PACKAGE).joinpath("default_scenario.toml").read_text("utf-8")
    return _parse_text(text, "default", duration, Path("."))
