"""The checks both exporters make of a balancer added under a name."""

from __future__ import annotations

from collections.abc import Mapping

from .. import LoadBalancer

__all__ = ["check_addition", "check_name"]


def check_name(name: object, what: str = "name") -> str:
    """``name`` if it is a non-empty str, else ``TypeError``/``ValueError`` naming ``what``."""
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, not {type(name).__name__}")
    if not name:
        raise ValueError(f"{what} must be a non-empty string")
    return name


def check_addition(
    name: object, lb: object, known: Mapping[str, LoadBalancer], exported: str
) -> None:
    """Raise, naming the argument, unless ``lb`` (a ``LoadBalancer``) may join ``known``
    under ``name``: a name taken, or a balancer already there under another name (its series
    would count twice in any sum over balancers), is refused. ``exported`` says how the
    exporter's messages put it ("collected", "reported")."""
    check_name(name)
    if not isinstance(lb, LoadBalancer):
        raise TypeError(f"lb must be a LoadBalancer, not {type(lb).__name__}")
    if name in known:
        raise ValueError(f"name: a balancer named {name!r} is already {exported}")
    for other, present in known.items():
        if present is lb:
            raise ValueError(f"lb: this balancer is already {exported} as {other!r}")
