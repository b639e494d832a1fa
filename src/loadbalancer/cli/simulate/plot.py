"""A picture of the results: the whole run per strategy, then how each strategy moved over time.

The top row compares strategies over the whole run: p50 and p99 latency (a p99 at the
clients' timeout is hatched and says so: it is the timeout, not a latency), the share of
requests that failed and why, and the share of requests each server had. Below, one panel
per strategy shows p50 and p99 latency over time and each server's share of every window
(``Window``), with ejections marked, so how fast a strategy reacts to a server slowing down
or failing can be seen. Servers are labelled with their roles (``s05 (5x slower)``), spans
in which a server misbehaves are shaded, and every heatmap uses one colour scale.

Needs matplotlib (``pip install 'loadbalancer[plot]'``), imported only when a plot is drawn.
Drawing uses the Agg backend through ``Figure`` directly: no display, no pyplot state.

The PNG carries a digest of what it draws (``DIGEST_KEY``, a tEXt chunk): every panel's title,
texts and drawn values, not its pixels, which depend on matplotlib's version. So a test can
tell that a committed picture is of the code as it is without comparing pixels.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .results import Results, StrategyResult
from .roles import incidents, server_roles
from .scenario import Scenario

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure, SubFigure

__all__ = ["DIGEST_KEY", "digest", "draw", "plot_results"]

DIGEST_KEY = "loadbalancer-plot-digest"
"""The PNG text key holding ``digest`` of the figure drawn."""

_COLUMNS = 4  # strategies side by side in the panels over time
# Any: matplotlib types each keyword argument, and these are splatted into several calls.
_SHADE: dict[str, Any] = {"color": "tab:red", "alpha": 0.12, "linewidth": 0}
_TIMEOUT_LINE: dict[str, Any] = {"color": "tab:red", "linestyle": "--", "linewidth": 1}
_ERRORS = (  # the parts of a strategy's failed requests, and their colours
    ("server errors", "tab:red"),
    ("timeouts", "tab:orange"),
    ("no server", "tab:gray"),
)
_SMALL = 7  # font size of labels inside the panels


def _label(server: str, role: str) -> str:
    return f"{server} ({role})" if role else server


def _grid(count: int) -> tuple[int, int]:
    """Rows and columns for ``count`` panels: at most ``_COLUMNS`` wide, rows evenly filled."""
    rows = max(1, math.ceil(count / _COLUMNS))
    return rows, max(1, math.ceil(count / rows))


def _latency(axes: Axes, results: Results, timeout: float | None) -> None:
    """p50 and p99 bars per strategy, log scale; a p99 at the timeout is hatched and says so."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    rows = results.strategies
    positions = range(len(rows))
    width = 0.4
    cap = math.inf if timeout is None else timeout * 1000
    handles: list[Any] = []
    for offset, name, colour in ((-width / 2, "p50", "tab:blue"), (width / 2, "p99", "tab:purple")):
        values = [getattr(r.latency, name) * 1000 for r in rows]
        capped = [v >= cap for v in values]
        bars = axes.bar([x + offset for x in positions], values, width, color=colour)
        for bar, at_cap in zip(bars, capped, strict=True):
            if at_cap:  # not a latency: the most the clients would wait
                bar.set(hatch="///", facecolor="white", edgecolor=colour, gid="timeout")
        texts = ["timeout" if c else f"{v:.0f}" for v, c in zip(values, capped, strict=True)]
        axes.bar_label(bars, texts, fontsize=_SMALL, padding=2, rotation=90)
        handles.append(Patch(color=colour, label=name))
    highest = max((r.latency.p99 * 1000 for r in rows), default=1.0)
    if timeout is not None:
        axes.axhline(cap, **_TIMEOUT_LINE)
        highest = max(highest, cap)
        handles.append(Line2D([], [], **_TIMEOUT_LINE, label=f"timeout ({timeout:g} s)"))
        handles.append(
            Patch(hatch="///", facecolor="white", edgecolor="tab:purple", label="at the timeout")
        )
    if highest <= 0:  # no requests, so no latency: the empty log axis still needs a range
        highest = 1.0
        axes.set_ylim(highest / 10, highest * 8)
    axes.set_yscale("log")  # p99 under a timeout can be 30x p50: log keeps both readable
    axes.set_ylim(top=highest * 8)  # room for the labels and the legend
    axes.set_ylabel("latency (ms, log scale)")
    axes.set_xticks(list(positions), [r.label for r in rows], rotation=35, ha="right")
    axes.set_title("Latency over the whole run")
    axes.legend(handles=handles, loc="upper left", ncols=4, fontsize=_SMALL)
    axes.grid(axis="y", which="major", alpha=0.3)


