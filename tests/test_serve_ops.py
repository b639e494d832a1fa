"""`loadbalancer serve` operations: the admin listener, the access log, and real `serve`
processes (flags, SIGTERM drain under load, SIGHUP reload under load, --workers) against real
backends on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from loadbalancer import LoadBalancer, OutlierDetection
from loadbalancer.cli import main
from loadbalancer.serve._admin import AdminServer, status_document
from loadbalancer.serve._run import AccessLogWriter
from loadbalancer.serve._settings import AccessRecord

from .http_backends import Backend, backends

# -- the admin listener -------------------------------------------------------------------------


def _get(port: int, path: str, method: str = "GET") -> tuple[int, str, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read()


def _pools() -> dict[str, LoadBalancer]:
    api = LoadBalancer(outlier_detection=OutlierDetection(), rebuild_in_background=False)
    api.replace({"10.0.0.1:80": 1, "10.0.0.2:80": 2, "10.0.0.3:80": 1})
    for _ in range(5):
        api.done("10.0.0.1:80", ok=False)  # ejected
    held = api.acquire()  # one in flight
    assert held.server != "10.0.0.1:80"
    web = LoadBalancer()
    web.replace(["10.0.1.1:80"])
    return {"api": api, "web": web}


def test_admin_serves_metrics_and_status() -> None:
    pools = _pools()

    async def scenario() -> list[tuple[int, str, bytes]]:
        admin = AdminServer(pools)
        await admin.start("127.0.0.1", 0)
        try:
            port = admin.port
            return await asyncio.gather(
                *(
                    asyncio.to_thread(_get, port, path)
                    for path in ("/metrics", "/status.json", "/status", "/nope")
                )
            )
        finally:
            await admin.close()

    metrics, status_json, status_html, missing = asyncio.run(scenario())
    assert metrics[0] == 200
    assert metrics[1].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(metrics[2].decode())}
    size = {s.labels["balancer"]: s.value for s in families["loadbalancer_membership_size"].samples}
    assert size == {"api": 3, "web": 1}
    ejected = families["loadbalancer_outlier_detection_ejections_active"].samples
    assert {s.labels["balancer"]: s.value for s in ejected} == {"api": 1, "web": 0}

    assert status_json[:2] == (200, "application/json")
    document = json.loads(status_json[2])
    api = document["pools"]["api"]
    assert (api["size"], api["healthy"], api["ejections_active"]) == (3, 2, 1)
    servers = {s["server"]: s for s in api["servers"]}
    assert servers["10.0.0.2:80"]["weight"] == 2
    assert not servers["10.0.0.1:80"]["eligible"]
    assert servers["10.0.0.1:80"]["ejected"]
    assert 0 < servers["10.0.0.1:80"]["ejection_ends_in"] <= 30
    assert sum(s["in_flight"] for s in api["servers"]) == 1
    assert document["pools"]["web"]["servers"][0]["server"] == "10.0.1.1:80"

    assert status_html[0] == 200
    page = status_html[2].decode()
    assert "<h2>api</h2>" in page
    assert "10.0.0.1:80" in page
    assert missing[0] == 404


def test_admin_follows_a_reload() -> None:
    pools = _pools()
    admin = AdminServer(pools)
    replacement = LoadBalancer()
    replacement.replace(["10.0.2.1:80"])
    admin.update(
        {"new": replacement, "api": pools["api"]}, {"web": pools["web"], "api": pools["api"]}
    )
    assert set(admin.balancers) == {"api", "new"}
    assert set(status_document(admin.balancers)["pools"]) == {"api", "new"}
    scrape = admin.respond("GET", "/metrics")[2].decode()
    sizes = {
        s.labels["balancer"]
        for f in text_string_to_metric_families(scrape)
        if f.name == "loadbalancer_membership_size"
        for s in f.samples
    }
    assert sizes == {"api", "new"}
    assert admin.respond("POST", "/metrics")[0] == 405


def test_access_log_lines_are_json(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    writer = AccessLogWriter(str(path))
    record = AccessRecord(
        client="127.0.0.1:5000",
        method="GET",
        target="/items/1",
        host="example.com",
        status=200,
        pool="api",
        upstream="10.0.0.1:80",
        attempts=2,
        upstream_time=0.0125,
        total_time=0.02,
        bytes_sent=123,
        outcome="success",
    )
    odd = dataclasses.replace(
        record,
        target='/q?"\\\u00e9\x01',
        pool=None,
        upstream=None,
        upstream_time=None,
        status=502,
        outcome="failure",
        error="no_upstream",
    )
    writer(record)
    writer(odd)
    writer.close()
    lines = path.read_text(encoding="ascii").splitlines()
    assert len(lines) == 2
    entries = [json.loads(line) for line in lines]
    for entry, expected in zip(entries, (record, odd), strict=True):
        assert abs(entry.pop("time") - time.time()) < 60
        assert entry.pop("pid") == os.getpid()
        assert entry == dataclasses.asdict(expected)
    assert list(json.loads(lines[0]))[:3] == ["time", "pid", "client"]


# -- real `loadbalancer serve` processes --------------------------------------------------------

WAIT = 20.0  # the bound on any one wait for a process
# The event loop of the processes under test: `auto` (uvloop where installed) unless this says.
LOOP = ["--loop", os.environ.get("LOADBALANCER_TEST_SERVE_LOOP", "auto")]


class Serve:
    """A `loadbalancer serve` process this test started, in a session of its own."""

    def __init__(self, args: list[str], *, cwd: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "loadbalancer.cli", "serve", *LOOP, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            start_new_session=True,  # its workers with it, so that teardown reaches them all
        )
        self.stderr_lines: list[str] = []
        self.stdout_lines: list[str] = []
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(
                target=self._read, args=(self.process.stderr, self.stderr_lines), daemon=True
            ),
            threading.Thread(
                target=self._read, args=(self.process.stdout, self.stdout_lines), daemon=True
            ),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: IO[bytes] | None, lines: list[str]) -> None:
        assert stream is not None
        for raw in stream:
            with self._changed:
                lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_line(
        self, needle: str, *, stream: str = "stderr", count: int = 1, timeout: float = WAIT
    ) -> list[str]:
        """Wait until ``count`` lines of ``stream`` contain ``needle``; return them."""
        lines = self.stderr_lines if stream == "stderr" else self.stdout_lines
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [line for line in lines if needle in line]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or (
                    self.process.poll() is not None and not any(r.is_alive() for r in self._readers)
                ):
                    tail = self.stderr_lines[-20:]
                    raise AssertionError(f"no {count} lines with {needle!r}; stderr: {tail}")
                self._changed.wait(min(left, 0.5))

    def ports(self) -> tuple[int, int | None]:
        """The proxy's port and the admin's, from its `listening on` line."""
        line = self.wait_line("listening on")[0]
        proxy = re.search(r"listening on \S+?:(\d+)", line)
        admin = re.search(r"admin on http://\S+?:(\d+)/", line)
        assert proxy is not None, line
        return int(proxy[1]), None if admin is None else int(admin[1])

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = WAIT) -> int:
        code = self.process.wait(timeout)
        for reader in self._readers:
            reader.join(timeout)
        return code

    def stop(self) -> None:
        """Kill what is left of it (the process and its workers, in its own session)."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(WAIT)
        else:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    started: list[Serve] = []

    def start(*args: str) -> Serve:
        process = Serve(list(args), cwd=tmp_path)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def pool() -> Iterator[list[Backend]]:
    with backends(3) as started:
        yield started


