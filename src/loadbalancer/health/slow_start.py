"""Slow start: a server that joins or comes back ramps up to its full weight (Envoy)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import final

from .._validation import check_number, check_positive_int

__all__ = ["SlowStart"]


@final
@dataclass(frozen=True, slots=True)
class SlowStart:
    """Ramp a new or returning server's weight from ``min_weight_percent`` up over ``window``.

    Envoy's curve: the weight factor is ``(elapsed / window) ** (1 / aggression)``, never below
    ``min_weight_percent``; aggression 1 is linear, larger values ramp faster early. It applies
    to every weight-aware strategy. The balancer re-weights in ``steps`` steps per window.
    """

    window: float = 30.0
    aggression: float = 1.0
    min_weight_percent: float = 10.0
    steps: int = 20

    def __post_init__(self) -> None:
        check_number(self.window, "window", above=0)
        check_number(self.aggression, "aggression", above=0)
        check_number(self.min_weight_percent, "min_weight_percent", above=0, at_most=100)
        check_positive_int(self.steps, "steps")

    def factor(self, elapsed: float) -> float | None:
        """The weight factor ``elapsed`` seconds into the ramp, or None once it is over."""
        if elapsed >= self.window:
            return None
        progress = max(elapsed, 0.0) / self.window
        return max(self.min_weight_percent / 100, float(progress ** (1 / self.aggression)))

    @property
    def step(self) -> float:
        """Seconds between re-weightings during a ramp."""
        return self.window / self.steps
