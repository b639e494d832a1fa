"""The README shows what the code does: its Python blocks run, its sample output is current.

The `loadbalancer simulate` sample is the command's real output (the simulation is
deterministic), and the sentence about its figures is derived from it. After a change that
moves the numbers, regenerate both with:

    .venv/bin/python -m tests.test_readme
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import os
import re
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from loadbalancer.cli import main

README = Path(__file__).resolve().parent.parent / "README.md"
TEXT = README.read_text(encoding="utf-8")
BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, re.DOTALL)

COMMAND = "$ loadbalancer simulate"
SAMPLE = re.compile(r"(```text\n" + re.escape(COMMAND) + r"\n)(.*?)(```)", re.DOTALL)
FIGURES = re.compile(r"(the hashing ones keep )(\d+(?:-\d+)?)(% of keys on their server)")
HASHING = ("ring_hash", "maglev")
BLIND = ("round_robin", "random", "weighted_round_robin")
AWARE = ("least_connections", "power_of_two_choices", "peak_ewma")

# What rich reads from the environment to decide on colour, a terminal and the width.
_RICH_ENVIRONMENT = (
    "COLUMNS",
    "LINES",
    "FORCE_COLOR",
    "TTY_COMPATIBLE",
    "TTY_INTERACTIVE",
    "JUPYTER_COLUMNS",
    "JUPYTER_LINES",
)


def test_readme_has_python_blocks() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_block_runs(block: str) -> None:
    namespace: dict[str, Any] = {"__name__": "readme"}
    exec(compile(block, str(README), "exec"), namespace)
    for name, run_live in LIVE.items():  # a registry example: run it against a real one
        if name in namespace:
            run_live(namespace[name])


def _follow_dns(follow_dns: Callable[[str], Coroutine[Any, Any, Any]]) -> None:
    from .dns_server import DnsTestServer

    name = "inventory.default.svc.cluster.local"
    with DnsTestServer() as server:
        server.set_a(name, ["10.0.0.1", "10.0.0.2"])
        server.set_srv(f"_http._tcp.{name}", [(10, 3, 8080, name), (10, 1, 8081, name)])
        host, port = server.nameserver
        pods, weighted = asyncio.run(follow_dns(f"{host}:{port}"))
    assert pods == ("10.0.0.1:8080", "10.0.0.2:8080")
    assert set(weighted) == {"10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.1:8081", "10.0.0.2:8081"}


def _follow_etcd(follow_etcd: Callable[[str, int], None]) -> None:
    from .etcd_server import EtcdServer

    with EtcdServer() as etcd:
        follow_etcd(etcd.host, etcd.client_port)


# Registry examples define a function of the registry's address, with a __main__ guard for
# readers; the test calls it against a real registry started here.
LIVE: dict[str, Callable[[Any], None]] = {"follow_dns": _follow_dns, "follow_etcd": _follow_etcd}


# -- the `loadbalancer simulate` sample -------------------------------------------------------


@functools.lru_cache(maxsize=1)
def simulate_output() -> str:
    """What ``loadbalancer simulate`` prints into a pipe: plain text, 80 columns, no bar."""
    out = io.StringIO()  # not a terminal: no colour, no progress bar
    with mock.patch.dict(os.environ), contextlib.redirect_stdout(out):
        for name in _RICH_ENVIRONMENT:
            os.environ.pop(name, None)
        assert main(["simulate"]) == 0
    return out.getvalue()


def sample(output: str) -> str:
    """The part of ``output`` the README shows: all of it, without trailing spaces."""
    return "".join(f"{line.rstrip()}\n" for line in output.splitlines())


def readme_sample(text: str) -> str:
    found = SAMPLE.search(text)
    assert found is not None, f"README has no ```text block starting with {COMMAND!r}"
    return "".join(f"{line.rstrip()}\n" for line in found.group(2).splitlines())


def rows(output: str) -> dict[str, list[str]]:
    """The first table's cells by strategy: p50, p99, mean, errors, peak, sticky."""
    table = output.split("\n\n")[1].splitlines()[2:]  # past the title and the header
    known = {*BLIND, *AWARE, *HASHING}
    return {cells[0]: cells[1:] for cells in (line.split() for line in table) if cells[0] in known}


def figures(output: str) -> str:
    """How much the hashing strategies keep sticky, in percent: ``91-95``, or ``93``."""
    sticky = rows(output)
    shares = sorted(round(float(sticky[name][5])) for name in HASHING)
    return f"{shares[0]}" if shares[0] == shares[-1] else f"{shares[0]}-{shares[-1]}"


def regenerate(text: str, output: str) -> str:
    """``text`` (the README) with its sample and the figures about it taken from ``output``."""
    text = SAMPLE.sub(lambda m: m.group(1) + sample(output) + m.group(3), text, count=1)
    return FIGURES.sub(lambda m: m.group(1) + figures(output) + m.group(3), text, count=1)


HOW = "regenerate it: .venv/bin/python -m tests.test_readme"


def test_sample_output_is_what_the_command_prints() -> None:
    assert readme_sample(TEXT) == sample(simulate_output()), HOW


def test_figures_in_the_text_are_the_samples() -> None:
    found = FIGURES.search(TEXT)
    assert found is not None, "the sentence about the hashing strategies' stickiness is gone"
    assert found.group(2) == figures(simulate_output()), HOW


