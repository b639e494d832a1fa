"""The extension point of discovery: a ``Source`` yields whole memberships as they change."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterable, Mapping
from types import MappingProxyType
from typing import Any, final

__all__ = ["Membership", "Source", "StaticSource"]


@final
class Membership:
    """One whole membership: each server's weight, in order, and optional metadata.

    ``weights`` maps server names to weights (or lists names, each of weight 1). Entries are
    kept as given: the runner skips bad ones (an empty name, a weight that is not positive)
    with a warning naming them, so one bad record never hides the rest. ``metadata`` maps a
    server to what its registry says of it (an etcd value's JSON, say); the balancer does not
    read it, ``Discovery.metadata`` gives it back.
    """

    __slots__ = ("metadata", "weights")

    def __init__(
        self,
        weights: Mapping[Any, Any] | Iterable[Any],
        metadata: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        if isinstance(weights, Mapping):
            entries = dict(weights)
        elif isinstance(weights, (str, bytes)) or not isinstance(weights, Iterable):
            raise TypeError(
                f"weights must be a mapping or an iterable of names, not {type(weights).__name__}"
            )
        else:
            entries = dict.fromkeys(weights, 1)
        self.weights: Mapping[Any, Any] = MappingProxyType(entries)
        self.metadata: Mapping[str, Mapping[str, Any]] = MappingProxyType(dict(metadata or {}))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Membership):
            return NotImplemented
        return (
            list(self.weights.items()) == list(other.weights.items())
            and self.metadata == other.metadata
        )

    __hash__ = None  # type: ignore[assignment]  # mutable-looking value: compare, don't hash

    def __len__(self) -> int:
        return len(self.weights)

    def __repr__(self) -> str:
        return f"Membership({dict(self.weights)!r})"


class Source(ABC):
    """Where a balancer's membership comes from: a file, DNS, etcd, a list.

    Subclass it to feed balancers from another registry. ``watch()`` is an async generator
    that yields the whole current membership, then each whole membership again whenever it
    changes, for as long as it runs; a runner (``Discovery`` or ``AsyncDiscovery``) applies
    each to a balancer with ``replace()``. To report that the registry cannot be read, let
    ``watch()`` raise: the runner logs it, keeps the last membership, and calls ``watch()``
    again after a capped, jittered backoff. A new ``watch()`` must start with a full read, so
    that the runner resynchronises after every outage. ``watch()`` is cancelled to stop it: it
    must release what it holds (connections, files) when it is.

    A list-then-watch registry (etcd, Kubernetes EndpointSlices through the API server's
    watch) yields after its consistent read, then after each batch of events; a polled one
    (a file, DNS, Consul's blocking queries on ``?index=``) yields when a poll finds a change.
    """

    @property
    @abstractmethod
    def name(self) -> str:
        """Names the source in logs and events, as a URL where it has one."""

    @abstractmethod
    def watch(self) -> AsyncIterator[Membership]:
        """Yield the whole membership now, then each time it changes (see the class)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


@final
class StaticSource(Source):
    """A fixed membership, for tests and defaults: yielded once, then never changed."""

    __slots__ = ("_membership",)

    def __init__(self, servers: Mapping[str, float] | Iterable[str]) -> None:
        self._membership = Membership(servers)

    @property
    def name(self) -> str:
        """``static:`` and the servers."""
        return "static:" + ",".join(map(str, self._membership.weights))

    async def watch(self) -> AsyncIterator[Membership]:
        """Yield the membership, then wait until cancelled."""
        import asyncio

        yield self._membership
        await asyncio.Event().wait()
