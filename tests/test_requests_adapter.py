"""The requests adapter, against real uvicorn backends on 127.0.0.1 (requests has no mock)."""

from __future__ import annotations

import contextlib
import gc
import io
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.client import HTTPResponse as HttplibResponse
from http.client import RemoteDisconnected
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import urllib3
from requests.models import PreparedRequest
from urllib3.exceptions import (
    ClosedPoolError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)

from loadbalancer import (
    LoadBalancer,
    NoServersAvailableError,
    OutlierDetection,
    RetryPolicy,
    RingHashStrategy,
)
from loadbalancer.integrations._http import ErrorKind, UnknownHostError
from loadbalancer.integrations.requests import (
    IDEMPOTENT,
    BalancedAdapter,
    HttpPolicy,
    NoBackendAvailable,
    StickyKey,
    error_kind,
)

from .clients_requests import RequestsClient
from .health_servers import server_tls
from .http_backends import CERT, Backend, backends

URL = "http://inventory"


def balancer(*pool: Backend, **kwargs: object) -> LoadBalancer:
    kwargs.setdefault("sleep", lambda seconds: None)  # no backoff: the tests stay fast
    lb = LoadBalancer(**kwargs)  # type: ignore[arg-type]
    lb.replace([b.address for b in pool])
    return lb


def session(lb: LoadBalancer, policy: HttpPolicy | None = None) -> requests.Session:
    http = requests.Session()
    http.mount(f"{URL}/", BalancedAdapter(lb, policy=policy))
    return http


def adapter_of(http: requests.Session) -> BalancedAdapter:
    adapter = http.get_adapter(f"{URL}/")
    assert isinstance(adapter, BalancedAdapter)
    return adapter


def outcomes(lb: LoadBalancer) -> dict[str, tuple[int, int, int, int]]:
    """Per server: successes, failures, cancelled (no outcome), in flight."""
    return {
        name: (s.successes, s.failures, s.cancelled, s.in_flight) for name, s in lb.stats().items()
    }


@pytest.fixture(scope="module")
def pair() -> Iterator[list[Backend]]:
    """Two backends shared by the tests that leave them as they found them (mode ok)."""
    with backends(2) as started:
        yield started


@pytest.fixture
def two(pair: list[Backend]) -> Iterator[list[Backend]]:
    for backend in pair:
        backend.mode = "ok"
        backend.reset()
    yield pair
    for backend in pair:
        backend.mode = "ok"


# -- addressing -----------------------------------------------------------------------------------


def test_each_attempt_goes_to_the_server_with_the_path_query_and_logical_host(
    two: list[Backend],
) -> None:
    a, b = two
    with session(balancer(a, b)) as http:
        first = http.get(f"{URL}/items/7?colour=red&size=2")
        second = http.get(f"{URL}/items/8")
    item = first.json()
    assert (item["backend"], item["path"], item["query"]) == ("b0", "/items/7", "colour=red&size=2")
    assert item["host"] == "inventory"
    assert second.json()["backend"] == "b1"  # round robin: the balancer picks each time
    # The response names the caller's request, so a relative redirect comes back through here.
    assert first.url == f"{URL}/items/7?colour=red&size=2"
    assert first.request.url == first.url


class _SetsACookie(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Set-Cookie", "session=abc; Path=/")  # no Domain: the request's host
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_the_cookies_a_server_sets_belong_to_the_logical_host() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SetsACookie)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        lb = LoadBalancer()
        lb.replace([f"127.0.0.1:{server.server_address[1]}"])
        for host_header in ("logical", "backend"):
            # The response's cookies and the session's agree, whichever Host went out.
            with session(lb, HttpPolicy(host_header=host_header)) as client:
                response = client.get(f"{URL}/items/1")
                assert [c.domain for c in response.cookies] == ["inventory.local"]  # not the IP
                assert [c.domain for c in client.cookies] == ["inventory.local"]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_the_logical_host_keeps_its_port(two: list[Backend]) -> None:
    a, _ = two
    http = requests.Session()
    http.mount("http://inventory:8080/", BalancedAdapter(balancer(a)))
    with http:
        item = http.get("http://inventory:8080/items/1").json()
    assert (item["host"], item["address"]) == ("inventory:8080", a.address)


