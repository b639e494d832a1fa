"""Running ``loadbalancer serve``: one worker process, or a parent over ``--workers N``.

A worker builds its pools (``Upstreams``), starts one ``ProxyServer`` per listener and the
admin listener, writes the access log, and answers signals:

* ``SIGTERM`` (and ``SIGINT``): graceful drain. Stop accepting, let in-flight requests finish
  for up to ``timeouts.drain`` seconds, close, exit 0.
* ``SIGHUP``: reload the configuration file. New requests use the new pools and routes;
  connections are untouched; pools that stay keep their balancers (see ``Upstreams``). A bad
  file is logged on one line and the old settings stay. Listeners, the admin address, the
  access log and ``workers`` are fixed at start: a change to them is logged and ignored
  (``log.level`` does change).

With ``workers > 1`` the parent reserves each listening port (a socket bound with
``SO_REUSEPORT`` but never listening, so the kernel gives it no connection) and starts that
many worker processes, each listening on the same port with ``SO_REUSEPORT``: the kernel
spreads connections across them. Each has its own balancers, as nginx workers without a
shared zone: least connections, P2C and peak EWMA see only their own worker's requests, and
outlier detection and health checks run in each. The parent forwards ``SIGTERM``, ``SIGINT``
and ``SIGHUP`` to its workers and exits when they all have: 0 if they all exited 0. A worker
that exits otherwise is restarted on the same port (at most 5 restarts a minute), as nginx's
master does.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import importlib
import logging
import math
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from json.encoder import encode_basestring_ascii as _json_string
from typing import IO, Any, Protocol, final

from ._admin import AdminServer
from ._config import ConfigError, ServeConfig, load_config
from ._settings import AccessRecord, ProxySettings

__all__ = ["AccessLogWriter", "reserve_ports", "run_parent", "run_worker"]

_log = logging.getLogger("loadbalancer.serve")

_DISCOVERY_WAIT = 5.0  # seconds a worker waits at start for each discovery source's first answer
_MAX_RESTARTS = 5  # a --workers parent restarts at most this many workers
_RESTART_WINDOW = 60.0  # within this many seconds: past it, a crashing worker stays down
_PIPE_BUF = 4096  # writes up to this size to a pipe are atomic: workers' lines never mix
_FLUSH_AFTER = 0.05  # seconds an access log line may wait to be written with others
_FLUSH_BYTES = 65536  # or until this much is queued


class _Proxy(Protocol):
    """The proxy engine's API (``loadbalancer.serve._server.ProxyServer``)."""

    async def start(self, host: str, port: int, *, sock: socket.socket | None = None) -> None:
        """Listen on ``host:port``, or on ``sock``."""

    @property
    def port(self) -> int:
        """The port listened on."""

    def reload(self, settings: ProxySettings) -> None:
        """Serve new requests on ``settings``."""

    async def drain(self, deadline: float) -> None:
        """Stop accepting; wait for in-flight requests for up to ``deadline`` seconds."""

    async def close(self) -> None:
        """Close everything."""


def _proxy_class() -> Callable[[ProxySettings], _Proxy]:
    """The engine's ``ProxyServer``, imported when a worker starts."""
    module = importlib.import_module("loadbalancer.serve._server")
    factory: Callable[[ProxySettings], _Proxy] = module.ProxyServer
    return factory


# -- the access log -----------------------------------------------------------------------------


