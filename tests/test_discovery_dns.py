"""DnsSource against a real DNS server on 127.0.0.1 (tests/dns_server.py): A/AAAA and SRV
records to servers, refreshes at the clamped TTL, NXDOMAIN both ways, outages kept through."""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadbalancer import LoadBalancer
from loadbalancer.discovery import AsyncDiscovery, Discovery, Membership, MembershipChange
from loadbalancer.discovery.dns import DnsLookupError, DnsSource

from .dns_server import DnsTestServer

NAME = "inventory.svc"
SRV_NAME = "_http._tcp.inventory.svc"


@pytest.fixture
def server() -> Iterator[DnsTestServer]:
    with DnsTestServer(negative_ttl=30) as running:
        yield running


def source(server: DnsTestServer, name: str = NAME, **kwargs: Any) -> DnsSource:
    kwargs.setdefault("timeout", 0.5)
    if not kwargs.get("srv"):
        kwargs.setdefault("port", 8080)
    return DnsSource(name, nameservers=[server.nameserver], **kwargs)


async def first(src: DnsSource) -> Membership:
    """The membership a fresh watch() yields first; the watch is closed after."""
    watch = src.watch()
    try:
        return await anext(watch)
    finally:
        await watch.aclose()


def read(src: DnsSource) -> Membership:
    return asyncio.run(first(src))


