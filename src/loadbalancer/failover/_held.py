"""Answers that outlive the call: a result still holding its lease, and how results are freed."""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar, final

from .._lease import Lease
from ._policy import Verdict

__all__ = ["AsyncResults", "FirstAttempt", "Held", "Results"]

T = TypeVar("T")


@final
class Held(Generic[T]):
    """The answer of ``call_held`` or ``acall_held``: its result, and the lease it still holds.

    ``release()`` ends the lease when the result is done with (a streamed body closed),
    recording ``ok``: the verdict's outcome, which the caller may change first if the result
    later proves otherwise (a body that breaks off is a failure after all; a body read that is
    cancelled is no outcome). ``lease`` is None when the answer no longer holds one: a result
    set aside for a retry that never went out.
    """

    __slots__ = ("lease", "ok", "result")

    def __init__(self, result: T, lease: Lease | None, ok: bool | None) -> None:
        self.result = result
        self.lease = lease
        self.ok = ok

    def release(self) -> bool:
        """End the lease with ``ok``: True the first time, False after (or with no lease)."""
        lease = self.lease
        return lease is not None and lease.release(self.ok)

    def __repr__(self) -> str:
        server = None if self.lease is None else self.lease.server
        return f"Held(result={self.result!r}, server={server!r}, ok={self.ok!r})"


@final
class FirstAttempt(Generic[T]):
    """A first attempt the caller made itself, for ``call_held`` or ``acall_held`` to go on
    from; the call takes its result and error (and leaves ``None`` in their place)."""

    __slots__ = ("error", "lease", "result", "verdict")

    def __init__(
        self, lease: Lease, result: T | None, error: Exception | None, verdict: Verdict
    ) -> None:
        self.lease = lease
        self.result = result
        self.error = error
        self.verdict = verdict


class Results(Protocol[T]):
    """How ``call_held`` frees results that hold resources (an open response body)."""

    def set_aside(self, result: T) -> T:
        """Free what a retryable ``result`` holds (read its body, give its connection back)
        and return an equivalent result that holds nothing: a retry is about to replace it,
        and it stays the answer only if no retry goes out."""
        ...

    def discard(self, result: T) -> None:
        """Free ``result``: it will never be the answer."""
        ...


class AsyncResults(Protocol[T]):
    """How ``acall_held`` frees results that hold resources; the asyncio twin of ``Results``."""

    async def set_aside(self, result: T) -> T:
        """As ``Results.set_aside``, bounded in time, and freeing ``result`` even if cancelled."""
        ...

    def discard(self, result: T) -> None:
        """Free ``result`` without blocking (an async close goes in a task of its own)."""
        ...
