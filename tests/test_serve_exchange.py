"""The exchange's answer paths, in process: the one-step path for the usual whole answer does
what the general one does, byte for byte and count for count."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadbalancer import LoadBalancer
from loadbalancer.serve._headers import read_request
from loadbalancer.serve._proxy import Exchange
from loadbalancer.serve._settings import Pool, ProxySettings, Route
from loadbalancer.serve._upstream import Answer, Connection, UpstreamPool


class RecordingClient:
    """A client connection that keeps what the exchange writes and how it ends."""

    peer = "127.0.0.1"
    draining = False
    write_paused = False

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.done: list[bool] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def last(self, exchange: Exchange) -> bool:
        return True

    def exchange_done(self, exchange: Exchange, keep_alive: bool) -> None:
        self.done.append(keep_alive)

    def abort(self) -> None:
        raise AssertionError("the client was cut off")

    def finish(self) -> None:
        raise AssertionError("the client was closed")

    def read_paused(self, paused: bool) -> None:
        pass

    def start_tunnel(self, exchange: Exchange) -> None:
        raise AssertionError("no tunnel here")


fields = st.lists(
    st.tuples(
        st.sampled_from([b"Server", b"Date", b"Content-Type", b"X-Trace", b"Set-Cookie"]),
        st.binary(max_size=12).map(lambda v: v.replace(b"\r", b"").replace(b"\n", b"")),
    ),
    max_size=5,
)


@given(
    status=st.integers(200, 599),
    reason=st.sampled_from([b"OK", b"Not Found", b"", b"Whatever"]),
    pairs=fields,
    pieces=st.lists(st.binary(min_size=1, max_size=20), max_size=4),
)
def test_a_whole_answer_in_one_step_is_what_the_general_path_sends(
    status: int, reason: bytes, pairs: list[tuple[bytes, bytes]], pieces: list[bytes]
) -> None:
    loop = asyncio.new_event_loop()
    try:
        one_step, general = (
            _answered(loop, way, status, reason, pairs, pieces) for way in (True, False)
        )
    finally:
        loop.close()
    assert one_step == general


DECLINED: dict[str, Callable[[Exchange, Answer, RecordingClient], object]] = {
    "head_or_204_or_304": lambda e, a, c: setattr(a, "no_body", True),
    "chunked_or_until_close": lambda e, a, c: setattr(a, "length", None),
    "not_whole_yet": lambda e, a, c: setattr(a, "complete", False),
    "tunnel": lambda e, a, c: setattr(a, "tunnel", True),
    "closing": lambda e, a, c: setattr(e, "close", True),
    "body_still_coming": lambda e, a, c: setattr(e, "body_complete", False),
    "http10": lambda e, a, c: setattr(e, "http11", False),
    "draining": lambda e, a, c: setattr(c, "draining", True),
    "client_asked_to_close": lambda e, a, c: setattr(e.head, "close", True),
    "upgrade_asked": lambda e, a, c: setattr(e.head, "upgrade", b"websocket"),
}


@pytest.mark.parametrize("case", sorted(DECLINED))
def test_any_other_answer_is_left_to_the_general_path_untouched(case: str) -> None:
    loop = asyncio.new_event_loop()
    try:
        exchange, answer, client, lb = _exchange(loop, 200, b"OK", [b"Server: x\r\n"], [b"ok"])
        DECLINED[case](exchange, answer, client)
        lease = lb.acquire()
        assert not exchange._answer_whole(answer, lease, True)
        assert (client.written, client.done, exchange.done, answer.body) == ([], [], False, [b"ok"])
        assert lb.stats()["s"].in_flight == 1  # the lease is still the general path's to end
    finally:
        loop.close()


def _exchange(
    loop: asyncio.AbstractEventLoop,
    status: int,
    reason: bytes,
    lines: list[bytes],
    pieces: list[bytes],
) -> tuple[Exchange, Answer, RecordingClient, LoadBalancer]:
    """A first attempt's exchange for a kept-alive GET read whole, and its whole answer."""
    lb = LoadBalancer()
    lb.register("s")
    pool = Pool("p", lb)
    settings = ProxySettings(pools={"p": pool}, routes=(Route("p"),))
    client = RecordingClient()
    exchange = Exchange(client, loop, UpstreamPool(loop), settings, b"GET", b"/", True, 0.0)
    exchange.head = read_request([], [(b"host", b"x")], True)
    exchange.pool = pool
    exchange.body_complete = True
    length = sum(map(len, pieces))
    # No upstream connection to give back: the answer is all there is.
    answer = Answer(cast(Connection, None), status, reason, lines, length)
    answer.body = list(pieces)
    answer.complete = True
    return exchange, answer, client, lb


def _answered(
    loop: asyncio.AbstractEventLoop,
    one_step: bool,
    status: int,
    reason: bytes,
    pairs: list[tuple[bytes, bytes]],
    pieces: list[bytes],
) -> tuple[Any, ...]:
    """What the client got, how the exchange ended and what the balancer recorded, answered
    by ``_answer_whole`` (``one_step``) or by ``_respond``."""
    lines = [b"%s: %s\r\n" % pair for pair in pairs]
    exchange, answer, client, lb = _exchange(loop, status, reason, lines, pieces)
    lease = lb.acquire()
    ok = status < 500
    if one_step:
        assert exchange._answer_whole(answer, lease, ok)
    else:
        exchange._respond(answer, lease, ok)
    stats = lb.stats()["s"]
    return (
        b"".join(client.written),
        client.done,
        exchange.done,
        exchange.status,
        exchange.bytes_sent,
        exchange.outcome,
        exchange.answered_by,
        (stats.in_flight, stats.successes, stats.failures),
    )
