"""Every built-in strategy by name: the one list the command line, the docs and the tests use.

``STRATEGIES`` maps each canonical name to its class; ``ALIASES`` maps the other names people
use (Envoy's, HAProxy's, the usual abbreviations) to a canonical name. ``canonical_name`` and
``strategy_class`` look a name up, ignoring case and treating ``-`` as ``_``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from ._base import Strategy
from .hashing import MaglevStrategy, RendezvousStrategy, RingHashStrategy
from .least_loaded import LeastConnectionsStrategy, PeakEWMAStrategy, PowerOfTwoChoicesStrategy
from .random import RandomStrategy
from .round_robin import RoundRobinStrategy
from .weighted import WeightedRandomStrategy, WeightedRoundRobinStrategy

__all__ = ["ALIASES", "STRATEGIES", "canonical_name", "strategy_class"]

STRATEGIES: Mapping[str, type[Strategy]] = MappingProxyType(
    {
        "round_robin": RoundRobinStrategy,
        "random": RandomStrategy,
        "weighted_random": WeightedRandomStrategy,
        "weighted_round_robin": WeightedRoundRobinStrategy,
        "least_connections": LeastConnectionsStrategy,
        "power_of_two_choices": PowerOfTwoChoicesStrategy,
        "peak_ewma": PeakEWMAStrategy,
        "ring_hash": RingHashStrategy,
        "maglev": MaglevStrategy,
        "rendezvous": RendezvousStrategy,
    }
)
"""Every built-in strategy class by its canonical name, read-only, simplest first."""

# An alias names a class with its default options, nothing more: "ketama" is not one, because
# it means RingHashStrategy(hash="ketama"), and a name that silently dropped that option would
# map keys differently from the memcached clients the user wants to agree with.
ALIASES: Mapping[str, str] = MappingProxyType(
    {
        "rr": "round_robin",
        "roundrobin": "round_robin",  # HAProxy
        "wrr": "weighted_round_robin",
        "least_conn": "least_connections",  # NGINX
        "leastconn": "least_connections",  # HAProxy
        "p2c": "power_of_two_choices",
        "least_request": "power_of_two_choices",  # Envoy's least_request is P2C
        "ewma": "peak_ewma",
        "ring": "ring_hash",
        "hrw": "rendezvous",  # highest random weight
    }
)
"""Other names for the built-in strategies, each mapped to its canonical name (read-only)."""


# Names that are not aliases but that people will try, with what to use instead.
_HINTS = {"ketama": 'ketama is ring_hash with hash="ketama"; '}


def _valid_names() -> str:
    aliases = ", ".join(f"{alias} ({name})" for alias, name in ALIASES.items())
    return f"{', '.join(STRATEGIES)}; or an alias: {aliases}"


def canonical_name(name: str) -> str:
    """The canonical name for ``name`` (a canonical name or an alias, any case, - or _)."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, not {type(name).__name__}")
    # Envoy spells its policies LEAST_REQUEST and documentation often round-robin: all one.
    normal = name.strip().lower().replace("-", "_")
    if normal in STRATEGIES:
        return normal
    if normal in ALIASES:
        return ALIASES[normal]
    raise ValueError(
        f"name must be a strategy name: {_HINTS.get(normal, '')}"
        f"one of {_valid_names()}; got {name!r}"
    )


def strategy_class(name: str) -> type[Strategy]:
    """The strategy class ``name`` (a canonical name or an alias) stands for."""
    return STRATEGIES[canonical_name(name)]
