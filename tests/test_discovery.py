"""Discovery's core: memberships, the runners, the file source, and ``loadbalancer discover``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from loadbalancer import LoadBalancer, OutlierDetection
from loadbalancer.cli import main
from loadbalancer.discovery import (
    AsyncDiscovery,
    Discovery,
    FileSource,
    Membership,
    MembershipChange,
    MembershipFileError,
    Source,
    StaticSource,
    parse_membership,
    source_from_url,
)
from loadbalancer.testing import run


class Scripted(Source):
    """A source that plays a script: a Membership is yielded, an Exception raised (the
    registry failing), and after the script it waits; each watch() goes on from there."""

    def __init__(self, *steps: Membership | Exception) -> None:
        self.steps = list(steps)
        self.watches = 0
        self.cancelled = 0

    @property
    def name(self) -> str:
        return "scripted:"

    async def watch(self) -> AsyncIterator[Membership]:
        self.watches += 1
        try:
            while self.steps:
                step = self.steps.pop(0)
                if isinstance(step, Exception):
                    raise step
                yield step
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


class LoopClock:
    """The running loop's virtual time; after the loop, the last time it read."""

    last = 0.0

    def __call__(self) -> float:
        with contextlib.suppress(RuntimeError):  # no loop: the run is over
            self.last = asyncio.get_running_loop().time()
        return self.last


def follow(lb: LoadBalancer, source: Source, seconds: float, **options: object) -> AsyncDiscovery:
    """Run an AsyncDiscovery over ``source`` for ``seconds`` of virtual time."""
    clock = LoopClock()
    runner = AsyncDiscovery(lb, source, clock=clock, **options)  # type: ignore[arg-type]

    async def main() -> None:
        async with runner:
            await asyncio.sleep(seconds)
            clock()

    run(main())
    return runner


# -- applying memberships -------------------------------------------------------------------------


def test_a_static_source_is_applied_whole_and_reported() -> None:
    lb = LoadBalancer()
    changes: list[MembershipChange] = []
    runner = follow(lb, StaticSource({"a:1": 2, "b:1": 1}), 1.0, on_change=changes.append)
    assert lb.weights == {"a:1": 2, "b:1": 1}
    assert [(c.added, c.removed, c.size) for c in changes] == [(("a:1", "b:1"), (), 2)]
    status = runner.status
    assert (status.updates, status.failures, status.running) == (1, 0, False)
    assert status.last_update_age == pytest.approx(1.0)


