"""Built-in probes: TCP connect and HTTP GET, blocking and asyncio, standard library only.

A probe is any callable ``server -> bool`` (or ``async`` for ``AsyncHealthChecker``) whose
result is truthy when the server is healthy. The built-in ones return a ``ProbeResult``:
truthy when healthy, and when not, carrying the reason (``"connection refused"``,
``"status 404"``, ``"timed out after 0.5 s waiting for the status line"``), which the checkers
put in ``HealthCheckStatus.last_failure`` and their log messages. Custom probes may return a
``ProbeResult`` too, or plain True or False.

The built-in probes accept servers written as ``host:port``, ``[ipv6]:port`` or URLs
(``http://host:port/base``), and raise ValueError for a server they cannot parse. Their
``timeout`` is a deadline for the whole probe: connecting, the TLS handshake, sending the
request and reading the status line together, so a server that trickles its answer a byte at
a time cannot stretch a probe (nor hold up ``HealthChecker.stop()``) past it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import Collection
from typing import final

from ._address import DEFAULT_PORTS, Address, parse_address
from ._core import check_seconds, describe_error
from ._result import ProbeResult

__all__ = ["AsyncHttpProbe", "AsyncTcpProbe", "HttpProbe", "TcpProbe"]

_USER_AGENT = "loadbalancer-health/0.1"
_SCHEMES = ("http", "https")
# Longest status line read before giving up on it, as asyncio's stream limit and http.client's.
_MAX_LINE = 65536

_HEALTHY = ProbeResult(True)
_LINE_TOO_LONG = ProbeResult(False, f"status line longer than {_MAX_LINE} bytes")

# What a probe was doing when it failed, for the reason it reports.
_CONNECTING = "connecting"
_HANDSHAKE = "in the TLS handshake"
_SENDING = "sending the request"
_READING = "waiting for the status line"
_CONNECTING_TLS = f"{_CONNECTING} or {_HANDSHAKE}"  # asyncio does both in open_connection


class _LineTooLongError(Exception):
    """The server sent more than _MAX_LINE bytes without ending its first line."""


def _failure(exc: BaseException, timeout: float, step: str) -> ProbeResult:
    """The unhealthy result for ``exc``, raised while the probe was doing ``step``."""
    # asyncio.TimeoutError is TimeoutError from 3.11 on, a class of its own before.
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return ProbeResult(False, f"timed out after {timeout:g} s {step}")
    if isinstance(exc, ConnectionRefusedError):
        return ProbeResult(False, "connection refused")
    if isinstance(exc, socket.gaierror):
        return ProbeResult(False, f"name resolution failed: {exc.strerror or exc}")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ProbeResult(False, f"TLS certificate rejected: {exc.verify_message or exc}")
    if isinstance(exc, ssl.SSLError):
        return ProbeResult(False, f"TLS error {step}: {exc.reason or exc}")
    if isinstance(exc, OSError) and exc.strerror:  # "Connection reset by peer" and such
        return ProbeResult(False, f"{exc.strerror[:1].lower()}{exc.strerror[1:]} {step}")
    return ProbeResult(False, f"{describe_error(exc)} {step}")


def _remaining(deadline: float) -> float:
    """Seconds left before ``deadline`` (a ``time.monotonic`` reading); TimeoutError if none."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


def _connect(address: Address, deadline: float) -> socket.socket:
    """A TCP connection to ``address`` opened before ``deadline``, trying each address.

    ``socket.create_connection`` gives each address the whole timeout; here they share it.
    """
    # The standard resolver cannot be interrupted: a slow one uses up the deadline, and may
    # overrun it, before any connection is tried.
    infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
    error: OSError | None = None
    for family, kind, proto, _, sockaddr in infos:
        left = _remaining(deadline)
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(left)
            sock.connect(sockaddr)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        return sock
    if error is None:  # getaddrinfo raises rather than return nothing, but be sure
        raise OSError(f"no address for {address.host!r}")
    raise error


# -- TCP ------------------------------------------------------------------------------------


class _TcpSettings:
    __slots__ = ("_timeout",)

    def __init__(self, timeout: float = 1.0) -> None:
        self._timeout = check_seconds(timeout, "timeout")

    @property
    def timeout(self) -> float:
        """Seconds the probe may take, name resolution included, for the connection to open."""
        return self._timeout

    def __repr__(self) -> str:
        return f"{type(self).__name__}(timeout={self._timeout!r})"


@final
class TcpProbe(_TcpSettings):
    """Healthy if a TCP connection to the server opens within ``timeout`` seconds.

    Returns a ``ProbeResult`` (truthy when healthy) whose reason says why it is not. The
    timeout covers name resolution too, but the standard resolver cannot be interrupted: use
    IP addresses where a slow DNS server must not stretch a probe.
    """

    __slots__ = ()

    def __call__(self, server: str) -> ProbeResult:
        """Connect to ``server`` and close at once; healthy if the connection opened."""
        address = parse_address(server)
        try:
            sock = _connect(address, time.monotonic() + self._timeout)
        except OSError as exc:
            return _failure(exc, self._timeout, _CONNECTING)
        sock.close()
        return _HEALTHY


