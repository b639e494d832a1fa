"""The aiohttp middleware against real uvicorn backends on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import sys
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import aiohttp
import pytest
from aiohttp.client_proto import ResponseHandler
from aiohttp.client_reqrep import ConnectionKey
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from loadbalancer import (
    AttemptTimeoutError,
    HedgingPolicy,
    LoadBalancer,
    NoServersAvailableError,
    OutlierDetection,
    RetryBudget,
    RetryPolicy,
    RingHashStrategy,
)
from loadbalancer.integrations._http import ErrorKind, UnknownHostError
from loadbalancer.integrations.aiohttp import (
    IDEMPOTENT,
    BalancedMiddleware,
    HttpPolicy,
    NoBackendAvailable,
    PerTryTimeout,
    StickyKey,
    error_kind,
    readdressed,
)

from .http_backends import Backend, backends, client_tls

Main = Callable[[aiohttp.ClientSession, BalancedMiddleware], Awaitable[object]]


@pytest.fixture(scope="module")
def started() -> Iterator[list[Backend]]:
    with backends(3) as pool:
        yield pool


@pytest.fixture
def pool(started: list[Backend]) -> list[Backend]:
    """Three backends, serving normally, with no records (shared by the module: fast)."""
    for backend in started:
        if not backend.running:
            backend.restart()
        backend.mode = "ok"
        backend.retry_after = None
        backend.wait_until(lambda b=backend: not b.in_flight())  # type: ignore[misc]
        backend.reset()
    return started


def balancer(*backends: Backend, **kwargs: object) -> LoadBalancer:
    lb = LoadBalancer(**kwargs)  # type: ignore[arg-type]
    lb.replace([b.address for b in backends])
    return lb


def stats(lb: LoadBalancer) -> tuple[int, int, int, int]:
    """Over every server: successes, failures, cancelled (no outcome), in flight."""
    every = lb.stats().values()
    return (
        sum(s.successes for s in every),
        sum(s.failures for s in every),
        sum(s.cancelled for s in every),
        sum(s.in_flight for s in every),
    )


def run(
    lb: LoadBalancer | dict[str, LoadBalancer],
    main: Main,
    policy: HttpPolicy | None = None,
    connector: Callable[[], aiohttp.BaseConnector] | None = None,
) -> object:
    """Run ``main(session, middleware)`` on a session whose middleware balances over ``lb``."""

    async def session() -> object:
        middleware = BalancedMiddleware(lb, policy=policy)
        async with aiohttp.ClientSession(
            middlewares=(middleware,), connector=None if connector is None else connector()
        ) as http:
            return await main(http, middleware)

    return asyncio.run(session())


async def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until ``predicate()`` holds, letting the loop run (for what happens on it)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def first_event(response: aiohttp.ClientResponse) -> None:
    """Read up to the end of the stream's first event."""
    while not (await response.content.readline()).startswith(b"data:"):
        pass


# -- addressing -----------------------------------------------------------------------------------


def test_each_attempt_goes_to_the_server_with_the_requests_path_and_query(
    pool: list[Backend],
) -> None:
    a = pool[0]

    async def main(http: aiohttp.ClientSession, middleware: BalancedMiddleware) -> None:
        async with http.get("http://inventory/items/7?x=1&y=%20z") as response:
            item = await response.json()
            assert response.url == URL("http://inventory/items/7?x=1&y=%20z")
            assert response.request_info.url.port == a.port
        assert item["backend"] == a.name
        assert (item["path"], item["query"]) == ("/items/7", "x=1&y=%20z")
        assert item["host"] == "inventory"  # "logical": the request's own Host

    run(balancer(a), main)


def test_a_server_with_a_scheme_replaces_the_requests_scheme_and_port(pool: list[Backend]) -> None:
    a = pool[0]
    lb = LoadBalancer()
    lb.replace([f"http://{a.address}"])

    async def main(http: aiohttp.ClientSession, middleware: BalancedMiddleware) -> object:
        async with http.get("https://inventory:9443/items/1") as response:
            return await response.json()

    item = run(lb, main)
    assert isinstance(item, dict)
    assert item["backend"] == a.name
    assert item["host"] == "inventory:9443"


