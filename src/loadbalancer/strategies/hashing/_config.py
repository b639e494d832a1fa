"""Argument checks and repr shared by the hashing strategies; each error names the argument."""

from __future__ import annotations

from ..._validation import check_number
from .._draw import resolve_rng

__all__ = ["check_balance_factor", "describe", "resolve_rng"]


def check_balance_factor(value: object) -> float | None:
    """Return ``value`` if it is ``None`` or a finite number above 1, else raise."""
    # A factor of 1 or less would leave some request without a server under capacity.
    return None if value is None else check_number(value, "balance_factor", above=1)


def describe(name: str, **non_default: object) -> str:
    """``Name(a=1, b='x')`` for the arguments given, skipping those that are ``None``."""
    arguments = ", ".join(f"{k}={v!r}" for k, v in non_default.items() if v is not None)
    return f"{name}({arguments})"
