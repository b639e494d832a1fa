"""ProbeResult: a probe's answer that says why when the server is unhealthy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import final

__all__ = ["ProbeResult"]


@final
@dataclass(frozen=True, slots=True)
class ProbeResult:
    """A probe's answer: truthy when ``healthy``; ``reason`` says why when it is not.

    The built-in probes return one, e.g. ``ProbeResult(False, "connection refused")``; the
    checkers put the reason in ``HealthCheckStatus.last_failure`` and in their log messages.
    Custom probes may return one too, or a plain True or False.
    """

    healthy: bool
    reason: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.healthy, bool):
            raise TypeError(f"healthy must be a bool, not {type(self.healthy).__name__}")
        if self.reason is not None and not isinstance(self.reason, str):
            raise TypeError(f"reason must be a str or None, not {type(self.reason).__name__}")

    def __bool__(self) -> bool:
        return self.healthy
