"""The exchange's answer paths, in process: the one-step path for the usual whole answer does
what the general one does, byte for byte and count for count."""

from __future__ import annotations

import asyncio
from typing import Any, cast

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
    lb = LoadBalancer()
    lb.register("s")
    pool = Pool("p", lb)
    settings = ProxySettings(pools={"p": pool}, routes=(Route("p"),))
    client = RecordingClient()
    upstreams = UpstreamPool(loop)
    exchange = Exchange(client, loop, upstreams, settings, b"GET", b"/", True, 0.0)
    exchange.head = read_request([], [(b"host", b"x")], True)
    exchange.pool = pool
    exchange.body_complete = True
    lines = [b"%s: %s\r\n" % pair for pair in pairs]
    length = sum(map(len, pieces))
    # No upstream connection to give back: the answer is all there is.
    answer = Answer(cast(Connection, None), status, reason, lines, length)
    answer.body = list(pieces)
    answer.complete = True
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
