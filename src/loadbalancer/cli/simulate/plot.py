"""A picture of the results: latency percentiles and where requests went, per strategy.

Needs matplotlib (``pip install 'loadbalancer[plot]'``), imported only when a plot is drawn.
Drawing uses the Agg backend through ``Figure`` directly: no display, no pyplot state.
"""

from __future__ import annotations

from pathlib import Path

from .results import Results

__all__ = ["plot_results"]


def plot_results(results: Results, path: str | Path) -> None:
    """Write a PNG to ``path``: p50/p99 bars per strategy, and a heatmap of request shares."""
    import matplotlib

    matplotlib.use("Agg")  # headless, whatever the environment says
    from matplotlib.figure import Figure

    labels = [r.label for r in results.strategies]
    servers = results.servers
    figure = Figure(figsize=(max(10.0, 1.2 * len(labels) + 0.6 * len(servers)), 5.5))
    latency, share = figure.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.2]})

    positions = range(len(labels))
    width = 0.4
    p50 = [r.latency.p50 * 1000 for r in results.strategies]
    p99 = [r.latency.p99 * 1000 for r in results.strategies]
    for offset, values, name in ((-width / 2, p50, "p50"), (width / 2, p99, "p99")):
        bars = latency.bar([x + offset for x in positions], values, width, label=name)
        latency.bar_label(bars, fmt="%.0f", fontsize=7, padding=2)
    latency.set_yscale("log")  # p99 under a timeout can be 30x p50: log keeps both readable
    latency.set_ylim(top=max(p99, default=1.0) * 4)  # room for the labels and the legend
    latency.set_ylabel("latency (ms, log scale)")
    latency.set_xticks(list(positions), labels, rotation=35, ha="right")
    latency.set_title("Latency per strategy")
    latency.legend(loc="upper left", ncols=2)
    latency.grid(axis="y", which="both", alpha=0.3)

    matrix = [[s.share * 100 for s in r.servers] for r in results.strategies]
    image = share.imshow(matrix, cmap="viridis", aspect="auto")
    share.set_xticks(range(len(servers)), servers, rotation=45, ha="right")
    share.set_yticks(list(positions), labels)
    share.set_title("Share of requests per server (%)")
    peak = max((v for row in matrix for v in row), default=0.0)
    for y, row in enumerate(matrix):
        for x, value in enumerate(row):
            colour = "black" if value > 0.6 * peak else "white"
            share.text(x, y, f"{value:.0f}", ha="center", va="center", fontsize=8, color=colour)
    figure.colorbar(image, ax=share, label="% of requests")

    figure.suptitle(f"{results.scenario}: {results.duration:g} s simulated, seed {results.seed}")
    figure.tight_layout()
    figure.savefig(path, dpi=110, format="png")
