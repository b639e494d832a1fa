"""Test doubles: the shipped ``loadbalancer.testing.FakeClock``, as these tests use it."""

from __future__ import annotations

from loadbalancer import testing


class FakeClock(testing.FakeClock):
    """``loadbalancer.testing.FakeClock``, starting at 1000 s as these tests always have.

    A start far from zero catches code that mistakes a reading for a duration.
    """

    __slots__ = ()

    def __init__(self, start: float = 1000.0) -> None:
        super().__init__(start)