def test_an_ipv6_server_is_addressed_in_brackets(pool: list[Backend]) -> None:
    live = pool[0]
    lb = LoadBalancer()
    lb.replace(["[::1]:1", live.address])  # nothing listens there: refused (or unreachable)

    async def main(http: aiohttp.ClientSession, middleware: BalancedMiddleware) -> None:
        for _ in range(2):  # round robin: one of the two starts on [::1]:1
            async with http.get("http://inventory/items/1") as response:
                assert (await response.json())["backend"] == live.name

    run(lb, main)
    assert lb.stats()["[::1]:1"].failures >= 1  # a connect error, not a bad URL (no outcome)


@pytest.mark.parametrize(
    "url",
    [
        "http://inventory/items/7?x=1&y=%20z",
        "https://inventory:9443/a%2Fb/c%20d;p?q=%C3%A9&r",
        "http://user:p%40ss@inventory/items/1",
        "http://inventory:80/",
        "http://inventory",
        "http://inventory/caf%C3%A9?",
        "http://inventory/items/1?a=b#fragment",
    ],
)
@pytest.mark.parametrize(
    ("scheme", "host", "port"),
    [
        ("http", "127.0.0.1", 8001),
        ("https", "10.0.0.1", None),
        ("http", "backend.internal", 80),
        ("https", "::1", 8443),
        ("http", "fe80::1%eth0", 8001),
        ("http", "b\u00fccher.example", None),
    ],
)
def test_readdressing_agrees_with_yarls_own_way(
    url: str, scheme: str, host: str, port: int | None
) -> None:
    given = URL(url)
    port = port if port is not None else given.explicit_port
    fast = readdressed(given, scheme, host, port)
    slow = given.with_scheme(scheme).with_host(host).with_port(port)

    def parts(url: URL) -> tuple[object, ...]:
        # What the connector and the request line use. (Not URL equality: URL.build leaves
        # out a default port that with_port keeps, and writes an empty path as "/".)
        return (
            url.scheme,
            url.raw_user,
            url.raw_password,
            url.host,
            url.port,
            url.raw_path_qs,
            url.raw_fragment,
        )

    assert parts(fast) == parts(slow)
    assert fast.host_port_subcomponent == slow.host_port_subcomponent


def test_host_header_backend_names_the_server(pool: list[Backend]) -> None:
    a = pool[0]

    async def main(http: aiohttp.ClientSession, middleware: BalancedMiddleware) -> object:
        async with http.get("http://inventory/items/1") as response:
            return await response.json()

    item = run(balancer(a), main, HttpPolicy(host_header="backend"))
    assert isinstance(item, dict)
    assert item["host"] == a.address


def test_a_mapping_routes_each_host_and_an_unknown_host_is_no_backend(
    pool: list[Backend],
) -> None:
    a, b, _ = pool

    async def main(http: aiohttp.ClientSession, middleware: BalancedMiddleware) -> None:
        for host, backend in (("inventory", a), ("Billing", b)):
            async with http.get(f"http://{host}/items/1") as response:
                assert (await response.json())["backend"] == backend.name
        with pytest.raises(NoBackendAvailable, match="'payments'") as caught:
            await http.get("http://payments/items/1")
        assert caught.value.host == "payments"
        assert isinstance(caught.value.__cause__, UnknownHostError)

    run({"inventory": balancer(a), "billing": balancer(b)}, main)


def test_no_server_is_a_client_connection_error_naming_the_host() -> None:
    async def main(http: aiohttp.ClientSession, middleware: BalancedMiddleware) -> None:
        with pytest.raises(NoBackendAvailable, match="no backend available for 'inventory'") as e:
            await http.get("http://inventory/items/1")
        assert isinstance(e.value, aiohttp.ClientConnectionError)
        assert isinstance(e.value.__cause__, NoServersAvailableError)

    run(LoadBalancer(), main)


# -- TLS ------------------------------------------------------------------------------------------


