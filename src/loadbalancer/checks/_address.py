"""Where a probe connects: ``host:port``, ``[ipv6]:port`` or a URL, parsed once and cached."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache
from typing import final
from urllib.parse import urlsplit

__all__ = ["DEFAULT_PORTS", "Address", "parse_address"]

DEFAULT_PORTS = {"http": 80, "https": 443}

# Characters that never belong in a host name; rejecting them here also keeps CR/LF out of the
# request line and Host header the HTTP probes write.
_BAD_HOST_CHARS = frozenset(" \t\r\n/\\@?#[]%") | frozenset(map(chr, range(32))) | {"\x7f"}

_FORMS = "'host:port', '[ipv6]:port' or a URL such as 'http://host:port/path'"


@final
@dataclass(frozen=True, slots=True)
class Address:
    """A parsed server: the host and port to connect to, and for URLs the scheme and path."""

    host: str  # IPv6 addresses without brackets
    port: int
    scheme: str | None = None  # lower case; None for the host:port forms
    path: str = ""  # the URL's path, "" when there is none

    def join(self, path: str) -> str:
        """The request path: ``path`` appended to the URL's own path."""
        return self.path.rstrip("/") + path


def _error(server: str, why: str) -> ValueError:
    return ValueError(f"server must be {_FORMS}; {why}: {server!r}")


def _port(text: str, server: str) -> int:
    # isdigit alone accepts non-ASCII digits such as "²", which int() then rejects oddly.
    if not (text.isascii() and text.isdigit()):
        raise _error(server, "the port is not a number")
    port = int(text)
    if not 1 <= port <= 65535:
        raise _error(server, "the port is not in 1..65535")
    return port


def _check_path(path: str, server: str) -> str:
    if not path.isascii() or any(c <= " " or c == "\x7f" for c in path):
        raise _error(server, "the path must be ASCII (percent-encoded) without spaces")
    return path


def _parse_url(server: str) -> Address:
    parts = urlsplit(server)
    scheme = parts.scheme.lower()
    if not scheme or not parts.netloc:
        raise _error(server, "the URL has no scheme or host")
    if parts.username is not None or parts.password is not None:
        raise _error(server, "probes do not send credentials, so the URL may not carry them")
    if parts.query or parts.fragment:
        raise _error(server, "the URL may not have a query or fragment")
    host = parts.hostname
    if not host or _BAD_HOST_CHARS.intersection(host):
        raise _error(server, "the host is empty or malformed")
    try:
        explicit = parts.port
    except ValueError:  # urlsplit's own message does not say which server
        raise _error(server, "the port is not a number in 1..65535") from None
    if explicit is None and scheme not in DEFAULT_PORTS:
        raise _error(server, f"a {scheme!r} URL needs an explicit port")
    port = DEFAULT_PORTS[scheme] if explicit is None else explicit
    if not 1 <= port <= 65535:
        raise _error(server, "the port is not in 1..65535")
    return Address(host, port, scheme, _check_path(parts.path, server))


def parse_address(server: str) -> Address:
    """Parse ``server``; raise ValueError naming it if it is none of the accepted forms."""
    if not isinstance(server, str):
        raise TypeError(f"server must be a str, not {type(server).__name__}")
    return _parse(server)


# Probes parse the same few servers every round; failures are not cached, and need not be.
@lru_cache(maxsize=1024)
def _parse(server: str) -> Address:
    if "://" in server:
        return _parse_url(server)
    if server.startswith("["):
        host, bracket, rest = server[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise _error(server, "an IPv6 address needs a port after the bracket")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _error(server, "the bracketed host is not an IPv6 address") from None
        return Address(host, _port(rest[1:], server))
    host, colon, port = server.rpartition(":")
    if not colon:
        raise _error(server, "there is no port")
    if ":" in host:
        raise _error(server, "write IPv6 addresses in brackets")
    if not host or _BAD_HOST_CHARS.intersection(host):
        raise _error(server, "the host is empty or malformed")
    return Address(host, _port(port, server))
