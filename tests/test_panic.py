"""Active-check verdicts and the panic threshold."""

from __future__ import annotations

import pytest

from loadbalancer import HealthEvent, HealthEventKind, LoadBalancer, NoServersAvailableError

from .fakes import FakeClock


def pool(threshold: float = 50.0) -> tuple[LoadBalancer, list[HealthEvent]]:
    events: list[HealthEvent] = []
    lb = LoadBalancer(clock=FakeClock(), panic_threshold=threshold, on_event=events.append)
    lb.replace(["a", "b", "c", "d"])
    return lb, events


def test_unhealthy_servers_are_not_picked() -> None:
    lb, events = pool()
    assert lb.set_healthy("a", False)
    assert {lb.get() for _ in range(30)} == {"b", "c", "d"}
    assert lb.stats()["a"].healthy is False
    assert [(e.kind, e.server) for e in events] == [(HealthEventKind.UNHEALTHY, "a")]
    assert lb.set_healthy("a", False)  # idempotent: no second event
    assert len(events) == 1


def test_below_the_threshold_all_servers_are_used() -> None:
    lb, events = pool()
    lb.set_healthy("a", False)
    lb.set_healthy("b", False)
    assert not lb.panic  # two of four healthy is exactly 50%: not below
    lb.set_healthy("c", False)
    assert lb.panic
    assert {lb.get() for _ in range(40)} == {"a", "b", "c", "d"}
    assert all(s.eligible for s in lb.stats().values())
    lb.set_healthy("c", True)
    assert not lb.panic
    assert {lb.get() for _ in range(40)} == {"c", "d"}
    assert [e.kind for e in events if e.server is None] == [
        HealthEventKind.PANIC,
        HealthEventKind.PANIC_OVER,
    ]
    assert "1 of 4 servers healthy" in next(e.detail for e in events if e.server is None)


def test_a_zero_threshold_never_panics() -> None:
    lb, _ = pool(threshold=0)
    for server in "abcd":
        lb.set_healthy(server, False)
    assert not lb.panic
    with pytest.raises(NoServersAvailableError, match="no healthy servers"):
        lb.get()


def test_set_healthy_for_an_unknown_server() -> None:
    lb, _ = pool()
    assert lb.set_healthy("zz", False) is False


@pytest.mark.parametrize(("value", "error"), [(1, TypeError), (None, TypeError)])
def test_set_healthy_needs_a_bool(value: object, error: type[Exception]) -> None:
    lb, _ = pool()
    with pytest.raises(error, match="healthy"):
        lb.set_healthy("a", value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "error"), [(-1, ValueError), (101, ValueError), ("50", TypeError)]
)
def test_bad_panic_threshold(value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="panic_threshold"):
        LoadBalancer(panic_threshold=value)  # type: ignore[arg-type]