@final
class AccessLogWriter:
    """Access records as JSON lines on a file descriptor, written in batches.

    Each line is one JSON object: ``time`` (Unix seconds), ``pid`` (the worker's process
    id), then the ``AccessRecord``'s fields by name. Lines wait at most ``_FLUSH_AFTER``
    seconds (or until 64 KiB are queued) and go out whole, in writes of at most ``PIPE_BUF``
    bytes, so the lines of several workers sharing stdout never interleave.
    """

    __slots__ = ("_fd", "_file", "_lines", "_pending", "_pid", "_scheduled")

    def __init__(self, target: str) -> None:
        self._file: IO[bytes] | None = None
        if target == "stdout":
            self._fd = sys.stdout.fileno()
        else:
            try:
                self._file = open(target, "ab")  # noqa: SIM115 - closed by close()
            except OSError as error:
                raise ConfigError("log.access", f"cannot open {target}: {error.strerror}") from None
            self._fd = self._file.fileno()
        self._lines: list[bytes] = []
        self._pending = 0
        self._scheduled = False
        self._pid = os.getpid()

    def __call__(self, record: AccessRecord) -> None:
        """Queue ``record``'s line, to be written within ``_FLUSH_AFTER`` seconds."""
        # Formatted by hand: json.dumps of a dict costs 2.6 times as much, on every request.
        r = record
        line = (
            f'{{"time":{time.time():.6f},"pid":{self._pid},"client":{_text(r.client)},'
            f'"method":{_text(r.method)},"target":{_text(r.target)},"host":{_text(r.host)},'
            f'"status":{int(r.status)},"pool":{_text(r.pool)},'
            f'"upstream":{_text(r.upstream)},"attempts":{int(r.attempts)},'
            f'"upstream_time":{_seconds(r.upstream_time)},"total_time":{_seconds(r.total_time)},'
            f'"bytes_sent":{int(r.bytes_sent)},"outcome":{_text(r.outcome)},'
            f'"error":{_text(r.error)}}}\n'
        ).encode()
        self._lines.append(line)
        self._pending += len(line)
        if self._pending >= _FLUSH_BYTES:
            self.flush()
        elif not self._scheduled:
            try:
                asyncio.get_running_loop().call_later(_FLUSH_AFTER, self.flush)
                self._scheduled = True
            except RuntimeError:  # no loop: write it now
                self.flush()

    def flush(self) -> None:
        """Write every queued line."""
        self._scheduled = False
        self._pending = 0
        lines, self._lines = self._lines, []
        chunk = bytearray()
        for line in lines:
            if chunk and len(chunk) + len(line) > _PIPE_BUF:
                self._write(bytes(chunk))
                chunk.clear()
            chunk += line
        if chunk:
            self._write(bytes(chunk))

    def _write(self, data: bytes) -> None:
        if self._fd < 0:
            return
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd, view)
            except BlockingIOError:
                select.select([], [self._fd], [], 1.0)
                continue
            except OSError as error:  # a closed stdout: the log is lost, not the proxy
                _log.error("access log: %s; no more lines are written", error.strerror or error)
                self._fd = -1
                return
            view = view[written:]

    def close(self) -> None:
        """Write what is queued and close a file target."""
        self.flush()
        if self._file is not None:
            self._file.close()


def _text(value: str | None) -> str:
    """A JSON string (ASCII, escaped), or null."""
    return "null" if value is None else _json_string(value)


def _seconds(value: float | None) -> str:
    """A JSON number of seconds to the microsecond, or null."""
    if value is None or not math.isfinite(value):
        return "null"
    return repr(round(value, 6))


# -- one worker ---------------------------------------------------------------------------------


def _listening_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A TCP socket listening on ``host:port``, with ``SO_REUSEPORT`` if asked."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _raise_fd_limit() -> int:
    """Raise the soft file-descriptor limit to the hard one; return the limit now in force."""
    try:
        import resource
    except ImportError:  # not on this platform
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return soft


def _fixed(config: ServeConfig) -> tuple[object, ...]:
    """What a reload cannot change."""
    return (config.listen, config.admin, config.access_log, config.workers)