def test_real_tls_to_an_ip_backend_verifies_the_logical_name() -> None:
    def tls() -> aiohttp.BaseConnector:
        return aiohttp.TCPConnector(ssl=client_tls())

    async def localhost(http: aiohttp.ClientSession, middleware: BalancedMiddleware) -> None:
        async with http.get("https://localhost/items/1") as response:  # the cert names it
            assert (await response.json())["host"] == "localhost"

    async def inventory(http: aiohttp.ClientSession, middleware: BalancedMiddleware) -> None:
        with pytest.raises(aiohttp.ClientConnectorCertificateError, match="'inventory'"):
            await http.get("https://inventory/items/1")  # ... and not inventory

    async def backend_host(http: aiohttp.ClientSession, middleware: BalancedMiddleware) -> None:
        async with http.get("https://inventory/items/1") as response:  # the cert names the IP
            assert (await response.json())["host"] == lb.servers[0]

    with backends(1, tls=True) as (backend,):
        lb = balancer(backend)
        # A session each: before aiohttp 3.14, connections are pooled per address, whatever
        # their server_hostname.
        run(lb, localhost, connector=tls)
        run(lb, inventory, connector=tls)
        run(lb, backend_host, HttpPolicy(host_header="backend"), connector=tls)


# -- retries --------------------------------------------------------------------------------------


def test_sticky_header_pins_a_user_to_one_backend(pool: list[Backend]) -> None:
    lb = balancer(*pool, strategy=RingHashStrategy())

    async def main(http: aiohttp.ClientSession, middleware: BalancedMiddleware) -> object:
        homes = {}
        for user in ("ann", "bob", "cy", "dee"):
            served = set()
            for _ in range(3):
                async with http.get("http://inventory/items/1", headers={"x-user": user}) as r:
                    served.add((await r.json())["backend"])
            assert len(served) == 1
            homes[user] = served.pop()
        return homes

    homes = run(lb, main, HttpPolicy(sticky=StickyKey(header="x-user")))
    assert isinstance(homes, dict)
    # The key, not chance, picks the backend: the one the ring gives that key. (Not "more
    # than one backend": the ring depends on the ports, and may put four users on one.)
    names = {b.address: b.name for b in pool}
    assert homes == {user: names[lb.get(user)] for user in homes}


def test_a_refused_post_is_retried_nothing_of_it_was_sent(pool: list[Backend]) -> None:
    dead, live, _ = pool
    dead.kill()

    async def main(http: aiohttp.ClientSession, middleware: BalancedMiddleware) -> None:
        for _ in range(4):  # round robin: every other request picks the dead one first
            async with http.post("http://inventory/items/1", data=b"x") as response:
                assert (await response.json())["backend"] == live.name

    lb = balancer(dead, live)
    run(lb, main)
    assert live.count("POST") == 4
    assert lb.stats()[dead.address].failures >= 1  # refused, then sent elsewhere


def test_503_is_retried_for_get_and_not_for_post(pool: list[Backend]) -> None:
    a, b, _ = pool
    a.mode = b.mode = "fail503"

    async def main(http: aiohttp.ClientSession, middleware: BalancedMiddleware) -> None:
        async with http.get("http://inventory/items/1") as response:
            assert response.status == 503
            assert (await response.json())["error"] == "fail503"  # the set-aside answer
        async with http.post("http://inventory/items/1", data=b"x") as response:
            assert response.status == 503

    lb = balancer(a, b)
    run(lb, main)
    assert a.count("GET") + b.count("GET") == 2
    assert a.count("POST") + b.count("POST") == 1
    assert stats(lb) == (0, 3, 0, 0)


