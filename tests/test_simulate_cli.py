"""The command line: `loadbalancer simulate` output, flags, and exit statuses."""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys
from importlib.machinery import ModuleSpec
from pathlib import Path

import pytest
from rich.console import Console

from loadbalancer.cli import main
from loadbalancer.cli.simulate import default_scenario, run_scenario
from loadbalancer.cli.simulate.progress import LazyProgress
from loadbalancer.cli.simulate.report import print_report

FAST = ["--duration", "2", "--strategies", "round_robin,peak_ewma"]


def test_simulate_json_runs_the_default_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--json"]) == 0
    out, err = capsys.readouterr()
    document = json.loads(out)
    assert err == ""
    assert document["version"] == 1
    assert document["scenario"]["name"] == "default"
    assert document["seed"] == 1
    labels = [s["label"] for s in document["strategies"]]
    assert labels[:6] == [
        "round_robin",
        "random",
        "weighted_round_robin",
        "least_connections",
        "power_of_two_choices",
        "peak_ewma",
    ]
    first = document["strategies"][0]
    assert set(first) == {
        "label",
        "strategy",
        "requests",
        "failures",
        "error_rate",
        "timeouts",
        "unavailable",
        "latency_seconds",
        "peak_in_flight",
        "ejections",
        "ejection_events",
        "stickiness",
        "servers",
        "phases",
        "windows",
    }
    assert set(first["latency_seconds"]) == {"mean", "p50", "p90", "p99", "max"}
    assert list(first["servers"]) == document["servers"]
    window = first["windows"][0]
    assert set(window) == {"start", "end", "requests", "p50", "p99", "requests_per_server"}
    assert list(window["requests_per_server"]) == document["servers"]
    assert window["requests"] == sum(window["requests_per_server"].values())
    # The table shows "-" for stickiness where a strategy does not hash keys; JSON says null.
    stickiness = {s["label"]: s["stickiness"] for s in document["strategies"]}
    assert [label for label, value in stickiness.items() if value is not None] == [
        "ring_hash",
        "maglev",
    ]
    assert all(set(s) == set(first) for s in document["strategies"])  # the same keys in each


def test_json_is_identical_for_the_same_seed(capsys: pytest.CaptureFixture[str]) -> None:
    outputs = []
    for seed in ("4", "4", "5"):
        assert main(["simulate", "--json", "--seed", seed, *FAST]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]
    assert outputs[0] != outputs[2]


def test_table_shows_every_strategy_and_server(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", *FAST]) == 0
    out = capsys.readouterr().out
    for text in ("round_robin", "peak_ewma", "p99 ms", "s01", "s10", "seed 1"):
        assert text in out
    assert "{" not in out  # a table, not JSON


def test_quiet_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--quiet", *FAST]) == 0
    assert capsys.readouterr() == ("", "")


def test_plot_writes_a_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "out.png"
    assert main(["simulate", "--plot", str(target), "--json", *FAST]) == 0
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out, err = capsys.readouterr()
    json.loads(out)  # the status line goes to stderr, keeping stdout valid JSON
    assert str(target) in err


def test_plot_of_a_run_without_requests_warns_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], recwarn: pytest.WarningsRecorder
) -> None:
    """No request, so no latency: the log axes still get a range, and matplotlib no warning."""
    path = tmp_path / "none.toml"
    path.write_text(
        'duration = 1.0\nstrategies = ["rr"]\n[arrivals]\nrate = 0.001\n'
        '[[servers]]\nname = "a"\ncapacity = 1\nlatency = { mean = 0.01 }\n',
        encoding="utf-8",
    )
    target = tmp_path / "none.png"
    assert main(["simulate", str(path), "--quiet", "--plot", str(target)]) == 0
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [str(w.message) for w in recwarn] == []
    assert capsys.readouterr() == ("", "")