class Sleeps:
    """An injected sleep: records each delay asked for, runs ``then`` (a record change, say)
    at a given call, and yields to the loop without waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.actions: dict[int, Any] = {}

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        action = self.actions.get(len(self.delays))
        if action is not None:
            action()
        await asyncio.sleep(0)


# -- A and AAAA ---------------------------------------------------------------------------------


def test_a_records_are_servers_in_address_order(server: DnsTestServer) -> None:
    server.set_a(NAME, ["10.0.0.10", "10.0.0.2", "10.0.0.1"])
    membership = read(source(server, family="ipv4"))
    assert dict(membership.weights) == {"10.0.0.1:8080": 1, "10.0.0.2:8080": 1, "10.0.0.10:8080": 1}
    assert list(membership.weights) == ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.10:8080"]
    assert server.zone.count(NAME, "AAAA") == 0


def test_aaaa_records_are_bracketed_and_follow_the_ipv4_ones(server: DnsTestServer) -> None:
    server.set_a(NAME, ["10.0.0.1"])
    server.set_aaaa(NAME, ["2001:db8::2", "::1"])
    assert list(read(source(server)).weights) == [
        "10.0.0.1:8080",
        "[::1]:8080",
        "[2001:db8::2]:8080",
    ]
    assert list(read(source(server, family="ipv6")).weights) == ["[::1]:8080", "[2001:db8::2]:8080"]
    assert server.zone.count(NAME, "A") == 1  # family="ipv6" asked no A


def test_an_answer_too_large_for_udp_comes_over_tcp(server: DnsTestServer) -> None:
    addresses = [f"10.1.{i // 250}.{i % 250 + 1}" for i in range(150)]
    server.set_a(NAME, addresses)
    membership = read(source(server, family="ipv4"))
    assert len(membership) == 150
    assert [q.protocol for q in server.zone.log(NAME, "A")] == ["udp", "tcp"]


# -- SRV ----------------------------------------------------------------------------------------


def srv_zone(server: DnsTestServer) -> None:
    server.set_srv(
        SRV_NAME,
        [(10, 30, 8080, "a.svc"), (10, 10, 8081, "b.svc"), (20, 5, 9000, "c.svc")],
    )
    server.set_a("a.svc", ["10.0.0.1"])
    server.set_a("b.svc", ["10.0.0.2"])
    server.set_a("c.svc", ["10.0.0.3"])


def test_srv_uses_the_best_priority_with_its_weights(server: DnsTestServer) -> None:
    srv_zone(server)
    membership = read(source(server, SRV_NAME, srv=True, family="ipv4"))
    assert dict(membership.weights) == {"10.0.0.1:8080": 30, "10.0.0.2:8081": 10}
    assert membership.metadata["10.0.0.1:8080"] == {
        "target": "a.svc",
        "priority": 10,
        "srv_weight": 30,
    }
    assert server.zone.count("c.svc") == 0  # the second priority was not even resolved


def test_srv_falls_back_to_the_next_priority_when_the_best_is_empty(
    server: DnsTestServer,
) -> None:
    srv_zone(server)
    server.remove("a.svc")
    server.set_a("b.svc", [])  # exists, no address
    membership = read(source(server, SRV_NAME, srv=True))
    assert dict(membership.weights) == {"10.0.0.3:9000": 5}


def test_srv_targets_come_from_the_additional_section_when_sent(server: DnsTestServer) -> None:
    srv_zone(server)
    server.set_aaaa("a.svc", ["2001:db8::1"])
    server.zone.additional = True
    membership = read(source(server, SRV_NAME, srv=True))
    # a.svc's weight 30 is split between its two addresses: the target keeps its share.
    assert dict(membership.weights) == {
        "10.0.0.1:8080": 15,
        "10.0.0.2:8081": 10,
        "[2001:db8::1]:8080": 15,
    }
    assert [q.qtype for q in server.zone.log()] == ["SRV"]  # no lookup of the targets


def test_srv_weight_zero_is_a_small_positive_weight(server: DnsTestServer) -> None:
    server.set_srv(SRV_NAME, [(0, 0, 80, "a.svc"), (0, 100, 80, "b.svc")])
    server.set_a("a.svc", ["10.0.0.1"])
    server.set_a("b.svc", ["10.0.0.2"])
    membership = read(source(server, SRV_NAME, srv=True, family="ipv4"))
    assert dict(membership.weights) == {"10.0.0.1:80": 0.01, "10.0.0.2:80": 100}
    tuned = read(source(server, SRV_NAME, srv=True, family="ipv4", zero_weight=0.5))
    assert tuned.weights["10.0.0.1:80"] == 0.5


def test_srv_weights_all_zero_stay_equal_and_usable_by_a_balancer(server: DnsTestServer) -> None:
    server.set_srv(SRV_NAME, [(0, 0, 80, "a.svc"), (0, 0, 81, "a.svc")])
    server.set_a("a.svc", ["10.0.0.1"])
    membership = read(source(server, SRV_NAME, srv=True, family="ipv4"))
    assert dict(membership.weights) == {"10.0.0.1:80": 0.01, "10.0.0.1:81": 0.01}
    lb = LoadBalancer()
    lb.replace(dict(membership.weights))
    assert {lb.picker.pick() for _ in range(4)} == {"10.0.0.1:80", "10.0.0.1:81"}


def test_srv_same_endpoint_twice_sums_and_dot_targets_are_ignored(server: DnsTestServer) -> None:
    server.set_srv(SRV_NAME, [(0, 2, 80, "a.svc"), (0, 3, 80, "b.svc"), (0, 9, 80, ".")])
    server.set_a("a.svc", ["10.0.0.1"])
    server.set_a("b.svc", ["10.0.0.1"])
    membership = read(source(server, SRV_NAME, srv=True, family="ipv4"))
    assert dict(membership.weights) == {"10.0.0.1:80": 5}


# -- refreshing at the TTL ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ttl", "expected"),
    [(0, 2.0), (1, 2.0), (30, 30.0), (3600, 60.0)],
)
def test_the_refresh_waits_the_ttl_clamped(
    server: DnsTestServer, ttl: int, expected: float
) -> None:
    server.set_a(NAME, ["10.0.0.1"], ttl=ttl)
    sleeps = Sleeps()
    src = source(server, family="ipv4", min_ttl=2.0, max_ttl=60.0, sleep=sleeps)

    async def main() -> None:
        watch = src.watch()
        await anext(watch)
        server.set_a(NAME, ["10.0.0.2"], ttl=ttl)
        await anext(watch)
        await watch.aclose()

    asyncio.run(main())
    assert sleeps.delays == [expected]


def test_the_ttl_is_the_smallest_of_the_records_used(server: DnsTestServer) -> None:
    server.set_srv(SRV_NAME, [(0, 1, 80, "a.svc")], ttl=50)
    server.set_a("a.svc", ["10.0.0.1"], ttl=20)
    sleeps = Sleeps()
    sleeps.actions[1] = lambda: server.set_a("a.svc", ["10.0.0.2"], ttl=20)
    src = source(server, SRV_NAME, srv=True, family="ipv4", sleep=sleeps)

    async def main() -> list[Membership]:
        watch = src.watch()
        got = [await anext(watch), await anext(watch)]
        await watch.aclose()
        return got

    got = asyncio.run(main())
    assert [list(m.weights) for m in got] == [["10.0.0.1:80"], ["10.0.0.2:80"]]
    assert sleeps.delays == [20.0]


def test_only_a_changed_membership_is_yielded(server: DnsTestServer) -> None:
    server.set_a(NAME, ["10.0.0.1", "10.0.0.2", "10.0.0.3"])
    server.zone.rotate = True  # each answer in another order: not a change
    sleeps = Sleeps()
    sleeps.actions[3] = lambda: server.set_a(NAME, ["10.0.0.1", "10.0.0.2"])
    src = source(server, family="ipv4", sleep=sleeps)

    async def main() -> list[Membership]:
        watch = src.watch()
        got = [await anext(watch), await anext(watch)]
        await watch.aclose()
        return got

    got = asyncio.run(main())
    assert [len(m) for m in got] == [3, 2]
    assert server.zone.count(NAME, "A") == 4  # reads 2 and 3 found no change and yielded nothing


def test_a_record_change_is_picked_up_at_the_real_ttl_floor(server: DnsTestServer) -> None:
    """TTL 0, floor 0.2 s: reads are at least the floor apart, and a change lands by then."""
    server.set_a(NAME, ["10.0.0.1"], ttl=0)
    lb = LoadBalancer()
    src = source(server, family="ipv4", min_ttl=0.2, max_ttl=0.5)

    async def main() -> MembershipChange:
        changes: asyncio.Queue[MembershipChange] = asyncio.Queue()
        async with AsyncDiscovery(lb, src, on_change=changes.put_nowait):
            await asyncio.wait_for(changes.get(), 5)
            assert lb.servers == ("10.0.0.1:8080",)
            server.set_a(NAME, ["10.0.0.2"], ttl=0)
            return await asyncio.wait_for(changes.get(), 5)

    change = asyncio.run(main())
    assert change.added == ("10.0.0.2:8080",)
    assert change.removed == ("10.0.0.1:8080",)
    assert lb.servers == ("10.0.0.2:8080",)
    times = [q.at for q in server.zone.log(NAME, "A")]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps
    assert all(0.19 <= gap < 0.45 for gap in gaps), gaps


def test_a_long_ttl_is_cut_to_the_real_ceiling(server: DnsTestServer) -> None:
    server.set_a(NAME, ["10.0.0.1"], ttl=3600)
    src = source(server, family="ipv4", min_ttl=0.05, max_ttl=0.25)

    async def main() -> None:
        watch = src.watch()
        await anext(watch)
        server.set_a(NAME, ["10.0.0.2"], ttl=3600)
        await asyncio.wait_for(anext(watch), 5)
        await watch.aclose()

    asyncio.run(main())
    first_at, second_at = (q.at for q in server.zone.log(NAME, "A"))
    assert 0.24 <= second_at - first_at < 0.6


# -- NXDOMAIN and empty answers -------------------------------------------------------------------


def test_nxdomain_is_a_failure_by_default(server: DnsTestServer) -> None:
    with pytest.raises(DnsLookupError, match=r"NXDOMAIN.*nxdomain='empty'"):
        read(source(server, "missing.svc"))
    server.set_srv("_x._tcp.missing.svc", [])
    with pytest.raises(DnsLookupError, match="no SRV records"):
        read(source(server, "_x._tcp.missing.svc", srv=True))


def test_nxdomain_and_no_data_are_an_empty_pool_when_asked(server: DnsTestServer) -> None:
    assert len(read(source(server, "missing.svc", nxdomain="empty"))) == 0
    server.set_aaaa(NAME, ["::1"])  # the name exists, but has no A
    assert len(read(source(server, family="ipv4", nxdomain="empty"))) == 0
    server.set_srv(SRV_NAME, [(0, 1, 80, "gone.svc")])
    assert len(read(source(server, SRV_NAME, srv=True, nxdomain="empty"))) == 0


def test_an_empty_pool_reaches_the_balancer_only_when_asked(server: DnsTestServer) -> None:
    server.set_a(NAME, ["10.0.0.1"], ttl=0)

    async def follow(nxdomain: str) -> tuple[str, ...]:
        lb = LoadBalancer()
        src = source(server, family="ipv4", min_ttl=0.05, max_ttl=0.05, nxdomain=nxdomain)
        failed = failure_event()
        changes: asyncio.Queue[MembershipChange] = asyncio.Queue()
        async with AsyncDiscovery(lb, src, on_change=changes.put_nowait, backoff_base=0.05):
            await asyncio.wait_for(changes.get(), 5)
            server.remove(NAME)
            if nxdomain == "empty":
                change = await asyncio.wait_for(changes.get(), 5)
                assert change.removed == ("10.0.0.1:8080",)
            else:
                await asyncio.wait_for(failed.wait(), 5)
            servers = lb.servers
        server.set_a(NAME, ["10.0.0.1"], ttl=0)
        return servers

    with capture_failures():
        assert asyncio.run(follow("fail")) == ("10.0.0.1:8080",)
        assert asyncio.run(follow("empty")) == ()


# -- outages --------------------------------------------------------------------------------------

_failure_events: list[asyncio.Event] = []


def failure_event() -> asyncio.Event:
    """An event set when a runner next logs a failed watch (on the loop's thread)."""
    event = asyncio.Event()
    _failure_events.append(event)
    return event


class _FailureHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if "keeping the last membership" in record.getMessage():
            for event in _failure_events:
                event.set()


class capture_failures:  # noqa: N801  # used as a context manager, named like one
    """Route the runner's failure warnings to the events of ``failure_event()``."""

    def __enter__(self) -> None:
        self._handler = _FailureHandler()
        logging.getLogger("loadbalancer.discovery").addHandler(self._handler)

    def __exit__(self, *_: object) -> None:
        logging.getLogger("loadbalancer.discovery").removeHandler(self._handler)
        _failure_events.clear()


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("servfail", "no nameserver answered"),
        ("refused", "no nameserver answered"),
        ("drop", "no answer within"),
    ],
)
def test_a_failing_server_raises_from_watch(server: DnsTestServer, mode: Any, message: str) -> None:
    server.set_a(NAME, ["10.0.0.1"])
    server.set_mode(mode)
    with pytest.raises(DnsLookupError, match=message):
        read(source(server, family="ipv4", timeout=0.2))


