"""Scenario files: the default, the examples, inheritance, and clear errors for bad files."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from loadbalancer import OutlierDetection
from loadbalancer.cli.simulate.registry import DEFAULT_STRATEGIES, STRATEGIES
from loadbalancer.cli.simulate.scenario import (
    Behaviour,
    Latency,
    ScenarioError,
    default_scenario,
    load_scenario,
    parse_scenario,
)

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

EXAMPLES = sorted(
    (Path(__file__).resolve().parent.parent / "examples" / "scenarios").glob("*.toml")
)

MINIMAL = """
duration = 5.0
[arrivals]
rate = 100.0
[[servers]]
name = "a"
capacity = 2
latency = { mean = 0.01 }
"""


def parse(text: str) -> object:
    return parse_scenario(tomllib.loads(text))


def test_default_scenario_matches_its_description() -> None:
    scenario = default_scenario()
    assert scenario.name == "default"
    assert len(scenario.servers) == 10
    assert isinstance(scenario.outlier_detection, OutlierDetection)
    assert scenario.keys is not None
    assert tuple(s.label for s in scenario.strategies) == DEFAULT_STRATEGIES
    means = sorted(s.behaviour.latency.mean for s in scenario.servers)
    assert means[-1] >= 4 * means[0]  # one server several times slower than the rest
    failing = [s for s in scenario.servers if any(c.behaviour.failure_rate > 0 for c in s.changes)]
    assert len(failing) == 1
    capacity = sum(s.behaviour.capacity / s.behaviour.latency.mean for s in scenario.servers)
    assert 0.65 <= scenario.arrivals.rate / capacity <= 0.85  # the load the issue asks for


def test_default_strategies_include_hashing() -> None:
    assert {"ring_hash", "maglev"} <= set(DEFAULT_STRATEGIES)
    assert set(DEFAULT_STRATEGIES) <= set(STRATEGIES)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_scenarios_load(path: Path) -> None:
    scenario = load_scenario(path)
    assert scenario.servers
    assert scenario.strategies


def test_examples_exist() -> None:
    assert len(EXAMPLES) >= 2


def test_servers_inherit_defaults_and_merge_latency() -> None:
    scenario = parse_scenario(
        tomllib.loads(
            """
            duration = 5.0
            [arrivals]
            rate = 10.0
            [defaults]
            capacity = 3
            weight = 2
            latency = { distribution = "lognormal", mean = 0.02, sigma = 0.8 }
            [[servers]]
            name = "a"
            [[servers]]
            name = "b"
            weight = 1
            latency = { mean = 0.1 }
            changes = [
                { at = 8.0, failure_rate = 0.0 },
                { at = 4.0, failure_rate = 0.5, latency = { mean = 0.3 } },
            ]
            """
        )
    )
    a, b = scenario.servers
    assert a.weight == 2
    assert a.behaviour == Behaviour(Latency(0.02, "lognormal", 0.8), 3, 0.0)
    assert b.weight == 1
    assert b.behaviour.latency == Latency(0.1, "lognormal", 0.8)
    # Changes apply in time order, each on top of the one before.
    assert [c.at for c in b.changes] == [4.0, 8.0]
    assert b.changes[0].behaviour == Behaviour(Latency(0.3, "lognormal", 0.8), 3, 0.5)
    assert b.changes[1].behaviour == Behaviour(Latency(0.3, "lognormal", 0.8), 3, 0.0)
    assert scenario.outlier_detection is None  # absent means off, as in the library


def test_strategy_tables_take_options_and_labels() -> None:
    scenario = parse_scenario(
        tomllib.loads(
            'strategies = ["random", { name = "power_of_two_choices", label = "p3c", choices = 3 }]'
            + MINIMAL
        )
    )
    assert [(s.name, s.label, s.options) for s in scenario.strategies] == [
        ("random", "random", ()),
        ("power_of_two_choices", "p3c", (("choices", 3),)),
    ]


def test_aliases_name_the_canonical_strategy_and_label() -> None:
    scenario = parse_scenario(
        tomllib.loads(
            'strategies = ["p2c", { name = "HRW" }, { name = "Least-Conn", label = "lc" }, '
            '{ name = "ring", vnodes = 40 }]' + MINIMAL
        )
    )
    assert [(s.name, s.label, s.options) for s in scenario.strategies] == [
        ("power_of_two_choices", "power_of_two_choices", ()),
        ("rendezvous", "rendezvous", ()),
        ("least_connections", "lc", ()),
        ("ring_hash", "ring_hash", (("vnodes", 40),)),
    ]


def test_an_alias_and_its_canonical_name_are_the_same_label() -> None:
    with pytest.raises(
        ScenarioError, match='strategies\\[1\\]: duplicate strategy label "rendezvous"'
    ):
        parse('strategies = ["rendezvous", "hrw"]\n' + MINIMAL)


def test_ketama_is_not_an_alias() -> None:
    with pytest.raises(
        ScenarioError, match='strategies\\[0\\]: unknown strategy "ketama"'
    ) as error:
        parse('strategies = ["ketama"]\n' + MINIMAL)
    assert "p2c" in str(error.value)  # the aliases are listed with the names


def test_outlier_detection_table_and_enabled_flag() -> None:
    on = parse_scenario(tomllib.loads(MINIMAL + "[outlier_detection]\nconsecutive_failures = 3"))
    assert on.outlier_detection == OutlierDetection(consecutive_failures=3)
    off = parse_scenario(tomllib.loads(MINIMAL + "[outlier_detection]\nenabled = false"))
    assert off.outlier_detection is None


# Each case: a change to a valid file, and the start of the error it must give.
BAD = [
    ("", "duration = 5.0\n[arrivals]\nrate = 1.0", "servers: missing"),
    ("drop duration", MINIMAL.replace("duration = 5.0", ""), "duration: missing"),
    ("duration string", MINIMAL.replace("5.0", '"5"'), "duration: must be a positive number"),
    ("duration negative", MINIMAL.replace("5.0", "-5.0"), "duration: must be a positive number"),
    ("duration bool", MINIMAL.replace("5.0", "true"), "duration: must be a positive number"),
    ("rate zero", MINIMAL.replace("100.0", "0"), "arrivals.rate: must be a positive number"),
    ("rate negative", MINIMAL.replace("100.0", "-3"), "arrivals.rate: must be a positive number"),
    ("no arrivals", MINIMAL.replace("[arrivals]\nrate = 100.0", ""), "arrivals: missing"),
    ("arrivals typo", MINIMAL.replace("rate =", "rat ="), "arrivals.rat: unknown key"),
    ("mean negative", MINIMAL.replace("mean = 0.01", "mean = -1"), "servers[0].latency.mean:"),
    ("mean missing", MINIMAL.replace("mean = 0.01", "sigma = 1.0"), "servers[0].latency.mean:"),
    (
        "sigma with exponential",
        MINIMAL.replace("mean = 0.01", 'mean = 0.01, distribution = "exponential", sigma = 1.0'),
        "servers[0].latency.sigma: applies only to",
    ),
    (
        "unknown distribution",
        MINIMAL.replace("mean = 0.01", 'mean = 0.01, distribution = "pareto"'),
        "servers[0].latency.distribution: must be one of",
    ),
    ("latency not table", MINIMAL.replace("{ mean = 0.01 }", "0.01"), "servers[0].latency: must"),
    ("capacity float", MINIMAL.replace("capacity = 2", "capacity = 2.5"), "servers[0].capacity:"),
    ("capacity zero", MINIMAL.replace("capacity = 2", "capacity = 0"), "servers[0].capacity:"),
    ("capacity missing", MINIMAL.replace("capacity = 2", ""), "servers[0].capacity: missing"),
    ("server typo", MINIMAL.replace("capacity", "capacty"), "servers[0].capacty: unknown key"),
    ("name missing", MINIMAL.replace('name = "a"', ""), "servers[0].name: missing"),
    ("name empty", MINIMAL.replace('name = "a"', 'name = ""'), "servers[0].name: must not be"),
    ("name number", MINIMAL.replace('name = "a"', "name = 3"), "servers[0].name: must be a string"),
    (
        "duplicate server",
        MINIMAL + '[[servers]]\nname = "a"\ncapacity = 1\nlatency = { mean = 1.0 }',
        'servers[1].name: duplicate server name "a"',
    ),
    (
        "second server bad",
        MINIMAL + '[[servers]]\nname = "b"\ncapacity = 1\nlatency = { mean = 0 }',
        "servers[1].latency.mean: must be a positive number",
    ),
    ("failure rate", MINIMAL + "failure_rate = 1.5", "servers[0].failure_rate: must be a prob"),
    ("weight zero", MINIMAL + "weight = 0", "servers[0].weight: must be a positive number"),
    ("servers empty", "servers = []\n" + MINIMAL.split("[[servers]]")[0], "servers: must list"),
    ("servers string", 'servers = "a"\n' + MINIMAL.split("[[servers]]")[0], "servers: must be an"),
    ("change no at", MINIMAL + "changes = [{ failure_rate = 0.5 }]", "servers[0].changes[0].at:"),
    ("change empty", MINIMAL + "changes = [{ at = 1.0 }]", "servers[0].changes[0]: changes noth"),
    (
        "change at negative",
        MINIMAL + "changes = [{ at = -1.0, capacity = 1 }]",
        "servers[0].changes[0].at:",
    ),
    (
        "change bad latency",
        MINIMAL + "changes = [{ at = 1.0, latency = { mean = -2 } }]",
        "servers[0].changes[0].latency.mean: must be a positive number",
    ),
    ("root typo", "durration = 3\n" + MINIMAL, "durration: unknown key"),
    ("timeout zero", "timeout = 0\n" + MINIMAL, "timeout: must be a positive number"),
    ("seed float", "seed = 1.5\n" + MINIMAL, "seed: must be an integer"),
    ("panic over 100", "panic_threshold = 150\n" + MINIMAL, "panic_threshold: must be a percent"),
    (
        "unknown strategy",
        'strategies = ["round_robin", "nope"]\n' + MINIMAL,
        'strategies[1]: unknown strategy "nope"',
    ),
    ("strategy number", "strategies = [3]\n" + MINIMAL, "strategies[0]: must be a strategy name"),
    ("no strategies", "strategies = []\n" + MINIMAL, "strategies: must list at least one"),
    (
        "unknown option",
        'strategies = [{ name = "random", colour = "red" }]\n' + MINIMAL,
        "strategies[0].colour: unknown option for random",
    ),
    (
        "bad option value",
        'strategies = [{ name = "power_of_two_choices", choices = 1 }]\n' + MINIMAL,
        "strategies[0].choices: must be >= 2",
    ),
    (
        "duplicate label",
        'strategies = ["random", { name = "round_robin", label = "random" }]\n' + MINIMAL,
        'strategies[1].label: duplicate strategy label "random"',
    ),
    (
        "outlier bad value",
        MINIMAL.replace(
            "[[servers]]", "[outlier_detection]\nconsecutive_failures = 0\n[[servers]]"
        ),
        "outlier_detection.consecutive_failures: must be >= 1",
    ),
    (
        "outlier value at odds with a default the file left out",
        MINIMAL.replace(
            "[[servers]]", "[outlier_detection]\nbase_ejection_time = 1000\n[[servers]]"
        ),
        "outlier_detection.base_ejection_time: with base_ejection_time = 1000, max_ejection_time "
        "(not set: it defaults to 300) must be finite and >= 1000, got 300.0; set "
        "max_ejection_time too",
    ),
    (
        "outlier values at odds with a default the file left out",
        MINIMAL.replace(
            "[[servers]]",
            "[outlier_detection]\ninterval = 1.0\nbase_ejection_time = 1000\n[[servers]]",
        ),
        "outlier_detection: with base_ejection_time = 1000, interval = 1.0, max_ejection_time "
        "(not set: it defaults to 300) must be",
    ),
    (
        "outlier values at odds with each other",
        MINIMAL.replace(
            "[[servers]]",
            "[outlier_detection]\nmax_ejection_time = 5.0\nbase_ejection_time = 10.0\n[[servers]]",
        ),
        "outlier_detection.max_ejection_time: must be finite and >= 10, got 5.0",
    ),
    (
        "outlier typo",
        MINIMAL.replace("[[servers]]", "[outlier_detection]\nbase_ejection = 1.0\n[[servers]]"),
        "outlier_detection.base_ejection: unknown key",
    ),
    (
        "outlier int as float",
        MINIMAL.replace("[[servers]]", "[outlier_detection]\nminimum_requests = 2.0\n[[servers]]"),
        "outlier_detection.minimum_requests: must be an int",
    ),
    (
        "slow start bad",
        MINIMAL.replace("[[servers]]", "[slow_start]\nwindow = -1\n[[servers]]"),
        "slow_start.window: must be finite and > 0",
    ),
    (
        "keys distribution",
        MINIMAL.replace("[[servers]]", '[keys]\npopulation = 5\ndistribution = "x"\n[[servers]]'),
        "keys.distribution: must be one of",
    ),
    (
        "keys exponent uniform",
        MINIMAL.replace("[[servers]]", "[keys]\npopulation = 5\nexponent = 1.0\n[[servers]]"),
        "keys.exponent: applies only to",
    ),
    (
        "keys population",
        MINIMAL.replace("[[servers]]", "[keys]\npopulation = 0\n[[servers]]"),
        "keys.population: must be a positive integer",
    ),
    (
        "defaults bad",
        MINIMAL.replace("[[servers]]", "[defaults]\ncapacity = -1\n[[servers]]"),
        "defaults.capacity: must be a positive integer",
    ),
    (
        "top-level key after a table",
        MINIMAL + "timeout = 1.0",
        "servers[0].timeout: unknown key; if 'timeout' is meant for the top level",
    ),
    ("not toml", "duration = = 3", "not valid TOML"),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_scenarios_name_the_field(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    message = str(caught.value)
    assert message.startswith(expected), message
    assert "\n" not in message


def test_specific_message_for_a_negative_mean() -> None:
    with pytest.raises(ScenarioError) as caught:
        parse(MINIMAL.replace("mean = 0.01", "mean = -1"))
    assert str(caught.value) == "servers[0].latency.mean: must be a positive number, got -1"
    assert caught.value.path == "servers[0].latency.mean"


def test_replace_returns_a_modified_copy() -> None:
    scenario = default_scenario()
    shorter = scenario.replace(duration=3.0)
    assert shorter.duration == 3.0
    assert scenario.duration != 3.0