def test_the_idempotent_header_marks_a_request_and_is_stripped(pool: list[Backend]) -> None:
    a, b, _ = pool
    a.mode = b.mode = "fail503"

    async def main(http: aiohttp.ClientSession, middleware: BalancedMiddleware) -> None:
        async with http.post(
            "http://inventory/items/1", data=b"x", headers={IDEMPOTENT: "true"}
        ) as response:
            assert response.status == 503
        async with http.get("http://inventory/items/1", headers={IDEMPOTENT: "0"}) as r:
            assert r.status == 503
        with pytest.raises(ValueError, match=IDEMPOTENT):
            await http.get("http://inventory/items/1", headers={IDEMPOTENT: "perhaps"})

    run(balancer(a, b), main)
    assert a.count("POST") + b.count("POST") == 2  # marked: retried like a GET
    assert a.count("GET") + b.count("GET") == 1  # marked not: sent once
    assert not any(IDEMPOTENT.lower() in r.headers for r in a.requests() + b.requests())


async def _chunks() -> AsyncIterator[bytes]:
    yield b"one-shot"


def _multipart(upload: object) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("name", "value")
    form.add_field("upload", upload, filename="upload.bin")
    return form


@pytest.mark.parametrize(
    ("body", "sent"),
    [
        (lambda: b"bytes", 2),
        (lambda: "text", 2),
        (lambda: {"form": "field"}, 2),
        (lambda: aiohttp.FormData({"a": "1", "b": "2"}), 2),
        (lambda: aiohttp.JsonPayload({"a": 1}), 2),
        (lambda: _multipart(b"in memory"), 2),
        (lambda: _multipart(io.BytesIO(b"a file")), 1),
        (lambda: io.BytesIO(b"a file"), 1),
        (_chunks, 1),
    ],
    ids=[
        "bytes",
        "str",
        "form",
        "formdata",
        "json",
        "multipart",
        "multipart-file",
        "file",
        "async-generator",
    ],
)
def test_only_replayable_bodies_are_retried(
    pool: list[Backend], body: Callable[[], object], sent: int
) -> None:
    a, b, _ = pool
    a.mode = b.mode = "fail503"

    async def main(http: aiohttp.ClientSession, middleware: BalancedMiddleware) -> None:
        async with http.put("http://inventory/items/1", data=body()) as response:
            assert response.status == 503

    run(balancer(a, b), main)
    assert a.count("PUT") + b.count("PUT") == sent  # PUT is idempotent: only the body says


async def _posts(http: aiohttp.ClientSession, n: int) -> int:
    """POST ``n`` times; each answers 200 or times out. Return how many timed out."""
    timeouts: list[PerTryTimeout] = []
    for _ in range(n):
        try:
            async with http.post("http://inventory/items/1", data=b"x") as response:
                assert response.status == 200
        except PerTryTimeout as exc:
            timeouts.append(exc)
    for timeout in timeouts:
        assert isinstance(timeout, aiohttp.ServerTimeoutError)
        assert isinstance(timeout, asyncio.TimeoutError)
        assert isinstance(timeout.__cause__, AttemptTimeoutError)
    return len(timeouts)


def test_a_post_is_never_retried_once_sent_and_times_out_per_try(pool: list[Backend]) -> None:
    hung, live, _ = pool
    hung.mode = "hang"
    policy = HttpPolicy(retry=RetryPolicy(per_try_timeout=0.2))

    async def main(http: aiohttp.ClientSession, middleware: BalancedMiddleware) -> object:
        timeouts = await _posts(http, 2)  # round robin: one of two starts on the hung one
        for _ in range(2):
            async with http.get("http://inventory/items/1") as response:
                assert (await response.json())["backend"] == live.name
        return timeouts

    lb = balancer(hung, live)
    timeouts = run(lb, main, policy)
    assert isinstance(timeouts, int)
    assert timeouts >= 1
    assert hung.count("POST") == timeouts
    assert live.count("POST") == 2 - timeouts
    assert hung.count("GET") >= 1
    assert live.count("GET") == 2
    assert lb.stats()[hung.address].failures == timeouts + hung.count("GET")


