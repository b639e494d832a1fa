"""Write requests.csv, the example trace that examples/scenarios/replay.toml replays.

It stands in for an exported access log (see the README's "Replaying recorded traffic"):
absolute times in seconds with milliseconds, as nginx's $msec; a user id as the key; the
upstream's service time. Traffic that a Poisson process does not give: 250 requests/s with
a burst to 700/s from 8 s to 12 s, 300 users of Zipf skew (exponent 0.8), and service times
with a heavy tail (3% of requests, reports and exports, take ten times as long). The same
file every time:

    python examples/traces/make_requests.py
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

TRACE = Path(__file__).resolve().parent / "requests.csv"
START = 1_764_547_200.0  # 2025-12-01 00:00:00 UTC, as $msec counts
SECONDS = 20.0
USERS = 300


def rate(at: float) -> float:
    """Requests per second at ``at`` seconds into the trace."""
    return 700.0 if 8.0 <= at < 12.0 else 250.0


def rows(rng: random.Random) -> list[str]:
    """The trace's lines, header first."""
    lines = ["time,key,service_time"]
    popularity = list(itertools.accumulate(1 / k**0.8 for k in range(1, USERS + 1)))
    at = rng.expovariate(rate(0.0))
    while at < SECONDS:
        (user,) = rng.choices(range(USERS), cum_weights=popularity)
        service = rng.lognormvariate(-4.38, 0.6)  # median 12.5 ms, mean 15 ms
        if rng.random() < 0.03:
            service *= 10
        lines.append(f"{START + at:.3f},user-{user},{service:.3f}")
        at += rng.expovariate(rate(at))
    return lines


def main() -> None:
    """Write the trace."""
    TRACE.write_text("\n".join(rows(random.Random(2025))) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
