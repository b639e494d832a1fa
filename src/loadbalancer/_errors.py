"""The exceptions this package raises."""

from __future__ import annotations

__all__ = ["LoadBalancerError", "NoServersAvailableError"]


class LoadBalancerError(Exception):
    """Base class of every error this package raises on purpose."""


class NoServersAvailableError(LoadBalancerError, LookupError):
    """Raised by a pick when the pool holds no server to return."""

    def __init__(self, message: str = "no servers available: the pool is empty") -> None:
        super().__init__(message)