def test_hedging_answers_from_the_live_backend_and_never_hedges_a_post(
    pool: list[Backend],
) -> None:
    hung, live, _ = pool
    hung.mode = "hang"
    lb = balancer(hung, live)
    policy = HttpPolicy(retry=RetryPolicy(per_try_timeout=0.3), hedging=HedgingPolicy(delay=0.05))

    async def main(http: aiohttp.ClientSession, middleware: BalancedMiddleware) -> object:
        for _ in range(4):
            async with http.get("http://inventory/items/1") as response:
                assert (await response.json())["backend"] == live.name
        return await _posts(http, 2)

    started = time.monotonic()
    timeouts = run(lb, main, policy)
    assert time.monotonic() - started < 2.0
    assert isinstance(timeouts, int)
    assert timeouts >= 1
    assert hung.count("GET") >= 1
    assert live.count("GET") == 4
    assert hung.count("POST") == timeouts
    assert live.count("POST") == 2 - timeouts
    hung.wait_until(lambda: not hung.in_flight())  # each hedge that lost was cut off
    assert lb.stats()[hung.address].failures == timeouts  # a lost race is no outcome
    assert stats(lb)[3] == 0


def test_a_set_aside_503_is_the_answer_when_no_server_is_left(pool: list[Backend]) -> None:
    a, b, _ = pool
    a.mode = b.mode = "fail503"
    lb = balancer(a, b)

    async def main(http: aiohttp.ClientSession, middleware: BalancedMiddleware) -> None:
        async with http.get("http://inventory/items/1") as response:
            # read, and its connection given back, before the retry that found no server
            assert middleware.open_streams == 0
            successes, failures, _, in_flight = stats(lb)
            assert (successes, failures, in_flight) == (0, 2, 0)
            assert response.status == 503
            assert (await response.json())["error"] == "fail503"

    run(lb, main, HttpPolicy(retry=RetryPolicy(attempts=3, backoff_base=0)))


def test_hedges_send_the_same_body_side_by_side(pool: list[Backend]) -> None:
    hung, live, _ = pool
    hung.mode = "hang"
    body = bytes(range(256)) * 64
    policy = HttpPolicy(hedging=HedgingPolicy(delay=0.05))

    async def main(http: aiohttp.ClientSession, middleware: BalancedMiddleware) -> None:
        for _ in range(2):  # round robin: one of the two starts on the hung one
            async with http.put("http://inventory/items/1", data=body) as response:
                item = await response.json()
            assert item["backend"] == live.name
            assert item["body_length"] == len(body)

    run(balancer(hung, live), main, policy)
    hung.wait_until(lambda: not hung.in_flight())
    sent = [r.body_length for r in hung.requests()]
    assert sent  # hedged at least once, and each copy got the whole body
    assert all(length == len(body) for length in sent)


def test_cancelling_a_hedged_request_records_no_outcome(pool: list[Backend]) -> None:
    a, b, _ = pool
    a.mode = b.mode = "hang"
    lb = balancer(a, b)
    policy = HttpPolicy(hedging=HedgingPolicy(delay=0.01))

    async def main(http: aiohttp.ClientSession, middleware: BalancedMiddleware) -> None:
        request = asyncio.ensure_future(http.get("http://inventory/items/1"))
        await asyncio.to_thread(a.wait_in_flight)
        await asyncio.to_thread(b.wait_in_flight)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request

    run(lb, main, policy)
    assert stats(lb) == (0, 0, 2, 0)
    for backend in (a, b):
        backend.wait_until(lambda b=backend: not b.in_flight())  # type: ignore[misc]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception notes are Python 3.11+")
def test_a_timeout_not_retried_for_want_of_budget_says_so(pool: list[Backend]) -> None:
    hung, live, _ = pool
    hung.mode = "hang"
    lb = balancer(hung, live, retry_budget=RetryBudget(ratio=0, reserve=1))
    policy = HttpPolicy(retry=RetryPolicy(per_try_timeout=0.1))

    async def main(http: aiohttp.ClientSession, middleware: BalancedMiddleware) -> None:
        async with http.get("http://inventory/items/1") as response:  # hung, then live
            assert response.status == 200  # ... with the budget's one token
        with pytest.raises(PerTryTimeout) as caught:
            await http.get("http://inventory/items/1")  # hung, and no token left
        notes = getattr(caught.value, "__notes__", [])
        assert any("retry budget is exhausted" in note for note in notes)

    run(lb, main, policy)
    assert hung.count() == 2
    assert live.count() == 1


