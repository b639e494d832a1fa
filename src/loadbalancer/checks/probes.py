"""Built-in probes: TCP connect and HTTP GET, blocking and asyncio, standard library only.

A probe is any callable ``server -> bool`` (or ``async`` for ``AsyncHealthChecker``) that
returns True when the server is healthy. The built-in ones accept servers written as
``host:port``, ``[ipv6]:port`` or URLs (``http://host:port/base``), return False when the
server cannot be reached or answers wrongly (the reason is logged at DEBUG on
``loadbalancer.health``), and raise ValueError for a server they cannot parse.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import socket
import ssl
from collections.abc import Collection
from typing import final

from ._address import DEFAULT_PORTS, Address, parse_address
from ._core import check_seconds, logger

__all__ = ["AsyncHttpProbe", "AsyncTcpProbe", "HttpProbe", "TcpProbe"]

_USER_AGENT = "loadbalancer-health/0.1"
_SCHEMES = ("http", "https")


# -- TCP ------------------------------------------------------------------------------------


class _TcpSettings:
    __slots__ = ("_timeout",)

    def __init__(self, timeout: float = 1.0) -> None:
        self._timeout = check_seconds(timeout, "timeout")

    @property
    def timeout(self) -> float:
        """Seconds allowed for the connection to open."""
        return self._timeout

    def __repr__(self) -> str:
        return f"{type(self).__name__}(timeout={self._timeout!r})"


@final
class TcpProbe(_TcpSettings):
    """Healthy if a TCP connection to the server opens within ``timeout`` seconds.

    Name resolution happens before the timer starts and the standard resolver cannot be
    interrupted; use IP addresses where a slow DNS server must not stretch a probe.
    """

    __slots__ = ()

    def __call__(self, server: str) -> bool:
        """Connect to ``server`` and close at once; True if the connection opened."""
        address = parse_address(server)
        try:
            sock = socket.create_connection((address.host, address.port), self._timeout)
        except OSError as exc:
            logger.debug("TCP probe of %s failed: %r", server, exc)
            return False
        sock.close()
        return True


@final
class AsyncTcpProbe(_TcpSettings):
    """The asyncio twin of ``TcpProbe``; ``timeout`` covers name resolution too."""

    __slots__ = ()

    async def __call__(self, server: str) -> bool:
        """Connect to ``server`` and close at once; True if the connection opened."""
        address = parse_address(server)
        try:
            return await asyncio.wait_for(self._connect(address), self._timeout)
        except (OSError, asyncio.TimeoutError) as exc:  # distinct types before 3.11
            logger.debug("TCP probe of %s failed: %r", server, exc)
            return False

    @staticmethod
    async def _connect(address: Address) -> bool:
        # Open and close inside one coroutine, so a timeout that lands just as the connection
        # opens still closes it.
        _, writer = await asyncio.open_connection(address.host, address.port)
        await _abort(writer)
        return True


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
        """Seconds allowed for the connection and for each read (the whole exchange, async)."""
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

    def _judge(self, server: str, status: int) -> bool:
        if status in self._expect:
            return True
        logger.debug("HTTP probe of %s failed: status %d", server, status)
        return False

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(path={self._path!r}, expect={self._expect!r}, "
            f"timeout={self._timeout!r}, scheme={self._scheme!r})"
        )


@final
class HttpProbe(_HttpSettings):
    """Healthy if ``GET path`` answers with a status in ``expect`` (2xx and 3xx by default).

    Uses ``http.client``; redirects are not followed. ``timeout`` bounds the connection and
    each read, so a server trickling its headers can stretch one probe (the checker counts it
    a failure at its own timeout all the same). ``ssl_context`` is for ``https`` servers; by
    default, ``ssl.create_default_context()``.
    """

    __slots__ = ()

    def __call__(self, server: str) -> bool:
        """GET the health path of ``server``; True if the status is expected."""
        address, scheme, path = self._target(server)
        connection = (
            http.client.HTTPSConnection(
                address.host, address.port, timeout=self._timeout, context=self._ssl_context()
            )
            if scheme == "https"
            else http.client.HTTPConnection(address.host, address.port, timeout=self._timeout)
        )
        try:
            connection.request(
                "GET", path, headers={"Connection": "close", "User-Agent": _USER_AGENT}
            )
            response = connection.getresponse()
            status = response.status
            response.close()  # the body does not matter
        except (OSError, http.client.HTTPException) as exc:
            logger.debug("HTTP probe of %s failed: %r", server, exc)
            return False
        finally:
            connection.close()
        return self._judge(server, status)


@final
class AsyncHttpProbe(_HttpSettings):
    """The asyncio twin of ``HttpProbe``: a minimal HTTP/1.1 GET over asyncio streams.

    It sends ``Connection: close``, reads the status line only, and ``timeout`` bounds the
    whole exchange, name resolution included.
    """

    __slots__ = ()

    async def __call__(self, server: str) -> bool:
        """GET the health path of ``server``; True if the status is expected."""
        address, scheme, path = self._target(server)
        try:
            status = await asyncio.wait_for(self._get(address, scheme, path), self._timeout)
        except (OSError, asyncio.TimeoutError, ValueError) as exc:
            # ValueError: a status line that is not one, or longer than the stream's limit.
            logger.debug("HTTP probe of %s failed: %r", server, exc)
            return False
        return self._judge(server, status)

    async def _get(self, address: Address, scheme: str, path: str) -> int:
        context = self._ssl_context() if scheme == "https" else None
        reader, writer = await asyncio.open_connection(
            address.host,
            address.port,
            ssl=context,
            server_hostname=address.host if context is not None else None,
        )
        try:
            writer.write(_request(address, scheme, path))
            await writer.drain()
            line = await reader.readline()
        finally:
            await _abort(writer)
        return _status(line)


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