def test_host_header_backend_names_the_server(two: list[Backend]) -> None:
    a, _ = two
    with session(balancer(a), HttpPolicy(host_header="backend")) as http:
        assert http.get(f"{URL}/items/1").json()["host"] == a.address


def test_a_host_header_of_the_caller_is_kept(two: list[Backend]) -> None:
    a, _ = two
    with session(balancer(a)) as http:
        assert http.get(f"{URL}/items/1", headers={"Host": "other"}).json()["host"] == "other"


def test_the_server_scheme_replaces_the_request_scheme(two: list[Backend]) -> None:
    a, _ = two
    lb = LoadBalancer()
    lb.replace([f"http://{a.address}"])
    http = requests.Session()
    http.mount("https://inventory/", BalancedAdapter(lb))
    with http:
        assert http.get("https://inventory/items/1").json()["backend"] == a.name


def test_real_tls_to_an_ip_backend_verifies_the_logical_name() -> None:
    with backends(1, tls=True) as (backend,):
        lb = balancer(backend)
        http = requests.Session()
        http.mount(
            "https://", BalancedAdapter(lb, policy=HttpPolicy(retry=RetryPolicy(attempts=1)))
        )
        with http:
            # The certificate names localhost (and 127.0.0.1) ...
            assert http.get("https://localhost/items/1", verify=str(CERT)).json()["host"] == (
                "localhost"
            )
            # ... and not inventory: urllib3 keys its pools by the name, so the connection
            # verified for localhost is not reused for inventory.
            with pytest.raises(requests.exceptions.SSLError, match="inventory"):
                http.get("https://inventory/items/1", verify=str(CERT))
            with pytest.warns(urllib3.exceptions.InsecureRequestWarning):
                assert http.get("https://inventory/items/1", verify=False).status_code == 200
        # With the backend's own Host, the certificate is verified against its IP address.
        backend_host = BalancedAdapter(lb, policy=HttpPolicy(host_header="backend"))
        http = requests.Session()
        http.mount("https://", backend_host)
        with http:
            answer = http.get("https://inventory/items/1", verify=str(CERT)).json()
        assert answer["host"] == backend.address
        assert all(s.in_flight == 0 for s in lb.stats().values())


# -- retries --------------------------------------------------------------------------------------


def test_sticky_key_from_a_header_pins_the_server(two: list[Backend]) -> None:
    lb = balancer(*two, strategy=RingHashStrategy())
    with session(lb, HttpPolicy(sticky=StickyKey(header="X-User"))) as http:
        served = {
            user: {
                http.get(f"{URL}/items/1", headers={"X-User": user}).json()["backend"]
                for _ in range(3)
            }
            for user in (f"user{n}" for n in range(16))
        }
    assert all(len(names) == 1 for names in served.values())  # each user on one server
    assert {name for names in served.values() for name in names} == {"b0", "b1"}


def test_a_503_is_retried_on_the_other_server_and_its_connection_given_back(
    two: list[Backend],
) -> None:
    a, b = two
    a.mode = "fail503"
    lb = balancer(a, b)
    with session(lb) as http:
        answer = http.get(f"{URL}/items/1")
        assert answer.headers["x-backend"] == "b1"
        assert adapter_of(http).open_streams == 0
    assert outcomes(lb) == {a.address: (0, 1, 0, 0), b.address: (1, 0, 0, 0)}


def test_every_server_503_the_last_answer_stands_holding_nothing(two: list[Backend]) -> None:
    a, b = two
    a.mode = b.mode = "fail503"
    lb = balancer(a, b)
    with session(lb, HttpPolicy(retry=RetryPolicy(attempts=3))) as http:
        answer = http.get(f"{URL}/items/1", stream=True)
        # No third server: the second 503, set aside for a retry that never went out, is the
        # answer; its body was read and its lease ended already.
        assert answer.status_code == 503
        assert adapter_of(http).open_streams == 0
        assert answer.json() == {"backend": "b1", "error": "fail503"}
    assert [(s.failures, s.in_flight) for s in lb.stats().values()] == [(1, 0), (1, 0)]
    assert (a.count(), b.count()) == (1, 1)  # each server tried once


