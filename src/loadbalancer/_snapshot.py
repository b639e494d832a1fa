"""What strategies see: per-server live state and the immutable snapshot of one moment."""

from __future__ import annotations

from dataclasses import dataclass
from typing import final

__all__ = ["Endpoint", "Snapshot"]


@final
class Endpoint:
    """One registered server and its live state, shared by every snapshot that contains it.

    Strategies read it; only the balancer writes it. The same object lives for as long as the
    server stays registered, so state survives membership changes of other servers.
    """

    __slots__ = ("server",)

    def __init__(self, server: str) -> None:
        self.server = server

    def __repr__(self) -> str:
        return f"Endpoint({self.server!r})"


@final
@dataclass(frozen=True, slots=True)
class Snapshot:
    """The servers eligible for picking at one moment, in registration order; never empty."""

    endpoints: tuple[Endpoint, ...]
    servers: tuple[str, ...]

    @classmethod
    def of(cls, endpoints: tuple[Endpoint, ...]) -> Snapshot:
        """Build a snapshot over ``endpoints``, deriving the server names once."""
        return cls(endpoints, tuple(e.server for e in endpoints))