def test_a_backend_killed_mid_run_fails_no_request(pool: list[Backend]) -> None:
    victim = pool[1]
    lb = balancer(*pool, outlier_detection=OutlierDetection(consecutive_failures=3))
    policy = HttpPolicy(retry=RetryPolicy(attempts=3, per_try_timeout=5.0))

    async def main(http: aiohttp.ClientSession, middleware: BalancedMiddleware) -> object:
        served: list[str] = []
        killed: list[int] = []
        semaphore = asyncio.Semaphore(8)

        async def one(i: int) -> None:
            async with semaphore, http.get(f"http://inventory/items/{i}") as response:
                response.raise_for_status()
                served.append((await response.json())["backend"])
            if len(served) == 60:
                await asyncio.to_thread(victim.kill)
                killed.append(len(served))

        await asyncio.gather(*(one(i) for i in range(200)))
        assert middleware.open_streams == 0
        # at most the 8 in flight were answered by the victim after it was killed
        assert victim.name not in served[killed[0] + 8 :]
        return served

    served = run(lb, main, policy)
    assert isinstance(served, list)
    assert len(served) == 200  # every request answered 200
    assert lb.stats()[victim.address].ejections == 1
    assert stats(lb)[3] == 0


# host, port, is_ssl, ssl, then fields that vary with aiohttp's version
_KEY = ConnectionKey._make(["h", 1, False, True] + [None] * (len(ConnectionKey._fields) - 4))
_INFO = aiohttp.RequestInfo(
    URL("http://h/"), "GET", CIMultiDictProxy(CIMultiDict()), URL("http://h/")
)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (
            aiohttp.ClientConnectorError(_KEY, OSError(111, "refused")),
            ErrorKind.NOT_SENT,
        ),
        (aiohttp.ConnectionTimeoutError("connect"), ErrorKind.NOT_SENT),
        (aiohttp.SocketTimeoutError("read"), ErrorKind.TIMEOUT),
        (aiohttp.ServerTimeoutError("read"), ErrorKind.TIMEOUT),
        (asyncio.TimeoutError(), ErrorKind.TIMEOUT),
        (aiohttp.ServerDisconnectedError(), ErrorKind.BROKEN),
        (aiohttp.ClientOSError(104, "reset"), ErrorKind.BROKEN),
        (aiohttp.ClientPayloadError("cut"), ErrorKind.BROKEN),
        (aiohttp.ClientResponseError(_INFO, (), status=400, message="bad"), ErrorKind.BROKEN),
        (aiohttp.ServerFingerprintMismatch(b"a", b"b", "h", 1), ErrorKind.NOT_SENT),
        (aiohttp.ClientConnectionError("closed"), ErrorKind.LOCAL),
        (aiohttp.InvalidURL("x"), ErrorKind.LOCAL),
        (ValueError("x"), ErrorKind.LOCAL),
    ],
)
def test_error_kinds(error: Exception, kind: ErrorKind) -> None:
    assert error_kind(error) is kind


# -- leases ---------------------------------------------------------------------------------------


def test_a_body_holds_its_lease_until_read_though_it_has_arrived(pool: list[Backend]) -> None:
    lb = balancer(pool[0])

    async def main(http: aiohttp.ClientSession, middleware: BalancedMiddleware) -> None:
        response = await http.get("http://inventory/items/1")
        await eventually(response.content.is_eof)  # all in: aiohttp has the connection back
        assert middleware.open_streams == 1
        assert stats(lb) == (0, 0, 0, 1)
        assert (await response.json())["backend"] == pool[0].name
        assert middleware.open_streams == 0
        assert stats(lb) == (1, 0, 0, 0)
        response.release()
        assert stats(lb) == (1, 0, 0, 0)

    run(lb, main)


async def _iterate(chunks: AsyncIterator[object]) -> None:
    async for _ in chunks:
        pass