def test_a_post_is_not_retried_on_a_503_unless_marked_idempotent(two: list[Backend]) -> None:
    a, b = two
    a.mode = "fail503"
    with session(balancer(a, b)) as http:  # a fresh round robin starts with a
        assert http.post(f"{URL}/items/1", data=b"x").status_code == 503
    assert b.count("POST") == 0
    with session(balancer(a, b)) as http:
        answer = http.post(f"{URL}/items/1", data=b"x", headers={IDEMPOTENT: "1"})
    assert answer.json()["backend"] == "b1"
    assert a.count("POST") == 2
    assert IDEMPOTENT.lower() not in answer.json()["headers"]  # stripped: servers never see it


def test_a_get_marked_not_idempotent_is_not_retried(two: list[Backend]) -> None:
    a, b = two
    a.mode = "fail503"
    with session(balancer(a, b)) as http:
        assert http.get(f"{URL}/items/1", headers={IDEMPOTENT: "0"}).status_code == 503
    assert b.count() == 0


def test_a_bad_idempotent_header_names_it(two: list[Backend]) -> None:
    with (
        session(balancer(*two)) as http,
        pytest.raises(ValueError, match=f"{IDEMPOTENT} must be 1 or 0"),
    ):
        http.get(f"{URL}/items/1", headers={IDEMPOTENT: "maybe"})
    assert two[0].count() == two[1].count() == 0


def test_one_shot_bodies_are_never_retried(two: list[Backend]) -> None:
    a, b = two
    a.mode = "fail503"
    marked = {IDEMPOTENT: "1"}
    with session(balancer(a, b)) as http:  # a fresh round robin starts with a
        gen = http.put(f"{URL}/items/1", data=(c for c in [b"ab", b"cd"]), headers=marked)
        assert (gen.status_code, b.count()) == (503, 0)
    a.reset()
    with session(balancer(a, b)) as http:
        assert http.put(f"{URL}/items/2", data=io.BytesIO(b"abcd")).status_code == 503
        assert b.count() == 0
        assert a.requests()[0].body_length == 4
    with session(balancer(a, b)) as http:
        # A bytes body is sent again, as is.
        assert http.put(f"{URL}/items/3", data=b"abcd").json()["body_length"] == 4


def test_a_refused_connection_is_retried_even_for_a_post(two: list[Backend]) -> None:
    with backends(1) as (dead,):
        dead.kill()
        live = two[0]
        lb = balancer(dead, live)
        with session(lb) as http:
            assert http.post(f"{URL}/items/1", data=b"x").json()["backend"] == live.name
    assert outcomes(lb)[dead.address][1] == 1


def test_a_post_is_not_retried_once_sent(two: list[Backend]) -> None:
    _, live = two
    errors: list[BaseException] = []

    def post() -> None:
        try:
            http.post(f"{URL}/items/1", data=b"x")
        except Exception as exc:
            errors.append(exc)

    with backends(1, prefix="h") as (hung,):
        hung.mode = "hang"
        lb = balancer(hung, live)
        with session(lb) as http:
            sender = threading.Thread(target=post)
            sender.start()
            hung.wait_in_flight()
            hung.kill()  # the connection drops after the request went out
            sender.join(5)
    assert len(errors) == 1
    assert error_kind(errors[0]) is ErrorKind.BROKEN
    assert live.count("POST") == 0
    assert outcomes(lb)[hung.address][1] == 1


def test_after_a_read_timeout_a_get_is_retried_and_a_post_is_not(two: list[Backend]) -> None:
    hung, live = two
    hung.mode = "hang"
    lb = balancer(hung, live)
    with session(lb, HttpPolicy(retry=RetryPolicy(per_try_timeout=0.2))) as http:
        assert http.get(f"{URL}/items/1").json()["backend"] == live.name
        with pytest.raises(requests.exceptions.ReadTimeout):
            http.post(f"{URL}/items/1", data=b"x")  # the round robin's turn: hung again
    assert (hung.count("POST"), live.count("POST")) == (1, 0)
    assert outcomes(lb)[hung.address][1] == 2  # both attempts on it timed out: failures