def test_bad_entries_are_skipped_naming_them_and_the_rest_applies(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lb = LoadBalancer()
    entries = {"a:1": 1, "": 1, "b:1": -2, "c:1": "heavy", " d:1": 1, "e:1": 3}
    with caplog.at_level(logging.WARNING, logger="loadbalancer.discovery"):
        follow(lb, StaticSource(entries), 0.1)
    assert lb.weights == {"a:1": 1, "e:1": 3}
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 4
    assert any("'b:1' (weight -2)" in m for m in skipped)
    assert any("'c:1' (weight 'heavy')" in m and "must be a number" in m for m in skipped)


def test_a_membership_too_large_is_refused_and_the_last_good_stays(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lb = LoadBalancer(max_servers=3)
    source = Scripted(Membership(["a", "b"]), Membership([f"s{i}" for i in range(4)]))
    with caplog.at_level(logging.ERROR, logger="loadbalancer.discovery"):
        runner = follow(lb, source, 1.0)
    assert lb.servers == ("a", "b")
    assert (runner.status.updates, runner.status.refused) == (1, 1)
    [error] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "scripted:" in error
    assert "4 servers" in error
    assert "max_servers=3" in error


def test_servers_that_stay_keep_their_live_state() -> None:
    lb = LoadBalancer(outlier_detection=OutlierDetection(consecutive_failures=1))
    lb.replace(["a", "b", "c"])
    lease = lb.acquire()
    kept = lease.server
    source = Scripted(Membership([kept, "d"]))
    follow(lb, source, 0.1)
    assert lb.servers == (kept, "d")
    assert lb.stats()[kept].in_flight == 1  # the request in flight was not forgotten
    lease.release(ok=True)
    assert lb.stats()[kept].successes == 1


def test_an_outage_keeps_the_last_membership_and_backs_off_jittered_and_capped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lb = LoadBalancer()
    failures = [ConnectionError(f"registry down {i}") for i in range(6)]
    source = Scripted(Membership(["a", "b"]), *failures, Membership(["b", "c"]))
    retries: list[float] = []
    with caplog.at_level(logging.WARNING, logger="loadbalancer.discovery"):
        runner = follow(lb, source, 60.0, backoff_base=0.5, backoff_max=4.0, rng=random.Random(7))
    # The first watch yields, then fails; five more fail on their first step; the last yields.
    assert source.watches == 7
    assert lb.servers == ("b", "c")
    for record in caplog.records:
        message = record.getMessage()
        if "retrying in" in message:
            retries.append(float(message.rsplit("retrying in ", 1)[1].split(" ")[0]))
            assert "keeping the last membership (2 servers)" in message
    ceilings = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert len(retries) == 6
    for delay, ceiling in zip(retries, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling  # jittered, never below half: no stampede
    assert runner.status.failures == 0
    assert runner.status.last_error == "ConnectionError: registry down 5"


def test_a_watch_that_ends_is_watched_again() -> None:
    class Once(Source):
        watches = 0

        @property
        def name(self) -> str:
            return "once:"

        async def watch(self) -> AsyncIterator[Membership]:
            self.watches += 1
            yield Membership([f"s{self.watches}"])

    source = Once()
    lb = LoadBalancer()
    follow(lb, source, 1.0, backoff_base=0.1, backoff_max=0.2)
    assert source.watches >= 5
    assert lb.servers == (f"s{source.watches}",)


def test_a_raising_on_change_does_not_stop_discovery(caplog: pytest.LogCaptureFixture) -> None:
    def broken(change: MembershipChange) -> None:
        raise RuntimeError("callback bug")

    lb = LoadBalancer()
    source = Scripted(Membership(["a"]), Membership(["a", "b"]))
    with caplog.at_level(logging.ERROR, logger="loadbalancer.discovery"):
        follow(lb, source, 0.1, on_change=broken)
    assert lb.servers == ("a", "b")
    assert sum("on_change raised" in r.getMessage() for r in caplog.records) == 2


def test_stopping_cancels_the_watch_so_it_releases_what_it_holds() -> None:
    source = Scripted(Membership(["a"]))
    follow(LoadBalancer(), source, 0.1)
    assert source.cancelled == 1


def test_metadata_of_the_last_membership_is_kept_for_its_servers() -> None:
    lb = LoadBalancer()
    source = Scripted(Membership({"a": 1, "b": 2}, {"a": {"zone": "x"}, "gone": {"zone": "y"}}))
    runner = follow(lb, source, 0.1)
    assert runner.metadata("a") == {"zone": "x"}
    assert runner.metadata("b") == {}
    assert runner.metadata("gone") == {}


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"lb": "lb"}, TypeError, "lb must be a LoadBalancer"),
        ({"source": ["a"]}, TypeError, "source must be a Source"),
        ({"on_change": 3}, TypeError, "on_change must be callable"),
        ({"on_change": asyncio.sleep}, TypeError, "on_change must be a plain function"),
        ({"backoff_base": 0}, ValueError, "backoff_base"),
        ({"backoff_base": 2.0, "backoff_max": 1.0}, ValueError, "backoff_max"),
    ],
)
def test_runner_arguments_are_checked_naming_them(
    kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    arguments: dict[str, object] = {"lb": LoadBalancer(), "source": StaticSource(["a"])}
    arguments.update(kwargs)
    for runner in (Discovery, AsyncDiscovery):
        with pytest.raises(error, match=message):
            runner(**arguments)  # type: ignore[arg-type]


# -- the thread runner ----------------------------------------------------------------------------


def discovery_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("loadbalancer discovery")]


def test_the_thread_runner_applies_and_leaves_nothing_behind() -> None:
    for _ in range(100):
        lb = LoadBalancer()
        with Discovery(lb, StaticSource(["a", "b"])) as runner:
            assert runner.wait_ready(5)
            assert lb.servers == ("a", "b")
            assert runner.status.running
        assert not runner.status.running
    assert discovery_threads() == []


def test_the_thread_runner_reports_no_membership_before_the_timeout() -> None:
    with Discovery(LoadBalancer(), Scripted()) as runner:
        assert runner.wait_ready(0.05) is False
    assert discovery_threads() == []


