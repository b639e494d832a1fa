"""Results for people (rich tables) and for programs (a JSON document with stable keys)."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from .results import Results, StrategyResult
from .scenario import Scenario

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

__all__ = ["JSON_VERSION", "print_report", "to_json"]

JSON_VERSION = 1
"""The version of the JSON document's layout; it changes only when keys change meaning."""


def _r(value: float) -> float:
    """Rounded for output: microseconds and shares to one in a million are plenty."""
    return round(value, 6)


def _strategy_json(
    result: StrategyResult, servers: tuple[str, ...], hashed: bool
) -> dict[str, Any]:
    """One strategy's results; ``stickiness`` is null unless it hashes keys (as the table's
    ``-``: for the others it is chance, not a property of the strategy)."""
    latency = result.latency
    sticky = result.stickiness if hashed else None
    return {
        "label": result.label,
        "strategy": result.strategy,
        "requests": result.requests,
        "failures": result.failures,
        "error_rate": _r(result.error_rate),
        "timeouts": result.timeouts,
        "unavailable": result.unavailable,
        "latency_seconds": {
            "mean": _r(latency.mean),
            "p50": _r(latency.p50),
            "p90": _r(latency.p90),
            "p99": _r(latency.p99),
            "max": _r(latency.max),
        },
        "peak_in_flight": result.peak_in_flight,
        "ejections": len(result.ejections),
        "ejection_events": [
            {"at": _r(e.at), "server": e.server, "detail": e.detail} for e in result.ejections
        ],
        "stickiness": None if sticky is None else _r(sticky),
        "servers": {
            s.server: {
                "requests": s.requests,
                "share": _r(s.share),
                "failures": s.failures,
                "peak_in_flight": s.peak_in_flight,
                "ejections": s.ejections,
            }
            for s in result.servers
        },
        "phases": [
            {
                "start": _r(p.start),
                "end": _r(p.end),
                "requests": p.requests,
                "shares": {name: _r(share) for name, share in zip(servers, p.shares, strict=True)},
            }
            for p in result.phases
        ],
        "windows": [
            {
                "start": _r(w.start),
                "end": _r(w.end),
                "requests": w.requests,
                "p50": None if w.p50 is None else _r(w.p50),
                "p99": None if w.p99 is None else _r(w.p99),
                "requests_per_server": dict(zip(servers, w.sent, strict=True)),
            }
            for w in result.windows
        ],
    }


def to_json(scenario: Scenario, results: Results) -> dict[str, Any]:
    """The results as a JSON-ready document; times in seconds, shares and rates as fractions."""
    hashing = _hashing(scenario)
    return {
        "version": JSON_VERSION,
        "scenario": {
            "name": scenario.name,
            "description": scenario.description,
            "duration": _r(results.duration),
            "arrival_rate": _r(scenario.arrivals.rate),
            "timeout": scenario.timeout,
            "keys": None if scenario.keys is None else scenario.keys.population,
            "outlier_detection": scenario.outlier_detection is not None,
        },
        "seed": results.seed,
        "servers": list(results.servers),
        "strategies": [
            _strategy_json(r, results.servers, r.label in hashing) for r in results.strategies
        ],
    }


# -- the terminal ---------------------------------------------------------------------------

_STYLE: dict[str, Any] = {
    "title_justify": "left",
    "header_style": "bold",
    "box": None,
    "pad_edge": False,
}
_GAP = 2  # columns between two cells of a table drawn with _STYLE: one pad on either side
_TIMEOUT = "timeout"
_NOT_HASHED = "-"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f}"


def _latency(seconds: float, timeout: float | None) -> str:
    """``seconds`` in milliseconds, or ``timeout`` where the timeout is all it measures."""
    return _TIMEOUT if timeout is not None and seconds >= timeout else _ms(seconds)


def _ejected(result: StrategyResult) -> str:
    """Which servers were ejected and how many times: ``s05 (3), s08 (2)``."""
    counts = Counter(e.server for e in result.ejections)
    return ", ".join(f"{server} ({n})" for server, n in sorted(counts.items()))


def _best(values: list[float], cap: float | None = None) -> set[int]:
    """Indexes of the lowest values, to highlight; a value at ``cap`` (the timeout) never is.

    A p99 at the timeout says only that over 1% of requests timed out: the lowest of those is
    no better than the others, and none of them is a latency.
    """
    candidates = [v for v in values if cap is None or v < cap]
    lowest = min(candidates, default=None)
    return {i for i, v in enumerate(values) if v == lowest}


def _hashing(scenario: Scenario) -> set[str]:
    """The labels of the scenario's strategies that hash keys."""
    from .registry import hashes_keys

    return {spec.label for spec in scenario.strategies if hashes_keys(spec.name)}


