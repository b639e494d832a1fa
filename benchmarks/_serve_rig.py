"""The rig for bench_serve: nginx backends and reference proxy, the proxy under test, and wrk.

Every process runs in a session of its own, is bounded by timeouts, and is killed by its
process group (its PID) in a ``finally``. Everything listens on 127.0.0.1 only.

wrk reports through a Lua ``done()`` hook (one machine-readable line), not its text. For a
fixed rate (Debian has no wrk2), a Lua ``delay()`` hook paces each thread's requests to an
absolute schedule read from ``clock_gettime`` through LuaJIT's FFI: every request takes the
next slot of ``rate / threads`` per second and waits for it on whichever connection is free.
wrk's timers have millisecond resolution, so arrivals come in bursts of ``rate / 1000``
requests per millisecond, alike for every target; latency is measured from each request's
actual send (as wrk does), not from its slot, so a target that falls behind its schedule
shows it as a lower achieved rate, which the benchmark reports beside the latencies.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

BODY = "ok"  # what every backend answers, as nginx's `return 200 "ok";`
INSTALL = "apt-get install -y nginx wrk"

DONE_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d errors=%d non2xx=%d\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
"""

PACED_LUA = """
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end
local interval = 1000 / RATE_PER_THREAD
local slot = nil
delay = function()
  local now = now_ms()
  if slot == nil then slot = now end
  slot = slot + interval
  local wait = slot - now
  if wait < 0.5 then return 0 end
  return math.floor(wait + 0.5)
end
"""


def nginx_path() -> str | None:
    """Nginx's binary: on PATH, or Debian's /usr/sbin/nginx when sbin is not on PATH."""
    found = shutil.which("nginx")
    if found is None and os.access("/usr/sbin/nginx", os.X_OK):
        found = "/usr/sbin/nginx"
    return found


def missing_tools() -> list[str]:
    """The names of the tools this benchmark needs that are not installed."""
    missing = []
    if nginx_path() is None:
        missing.append("nginx")
    if shutil.which("wrk") is None:
        missing.append("wrk")
    return missing


def machine_busy(seconds: float = 1.0) -> float:
    """The fraction of all cores busy over ``seconds``: this shared machine's other work."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as stat:
            ticks = [int(tick) for tick in stat.readline().split()[1:]]
        return sum(ticks), ticks[3] + ticks[4]  # idle + iowait

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 1 - (idle1 - idle0) / max(total1 - total0, 1)


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 (bound then released)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def _nginx_head(workdir: Path, workers: int) -> str:
    return f"""
worker_processes {workers};
daemon off;
master_process on;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {workdir}/body;
  proxy_temp_path {workdir}/proxy;
  fastcgi_temp_path {workdir}/fastcgi;
  uwsgi_temp_path {workdir}/uwsgi;
  scgi_temp_path {workdir}/scgi;
  keepalive_timeout 75s;
  keepalive_requests 100000000;
"""


def backend_config(workdir: Path, ports: Sequence[int], workers: int) -> str:
    """Nginx answering 200 "ok" on each port: one backend per port."""
    servers = "".join(
        f'  server {{ listen 127.0.0.1:{port}; location / {{ return 200 "{BODY}"; }} }}\n'
        for port in ports
    )
    return _nginx_head(workdir, workers) + servers + "}\n"


def proxy_config(workdir: Path, port: int, backends: Sequence[str], workers: int) -> str:
    """Nginx proxying to ``backends`` round robin, with upstream keep-alive."""
    servers = "".join(f"    server {backend};\n" for backend in backends)
    return (
        _nginx_head(workdir, workers)
        + f"""  upstream pool {{
{servers}    keepalive 128;
    keepalive_requests 100000000;
  }}
  server {{
    listen 127.0.0.1:{port} reuseport;
    location / {{
      proxy_pass http://pool;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""
    )


class Process:
    """A child in a session of its own, so that it and any workers it forks stop together."""

    def __init__(self, name: str, argv: Sequence[str], log: Path, cwd: Path | None = None) -> None:
        self.name = name
        self.log = log
        with log.open("wb") as out:
            self.popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 5) -> str:
        text = self.log.read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:])

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM its process group, then SIGKILL it if still there after ``grace`` s."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                continue
            # the leader is gone; its workers share its group: end them too
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            return
        self.popen.wait(grace)

    def cpu_seconds(self) -> tuple[float, float]:
        """User and system CPU seconds of every live process in its group (its workers too)."""
        tick = os.sysconf("SC_CLK_TCK")
        user = system = 0.0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[2]) == self.pid:  # the process group
                user += int(fields[11]) / tick
                system += int(fields[12]) / tick
        return user, system


