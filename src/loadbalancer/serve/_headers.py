"""Header work for the proxy: what a request's head says about its framing and routing, the
head forwarded to the upstream, and the head sent back to the client.

Everything works on the raw ``(name, value)`` byte pairs llhttp hands over, in one pass per
head, with no regular expression: this runs once per request. llhttp (strict by default)
already refuses most framing attacks before these functions see a head (both Content-Length
and Transfer-Encoding, duplicate or invalid Content-Length, bare CR or LF, obs-fold,
whitespace before a colon, control characters, invalid chunk sizes); ``read_request`` adds
the checks it leaves to the application.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import final

from ._settings import Forwarding, Sticky

__all__ = [
    "HOP_BY_HOP",
    "SPECIAL_FIELDS",
    "BadRequestError",
    "RequestHead",
    "cookie_value",
    "error_response",
    "read_request",
    "reason",
    "request_head",
    "response_head",
    "sticky_key",
    "tokens",
    "valid_host",
]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)
"""Fields that describe one connection, never forwarded (RFC 9110 7.6.1); ``Upgrade`` is
put back for a tunnel, and the proxy frames each message itself."""

# Names the forwarding rules rewrite: dropped from the incoming head, then set by the proxy.
_FORWARDING = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded", b"via"}
)
SPECIAL_FIELDS = HOP_BY_HOP | _FORWARDING | {b"host", b"content-length", b"expect"}
"""The request fields ``read_request`` acts on; every other one is forwarded as it came."""
_REASONS = {
    100: b"Continue",
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    417: b"Expectation Failed",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}


@final
class BadRequestError(Exception):
    """A request refused before forwarding: the status to answer and the cause to name."""

    def __init__(self, status: int, cause: str) -> None:
        super().__init__(f"{status} {cause}")
        self.status = status
        self.cause = cause


@final
class RequestHead:
    """What one request's head says: the fields kept, its framing, routing and stickiness."""

    __slots__ = (
        "chunked",
        "close",
        "content_length",
        "expect_continue",
        "fields",
        "forwarded",
        "forwarded_proto",
        "has_host",
        "host",
        "host_port",
        "named",
        "special",
        "upgrade",
        "xff",
        "xfh",
    )

    def __init__(self) -> None:
        self.fields: list[bytes] = []  # "Name: value\r\n" lines kept for the upstream
        self.special: Sequence[tuple[bytes, bytes]] = ()  # the SPECIAL_FIELDS, lower-cased
        self.named: Sequence[bytes] = ()  # lines dropped as the Connection field names them
        self.host = ""  # lower-case, without the port
        self.host_port = b""  # the Host field as given
        self.has_host = False  # a Host field came (perhaps empty: RFC 9110 7.2 allows it)
        self.content_length: int | None = None
        self.chunked = False
        self.close = False  # the client asked to close after this request
        self.expect_continue = False
        self.upgrade: bytes | None = None  # the Upgrade field of a tunnel request
        self.xff: Sequence[bytes] = ()  # incoming X-Forwarded-For values, in order
        self.forwarded: Sequence[bytes] = ()  # incoming Forwarded values
        self.forwarded_proto: bytes | None = None
        self.xfh: bytes | None = None


def cookie_value(header: bytes, name: bytes) -> bytes | None:
    """The value of cookie ``name`` in a Cookie field (``a=1; b=2``), or None."""
    for part in header.split(b";"):
        key, eq, value = part.strip().partition(b"=")
        if eq and key == name:
            return value.strip().strip(b'"')
    return None


# RFC 3986 3.2.2 reg-name characters (unreserved, pct-encoded, sub-delims), and an IP literal's.
_REG_NAME = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~%!$&'()*+,;="
_IP_LITERAL = b"0123456789abcdefABCDEF:."
# Connection may name these, yet they are never dropped: the proxy needs them to route and
# frame the request (and sets the framing fields itself).
_NEVER_NAMED = frozenset({b"host", b"content-length", b"transfer-encoding"})


def valid_host(host: bytes) -> bool:
    """A Host value is ``uri-host [":" port]`` (RFC 9112 3.2): a reg-name, IPv4 or
    ``[IPv6]``, then an optional numeric port; nothing else is routed or forwarded."""
    if host.startswith(b"["):
        end = host.find(b"]")
        if end < 3 or host[1:end].translate(None, _IP_LITERAL):
            return False
        rest = host[end + 1 :]
        if not rest:
            return True
        if rest[:1] != b":":
            return False
        port = rest[1:]
    else:
        name, _, port = host.partition(b":")
        if name.translate(None, _REG_NAME):
            return False
    return not port or (port.isdigit() and len(port) <= 5)


def _host_name(host_port: bytes) -> str | None:
    """The name a Host value routes by (lower-case, without the port), or None if it is not
    a valid one."""
    host = host_port.strip()
    if not valid_host(host):
        return None
    if host.startswith(b"["):
        return host[: host.find(b"]") + 1].decode("latin-1").lower()
    return host.partition(b":")[0].decode("latin-1").lower()