def test_scenario_file_and_strategy_labels(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(
        """
        duration = 2.0
        seed = 9
        strategies = ["random", { name = "power_of_two_choices", label = "p3c", choices = 3 }]
        [arrivals]
        rate = 100.0
        [[servers]]
        name = "x"
        capacity = 2
        latency = { mean = 0.01 }
        [[servers]]
        name = "y"
        capacity = 2
        latency = { mean = 0.01 }
        """,
        encoding="utf-8",
    )
    assert main(["simulate", str(path), "--json", "--strategies", "p3c"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["scenario"]["name"] == "mine"
    assert document["seed"] == 9
    (only,) = document["strategies"]
    assert only["label"] == "p3c"
    assert only["strategy"] == "PowerOfTwoChoicesStrategy(choices=3)"
    assert only["stickiness"] is None


def test_strategies_accepts_aliases_and_reports_canonical_names(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["simulate", "--json", "--duration", "1", "--strategies", "p2c,EWMA,rr"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert [(s["label"], s["strategy"]) for s in document["strategies"]] == [
        ("power_of_two_choices", "PowerOfTwoChoicesStrategy()"),
        ("peak_ewma", "PeakEWMAStrategy()"),
        ("round_robin", "RoundRobinStrategy()"),
    ]


def test_an_alias_selects_the_scenarios_entry_for_its_strategy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "tuned.toml"
    path.write_text(
        'duration = 1.0\nstrategies = [{ name = "p2c", choices = 3 }, "random"]\n'
        '[arrivals]\nrate = 50.0\n[[servers]]\nname = "x"\ncapacity = 2\n'
        "latency = { mean = 0.01 }\n",
        encoding="utf-8",
    )
    # The entry named p2c is labelled power_of_two_choices, and --strategies p2c means it.
    assert main(["simulate", str(path), "--json", "--strategies", "least_request"]) == 0
    (only,) = json.loads(capsys.readouterr().out)["strategies"]
    assert (only["label"], only["strategy"]) == (
        "power_of_two_choices",
        "PowerOfTwoChoicesStrategy(choices=3)",
    )


ERRORS = [
    (["simulate", "--bogus"], "unrecognized arguments: --bogus"),
    (["simulate", "--seed", "x"], "--seed: invalid int value"),
    (["simulate", "--duration", "-1"], "--duration: must be a positive number"),
    (["simulate", "--duration", "abc"], "--duration: not a number"),
    (["simulate", "no/such/file.toml"], "cannot read no/such/file.toml"),
    (["simulate", "--strategies", "round_robin,nope"], "--strategies: unknown strategy 'nope'"),
    (["simulate", "--strategies", "random,random"], "--strategies: 'random' given twice"),
    (
        ["simulate", "--strategies", "p2c,power_of_two_choices"],
        "'power_of_two_choices' given twice",
    ),
    (["simulate", "--strategies", "ketama"], "unknown strategy 'ketama' (choose from: round_robin"),
    (["simulate", "--strategies", "random,"], "--strategies: empty name"),
    (["simulate", "--plot", "no/such/dir/x.png"], "--plot: directory 'no/such/dir' does not exist"),
    (["simulate", "--plot", "out.svg"], "--plot: draws a PNG: name it FILE.png, not 'out.svg'"),
    (["simulate", "--plot", "out"], "--plot: draws a PNG: name it FILE.png, not 'out'"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    ([], "the following arguments are required: COMMAND"),
]


@pytest.mark.parametrize(("argv", "message"), ERRORS, ids=[" ".join(a) for a, _ in ERRORS])
def test_usage_errors_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert message in err
    assert "Traceback" not in err


def test_bad_scenario_file_is_one_line_with_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        'duration = 5\n[arrivals]\nrate = 1\n[[servers]]\nname = "a"\ncapacity = 1\n'
        "latency = { mean = -0.5 }\n",
        encoding="utf-8",
    )
    assert main(["simulate", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"loadbalancer simulate: error: {path}: "
        "servers[0].latency.mean: must be a positive number, got -0.5\n"
    )


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--help"]) == 0
    assert "--strategies" in capsys.readouterr().out


def test_python_dash_m_runs_the_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "loadbalancer.cli", "simulate", "--json", "--quiet", *FAST],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["strategies"]


def test_report_to_a_terminal_console() -> None:
    scenario = default_scenario().replace(duration=1.0)
    results = run_scenario(scenario)
    buffer = io.StringIO()
    print_report(scenario, results, Console(file=buffer, width=140, force_terminal=True))
    assert "maglev" in buffer.getvalue() or "peak_ewma" in buffer.getvalue()


def test_progress_bar_appears_only_after_its_delay() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=100)
    with LazyProgress(console, delay=3600.0) as never:
        never("round_robin", 0.5)
    assert buffer.getvalue() == ""
    with LazyProgress(console, delay=0.0) as progress:
        progress("round_robin", 0.25)
        progress("peak_ewma", 0.75)
    assert "peak_ewma" in buffer.getvalue()


def test_a_missing_optional_dependency_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = importlib.util.find_spec

    def without_matplotlib(name: str, package: str | None = None) -> ModuleSpec | None:
        return None if name == "matplotlib" else real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", without_matplotlib)
    assert main(["simulate", "--plot", str(tmp_path / "x.png"), *FAST]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "loadbalancer simulate: error: --plot needs matplotlib: pip install 'loadbalancer[plot]'\n"
    )
