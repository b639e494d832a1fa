"""etcd as the registry: ``EtcdSource`` watches a key prefix, ``EtcdRegistration`` joins it.

Each key under the prefix (``/services/inventory/10.0.0.1:8080``) is a server, named by the
rest of the key after the prefix; its value is JSON holding the weight and any metadata
(``{"weight": 2, "zone": "a"}``). Servers register themselves with ``EtcdRegistration`` (a
thread) or ``AsyncEtcdRegistration`` (a task): the key is put under a lease that is kept
alive while the server runs, revoked when it stops, and left to expire when it crashes.

The client is aetcd (``pip install 'loadbalancer[etcd]'``), chosen over etcd-sdk-python:

* aetcd speaks grpc.aio, so a watch is a coroutine on the runner's loop that cancellation
  stops at once, with nothing but a channel to close; etcd-sdk-python (a fork of python-etcd3)
  is blocking, runs each watch's callbacks on a thread of its own, and would need a thread
  bridge and a second cancellation path here.
* Both import without a warning on the protobuf 7 / grpcio 1.8x runtimes (both ship
  protobuf 5.27 gencode); aetcd 1.0 declares its ranges (grpcio < 2, protobuf < 8) and
  Python 3.10-3.14; etcd-sdk-python 0.0.7 pins no protobuf at all.
* Neither handles compaction or reconnection the way a list-then-watch source needs:
  aetcd's ``Watch`` hides the batch boundaries (it yields events one by one) and turns a lost
  stream into an error for every watcher. So the source uses aetcd for the connection and the
  reads, and drives etcd's Watch stream itself through aetcd's generated stubs: it sees each
  ``WatchResponse`` whole (one membership per batch), its ``compact_revision`` and
  ``canceled``, and raises on any of them, so the runner re-reads. Leases are kept alive the
  same way, over one ``LeaseKeepAlive`` stream.

All the clients of a process run on one event loop, in a daemon thread ("loadbalancer
etcd") started on first use: gRPC's asyncio stack serves every loop from one completion queue,
and a loop that closes while a call of its own is still finishing (the ``Discovery`` runner
closes its loop at each stop) breaks the delivery of every other loop's events. Callers'
loops only exchange memberships and results with it.

What aetcd lacks, and so this module too: TLS and several endpoints (aetcd opens one
insecure channel to one host), which etcd-sdk-python has. Authentication is not wired up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Mapping
from types import TracebackType
from typing import Any, Generic, TypeVar, final
from urllib.parse import parse_qsl, unquote, urlsplit

try:
    import aetcd  # type: ignore[import-untyped]
    import grpc
    from aetcd import rpc
except ImportError as _error:  # pragma: no cover - depends on the installed extras
    raise ImportError("the etcd source needs aetcd: pip install 'loadbalancer[etcd]'") from _error

from .._validation import check_number, check_positive_int, check_server, check_weight
from ._apply import Backoff
from ._runner import cancel_and_wait, wait_set
from ._source import Membership, Source

__all__ = [
    "DEFAULT_PREFIX",
    "AsyncEtcdRegistration",
    "EtcdRegistration",
    "EtcdSource",
    "EtcdWatchError",
    "parse_value",
]

log = logging.getLogger("loadbalancer.discovery")

DEFAULT_PREFIX = "/services/inventory/"
"""The key prefix servers register under unless told otherwise."""

_DEFAULT_PORT = 2379

_Entries = dict[str, tuple[Any, dict[str, Any]]]  # server -> (weight, metadata)

# A watch can sit idle for hours: ping the connection so that an etcd that vanished without
# closing it (a partition, a frozen host) fails the watch within ~15 s instead of never. etcd
# refuses pings more often than every 5 s (--grpc-keepalive-min-time), hence 10 s; without
# max_pings_without_data=0, gRPC stops pinging an idle stream after two pings.
_CHANNEL_OPTIONS: dict[str, Any] = {
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
    # grpcio 1.6x+ fails an unanswered ping only after this, 60 s by default (found in
    # review: a frozen etcd was noticed after 70 s).
    "grpc.http2.ping_timeout_ms": 5_000,
    "grpc.http2.max_pings_without_data": 0,
    # A membership read is one Range answer: let it be larger than gRPC's 4 MiB default.
    "grpc.max_receive_message_length": 64 * 1024 * 1024,
}


class EtcdWatchError(Exception):
    """etcd could not be read or the watch ended (lost connection, compaction, cancellation).

    ``EtcdSource.watch()`` raises it; the runner keeps the last membership, backs off and
    watches again, which starts with a fresh read.
    """


def _check_prefix(prefix: object) -> str:
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
    if not prefix.startswith("/"):
        raise ValueError(f"prefix must start with '/', got {prefix!r}")
    return prefix


def _check_host(host: object) -> str:
    if not isinstance(host, str):
        raise TypeError(f"host must be a str, not {type(host).__name__}")
    if not host or host != host.strip():
        raise ValueError(f"host must be a non-empty name or address, got {host!r}")
    return host


def _check_port(port: object) -> int:
    check_positive_int(port, "port")
    if port > 65535:  # type: ignore[operator]  # check_positive_int proved it an int
        raise ValueError(f"port must be in 1..65535, got {port!r}")
    return port  # type: ignore[return-value]


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_url(url: object) -> tuple[str, int, str, dict[str, str]]:
    """``etcd://host[:port]/prefix/[?option=value]``: host, port, prefix and the options."""
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, not {type(url).__name__}")
    parts = urlsplit(url)
    if parts.scheme.lower() != "etcd":
        raise ValueError(f"url {url!r}: the scheme must be etcd, not {parts.scheme!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"url {url!r}: credentials (user:password@) are not supported")
    if not parts.hostname:
        raise ValueError(f"url {url!r}: no host (etcd://host:port/prefix/)")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"url {url!r}: the port must be a number in 0..65535") from None
    if port == 0:
        raise ValueError(f"url {url!r}: the port must be in 1..65535")
    if parts.fragment:
        raise ValueError(f"url {url!r}: a fragment (#{parts.fragment}) means nothing here")
    prefix = unquote(parts.path)
    if not prefix:
        raise ValueError(f"url {url!r}: no key prefix (the path: etcd://host:port/prefix/)")
    options: dict[str, str] = {}
    for option, value in parse_qsl(parts.query, keep_blank_values=True):
        if option in options:
            raise ValueError(f"url {url!r}: the query gives {option!r} twice")
        options[option] = value
    return parts.hostname, _DEFAULT_PORT if port is None else port, prefix, options