# A proxy sees the same few hosts again and again. Only names of a DNS name's length are
# cached, so that the cache holds at most 256 x 255 bytes of what clients send.
_known_host_name = functools.lru_cache(maxsize=256)(_host_name)


def tokens(value: bytes) -> list[bytes]:
    """The lower-cased tokens of a comma-separated field value (Connection, Transfer-Encoding)."""
    return [t.strip().lower() for t in value.split(b",") if t.strip()]


def read_request(
    kept: list[bytes], special: Sequence[tuple[bytes, bytes]], http11: bool
) -> RequestHead:
    """Read a request's head from its fields: ``kept``, the lines forwarded as they came, and
    ``special``, the ``SPECIAL_FIELDS`` as (lower-case name, value), in order (llhttp already
    checked their syntax). Raise ``BadRequestError`` for what llhttp lets through that no
    proxy may forward."""
    head = RequestHead()
    head.fields = kept
    head.special = special
    connection: list[bytes] | None = None
    upgrade: bytes | None = None
    hosts = 0
    for lower, value in special:
        if lower == b"host":  # the one nearly every request has, first
            hosts += 1
            head.host_port = value
            head.has_host = True
            kept.insert(0, b"Host: %s\r\n" % value)  # first, as RFC 9110 7.2 would have it
        elif lower in HOP_BY_HOP:
            if lower == b"connection":
                connection = [*(connection or ()), *tokens(value)]
            elif lower == b"transfer-encoding":
                # llhttp accepts a final coding of chunked after others (``gzip, chunked``);
                # re-framing would then drop the inner coding, so only plain chunked passes.
                if head.chunked or tokens(value) != [b"chunked"]:
                    raise BadRequestError(400, "bad_transfer_encoding")
                head.chunked = True
            elif lower == b"upgrade":
                upgrade = value
        elif lower in _FORWARDING:
            if lower == b"x-forwarded-for":
                head.xff = [*head.xff, value]
            elif lower == b"forwarded":
                head.forwarded = [*head.forwarded, value]
            elif lower == b"x-forwarded-proto":
                head.forwarded_proto = value
            elif lower == b"x-forwarded-host":
                head.xfh = value
            # Via: the incoming chain is dropped, ours added if configured
        elif lower == b"content-length":
            head.content_length = int(value)  # llhttp checked: digits only, never twice
        elif lower == b"expect" and http11:  # RFC 9110 10.1.1: HTTP/1.0's is ignored
            if value.strip().lower() != b"100-continue":
                raise BadRequestError(417, "bad_expect")
            head.expect_continue = True  # answered by the proxy (nginx's way), never forwarded
    if hosts > 1 or (http11 and hosts == 0):
        raise BadRequestError(400, "bad_host")  # RFC 9112 3.2: exactly one Host in HTTP/1.1
    if head.chunked and not http11:
        raise BadRequestError(400, "bad_transfer_encoding")  # RFC 9112 6.1
    host_port = head.host_port
    routed = _known_host_name(host_port) if len(host_port) <= 255 else _host_name(host_port)
    if routed is None:
        raise BadRequestError(400, "bad_host")
    head.host = routed
    for token in connection or ():
        if token == b"close":
            head.close = True
        elif token == b"upgrade":
            head.upgrade = upgrade
        elif token != b"keep-alive" and token not in _NEVER_NAMED:
            # A field the Connection header names is hop-by-hop too: drop it.
            drop = token + b":"
            named = [f for f in kept if f[: len(drop)].lower() == drop]
            if named:  # kept aside for a sticky key, never forwarded
                head.fields = kept = [f for f in kept if f[: len(drop)].lower() != drop]
                head.named = [*head.named, *named]
    if not http11 and (connection is None or b"keep-alive" not in connection):
        head.close = True
    if head.upgrade is not None and (head.chunked or head.content_length):
        # Proxy and server could frame what follows the head differently (a body, or the
        # new protocol's first bytes): refused, the connection closed.
        raise BadRequestError(400, "upgrade_with_body")
    return head


def sticky_key(head: RequestHead, sticky: Sticky) -> str | None:
    """A request's sticky key: its ``sticky.header``, else its ``sticky.cookie``, else None."""
    header = None if sticky.header is None else sticky.header.lower().encode()
    cookie = None if sticky.cookie is None else sticky.cookie.encode()
    lines = (*head.fields, *head.named) if head.named else head.fields
    if header is not None:
        for lower, value in head.special:
            if lower == header and value:
                return value.decode("latin-1")
        prefix = header + b":"
        for line in lines:
            if line[: len(prefix)].lower() == prefix:
                value = line[len(prefix) : -2].strip()
                if value:
                    return value.decode("latin-1")
    if cookie is not None:
        for line in lines:
            if line[:7].lower() == b"cookie:":
                found = cookie_value(line[7:-2], cookie)
                if found:
                    return found.decode("latin-1")
    return None


