"""The README's "Operating it" section is true: its metrics table is ``METRICS``, and its sample
scrape is what the example above it scrapes. After a change to either, regenerate both with:

    .venv/bin/python -m tests.test_readme_metrics
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from loadbalancer.metrics import METRICS

README = Path(__file__).resolve().parent.parent / "README.md"
TEXT = README.read_text(encoding="utf-8")

TABLE = re.compile(
    r"(<!-- metrics table: generated [^\n]*-->\n)(.*?)(<!-- end of the metrics table -->)", re.S
)
SCRAPE_HEADING = "# a scrape of the example above (excerpt)\n"
SCRAPE = re.compile(r"(```text\n" + re.escape(SCRAPE_HEADING) + r")(.*?)(```)", re.S)
# The families the excerpt shows: enough to read a scrape by, short enough to read.
EXCERPT = (
    "loadbalancer_upstream_rq_total",
    "loadbalancer_upstream_rq_completed_total",
    "loadbalancer_upstream_ejection_remaining_seconds",
    "loadbalancer_membership_size",
    "loadbalancer_membership_healthy",
    "loadbalancer_lb_panic_active",
    "loadbalancer_outlier_detection_ejections_active",
    "loadbalancer_outlier_detection_ejections_total",
    "loadbalancer_upstream_rq_retry_total",
)
HOW = "regenerate it: .venv/bin/python -m tests.test_readme_metrics"


def table() -> str:
    """The README's table of metrics, from the one list."""
    lines = [
        "| Prometheus | OpenTelemetry | type | labels | what it says |",
        "|---|---|---|---|---|",
    ]
    for metric in METRICS:
        otel = "(Prometheus only)" if metric.kind == "histogram" else f"`{metric.otel_name}`"
        kind = "gauge" if metric.kind == "updown" else metric.kind
        labels = ", ".join(f"`{label}`" for label in metric.labels) or "-"
        envoy = f" Envoy: `{metric.envoy}`." if metric.envoy else ""
        lines.append(f"| `{metric.name}` | {otel} | {kind} | {labels} | {metric.help}{envoy} |")
    return "\n".join(lines) + "\n"


def example_scrape() -> str:
    """What the README's Prometheus example scrapes, run as the README shows it."""
    blocks = re.findall(r"```python\n(.*?)```", TEXT, re.S)
    (block,) = (b for b in blocks if "scrape = generate_latest(registry)" in b)
    namespace: dict[str, Any] = {"__name__": "readme"}
    exec(compile(block, str(README), "exec"), namespace)
    scrape = namespace["scrape"]
    assert isinstance(scrape, str)
    return scrape


def excerpt(scrape: str) -> str:
    """The lines of ``scrape`` that belong to the families in ``EXCERPT``, in its order."""
    keep = []
    for line in scrape.splitlines():
        name = line.split()[2] if line.startswith("# ") else re.split(r"[{ ]", line)[0]
        if name.removesuffix("_total") in {f.removesuffix("_total") for f in EXCERPT}:
            keep.append(line)
    return "".join(f"{line}\n" for line in keep)


def regenerate(text: str) -> str:
    """``text`` (the README) with its metrics table and sample scrape made current."""
    text = TABLE.sub(lambda m: m.group(1) + table() + m.group(3), text, count=1)
    return SCRAPE.sub(lambda m: m.group(1) + excerpt(example_scrape()) + m.group(3), text, count=1)


def test_the_table_is_the_list_of_metrics() -> None:
    found = TABLE.search(TEXT)
    assert found is not None, "the README's metrics table markers are gone"
    assert found.group(2) == table(), HOW


def test_the_sample_scrape_is_what_the_example_scrapes() -> None:
    found = SCRAPE.search(TEXT)
    assert found is not None, f"README has no ```text block starting with {SCRAPE_HEADING!r}"
    assert found.group(2) == excerpt(example_scrape()), HOW
    assert found.group(2).count("\n") > 20  # every family in the excerpt, not a stray line


def test_every_metric_the_excerpt_names_exists() -> None:
    assert set(EXCERPT) <= {metric.name for metric in METRICS}


def test_regenerate_changes_nothing_else() -> None:
    stale = TEXT.replace("| `loadbalancer_upstream_rq_total` |", "| `stale` |", 1)
    assert stale != TEXT
    assert regenerate(stale) == regenerate(TEXT)
    assert regenerate(TEXT).count("```") == TEXT.count("```")


if __name__ == "__main__":
    README.write_text(regenerate(TEXT), encoding="utf-8")
    print(f"{README}: the metrics table and the sample scrape regenerated")
