"""Strategies: one module per family; the classes are re-exported by ``loadbalancer``.

The registry of built-in strategies by name is public here: ``STRATEGIES``, ``ALIASES``,
``canonical_name`` and ``strategy_class``.
"""

from .registry import ALIASES as ALIASES
from .registry import STRATEGIES as STRATEGIES
from .registry import canonical_name as canonical_name
from .registry import strategy_class as strategy_class

__all__ = ["ALIASES", "STRATEGIES", "canonical_name", "strategy_class"]