@contextlib.contextmanager
def running(
    name: str, argv: Sequence[str], workdir: Path, port: int, cwd: Path | None = None
) -> Iterator[Process]:
    """Start a process, wait until ``port`` accepts and answers GET / with the body; stop it."""
    process = Process(name, argv, workdir / f"{name}.log", cwd)
    try:
        wait_ready(process, port)
        yield process
    finally:
        process.stop()


def wait_ready(process: Process, port: int, timeout: float = 30.0) -> None:
    """Wait until GET / on ``port`` answers 200 with the backends' body."""
    deadline = time.monotonic() + timeout
    problem = "no answer"
    while time.monotonic() < deadline:
        if not process.alive():
            raise RuntimeError(f"{process.name} exited: {process.tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                body = response.read().decode(errors="replace")
                if response.status == 200 and body == BODY:
                    return
                problem = f"answered {response.status} {body[:40]!r}"
        except OSError as exc:
            problem = str(exc)
        time.sleep(0.1)
    raise RuntimeError(
        f"{process.name} not ready on port {port} in {timeout:g} s: {problem}; its log: "
        + process.tail()
    )


def nginx_argv(workdir: Path, config: str) -> list[str]:
    """The command line for nginx on ``config``, written under ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "nginx.conf"
    path.write_text(config)
    binary = nginx_path()
    assert binary is not None
    return [binary, "-p", f"{workdir}/", "-c", str(path), "-e", str(workdir / "error.log")]


@dataclass(frozen=True)
class Result:
    """One wrk run: requests answered, achieved requests/s, latency percentiles (ms), failures,
    and the seconds wrk loaded for."""

    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    seconds: float


_RESULT = re.compile(
    r"RESULT requests=(\d+) duration_us=(\d+) p50_us=(\d+) p99_us=(\d+) errors=(\d+) non2xx=(\d+)"
)


@dataclass(frozen=True)
class Wrk:
    """One wrk setting, the same for every target: threads, connections, seconds."""

    workdir: Path
    threads: int
    connections: int
    seconds: float

    def _script(self, name: str, text: str) -> Path:
        path = self.workdir / name
        path.write_text(text)
        return path

    def run(self, port: int, rate: float | None = None, seconds: float | None = None) -> Result:
        """Load GET / on ``port``: as fast as it answers, or at ``rate`` requests/s."""
        if rate is None:
            script = self._script("peak.lua", DONE_LUA)
        else:
            per_thread = f"{rate / self.threads:.3f}"
            text = PACED_LUA.replace("RATE_PER_THREAD", per_thread) + DONE_LUA
            script = self._script("paced.lua", text)
        duration = self.seconds if seconds is None else seconds
        argv = [
            "wrk",
            f"-t{self.threads}",
            f"-c{self.connections}",
            f"-d{duration:g}s",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}/",
        ]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30)
        match = _RESULT.search(done.stdout)
        if done.returncode != 0 or match is None:
            raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()[:200]}")
        requests, duration_us, p50, p99, errors, non2xx = map(int, match.groups())
        seconds = duration_us / 1e6
        return Result(
            requests, requests / seconds, p50 / 1000, p99 / 1000, errors + non2xx, seconds
        )
