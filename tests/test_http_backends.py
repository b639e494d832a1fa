"""The HTTP test backends themselves, driven with a real client (httpx, sync)."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from .http_backends import (
    MAX_BACKENDS,
    Backend,
    backend_threads,
    backends,
    client_tls,
    open_fds,
)

QUICK = httpx.Timeout(2.0)  # nothing here should come near it


@pytest.fixture
def backend() -> Iterator[Backend]:
    with Backend("solo") as started:
        yield started


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=QUICK) as started:
        yield started


# -- /items --------------------------------------------------------------------------------


def test_items_names_the_backend_and_echoes_the_request(
    backend: Backend, client: httpx.Client
) -> None:
    response = client.get(f"{backend.url}/items/42?x=1", headers={"X-Trace": "abc"})
    assert response.status_code == 200
    assert response.headers["x-backend"] == "solo"
    body = response.json()
    assert body["backend"] == "solo"
    assert body["address"] == backend.address == f"127.0.0.1:{backend.port}"
    assert (body["method"], body["path"], body["id"], body["query"]) == (
        "GET",
        "/items/42",
        "42",
        "x=1",
    )
    assert body["host"] == backend.address
    assert body["headers"]["x-trace"] == "abc"
    assert body["request"] == 0


def test_items_answers_every_method_and_records_body_lengths(
    backend: Backend, client: httpx.Client
) -> None:
    url = f"{backend.url}/items/7"
    assert client.get(url).json()["body_length"] == 0
    head = client.head(url)
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["x-backend"] == "solo"
    assert client.post(url, content=b"x" * 1000).json()["body_length"] == 1000
    assert client.put(url, content=b"abc").json()["body_length"] == 3
    assert client.delete(url).json()["method"] == "DELETE"
    assert client.patch(url, json={"a": 1}).json()["method"] == "PATCH"
    assert [(r.method, r.body_length, r.status) for r in backend.requests()] == [
        ("GET", 0, 200),
        ("HEAD", 0, 200),
        ("POST", 1000, 200),
        ("PUT", 3, 200),
        ("DELETE", 0, 200),
        ("PATCH", 7, 200),
    ]


def test_counts_per_method_and_path(backend: Backend, client: httpx.Client) -> None:
    client.post(f"{backend.url}/items/1")
    client.get(f"{backend.url}/items/1")
    client.get(f"{backend.url}/items/1")
    client.get(f"{backend.url}/status/500")
    assert backend.counts() == Counter(
        {("GET", "/items/1"): 2, ("POST", "/items/1"): 1, ("GET", "/status/500"): 1}
    )
    assert backend.count() == 4
    assert backend.count("POST") == 1
    assert backend.count(path="/items/1") == 3
    assert backend.count("GET", "/status/500") == 1
    backend.reset()
    assert backend.count() == 0
    assert client.get(f"{backend.url}/items/1").json()["request"] == 4  # indices never reused


def test_counts_are_exact_under_concurrent_clients(backend: Backend) -> None:
    def hit(_: int) -> None:
        with httpx.Client(timeout=QUICK) as own:
            for _ in range(10):
                own.post(f"{backend.url}/items/1", content=b"x").raise_for_status()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(hit, range(8)))
    assert backend.count("POST", "/items/1") == 80
    assert len({r.index for r in backend.requests()}) == 80


def test_each_backend_answers_for_itself(client: httpx.Client) -> None:
    with backends(3) as started:
        assert [b.name for b in started] == ["b0", "b1", "b2"]
        assert len({b.port for b in started}) == 3
        for b in started:
            assert client.get(f"{b.url}/items/1").json()["backend"] == b.name
            assert b.count() == 1


def test_unknown_paths_and_bad_parameters(backend: Backend, client: httpx.Client) -> None:
    assert client.get(f"{backend.url}/nope").status_code == 404
    assert client.get(f"{backend.url}/items/").status_code == 404
    assert client.get(f"{backend.url}/items/1/2").status_code == 404
    assert client.get(f"{backend.url}/status/abc").status_code == 400
    assert client.get(f"{backend.url}/status/99").status_code == 400
    assert client.get(f"{backend.url}/slow?seconds=-1").status_code == 400
    assert client.get(f"{backend.url}/sse?events=x").status_code == 400


# -- /status -------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [200, 204, 301, 404, 429, 500, 502, 503, 504])
def test_status_answers_that_status(backend: Backend, client: httpx.Client, code: int) -> None:
    response = client.get(f"{backend.url}/status/{code}")
    assert response.status_code == code
    assert response.headers["x-backend"] == "solo"
    assert "retry-after" not in response.headers
    if code != 204:
        assert response.json() == {"backend": "solo", "status": code}


def test_status_with_retry_after(backend: Backend, client: httpx.Client) -> None:
    response = client.get(f"{backend.url}/status/503?retry_after=2")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "2"


# -- modes ---------------------------------------------------------------------------------


def test_fail503_mode_fails_every_path_until_switched_back(
    backend: Backend, client: httpx.Client
) -> None:
    backend.mode = "fail503"
    assert backend.mode == "fail503"
    for path in ("/items/1", "/status/200", "/sse", "/slow"):
        response = client.get(f"{backend.url}{path}")
        assert response.status_code == 503
        assert response.json()["backend"] == "solo"
        assert "retry-after" not in response.headers
    backend.retry_after = "1"
    assert client.post(f"{backend.url}/items/1").headers["retry-after"] == "1"
    backend.mode = "ok"
    assert client.get(f"{backend.url}/items/1").status_code == 200
    assert backend.count("POST") == 1


def test_modes_are_checked(backend: Backend) -> None:
    with pytest.raises(ValueError, match="mode"):
        backend.mode = "down"  # type: ignore[assignment]
    assert backend.mode == "ok"


def test_hang_mode_holds_the_request_until_the_client_gives_up(backend: Backend) -> None:
    backend.mode = "hang"
    with (
        httpx.Client(timeout=httpx.Timeout(2.0, read=0.1)) as impatient,
        pytest.raises(httpx.ReadTimeout),
    ):
        impatient.post(f"{backend.url}/items/1", content=b"abc")
    (record,) = backend.requests()
    final = backend.wait_ended(record.index)
    assert final.status is None
    assert final.disconnected
    assert final.body_length == 3
    assert backend.count("POST") == 1  # arrived once, never answered


def test_a_kill_cuts_hung_requests_promptly(backend: Backend) -> None:
    backend.mode = "hang"
    with ThreadPoolExecutor(1) as pool, httpx.Client(timeout=QUICK) as client:
        waiting = pool.submit(client.get, f"{backend.url}/items/1")
        backend.wait_in_flight(1)
        started = time.monotonic()
        backend.kill()
        with pytest.raises(httpx.TransportError) as raised:
            waiting.result(timeout=1.0)
        assert not isinstance(raised.value, httpx.TimeoutException)
        assert time.monotonic() - started < 0.5
    (record,) = backend.requests()
    assert record.disconnected
    assert not record.in_flight


# -- kill and restart ----------------------------------------------------------------------


def test_kill_refuses_new_connections_and_drops_kept_alive_ones(
    backend: Backend, client: httpx.Client
) -> None:
    assert client.get(f"{backend.url}/items/1").status_code == 200  # leaves a pooled connection
    with socket.create_connection(("127.0.0.1", backend.port), timeout=1.0) as raw:
        raw.sendall(b"GET /items/2 HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while not answer.endswith(b"}"):  # the whole JSON answer, however it is split
            answer += raw.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200 ")
        backend.kill()
        assert not backend.running
        with contextlib.suppress(ConnectionResetError):  # reset or closed: a crash either way
            assert raw.recv(1) == b""  # the kept-alive connection was closed
    with pytest.raises(httpx.ConnectError):
        client.get(f"{backend.url}/items/1")  # the pooled connection is gone too
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", backend.port), timeout=1.0)
    assert backend.count() == 2


def test_restart_serves_again_on_the_same_port_with_records_kept(
    backend: Backend, client: httpx.Client
) -> None:
    port = backend.port
    client.post(f"{backend.url}/items/1")
    backend.mode = "fail503"
    backend.kill()
    backend.restart()
    assert backend.running
    assert backend.port == port
    assert client.get(f"{backend.url}/items/1").status_code == 503  # the mode is kept
    assert backend.counts() == Counter({("POST", "/items/1"): 1, ("GET", "/items/1"): 1})
    backend.restart()  # from running: a kill and a start
    assert backend.port == port
    assert len(backend_threads()) == 1


def test_start_twice_is_refused(backend: Backend) -> None:
    with pytest.raises(RuntimeError, match="already running"):
        backend.start()


def test_a_port_taken_meanwhile_fails_the_restart_cleanly() -> None:
    with Backend("taken") as victim:
        victim.kill()
        squatter = socket.socket()
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with squatter:
            squatter.bind(("127.0.0.1", victim.port))
            squatter.listen()
            with pytest.raises(RuntimeError, match="could not start"):
                victim.restart()
        assert not victim.running
        assert backend_threads() == []


# -- /sse and /slow ------------------------------------------------------------------------


def test_sse_streams_n_events(backend: Backend, client: httpx.Client) -> None:
    with client.stream("GET", f"{backend.url}/sse?events=3&interval=0.001") as response:
        assert response.headers["content-type"] == "text/event-stream"
        lines = list(response.iter_lines())
    assert lines == ["data: 0", "", "data: 1", "", "data: 2", ""]
    record = backend.wait_ended(0)
    assert (record.status, record.events_sent, record.disconnected) == (200, 3, False)
    assert record.responded is not None
    assert record.arrived <= record.responded <= (record.ended or 0)


def test_sse_events_arrive_one_by_one(backend: Backend, client: httpx.Client) -> None:
    # The second event is 5 s away: reading the first proves it was flushed on its own.
    with client.stream("GET", f"{backend.url}/sse?events=2&interval=5") as response:
        assert next(response.iter_lines()) == "data: 0"
        assert backend.requests()[0].events_sent == 1


def test_sse_notices_the_client_going_away(backend: Backend, client: httpx.Client) -> None:
    with client.stream("GET", f"{backend.url}/sse?events=100&interval=5") as response:
        assert next(response.iter_lines()) == "data: 0"
    left = time.monotonic()
    record = backend.wait_ended(0)
    assert record.disconnected
    assert record.events_sent == 1
    assert (record.ended or 0) - left < 0.5  # not after the 5 s pause


def test_slow_answers_after_the_delay(backend: Backend, client: httpx.Client) -> None:
    started = time.monotonic()
    response = client.get(f"{backend.url}/slow?seconds=0.05")
    assert time.monotonic() - started >= 0.05
    assert response.json()["backend"] == "solo"
    assert backend.wait_ended(0).status == 200


def test_slow_ends_when_the_client_gives_up(backend: Backend) -> None:
    with (
        httpx.Client(timeout=httpx.Timeout(2.0, read=0.05)) as impatient,
        pytest.raises(httpx.ReadTimeout),
    ):
        impatient.get(f"{backend.url}/slow?seconds=5")
    record = backend.wait_ended(0)
    assert record.disconnected
    assert record.status is None


# -- waiting -------------------------------------------------------------------------------


def test_wait_requests_and_its_timeout(backend: Backend, client: httpx.Client) -> None:
    with pytest.raises(TimeoutError, match="solo"):
        backend.wait_requests(1, timeout=0.01)
    client.get(f"{backend.url}/items/1")
    backend.wait_requests(1, "GET", "/items/1", timeout=0.01)


def test_waiters_wake_on_arrival(backend: Backend) -> None:
    arrived = threading.Event()

    def wait() -> None:
        backend.wait_requests(1, "PUT")
        arrived.set()

    waiter = threading.Thread(target=wait)
    waiter.start()
    with httpx.Client(timeout=QUICK) as client:
        client.put(f"{backend.url}/items/1")
    assert arrived.wait(2.0)
    waiter.join()


# -- pools, prompt stops, no leaks ---------------------------------------------------------


def test_backends_bounds_its_count() -> None:
    with pytest.raises(ValueError, match="backends"), backends(0):
        pass
    with pytest.raises(ValueError, match="backends"), backends(MAX_BACKENDS + 1):
        pass


def test_backends_stop_even_when_the_test_fails() -> None:
    def failing_test() -> None:
        with backends(2):
            assert len(backend_threads()) == 2
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        failing_test()
    assert backend_threads() == []


def test_close_is_prompt_and_leaves_nothing_behind() -> None:
    baseline = open_fds()
    with (
        ThreadPoolExecutor(2) as pool,
        httpx.Client(timeout=QUICK) as client,
        backends(2) as (a, b),
    ):
        client.get(f"{a.url}/items/1")  # an idle kept-alive connection
        b.mode = "hang"
        hung = pool.submit(client.get, f"{b.url}/items/1")
        b.wait_in_flight(1)
        b.mode = "ok"
        with client.stream("GET", f"{a.url}/sse?events=100&interval=5") as stream:
            lines = stream.iter_lines()
            assert next(lines) == "data: 0"
            started = time.monotonic()
            a.close()  # mid-stream
            b.close()
            assert time.monotonic() - started < 0.5
            with pytest.raises(httpx.TransportError):
                list(lines)
        with pytest.raises(httpx.TransportError):
            hung.result(timeout=1.0)
        assert backend_threads() == []
        a.close()  # idempotent
    if baseline is not None:
        assert open_fds() == baseline


def test_tls_backend_is_verified_against_its_ip_address() -> None:
    with Backend("secure", tls=True) as secure:
        assert secure.url.startswith("https://127.0.0.1:")
        with httpx.Client(timeout=QUICK, verify=client_tls()) as client:
            body = client.get(f"{secure.url}/items/1").json()
        assert body["backend"] == "secure"
        with (
            httpx.Client(timeout=QUICK) as untrusting,
            pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"),
        ):
            untrusting.get(f"{secure.url}/items/1")
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with httpx.Client(timeout=QUICK, verify=context) as anything:
            assert anything.get(f"{secure.url}/status/204").status_code == 204
    assert backend_threads() == []