@pytest.mark.parametrize(
    "read",
    [
        lambda r: r.read(),
        lambda r: r.text(),
        lambda r: r.content.read(),
        lambda r: _iterate(r.content),
        lambda r: _iterate(r.content.iter_chunked(7)),
        lambda r: _iterate(r.content.iter_any()),
        lambda r: _iterate(r.content.iter_chunks()),
        lambda r: r.content.readexactly(int(r.headers["content-length"])),
    ],
    ids=[
        "read",
        "text",
        "content.read",
        "lines",
        "iter_chunked",
        "iter_any",
        "iter_chunks",
        "readexactly",
    ],
)
def test_reading_a_body_to_the_end_ends_its_lease_whichever_way(
    pool: list[Backend], read: Callable[[aiohttp.ClientResponse], Awaitable[object]]
) -> None:
    lb = balancer(pool[0])

    async def main(http: aiohttp.ClientSession, middleware: BalancedMiddleware) -> None:
        response = await http.get("http://inventory/items/1")
        await eventually(response.content.is_eof)  # all in, none read
        assert middleware.open_streams == 1
        await read(response)
        assert middleware.open_streams == 0
        assert stats(lb) == (1, 0, 0, 0)
        response.release()

    run(lb, main)


def test_no_body_ends_the_lease_with_the_headers(pool: list[Backend]) -> None:
    lb = balancer(pool[0])

    async def main(http: aiohttp.ClientSession, middleware: BalancedMiddleware) -> None:
        response = await http.get("http://inventory/status/204")
        assert middleware.open_streams == 0
        assert stats(lb) == (1, 0, 0, 0)
        assert response.status == 204

    run(lb, main)


def test_a_stream_holds_its_lease_until_the_body_is_read(pool: list[Backend]) -> None:
    backend = pool[0]
    lb = balancer(backend)

    async def main(http: aiohttp.ClientSession, middleware: BalancedMiddleware) -> None:
        async with http.get("http://inventory/sse?events=3&interval=0.05") as response:
            assert middleware.open_streams == 1
            assert stats(lb) == (0, 0, 0, 1)
            await first_event(response)
            assert stats(lb) == (0, 0, 0, 1)
            assert (await response.read()).count(b"data:") == 2
            assert middleware.open_streams == 0
            assert stats(lb) == (1, 0, 0, 0)

    run(lb, main)


def test_breaking_out_of_a_stream_ends_the_lease_at_release(pool: list[Backend]) -> None:
    backend = pool[0]
    lb = balancer(backend)

    async def main(http: aiohttp.ClientSession, middleware: BalancedMiddleware) -> None:
        response = await http.get("http://inventory/sse?events=1000&interval=0.01")
        async for line in response.content:
            if line.startswith(b"data:"):
                break
        assert stats(lb) == (0, 0, 0, 1)
        response.release()
        assert middleware.open_streams == 0
        assert stats(lb) == (1, 0, 0, 0)

    run(lb, main)
    backend.wait_until(lambda: not backend.in_flight())
    assert backend.requests()[0].disconnected


def test_a_body_that_breaks_off_is_a_failure_at_once(pool: list[Backend]) -> None:
    backend = pool[0]
    lb = balancer(backend)

    async def main(http: aiohttp.ClientSession, middleware: BalancedMiddleware) -> None:
        async with http.get("http://inventory/sse?events=3&interval=30") as response:
            await first_event(response)
            await asyncio.to_thread(backend.kill)
            # the connection is lost: the lease ends then, before anyone reads on
            await eventually(lambda: middleware.open_streams == 0)
            assert stats(lb) == (0, 1, 0, 0)
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()
        assert stats(lb) == (0, 1, 0, 0)

    run(lb, main)


def test_a_cancelled_body_read_records_no_outcome(pool: list[Backend]) -> None:
    backend = pool[0]
    lb = balancer(backend)

    async def main(http: aiohttp.ClientSession, middleware: BalancedMiddleware) -> None:
        async with http.get("http://inventory/sse?events=3&interval=30") as response:
            await first_event(response)
            reading = asyncio.ensure_future(response.read())
            await asyncio.sleep(0)  # the read starts waiting for the next event
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
            assert middleware.open_streams == 0
            assert stats(lb) == (0, 0, 1, 0)

    run(lb, main)


