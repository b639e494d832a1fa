"""Argument checks shared by the public entry points; each error names the argument."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from typing import Any

__all__ = [
    "MAX_WEIGHT",
    "check_bool",
    "check_callable",
    "check_clock_reading",
    "check_exclude",
    "check_key",
    "check_number",
    "check_positive_int",
    "check_server",
    "check_weight",
]


def check_server(value: object, name: str = "server") -> str:
    """Return ``value`` if it is a usable server name, else raise naming ``name``."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    if not value:
        raise ValueError(f"{name} must be a non-empty string")
    return value


def check_positive_int(value: object, name: str) -> int:
    """Return ``value`` if it is an int >= 1 (bool excluded), else raise naming ``name``."""
    # bool is an int subclass; max_servers=True is a bug, not a capacity of one.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def check_callable(value: object, name: str) -> Callable[..., Any]:
    """Return ``value`` if it is callable, else raise naming ``name``."""
    if not callable(value):
        raise TypeError(f"{name} must be callable, not {type(value).__name__}")
    return value


def check_key(key: object) -> None:
    """Raise unless ``key`` is a str or bytes; hash keys must hash the same everywhere."""
    if not isinstance(key, (str, bytes)):
        raise TypeError(f"key must be str or bytes, not {type(key).__name__}")


MAX_WEIGHT = 1_000_000
"""The largest weight: ratios beyond a million to one are a mistake, and sums must not overflow."""


def check_weight(value: object, name: str = "weight") -> float:
    """Return ``value`` (an int stays an int) if it is in (0, MAX_WEIGHT], else raise."""
    check_number(value, name, above=0, at_most=MAX_WEIGHT)
    return value  # type: ignore[return-value]  # check_number proved it an int or float


def check_number(
    value: object,
    name: str,
    *,
    above: float | None = None,
    at_least: float | None = None,
    at_most: float | None = None,
) -> float:
    """Return ``value`` as a float if it is a finite int or float within the bounds, else raise.

    ``TypeError`` for a non-number (bool included), ``ValueError`` for one out of bounds;
    both name the argument.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        number = math.inf
    if (
        not math.isfinite(number)
        or (above is not None and not number > above)
        or (at_least is not None and not number >= at_least)
        or (at_most is not None and not number <= at_most)
    ):
        bounds = ["finite"]
        if above is not None:
            bounds.append(f"> {above:g}")
        if at_least is not None:
            bounds.append(f">= {at_least:g}")
        if at_most is not None:
            bounds.append(f"<= {at_most:g}")
        raise ValueError(f"{name} must be {' and '.join(bounds)}, got {value!r}")
    return number


def check_bool(value: object, name: str) -> bool:
    """Return ``value`` if it is a bool, else raise naming ``name``."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, not {type(value).__name__}")
    return value


def check_clock_reading(value: object) -> float:
    """Return a clock reading as a float if it is a finite number, else raise naming ``clock``.

    The hot paths accept a finite float without calling this; everything else comes here.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"clock must return a number of seconds, not {type(value).__name__}")
    try:
        reading = float(value)
    except OverflowError:
        reading = math.inf
    if not math.isfinite(reading):
        raise ValueError(f"clock must return a finite number of seconds, got {value!r}")
    return reading


def check_exclude(exclude: object) -> frozenset[str]:
    """Return ``exclude`` as a frozenset of server names, else raise naming ``exclude``."""
    # The usual containers skip the ABC checks: this runs on every retry's pick.
    kind = exclude.__class__
    names: frozenset[Any]
    if kind is frozenset:
        names = exclude  # type: ignore[assignment]  # kind is frozenset
    elif (
        kind is not set
        and kind is not list
        and kind is not tuple
        and (isinstance(exclude, (str, bytes)) or not isinstance(exclude, Collection))
    ):
        raise TypeError(
            f"exclude must be a collection of server names, not {type(exclude).__name__}"
        )
    else:
        try:
            names = frozenset(exclude)  # type: ignore[call-overload]  # a Collection, checked above
        except TypeError:
            raise TypeError("exclude must hold server names (str)") from None
    for name in names:
        if name.__class__ is not str and not isinstance(name, str):
            raise TypeError(f"exclude must hold server names (str), not {type(name).__name__}")
    return names
