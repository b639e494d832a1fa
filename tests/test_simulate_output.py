"""What `loadbalancer simulate` shows people: the terminal tables, the plot, the servers' roles.

Each pain point of issue 16 has a test here: a timeout is never "best", the tables fit 80
columns, every symbol is explained, stickiness is shown only where it means something, the
units are one per column, the plot shows error rates, the timeout, time series, one colour
scale and the servers' roles.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.collections import QuadMesh
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.patches import Rectangle, StepPatch
from rich.console import Console

from loadbalancer.cli.simulate import (
    Results,
    Scenario,
    default_scenario,
    load_scenario,
    run_scenario,
)
from loadbalancer.cli.simulate.plot import draw, plot_results
from loadbalancer.cli.simulate.registry import STRATEGIES, hashes_keys
from loadbalancer.cli.simulate.report import _best, print_report
from loadbalancer.cli.simulate.roles import incidents, server_roles
from loadbalancer.cli.simulate.scenario import Change, Latency, StrategySpec

EXAMPLES = sorted(
    (Path(__file__).resolve().parent.parent / "examples" / "scenarios").glob("*.toml")
)
SCENARIOS: dict[str, Callable[[], Scenario]] = {
    "default": default_scenario,
    **{p.stem: functools.partial(load_scenario, p) for p in EXAMPLES},
}


@functools.cache
def short_run(name: str, duration: float = 3.0) -> tuple[Scenario, Results]:
    """Scenario ``name`` cut to ``duration`` seconds, and its results."""
    scenario = SCENARIOS[name]().replace(duration=duration)
    return scenario, run_scenario(scenario)


@functools.lru_cache(maxsize=1)
def default_run() -> tuple[Scenario, Results]:
    """The default scenario, whole: the run the README shows."""
    scenario = default_scenario()
    return scenario, run_scenario(scenario)


def report(scenario: Scenario, results: Results, *, colour: bool = False, width: int = 80) -> str:
    buffer = io.StringIO()
    console = Console(
        file=buffer, width=width, force_terminal=colour, color_system="standard" if colour else None
    )
    print_report(scenario, results, console)
    return buffer.getvalue()


def summary_lines(text: str) -> tuple[list[str], list[list[str]], list[str]]:
    """The first table's header, its rows' cells, and the legend lines beneath it."""
    block = text.split("\n\n")[1].splitlines()
    assert block[0].strip() == "Latency and errors"
    header = re.split(r"\s{2,}", block[1].strip())
    rows: list[str] = []
    legend: list[str] = []
    for line in block[2:]:
        (legend if ": " in line else rows).append(line)
    cells = [line.split() for line in rows]
    assert all(len(row) == len(header) for row in cells), rows  # no line wrapped
    return header, cells, legend


# -- the terminal -----------------------------------------------------------------------------


def test_best_never_goes_to_the_timeout() -> None:
    assert _best([1.0, 0.2, 1.0], cap=1.0) == {1}
    assert _best([1.0, 1.0], cap=1.0) == set()  # all timed out: none is best
    assert _best([0.3, 0.3, 0.5]) == {0, 1}


def test_a_p99_at_the_timeout_is_shown_as_timeout_and_never_highlighted() -> None:
    scenario, results = default_run()
    assert scenario.timeout is not None
    at_cap = [r.label for r in results.strategies if r.latency.p99 >= scenario.timeout]
    assert at_cap  # the blind strategies time out: the case under test
    text = report(scenario, results, colour=True)
    green = re.findall(r"\x1b\[1;32m([^\x1b]*)\x1b", text)
    assert len(green) >= 4  # the best p50, p99, mean and error rate
    assert "timeout" not in green
    plain = report(scenario, results)
    _, rows, _ = summary_lines(plain)
    p99 = {cells[0]: cells[2] for cells in rows}
    assert [label for label, cell in p99.items() if cell == "timeout"] == at_cap


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_table_fits_80_columns_without_wrapping_a_row(name: str) -> None:
    scenario, results = short_run(name)
    text = report(scenario, results)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" not in text  # nothing cut short
    labels = [r.label for r in results.strategies]
    # Every table shows each strategy on one line of its own, its label whole.
    tables = text.count("\nstrategy ")
    assert tables >= 2
    for label in labels:
        assert sum(line.split()[:1] == [label] for line in lines) >= tables
    for server in results.servers:  # every server's column is there, its name whole
        assert re.search(rf"(^|\s){re.escape(server)}(\s|$)", text, re.M)


def test_many_servers_are_split_over_tables_that_fit() -> None:
    scenario, results = short_run("hot_keys")
    text = report(scenario, results)
    headers = [line.split()[1:] for line in text.splitlines() if line.startswith("strategy ")]
    share_headers = [h for h in headers[1:] if h and h[0].startswith("cache-")]
    assert len(share_headers) == 2  # eight servers of 7 letters do not fit in one
    assert [s for h in share_headers for s in h] == list(results.servers)
    wide = report(scenario, results, width=140)
    assert sum(line.startswith("strategy ") for line in wide.splitlines()) == len(headers) - 1


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_the_legend_explains_every_column_and_symbol(name: str) -> None:
    scenario, results = short_run(name)
    header, rows, legend = summary_lines(report(scenario, results))
    explained = " ".join(line.split(": ")[0] for line in legend)
    for column in header[1:]:
        name_only = column.split()[0]  # "p99 ms" is explained as p99
        assert name_only in explained, (column, legend)
    symbols = {cell for cells in rows for cell in cells[1:] if not re.fullmatch(r"[\d,.]+", cell)}
    for symbol in symbols:  # timeout, -: anything that is not a number
        assert any(line.startswith(f"{symbol}: ") for line in legend), (symbol, legend)


def test_colour_is_explained_only_where_there_is_colour() -> None:
    scenario, results = short_run("default")
    assert "green:" in report(scenario, results, colour=True)
    assert "green" not in report(scenario, results)


def test_each_measure_has_one_unit_in_its_header_and_none_in_its_cells() -> None:
    scenario, results = default_run()
    header, rows, _ = summary_lines(report(scenario, results))
    assert header == ["strategy", "p50 ms", "p99 ms", "mean ms", "errors %", "peak", "sticky %"]
    for cells in rows:
        assert not any(unit in cell for cell in cells[1:] for unit in ("%", "ms", "s"))
    text = report(scenario, results)
    assert "Requests per server (%)" in text
    share_rows = [line.split() for line in text.split("\n\n")[2].splitlines()[2:]]
    for cells in share_rows[: len(results.strategies)]:
        assert all(re.fullmatch(r"\d+\.\d", cell) for cell in cells[1:]), cells


def test_stickiness_is_shown_only_for_strategies_that_hash() -> None:
    scenario, results = default_run()
    header, rows, _ = summary_lines(report(scenario, results))
    sticky = {cells[0]: cells[header.index("sticky %")] for cells in rows}
    for spec in scenario.strategies:
        if hashes_keys(spec.name):
            assert float(sticky[spec.label]) > 85  # ring_hash and maglev keep keys in place
        else:
            assert sticky[spec.label] == "-"
    # Without a strategy that hashes, there is no column at all.
    blind = scenario.replace(duration=1.0, strategies=(StrategySpec("random", "random"),))
    header, _, legend = summary_lines(report(blind, run_scenario(blind)))
    assert "sticky %" not in header
    assert not any(line.startswith(("sticky", "-")) for line in legend)


def test_hashes_keys_names_exactly_the_consistent_hashing_strategies() -> None:
    hashing = {name for name in STRATEGIES if hashes_keys(name)}
    assert hashing == {"ring_hash", "maglev", "rendezvous"}


def test_ejections_are_spelled_out() -> None:
    scenario, results = default_run()
    text = report(scenario, results)
    assert "Ejections by outlier detection" in text
    assert "servers (times ejected)" in text
    maglev = results.strategy("maglev")
    line = next(
        line for line in text.split("Ejections")[1].splitlines() if line.startswith("maglev ")
    )
    for server in {e.server for e in maglev.ejections}:
        count = sum(e.server == server for e in maglev.ejections)
        assert f"{server} ({count})" in line
    # Peak EWMA keeps off the slow server, and the failing one fails only after 10 s.
    quiet = scenario.replace(duration=5.0, strategies=(StrategySpec("peak_ewma", "peak_ewma"),))
    assert "Outlier detection ejected no server." in report(quiet, run_scenario(quiet))


def test_the_report_names_each_servers_role() -> None:
    scenario, results = short_run("default")
    assert "s01: 2x size; s05: 5x slower" in report(scenario, results)


# -- roles ------------------------------------------------------------------------------------


def test_roles_of_the_shipped_scenarios() -> None:
    assert {k: v for k, v in server_roles(default_scenario()).items() if v} == {
        "s01": "2x size",
        "s05": "5x slower",
        "s08": "fails 50% 10-20 s",
    }
    roles = {name: server_roles(make()) for name, make in SCENARIOS.items()}
    assert roles["slow_down"]["db-3"] == "10x slower 10-25 s"
    assert roles["fast_failures"]["api-4"] == "fails 50% in 1 ms"
    assert not any(roles["hot_keys"].values())  # eight identical servers


def test_roles_describe_every_difference() -> None:
    base = default_scenario()
    typical = base.servers[1]
    usual = typical.behaviour
    odd = [
        dataclasses.replace(typical, name="heavy", weight=3.0),
        dataclasses.replace(typical, name="big", behaviour=dataclasses.replace(usual, capacity=8)),
        dataclasses.replace(
            typical,
            name="quick",
            behaviour=dataclasses.replace(usual, latency=Latency(usual.latency.mean / 2)),
        ),
        dataclasses.replace(
            typical,
            name="steady",
            behaviour=dataclasses.replace(usual, latency=Latency(usual.latency.mean, "constant")),
        ),
        dataclasses.replace(
            typical,
            name="late",
            changes=(Change(25.0, dataclasses.replace(usual, failure_rate=0.125)),),
        ),
    ]
    scenario = base.replace(servers=(*base.servers[1:4], *odd))
    roles = server_roles(scenario)
    assert roles["heavy"] == "3x weight"
    assert roles["big"] == "2x capacity"
    assert roles["quick"] == "2x faster"
    assert roles["steady"] == "constant latency"
    assert roles["late"] == "fails 12.5% from 25 s"
    (late,) = incidents(scenario)
    assert (late.server, late.start, late.end, late.until_the_end) == ("late", 25.0, 30.0, True)


def test_changes_past_the_run_or_back_to_the_start_are_no_incident() -> None:
    base = default_scenario()
    server = base.servers[1]
    slow = dataclasses.replace(server.behaviour, latency=Latency(1.0))
    changes = (Change(5.0, server.behaviour), Change(40.0, slow))  # a no-op, then too late
    scenario = base.replace(servers=(dataclasses.replace(server, changes=changes),))
    assert incidents(scenario) == ()
    assert server_roles(scenario) == {server.name: ""}
    # Two changes in a row to the same behaviour are one incident.
    again = dataclasses.replace(slow, capacity=server.behaviour.capacity)
    both = (Change(5.0, slow), Change(8.0, again), Change(12.0, server.behaviour))
    scenario = base.replace(servers=(dataclasses.replace(server, changes=both),))
    (incident,) = incidents(scenario)
    assert (incident.start, incident.end, incident.span) == (5.0, 12.0, "5-12 s")


# -- the plot ---------------------------------------------------------------------------------


def axes_titled(figure: Figure, title: str) -> Axes:
    found = [a for a in figure.get_axes() if title in (a.get_title(), a.get_title(loc="left"))]
    assert len(found) == 1, title
    return found[0]


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_plot_draws_every_example_scenario(name: str, tmp_path: Path) -> None:
    scenario, results = short_run(name, 2.0)
    target = tmp_path / f"{name}.png"
    plot_results(scenario, results, target)
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_shows_error_rates_and_marks_p99s_at_the_timeout() -> None:
    scenario, results = default_run()
    figure = draw(scenario, results)
    errors = axes_titled(figure, "Failed requests")
    # The stacked bars add up to each strategy's error rate.
    heights = [0.0] * len(results.strategies)
    for bar in errors.patches:
        assert isinstance(bar, Rectangle)
        heights[round(bar.get_x() + bar.get_width() / 2)] += bar.get_height()
    for result, height in zip(results.strategies, heights, strict=True):
        assert height == pytest.approx(result.error_rate * 100)
    latency = axes_titled(figure, "Latency over the whole run")
    assert scenario.timeout is not None
    cap = scenario.timeout * 1000
    assert any(tuple(np.asarray(line.get_ydata())) == (cap, cap) for line in latency.get_lines())
    hatched = [p for p in latency.patches if p.get_gid() == "timeout"]
    assert len(hatched) == sum(r.latency.p99 >= scenario.timeout for r in results.strategies)
    assert all(p.get_hatch() for p in hatched)
    texts = [t.get_text() for t in latency.texts]
    assert texts.count("timeout") == len(hatched)


def test_plot_has_a_panel_over_time_per_strategy_with_the_incidents_shaded() -> None:
    scenario, results = short_run("slow_down", 30.0)
    figure = draw(scenario, results)
    for result in results.strategies:
        panel = axes_titled(figure, result.label)
        assert panel.get_yscale() == "log"
        stairs = [p for p in panel.patches if isinstance(p, StepPatch)]
        assert [s.get_gid() for s in stairs] == ["p50", "p99"]
        assert all(len(s.get_data()[0]) == len(result.windows) for s in stairs)
        (shaded,) = [p for p in panel.patches if p.get_gid() == "incident"]
        to_data = panel.transData.inverted()
        assert tuple(round(x) for x in to_data.transform_bbox(shaded.get_extents()).intervalx) == (
            10,
            25,
        )  # db-3's slow spell
    legends = [legend for part in figure.subfigs for legend in part.legends]
    legend = [text.get_text() for found in legends for text in found.get_texts()]
    assert "db-3 10x slower (10-25 s)" in legend


def test_plot_uses_one_colour_scale_and_labels_servers_with_their_roles() -> None:
    scenario, results = default_run()
    figure = draw(scenario, results)
    heatmaps = [
        artist
        for axes in figure.get_axes()
        if axes.get_label() != "<colorbar>"  # a colorbar draws its own QuadMesh
        for artist in axes.get_children()
        if isinstance(artist, (AxesImage, QuadMesh))
    ]
    assert len(heatmaps) == 1 + len(results.strategies)
    assert len({(h.norm.vmin, h.norm.vmax) for h in heatmaps}) == 1
    assert len({h.get_cmap().name for h in heatmaps}) == 1
    shares = axes_titled(figure, "Share of requests per server (%)")
    labels = [t.get_text() for t in shares.get_yticklabels()]
    assert labels[0] == "s01 (2x size)"
    assert labels[4] == "s05 (5x slower)"
    assert labels[7] == "s08 (fails 50% 10-20 s)"
