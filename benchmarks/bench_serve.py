"""`loadbalancer serve` beside nginx as a reverse proxy, same backends, same load, same run.

Backends: one nginx process answering 200 "ok" on two ports (two backends), fast enough not
to be the bottleneck. Proxies: ``loadbalancer serve --strategy round_robin --access-log off``
and nginx (Debian's) with ``proxy_pass`` to an upstream of the same two backends with
``keepalive``, access log off, each with the same number of workers (1, then 2). Load: wrk, the
same threads, connections and duration for every target, in interleaved rounds so that a noisy
moment on this shared machine hits every target alike.

1. Throughput: each proxy's best round of requests/s, and its ratio to nginx's (target: the
   issue's >= 0.4x nginx with the same number of workers); also the paired ratio (median over
   rounds of serve's round beside nginx's) and each proxy's CPU per request (its processes'
   user + system time over requests answered).
2. Added latency: at half of nginx's peak (this run's, per worker count), a fixed-rate load
   on a backend directly, on nginx and on serve; p50 and p99 added over the backend directly,
   the median over rounds of each round's difference (target: <= 2 ms p99). Debian has no
   wrk2, so the fixed rate is wrk's own ``delay()`` hook pacing requests to a schedule (see
   ``_serve_rig``): wrk stays the one load generator, in C, with no Python client's own
   jitter in the latencies it measures. Beside them, each proxy's CPU busy share per worker
   in those rounds (CPU time over the round's time): the nearer a worker is to fully busy,
   the longer each burst of arrivals queues behind the ones before it.

If nginx or wrk is missing, it installs nothing: it says how to (``make bench-serve`` does).
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from _serve_rig import (
    INSTALL,
    Process,
    Result,
    Wrk,
    backend_config,
    free_ports,
    machine_busy,
    missing_tools,
    nginx_argv,
    proxy_config,
    running,
)

ROOT = Path(__file__).resolve().parent.parent
RATIO_TARGET = 0.4  # serve's req/s over nginx's, same workers
ADDED_P99_TARGET_MS = 2.0  # p99 added over a backend directly, at half nginx's peak
BACKEND_WORKERS = 2  # the backends' nginx: enough not to be what the proxies wait on
DIRECT = "backend directly"
NGINX = "nginx proxy_pass"
SERVE = "loadbalancer serve"


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


@dataclass
class Target:
    """One thing wrk loads: its port, its process (none for the backend), its rounds."""

    name: str
    port: int
    process: Process | None = None
    peaks: list[Result] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    paced: list[Result] = field(default_factory=list)
    busy: list[float] = field(default_factory=list)  # per paced round: CPU share per worker

    def best(self) -> Result:
        return max(self.peaks, key=lambda result: result.rps)

    def _loaded(self, wrk: Wrk, rate: float | None) -> tuple[Result, float | None]:
        """One wrk run, and the CPU seconds the proxy's processes spent over it (None for a
        target with no process of ours: the backend directly)."""
        if self.process is None:
            return wrk.run(self.port, rate=rate), None
        before = sum(self.process.cpu_seconds())
        result = wrk.run(self.port, rate=rate)
        return result, sum(self.process.cpu_seconds()) - before

    def peak_round(self, wrk: Wrk) -> None:
        result, spent = self._loaded(wrk, None)
        self.peaks.append(result)
        if spent is not None:
            self.cpu_us.append(spent / max(result.requests, 1) * 1e6)

    def paced_round(self, wrk: Wrk, rate: float, workers: int) -> None:
        result, spent = self._loaded(wrk, rate)
        self.paced.append(result)
        if spent is not None:
            # Over wrk's own duration: the CPU read around it also spans wrk's start and end,
            # so the share is a little high, never low.
            self.busy.append(spent / result.seconds / workers)


def serve_argv(command: list[str], port: int, backends: list[str], workers: int) -> list[str]:
    argv = [*command, "--listen", f"127.0.0.1:{port}"]
    for backend in backends:
        argv += ["--backend", backend]
    return [*argv, "--strategy", "round_robin", "--workers", str(workers), "--access-log", "off"]


def serve_missing(command: list[str]) -> str | None:
    """Why ``command --help`` fails (serve not there yet), or None if it works."""
    try:
        done = subprocess.run(
            [*command, "--help"], capture_output=True, text=True, timeout=60, cwd=ROOT
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if done.returncode != 0:
        return (done.stderr.strip().splitlines() or ["exit status " + str(done.returncode)])[-1]
    return None


def measure(
    workdir: Path,
    wrk: Wrk,
    command: tuple[str, list[str]],
    backends: list[str],
    workers: int,
    rounds: int,
) -> tuple[Target, Target, Target, float]:
    """Both proxies with ``workers`` workers: peak rounds, then paced rounds at half nginx's."""
    nginx_port, serve_port = free_ports(2)
    direct = Target(DIRECT, int(backends[0].rsplit(":", 1)[1]))
    with ExitStack() as stack:
        nginx_dir = workdir / f"proxy-{workers}"
        nginx = stack.enter_context(
            running(
                f"nginx-proxy-{workers}",
                nginx_argv(nginx_dir, proxy_config(nginx_dir, nginx_port, backends, workers)),
                workdir,
                nginx_port,
            )
        )
        serve = stack.enter_context(
            running(
                f"serve-{workers}",
                serve_argv(command[1], serve_port, backends, workers),
                workdir,
                serve_port,
                cwd=ROOT,
            )
        )
        proxies = [Target(NGINX, nginx_port, nginx), Target(command[0], serve_port, serve)]
        for target in [direct, *proxies]:  # warm-up: pools filled, workers all up
            wrk.run(target.port, seconds=2)
        for _ in range(rounds):
            for target in proxies:
                target.peak_round(wrk)
        half = proxies[0].best().rps / 2
        for _ in range(rounds):
            for target in [direct, *proxies]:
                target.paced_round(wrk, half, workers)
    return direct, proxies[0], proxies[1], half