@final
class AsyncTcpProbe(_TcpSettings):
    """The asyncio twin of ``TcpProbe``; its ``timeout`` interrupts name resolution too."""

    __slots__ = ()

    async def __call__(self, server: str) -> ProbeResult:
        """Connect to ``server`` and close at once; healthy if the connection opened."""
        address = parse_address(server)
        try:
            await asyncio.wait_for(self._connect(address), self._timeout)
        except (OSError, asyncio.TimeoutError) as exc:  # distinct types before 3.11
            return _failure(exc, self._timeout, _CONNECTING)
        return _HEALTHY

    @staticmethod
    async def _connect(address: Address) -> None:
        # Open and close inside one coroutine, so a timeout that lands just as the connection
        # opens still closes it.
        _, writer = await asyncio.open_connection(address.host, address.port)
        await _abort(writer)


async def _abort(writer: asyncio.StreamWriter) -> None:
    # A check needs no graceful goodbye and abort never waits on the peer (a TLS close would
    # wait for the server's close_notify); HAProxy resets its check connections too.
    writer.transport.abort()
    with contextlib.suppress(OSError):  # the reset is what we asked for
        await writer.wait_closed()


# -- HTTP -----------------------------------------------------------------------------------


def _check_path(path: object) -> str:
    if not isinstance(path, str):
        raise TypeError(f"path must be a str, not {type(path).__name__}")
    if not path.startswith("/"):
        raise ValueError(f"path must start with '/', got {path!r}")
    if not path.isascii() or any(c <= " " or c == "\x7f" for c in path):
        raise ValueError(f"path must be ASCII without spaces or control characters: {path!r}")
    return path


def _check_expect(expect: object) -> Collection[int]:
    if isinstance(expect, (str, bytes)) or not isinstance(expect, Collection):
        raise TypeError(
            f"expect must be a collection of status codes such as range(200, 400), "
            f"not {type(expect).__name__}"
        )
    if len(expect) == 0:
        raise ValueError("expect must contain at least one status code")
    return expect


def _check_scheme(scheme: object) -> str:
    if scheme not in _SCHEMES:
        raise ValueError(f"scheme must be 'http' or 'https', got {scheme!r}")
    return str(scheme)