def test_claims_about_the_sample_hold() -> None:
    # "The blind strategies queue up behind the slow server until requests time out at 1 s;
    # the load- and latency-aware ones route around it": p99 at the timeout, or well below.
    table = rows(simulate_output())
    assert set(table) == {*BLIND, *AWARE, *HASHING}
    p99 = {name: cells[1] for name, cells in table.items()}
    assert all(p99[name] == "timeout" for name in BLIND), p99
    assert all(float(p99[name].replace(",", "")) < 500.0 for name in AWARE), p99
    assert "time out at 1 s" in TEXT
    assert "timeout: the 1 s timeout itself, not a latency" in simulate_output()


def test_regenerate_rewrites_only_the_sample_and_figures() -> None:
    stale = TEXT.replace("\nmaglev ", "\nmaglev   999.9 ").replace(
        f"keep {figures(simulate_output())}%", "keep 1-2%"
    )
    assert stale != TEXT
    assert regenerate(stale, simulate_output()) == regenerate(TEXT, simulate_output())
    assert regenerate(TEXT, simulate_output()).count("\n") == TEXT.count("\n")


# -- the `loadbalancer simulate --plot` pictures ----------------------------------------------

MAKEFILE = README.parent / "Makefile"


def plot_commands() -> list[list[str]]:
    """The commands of `make plot`, each as its arguments after `loadbalancer`."""
    recipe = re.search(r"^plot:.*\n((?:\t.*\n)+)", MAKEFILE.read_text(encoding="utf-8"), re.M)
    assert recipe is not None, "the Makefile has no plot target"
    commands = [line.split() for line in recipe.group(1).splitlines()]
    assert all(c[0] == "$(BIN)/loadbalancer" and "--plot" in c for c in commands), commands
    return [c[1:] for c in commands]


def test_make_plot_draws_what_the_readme_shows() -> None:
    drawn = [c[c.index("--plot") + 1] for c in plot_commands()]
    shown = re.findall(r"\]\((docs/[^)]+\.png)\)", TEXT)
    assert sorted(set(shown)) == sorted(drawn)  # every picture shown is drawn, and the reverse
    assert "![" in TEXT.split(f"]({drawn[0]})")[0].rsplit("\n", 1)[-1]  # the first, embedded
    for path in drawn:
        assert (README.parent / path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    # The embedded picture is of the run the sample shows: the default scenario and seed.
    assert plot_commands()[0] == ["simulate", "--quiet", "--plot", drawn[0]]


def _png_texts(data: bytes) -> dict[str, str]:
    """The tEXt chunks of a PNG, keyword to text."""
    texts: dict[str, str] = {}
    at = 8  # after the signature: chunks of length, type, data and CRC
    while at < len(data):
        length = int.from_bytes(data[at : at + 4], "big")
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        if kind == b"tEXt":
            keyword, _, text = body.partition(b"\0")
            texts[keyword.decode("latin-1")] = text.decode("latin-1")
        at += 12 + length
    return texts


@pytest.mark.parametrize("command", plot_commands(), ids=lambda c: c[c.index("--plot") + 1])
def test_committed_pictures_draw_what_the_code_draws(command: list[str]) -> None:
    # Pixels depend on matplotlib's version, so the picture carries a digest of what it draws
    # (every panel's titles, texts and values): the run is redone and drawn, not rendered.
    pytest.importorskip("matplotlib")
    from loadbalancer.cli.simulate import plot
    from loadbalancer.cli.simulate.engine import run_scenario
    from loadbalancer.cli.simulate.scenario import default_scenario, load_scenario

    files = [a for a in command[1:] if a.endswith(".toml")]
    assert command == ["simulate", *files, "--quiet", "--plot", command[-1]], command
    scenario = load_scenario(README.parent / files[0]) if files else default_scenario()
    drawn = plot.digest(plot.draw(scenario, run_scenario(scenario)))
    committed = _png_texts((README.parent / command[-1]).read_bytes())
    assert committed.get(plot.DIGEST_KEY) == drawn, "run: make plot"


def test_the_digest_tells_a_different_picture() -> None:
    pytest.importorskip("matplotlib")
    from loadbalancer.cli.simulate import plot
    from loadbalancer.cli.simulate.engine import run_scenario
    from loadbalancer.cli.simulate.scenario import default_scenario

    scenario = default_scenario(duration=2.0)
    results = run_scenario(scenario)
    same = plot.digest(plot.draw(scenario, results))
    assert plot.digest(plot.draw(scenario, results)) == same  # deterministic
    assert plot.digest(plot.draw(scenario, run_scenario(scenario, seed=2))) != same
    renamed = scenario.replace(name="other")
    assert plot.digest(plot.draw(renamed, results)) != same


def test_usage_line_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    usage = re.search(r"^loadbalancer simulate \[SCENARIO\.toml\].*?```", TEXT, re.DOTALL | re.M)
    assert usage is not None
    flags = set(re.findall(r"--[a-z]+", usage.group(0)))
    assert main(["simulate", "--help"]) == 0
    assert flags <= set(re.findall(r"--[a-z]+", capsys.readouterr().out))
    (example,) = re.findall(r"--strategies (\S+?)\]", usage.group(0))
    assert main(["simulate", "--quiet", "--duration", "0.5", "--strategies", example]) == 0


if __name__ == "__main__":
    README.write_text(regenerate(TEXT, simulate_output()), encoding="utf-8")
    print(f"{README}: sample and figures regenerated (the pictures: make plot)")