@final
class _Worker:
    """One serving process: its pools, proxies, admin listener, access log and signals."""

    def __init__(
        self,
        config: ServeConfig,
        *,
        reuse_port: bool,
        announce: Callable[[str], None],
        reload_config: Callable[[], ServeConfig] | None,
    ) -> None:
        from ._config import Upstreams

        self.config = config
        self.reuse_port = reuse_port
        self.announce = announce
        self.reload_config = reload_config
        self.access = (
            None if config.access_log.target == "off" else AccessLogWriter(config.access_log.target)
        )
        self.admin: AdminServer | None = None
        self.upstreams = Upstreams(on_access=self.access, on_pools=self._pools_changed)
        self.proxies: list[_Proxy] = []
        self.stopping: asyncio.Event | None = None
        self.reloading: asyncio.Lock | None = None
        self.tasks: set[asyncio.Task[bool]] = set()

    def _pools_changed(self, added: Any, removed: Any) -> None:
        if self.admin is not None:
            self.admin.update(added, removed)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        self.reloading = asyncio.Lock()
        settings = await self.upstreams.apply(self.config)
        if not await self.upstreams.wait_ready(_DISCOVERY_WAIT):
            _log.warning(
                "a discovery source gave no membership within %g s: its pool starts empty",
                _DISCOVERY_WAIT,
            )
        if self.config.admin is not None:
            self.admin = AdminServer(self.upstreams.balancers, health=self.upstreams.health_status)
        try:
            proxy_class = _proxy_class()
            where = []
            for host, port in self.config.listen:
                proxy = proxy_class(settings)
                if self.reuse_port:
                    sock = _listening_socket(host, port, reuse_port=True)
                    await proxy.start(host, port, sock=sock)
                else:
                    await proxy.start(host, port)
                self.proxies.append(proxy)
                where.append(f"{_show(host)}:{proxy.port}")
            admin_at = ""
            if self.admin is not None and self.config.admin is not None:
                host, port = self.config.admin
                await self.admin.start(host, port)
                admin_at = f"; admin on http://{_show(host)}:{self.admin.port}/status"
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self.stopping.set)
            loop.add_signal_handler(signal.SIGHUP, self._spawn_reload)
            self.announce(
                f"listening on {', '.join(where)}{admin_at} (pid {os.getpid()}, "
                f"{type(loop).__module__.partition('.')[0]} loop)"
            )
            # What is made by now lives as long as the worker (modules, pools, balancers): the
            # collector need not walk it again each time requests' objects trigger it.
            gc.freeze()
            await self.stopping.wait()
            drain = self.config.timeouts.drain
            _log.info("draining for up to %g s", drain)
            await asyncio.gather(*(proxy.drain(drain) for proxy in self.proxies))
            return 0
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            for proxy in self.proxies:
                await proxy.close()
            if self.admin is not None:
                await self.admin.close()
            for task in list(self.tasks):
                task.cancel()
            await self.upstreams.close()
            if self.access is not None:
                self.access.close()

    def _spawn_reload(self) -> None:
        task = asyncio.get_running_loop().create_task(self.reload())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def reload(self) -> bool:
        """Reload from the configuration file; log and keep the old settings on an error."""
        if self.reload_config is None:
            _log.warning("reload: nothing to reload (started without --config)")
            return False
        assert self.reloading is not None
        async with self.reloading:
            try:
                config = self.reload_config()
                settings = await self.upstreams.apply(config)
            except ConfigError as error:
                _log.error("reload failed, old settings kept: %s", error)
                return False
            except OSError as error:
                _log.error("reload failed, old settings kept: %s", error.strerror or error)
                return False
            if _fixed(config) != _fixed(self.config):
                _log.warning(
                    "reload: listen, admin, log.access and workers need a restart; unchanged"
                )
            for proxy in self.proxies:
                proxy.reload(settings)
            # What ``run`` froze includes what this reload replaced: collectable again.
            gc.unfreeze()
            logging.getLogger("loadbalancer").setLevel(config.log_level.upper())
            self.config = config
            _log.info(
                "reloaded: pools %s, %d routes",
                ", ".join(p.name for p in config.pools),
                len(config.routes),
            )
            return True