def test_the_per_try_timeout_caps_the_callers_timeouts(two: list[Backend]) -> None:
    a, _ = two
    policy = HttpPolicy(retry=RetryPolicy(attempts=1, per_try_timeout=0.1))
    with session(balancer(a), policy) as http:
        for timeout in (None, 30.0, (30.0, 30.0), urllib3.Timeout(connect=30.0, read=30.0)):
            started = time.monotonic()
            with pytest.raises(requests.exceptions.ReadTimeout):
                http.get(f"{URL}/slow?seconds=5", timeout=timeout)  # type: ignore[arg-type]
            assert time.monotonic() - started < 2.0
    # The caller's own timeout, when shorter, stands.
    policy = HttpPolicy(retry=RetryPolicy(attempts=1, per_try_timeout=30.0))
    with session(balancer(a), policy) as http:
        started = time.monotonic()
        with pytest.raises(requests.exceptions.ReadTimeout):
            http.get(f"{URL}/slow?seconds=5", timeout=0.1)
        assert time.monotonic() - started < 2.0


# -- errors ---------------------------------------------------------------------------------------


def test_error_kinds() -> None:
    refused = NewConnectionError(None, "Failed to establish a new connection")  # type: ignore[arg-type]
    reset = ProtocolError("Connection aborted.", ConnectionResetError(104, "reset"))
    gone = RemoteDisconnected("Remote end closed connection without response")
    read_timeout = ReadTimeoutError(None, "/", "Read timed out.")  # type: ignore[arg-type]
    closed = ClosedPoolError(None, "Pool is closed.")  # type: ignore[arg-type]
    cases: list[tuple[BaseException, ErrorKind]] = [
        (requests.ConnectionError(MaxRetryError(None, "/", refused)), ErrorKind.NOT_SENT),  # type: ignore[arg-type]
        (requests.ConnectTimeout(), ErrorKind.NOT_SENT),
        (requests.exceptions.SSLError(), ErrorKind.BROKEN),  # no word of a handshake: maybe sent
        (ConnectionRefusedError(), ErrorKind.NOT_SENT),
        (requests.ReadTimeout(), ErrorKind.TIMEOUT),
        (requests.ConnectionError(read_timeout), ErrorKind.TIMEOUT),  # a body read timing out
        (requests.ConnectionError(reset), ErrorKind.BROKEN),
        (requests.ConnectionError(ProtocolError("Connection aborted.", gone)), ErrorKind.BROKEN),
        (gone, ErrorKind.BROKEN),
        (requests.exceptions.ChunkedEncodingError(reset), ErrorKind.BROKEN),
        (requests.ConnectionError(closed), ErrorKind.LOCAL),
        (requests.exceptions.ProxyError(), ErrorKind.LOCAL),
        (requests.exceptions.InvalidURL(), ErrorKind.LOCAL),
        (ValueError(), ErrorKind.LOCAL),
    ]
    assert [error_kind(error) for error, _ in cases] == [kind for _, kind in cases]


def test_a_real_refused_connection_is_not_sent() -> None:
    with backends(1) as (dead,):
        dead.kill()
        lb = balancer(dead)
        with session(lb) as http, pytest.raises(requests.exceptions.ConnectionError) as caught:
            http.get(f"{URL}/items/1")
    assert error_kind(caught.value) is ErrorKind.NOT_SENT
    stats = lb.stats()[dead.address]
    assert (stats.successes, stats.failures, stats.in_flight) == (0, 1, 0)


