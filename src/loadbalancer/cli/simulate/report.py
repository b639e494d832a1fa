"""Results for people (rich tables) and for programs (a JSON document with stable keys)."""

from __future__ import annotations

import os
from collections import Counter
from typing import TYPE_CHECKING, Any

from .results import Results, StrategyResult
from .scenario import Scenario

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["JSON_VERSION", "print_report", "to_json"]

JSON_VERSION = 1
"""The version of the JSON document's layout; it changes only when keys change meaning."""


def _r(value: float) -> float:
    """Rounded for output: microseconds and shares to one in a million are plenty."""
    return round(value, 6)


def _strategy_json(result: StrategyResult, servers: tuple[str, ...]) -> dict[str, Any]:
    latency = result.latency
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
        "stickiness": None if result.stickiness is None else _r(result.stickiness),
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
        "strategies": [_strategy_json(r, results.servers) for r in results.strategies],
    }


# -- the terminal ---------------------------------------------------------------------------

_PIPE_WIDTH = 110  # rich assumes 80 columns when not writing to a terminal: too narrow here
_STYLE: dict[str, Any] = {
    "title_justify": "left",
    "header_style": "bold",
    "box": None,
    "pad_edge": False,
}


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f}"


def _ejected(result: StrategyResult) -> str:
    """Which servers were ejected and how often: ``s05x3 s08x2``."""
    counts = Counter(e.server for e in result.ejections)
    return " ".join(f"{server}x{n}" if n > 1 else server for server, n in sorted(counts.items()))


def _best(values: list[float]) -> set[int]:
    """Indexes of the lowest values, to highlight."""
    lowest = min(values, default=0.0)
    return {i for i, v in enumerate(values) if v == lowest}


def print_report(scenario: Scenario, results: Results, console: Console | None = None) -> None:
    """Print the comparison: one row of measures per strategy, then where requests went."""
    from rich.console import Console
    from rich.table import Table

    out = console
    if out is None:
        out = Console(highlight=False)
        if not out.is_terminal and "COLUMNS" not in os.environ:
            out.width = _PIPE_WIDTH
    rows = results.strategies
    keyed = any(r.stickiness is not None for r in rows)
    requests = rows[0].requests if rows else 0
    out.print(f"[bold]{scenario.name}[/bold]: {scenario.description}".rstrip(": "))
    out.print(
        f"{requests:,} requests over {results.duration:g} s of simulated time, seed {results.seed}"
    )

    summary = Table(title="Latency and errors", **_STYLE)
    summary.add_column("strategy")
    for name in ("p50 ms", "p99 ms", "mean ms", "errors", "peak", "ejections"):
        summary.add_column(name, justify="right")
    if keyed:
        summary.add_column("sticky", justify="right")
    best = {
        "p50": _best([r.latency.p50 for r in rows]),
        "p99": _best([r.latency.p99 for r in rows]),
        "mean": _best([r.latency.mean for r in rows]),
        "errors": _best([r.error_rate for r in rows]),
    }

    def mark(text: str, column: str, index: int) -> str:
        return f"[bold green]{text}[/bold green]" if index in best[column] else text

    for i, r in enumerate(rows):
        cells = [
            r.label,
            mark(_ms(r.latency.p50), "p50", i),
            mark(_ms(r.latency.p99), "p99", i),
            mark(_ms(r.latency.mean), "mean", i),
            mark(f"{r.error_rate:.2%}", "errors", i),
            str(r.peak_in_flight),
            str(len(r.ejections)),
        ]
        if keyed:
            cells.append("-" if r.stickiness is None else f"{r.stickiness:.2f}")
        summary.add_row(*cells)
    out.print()
    out.print(summary)

    shares = Table(title="Requests per server (%)", **_STYLE)
    shares.add_column("strategy")
    for name in results.servers:
        shares.add_column(name, justify="right")
    shares.add_column("ejected")
    for r in rows:
        shares.add_row(r.label, *(f"{s.share * 100:.1f}" for s in r.servers), _ejected(r))
    out.print()
    out.print(shares)
    out.print()
    notes = [
        "errors: failed requests, timeouts included",
        "peak: the most requests in flight on one server at once",
        *(["sticky: share of requests that reached their key's usual server"] if keyed else []),
    ]
    out.print("\n".join(notes), style="dim")