def _show(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _event_loop_factory(kind: str = "auto") -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's loop for ``"uvloop"``, and for ``"auto"`` where it is installed; else asyncio's."""
    if kind == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        if kind == "uvloop":
            raise
        return asyncio.new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run_worker(
    config: ServeConfig,
    *,
    reuse_port: bool = False,
    ready_fd: int | None = None,
    announce: Callable[[str], None] | None = None,
    loop: str = "auto",
) -> int:
    """Serve ``config`` in this process until SIGTERM; return the exit status.

    ``loop``: ``"uvloop"``, ``"asyncio"``, or ``"auto"`` (uvloop where it is installed).
    ``announce`` receives the line saying where it listens, once it does (default: stderr);
    ``ready_fd``, a pipe to a parent, is written ``ready`` and closed then.
    """
    limit = _raise_fd_limit()

    def ready(line: str) -> None:
        (announce or _announce)(f"{line}; {limit} file descriptors" if limit > 0 else line)
        if ready_fd is not None:
            with contextlib.suppress(OSError):
                os.write(ready_fd, b"ready\n")
                os.close(ready_fd)

    source = config.source
    reload_config: Callable[[], ServeConfig] | None = None
    if source is not None:
        fixed = config

        def reload_config() -> ServeConfig:
            # The flags' overrides (listen, admin, workers, access log) stay as started.
            fresh = load_config(source)
            return fresh.replace(
                listen=fixed.listen,
                admin=fixed.admin,
                access_log=fixed.access_log,
                workers=fixed.workers,
            )

    worker = _Worker(config, reuse_port=reuse_port, announce=ready, reload_config=reload_config)
    factory = _event_loop_factory(loop)
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(worker.run())
    event_loop = factory()  # pragma: no cover - Python 3.10
    try:
        asyncio.set_event_loop(event_loop)
        return event_loop.run_until_complete(worker.run())
    finally:
        asyncio.set_event_loop(None)
        event_loop.close()


def _announce(line: str) -> None:
    """One line on stderr, in one write: workers share the stream, and print() writes the
    text and its newline apart, so two workers' lines could run together."""
    sys.stderr.flush()
    os.write(sys.stderr.fileno(), f"loadbalancer serve: {line}\n".encode(errors="replace"))


# -- workers ------------------------------------------------------------------------------------


def reserve_ports(listen: Sequence[tuple[str, int]]) -> list[socket.socket]:
    """One socket per address, bound with ``SO_REUSEPORT`` but not listening: the port is
    reserved (port 0 becomes a real one) and the kernel gives it no connection."""
    sockets: list[socket.socket] = []
    try:
        for host, port in listen:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _die_with_parent() -> Callable[[], None] | None:
    """What a worker runs between fork and exec so that it drains and exits when the parent
    dies (even by SIGKILL, which the parent cannot forward): Linux's PR_SET_PDEATHSIG, asking
    for the SIGTERM the parent would have sent. None where there is no such call."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # loaded before fork, not after
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the call: nobody will tell us
            os.kill(os.getpid(), signal.SIGTERM)

    return arm


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def run_parent(
    config: ServeConfig,
    worker_argv: Callable[[int, list[tuple[str, int]], tuple[str, int] | None, int], list[str]],
    *,
    ready_timeout: float = 30.0,
) -> int:
    """Start ``config.workers`` worker processes on shared ports and supervise them.

    ``worker_argv(index, listen, admin, ready_fd)`` is the command line of worker ``index``:
    it listens on ``listen`` (the reserved ports) with ``SO_REUSEPORT``, its admin listener
    on ``admin`` (the configured port plus ``index``, or any free port for port 0), and
    writes ``ready`` to ``ready_fd`` once it serves. Returns 0 if every worker exited 0.
    """
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ConfigError("workers", "needs SO_REUSEPORT, which this platform lacks")
    die_with_parent = _die_with_parent()
    reserved = reserve_ports(config.listen)
    listen = [
        (host, sock.getsockname()[1])
        for (host, _), sock in zip(config.listen, reserved, strict=True)
    ]
    children: dict[int, tuple[int, subprocess.Popen[bytes]]] = {}  # pid: (index, process)
    exits: dict[int, int] = {}  # worker index: the exit status of its last process
    restarts: list[float] = []  # when workers were restarted, for the limit
    stopping = False

    def forward(signum: int, frame: object) -> None:
        nonlocal stopping
        if signum != signal.SIGHUP:
            stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def spawn(index: int) -> int:
        """Start worker ``index``; return the read end of its readiness pipe."""
        admin = None
        if config.admin is not None:
            host, port = config.admin
            admin = (host, port + index if port else 0)
        read_end, write_end = os.pipe()
        try:
            child = subprocess.Popen(
                worker_argv(index, listen, admin, write_end),
                pass_fds=(write_end,),
                preexec_fn=die_with_parent,
            )
        finally:
            os.close(write_end)
        children[child.pid] = (index, child)
        return read_end

    previous = {
        s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    }
    try:
        pipes = [spawn(index) for index in range(config.workers)]
        deadline = time.monotonic() + ready_timeout
        waiting = set(pipes)
        failed = False
        while waiting and not stopping and not failed:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            readable, _, _ = select.select(list(waiting), [], [], left)
            for fd in readable:
                if not os.read(fd, 64):  # b"": the worker exited before it was ready
                    failed = True
                waiting.discard(fd)
        for fd in pipes:
            os.close(fd)
        if waiting or stopping or failed:
            if failed:
                _log.error("a worker exited before it was ready: stopping the others")
            elif not stopping:
                _log.error("a worker did not start within %g s: stopping", ready_timeout)
            forward(signal.SIGTERM, None)
        else:
            where = ", ".join(f"{_show(h)}:{p}" for h, p in listen)
            _announce(f"{config.workers} workers listening on {where} (pid {os.getpid()})")
        while children:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:  # pragma: no cover - every child already reaped
                break
            if pid not in children:
                continue
            index, child = children.pop(pid)
            code = child.returncode = os.waitstatus_to_exitcode(status)
            exits[index] = code
            if stopping:
                continue
            now = time.monotonic()
            restarts[:] = [t for t in restarts if now - t < _RESTART_WINDOW]
            if len(restarts) >= _MAX_RESTARTS:
                _log.error(
                    "worker %d (pid %d) exited with status %d; not restarted: %d restarts in %g s",
                    index,
                    pid,
                    code,
                    len(restarts),
                    _RESTART_WINDOW,
                )
                continue
            restarts.append(now)
            _log.error("worker %d (pid %d) exited with status %d: restarting it", index, pid, code)
            os.close(spawn(index))  # it serves as soon as it listens; nobody waits for it
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for sock in reserved:
            sock.close()
        for pid, (_, child) in children.items():  # only after an error in this function
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            child.wait()
    ok = not failed and len(exits) == config.workers and all(c == 0 for c in exits.values())
    return 0 if ok else 1