def _error_parts(result: StrategyResult) -> tuple[float, float, float]:
    """Server errors, timeouts and requests with no server, each in % of all requests."""
    total = result.requests or 1
    errors = result.failures - result.timeouts - result.unavailable
    return (
        errors / total * 100,
        result.timeouts / total * 100,
        result.unavailable / total * 100,
    )


def _errors(axes: Axes, results: Results) -> None:
    """Stacked bars: the share of requests that failed, by why."""
    rows = results.strategies
    positions = list(range(len(rows)))
    parts = [_error_parts(r) for r in rows]
    bottom = [0.0] * len(rows)
    for i, (name, colour) in enumerate(_ERRORS):
        values = [p[i] for p in parts]
        if any(values):
            axes.bar(positions, values, 0.6, bottom=bottom, label=name, color=colour)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    for x, total in zip(positions, bottom, strict=True):
        axes.annotate(
            "0" if not total else f"{total:.1f}%" if total >= 0.1 else f"{total:.2f}%",
            (x, total),
            xytext=(0, 2),
            textcoords="offset points",
            ha="center",
            fontsize=_SMALL,
        )
    axes.set_ylim(0, max(max(bottom, default=0.0) * 1.3, 1.0))
    axes.set_ylabel("% of requests")
    axes.set_xticks(positions, [r.label for r in rows], rotation=35, ha="right")
    axes.set_title("Failed requests")
    if any(bottom):
        axes.legend(loc="upper left", fontsize=_SMALL)
    axes.grid(axis="y", alpha=0.3)


def _shares(axes: Axes, results: Results, labels: list[str], norm: Normalize) -> Any:
    """A heatmap of each server's share of requests (rows) under each strategy (columns)."""
    rows = results.strategies
    matrix = [[r.servers[s].share * 100 for r in rows] for s in range(len(results.servers))]
    image = axes.imshow(matrix, cmap="viridis", norm=norm, aspect="auto")
    axes.set_xticks(range(len(rows)), [r.label for r in rows], rotation=35, ha="right")
    axes.set_yticks(range(len(labels)), labels, fontsize=_SMALL + 1)
    axes.set_title("Share of requests per server (%)")
    for y, row in enumerate(matrix):
        for x, value in enumerate(row):
            light = norm(value) > 0.6  # dark text on the light end of viridis
            colour = "black" if light else "white"
            axes.text(x, y, f"{value:.0f}", ha="center", va="center", fontsize=_SMALL, color=colour)
    return image


def _panels(figure: SubFigure, count: int) -> list[tuple[Axes, Axes]]:
    """For each of ``count`` strategies, a latency panel above a share panel, on shared axes."""
    rows, columns = _grid(count)
    grid = figure.add_gridspec(2 * rows, columns, height_ratios=[1, 1.5] * rows)
    panels: list[tuple[Axes, Axes]] = []
    for i in range(count):
        row, column = divmod(i, columns)
        first = panels[0] if panels else None
        latency = figure.add_subplot(
            grid[2 * row, column],
            sharex=first and first[0],
            sharey=first and first[0],
        )
        share = figure.add_subplot(
            grid[2 * row + 1, column], sharex=latency, sharey=first and first[1]
        )
        latency.tick_params(labelbottom=False, labelsize=_SMALL)
        share.tick_params(labelsize=_SMALL)
        if column:  # the first column's labels say it for the row
            latency.tick_params(labelleft=False)
            share.tick_params(labelleft=False)
        if i + columns >= count:
            share.set_xlabel("time (s)", fontsize=_SMALL)
        panels.append((latency, share))
    return panels


