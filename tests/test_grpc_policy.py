"""The gRPC channels' settings and A6 verdicts, without a server: bad input, and the rules."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadbalancer import HedgingPolicy, LoadBalancer, RetryPolicy, Verdict
from loadbalancer.integrations.grpc import BalancedChannel, GrpcHealthProbe, GrpcPolicy, StickyKey
from loadbalancer.integrations.grpc_aio import AsyncBalancedChannel, AsyncGrpcHealthProbe

CODES = list(grpc.StatusCode)
POLICY = GrpcPolicy()


@pytest.mark.parametrize(
    ("options", "error", "names"),
    [
        ({"retry": 3}, TypeError, "retry"),
        ({"retryable_codes": "UNAVAILABLE"}, TypeError, "retryable_codes"),
        ({"retryable_codes": [14]}, TypeError, "retryable_codes"),
        ({"failure_codes": None}, TypeError, "failure_codes"),
        ({"hedging": 0.1}, TypeError, "hedging"),
        ({"hedged_methods": "/a.B/C"}, TypeError, "hedged_methods"),
        ({"hedged_methods": ["a.B/C"], "hedging": HedgingPolicy(0.1)}, ValueError, "full method"),
        ({"hedged_methods": ["/a.B/C"]}, ValueError, "hedged_methods needs hedging"),
    ],
)
def test_a_bad_policy_is_refused_naming_the_field(
    options: dict[str, Any], error: type[Exception], names: str
) -> None:
    with pytest.raises(error, match=names):
        GrpcPolicy(**options)


@pytest.mark.parametrize(
    ("options", "error", "names"),
    [
        ({}, ValueError, "exactly one"),
        ({"metadata": "x-user", "function": len}, ValueError, "exactly one"),
        ({"metadata": "X-User"}, ValueError, "lower-case"),
        ({"metadata": ""}, ValueError, "metadata"),
        ({"function": "len"}, TypeError, "function"),
    ],
)
def test_a_bad_sticky_key_is_refused(
    options: dict[str, Any], error: type[Exception], names: str
) -> None:
    with pytest.raises(error, match=names):
        StickyKey(**options)


def test_a_sticky_function_must_return_a_key() -> None:
    with pytest.raises(TypeError, match=r"str, bytes or None"):
        StickyKey(function=lambda request: 42).key((), b"x", streaming=False)  # type: ignore[arg-type,return-value]


def test_a_sticky_function_is_not_asked_about_streamed_requests() -> None:
    asked: list[object] = []

    def key(request: object) -> str:
        asked.append(request)
        return "k"

    sticky = StickyKey(function=key)
    assert sticky.key((), None, streaming=True) is None
    assert asked == []
    assert StickyKey(metadata="x-user").key((("x-user", "u1"),), None, streaming=True) == "u1"


@pytest.mark.parametrize("make", [BalancedChannel, AsyncBalancedChannel])
@pytest.mark.parametrize(
    ("options", "names"),
    [
        ({"policy": RetryPolicy()}, "policy"),
        ({"sticky": "x-user"}, "sticky"),
        ({"credentials": "tls"}, "credentials"),
        ({"channel_factory": "grpc.insecure_channel"}, "channel_factory"),
    ],
)
def test_a_channel_refuses_bad_arguments_naming_them(
    make: Any, options: dict[str, Any], names: str
) -> None:
    lb = LoadBalancer()
    lb.register("127.0.0.1:1")

    async def build() -> None:
        make(lb, **options)

    with pytest.raises(TypeError, match=names):
        asyncio.run(build())
    assert lb.servers == ("127.0.0.1:1",)  # the balancer is unchanged


@pytest.mark.parametrize("make", [BalancedChannel, AsyncBalancedChannel])
def test_a_channel_needs_a_load_balancer(make: Any) -> None:
    async def build() -> None:
        make(["127.0.0.1:1"])

    with pytest.raises(TypeError, match="lb must be a LoadBalancer"):
        asyncio.run(build())


@pytest.mark.parametrize("make", [GrpcHealthProbe, AsyncGrpcHealthProbe])
def test_a_probe_refuses_bad_arguments(make: Any) -> None:
    with pytest.raises(TypeError, match="service"):
        make(service=1)
    with pytest.raises(ValueError, match="timeout"):
        make(timeout=0)
    with pytest.raises(ValueError, match="timeout"):
        make(timeout=True)


# -- the A6 rules ------------------------------------------------------------------------------


def test_outcomes_by_default() -> None:
    assert POLICY.outcome(grpc.StatusCode.OK) is True
    assert POLICY.outcome(grpc.StatusCode.CANCELLED) is None
    for code in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
    ):
        assert POLICY.outcome(code) is False
    for code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
        assert POLICY.outcome(code) is True  # the server working


@given(
    st.sampled_from(CODES),
    st.booleans(),
    st.one_of(st.none(), st.integers(-5, 10_000).map(str), st.text(max_size=4)),
)
def test_a_retry_only_for_a_retryable_code_before_commit_and_as_pushback_allows(
    code: grpc.StatusCode, committed: bool, pushback: str | None
) -> None:
    trailing = () if pushback is None else (("grpc-retry-pushback-ms", pushback),)
    verdict = POLICY.verdict(code, trailing, committed=committed, deadline=None)
    assert verdict.ok == POLICY.outcome(code)
    allowed = code in POLICY.retryable_codes and not committed
    if pushback is not None and allowed:
        allowed = pushback.isascii() and pushback.isdigit()  # "¹" is a digit to isdigit
    assert verdict.retry is allowed
    if verdict.retry and pushback is not None:
        assert verdict.retry_after == int(pushback) / 1000
    elif verdict.retry:
        assert verdict.retry_after is None  # the policy's backoff


def test_no_retry_once_the_deadline_has_passed() -> None:
    past = time.monotonic() - 1
    verdict = POLICY.verdict(grpc.StatusCode.UNAVAILABLE, (), committed=False, deadline=past)
    assert verdict == Verdict(False)


def test_with_a_deadline_the_backoff_is_drawn_and_must_end_before_it() -> None:
    policy = GrpcPolicy(retry=RetryPolicy(backoff_base=0.1, rng=random.Random(7)))
    unavailable = grpc.StatusCode.UNAVAILABLE
    far = time.monotonic() + 60
    for number in (1, 2, 3):
        verdict = policy.verdict(unavailable, (), committed=False, deadline=far, number=number)
        assert verdict.retry
        assert verdict.retry_after is not None
        assert 0 <= verdict.retry_after <= 0.1 * 2 ** (number - 1)
    near = time.monotonic() + 0.5
    slow = (("grpc-retry-pushback-ms", "3000"),)  # a pushback that ends past the deadline
    assert policy.verdict(unavailable, slow, committed=False, deadline=near) == Verdict(False)
    soon = (("grpc-retry-pushback-ms", "10"),)
    assert policy.verdict(unavailable, soon, committed=False, deadline=near).retry_after == 0.01


def test_an_attempt_past_its_per_try_timeout_is_retried_while_the_deadline_allows() -> None:
    policy = GrpcPolicy(retry=RetryPolicy(per_try_timeout=0.5))
    exceeded = grpc.StatusCode.DEADLINE_EXCEEDED
    future = time.monotonic() + 60
    verdict = policy.verdict(exceeded, (), committed=False, deadline=future)
    assert (verdict.ok, verdict.retry) == (False, True)
    assert policy.verdict(exceeded, (), committed=False, deadline=None).retry
    assert not policy.verdict(exceeded, (), committed=True, deadline=None).retry
    past = time.monotonic() - 1
    assert not policy.verdict(exceeded, (), committed=False, deadline=past).retry
    assert not POLICY.verdict(exceeded, (), committed=False, deadline=None).retry


def test_codes_can_be_chosen() -> None:
    policy = GrpcPolicy(
        retryable_codes={grpc.StatusCode.RESOURCE_EXHAUSTED},
        failure_codes={grpc.StatusCode.RESOURCE_EXHAUSTED},
    )
    verdict = policy.verdict(
        grpc.StatusCode.RESOURCE_EXHAUSTED, None, committed=False, deadline=None
    )
    assert verdict == Verdict(False, retry=True)
    assert policy.outcome(grpc.StatusCode.UNAVAILABLE) is True  # no longer a failure


def test_a_backoff_above_max_retry_after_is_still_made_with_a_deadline() -> None:
    policy = GrpcPolicy(retry=RetryPolicy(backoff_base=0.5, max_retry_after=0.1))
    far = time.monotonic() + 60
    for number in (1, 2, 3, 4):
        verdict = policy.verdict(
            grpc.StatusCode.UNAVAILABLE, (), committed=False, deadline=far, number=number
        )
        assert verdict.retry  # max_retry_after caps a server's pushback, not the backoff
        assert verdict.retry_after is None or verdict.retry_after <= 0.1