def _backend_of(response: httpx.Response) -> str:
    return response.headers["x-backend"]


def test_flags_form_proxies_requests(serve: Any, pool: list[Backend]) -> None:
    a, b, _ = pool
    proxy = serve(
        "--listen",
        "127.0.0.1:0",
        "--backend",
        a.address,
        "--backend",
        b.address,
        "--strategy",
        "rr",
        "--admin",
        "127.0.0.1:0",
    )
    port, admin = proxy.ports()
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        seen = Counter(_backend_of(client.get(f"/items/{i}")) for i in range(10))
    assert seen == {a.name: 5, b.name: 5}
    assert admin is not None
    status, _, body = _get(admin, "/status.json")
    assert status == 200
    servers = json.loads(body)["pools"]["default"]["servers"]
    assert {s["server"]: s["requests"] for s in servers} == {a.address: 5, b.address: 5}
    _, _, scrape = _get(admin, "/metrics")
    families = {f.name for f in text_string_to_metric_families(scrape.decode())}
    assert "loadbalancer_upstream_rq" in families or "loadbalancer_upstream_rq_total" in families
    # The access log: one JSON object per request, on stdout.
    lines = proxy.wait_line('"upstream"', stream="stdout", count=10)
    entries = [json.loads(line) for line in lines]
    assert {e["upstream"] for e in entries} == {a.address, b.address}
    for entry in entries:
        assert entry["status"] == 200
        assert entry["attempts"] == 1
        assert entry["outcome"] == "success"
        assert entry["pool"] == "default"
        assert entry["total_time"] >= entry["upstream_time"] >= 0
    proxy.signal(signal.SIGTERM)
    assert proxy.wait() == 0