def _summary(scenario: Scenario, results: Results, colour: bool) -> tuple[Table, list[str]]:
    """The table of latency and errors, and the lines explaining it."""
    from rich.table import Table

    rows = results.strategies
    timeout = scenario.timeout
    hashing = _hashing(scenario)
    sticky = any(r.label in hashing and r.stickiness is not None for r in rows)
    table = Table(title="Latency and errors", **_STYLE)
    table.add_column("strategy")
    headers = ["p50 ms", "p99 ms", "mean ms", "errors %", "peak"]
    for name in [*headers, *(["sticky %"] if sticky else [])]:
        table.add_column(name, justify="right")
    best = [
        _best([r.latency.p50 for r in rows], timeout),
        _best([r.latency.p99 for r in rows], timeout),
        _best([r.latency.mean for r in rows], timeout),
        _best([r.error_rate for r in rows]),
    ]
    for i, r in enumerate(rows):
        measures = [
            _latency(r.latency.p50, timeout),
            _latency(r.latency.p99, timeout),
            _latency(r.latency.mean, timeout),
            f"{r.error_rate * 100:.2f}",
        ]
        cells = [
            f"[bold green]{text}[/bold green]" if i in column else text
            for text, column in zip(measures, best, strict=True)
        ]
        cells.append(str(r.peak_in_flight))
        if sticky:
            hashed = r.label in hashing and r.stickiness is not None
            cells.append(f"{(r.stickiness or 0.0) * 100:.1f}" if hashed else _NOT_HASHED)
        table.add_row(r.label, *cells)

    notes = ["p50, p99, mean: latency clients saw, in ms (a timeout counts as the timeout)"]
    if timeout is not None and any(r.latency.p99 >= timeout for r in rows):  # p99 first
        notes.append(
            f"timeout: the {timeout:g} s timeout itself, not a latency: 1% or more timed out"
        )
    notes.append("errors %: requests that failed, timed out or found no server")
    notes.append("peak: the most requests in flight on one server at once")
    if sticky:
        notes.append("sticky %: keyed requests that reached their key's usual server")
        if any(r.label not in hashing for r in rows):
            notes.append(f"{_NOT_HASHED}: the strategy does not hash keys, so stickiness is chance")
    if colour:
        notes.append("green: the lowest in its column; a timeout never is")
    return table, notes


def _share_tables(results: Results, width: int) -> list[Table]:
    """Where requests went, in as many tables as it takes to fit ``width`` columns."""
    from rich.table import Table

    rows = results.strategies
    servers = results.servers
    cells = [[f"{s.share * 100:.1f}" for s in r.servers] for r in rows]
    label = max([len("strategy"), *(len(r.label) for r in rows)])
    widest = max(len(text) for text in [*servers, *(c for row in cells for c in row)])
    fit = max(1, (width - label) // (widest + _GAP))
    tables = -(-len(servers) // fit)  # ceiling division
    size = -(-len(servers) // tables)  # as many servers in each, rather than a stub at the end
    drawn = []
    for first in range(0, len(servers), size):
        title = "Requests per server (%)" if not first else None
        table = Table(title=title, **_STYLE)
        table.add_column("strategy")
        for name in servers[first : first + size]:
            table.add_column(name, justify="right")
        for r, row in zip(rows, cells, strict=True):
            table.add_row(r.label, *row[first : first + size])
        drawn.append(table)
    return drawn


def _ejections(results: Results) -> Table:
    """How many times outlier detection ejected a server, and which, per strategy."""
    from rich.table import Table

    table = Table(title="Ejections by outlier detection", **_STYLE)
    table.add_column("strategy")
    table.add_column("ejections", justify="right")
    table.add_column("servers (times ejected)")
    for r in results.strategies:
        table.add_row(r.label, str(len(r.ejections)), _ejected(r))
    return table


def print_report(scenario: Scenario, results: Results, console: Console | None = None) -> None:
    """Print the comparison: latency and errors, where requests went, and ejections.

    Every table fits 80 columns, and every symbol in it is explained beneath it.
    """
    from rich.console import Console

    out = console or Console(highlight=False)
    rows = results.strategies
    requests = rows[0].requests if rows else 0
    out.print(f"[bold]{scenario.name}[/bold]: {scenario.description}".rstrip(": "))
    out.print(
        f"{requests:,} requests over {results.duration:g} s of simulated time, seed {results.seed}"
    )

    summary, notes = _summary(scenario, results, out.color_system is not None)
    out.print()
    out.print(summary)
    out.print("\n".join(notes), style="dim")

    for table in _share_tables(results, out.width):
        out.print()
        out.print(table)
    from .roles import server_roles

    roles = [f"{name}: {role}" for name, role in server_roles(scenario).items() if role]
    if roles:
        out.print("; ".join(roles), style="dim")

    if scenario.outlier_detection is not None:
        out.print()
        if any(r.ejections for r in rows):
            out.print(_ejections(results))
        else:
            out.print("Outlier detection ejected no server.")
