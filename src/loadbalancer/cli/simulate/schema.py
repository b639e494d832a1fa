"""The scenario file's tables and keys, described once.

The parser takes each table's keys, checks and defaults from here, and the reference
(docs/scenario-reference.md) is generated from here, so the two cannot drift apart. What a
key means when it is absent beyond a plain value (inherited from ``[defaults]``, supplied by
``--duration``) is said in ``shown``, for people; the parser implements it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, final

from .fields import (
    OneOf,
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
)
from .limits import MAX_KEYS, MAX_SECONDS, MAX_WEIGHT, as_seconds, as_weight
from .trace import FORMATS

__all__ = [
    "ARRIVALS",
    "BEHAVIOUR_KEYS",
    "CHANGE",
    "DEFAULTS",
    "KEYS",
    "LATENCY",
    "ROOT",
    "SECTIONS",
    "SERVER",
    "Field",
    "Section",
    "kind_of",
    "toml_value",
]

Check = Callable[[object, str], Any]

_FIELDS = object()  # Section.read's default: the field's own

_KINDS: dict[Check, str] = {
    as_positive: "number > 0",
    as_non_negative: "number >= 0",
    as_probability: "number from 0 to 1",
    as_percentage: "number from 0 to 100",
    as_positive_int: "integer >= 1",
    as_integer: "integer",
    as_text: "string",
    as_name: "non-empty string",
    as_boolean: "boolean",
    as_seconds: f"number > 0, at most {MAX_SECONDS:g}",
    as_weight: f"number > 0, at most {MAX_WEIGHT:g}",
}


def kind_of(check: Check) -> str:
    """What ``check`` accepts, in words."""
    if isinstance(check, OneOf):
        return f"one of {check.quoted()}"
    return _KINDS[check]


@final
@dataclass(frozen=True, slots=True)
class Field:
    """One key of a table: how it is checked, its default, unit and when it is required.

    ``check`` is None for a table or an array, which the parser reads itself; ``kind`` then
    says what it is. ``default`` is what the parser uses when the key is absent; ``shown``,
    when set, is what the reference says instead (a default that is not a plain value).
    """

    name: str
    about: str
    check: Check | None = None
    kind: str = ""
    default: object = None
    shown: str = ""
    unit: str = ""
    required: str = ""

    def type_text(self) -> str:
        """The field's type, in words."""
        if self.check is None:
            return self.kind
        return self.kind or kind_of(self.check)

    def default_text(self) -> str:
        """The field's default, in words: ``shown``, else the default as TOML writes it."""
        if self.shown or self.required:
            return self.shown or "-"
        return toml_value(self.default)


def toml_value(value: object) -> str:
    """``value`` as a scenario file writes it (``true``, ``"zipf"``, ``0.5``); None: none."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return f"{value:g}" if isinstance(value, float) else str(value)


@final
@dataclass(frozen=True, slots=True)
class Section:
    """A table of the file (``header``, such as ``[arrivals]``), and the fields it takes."""

    header: str
    about: str
    fields: tuple[Field, ...]

    def keys(self) -> tuple[str, ...]:
        """The keys the table may hold."""
        return tuple(f.name for f in self.fields)

    def __getitem__(self, name: str) -> Field:
        for field in self.fields:
            if field.name == name:
                return field
        raise KeyError(name)

    def __iter__(self) -> Iterator[Field]:
        return iter(self.fields)

    def check(self, name: str) -> Check:
        """The check of key ``name``, a value (not a table or an array)."""
        check = self[name].check
        assert check is not None, f"{name} is read by the parser itself"
        return check

    def read(self, table: Table, name: str, default: object = _FIELDS) -> Any:
        """The checked value of key ``name`` in ``table``; when absent, ``default`` if given,
        else the field's."""
        if default is _FIELDS:
            default = self[name].default
        return table.get(name, self.check(name), default)

    def require(self, table: Table, name: str, hint: str = "") -> Any:
        """The checked value of key ``name`` in ``table``, which must be present."""
        return table.require(name, self.check(name), hint)


_DISTRIBUTIONS = OneOf(("lognormal", "exponential", "constant"))
_KEY_DISTRIBUTIONS = OneOf(("uniform", "zipf"))


def _behaviour(absent: str, required: str = "") -> tuple[Field, ...]:
    """A server's behaviour keys (in ``[defaults]``, ``[[servers]]`` and changes); every server
    must end up with a capacity and a latency, so ``required`` says where they may come from."""
    return (
        Field(
            "capacity",
            "requests served at once; more wait in a FIFO queue at the server",
            as_positive_int,
            shown=absent,
            required=required,
        ),
        Field(
            "latency",
            "the service-time distribution: a table of the keys below; merged key by key "
            "with the one it inherits",
            kind="table",
            shown=absent,
            required=required,
        ),
        Field(
            "failure_rate",
            "the probability each request served fails",
            as_probability,
            default=0.0,
            shown="" if absent == "-" else absent,
        ),
        Field(
            "failure_latency",
            "how long a failure takes (a refused connection, an instant error page)",
            as_seconds,
            shown="as long as a success" if absent == "-" else absent,
            unit="s",
        ),
    )


