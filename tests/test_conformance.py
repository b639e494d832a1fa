"""Behaviour every strategy must share, run against each one in conformance.py.

The shipped checks (``loadbalancer.testing.check_strategy``) run one by one against every
registered strategy and variant; the tests here add what the project asks of its own
strategies beyond them, check that the checks catch broken strategies, and guard the registry.
"""

from __future__ import annotations

import inspect
import random
import time
from collections.abc import Callable, Mapping, Set

import pytest

import loadbalancer
from loadbalancer import (
    Endpoint,
    Key,
    Picker,
    RoundRobinStrategy,
    Snapshot,
    Strategy,
)
from loadbalancer.strategies import ALIASES, STRATEGIES, canonical_name, strategy_class
from loadbalancer.testing import STRATEGY_CHECKS, check_strategy

from .conformance import STRATEGY_FACTORIES

StrategyFactory = Callable[[], Strategy]


@pytest.mark.parametrize("check", list(STRATEGY_CHECKS))
def test_strategy_passes_the_shipped_check(make_strategy: StrategyFactory, check: str) -> None:
    STRATEGY_CHECKS[check](make_strategy)


def test_builtin_pickers_choose_exactly_when_excluding(make_strategy: StrategyFactory) -> None:
    # The shipped exclusion check holds a picker to the exact choice only if it overrides
    # pick_excluding (the default is best effort): every built-in must, or it is let off.
    picker = make_strategy().build(snapshot("a", "b", "c"))
    assert type(picker).pick_excluding is not Picker.pick_excluding


def snapshot(*servers: str) -> Snapshot:
    return Snapshot.of(tuple(Endpoint(s) for s in servers), time.monotonic)


def test_build_accepts_a_previous_picker_of_another_strategy(
    make_strategy: StrategyFactory,
) -> None:
    # Stricter than the contract (a balancer only hands a strategy its own pickers), so that
    # a strategy never trusts the type of what it is given.
    class Fixed(Picker):
        def pick(self, key: Key | None = None) -> str:
            return "x"

    picker = make_strategy().build(snapshot("a", "b"), Fixed())
    assert {picker.pick() for _ in range(50)} <= {"a", "b"}


def test_build_continues_from_its_own_previous_picker_to_every_server(
    make_strategy: StrategyFactory,
) -> None:
    strategy = make_strategy()
    first = strategy.build(snapshot("a", "b", "c"))
    first.pick()
    second = strategy.build(snapshot("a", "c"), first)
    assert {second.pick() for _ in range(50)} == {"a", "c"}


# -- the shipped checks catch broken strategies ------------------------------------------------


class _Picker(Picker):
    """A uniform random pick; subclasses break it in one way each."""

    def __init__(self, servers: tuple[str, ...]) -> None:
        self.servers = servers
        self.rng = random.Random(7)

    def pick(self, key: Key | None = None) -> str:
        if key is not None and not isinstance(key, (str, bytes)):
            raise TypeError("key must be str or bytes")
        return self.rng.choice(self.servers)


def strategy_of(picker: type[_Picker]) -> StrategyFactory:
    """A factory of strategies building ``picker`` over each snapshot."""

    class Custom(Strategy):
        def build(self, snapshot: Snapshot, previous: Picker | None = None) -> Picker:
            return picker(snapshot.servers)

        def __repr__(self) -> str:
            return f"Custom({picker.__name__})"

    return Custom


class _OutsideThePool(_Picker):
    def pick(self, key: Key | None = None) -> str:
        return "intruder"


class _IgnoresExclusion(_Picker):
    def pick_excluding(self, key: Key | None, exclude: Set[str]) -> str:
        return self.pick(key)  # claims the exact choice by overriding, then ignores exclude


class _WrongKeyError(_Picker):
    def pick(self, key: Key | None = None) -> str:
        if key is not None and not isinstance(key, (str, bytes)):
            raise ValueError("bad key")
        return self.rng.choice(self.servers)


class _FirstOnly(_Picker):
    def pick(self, key: Key | None = None) -> str:
        super().pick(key)  # for its key check
        return self.servers[0]


class _CountsTwice(_Picker):
    def acquire(
        self, key: Key | None, endpoints: Mapping[str, Endpoint], exclude: Set[str] = frozenset()
    ) -> Endpoint:
        endpoint = super().acquire(key, endpoints, exclude)
        endpoint.begin()  # one request counted twice: in flight forever after
        return endpoint