@pytest.mark.parametrize("mode", ["servfail", "drop"])
def test_an_outage_keeps_the_last_membership_and_recovery_applies_the_new(
    server: DnsTestServer, mode: Any
) -> None:
    server.set_a(NAME, ["10.0.0.1", "10.0.0.2"], ttl=0)
    lb = LoadBalancer()
    src = source(server, family="ipv4", min_ttl=0.05, max_ttl=0.05, timeout=0.2)

    async def main() -> None:
        changes: asyncio.Queue[MembershipChange] = asyncio.Queue()
        runner = AsyncDiscovery(lb, src, on_change=changes.put_nowait, backoff_base=0.05)
        async with runner:
            await asyncio.wait_for(changes.get(), 5)
            failed = failure_event()
            server.set_mode(mode)
            await asyncio.wait_for(failed.wait(), 5)
            failed.clear()
            await asyncio.wait_for(failed.wait(), 5)  # and a retry failed too
            assert lb.servers == ("10.0.0.1:8080", "10.0.0.2:8080")
            assert runner.status.failures >= 2
            assert runner.status.last_error is not None
            assert "DnsLookupError" in runner.status.last_error
            server.set_a(NAME, ["10.0.0.3"], ttl=0)
            server.set_mode("answer")
            change = await asyncio.wait_for(changes.get(), 5)
            assert change.added == ("10.0.0.3:8080",)
            assert runner.status.failures == 0

    with capture_failures():
        asyncio.run(main())
    assert lb.servers == ("10.0.0.3:8080",)