Outcome = tuple[float, "httpx.Response | httpx.HTTPError"]


async def _load(
    port: int,
    stop: asyncio.Event,
    clients: int,
    results: list[Outcome] | None = None,
    path: str = "/items/1",
) -> list[Outcome]:
    """GETs from ``clients`` concurrent keep-alive clients until ``stop``: each request's start
    (``time.monotonic()``) and its response or error, appended to ``results`` as they come.
    A client stops at its first error."""
    results = [] if results is None else results

    async def one_client() -> None:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=20) as client:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    results.append((started, await client.get(path)))
                except httpx.HTTPError as error:
                    results.append((started, error))
                    return

    await asyncio.gather(*(one_client() for _ in range(clients)))
    return results


def test_sigterm_under_load_cuts_no_request(serve: Any, pool: list[Backend]) -> None:
    a, b, _ = pool
    proxy = serve(
        "--listen",
        "127.0.0.1:0",
        "--backend",
        a.address,
        "--backend",
        b.address,
        "--access-log",
        "off",
    )
    port, _ = proxy.ports()

    async def scenario() -> tuple[list[Outcome], list[httpx.Response], float]:
        stop = asyncio.Event()
        so_far: list[Outcome] = []
        load = asyncio.create_task(_load(port, stop, clients=16, results=so_far))
        await _until(lambda: len(so_far) >= 200)
        # Slow requests in flight when the signal comes: each must still be answered.
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=20
        ) as slow_client:
            slow = [asyncio.create_task(slow_client.get("/slow?seconds=0.5")) for _ in range(8)]
            await asyncio.to_thread(lambda: _wait_slow(pool, 8))
            signalled = time.monotonic()
            proxy.signal(signal.SIGTERM)
            answered = await asyncio.gather(*slow)
        stop.set()
        return await load, answered, signalled

    results, answered, signalled = asyncio.run(scenario())
    assert [r.status_code for r in answered] == [200] * 8
    before = [outcome for started, outcome in results if started < signalled]
    assert len(before) >= 200
    responses = [o for _, o in results if isinstance(o, httpx.Response)]
    assert all(r.status_code == 200 for r in responses)
    # No request the proxy had started was cut: every request that reached a backend was
    # answered to its client (the 8 slow ones included).
    assert sum(backend.count() for backend in pool) == len(responses) + len(answered)
    # What failed (only requests sent after the signal: see the next test) failed without a
    # response: a new connection refused, or a keep-alive connection closed as idle.
    for _, outcome in results:
        if not isinstance(outcome, httpx.Response):
            assert isinstance(
                outcome, (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError)
            )
    assert proxy.wait() == 0