# -- the file source ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "text", "weights", "metadata"),
    [
        (".json", '["a:1", "b:1"]', {"a:1": 1, "b:1": 1}, {}),
        (".json", '{"a:1": 2, "b:1": 1}', {"a:1": 2, "b:1": 1}, {}),
        (".json", '{"servers": ["a:1"]}', {"a:1": 1}, {}),
        (".json", '{"a:1": {"weight": 3, "zone": "x"}}', {"a:1": 3}, {"a:1": {"zone": "x"}}),
        (".toml", 'servers = ["a:1", "b:1"]', {"a:1": 1, "b:1": 1}, {}),
        (".toml", '[servers]\n"a:1" = 2\n', {"a:1": 2}, {}),
        (".toml", '[servers."a:1"]\nweight = 2\nzone = "x"\n', {"a:1": 2}, {"a:1": {"zone": "x"}}),
    ],
)
def test_membership_files_in_every_form(
    suffix: str, text: str, weights: dict[str, float], metadata: dict[str, object]
) -> None:
    membership = parse_membership(text, "f" + suffix, toml=suffix == ".toml")
    assert dict(membership.weights) == weights
    assert dict(membership.metadata) == metadata


@pytest.mark.parametrize(
    ("suffix", "text", "message"),
    [
        (".json", '["a:1", ', r"f\.json: not valid JSON"),
        (".json", "3", r"f\.json: must hold a list or a mapping"),
        (".json", '["a:1", 5]', r"f\.json: servers\[1\] must be a server name, not int"),
        (".json", '{"a:1": {"zone": "x"}}', r"f\.json: servers\.'a:1' has no 'weight'"),
        (".toml", 'servers = "a:1"', r"f\.toml: servers must be a list or a mapping"),
        (".toml", 'hosts = ["a:1"]', r"f\.toml: no 'servers' key"),
        (".toml", "servers = [", r"f\.toml: not valid TOML"),
    ],
)
def test_an_unusable_file_is_refused_naming_the_file_and_the_field(
    suffix: str, text: str, message: str
) -> None:
    with pytest.raises(MembershipFileError, match=message):
        parse_membership(text, "f" + suffix, toml=suffix == ".toml")


def test_a_file_source_follows_changes_and_keeps_the_last_good_on_a_bad_write(
    tmp_path: Path,
) -> None:
    path = tmp_path / "inventory.json"
    path.write_text('["a:1", "b:1"]')
    lb = LoadBalancer()
    changes: list[MembershipChange] = []
    applied = threading.Event()

    def on_change(change: MembershipChange) -> None:
        changes.append(change)
        applied.set()

    refusals = Refusals()
    logger = logging.getLogger("loadbalancer.discovery")
    logger.addHandler(refusals)
    try:
        with Discovery(lb, FileSource(path, interval=0.01), on_change=on_change) as runner:
            assert runner.wait_ready(5)
            applied.clear()
            path.write_text('{"a:1": 1, "c:1": 2}')
            assert applied.wait(5)
            assert lb.weights == {"a:1": 1, "c:1": 2}
            path.write_text('{"a:1": 1, "c:1": ')  # half written
            assert refusals.seen.wait(5)
            assert "inventory.json" in refusals.messages[0]
            assert "not valid JSON" in refusals.messages[0]
            assert lb.weights == {"a:1": 1, "c:1": 2}
    finally:
        logger.removeHandler(refusals)
    assert [c.added for c in changes] == [("a:1", "b:1"), ("c:1",)]