@pytest.mark.parametrize(
    ("picker", "message"),
    [
        (
            _OutsideThePool,
            r"^Custom\(_OutsideThePool\) fails check 'single_server': in a pool of one, "
            r"get\(\) returned \['intruder'\], not in the pool \['only'\]$",
        ),
        (
            _IgnoresExclusion,
            "fails check 'exclusion': over a, b, c, d, get(.*) returned excluded '.' while",
        ),
        (_WrongKeyError, "fails check 'keys': get[(]42[)] raised ValueError, not TypeError"),
        (_FirstOnly, "fails check 'reach': after registering a, b, c, d, 400 calls of get"),
        (_CountsTwice, "fails check 'exclusion': leases with exclude= stayed in flight"),
    ],
)
def test_check_strategy_catches_a_broken_strategy(picker: type[_Picker], message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        check_strategy(strategy_of(picker))


def test_the_thread_check_counts_exactly() -> None:
    with pytest.raises(AssertionError, match=r"every lease ended, yet in flight: \{'a': "):
        STRATEGY_CHECKS["threads"](strategy_of(_CountsTwice))


def test_a_correct_custom_strategy_passes_every_check() -> None:
    # It keeps pick_excluding's default (best effort), so exclusion is checked for membership.
    check_strategy(strategy_of(_Picker))


def test_skip_lets_an_active_standby_strategy_pass() -> None:
    check_strategy(strategy_of(_FirstOnly), skip={"reach"})


def test_check_strategy_passes_the_builtins_whole() -> None:
    check_strategy(RoundRobinStrategy)


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ((42,), TypeError, "make_strategy must be callable"),
        ((lambda: "round robin",), TypeError, "make_strategy must return a Strategy, not str"),
        (
            (RoundRobinStrategy, {"reach", "speed"}),
            ValueError,
            r"skip names no such check: \['speed'\]",
        ),
        ((RoundRobinStrategy, "reach"), TypeError, "skip must be a collection of check names"),
    ],
)
def test_check_strategy_checks_its_arguments(
    arguments: tuple[object, ...], error: type[Exception], message: str
) -> None:
    make, *rest = arguments
    with pytest.raises(error, match=message):
        check_strategy(make, skip=rest[0] if rest else ())  # type: ignore[arg-type]


# -- the registry: one list of strategies ------------------------------------------------------


def exported_strategies() -> dict[str, type[Strategy]]:
    """Every concrete Strategy class ``loadbalancer`` exports, by exported name."""
    found = {}
    for name in loadbalancer.__all__:
        value = getattr(loadbalancer, name)
        if inspect.isclass(value) and issubclass(value, Strategy) and value is not Strategy:
            found[name] = value
    return found


def test_every_exported_strategy_is_registered() -> None:
    exported = exported_strategies()
    assert len(exported) >= 10  # the guard itself finds the strategies
    missing = sorted(name for name, cls in exported.items() if cls not in STRATEGIES.values())
    assert missing == []


def test_every_registered_strategy_is_exported_and_in_the_conformance_list() -> None:
    exported = set(exported_strategies().values())
    for name, cls in STRATEGIES.items():
        assert cls in exported, name
        assert type(STRATEGY_FACTORIES[name]()) is cls, name


def test_registry_is_read_only() -> None:
    with pytest.raises(TypeError):
        STRATEGIES["mine"] = Strategy  # type: ignore[index]
    with pytest.raises(TypeError):
        ALIASES["mine"] = "round_robin"  # type: ignore[index]


def test_canonical_names_are_lower_snake_case_and_unique() -> None:
    assert len(set(STRATEGIES.values())) == len(STRATEGIES)
    for name in STRATEGIES:
        assert name == name.strip().lower().replace("-", "_")
        assert canonical_name(name) == name


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("p2c", "power_of_two_choices"),
        ("least_request", "power_of_two_choices"),
        ("rr", "round_robin"),
        ("wrr", "weighted_round_robin"),
        ("least_conn", "least_connections"),
        ("leastconn", "least_connections"),
        ("ewma", "peak_ewma"),
        ("ring", "ring_hash"),
        ("hrw", "rendezvous"),
    ],
)
def test_aliases(alias: str, name: str) -> None:
    assert ALIASES[alias] == name
    assert canonical_name(alias) == name
    assert strategy_class(alias) is STRATEGIES[name]


def test_every_alias_names_a_canonical_strategy_and_is_not_one() -> None:
    for alias, name in ALIASES.items():
        assert name in STRATEGIES, alias
        assert alias not in STRATEGIES, alias


@pytest.mark.parametrize(
    ("written", "name"),
    [
        ("LEAST_REQUEST", "power_of_two_choices"),
        ("Round-Robin", "round_robin"),
        (" p2c ", "power_of_two_choices"),
    ],
)
def test_lookup_ignores_case_hyphens_and_spaces(written: str, name: str) -> None:
    assert canonical_name(written) == name


def test_ketama_is_not_an_alias_and_the_error_says_what_to_use() -> None:
    # ketama needs RingHashStrategy(hash="ketama"): a bare name would map keys differently.
    with pytest.raises(
        ValueError, match='name must be a strategy name: ketama is ring_hash with hash="ketama"'
    ):
        strategy_class("ketama")


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(
        ValueError, match=r"^name must be a strategy name: one of round_robin, "
    ) as error:
        strategy_class("fastest")
    message = str(error.value)
    assert all(name in message for name in [*STRATEGIES, *ALIASES])
    assert message.endswith("got 'fastest'")


@pytest.mark.parametrize("bad", [None, 3, b"p2c"])
def test_names_must_be_strings(bad: object) -> None:
    with pytest.raises(TypeError, match=r"^name must be a str,"):
        canonical_name(bad)  # type: ignore[arg-type]