def test_sigterm_answers_every_request_sent_before_it(serve: Any, pool: list[Backend]) -> None:
    a, _, _ = pool
    proxy = serve("--listen", "127.0.0.1:0", "--backend", a.address, "--access-log", "off")
    port, _ = proxy.ports()

    async def scenario() -> tuple[list[Outcome], float, int]:
        stop = asyncio.Event()
        so_far: list[Outcome] = []
        load = asyncio.create_task(_load(port, stop, clients=16, results=so_far))
        await _until(lambda: len(so_far) >= 200)
        signalled = time.monotonic()
        proxy.signal(signal.SIGTERM)
        status = await asyncio.to_thread(proxy.wait, WAIT)
        stop.set()
        return await load, signalled, status

    results, signalled, status = asyncio.run(scenario())
    assert status == 0
    before = [outcome for started, outcome in results if started < signalled]
    assert len(before) >= 200
    # Sent before the signal, on a keep-alive connection: read by the proxy and answered (the
    # drain closes only connections with nothing read on them).
    assert [o for o in before if not isinstance(o, httpx.Response) or o.status_code != 200] == []


async def _until(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    """Wait, polling the loop, until ``predicate()``; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


def _wait_slow(pool: list[Backend], n: int) -> None:
    deadline = time.monotonic() + WAIT
    while sum(1 for backend in pool for r in backend.in_flight() if r.path.startswith("/slow")) < n:
        assert time.monotonic() < deadline, "the slow requests never arrived"
        time.sleep(0.01)


CONFIG = """\
[pools.web]
strategy = "round_robin"
servers = [{servers}]
"""


def _write_config(path: Path, servers: list[Backend]) -> None:
    path.write_text(CONFIG.format(servers=", ".join(f'"{b.address}"' for b in servers)))


def test_sighup_adds_and_removes_backends_under_load(
    serve: Any, pool: list[Backend], tmp_path: Path
) -> None:
    a, b, c = pool
    config = tmp_path / "proxy.toml"
    _write_config(config, [a, b])
    proxy = serve(
        "--config",
        str(config),
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--access-log",
        "off",
    )
    port, admin = proxy.ports()

    async def scenario() -> list[Outcome]:
        stop = asyncio.Event()
        load = asyncio.create_task(_load(port, stop, clients=8))
        await asyncio.to_thread(a.wait_requests, 20)
        _write_config(config, [b, c])  # a goes, c comes
        proxy.signal(signal.SIGHUP)
        await asyncio.to_thread(proxy.wait_line, "reloaded")
        # Requests picked before the reload may still arrive; once c has served some, a's
        # count stops for good: it gets nothing more however long the load goes on.
        await asyncio.to_thread(c.wait_requests, 20)
        await asyncio.to_thread(a.wait_until, lambda: not a.in_flight())
        a_after_reload = a.count()
        served = c.count()
        await asyncio.to_thread(c.wait_requests, served + 100)
        assert a.count() == a_after_reload
        stop.set()
        return await load

    results = [outcome for _, outcome in asyncio.run(scenario())]
    assert [r for r in results if not isinstance(r, httpx.Response) or r.status_code != 200] == []
    assert admin is not None
    servers = json.loads(_get(admin, "/status.json")[2])["pools"]["web"]["servers"]
    assert [s["server"] for s in servers] == [b.address, c.address]
    assert servers[0]["requests"] > 0  # b stayed: its count went on from before the reload
    proxy.signal(signal.SIGTERM)
    assert proxy.wait() == 0


def test_a_bad_reload_is_one_line_and_keeps_serving(
    serve: Any, pool: list[Backend], tmp_path: Path
) -> None:
    a, _, _ = pool
    config = tmp_path / "proxy.toml"
    _write_config(config, [a])
    proxy = serve("--config", str(config), "--listen", "127.0.0.1:0", "--access-log", "off")
    port, _ = proxy.ports()
    config.write_text(config.read_text().replace("round_robin", "fastest"))
    proxy.signal(signal.SIGHUP)
    (line,) = proxy.wait_line("reload failed")
    assert 'pools.web.strategy: unknown strategy "fastest"' in line
    with httpx.Client(timeout=10) as client:
        assert client.get(f"http://127.0.0.1:{port}/items/1").headers["x-backend"] == a.name
    proxy.signal(signal.SIGTERM)
    assert proxy.wait() == 0


def _worker_pids_seen(proxy: Serve) -> set[int]:
    return {json.loads(line)["pid"] for line in proxy.stdout_lines if line.startswith("{")}


def test_two_workers_serve_on_one_port(serve: Any, pool: list[Backend]) -> None:
    a, _, _ = pool
    proxy = serve(
        "--listen",
        "127.0.0.1:0",
        "--backend",
        a.address,
        "--workers",
        "2",
        "--admin",
        "127.0.0.1:0",
    )
    line = proxy.wait_line("2 workers listening on")[0]
    found = re.search(r"listening on \S+?:(\d+) \(pid (\d+)\)", line)
    assert found is not None, line
    port, parent = int(found[1]), int(found[2])
    lines = [w for w in proxy.wait_line("listening on", count=3) if "(pid " in w and " loop)" in w]
    workers = {int(pid) for w in lines for pid in re.findall(r"\(pid (\d+),", w)}
    admins = [int(p) for w in lines for p in re.findall(r"admin on http://127\.0\.0\.1:(\d+)/", w)]
    assert len(workers) == 2
    assert parent not in workers
    assert len(set(admins)) == 2  # one admin listener per worker
    # New connections spread across both workers (the kernel's SO_REUSEPORT hash): each
    # request on a connection of its own, until both have answered (2**-40 to fail by chance).
    sent = 0
    with httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        for i in range(40):
            assert client.get(f"http://127.0.0.1:{port}/items/1").status_code == 200
            sent += 1
            proxy.wait_line('"pid"', stream="stdout", count=i + 1)
            if len(_worker_pids_seen(proxy)) == 2:
                break
    assert _worker_pids_seen(proxy) == workers
    # Each worker has its own balancer: each counts only the requests it served.
    counts = []
    for admin in admins:
        document = json.loads(_get(admin, "/status.json")[2])
        (server,) = document["pools"]["default"]["servers"]
        counts.append(server["requests"])
    assert sum(counts) == sent
    assert min(counts) >= 1
    proxy.signal(signal.SIGTERM)
    assert proxy.wait() == 0


ROUTED = """\
[admin]
listen = "127.0.0.1:0"

[log]
access = "{log}"

[pools.api]
strategy = "p2c"
servers = ["{a}", "{b}"]
[pools.api.health]
type = "http"
path = "/items/health"
interval = 0.1
timeout = 0.1
rise = 1
fall = 1

[pools.sessions]
strategy = {{ name = "ring_hash", hash = "ketama" }}
servers = ["{c}"]
sticky = {{ header = "X-User" }}

[[routes]]
host = "sessions.test"
pool = "sessions"
[[routes]]
pool = "api"
"""


def test_a_config_file_routes_checks_health_and_logs_to_a_file(
    serve: Any, pool: list[Backend], tmp_path: Path
) -> None:
    a, b, c = pool
    log = tmp_path / "access.log"
    config = tmp_path / "proxy.toml"
    config.write_text(ROUTED.format(a=a.address, b=b.address, c=c.address, log=log))
    proxy = serve("--config", str(config), "--listen", "127.0.0.1:0")
    port, admin = proxy.ports()
    assert admin is not None
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        routed = client.get("/items/1", headers={"Host": "sessions.test", "X-User": "42"})
        assert _backend_of(routed) == c.name
        assert _backend_of(client.get("/items/1")) in {a.name, b.name}
        b.kill()  # its health checks fail (fall = 1): out of the pool
        deadline = time.monotonic() + WAIT
        while True:
            document = json.loads(_get(admin, "/status.json")[2])
            servers = {s["server"]: s for s in document["pools"]["api"]["servers"]}
            if not servers[b.address]["healthy"]:
                break
            assert time.monotonic() < deadline, "b never became unhealthy"
            time.sleep(0.05)
        assert servers[b.address]["last_check_failure"] == "connection refused"
        assert document["pools"]["api"]["healthy"] == 1
        assert {_backend_of(client.get(f"/items/{i}")) for i in range(20)} == {a.name}
    proxy.signal(signal.SIGTERM)
    assert proxy.wait() == 0
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(entries) == 22
    assert entries[0]["pool"] == "sessions"
    assert entries[0]["host"] == "sessions.test"
    assert {e["pool"] for e in entries[1:]} == {"api"}
    for entry in entries:
        assert set(entry) >= {
            "time",
            "pid",
            "upstream",
            "attempts",
            "upstream_time",
            "total_time",
            "outcome",
            "status",
            "error",
        }


def test_workers_reload_on_sighup_and_drain_on_sigterm(
    serve: Any, pool: list[Backend], tmp_path: Path
) -> None:
    a, b, _ = pool
    config = tmp_path / "proxy.toml"
    _write_config(config, [a])
    proxy = serve(
        "--config", str(config), "--listen", "127.0.0.1:0", "--workers", "2", "--access-log", "off"
    )
    line = proxy.wait_line("2 workers listening on")[0]
    found = re.search(r"listening on \S+?:(\d+)", line)
    assert found is not None
    port = int(found[1])
    _write_config(config, [b])
    proxy.signal(signal.SIGHUP)  # to the parent, which forwards it to each worker
    assert len(proxy.wait_line("reloaded", count=2)) == 2
    with httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        assert {_backend_of(client.get(f"http://127.0.0.1:{port}/items/1")) for _ in range(20)} == {
            b.name
        }
    proxy.signal(signal.SIGTERM)
    assert proxy.wait() == 0
    assert len(proxy.wait_line("draining", count=2)) == 2


def test_a_missing_serve_dependency_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> Any:
        return None if name == "httptools" else real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert main(["serve", "--backend", "127.0.0.1:9001"]) == 1
    _, err = capsys.readouterr()
    extra = "pip install 'loadbalancer[serve]'"
    assert err == f"loadbalancer serve: error: the proxy needs httptools: {extra}\n"


def test_a_worker_that_dies_is_restarted_on_the_same_port(serve: Any, pool: list[Backend]) -> None:
    a, _, _ = pool
    proxy = serve("--listen", "127.0.0.1:0", "--backend", a.address, "--workers", "2")
    line = proxy.wait_line("2 workers listening on")[0]
    found = re.search(r"listening on \S+?:(\d+)", line)
    assert found is not None
    port = int(found[1])
    first = {
        int(p) for w in proxy.wait_line("(pid ", count=3) for p in re.findall(r"\(pid (\d+),", w)
    }
    victim = min(first)
    os.kill(victim, signal.SIGKILL)  # a worker this test's process started crashes
    proxy.wait_line(f"(pid {victim}) exited with status -9: restarting it")
    lines = proxy.wait_line(" loop)", count=3)  # each worker's line says its event loop
    now = {int(p) for w in lines for p in re.findall(r"\(pid (\d+),", w)}
    assert len(now - first) == 1
    with httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        for _ in range(20):
            assert client.get(f"http://127.0.0.1:{port}/items/1").status_code == 200
    proxy.signal(signal.SIGTERM)
    assert proxy.wait() == 0  # the replacement exited 0: the crash is history


def _run_serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loadbalancer.cli", "serve", *LOOP, *args],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_in_use_is_one_line_and_status_1(workers: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _run_serve(
            "--listen", f"127.0.0.1:{port}", "--backend", "127.0.0.1:9", "--workers", workers
        )
    assert done.returncode == 1
    assert done.stderr.startswith("loadbalancer serve: error: cannot listen: ")
    assert done.stderr.count("\n") == 1


def test_an_access_log_that_cannot_be_opened_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "access.log"
    done = _run_serve(
        "--listen", "127.0.0.1:0", "--backend", "127.0.0.1:9", "--access-log", str(missing)
    )
    assert done.returncode == 1
    assert done.stderr == (
        f"loadbalancer serve: error: log.access: cannot open {missing}: No such file or directory\n"
    )


def test_a_pool_follows_its_discovery_file(serve: Any, pool: list[Backend], tmp_path: Path) -> None:
    a, b, _ = pool
    inventory = tmp_path / "inventory.json"
    inventory.write_text(json.dumps([a.address]))
    config = tmp_path / "proxy.toml"
    config.write_text(f'[pools.web]\ndiscovery = "{inventory.as_uri()}"\n')
    proxy = serve("--config", str(config), "--listen", "127.0.0.1:0", "--access-log", "off")
    port, _ = proxy.ports()
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        assert _backend_of(client.get("/items/1")) == a.name
        inventory.write_text(json.dumps([b.address]))  # no SIGHUP: the source sees it
        deadline = time.monotonic() + WAIT
        while _backend_of(client.get("/items/1")) != b.name:
            assert time.monotonic() < deadline, "the new membership never arrived"
        assert {_backend_of(client.get("/items/1")) for _ in range(10)} == {b.name}
    proxy.signal(signal.SIGTERM)
    assert proxy.wait() == 0


def test_every_listener_serves_every_route(serve: Any, pool: list[Backend]) -> None:
    a, _, _ = pool
    proxy = serve(
        "--listen",
        "127.0.0.1:0",
        "--listen",
        "127.0.0.1:0",
        "--backend",
        a.address,
        "--access-log",
        "off",
    )
    line = proxy.wait_line("listening on")[0]
    ports = [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", line)]
    assert len(set(ports)) == 2
    with httpx.Client(timeout=10) as client:
        for port in ports:
            assert _backend_of(client.get(f"http://127.0.0.1:{port}/items/1")) == a.name
    proxy.signal(signal.SIGTERM)
    assert proxy.wait() == 0


def _balancers_in_metrics(admin: int) -> set[str]:
    scrape = _get(admin, "/metrics")[2].decode()
    return {
        s.labels["balancer"]
        for f in text_string_to_metric_families(scrape)
        if f.name == "loadbalancer_membership_size"
        for s in f.samples
    }


def test_the_admin_listener_follows_pools_across_reloads(
    serve: Any, pool: list[Backend], tmp_path: Path
) -> None:
    a, b, _ = pool
    config = tmp_path / "proxy.toml"
    _write_config(config, [a])
    proxy = serve(
        "--config",
        str(config),
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--access-log",
        "off",
    )
    port, admin = proxy.ports()
    assert admin is not None
    assert _balancers_in_metrics(admin) == {"web"}
    two_pools = (
        config.read_text()
        + f'[pools.extra]\nservers = ["{b.address}"]\n'
        + '[[routes]]\npath_prefix = "/items/9"\npool = "extra"\n[[routes]]\npool = "web"\n'
    )
    config.write_text(two_pools)
    proxy.signal(signal.SIGHUP)
    proxy.wait_line("reloaded: pools web, extra")
    assert _balancers_in_metrics(admin) == {"web", "extra"}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        assert _backend_of(client.get("/items/9")) == b.name
        assert _backend_of(client.get("/items/1")) == a.name
    status = json.loads(_get(admin, "/status.json")[2])["pools"]
    assert status["extra"]["servers"][0]["requests"] == 1
    config.write_text(f'[pools.extra]\nservers = ["{b.address}"]\n')
    proxy.signal(signal.SIGHUP)
    proxy.wait_line("reloaded: pools extra,")
    assert _balancers_in_metrics(admin) == {"extra"}
    proxy.signal(signal.SIGTERM)
    assert proxy.wait() == 0


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie, dead and not yet reaped, is not)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_exit_when_their_parent_is_killed(serve: Any, pool: list[Backend]) -> None:
    a, _, _ = pool
    proxy = serve("--listen", "127.0.0.1:0", "--backend", a.address, "--workers", "2")
    proxy.wait_line("2 workers listening on")
    lines = proxy.wait_line("(pid ", count=3)
    workers = {int(p) for w in lines for p in re.findall(r"\(pid (\d+),", w)} - {proxy.process.pid}
    assert len(workers) == 2
    os.kill(proxy.process.pid, signal.SIGKILL)  # the parent cannot forward anything now
    proxy.process.wait(WAIT)
    deadline = time.monotonic() + WAIT
    while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)  # polling other processes' state: there is nothing to wait on
    assert not any(_running(pid) for pid in workers)  # they drained and exited, not orphaned
