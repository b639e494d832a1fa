"""Slow start: a server that joins or comes back ramps up to its full weight (Envoy)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import final

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
        for name in ("window", "aggression"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, not {type(value).__name__}")
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be positive and finite, got {value!r}")
        percent = self.min_weight_percent
        if isinstance(percent, bool) or not isinstance(percent, (int, float)):
            raise TypeError(f"min_weight_percent must be a number, not {type(percent).__name__}")
        if not 0 < percent <= 100:
            raise ValueError(f"min_weight_percent must be in (0, 100], got {percent!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int):
            raise TypeError(f"steps must be an int, not {type(self.steps).__name__}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")

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
