"""Behaviour every strategy must share, run against each one in conformance.py."""

from __future__ import annotations

import inspect
import threading
import time
from collections import Counter
from collections.abc import Callable

import pytest

import loadbalancer
from loadbalancer import (
    Endpoint,
    Key,
    LoadBalancer,
    NoServersAvailableError,
    Picker,
    Snapshot,
    Strategy,
)
from loadbalancer.strategies import ALIASES, STRATEGIES, canonical_name, strategy_class

from .conformance import STRATEGY_FACTORIES

StrategyFactory = Callable[[], Strategy]


def balancer(make_strategy: StrategyFactory, *servers: str, max_servers: int = 10) -> LoadBalancer:
    lb = LoadBalancer(strategy=make_strategy(), max_servers=max_servers)
    for server in servers:
        assert lb.register(server)
    return lb


def test_empty_pool_raises(make_strategy: StrategyFactory) -> None:
    lb = balancer(make_strategy)
    with pytest.raises(NoServersAvailableError):
        lb.get()


def test_pool_emptied_again_raises(make_strategy: StrategyFactory) -> None:
    lb = balancer(make_strategy, "a")
    assert lb.unregister("a")
    with pytest.raises(NoServersAvailableError):
        lb.get()


def test_single_server_is_always_picked(make_strategy: StrategyFactory) -> None:
    lb = balancer(make_strategy, "only")
    assert {lb.get() for _ in range(50)} == {"only"}


def test_picks_are_members_and_every_server_is_reached(make_strategy: StrategyFactory) -> None:
    lb = balancer(make_strategy, "a", "b", "c", "d")
    picks = Counter(lb.get() for _ in range(400))
    assert set(picks) == {"a", "b", "c", "d"}


def test_unregistered_server_is_never_picked(make_strategy: StrategyFactory) -> None:
    lb = balancer(make_strategy, "a", "b", "c")
    for _ in range(5):
        lb.get()
    assert lb.unregister("b")
    assert "b" not in {lb.get() for _ in range(200)}


def test_registered_server_is_reached(make_strategy: StrategyFactory) -> None:
    lb = balancer(make_strategy, "a", "b")
    lb.get()
    assert lb.register("c")
    assert "c" in {lb.get() for _ in range(200)}


def test_replace_switches_to_exactly_the_new_set(make_strategy: StrategyFactory) -> None:
    lb = balancer(make_strategy, "a", "b", "c")
    lb.replace(["c", "d"])
    assert {lb.get() for _ in range(200)} == {"c", "d"}


@pytest.mark.parametrize("bad_key", [42, 1.5, object(), ["a"]])
def test_key_of_wrong_type_is_rejected(make_strategy: StrategyFactory, bad_key: object) -> None:
    lb = balancer(make_strategy, "a", "b")
    with pytest.raises(TypeError, match="key"):
        lb.get(bad_key)  # type: ignore[arg-type]


@pytest.mark.parametrize("key", ["user-1", b"user-1"])
def test_str_and_bytes_keys_are_accepted(make_strategy: StrategyFactory, key: str | bytes) -> None:
    lb = balancer(make_strategy, "a", "b")
    assert lb.get(key) in {"a", "b"}
    assert lb.get(key=key) in {"a", "b"}


def snapshot(*servers: str) -> Snapshot:
    return Snapshot.of(tuple(Endpoint(s) for s in servers), time.monotonic)


def test_build_accepts_a_previous_picker_of_another_strategy(
    make_strategy: StrategyFactory,
) -> None:
    class Fixed(Picker):
        def pick(self, key: Key | None = None) -> str:
            return "x"

    picker = make_strategy().build(snapshot("a", "b"), Fixed())
    assert {picker.pick() for _ in range(50)} <= {"a", "b"}


def test_build_continues_from_its_own_previous_picker(make_strategy: StrategyFactory) -> None:
    strategy = make_strategy()
    first = strategy.build(snapshot("a", "b", "c"))
    first.pick()
    second = strategy.build(snapshot("a", "c"), first)
    assert {second.pick() for _ in range(50)} == {"a", "c"}


def test_one_strategy_instance_can_serve_two_balancers(make_strategy: StrategyFactory) -> None:
    strategy = make_strategy()
    first = LoadBalancer(strategy=strategy)
    second = LoadBalancer(strategy=strategy)
    first.register("a")
    second.register("z")
    assert {first.get() for _ in range(20)} == {"a"}
    assert {second.get() for _ in range(20)} == {"z"}


def test_concurrent_picks_return_members(make_strategy: StrategyFactory) -> None:
    servers = {"a", "b", "c", "d", "e"}
    lb = balancer(make_strategy, *sorted(servers))
    start = threading.Barrier(8)
    results: list[Counter[str]] = []

    def worker() -> None:
        start.wait()
        results.append(Counter(lb.get() for _ in range(2000)))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = sum(results, Counter())
    assert set(total) == servers
    assert sum(total.values()) == 8 * 2000


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