def _timeout_option(url: str, options: dict[str, str], default: float) -> float:
    unknown = sorted(set(options) - {"timeout"})
    if unknown:
        raise ValueError(f"url {url!r}: unknown query option {unknown[0]!r} (known: timeout)")
    if "timeout" not in options:
        return default
    try:
        timeout = float(options["timeout"])
    except ValueError:
        raise ValueError(
            f"url {url!r}: timeout must be a number of seconds, not {options['timeout']!r}"
        ) from None
    if not (math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"url {url!r}: timeout must be positive, not {options['timeout']!r}")
    return timeout


def _client(host: str, port: int, timeout: float) -> Any:
    return aetcd.Client(host, port, timeout=timeout, options=_CHANNEL_OPTIONS)


# gRPC's asyncio stack binds every event loop it meets to one process-wide completion queue
# and hands each completion to its call's loop; a completion that arrives after that loop
# closed (a cancelled call's last event) raises inside gRPC's dispatcher and strands the
# events queued behind it, for every loop. The Discovery runner makes a loop per start, so
# every etcd client here lives on one loop of its own, in a daemon thread made on first use,
# that never closes; callers' loops only exchange results with it.
_loop_lock = threading.Lock()
_etcd_loop: asyncio.AbstractEventLoop | None = None


def _shared_loop() -> asyncio.AbstractEventLoop:
    global _etcd_loop
    with _loop_lock:
        if _etcd_loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="loadbalancer etcd", daemon=True).start()
            _etcd_loop = loop
        return _etcd_loop


