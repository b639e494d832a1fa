"""Bounded work and the library's limits: refused when the file is checked, in one line.

Each bad file below, run as `loadbalancer simulate bad.toml`, used to run for days, exhaust
memory, or end in a traceback mid-run; now it exits 2 with one line naming the field.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadbalancer.cli import main
from loadbalancer.cli.simulate import limits
from loadbalancer.cli.simulate.fields import ScenarioError
from loadbalancer.cli.simulate.scenario import default_scenario

BASE = """\
duration = 2.0
{top}
[arrivals]
rate = 50.0
{tables}
[[servers]]
name = "a"
capacity = 2
latency = {{ mean = 0.01 }}
{a}
[[servers]]
name = "b"
capacity = 2
latency = {{ mean = 0.01 }}
{b}
"""


def scenario(
    *, top: str = "", tables: str = "", a: str = "", b: str = "", rate: str = "50.0"
) -> str:
    """The base file with lines added; a ``latency`` line in ``a`` or ``b`` replaces the
    server's own."""
    text = BASE.format(top=top, tables=tables, a=a, b=b).replace("rate = 50.0", f"rate = {rate}")
    for added, server in ((a, 'name = "a"'), (b, 'name = "b"')):
        if added.startswith("latency"):
            before, after = text.split(server)
            text = before + server + after.replace("latency = { mean = 0.01 }\n", "", 1)
    return text


# Each case: the file, the field its one line must name, and words the line must hold.
REFUSED = [
    (
        "duration 1e12 s",
        scenario().replace("duration = 2.0", "duration = 1e12"),
        "duration: 50 requests/s for 1e+12 s is 50,000,000,000,000 requests",
    ),
    (
        "arrival rate 1e9/s",
        scenario(rate="1e9"),
        "arrivals.rate: 1e+09 requests/s for 2 s is 2,000,000,000 requests",
    ),
    (
        "key population 1e12",
        scenario(tables="[keys]\npopulation = 1_000_000_000_000"),
        "keys.population: 1,000,000,000,000 keys; a simulation takes at most 1,000,000",
    ),
    (
        "keys x servers",
        scenario(tables="[keys]\npopulation = 1_000_000")
        + "".join(
            f'[[servers]]\nname = "s{i}"\ncapacity = 1\nlatency = {{ mean = 0.01 }}\n'
            for i in range(9)
        ),
        "keys.population: 1,000,000 keys on 11 servers is 11,000,000 (key, server) counters",
    ),
    (
        "max_cycle 1e9 with extreme weights",
        scenario(
            top='strategies = [{ name = "weighted_round_robin", max_cycle = 1_000_000_000 }]',
            a="weight = 0.1234567",
            b="weight = 999999.7654321",
        ),
        "strategies[0].max_cycle: must be at most 4,096 in a simulation, got 1,000,000,000",
    ),
    (
        "max_cycle at the old cap, whose rebuilds took a second each",
        scenario(top='strategies = [{ name = "wrr", max_cycle = 1_048_576 }]'),
        "strategies[0].max_cycle: must be at most 4,096 in a simulation, got 1,048,576",
    ),
    (
        "ketama vnodes 1e9",
        scenario(
            top='strategies = [{ name = "ring_hash", hash = "ketama", vnodes = 1_000_000_000 }]'
        ),
        "strategies[0].vnodes: must be at most 262144 for hash='ketama'",
    ),
    (
        "ketama ring too large for this pool",
        scenario(top='strategies = [{ name = "ring_hash", hash = "ketama", vnodes = 200_000 }]'),
        "strategies[0]: vnodes=200000 gives 2 servers a ketama ring of 1600000 points",
    ),
    (
        "maglev table smaller than the pool",
        scenario(top='strategies = [{ name = "maglev", table_size = 2 }]')
        + '[[servers]]\nname = "c"\ncapacity = 1\nlatency = { mean = 0.01 }\n',
        "strategies[0]: table_size=2 is smaller than the pool of 3 servers",
    ),
    (
        "weight over the library's maximum",
        scenario(a="weight = 2e6"),
        "servers[0].weight: must be finite and > 0 and <= 1e+06, got 2000000.0",
    ),
    (
        "default weight over the library's maximum",
        scenario(tables="[defaults]\nweight = 1e7"),
        "defaults.weight: must be finite and > 0 and <= 1e+06",
    ),
    (
        "latency mean that overflows to infinity",
        scenario(a='latency = { mean = 1e308, distribution = "exponential" }'),
        "servers[0].latency.mean: exponential service times of mean 1e+308 s overflow to infinity",
    ),
    (
        "lognormal tail that overflows",
        scenario(b="latency = { mean = 1.0, sigma = 1e200 }"),
        "servers[1].latency.sigma: must be at most 3.93 in a simulation, got 1e+200",
    ),
    (
        "lognormal tail that overflows below the sigma cap",
        scenario(b="latency = { mean = 1.0, sigma = 3.9 }"),
        "servers[1].latency.sigma: lognormal service times of mean 1 s, sigma 3.9 reach",
    ),
    *(
        (
            f"lognormal sigma {sigma} whose runs averaged 0.0 ms",
            scenario(tables=f"[defaults]\nlatency = {{ mean = 0.01, sigma = {sigma} }}"),
            f"servers[0].latency.sigma: must be at most 3.93 in a simulation, got {sigma}",
        )
        for sigma in (22, 25, 40)
    ),
    (
        "a change to a latency that overflows",
        scenario(
            a='changes = [{ at = 1.0, latency = { mean = 1e300, distribution = "constant" } }]'
        ),
        "servers[0].changes[0].latency.mean: constant service times of mean 1e+300 s reach",
    ),
    (
        "Zipf exponent that overflows",
        scenario(tables='[keys]\npopulation = 100\ndistribution = "zipf"\nexponent = 2000.0'),
        "keys.exponent: 2000 overflows: 100 ** 2000 is beyond a float",
    ),
    (
        "failure latency beyond the cap",
        scenario(a="failure_latency = 1e300"),
        "servers[0].failure_latency: must be at most 1e+09 s",
    ),
    ("timeout beyond the cap", scenario(top="timeout = 1e300"), "timeout: must be at most 1e+09 s"),
]