class _TlsBreaker:
    """A server on 127.0.0.1 whose TLS fails: ``"garbage"`` completes the handshake, reads
    the request, then answers a record that is not TLS (the request was sent: BROKEN);
    ``"plain"`` answers the handshake in plain HTTP (nothing was sent: NOT_SENT)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.requests = 0  # requests read whole (garbage mode)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        context = server_tls()
        while True:
            conn, _ = self._listener.accept()
            if self._stop:
                conn.close()
                return
            with conn, contextlib.suppress(OSError):
                if self.mode == "plain":
                    conn.recv(65536)  # the ClientHello
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                    continue
                tls = context.wrap_socket(conn, server_side=True)
                data = b""
                while b"\r\n\r\n" not in data:
                    data += tls.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = 0
                for line in head.lower().split(b"\r\n"):
                    if line.startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                while len(body) < length:  # read it all: closing on unread data resets
                    body += tls.recv(65536)
                self.requests += 1
                # Written under the TLS layer: the client reads a record it cannot decrypt.
                with socket.socket(fileno=os.dup(tls.fileno())) as raw:
                    raw.sendall(b"\x17\x03\x03\x00\x20" + bytes(32))
                    raw.settimeout(5)
                    while raw.recv(65536):  # the client closes first, having read the record
                        pass
                tls.close()

    def close(self) -> None:
        self._stop = True
        socket.create_connection(self._listener.getsockname()).close()  # wakes accept()
        self._thread.join(5)
        self._listener.close()


@contextlib.contextmanager
def tls_breaker(mode: str) -> Iterator[_TlsBreaker]:
    server = _TlsBreaker(mode)
    try:
        yield server
    finally:
        server.close()


def test_a_tls_error_after_the_request_was_sent_is_broken_a_post_not_retried() -> None:
    with tls_breaker("garbage") as breaker, backends(1, tls=True) as (good,):
        lb = LoadBalancer()
        lb.replace([breaker.address, good.address])  # round robin: the breaker first
        http = requests.Session()
        http.mount("https://", BalancedAdapter(lb))
        with http, pytest.raises(requests.exceptions.SSLError) as caught:
            http.post("https://localhost/items/1", data=b"x", verify=str(CERT))
        assert breaker.requests == 1  # it reached the server ...
        assert good.count("POST") == 0  # ... so it was not sent again
        assert error_kind(caught.value) is ErrorKind.BROKEN
        assert outcomes(lb)[breaker.address] == (0, 1, 0, 0)
        lb = LoadBalancer()
        lb.replace([breaker.address, good.address])  # a fresh round robin: the breaker first
        http.mount("https://", BalancedAdapter(lb))
        with http:  # a GET may be sent twice: the retry answers
            answer = http.get("https://localhost/items/1", verify=str(CERT))
        assert answer.json()["backend"] == good.name
        assert breaker.requests == 2


def test_a_failed_tls_handshake_is_not_sent_a_post_retried() -> None:
    with tls_breaker("plain") as breaker, backends(1, tls=True) as (good,):
        lb = LoadBalancer()
        lb.replace([breaker.address, good.address])
        http = requests.Session()
        http.mount("https://", BalancedAdapter(lb))
        with http:
            answer = http.post("https://localhost/items/1", data=b"x", verify=str(CERT))
        assert answer.json()["backend"] == good.name
        assert outcomes(lb)[breaker.address] == (0, 1, 0, 0)
    with tls_breaker("plain") as breaker:
        lb = LoadBalancer()
        lb.replace([breaker.address])
        http = requests.Session()
        http.mount("https://", BalancedAdapter(lb))
        with http, pytest.raises(requests.exceptions.SSLError) as caught:
            http.get("https://localhost/items/1", verify=str(CERT))
    assert error_kind(caught.value) is ErrorKind.NOT_SENT


def test_a_certificate_that_fails_verification_is_not_sent() -> None:
    with backends(1, tls=True) as (backend,):
        lb = balancer(backend)
        http = requests.Session()
        http.mount("https://", BalancedAdapter(lb))
        with http, pytest.raises(requests.exceptions.SSLError) as caught:
            http.get("https://inventory/items/1")  # the system's CAs: the test cert is unknown
    assert error_kind(caught.value) is ErrorKind.NOT_SENT


def test_the_drivers_import_in_any_order() -> None:
    # tests/http_clients.py imports the drivers when it loads: each driver must import first.
    root = Path(__file__).resolve().parent.parent
    for module in ("tests.clients_requests", "tests.clients_aiohttp"):
        done = subprocess.run(
            [sys.executable, "-c", f"import {module}"], cwd=root, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr


def test_no_backend_names_the_host_and_why() -> None:
    with session(LoadBalancer()) as http, pytest.raises(NoBackendAvailable) as caught:
        http.get(f"{URL}/items/1")
    error = caught.value
    assert isinstance(error, requests.exceptions.ConnectionError)
    assert error.host == "inventory"
    assert "'inventory'" in str(error)
    assert isinstance(error.__cause__, NoServersAvailableError)
    assert error.request is not None


def test_an_unrouted_host_names_it(two: list[Backend]) -> None:
    http = requests.Session()
    http.mount("http://", BalancedAdapter({"inventory": balancer(*two)}))
    with http:
        assert http.get("http://INVENTORY/items/1").status_code == 200
        with pytest.raises(NoBackendAvailable, match="'billing'") as caught:
            http.get("http://billing/items/1")
    assert isinstance(caught.value.__cause__, UnknownHostError)


# -- leases ---------------------------------------------------------------------------------------


def test_a_buffered_response_ends_its_lease_once_read(two: list[Backend]) -> None:
    a, _ = two
    lb = balancer(a)
    with session(lb) as http:
        assert http.get(f"{URL}/sse?events=3").text.count("data:") == 3
        assert adapter_of(http).open_streams == 0
        assert outcomes(lb)[a.address] == (1, 0, 0, 0)
        assert http.head(f"{URL}/items/1").status_code == 200  # no body at all
        assert http.get(f"{URL}/status/204").status_code == 204
        assert outcomes(lb)[a.address] == (3, 0, 0, 0)


def test_a_stream_holds_its_lease_until_read_or_closed(two: list[Backend]) -> None:
    a, _ = two
    lb = balancer(a)
    with session(lb) as http:
        adapter = adapter_of(http)
        response = http.get(f"{URL}/sse?events=3", stream=True)
        assert (adapter.open_streams, outcomes(lb)[a.address]) == (1, (0, 0, 0, 1))
        assert sum(1 for line in response.iter_lines() if line) == 3
        assert (adapter.open_streams, outcomes(lb)[a.address]) == (0, (1, 0, 0, 0))
        # Closed before the end: the verdict on the headers stands.
        with http.get(f"{URL}/sse?events=50", stream=True) as response:
            lines = response.iter_lines()
            assert next(lines) == b"data: 0"
            assert outcomes(lb)[a.address][3] == 1
        assert (adapter.open_streams, outcomes(lb)[a.address]) == (0, (2, 0, 0, 0))
        # Read straight from urllib3's response.
        response = http.get(f"{URL}/items/1", stream=True)
        assert b'"backend"' in response.raw.read()
        assert (adapter.open_streams, outcomes(lb)[a.address]) == (0, (3, 0, 0, 0))


def test_a_stream_never_closed_ends_with_no_outcome_when_collected(two: list[Backend]) -> None:
    a, _ = two
    lb = balancer(a)
    with session(lb) as http:
        response = http.get(f"{URL}/sse?events=3", stream=True)
        assert adapter_of(http).open_streams == 1
        del response
        gc.collect()
        assert adapter_of(http).open_streams == 0
    assert outcomes(lb)[a.address] == (0, 0, 1, 0)


def test_closing_the_adapter_ends_open_streams_with_no_outcome(two: list[Backend]) -> None:
    a, b = two
    lb = balancer(a, b)
    http = session(lb)
    adapter = adapter_of(http)
    streams = [http.get(f"{URL}/sse?events=3", stream=True) for _ in range(2)]
    assert adapter.open_streams == 2
    http.close()
    assert adapter.open_streams == 0
    assert outcomes(lb) == {a.address: (0, 0, 1, 0), b.address: (0, 0, 1, 0)}
    for response in streams:
        response.close()  # later: nothing more is recorded
    assert outcomes(lb) == {a.address: (0, 0, 1, 0), b.address: (0, 0, 1, 0)}


def test_a_body_that_breaks_off_is_a_failure() -> None:
    with backends(1) as (a,):
        lb = balancer(a)
        with session(lb) as http:
            response = http.get(f"{URL}/sse?events=100&interval=0.05", stream=True)
            lines = response.iter_lines()
            assert next(lines) == b"data: 0"
            a.kill()
            with pytest.raises(requests.exceptions.ChunkedEncodingError):
                list(lines)
            assert adapter_of(http).open_streams == 0
        assert outcomes(lb)[a.address] == (0, 1, 0, 0)


class Interrupt(BaseException):
    """A read interrupted, as Ctrl-C would."""


def test_a_read_interrupted_by_a_base_exception_is_no_outcome(
    two: list[Backend], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _ = two
    lb = balancer(a)
    with session(lb) as http:
        response = http.get(f"{URL}/sse?events=100&interval=0.05", stream=True)
        lines = response.iter_lines()
        assert next(lines) == b"data: 0"

        def interrupted(self: object, amt: int | None = None) -> bytes:
            raise Interrupt

        # The next chunk's read, in http.client below urllib3, is interrupted: deterministic.
        monkeypatch.setattr(HttplibResponse, "_safe_read", interrupted)
        with pytest.raises(Interrupt):
            list(lines)
        monkeypatch.undo()
        assert adapter_of(http).open_streams == 0
    assert outcomes(lb)[a.address] == (0, 0, 1, 0)


# -- arguments ------------------------------------------------------------------------------------


def test_arguments_are_checked_by_name(two: list[Backend]) -> None:
    lb = balancer(*two)
    with pytest.raises(ValueError, match="max_retries must be 0"):
        BalancedAdapter(lb, max_retries=3)
    with pytest.raises(TypeError, match="policy must be an HttpPolicy"):
        BalancedAdapter(lb, policy=RetryPolicy())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="balancers must be a LoadBalancer"):
        BalancedAdapter([lb])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pool_maxsize must be at least 1"):
        BalancedAdapter(lb, pool_maxsize=0)
    with pytest.raises(TypeError, match="pool_connections must be an int"):
        BalancedAdapter(lb, pool_connections="4")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="pool_block must be a bool"):
        BalancedAdapter(lb, pool_block=1)  # type: ignore[arg-type]
    adapter = BalancedAdapter(lb, pool_connections=3, pool_maxsize=5, pool_block=True)
    assert adapter.poolmanager.connection_pool_kw == {"maxsize": 5, "block": True}
    assert adapter.poolmanager.pools._maxsize == 3
    assert adapter.max_retries.total == 0  # requests never retries behind the balancer


def test_the_shared_suite_driver(two: list[Backend]) -> None:
    a, b = two
    client = RequestsClient(balancer(a, b), None)
    try:
        assert client.name == "requests"
        assert client.get(f"{URL}/items/1").backend == "b0"
        assert client.post(f"{URL}/items/1", b"abc").json()["body_length"] == 3
        assert client.sse(f"{URL}/sse?events=5", lambda n: n < 2) == 2
        assert client.adapter.open_streams == 0
    finally:
        client.close()


def test_threads_share_an_adapter_through_a_backend_killed_mid_run() -> None:
    with backends(3) as pool:
        ejection = OutlierDetection(consecutive_failures=3, max_ejection_percent=50)
        lb = balancer(*pool, outlier_detection=ejection)
        policy = HttpPolicy(retry=RetryPolicy(attempts=3, per_try_timeout=5.0))
        served: list[str] = []
        lock = threading.Lock()
        halfway = threading.Event()

        def worker() -> None:
            for _ in range(25):
                name = http.get(f"{URL}/items/1").json()["backend"]
                with lock:
                    served.append(name)
                    if len(served) == 50:
                        halfway.set()

        with session(lb, policy) as http:
            threads = [threading.Thread(target=worker) for _ in range(8)]
            for thread in threads:
                thread.start()
            assert halfway.wait(5)
            pool[0].kill()
            for thread in threads:
                thread.join(10)
            assert adapter_of(http).open_streams == 0
        assert len(served) == 200  # every request answered: none failed
        assert all(s.in_flight == 0 for s in lb.stats().values())
        assert served[-1] != "b0"
        assert lb.stats()[pool[0].address].failures >= 1


def test_a_raw_body_that_is_not_urllib3s_is_read_before_send_returns(two: list[Backend]) -> None:
    class Buffering(BalancedAdapter):
        def build_response(self, req: PreparedRequest, resp: Any) -> requests.Response:
            response = super().build_response(req, resp)
            response.raw = io.BytesIO(resp.read())  # a file-like body, as a test double might
            return response

    a, _ = two
    lb = balancer(a)
    http = requests.Session()
    adapter = Buffering(lb)
    http.mount(f"{URL}/", adapter)
    with http:
        response = http.get(f"{URL}/items/1", stream=True)
        assert (adapter.open_streams, outcomes(lb)[a.address]) == (0, (1, 0, 0, 0))
        assert response.json()["backend"] == a.name