_T = TypeVar("_T")


class _Remote(Generic[_T]):
    """A coroutine run on the shared etcd loop, cancellable and awaitable from any thread.

    ``on_end`` is called (on the etcd loop's thread) once the coroutine has ended, its
    ``finally`` blocks included: waiting for that, not for a cancellation to be requested, is
    what lets a stop return with the connection closed and the lease revoked.
    """

    def __init__(
        self, factory: Callable[[], Coroutine[Any, Any, _T]], on_end: Callable[[], None]
    ) -> None:
        self._loop = _shared_loop()
        self._task: asyncio.Task[_T] | None = None
        self._on_end = on_end
        self.ended = threading.Event()
        self._loop.call_soon_threadsafe(self._start, factory)

    def _start(self, factory: Callable[[], Coroutine[Any, Any, _T]]) -> None:
        self._task = self._loop.create_task(factory())
        self._task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[_T]) -> None:
        if not task.cancelled():
            task.exception()  # retrieved here: the caller reads it through result()
        self.ended.set()
        self._on_end()

    def cancel(self) -> None:
        """Ask the coroutine to stop (it is cancelled on its loop)."""
        with contextlib.suppress(RuntimeError):
            # call_soon_threadsafe runs callbacks in order: _start has run by then.
            self._loop.call_soon_threadsafe(self._cancel)

    def _cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def result(self) -> _T:
        """The coroutine's result, once ended; raises its exception (or CancelledError)."""
        if self._task is None or not self._task.done():
            raise RuntimeError("the coroutine has not ended")
        return self._task.result()


