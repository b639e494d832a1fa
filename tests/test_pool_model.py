"""The pool against a plain-list model, driven by hypothesis."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from loadbalancer import LoadBalancer, NoServersAvailableError, RoundRobinStrategy

NAMES = st.sampled_from([f"s{i}" for i in range(8)])


class PoolMachine(RuleBasedStateMachine):
    """Registration order, capacity, duplicates and round-robin against a list."""

    lb: LoadBalancer
    model: list[str]
    capacity: int

    @initialize(capacity=st.integers(min_value=1, max_value=6))
    def create(self, capacity: int) -> None:
        self.capacity = capacity
        self.lb = LoadBalancer(strategy=RoundRobinStrategy(), max_servers=capacity)
        self.model = []

    @rule(server=NAMES)
    def register(self, server: str) -> None:
        expected = server not in self.model and len(self.model) < self.capacity
        assert self.lb.register(server) is expected
        if expected:
            self.model.append(server)

    @rule(server=NAMES)
    def unregister(self, server: str) -> None:
        expected = server in self.model
        assert self.lb.unregister(server) is expected
        if expected:
            self.model.remove(server)

    @rule(servers=st.lists(NAMES, unique=True, max_size=8))
    def replace(self, servers: list[str]) -> None:
        if len(servers) > self.capacity:
            with pytest.raises(ValueError, match="max_servers"):
                self.lb.replace(servers)
        else:
            self.lb.replace(servers)
            self.model = list(servers)

    @rule()
    def get(self) -> None:
        if self.model:
            assert self.lb.get() in self.model
        else:
            with pytest.raises(NoServersAvailableError):
                self.lb.get()

    @precondition(lambda self: bool(self.model))
    @rule()
    def full_rotation_visits_each_server_once(self) -> None:
        picks = [self.lb.get() for _ in self.model]
        assert sorted(picks) == sorted(self.model)

    @invariant()
    def matches_model(self) -> None:
        assert self.lb.servers == tuple(self.model)
        assert len(self.lb) == len(self.model)
        assert len(self.lb) <= self.capacity


PoolMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestPool = PoolMachine.TestCase
