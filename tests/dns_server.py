"""A real DNS server on 127.0.0.1 for the tests: dnslib's, over UDP and TCP on one random port.

The tests change its records while it runs (A, AAAA, SRV with or without the targets'
addresses in the additional section, TTLs, names that do not exist) and its mode (answer,
SERVFAIL, REFUSED, or drop queries unanswered), and read back the queries it got. ``with
DnsTestServer() as server:`` starts it; leaving the block stops both server threads and
joins them.
"""

from __future__ import annotations

import errno
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

from dnslib import (  # type: ignore[import-untyped]  # dnslib has no type hints
    AAAA,
    QTYPE,
    RCODE,
    RR,
    SOA,
    SRV,
    A,
    DNSError,
    DNSLabel,
    DNSRecord,
)
from dnslib.server import (  # type: ignore[import-untyped]
    BaseResolver,
    DNSHandler,
    DNSLogger,
    DNSServer,
)

Mode = Literal["answer", "servfail", "refused", "drop"]


@dataclass(frozen=True)
class Query:
    """One query the server received: when (monotonic), the name, the type, UDP or TCP."""

    at: float
    name: str
    qtype: str
    protocol: str


def _key(name: str) -> str:
    """Names compare without case and with the final dot."""
    name = name.lower()
    return name if name.endswith(".") else name + "."


class _DroppedError(DNSError):  # type: ignore[misc]  # dnslib is untyped
    """Raised in the handler to send nothing back (dnslib's handler drops on a DNSError)."""


class Zone(BaseResolver):  # type: ignore[misc]  # dnslib is untyped
    """The records, the mode and the query log; dnslib calls ``resolve`` for each query."""

    def __init__(self, negative_ttl: int = 30) -> None:
        self._cond = threading.Condition()
        self._records: dict[tuple[str, str], tuple[list[Any], int]] = {}
        self._names: set[str] = set()
        self.mode: Mode = "answer"
        self.additional = False
        self.rotate = False
        self.negative_ttl = negative_ttl
        self._rotation = 0
        self.queries: list[Query] = []

    # -- changed by the tests -----------------------------------------------------------------

    def set(self, name: str, qtype: str, rdatas: Iterable[Any], ttl: int) -> None:
        """Make ``name``'s ``qtype`` records ``rdatas`` (none: the name exists with no data)."""
        with self._cond:
            self._records[(_key(name), qtype)] = (list(rdatas), ttl)
            self._names.add(_key(name))

    def remove(self, name: str) -> None:
        """Make ``name`` not exist: its queries get NXDOMAIN."""
        with self._cond:
            key = _key(name)
            self._names.discard(key)
            for record in [k for k in self._records if k[0] == key]:
                del self._records[record]

    def set_mode(self, mode: Mode) -> None:
        """How queries are answered from now on."""
        with self._cond:
            self.mode = mode

    # -- read by the tests --------------------------------------------------------------------

    def count(self, name: str | None = None, qtype: str | None = None) -> int:
        """The queries received so far for ``name`` and ``qtype`` (None: any)."""
        with self._cond:
            return len(self._matching(name, qtype))

    def log(self, name: str | None = None, qtype: str | None = None) -> list[Query]:
        """The queries received so far for ``name`` and ``qtype``, oldest first."""
        with self._cond:
            return self._matching(name, qtype)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Wait until ``predicate()`` (checked on each query) is true; False after ``timeout``."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    def _matching(self, name: str | None, qtype: str | None) -> list[Query]:
        key = None if name is None else _key(name)
        return [
            q
            for q in self.queries
            if (key is None or q.name == key) and (qtype is None or q.qtype == qtype)
        ]

    # -- dnslib's side ------------------------------------------------------------------------

    def note(self, request: DNSRecord, protocol: str) -> Mode:
        """Log the query and return the mode it is answered in."""
        with self._cond:
            self.queries.append(
                Query(
                    time.monotonic(),
                    _key(str(request.q.qname)),
                    QTYPE[request.q.qtype],
                    protocol,
                )
            )
            self._cond.notify_all()
            return self.mode

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        """The reply to ``request``, from the records as they are now."""
        reply = request.reply()
        name = _key(str(request.q.qname))
        qtype = QTYPE[request.q.qtype]
        with self._cond:
            mode = self.mode
            exists = name in self._names
            rdatas, ttl = self._records.get((name, qtype), ([], 0))
            rdatas = list(rdatas)
            if self.rotate and rdatas:  # as round-robin DNS servers do
                self._rotation += 1
                shift = self._rotation % len(rdatas)
                rdatas = rdatas[shift:] + rdatas[:shift]
            extra: list[RR] = []
            if self.additional and qtype == "SRV":
                for rdata in rdatas:
                    target = _key(str(rdata.target))
                    for atype in ("A", "AAAA"):
                        addresses, attl = self._records.get((target, atype), ([], 0))
                        extra.extend(
                            RR(target, getattr(QTYPE, atype), rdata=a, ttl=attl) for a in addresses
                        )
        if mode == "servfail":
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        if mode == "refused":
            reply.header.rcode = RCODE.REFUSED
            return reply
        if not exists or not rdatas:
            if not exists:
                reply.header.rcode = RCODE.NXDOMAIN
            # The SOA in the authority section carries the negative-caching TTL (RFC 2308).
            soa = SOA("ns.test.", "hostmaster.test.", (1, 60, 60, 60, self.negative_ttl))
            reply.add_auth(RR(".", QTYPE.SOA, rdata=soa, ttl=self.negative_ttl))
            return reply
        for rdata in rdatas:
            reply.add_answer(RR(name, getattr(QTYPE, qtype), rdata=rdata, ttl=ttl))
        for rr in extra:
            reply.add_ar(rr)
        return reply