class Refusals(logging.Handler):
    """Collects the discovery logger's refusals, and says when one came."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "refused" in record.getMessage():
            self.messages.append(record.getMessage())
            self.seen.set()


def test_no_pick_sees_a_partial_membership_while_the_file_is_rewritten(tmp_path: Path) -> None:
    first = [f"a{i}:80" for i in range(5)]
    second = [f"b{i}:80" for i in range(5)]
    path = tmp_path / "servers.json"
    path.write_text(json.dumps(first))
    lb = LoadBalancer()
    seen: set[tuple[str, ...]] = set()
    stop = threading.Event()
    picks = 0

    def picker() -> None:
        nonlocal picks
        while not stop.is_set():
            servers = lb.servers
            seen.add(servers)
            if servers:
                assert lb.get() in servers or lb.servers != servers
                picks += 1

    applied = threading.Event()
    with Discovery(
        lb, FileSource(path, interval=0.001), on_change=lambda c: applied.set()
    ) as runner:
        assert runner.wait_ready(5)
        thread = threading.Thread(target=picker)
        thread.start()
        for i in range(100):
            applied.clear()
            text = json.dumps(second if i % 2 == 0 else first)
            if i % 10 == 5:
                path.write_text(text[: len(text) // 2])  # a half-written file first
            path.write_text(text)
            assert applied.wait(5), f"rewrite {i} was never applied"
        stop.set()
        thread.join()
    assert seen <= {tuple(first), tuple(second)}  # whole memberships only, never a mix
    assert lb.servers == tuple(first)
    assert picks > 0


def test_file_source_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"path must end in \.json or \.toml"):
        FileSource(tmp_path / "servers.yaml")
    with pytest.raises(TypeError, match="path must be a str or a path"):
        FileSource(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="interval"):
        FileSource(tmp_path / "s.json", interval=0)


# -- sources by URL, and the discover command -----------------------------------------------------


def test_source_from_url_names_a_file_source(tmp_path: Path) -> None:
    source = source_from_url((tmp_path / "s.toml").as_uri())
    assert isinstance(source, FileSource)
    assert source.name == (tmp_path / "s.toml").as_uri()
    with pytest.raises(ValueError, match="the scheme must be one of file, dns, dns\\+srv, etcd"):
        source_from_url("zk://127.0.0.1/x")


def test_discover_once_prints_the_membership(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "servers.toml"
    path.write_text('[servers]\n"10.0.0.1:8080" = 2\n"10.0.0.2:8080" = 1\n')
    assert main(["discover", path.as_uri(), "--once"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith(f"{path.as_uri()}: 2 servers (+10.0.0.1:8080 +10.0.0.2:8080)")
    assert lines[1:] == ["  10.0.0.1:8080  weight 2", "  10.0.0.2:8080  weight 1"]


def test_discover_says_when_no_membership_comes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = (tmp_path / "missing.json").as_uri()
    assert main(["discover", missing, "--once", "--timeout", "0.2"]) == 1
    err = capsys.readouterr().err
    assert f"no membership from {missing} within 0.2 s" in err
    assert "missing.json: cannot be read" in err


# -- regressions found in review ------------------------------------------------------------------


def test_a_watch_that_breaks_right_after_its_read_backs_off_ever_longer() -> None:
    class Flapping(Source):
        watches = 0

        @property
        def name(self) -> str:
            return "flapping:"

        async def watch(self) -> AsyncIterator[Membership]:
            self.watches += 1
            yield Membership(["a"])  # the read works ...
            raise ConnectionError("watch stream reset")  # ... the watch breaks at once

    source = Flapping()
    runner = follow(
        LoadBalancer(), source, 10.0, backoff_base=0.1, backoff_max=5.0, rng=random.Random(1)
    )
    # Delays of at least 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.5 ... s: not a hundred re-reads.
    assert 6 <= source.watches <= 10
    assert runner.status.last_error == "ConnectionError: watch stream reset"


def test_a_thread_that_cannot_start_raises_instead_of_hanging(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_descriptors() -> asyncio.AbstractEventLoop:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(asyncio, "new_event_loop", no_descriptors)
    runner = Discovery(LoadBalancer(), StaticSource(["a"]))
    with pytest.raises(OSError, match="Too many open files"):
        runner.start()
    assert runner.stop() is True
    assert discovery_threads() == []


def test_ready_means_this_run_applied_a_membership() -> None:
    lb = LoadBalancer()
    source = Scripted(Membership(["a"]))
    runner = Discovery(lb, source)
    with runner:
        assert runner.wait_ready(5)
    with runner:  # the script is spent: this run applies nothing
        assert runner.wait_ready(0.05) is False


def test_a_stop_that_times_out_says_so_and_a_second_thread_never_starts() -> None:
    release = threading.Event()

    class Slow(Source):
        @property
        def name(self) -> str:
            return "slow:"

        async def watch(self) -> AsyncIterator[Membership]:
            try:
                yield Membership(["a"])
                await asyncio.Event().wait()
            finally:
                await asyncio.get_running_loop().run_in_executor(None, release.wait)

    runner = Discovery(LoadBalancer(), Slow()).start()
    assert runner.wait_ready(5)
    assert runner.stop(timeout=0.05) is False
    with pytest.raises(RuntimeError, match="has not stopped yet"):
        runner.start()
    release.set()
    assert runner.stop() is True
    assert discovery_threads() == []