@pytest.mark.parametrize(("text", "line"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_refused_up_front_in_one_line_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, line: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    assert main(["simulate", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    prefix = f"loadbalancer simulate: error: {path}: "
    assert err.startswith(prefix + line), err
    assert err.count("\n") == 1
    assert "Traceback" not in err


def test_the_caps_are_what_the_messages_say() -> None:
    assert limits.MAX_REQUESTS == 5_000_000
    assert limits.MAX_KEYS == 1_000_000
    assert limits.MAX_CYCLE == 4096
    assert f"{limits.MAX_SIGMA:.3g}" == "3.93"


@pytest.mark.parametrize("sigma", [3.0, 3.5, 3.9, 4.0, 10.0, 22.0, 40.0])
def test_sigma_refusal_is_monotone(sigma: float) -> None:
    """Once a sigma is refused for a mean, every larger one is too (3 and 4 were, 22 was not)."""

    def refused(s: float) -> bool:
        try:
            limits.check_draws("lognormal", 0.01, s, "latency")
        except ScenarioError:
            return True
        return False

    assert refused(sigma)  # at mean 10 ms, sigma 3 already draws beyond MAX_SECONDS
    assert refused(sigma * 1.5)


def test_a_duration_from_the_command_line_is_checked_and_named(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["simulate", "--duration", "1e12"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("loadbalancer simulate: error: --duration: 900 requests/s for 1e+12 s")
    assert err.count("\n") == 1


def test_max_cycle_at_the_cap_with_extreme_weights_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cycle.toml"
    path.write_text(
        scenario(
            top="strategies = [{ name = 'weighted_round_robin', max_cycle = "
            + f"{limits.MAX_CYCLE} }}]",
            a="weight = 0.1234567",
            b="weight = 999999.7654321",
        ),
        encoding="utf-8",
    )
    assert main(["simulate", str(path), "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)["strategies"]
    assert result["servers"]["b"]["share"] > 0.99  # the weights still rule


def test_max_cycle_at_the_cap_with_ejections_finishes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reviewer's file at the cap: a rebuild per ejection and return, every 10 ms.

    At the old cap (1,048,576) its 1 s run took 94 s; at 4,096 a rebuild takes a few ms, so
    this 1 s run does about a hundred of them and finishes, every request counted.
    """
    path = tmp_path / "cycle.toml"
    path.write_text(
        scenario(
            top="duration = 1.0\nstrategies = [{ name = 'wrr', max_cycle = "
            + f"{limits.MAX_CYCLE} }}]",
            tables="[outlier_detection]\ninterval = 0.01\nconsecutive_failures = 1\n"
            "base_ejection_time = 0.001\nmax_ejection_percent = 100",
            a="weight = 0.000001",
            b="weight = 1e6\nfailure_rate = 0.5",
            rate="200.0",
        ).replace("duration = 2.0\n", ""),
        encoding="utf-8",
    )
    assert main(["simulate", str(path), "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)["strategies"]
    servers = result["servers"]
    assert result["requests"] == sum(server["requests"] for server in servers.values())
    assert 100 < result["requests"] < 300  # 200/s for 1 s
    assert servers["a"]["requests"] > 0  # b was ejected, so the tiny weight served


@pytest.mark.parametrize(
    ("distribution", "sigma"), [("exponential", 0.5), ("lognormal", 0.5), ("lognormal", 3.0)]
)
def test_the_largest_draw_bounds_real_draws(distribution: str, sigma: float) -> None:
    import random

    from loadbalancer.cli.simulate.engine import _sampler
    from loadbalancer.cli.simulate.scenario import Latency

    latency = Latency(1.0, distribution, sigma)  # type: ignore[arg-type]
    draw = _sampler(latency, random.Random(7))
    largest = max(draw() for _ in range(100_000))
    bound = limits.largest_draw(distribution, 1.0, sigma)
    assert largest < bound


# -- --duration and what a shorter run leaves out ----------------------------------------------

NO_DURATION = scenario().replace("duration = 2.0\n", "")


def test_duration_may_come_from_the_command_line_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "open.toml"
    path.write_text(NO_DURATION, encoding="utf-8")
    assert main(["simulate", str(path), "--json", "--duration", "1.5"]) == 0
    assert json.loads(capsys.readouterr().out)["scenario"]["duration"] == 1.5
    assert main(["simulate", str(path)]) == 2
    assert capsys.readouterr().err == (
        f"loadbalancer simulate: error: {path}: duration: missing: set it in the file or pass "
        "--duration\n"
    )


def test_a_change_after_the_end_is_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "late.toml"
    path.write_text(
        scenario(a="changes = [{ at = 1.0, capacity = 1 }, { at = 5.0, failure_rate = 1.0 }]"),
        encoding="utf-8",
    )
    assert main(["simulate", str(path), "--json"]) == 0
    out, err = capsys.readouterr()
    assert err == (
        f"loadbalancer simulate: warning: {path}: servers[0].changes[1].at: server a's change at "
        "5 s is not before the end of the run (2 s), so it never applies\n"
    )
    assert json.loads(out)["strategies"][0]["failures"] == 0  # and indeed it never applied
    assert main(["simulate", str(path), "--quiet"]) == 0
    assert capsys.readouterr() == ("", "")


def test_the_default_header_stays_true_when_duration_cuts_the_failure_window(
    capsys: pytest.CaptureFixture[str],
) -> None:
    full = default_scenario()
    assert full.warnings == ()
    assert "from 10 s to 20 s" in full.description
    cut = default_scenario(duration=15.0)
    assert (
        cut.description == full.description + " (the run ends at 15 s, before the change at 20 s)"
    )
    shorter = default_scenario(duration=5.0)
    assert shorter.description.endswith(
        "(the run ends at 5 s, before the changes at 10 s and 20 s)"
    )
    assert main(["simulate", "--duration", "15", "--strategies", "random"]) == 0
    out, err = capsys.readouterr()
    assert f"default: {cut.description}" in " ".join(out.split())
    # Named as the built-in scenario's, and by the server's name: the user wrote no file.
    assert err.startswith(
        "loadbalancer simulate: warning: the built-in scenario: servers[7].changes[1].at: "
        "server s08's change at 20 s is not before the end of the run (15 s), so it never applies"
    )
    assert err.count("\n") == 1  # the change at 10 s still applies