class _HttpSettings:
    __slots__ = ("_context", "_expect", "_path", "_scheme", "_timeout")

    def __init__(
        self,
        path: str = "/health",
        expect: Collection[int] = range(200, 400),
        timeout: float = 1.0,
        scheme: str = "http",
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._path = _check_path(path)
        self._expect = _check_expect(expect)
        self._timeout = check_seconds(timeout, "timeout")
        self._scheme = _check_scheme(scheme)
        if ssl_context is not None and not isinstance(ssl_context, ssl.SSLContext):
            raise TypeError(
                f"ssl_context must be an ssl.SSLContext, not {type(ssl_context).__name__}"
            )
        self._context = ssl_context

    @property
    def path(self) -> str:
        """The path requested, appended to a URL server's own path."""
        return self._path

    @property
    def expect(self) -> Collection[int]:
        """The status codes that count as healthy."""
        return self._expect

    @property
    def timeout(self) -> float:
        """Seconds the whole probe may take: connection, TLS, request and status line."""
        return self._timeout

    @property
    def scheme(self) -> str:
        """The scheme for servers written as ``host:port``; a URL server brings its own."""
        return self._scheme

    def _target(self, server: str) -> tuple[Address, str, str]:
        """The address, scheme and request path for ``server``."""
        address = parse_address(server)
        scheme = address.scheme or self._scheme
        if scheme not in _SCHEMES:
            raise ValueError(f"server must be an http or https URL for an HTTP probe: {server!r}")
        return address, scheme, address.join(self._path)

    def _ssl_context(self) -> ssl.SSLContext:
        # Built on first use: loading the CA store is slow and plain-HTTP probes never need it.
        # Two threads racing here each build one; either is fine.
        if self._context is None:
            self._context = ssl.create_default_context()
        return self._context

    def _judge(self, line: bytes) -> ProbeResult:
        """The result for the status line ``line`` (b"" if the server closed first)."""
        if not line:
            return ProbeResult(False, "connection closed before the status line")
        try:
            status = _status(line)
        except ValueError as exc:
            return ProbeResult(False, str(exc))
        return _HEALTHY if status in self._expect else ProbeResult(False, f"status {status}")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(path={self._path!r}, expect={self._expect!r}, "
            f"timeout={self._timeout!r}, scheme={self._scheme!r})"
        )


@final
class HttpProbe(_HttpSettings):
    """Healthy if ``GET path`` answers with a status in ``expect`` (2xx and 3xx by default).

    A minimal HTTP/1.1 exchange over a socket: it sends ``Connection: close``, reads the status
    line only, and follows no redirects. ``timeout`` is a deadline for the whole probe (name
    resolution aside, which cannot be interrupted; see ``TcpProbe``). Returns a
    ``ProbeResult`` (truthy when healthy) whose reason says why it is not, e.g. ``"status
    503"``. ``ssl_context`` is for ``https`` servers; by default,
    ``ssl.create_default_context()``.

    The URL probed: the server's host and port, and its own URL path (less a trailing ``/``)
    followed by ``path``; a ``host:port`` server is probed with ``scheme``. A URL without a
    port has its scheme's (80, 443); one with a query, a fragment or credentials is refused
    with ValueError. The ``Host`` header is the server's host, and its port unless the
    scheme's. With ``path="/healthz"``::

        10.0.0.1:8080               ->  http://10.0.0.1:8080/healthz
        http://10.0.0.1:8080        ->  http://10.0.0.1:8080/healthz
        http://10.0.0.1:8080/api    ->  http://10.0.0.1:8080/api/healthz
        http://10.0.0.1:8080/api/   ->  http://10.0.0.1:8080/api/healthz
        https://10.0.0.1:8443/api   ->  https://10.0.0.1:8443/api/healthz
    """

    __slots__ = ()

    def __call__(self, server: str) -> ProbeResult:
        """GET the health path of ``server``; healthy if the status is expected."""
        address, scheme, path = self._target(server)
        request = _request(address, scheme, path)
        deadline = time.monotonic() + self._timeout
        step = _CONNECTING
        try:
            sock = _connect(address, deadline)
            try:
                if scheme == "https":
                    step = _HANDSHAKE
                    sock = self._ssl_context().wrap_socket(
                        sock, server_hostname=address.host, do_handshake_on_connect=False
                    )
                    # Since 3.5 a socket timeout bounds a whole handshake or sendall, not
                    # each underlying read or write.
                    sock.settimeout(_remaining(deadline))
                    sock.do_handshake()
                step = _SENDING
                sock.settimeout(_remaining(deadline))
                sock.sendall(request)
                step = _READING
                line = _read_line(sock, deadline)
            finally:
                sock.close()  # no TLS close_notify: a check needs no graceful goodbye
        except OSError as exc:
            return _failure(exc, self._timeout, step)
        except _LineTooLongError:
            return _LINE_TOO_LONG
        return self._judge(line)


def _read_line(sock: socket.socket, deadline: float) -> bytes:
    """The first line ``sock`` delivers before ``deadline``: up to b"\\n", or all until EOF."""
    buffer = b""
    while b"\n" not in buffer:
        if len(buffer) >= _MAX_LINE:
            raise _LineTooLongError
        # Renewed before every read: a per-read timeout alone lets a trickle go on forever.
        sock.settimeout(_remaining(deadline))
        chunk = sock.recv(4096)
        if not chunk:
            return buffer
        buffer += chunk
    return buffer[: buffer.index(b"\n") + 1]


@final
class AsyncHttpProbe(_HttpSettings):
    """The asyncio twin of ``HttpProbe``: the same exchange over asyncio streams.

    It probes the same URL as ``HttpProbe`` for each server (see there). ``timeout`` bounds
    the whole exchange, name resolution included.
    """

    __slots__ = ()

    async def __call__(self, server: str) -> ProbeResult:
        """GET the health path of ``server``; healthy if the status is expected."""
        address, scheme, path = self._target(server)
        request = _request(address, scheme, path)
        context = self._ssl_context() if scheme == "https" else None
        step = _CONNECTING if context is None else _CONNECTING_TLS

        async def get() -> bytes:
            nonlocal step
            reader, writer = await asyncio.open_connection(
                address.host,
                address.port,
                ssl=context,
                server_hostname=address.host if context is not None else None,
            )
            try:
                step = _SENDING
                writer.write(request)
                await writer.drain()
                step = _READING
                try:
                    return await reader.readline()
                except ValueError:  # the line overran the stream's limit, 64 KiB as _MAX_LINE
                    raise _LineTooLongError from None
            finally:
                await _abort(writer)

        try:
            line = await asyncio.wait_for(get(), self._timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            return _failure(exc, self._timeout, step)
        except _LineTooLongError:
            return _LINE_TOO_LONG
        return self._judge(line)


def _request(address: Address, scheme: str, path: str) -> bytes:
    host = address.host
    if not host.isascii():
        host = host.encode("idna").decode("ascii")
    if ":" in host:
        host = f"[{host}]"
    if address.port != DEFAULT_PORTS[scheme]:
        host = f"{host}:{address.port}"
    return (
        f"GET {path} HTTP/1.1\r\n"
        f"Host: {host}\r\n"
        f"User-Agent: {_USER_AGENT}\r\n"
        "Accept: */*\r\n"
        "Connection: close\r\n"
        "\r\n"
    ).encode("ascii")


def _status(line: bytes) -> int:
    """The status code of an HTTP/1.x status line such as ``HTTP/1.1 200 OK``."""
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP status line: {line[:80]!r}")
    status = int(parts[1])
    if not 100 <= status <= 999 or len(parts[1]) != 3:
        raise ValueError(f"not an HTTP status code: {parts[1]!r}")
    return status