ROOT = Section(
    "Top level",
    "Keys before the first [table] header.",
    (
        Field("name", "what the report calls the scenario", as_name, shown="the file's name"),
        Field("description", "one line, printed under the name", as_text, default=""),
        Field(
            "duration",
            "simulated time; arrivals stop at its end, requests then in flight finish",
            as_positive,
            unit="s",
            required="unless --duration gives it, or arrivals.trace (then the trace's span)",
        ),
        Field(
            "timeout",
            "clients give up after this long; a timeout counts as a failure",
            as_seconds,
            shown="none: clients wait",
            unit="s",
        ),
        Field("seed", "the random seed", as_integer, shown="--seed, else 1"),
        Field(
            "panic_threshold",
            "below this percentage of healthy servers, picks use all of them",
            as_percentage,
            default=50.0,
            unit="%",
        ),
        Field("arrivals", "when requests arrive", kind="table", required="yes"),
        Field("keys", "the key each request carries", kind="table", shown="none: no keys"),
        Field("defaults", "what every server has unless it says otherwise", kind="table"),
        Field("servers", "the simulated servers", kind="array of tables", required="yes"),
        Field(
            "strategies",
            "the strategies to compare: names, or tables of a name, a label and options",
            kind="array",
            shown="the eight defaults",
        ),
        Field(
            "outlier_detection",
            "the balancer's outlier detection: the library's OutlierDetection",
            kind="table",
            shown="off",
        ),
        Field(
            "slow_start",
            "the balancer's slow start: the library's SlowStart",
            kind="table",
            shown="off",
        ),
    ),
)

ARRIVALS = Section(
    "[arrivals]",
    "A Poisson process at a rate, or a recorded trace (one of the two).",
    (
        Field(
            "rate",
            "mean arrivals per second, Poisson",
            as_positive,
            unit="requests/s",
            required="unless trace",
        ),
        Field(
            "trace",
            f"a recorded trace to replay ({', '.join(FORMATS)}), relative to the scenario file",
            as_name,
            unit="path",
            required="unless rate",
        ),
    ),
)

KEYS = Section(
    "[keys]",
    "Each request carries one of population keys (user-0, user-1, ...), passed to "
    "acquire(key). Not with a trace that has a key column.",
    (
        Field(
            "population",
            f"how many distinct keys (at most {MAX_KEYS:,})",
            as_positive_int,
            required="yes",
        ),
        Field("distribution", "how often each key is drawn", _KEY_DISTRIBUTIONS, default="uniform"),
        Field(
            "exponent",
            "zipf only: the k-th key is drawn in proportion to 1 / k ** exponent",
            as_positive,
            default=1.0,
        ),
    ),
)

DEFAULTS = Section(
    "[defaults]",
    "What every server has unless it sets it itself.",
    (
        Field("weight", "the server's weight in the balancer", as_weight, default=1.0),
        *_behaviour("-", required="here, or in every server"),
    ),
)

SERVER = Section(
    "[[servers]]",
    "One table per server.",
    (
        Field("name", "the server's name, unique", as_name, required="yes"),
        Field(
            "weight",
            "the server's weight in the balancer",
            as_weight,
            shown="defaults.weight, else 1",
        ),
        *_behaviour("from [defaults]", required="here, or in [defaults]"),
        Field(
            "changes",
            "what changes, and when: tables of at and the keys that change",
            kind="array of tables",
            shown="none",
        ),
    ),
)

LATENCY = Section(
    "latency = { ... }",
    "A service-time distribution; mean is the mean for every distribution.",
    (
        Field("distribution", "the distribution's shape", _DISTRIBUTIONS, default="lognormal"),
        Field(
            "mean",
            "the mean service time",
            as_positive,
            unit="s",
            required="here, in the server it changes, or in [defaults]",
        ),
        Field(
            "sigma",
            "lognormal only: the standard deviation of the log (p99 is about "
            "exp(2.33 sigma) x the median)",
            as_positive,
            default=0.5,
        ),
    ),
)

CHANGE = Section(
    "changes = [{ ... }]",
    "From time at on, the server behaves as before except for the keys given; changes "
    "apply in order of at, each on top of the one before. A change at or after the end of "
    "the run is kept but never applies (a warning says so).",
    (
        Field("at", "when the change applies", as_non_negative, unit="s", required="yes"),
        *_behaviour("unchanged"),
    ),
)

BEHAVIOUR_KEYS = tuple(f.name for f in _behaviour("-"))
"""The keys of a server's behaviour, which [defaults], [[servers]] and changes share."""

SECTIONS = (ROOT, ARRIVALS, KEYS, DEFAULTS, SERVER, LATENCY, CHANGE)
"""The tables the parser reads key by key; strategies and the library's settings tables
are described by the registry and the library's dataclasses."""