def closed_port() -> int:
    """A UDP port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_an_unreachable_nameserver_fails_and_the_next_one_answers(server: DnsTestServer) -> None:
    server.set_a(NAME, ["10.0.0.1"])
    dead = ("127.0.0.1", closed_port())
    with pytest.raises(DnsLookupError, match=r"no nameserver answered|no answer within"):
        read(DnsSource(NAME, port=80, family="ipv4", nameservers=[dead], timeout=0.3))
    # timeout=0.6: each of the two nameservers gets 0.3 s per try, the dead one first.
    both = DnsSource(
        NAME, port=80, family="ipv4", nameservers=[dead, server.nameserver], timeout=0.6
    )
    assert list(read(both).weights) == ["10.0.0.1:80"]


# -- the runners, a real balancer, and no thread left behind --------------------------------------


def test_the_thread_runner_applies_srv_to_a_balancer_and_leaves_no_thread() -> None:
    before = set(threading.enumerate())
    lb = LoadBalancer(max_servers=4)
    with DnsTestServer() as server:
        server.set_srv(SRV_NAME, [(1, 3, 80, "a.svc"), (1, 1, 80, "b.svc")], ttl=0)
        server.set_a("a.svc", ["10.0.0.1"], ttl=0)
        server.set_a("b.svc", ["10.0.0.2"], ttl=0)
        changed = threading.Event()
        src = source(server, SRV_NAME, srv=True, family="ipv4", min_ttl=0.05, max_ttl=0.05)
        with Discovery(lb, src, on_change=lambda _change: changed.set()) as discovery:
            assert discovery.wait_ready(5)
            assert lb.weights == {"10.0.0.1:80": 3, "10.0.0.2:80": 1}
            assert discovery.metadata("10.0.0.2:80")["target"] == "b.svc"
            changed.clear()
            server.set_srv(SRV_NAME, [(1, 3, 80, "a.svc")], ttl=0)
            assert changed.wait(5)
            assert lb.weights == {"10.0.0.1:80": 3}
        assert not discovery.status.running
    assert set(threading.enumerate()) == before


def test_stopping_the_runner_mid_lookup_releases_it(server: DnsTestServer) -> None:
    server.set_mode("drop")
    lb = LoadBalancer()
    src = source(server, family="ipv4", timeout=30)  # a lookup that would hang for 30 s

    async def main() -> None:
        runner = AsyncDiscovery(lb, src)
        runner.start()
        asked = asyncio.Event()
        loop = asyncio.get_running_loop()
        waiter = threading.Thread(
            target=lambda: (
                server.zone.wait_for(lambda: server.zone.count() > 0)
                and loop.call_soon_threadsafe(asked.set)
            )
        )
        waiter.start()
        await asyncio.wait_for(asked.wait(), 5)
        waiter.join()
        await asyncio.wait_for(runner.stop(), 2)
        assert not runner.status.running
        assert asyncio.all_tasks() == {asyncio.current_task()}

    asyncio.run(main())


# -- arguments, names, URLs -----------------------------------------------------------------------


def test_name_is_a_url_that_from_url_reads_back() -> None:
    plain = DnsSource(NAME, port=8080)
    assert plain.name == "dns://inventory.svc:8080"
    srv = DnsSource(SRV_NAME, srv=True, nameservers=["127.0.0.1:5353", "::1"], nxdomain="empty")
    assert srv.name == (
        "dns+srv://_http._tcp.inventory.svc?nameserver=127.0.0.1:5353&nameserver=[::1]:53"
        "&nxdomain=empty"
    )
    assert DnsSource.from_url(srv.name).name == srv.name
    assert repr(plain) == "<DnsSource dns://inventory.svc:8080>"


def test_from_url_reads_the_kind_the_nameserver_and_the_settings(server: DnsTestServer) -> None:
    server.set_a(NAME, ["10.0.0.1"])
    url = f"dns://{NAME}:8080?nameserver=127.0.0.1:{server.port}&family=ipv4&timeout=0.5"
    assert list(read(DnsSource.from_url(url)).weights) == ["10.0.0.1:8080"]
    srv = DnsSource.from_url("dns+srv://_http._tcp.inventory.svc?min_ttl=2&max_ttl=10")
    assert srv.name == "dns+srv://_http._tcp.inventory.svc"


@pytest.mark.parametrize(
    ("url", "part"),
    [
        ("http://inventory.svc:80", "scheme"),
        ("inventory.svc:80", "scheme"),
        ("dns://inventory.svc", "port is required"),
        ("dns://inventory.svc:http", "port must be a number"),
        ("dns://inventory.svc:0", "port must be in 1..65535"),
        ("dns://inventory.svc:70000", "port must be in 1..65535"),
        ("dns+srv://_http._tcp.inventory.svc:80", "port must not be given"),
        ("dns://:80", "host"),
        ("dns://user@inventory.svc:80", "user"),
        ("dns://inventory.svc:80/path", "path"),
        ("dns://inventory.svc:80#frag", "fragment"),
        ("dns://inventory.svc:80?colour=red", "'colour'"),
        ("dns://inventory.svc:80?nameserver=localhost", "nameservers: 'localhost'"),
        ("dns://inventory.svc:80?nameserver=127.0.0.1:x", "nameservers: bad port"),
        ("dns://inventory.svc:80?timeout=soon", "'timeout' must be a number"),
        ("dns://inventory.svc:80?min_ttl=5&max_ttl=1", "max_ttl"),
        ("dns://inventory.svc:80?nxdomain=ignore", "nxdomain"),
        ("dns://inventory.svc:80?family=ipx", "family"),
        ("dns://inventory.svc:80?family=ipv4&family=ipv6", "'family' is given twice"),
        ("dns://a..b:80", "not a valid DNS name"),
    ],
)
def test_from_url_refuses_a_bad_url_naming_the_part(url: str, part: str) -> None:
    with pytest.raises(ValueError, match=r"^url ") as caught:
        DnsSource.from_url(url)
    assert part in str(caught.value)


@pytest.mark.parametrize(
    ("kwargs", "error", "named"),
    [
        ({"name": 42, "port": 80}, TypeError, "name"),
        ({"name": "", "port": 80}, ValueError, "name"),
        ({"name": NAME}, ValueError, "port is required"),
        ({"name": NAME, "port": True}, TypeError, "port"),
        ({"name": NAME, "port": 0}, ValueError, "port"),
        ({"name": NAME, "srv": True, "port": 80}, ValueError, "port must not be given"),
        ({"name": NAME, "srv": 1}, TypeError, "srv"),
        ({"name": NAME, "port": 80, "family": "inet"}, ValueError, "family"),
        ({"name": NAME, "port": 80, "nameservers": "127.0.0.1"}, TypeError, "nameservers"),
        ({"name": NAME, "port": 80, "nameservers": []}, ValueError, "nameservers"),
        ({"name": NAME, "port": 80, "nameservers": ["dns.google"]}, ValueError, "nameservers"),
        ({"name": NAME, "port": 80, "nameservers": [("::1", 0)]}, ValueError, "nameservers"),
        ({"name": NAME, "port": 80, "nameservers": [("::1",)]}, ValueError, "nameservers"),
        ({"name": NAME, "port": 80, "nameservers": [53]}, TypeError, "nameservers"),
        ({"name": NAME, "port": 80, "timeout": 0}, ValueError, "timeout"),
        ({"name": NAME, "port": 80, "timeout": "1"}, TypeError, "timeout"),
        ({"name": NAME, "port": 80, "min_ttl": 0}, ValueError, "min_ttl"),
        ({"name": NAME, "port": 80, "min_ttl": 10, "max_ttl": 5}, ValueError, "max_ttl"),
        ({"name": NAME, "port": 80, "nxdomain": "ignore"}, ValueError, "nxdomain"),
        ({"name": NAME, "port": 80, "zero_weight": 0}, ValueError, "zero_weight"),
        ({"name": NAME, "port": 80, "sleep": 1}, TypeError, "sleep"),
    ],
)
def test_bad_arguments_are_refused_naming_them(
    kwargs: dict[str, Any], error: type[Exception], named: str
) -> None:
    with pytest.raises(error, match=named):
        DnsSource(**kwargs)


@given(
    ttl=st.integers(min_value=0, max_value=2**31 - 1),
    floor=st.floats(min_value=0.01, max_value=100),
    span=st.floats(min_value=0, max_value=1000),
)
def test_the_refresh_is_always_within_the_floor_and_the_ceiling(
    ttl: int, floor: float, span: float
) -> None:
    src = DnsSource(NAME, port=80, min_ttl=floor, max_ttl=floor + span)
    delay = src._refresh_in(float(ttl))
    assert floor <= delay <= floor + span
    if floor <= ttl <= floor + span:
        assert delay == ttl