def test_cancelling_a_request_records_no_outcome(pool: list[Backend]) -> None:
    hung = pool[0]
    hung.mode = "hang"
    lb = balancer(hung)

    async def main(http: aiohttp.ClientSession, middleware: BalancedMiddleware) -> None:
        request = asyncio.ensure_future(http.get("http://inventory/items/1"))
        await asyncio.to_thread(hung.wait_in_flight)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request

    run(lb, main)
    assert stats(lb) == (0, 0, 1, 0)
    hung.wait_until(lambda: not hung.in_flight())


def test_a_response_dropped_half_read_ends_its_lease_when_collected(
    pool: list[Backend],
) -> None:
    lb = balancer(pool[0])

    async def main(http: aiohttp.ClientSession, middleware: BalancedMiddleware) -> None:
        response = await http.get("http://inventory/sse?events=3")
        await first_event(response)
        # Every event has arrived (aiohttp has its connection back), two are unread: only
        # this frame holds the response now.
        await eventually(response.content.is_eof)
        assert middleware.open_streams == 1
        del response
        gc.collect()
        assert middleware.open_streams == 0
        assert stats(lb) == (0, 0, 1, 0)  # never read to the end: nothing learnt

    run(lb, main)


def test_a_response_dropped_while_its_body_arrives_is_kept_by_its_connection(
    pool: list[Backend],
) -> None:
    lb = balancer(pool[0])

    async def main(http: aiohttp.ClientSession, middleware: BalancedMiddleware) -> None:
        # The second event comes in 30 s (or when the client leaves): the body is still
        # arriving whatever the timing, so aiohttp's connection keeps the response alive.
        response = await http.get("http://inventory/sse?events=2&interval=30")
        await first_event(response)
        alive = weakref.ref(response)
        del response
        gc.collect()
        assert alive() is not None
        assert middleware.open_streams == 1
        assert stats(lb) == (0, 0, 0, 1)

    run(lb, main)  # the session closes under the body: no outcome
    assert stats(lb) == (0, 0, 1, 0)


def test_close_ends_open_leases_with_no_outcome(pool: list[Backend]) -> None:
    lb = balancer(pool[0])

    async def main(http: aiohttp.ClientSession, middleware: BalancedMiddleware) -> None:
        async with http.get("http://inventory/sse?events=2&interval=0.05") as response:
            assert middleware.open_streams == 1
            middleware.close()
            assert middleware.open_streams == 0
            assert stats(lb) == (0, 0, 1, 0)
            assert (await response.read()).count(b"data:") == 2  # still readable
        assert stats(lb) == (0, 0, 1, 0)  # ended once

    run(lb, main)


@pytest.mark.skipif(
    not hasattr(ResponseHandler, "closed"), reason="aiohttp too old: no ResponseHandler.closed"
)
def test_closing_the_session_ends_open_leases_with_no_outcome(pool: list[Backend]) -> None:
    lb = balancer(pool[0])

    async def main() -> None:
        middleware = BalancedMiddleware(lb)
        http = aiohttp.ClientSession(middlewares=(middleware,))
        response = await http.get("http://inventory/sse?events=2&interval=30")
        await first_event(response)
        await http.close()
        await eventually(lambda: middleware.open_streams == 0)
        assert stats(lb) == (0, 0, 1, 0)
        response.release()
        assert stats(lb) == (0, 0, 1, 0)

    asyncio.run(main())


# -- arguments ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        (("lb",), {}, TypeError, "balancers must be a LoadBalancer"),
        (({},), {}, ValueError, "balancers must map at least one host"),
        (({"inventory": 1},), {}, TypeError, r"balancers\['inventory'\]"),
        ((LoadBalancer(),), {"policy": 3}, TypeError, "policy must be an HttpPolicy"),
    ],
)
def test_arguments_are_checked(
    args: tuple[object, ...], kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        BalancedMiddleware(*args, **kwargs)  # type: ignore[arg-type]