def _forwarded_for(address: str) -> bytes:
    if ":" in address:
        return b'"[%s]"' % address.encode()  # RFC 7239 6: an IPv6 node is quoted, bracketed
    return address.encode()


def request_head(
    method: bytes,
    target: bytes,
    head: RequestHead,
    peer: str,
    forwarding: Forwarding,
    body: bool,
    default_host: bytes = b"",
) -> bytes:
    """The head sent to the upstream: the kept fields, the forwarding ones, the framing.
    ``default_host`` is the Host of a request that had none (HTTP/1.0), as HTTP/1.1 needs
    one (nginx sends its upstream group's name; this sends the pool's)."""
    hops = forwarding.trusted_hops
    host = head.host_port
    if forwarding.style == "x-forwarded":
        if hops:
            chain = [peer.encode()]
            if head.xff:
                incoming = [a.strip() for v in head.xff for a in v.split(b",") if a.strip()]
                chain = incoming[-hops:] + chain
            proto = b"http" if head.forwarded_proto is None else head.forwarded_proto
            if head.xfh is not None:
                host = head.xfh
            forwarded = b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\n" % (
                b", ".join(chain),
                proto,
            )
        else:  # the usual case: nothing incoming believed
            forwarded = b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: http\r\n" % peer.encode()
        if host:
            forwarded += b"X-Forwarded-Host: %s\r\n" % host
    else:
        elements: list[bytes] = []
        if hops and head.forwarded:
            elements = [e.strip() for v in head.forwarded for e in v.split(b",") if e.strip()]
            elements = elements[-hops:]
        ours = b"for=%s;proto=http" % _forwarded_for(peer)
        if host:
            ours += b';host="%s"' % host.replace(b'"', b"")
        elements.append(ours)
        forwarded = b"Forwarded: %s\r\n" % b", ".join(elements)
    if not head.has_host and default_host:
        forwarded = b"Host: %s\r\n%s" % (default_host, forwarded)
    if forwarding.via:
        forwarded += b"Via: 1.1 %s\r\n" % forwarding.via_name.encode()
    if head.chunked:
        framing = b"Transfer-Encoding: chunked\r\n"
    elif head.content_length is not None:
        framing = b"Content-Length: %d\r\n" % head.content_length
    else:
        framing = b"Content-Length: 0\r\n" if body else b""
    if head.upgrade is not None:
        framing = b"Connection: upgrade\r\nUpgrade: %s\r\n%s" % (head.upgrade, framing)
    return b"%s %s HTTP/1.1\r\n%s%s%s\r\n" % (
        method,
        target,
        b"".join(head.fields),
        forwarded,
        framing,
    )


def response_head(
    status: int,
    reason: bytes,
    lines: Sequence[bytes],
    *,
    length: int | None,
    chunked: bool,
    close: bool,
    tunnel: bool,
    upgrade: bytes | None = None,
    keep_alive: bool = False,
) -> bytes:
    """The head sent to the client: the upstream's status and end-to-end field ``lines``
    (as the upstream connection gathered them), framed by the proxy (``length``, else
    ``chunked``, else until close); a tunnel's, with its ``upgrade``."""
    if tunnel:
        framing = b"Connection: upgrade\r\n"
        if upgrade is not None:
            framing += b"Upgrade: %s\r\n" % upgrade
    else:
        framing = (
            b"Content-Length: %d\r\n" % length
            if length is not None
            else (b"Transfer-Encoding: chunked\r\n" if chunked else b"")
        )
        if close:
            framing += b"Connection: close\r\n"
        elif keep_alive:  # an HTTP/1.0 client that asked for it is told it has it
            framing += b"Connection: keep-alive\r\n"
    return b"HTTP/1.1 %d %s\r\n%s%s\r\n" % (status, reason, b"".join(lines), framing)


def error_response(
    status: int, cause: str, *, close: bool, head_only: bool = False, keep_alive: bool = False
) -> bytes:
    """A response the proxy makes itself, named by ``X-Loadbalancer-Error``; ``keep_alive``
    says so to an HTTP/1.0 client that asked for it."""
    body = b"%d %s: %s\n" % (status, _REASONS.get(status, b"Error"), cause.encode())
    head = (
        b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
        b"X-Loadbalancer-Error: %s\r\n%s\r\n"
        % (
            status,
            _REASONS.get(status, b"Error"),
            len(body),
            cause.encode(),
            b"Connection: close\r\n"
            if close
            else (b"Connection: keep-alive\r\n" if keep_alive else b""),
        )
    )
    return head if head_only else head + body


def reason(status: int) -> bytes:
    """The reason phrase the proxy uses for ``status``."""
    return _REASONS.get(status, b"")