async def _on_shared_loop(factory: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run ``factory()`` on the etcd loop; cancelling the caller cancels it and waits for it."""
    here = asyncio.get_running_loop()
    ended = asyncio.Event()

    def wake() -> None:
        with contextlib.suppress(RuntimeError):  # the caller's loop is gone: nobody waits
            here.call_soon_threadsafe(ended.set)

    remote = _Remote(factory, wake)
    try:
        await ended.wait()
    except asyncio.CancelledError:
        remote.cancel()
        await ended.wait()
        raise
    return remote.result()


def parse_value(where: str, value: bytes) -> tuple[Any, dict[str, Any]]:
    """A key's value as (weight, metadata); ``where`` names the key in warnings.

    A JSON object gives its ``weight`` (1 if it has none) and the rest as metadata; a bare
    JSON number is the weight. An empty value, one that is not JSON, or JSON of another kind
    gives weight 1, with a warning. A weight that is not usable (``"two"``, ``-1``) is passed
    on as it is, for the runner to skip with a warning of its own.
    """
    if not value.strip():
        log.warning("%s: empty value: weight 1", where)
        return 1, {}
    try:
        data = json.loads(value)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError both are
        log.warning("%s: the value is not JSON (%r): weight 1", where, value[:100])
        return 1, {}
    if isinstance(data, dict):
        return data.get("weight", 1), {k: v for k, v in data.items() if k != "weight"}
    if isinstance(data, (int, float)) and not isinstance(data, bool):
        return data, {}
    log.warning("%s: the value is JSON %s, not an object: weight 1", where, type(data).__name__)
    return 1, {}


@final
class EtcdSource(Source):
    """The servers registered under ``prefix`` in etcd at ``host``:``port``, as they change.

    ``watch()`` reads the prefix at one revision (a linearizable Range), yields that
    membership, then watches the prefix from the next revision, so that no change between
    the read and the watch is missed, and yields the whole membership again after each batch
    of events that changes it. When the watch cannot go on (etcd unreachable, the connection
    lost, the history compacted past the watch, the watch cancelled by etcd) it raises
    ``EtcdWatchError``; the runner keeps the last membership and watches again after a
    backoff, starting with a fresh read. ``timeout`` bounds each request (the read, the
    watch's creation), not the watch itself. Servers are named by the rest of the key after
    the prefix; values are read by ``parse_value``, and entries sorted by name, so every
    process watching the prefix builds the same membership.
    """

    __slots__ = ("_host", "_port", "_prefix", "_timeout")

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = _DEFAULT_PORT,
        prefix: str = DEFAULT_PREFIX,
        *,
        timeout: float = 5.0,
    ) -> None:
        self._host = _check_host(host)
        self._port = _check_port(port)
        self._prefix = _check_prefix(prefix)
        self._timeout = check_number(timeout, "timeout", above=0)

    @classmethod
    def from_url(cls, url: str) -> EtcdSource:
        """The source named by ``etcd://host[:port]/prefix/[?timeout=seconds]``.

        The port defaults to 2379; the path is the prefix, taken as written (end it with
        ``/``: ``/services/inventory`` would also match ``/services/inventory2/...``). Raise
        ``ValueError`` naming the part of the URL that is wrong.
        """
        host, port, prefix, options = _parse_url(url)
        return cls(host, port, prefix, timeout=_timeout_option(url, options, 5.0))

    @property
    def name(self) -> str:
        """``etcd://host:port/prefix/``."""
        return f"etcd://{_netloc(self._host, self._port)}{self._prefix}"

    @property
    def prefix(self) -> str:
        """The key prefix watched."""
        return self._prefix

    def _entry(
        self, entries: dict[str, tuple[Any, dict[str, Any]]], key: bytes, value: bytes
    ) -> None:
        name = key[len(self._prefix.encode()) :].decode("utf-8", errors="replace")
        entries[name] = parse_value(f"{self.name}: {key.decode('utf-8', errors='replace')}", value)

    @staticmethod
    def _membership(entries: _Entries) -> Membership:
        names = sorted(entries)
        return Membership(
            {name: entries[name][0] for name in names},
            {name: entries[name][1] for name in names if entries[name][1]},
        )

    async def watch(self) -> AsyncIterator[Membership]:
        """Yield the prefix's membership now, then after each batch of changes (see class)."""
        here = asyncio.get_running_loop()
        inbox: asyncio.Queue[Membership] = asyncio.Queue()

        def post(membership: Membership) -> None:
            with contextlib.suppress(RuntimeError):  # the caller's loop is gone
                here.call_soon_threadsafe(inbox.put_nowait, membership)

        # The etcd side runs a step ahead at most, as a generator would: after each
        # membership it waits for the next to be asked for, so the watch is created once the
        # first membership has been taken, and events wait in etcd, not in memory here.
        wanted = asyncio.Event()  # waited on the etcd loop only; set through its call_soon

        async def pump() -> None:
            async with contextlib.aclosing(self._watch()) as memberships:
                async for membership in memberships:
                    post(membership)
                    await wanted.wait()
                    wanted.clear()

        def ask() -> None:
            _shared_loop().call_soon_threadsafe(wanted.set)

        watching = asyncio.ensure_future(_on_shared_loop(pump))
        first = True
        try:
            while True:
                if not first:
                    ask()
                first = False
                getter = asyncio.ensure_future(inbox.get())
                try:
                    await asyncio.wait({getter, watching}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    getter.cancel()
                if getter.done() and not getter.cancelled():
                    latest = getter.result()
                    while not inbox.empty():  # whole memberships: only the newest matters
                        latest = inbox.get_nowait()
                    yield latest
                elif watching.done():
                    while not inbox.empty():
                        yield inbox.get_nowait()
                    watching.result()  # raises the watch's error
                    raise EtcdWatchError(f"{self.name}: the watch ended")
        finally:
            watching.cancel()
            await asyncio.wait({watching})  # until the client is closed, on the etcd loop

    async def _watch(self) -> AsyncGenerator[Membership, None]:
        """``watch()`` itself, on the etcd loop."""
        prefix = self._prefix.encode()
        client = _client(self._host, self._port, self._timeout)
        call: Any = None
        try:
            try:
                await client.connect()
                read = await client.get_prefix(prefix)
            except (aetcd.ClientError, grpc.RpcError) as exc:
                raise EtcdWatchError(f"{self.name}: cannot read the prefix: {exc}") from exc
            entries: _Entries = {}
            for kv in read:
                self._entry(entries, kv.key, kv.value)
            last = self._membership(entries)
            yield last
            # From the revision after the read: etcd replays whatever happened since, so
            # nothing is lost between the read and the watch (or the watch fails compacted).
            call = rpc.WatchStub(client.channel).Watch(metadata=client.metadata)
            create = rpc.WatchCreateRequest(
                key=prefix,
                range_end=aetcd.utils.prefix_range_end(prefix),
                start_revision=read.header.revision + 1,
            )
            # Until etcd confirms the watch, a timer cancels the call. Not wait_for(): when
            # cancelled it waits for gRPC's own cancellation of the operation, which can take
            # as long as the operation itself; cancelling the call ends every operation now.
            expired: list[bool] = []

            def expire() -> None:
                expired.append(True)
                call.cancel()

            deadline = asyncio.get_running_loop().call_later(self._timeout, expire)
            try:
                await call.write(rpc.WatchRequest(create_request=create))
                while True:
                    response = await call.read()
                    if response is grpc.aio.EOF:
                        raise EtcdWatchError(f"{self.name}: etcd ended the watch stream")
                    if response.compact_revision:
                        raise EtcdWatchError(
                            f"{self.name}: etcd compacted its history up to revision "
                            f"{response.compact_revision}, past the watch; reading again"
                        )
                    if response.canceled:
                        raise EtcdWatchError(
                            f"{self.name}: etcd cancelled the watch: "
                            f"{response.cancel_reason or 'no reason given'}"
                        )
                    if response.created:
                        deadline.cancel()
                    if not response.events:  # the watch's creation, or a progress notification
                        continue
                    for event in response.events:
                        if event.type == rpc.Event.DELETE:
                            name = event.kv.key[len(prefix) :].decode("utf-8", errors="replace")
                            entries.pop(name, None)
                        else:
                            self._entry(entries, event.kv.key, event.kv.value)
                    membership = self._membership(entries)
                    if membership != last:
                        last = membership
                        yield membership
            except asyncio.CancelledError:
                if not expired:  # the watch itself is being stopped
                    raise
                raise EtcdWatchError(
                    f"{self.name}: etcd did not start the watch within {self._timeout} s"
                ) from None
            except grpc.RpcError as exc:
                raise EtcdWatchError(f"{self.name}: lost the watch: {exc}") from exc
            finally:
                deadline.cancel()
        finally:
            if call is not None:
                call.cancel()
            await client.close()


def _value(weight: object, metadata: object) -> bytes:
    weight = check_weight(weight)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a mapping, not {type(metadata).__name__}")
    if "weight" in metadata:
        raise ValueError("metadata must not hold 'weight': pass weight= instead")
    for field in metadata:
        if not isinstance(field, str):
            raise TypeError(f"metadata keys must be str, not {type(field).__name__}")
    try:
        return json.dumps({"weight": weight, **metadata}, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"metadata must be JSON-serialisable: {exc}") from None


class _Registrar:
    """The registration itself, run as one coroutine: put the key under a lease, keep it.

    ``on_state`` is called with the lease's id when the key is in etcd, None when it may not be.
    """

    def __init__(
        self,
        server: object,
        host: object,
        port: object,
        prefix: object,
        weight: object,
        metadata: object,
        ttl: object,
        timeout: object,
        rng: random.Random | None,
    ) -> None:
        self.server = check_server(server)
        self.host = _check_host(host)
        self.port = _check_port(port)
        self.prefix = _check_prefix(prefix)
        self.value = _value(weight, metadata)
        self.ttl = check_positive_int(ttl, "ttl")
        self.timeout = check_number(timeout, "timeout", above=0)
        self.key = (self.prefix + self.server).encode()
        # Retry at least every second while etcd is away, and never wait longer than a third
        # of the TTL, so that a returning etcd sees the key again before the lease would end.
        self._backoff = Backoff(min(0.1, self.ttl / 10), min(1.0, self.ttl / 3), rng)
        self.name = f"etcd://{_netloc(self.host, self.port)}{self.prefix + self.server}"
        # Set by stop() before it cancels the run: the keep-alive's own deadline also ends in
        # a CancelledError, and must not swallow a stop that lands at the same moment.
        self.stopping = False
        # The lease the key was last put under: a stop while a new lease is being sought
        # (etcd hiccupped) must still revoke it, or the key outlives the server by a TTL.
        self._last_lease: int | None = None

    async def run(self, on_state: Callable[[int | None], None]) -> None:
        """Register, keep the lease alive, register again when it is lost; until cancelled."""
        failures = 0
        while True:
            client = _client(self.host, self.port, self.timeout)
            lease_id: int | None = None
            delay = 0.0
            try:
                await client.connect()
                while True:
                    lease_id = None
                    lease = await client.lease(self.ttl)
                    lease_id = lease.id
                    await client.put(self.key, self.value, lease=lease_id)
                    self._last_lease = lease_id
                    on_state(lease_id)
                    failures = 0
                    log.info("%s: registered (lease %x, TTL %d s)", self.name, lease_id, lease.ttl)
                    await self._keep_alive(client, lease_id, lease.ttl)
                    on_state(None)
                    log.warning("%s: etcd lost lease %x; registering again", self.name, lease_id)
            except asyncio.CancelledError:
                on_state(None)
                await self._deregister(client, lease_id)
                raise
            except Exception as exc:
                on_state(None)
                failures += 1
                delay = self._backoff(failures)
                log.warning(
                    "%s: %s: %s (failure %d in a row); registering again in %.2f s",
                    self.name,
                    type(exc).__name__,
                    exc,
                    failures,
                    delay,
                )
            finally:
                await client.close()
            try:
                await asyncio.sleep(delay)
            except asyncio.CancelledError:  # stopped while waiting to register again
                await self._deregister(client, None)
                raise

    async def _keep_alive(self, client: Any, lease_id: int, granted: int) -> None:
        """Refresh the lease every third of its TTL; return when etcd says it is gone."""
        interval = max(min(self.ttl, granted), 1) / 3
        call = client.leasestub.LeaseKeepAlive(metadata=client.metadata)
        loop = asyncio.get_running_loop()
        expired: list[bool] = []

        def expire() -> None:
            expired.append(True)
            call.cancel()

        try:
            while True:
                # A timer, not wait_for(): see EtcdSource._watch.
                deadline = loop.call_later(self.timeout, expire)
                try:
                    await call.write(rpc.LeaseKeepAliveRequest(ID=lease_id))
                    reply = await call.read()
                except asyncio.CancelledError:
                    if not expired or self.stopping:
                        raise
                    raise EtcdWatchError(
                        f"etcd did not answer a keep-alive within {self.timeout} s"
                    ) from None
                finally:
                    deadline.cancel()
                if reply is grpc.aio.EOF:
                    raise EtcdWatchError("etcd ended the keep-alive stream")
                if reply.TTL <= 0:  # expired, revoked, or lost with etcd's data
                    return
                await asyncio.sleep(interval)
        finally:
            call.cancel()

    async def _deregister(self, client: Any, lease_id: int | None) -> None:
        """A clean stop: the key goes now, not at the TTL, whichever lease holds it."""
        for held in dict.fromkeys(x for x in (lease_id, self._last_lease) if x):
            await self._revoke(client, held)
        self._last_lease = None

    async def _revoke(self, client: Any, lease_id: int) -> None:
        try:
            try:
                await client.revoke_lease(lease_id)  # bounded by the client's timeout
            except Exception:  # the client was never connected, or its stream broke
                fresh = _client(self.host, self.port, self.timeout)
                try:
                    await fresh.connect()
                    await fresh.revoke_lease(lease_id)
                finally:
                    await fresh.close()
        except Exception as exc:  # etcd is away: the key goes when the lease expires
            log.warning("%s: could not revoke lease %x: %s", self.name, lease_id, exc)
        else:
            log.info("%s: deregistered (lease %x revoked)", self.name, lease_id)


def _registration_options(url: str, options: dict[str, Any]) -> dict[str, Any]:
    """A registration's keyword arguments from ``etcd://host[:port]/prefix/`` and ``options``."""
    host, port, prefix, query = _parse_url(url)
    timeout = _timeout_option(url, query, options.pop("timeout", 5.0))
    return {"host": host, "port": port, "prefix": prefix, "timeout": timeout, **options}


@final
class AsyncEtcdRegistration:
    """Keeps ``server`` registered in etcd, in a task on the running event loop.

    ``async with AsyncEtcdRegistration("10.0.0.1:8080", host=..., weight=2):`` or
    ``start()`` / ``await stop()``; ``await wait_registered()`` waits for the key to be in.

    The key is ``prefix + server``, its value ``{"weight": weight, **metadata}`` in JSON, put
    under a lease of ``ttl`` seconds (etcd may raise a TTL below its minimum, 2 s by
    default) that is refreshed every third of the TTL. If etcd loses the lease (it expired
    while etcd was unreachable, or etcd lost its data), the key is registered again under a
    new lease; while etcd is unreachable, the registration retries at least every second.
    Stopping revokes the lease, so the key disappears at once; a process that dies without
    stopping leaves it until the TTL runs out. ``timeout`` bounds each request to etcd.
    """

    def __init__(
        self,
        server: str,
        *,
        host: str = "127.0.0.1",
        port: int = _DEFAULT_PORT,
        prefix: str = DEFAULT_PREFIX,
        weight: float = 1,
        metadata: Mapping[str, Any] | None = None,
        ttl: int = 10,
        timeout: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        self._registrar = _Registrar(
            server, host, port, prefix, weight, metadata, ttl, timeout, rng
        )
        self._task: asyncio.Task[None] | None = None
        self._registered: asyncio.Event | None = None
        self._lease_id: int | None = None

    @classmethod
    def from_url(cls, url: str, server: str, **options: Any) -> AsyncEtcdRegistration:
        """Register ``server`` under the prefix of ``etcd://host[:port]/prefix/``."""
        return cls(server, **_registration_options(url, options))

    @property
    def key(self) -> str:
        """The etcd key the server is registered under."""
        return self._registrar.key.decode()

    @property
    def lease_id(self) -> int | None:
        """The lease the key is under now; None while it is not registered."""
        return self._lease_id

    def _set_state(self, lease_id: int | None) -> None:
        if self._registered is not None:
            if lease_id is None:
                self._registered.clear()
            else:
                self._registered.set()

    def start(self) -> None:
        """Start registering (from the running loop); a second start does nothing."""
        if self._task is not None and not self._task.done():
            return
        here = asyncio.get_running_loop()
        self._registered = asyncio.Event()

        def on_state(lease_id: int | None) -> None:  # on the etcd loop's thread
            self._lease_id = lease_id
            with contextlib.suppress(RuntimeError):
                here.call_soon_threadsafe(self._set_state, lease_id)

        registrar = self._registrar
        registrar.stopping = False
        self._task = here.create_task(
            _on_shared_loop(lambda: registrar.run(on_state)),
            name=f"loadbalancer registration {registrar.name}",
        )

    async def stop(self) -> None:
        """Stop: the lease is revoked (the key goes at once) and the connection closed."""
        task, self._task = self._task, None
        if task is None:
            return
        self._registrar.stopping = True
        await cancel_and_wait(task)

    async def wait_registered(self, timeout: float | None = None) -> bool:
        """Wait until the key is in etcd; False if ``timeout`` passed first."""
        if self._registered is None:
            raise RuntimeError("start() the registration first")
        return await wait_set(self._registered, timeout)

    @property
    def registered(self) -> bool:
        """Whether the key is in etcd, as far as this process last heard."""
        return self._lease_id is not None

    async def __aenter__(self) -> AsyncEtcdRegistration:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()


@final
class EtcdRegistration:
    """Keeps ``server`` registered in etcd, for programs without an event loop.

    ``with EtcdRegistration("10.0.0.1:8080", host=..., weight=2):`` or ``start()`` /
    ``stop()``; ``wait_registered()`` waits for the key to be in.

    The key is ``prefix + server``, its value ``{"weight": weight, **metadata}`` in JSON, put
    under a lease of ``ttl`` seconds (etcd may raise a TTL below its minimum, 2 s by
    default) that is refreshed every third of the TTL. If etcd loses the lease (it expired
    while etcd was unreachable, or etcd lost its data), the key is registered again under a
    new lease; while etcd is unreachable, the registration retries at least every second.
    Stopping revokes the lease, so the key disappears at once; a process that dies without
    stopping leaves it until the TTL runs out. ``timeout`` bounds each request to etcd.
    """

    def __init__(
        self,
        server: str,
        *,
        host: str = "127.0.0.1",
        port: int = _DEFAULT_PORT,
        prefix: str = DEFAULT_PREFIX,
        weight: float = 1,
        metadata: Mapping[str, Any] | None = None,
        ttl: int = 10,
        timeout: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        self._registrar = _Registrar(
            server, host, port, prefix, weight, metadata, ttl, timeout, rng
        )
        self._lock = threading.Lock()
        self._remote: _Remote[None] | None = None
        self._registered = threading.Event()
        self._lease_id: int | None = None

    @classmethod
    def from_url(cls, url: str, server: str, **options: Any) -> EtcdRegistration:
        """Register ``server`` under the prefix of ``etcd://host[:port]/prefix/``."""
        return cls(server, **_registration_options(url, options))

    @property
    def key(self) -> str:
        """The etcd key the server is registered under."""
        return self._registrar.key.decode()

    @property
    def lease_id(self) -> int | None:
        """The lease the key is under now; None while it is not registered."""
        return self._lease_id

    @property
    def registered(self) -> bool:
        """Whether the key is in etcd, as far as this process last heard."""
        return self._registered.is_set()

    def _on_state(self, lease_id: int | None) -> None:
        self._lease_id = lease_id
        if lease_id is None:
            self._registered.clear()
        else:
            self._registered.set()

    def start(self) -> EtcdRegistration:
        """Start registering; a second start does nothing. Returns at once (see wait_registered)."""
        with self._lock:
            if self._remote is None:
                registrar = self._registrar
                registrar.stopping = False
                self._remote = _Remote(lambda: registrar.run(self._on_state), lambda: None)
        return self

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop: revoke the lease (the key goes at once); wait up to ``timeout`` s for it.
        False if the registration had not ended by then."""
        with self._lock:
            remote, self._remote = self._remote, None
        if remote is None:
            return True
        self._registrar.stopping = True
        remote.cancel()
        return remote.ended.wait(timeout)

    def wait_registered(self, timeout: float | None = None) -> bool:
        """Wait until the key is in etcd; False if ``timeout`` passed first."""
        return self._registered.wait(timeout)

    def __enter__(self) -> EtcdRegistration:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