def _over_time(
    figure: SubFigure, scenario: Scenario, results: Results, labels: list[str], norm: Normalize
) -> None:
    """Per strategy: p50 and p99 per window above, each server's share of each window below."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    timeout = scenario.timeout
    spans = incidents(scenario)
    index = {name: i for i, name in enumerate(results.servers)}
    windows = [w for r in results.strategies for w in r.windows]
    # No request in any window and no timeout: no latency to show, but the axis needs a range.
    highest = max([w.p99 for w in windows if w.p99 is not None] + [timeout or 0.0]) or 1.0
    lowest = min([w.p50 for w in windows if w.p50 is not None], default=0.001)
    image: Any = None
    panels = _panels(figure, len(results.strategies))
    for i, (result, (latency, share)) in enumerate(zip(results.strategies, panels, strict=True)):
        edges = [result.windows[0].start, *(w.end for w in result.windows)]
        for name, colour, width in (("p50", "tab:blue", 0.8), ("p99", "tab:purple", 1.4)):
            values = [getattr(w, name) for w in result.windows]
            ms = [math.nan if v is None else v * 1000 for v in values]
            latency.stairs(ms, edges, color=colour, linewidth=width, baseline=None, gid=name)
        if timeout is not None:
            latency.axhline(timeout * 1000, **_TIMEOUT_LINE)
        for span in spans:
            latency.axvspan(span.start, span.end, **_SHADE, gid="incident")
            for edge in (span.start, span.end):
                share.axvline(edge, color="tab:red", linewidth=0.8, linestyle=":")
        latency.set_title(result.label, fontsize=9, loc="left")
        latency.grid(axis="y", alpha=0.3)
        matrix = [
            [w.shares[s] * 100 if w.requests else math.nan for w in result.windows]
            for s in range(len(labels))
        ]
        between = [s - 0.5 for s in range(len(labels) + 1)]  # row edges, around each server
        image = share.pcolormesh(edges, between, matrix, cmap="viridis", norm=norm)
        ejected = result.ejections
        share.scatter(
            [e.at for e in ejected],
            [index[e.server] for e in ejected],
            marker="x",
            color="tab:red",
            s=14,
            linewidths=1,
        )
        if i == 0:
            latency.set_yscale("log")  # shared: one scale for every strategy
            latency.set_ylim(max(lowest * 500, 0.01), highest * 2000)
            latency.set_ylabel("ms", fontsize=_SMALL)
            share.set_yticks(range(len(labels)), labels, fontsize=_SMALL)
            share.invert_yaxis()  # the first server on top, as in the heatmap above
    figure.colorbar(
        image, ax=[s for _, s in panels], label="% of the window's requests", shrink=0.8
    )
    handles: list[Any] = [
        Line2D([], [], color="tab:blue", linewidth=0.8, label="p50"),
        Line2D([], [], color="tab:purple", linewidth=1.4, label="p99"),
    ]
    if timeout is not None:
        handles.append(Line2D([], [], **_TIMEOUT_LINE, label=f"timeout ({timeout:g} s)"))
    if any(r.ejections for r in results.strategies):
        handles.append(
            Line2D([], [], color="tab:red", marker="x", linestyle="", label="server ejected")
        )
    for span in spans:
        label = f"{span.server} {span.what} ({span.span})"
        handles.append(Patch(**_SHADE, label=label))
    columns = min(len(handles), 6)
    figure.legend(handles=handles, loc="outside lower center", ncols=columns, fontsize=8)
    width = edges[1] - edges[0]
    figure.suptitle(
        f"Over time, per strategy, in {width:g} s windows of arrivals: latency (above) and each "
        "server's share of the requests (below)",
        fontsize=10,
    )


def draw(scenario: Scenario, results: Results) -> Figure:
    """The picture of ``results`` of running ``scenario``, as a matplotlib ``Figure``."""
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    roles = server_roles(scenario)
    labels = [_label(name, roles.get(name, "")) for name in results.servers]
    rows, _ = _grid(len(results.strategies))
    whole = 4.6
    over_time = 3.4 * rows
    figure = Figure(figsize=(16, whole + over_time), layout="constrained")
    parts = figure.add_gridspec(2, 1, height_ratios=[whole, over_time])
    top, bottom = figure.add_subfigure(parts[0]), figure.add_subfigure(parts[1])

    # One colour scale for every heatmap, from 0 to the largest share anywhere, so that one
    # colour means one share in every panel.
    peak = max(
        [s.share for r in results.strategies for s in r.servers]
        + [x for r in results.strategies for w in r.windows for x in w.shares],
        default=0.0,
    )
    norm = Normalize(0, max(peak * 100, 1.0))

    latency, errors, shares = top.subplots(1, 3, width_ratios=[1.3, 0.9, 1.3])
    _latency(latency, results, scenario.timeout)
    _errors(errors, results)
    image = _shares(shares, results, labels, norm)
    top.colorbar(image, ax=shares, label="% of requests")
    requests = results.strategies[0].requests if results.strategies else 0
    top.suptitle(
        f"{scenario.name}: {scenario.description}".rstrip(": ")
        + f"\n{requests:,} requests over {results.duration:g} s of simulated time, "
        f"seed {results.seed}",
        fontsize=11,
    )
    _over_time(bottom, scenario, results, labels, norm)
    return figure


def _rounded(values: Any) -> list[Any]:
    """Drawn numbers, flat after their shape, to 6 significant digits (NaN, a gap, as None),
    so that float noise in the last bits does not change the digest."""
    import numpy

    array: Any = numpy.ma.filled(numpy.ma.asarray(values, dtype=float), numpy.nan)
    flat: list[float] = array.ravel().tolist()
    return [list(array.shape), *(None if math.isnan(v) else float(f"{v:.6g}") for v in flat)]


def _fixed(axis: Any) -> list[str]:
    """The tick labels the code set (strategies, servers); not those matplotlib chooses."""
    from matplotlib.ticker import FixedLocator

    if not isinstance(axis.get_major_locator(), FixedLocator):
        return []
    return [label.get_text() for label in axis.get_ticklabels()]


def _summary(axes: Axes) -> dict[str, Any]:
    """What one panel draws: its titles and texts, and the values of its lines, bars,
    meshes and markers, in drawing order."""
    from matplotlib.collections import PathCollection, QuadMesh
    from matplotlib.patches import Rectangle

    legend = axes.get_legend()
    return {
        "title": [axes.get_title(loc) for loc in ("left", "center", "right")],
        "labels": [axes.get_xlabel(), axes.get_ylabel()],
        "ticks": [_fixed(axes.xaxis), _fixed(axes.yaxis)],
        "texts": [t.get_text() for t in axes.texts],
        "legend": [] if legend is None else [t.get_text() for t in legend.get_texts()],
        "lines": [_rounded(line.get_ydata()) for line in axes.lines],
        "bars": [
            _rounded(p.get_height())[1]
            for p in axes.patches
            if isinstance(p, Rectangle) and p.get_gid() != "incident"
        ],
        "stairs": [_rounded(p.get_data().values) for p in axes.patches if hasattr(p, "get_data")],
        "meshes": [_rounded(c.get_array()) for c in axes.collections if isinstance(c, QuadMesh)],
        "images": [_rounded(image.get_array()) for image in axes.images],
        "markers": [
            _rounded(c.get_offsets()) for c in axes.collections if isinstance(c, PathCollection)
        ],
    }


def digest(figure: Figure) -> str:
    """A digest of what ``figure`` draws (see the module's docstring), stable across
    matplotlib versions and machines."""

    def walk(part: Figure | SubFigure) -> list[Any]:
        title = part.get_suptitle()
        legends = [[t.get_text() for t in legend.get_texts()] for legend in part.legends]
        axes = [_summary(a) for a in part.axes if a.get_label() != "<colorbar>"]
        return [title, legends, axes, [walk(sub) for sub in part.subfigs]]

    text = json.dumps(walk(figure), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def plot_results(scenario: Scenario, results: Results, path: str | Path) -> None:
    """Write a PNG to ``path`` showing ``results`` of running ``scenario``, with the digest
    of what it draws in its ``DIGEST_KEY`` text."""
    import matplotlib

    matplotlib.use("Agg")  # headless, whatever the environment says
    figure = draw(scenario, results)
    figure.savefig(path, dpi=100, format="png", metadata={DIGEST_KEY: digest(figure)})