class _Handler(DNSHandler):  # type: ignore[misc]  # dnslib is untyped
    """dnslib's handler, logging each query, dropping it in ``drop`` mode, and truncating a
    UDP answer beyond 512 bytes with the question kept (dnslib's own truncation removes it,
    and a resolver then ignores the answer as not matching its query)."""

    udplen = 512

    def setup(self) -> None:
        if self.server.socket_type == socket.SOCK_STREAM:
            self.request.settimeout(2.0)  # a silent client must not hold the server's thread

    def get_reply(self, data: bytes) -> bytes:
        request = DNSRecord.parse(data)
        zone: Zone = self.server.resolver
        if zone.note(request, self.protocol) == "drop":
            raise _DroppedError("dropped")
        reply = zone.resolve(request, self)
        rdata: bytes = reply.pack()
        if self.protocol == "udp" and len(rdata) > self.udplen:
            truncated = request.reply()
            truncated.header.tc = 1
            rdata = truncated.pack()
        return rdata


class _UDPServer(socketserver.UDPServer):
    """One request at a time, in the server's thread: no thread per request to outlive it."""

    allow_reuse_address = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet: a client that went away is not the test's failure."""


class _TCPServer(socketserver.TCPServer):
    allow_reuse_address = True  # the port of a connection in TIME_WAIT can be bound again

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet: a client that went away is not the test's failure."""


def _quiet_logger() -> DNSLogger:
    return DNSLogger(logf=lambda _line: None)


class DnsTestServer:
    """The zone, served by dnslib over UDP and TCP on 127.0.0.1, one random port for both."""

    def __init__(self, negative_ttl: int = 30) -> None:
        self.zone = Zone(negative_ttl)
        self._servers: list[DNSServer] = []
        self._threads: list[threading.Thread] = []
        self.port = 0

    @property
    def nameserver(self) -> tuple[str, int]:
        """``("127.0.0.1", port)``."""
        return ("127.0.0.1", self.port)

    def start(self) -> DnsTestServer:
        """Bind UDP to a random port and TCP to the same one, and serve both in threads."""
        for _attempt in range(50):
            udp = DNSServer(
                self.zone,
                "127.0.0.1",
                0,
                logger=_quiet_logger(),
                handler=_Handler,
                server=_UDPServer,
            )
            port = udp.server.server_address[1]
            try:
                tcp = DNSServer(
                    self.zone,
                    "127.0.0.1",
                    port,
                    logger=_quiet_logger(),
                    handler=_Handler,
                    server=_TCPServer,
                )
            except OSError as exc:
                udp.server.server_close()
                if exc.errno != errno.EADDRINUSE:
                    raise
                continue  # the TCP port was taken: try another UDP port
            break
        else:  # pragma: no cover - a machine out of ports
            raise RuntimeError("no port free for both UDP and TCP")
        self.port = port
        self._servers = [udp, tcp]
        for server, kind in ((udp, "udp"), (tcp, "tcp")):
            thread = threading.Thread(
                target=server.server.serve_forever,
                kwargs={"poll_interval": 0.02},  # how soon shutdown() is noticed
                name=f"dns test server {kind} {port}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop serving, join both threads and close the sockets."""
        for server in self._servers:
            server.server.shutdown()
        for thread in self._threads:
            thread.join(5.0)
        for server in self._servers:
            server.server.server_close()
        self._servers, self._threads = [], []

    def __enter__(self) -> DnsTestServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the records, in the tests' terms -----------------------------------------------------

    def set_a(self, name: str, addresses: Iterable[str], ttl: int = 30) -> None:
        """``name``'s A records."""
        self.zone.set(name, "A", (A(a) for a in addresses), ttl)

    def set_aaaa(self, name: str, addresses: Iterable[str], ttl: int = 30) -> None:
        """``name``'s AAAA records."""
        self.zone.set(name, "AAAA", (AAAA(a) for a in addresses), ttl)

    def set_srv(
        self, name: str, records: Iterable[tuple[int, int, int, str]], ttl: int = 30
    ) -> None:
        """``name``'s SRV records, each ``(priority, weight, port, target)``."""
        self.zone.set(
            name,
            "SRV",
            (SRV(priority=p, weight=w, port=port, target=DNSLabel(t)) for p, w, port, t in records),
            ttl,
        )

    def remove(self, name: str) -> None:
        """Make ``name`` not exist (NXDOMAIN)."""
        self.zone.remove(name)

    def set_mode(self, mode: Mode) -> None:
        """Answer, SERVFAIL, REFUSED, or drop every query from now on."""
        self.zone.set_mode(mode)
