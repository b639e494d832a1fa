"""The strategies a scenario may name, the options each accepts, and how to build one.

The names are the library's registry (``loadbalancer.strategies``): canonical names and their
aliases. Results are reported under the canonical name (``p2c`` runs as
``power_of_two_choices``), so one strategy has one row name however it was asked for.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Mapping
from typing import Any

from ... import Strategy
from ...strategies import hashing
from ...strategies.registry import ALIASES, STRATEGIES, canonical_name, strategy_class

__all__ = [
    "ALIASES",
    "DEFAULT_STRATEGIES",
    "STRATEGIES",
    "build_strategy",
    "canonical_name",
    "describe_strategy",
    "hashes_keys",
    "known_names",
    "resolve",
    "strategy_options",
]

DEFAULT_STRATEGIES: tuple[str, ...] = (
    "round_robin",
    "random",
    "weighted_round_robin",
    "least_connections",
    "power_of_two_choices",
    "peak_ewma",
    "ring_hash",
    "maglev",
)
"""What a scenario compares when it lists no strategies."""


def known_names() -> str:
    """The names a scenario or ``--strategies`` may use, for error messages."""
    aliases = ", ".join(ALIASES)
    return f"{', '.join(STRATEGIES)}; aliases: {aliases}"


def resolve(name: str) -> str | None:
    """The canonical name for strategy ``name`` or an alias of it; None if it is neither."""
    try:
        return canonical_name(name)
    except ValueError:
        return None


def _parameters(cls: type[Strategy]) -> dict[str, inspect.Parameter]:
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {name: p for name, p in inspect.signature(cls).parameters.items() if p.kind in kinds}


def strategy_options(name: str) -> tuple[str, ...]:
    """The keyword options strategy ``name`` accepts in a scenario (its ``rng`` is seeded)."""
    return tuple(sorted(p for p in _parameters(strategy_class(name)) if p != "rng"))


def build_strategy(name: str, options: Mapping[str, Any], rng: random.Random) -> Strategy:
    """A fresh strategy ``name`` with ``options``, drawing its randomness from ``rng``."""
    cls = strategy_class(name)
    arguments = dict(options)
    if "rng" in _parameters(cls):
        arguments["rng"] = rng
    return cls(**arguments)


def hashes_keys(name: str) -> bool:
    """Whether strategy ``name`` places each key on a server of its own (consistent hashing).

    Only for these does "how often a key reached its usual server" measure anything: the
    others place requests whatever their key, and reach a key's usual server by chance.
    """
    cls = strategy_class(name)
    return any(issubclass(cls, getattr(hashing, exported)) for exported in hashing.__all__)


def describe_strategy(name: str, options: Mapping[str, Any]) -> str:
    """How to write strategy ``name`` with ``options`` in Python, such as ``MaglevStrategy()``.

    Unlike the strategy's repr, it never shows the seeded ``rng`` (whose repr is an address),
    so it is the same in every run.
    """
    arguments = ", ".join(f"{key}={value!r}" for key, value in sorted(options.items()))
    return f"{strategy_class(name).__name__}({arguments})"
