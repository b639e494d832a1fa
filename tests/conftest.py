from __future__ import annotations

from collections.abc import Callable

import pytest

from loadbalancer import Strategy

from .conformance import STRATEGY_FACTORIES


@pytest.fixture(params=sorted(STRATEGY_FACTORIES))
def make_strategy(request: pytest.FixtureRequest) -> Callable[[], Strategy]:
    """Each registered strategy in turn, as a factory of fresh instances."""
    factory: Callable[[], Strategy] = STRATEGY_FACTORIES[request.param]
    return factory