def added(target: Target, direct: Target) -> tuple[float, float]:
    """Median over rounds of the target's p50 and p99 minus the backend's, same round."""
    pairs = list(zip(target.paced, direct.paced, strict=True))
    return (
        statistics.median(t.p50_ms - d.p50_ms for t, d in pairs),
        statistics.median(t.p99_ms - d.p99_ms for t, d in pairs),
    )


def print_workers(workers: int, direct: Target, nginx: Target, serve: Target, half: float) -> bool:
    """One worker count's rows; True if both targets are met."""
    print(f"\nworkers {workers}")
    print(f"  {'peak':<20} {'req/s':>8} {'x nginx':>8} {'CPU µs/req':>11} {'failed':>7}")
    ref = nginx.best().rps
    for target in (nginx, serve):
        best = target.best()
        failed = sum(result.errors for result in target.peaks)
        cpu = statistics.median(target.cpu_us)
        print(f"  {target.name:<20} {best.rps:8.0f} {best.rps / ref:7.2f}x {cpu:11.1f} {failed:7d}")
    ratio = serve.best().rps / ref
    paired = statistics.median(s.rps / n.rps for s, n in zip(serve.peaks, nginx.peaks, strict=True))
    print(
        f"  serve/nginx req/s {ratio:.2f}x best rounds, {paired:.2f}x paired"
        f" (target >= {RATIO_TARGET:g}x: {verdict(ratio >= RATIO_TARGET)})"
    )
    print(
        f"  {f'at {half:.0f} req/s':<20} {'achieved':>8} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'+p50 ms':>8} {'+p99 ms':>8} {'failed':>7} {'CPU busy':>9}"
    )
    added_p99 = nginx_p99 = 0.0
    for target in (direct, nginx, serve):
        rps = statistics.median(result.rps for result in target.paced)
        p50 = statistics.median(result.p50_ms for result in target.paced)
        p99 = statistics.median(result.p99_ms for result in target.paced)
        failed = sum(result.errors for result in target.paced)
        shown = " " * 18
        busy = f"{statistics.median(target.busy):9.0%}" if target.busy else ""
        if target is not direct:
            plus50, plus99 = added(target, direct)
            shown = f" {plus50:+8.3f} {plus99:+8.3f}"
            if target is serve:
                added_p99 = plus99
            else:
                nginx_p99 = plus99
        print(f"  {target.name:<20} {rps:8.0f} {p50:8.3f} {p99:8.3f}{shown} {failed:7d} {busy}")
        if rps < 0.95 * half:
            print(f"    ({target.name} fell behind the fixed rate: its latencies understate)")
    met_latency = added_p99 <= ADDED_P99_TARGET_MS
    print(
        f"  serve's added p99 {added_p99:+.3f} ms"
        f" (target <= {ADDED_P99_TARGET_MS:g} ms: {verdict(met_latency)});"
        f" nginx's, same load: {nginx_p99:+.3f} ms"
    )
    return ratio >= RATIO_TARGET and met_latency


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2", help="worker counts, comma-separated")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per load")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument(
        "--serve-command",
        default=f"{shlex.quote(sys.executable)} -m loadbalancer.cli serve",
        help="the proxy under test, given serve's flags (default: loadbalancer serve)",
    )
    args = parser.parse_args()
    missing = missing_tools()
    if missing:
        print(
            f"bench_serve: {' and '.join(missing)} not installed; install with"
            f" `{INSTALL}` (as root), or run `make bench-serve`"
        )
        return 1
    command = shlex.split(args.serve_command)
    # a stand-in given by --serve-command is not labelled as serve
    name = SERVE if args.serve_command == parser.get_default("serve_command") else "--serve-command"
    why = serve_missing(command)
    if why is not None:
        print(f"bench_serve: `{args.serve_command} --help` fails, so there is no proxy: {why}")
        return 1
    worker_counts = [int(count) for count in args.workers.split(",")]
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_serve-") as tmp:
        workdir = Path(tmp)
        wrk = Wrk(workdir, args.threads, args.connections, args.seconds)
        backend_ports = free_ports(2)
        backends = [f"127.0.0.1:{port}" for port in backend_ports]
        backend_dir = workdir / "backends"
        print(
            f"{name} (`{args.serve_command}`, round_robin, access log off) beside nginx"
            f' proxy_pass with upstream keepalive; 2 backends: nginx `return 200 "ok"`'
            f" ({BACKEND_WORKERS} workers)"
        )
        print(
            f"wrk -t{args.threads} -c{args.connections} -d{args.seconds:g}s for every target,"
            f" {args.rounds} interleaved rounds; peak: best round; latency: median round,"
            f" fixed rate from wrk's delay() hook (no wrk2 in Debian)"
        )
        print(
            f"this machine was {machine_busy():.0%} busy (all {os.cpu_count()} cores) just before:"
            " absolute figures move with its other work, same-run ratios far less"
        )
        ok = True
        with running(
            "backends",
            nginx_argv(backend_dir, backend_config(backend_dir, backend_ports, BACKEND_WORKERS)),
            workdir,
            backend_ports[0],
        ):
            for workers in worker_counts:
                direct, nginx, serve, half = measure(
                    workdir, wrk, (name, command), backends, workers, args.rounds
                )
                ok = print_workers(workers, direct, nginx, serve, half) and ok
    print(f"\nall targets {verdict(ok)} ({time.perf_counter() - began:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
