"""Membership from DNS: a name's A/AAAA records, or a service's SRV records, re-read at their TTL.

Needs dnspython (``pip install 'loadbalancer[dns]'``); ``loadbalancer.discovery`` imports this
module only when ``DnsSource`` is first used.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, final
from urllib.parse import parse_qsl, urlsplit

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdataclass
import dns.rdatatype
import dns.resolver

from .._validation import MAX_WEIGHT, check_number
from ._source import Membership, Source

__all__ = ["DnsLookupError", "DnsSource"]

log = logging.getLogger("loadbalancer.discovery")

Family = Literal["any", "ipv4", "ipv6"]
NxdomainPolicy = Literal["fail", "empty"]

_FAMILIES: dict[str, tuple[dns.rdatatype.RdataType, ...]] = {
    "any": (dns.rdatatype.A, dns.rdatatype.AAAA),
    "ipv4": (dns.rdatatype.A,),
    "ipv6": (dns.rdatatype.AAAA,),
}

# The EDNS payload size of DNS Flag Day 2020: large enough for a few dozen addresses in one
# UDP answer, small enough not to be fragmented; a larger answer comes truncated and dnspython
# asks again over TCP.
_EDNS_PAYLOAD = 1232


class DnsLookupError(Exception):
    """A DNS lookup that failed (timeout, SERVFAIL, no nameserver answered, or NXDOMAIN when
    that is not taken as an empty pool): the message names the query and the reason."""


@final
@dataclass(frozen=True, slots=True)
class _Lookup:
    """One record set's outcome: its records (empty for NXDOMAIN / no data) and its TTL."""

    records: tuple[Any, ...]
    ttl: float
    nxdomain: bool
    response: dns.message.Message | None = None


def _server(address: str, port: int) -> str:
    """``10.0.0.1:8080``, ``[2001:db8::1]:8080``: the form a balancer's servers take."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _address_key(address: str) -> tuple[int, int]:
    """Sort IPv4 before IPv6, each numerically: DNS servers rotate the order of records."""
    ip = ipaddress.ip_address(address)
    return ip.version, int(ip)


def _check_port(value: object, name: str = "port") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not 1 <= value <= 65535:
        raise ValueError(f"{name} must be in 1..65535, got {value}")
    return value


def _check_name(value: object, what: str = "name") -> dns.name.Name:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    if not value.strip(".") or value != value.strip():
        raise ValueError(f"{what} must be a DNS name, got {value!r}")
    try:
        return dns.name.from_text(value, origin=None)
    except dns.exception.DNSException as exc:
        raise ValueError(f"{what} is not a valid DNS name: {value!r}: {exc}") from None


def _parse_nameserver(value: object) -> tuple[str, int]:
    """A nameserver as ``(ip, port)``: from ``("127.0.0.1", 5353)``, ``"127.0.0.1:5353"``,
    ``"[::1]:5353"``, or an address alone (port 53)."""
    if isinstance(value, tuple):
        if len(value) != 2:
            raise ValueError(f"nameservers: a tuple must be (address, port), got {value!r}")
        host, port = value
        if not isinstance(host, str):
            raise TypeError(f"nameservers: the address must be a str, not {type(host).__name__}")
        _check_port(port, "nameservers: the port")
    elif isinstance(value, str):
        text = value.strip()
        host, port = text, 53
        if text.startswith("["):
            end = text.find("]")
            if end < 0:
                raise ValueError(f"nameservers: {value!r} has an unclosed '['")
            host, rest = text[1:end], text[end + 1 :]
            if rest:
                if not rest.startswith(":") or not rest[1:].isdigit():
                    raise ValueError(f"nameservers: bad port in {value!r}")
                port = _check_port(int(rest[1:]), "nameservers: the port")
        elif text.count(":") == 1:
            host, _, digits = text.partition(":")
            if not digits.isdigit():
                raise ValueError(f"nameservers: bad port in {value!r}")
            port = _check_port(int(digits), "nameservers: the port")
    else:
        raise TypeError(
            f"nameservers must hold 'address[:port]' strings or (address, port) tuples, "
            f"not {type(value).__name__}"
        )
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        # dnspython's nameservers are addresses: resolving a nameserver's name would need DNS.
        raise ValueError(f"nameservers: {host!r} is not an IP address") from None
    return str(ip), port


def _negative_ttl(exc: dns.resolver.NXDOMAIN) -> float | None:
    """The NXDOMAIN's negative-caching TTL (the SOA's, RFC 2308), if the answer has one."""
    ttls = []
    for response in exc.responses().values():  # type: ignore[no-untyped-call]  # untyped in dnspython
        try:
            if isinstance(response, dns.message.QueryMessage):
                ttls.append(response.resolve_chaining().minimum_ttl)
        except dns.exception.DNSException:
            continue
    return min(ttls) if ttls else None


@final
class DnsSource(Source):
    """Servers from DNS, re-read when the records' TTL runs out.

    Two kinds. ``DnsSource("inventory.ns.svc.cluster.local", port=8080)`` reads the name's A
    and AAAA records (a Kubernetes headless service: one record per ready pod); each address
    is a server of weight 1, ``10.0.0.1:8080`` or ``[2001:db8::1]:8080``.
    ``DnsSource("_http._tcp.inventory.svc", srv=True)`` reads SRV records (RFC 2782): only the
    best (lowest) priority level is used, the next one only when no target of the best
    resolves; each record's target is resolved to its addresses (from the answer's additional
    section when the server sent any for it, else by asking), and each ``address:port`` is a
    server. Servers are named by address, not by the target's host name: the balancer then
    holds the endpoints it will connect to, a target whose addresses change is a membership
    change (the new pod gets fresh health and load state instead of inheriting the old one's),
    a target with several addresses gives several servers each picked and checked on its own,
    and no second lookup at connect time can see a different answer. The target, priority
    and SRV weight are in each server's metadata. The SRV weight becomes the server's weight,
    split evenly among a target's addresses so that the target keeps its share; a weight of
    0 ("a very small chance of being selected", RFC 2782) becomes ``zero_weight`` (0.01 by
    default), since a balancer's weights must be positive; equal weights of 0 stay equal.
    The same ``address:port`` under two records gets the sum of their weights. Records whose
    target is ``.`` ("decidedly not available") are ignored.

    ``family`` picks the records: ``"any"`` (A and AAAA), ``"ipv4"`` or ``"ipv6"``. The
    records are read again after their TTL (the smallest of those used), clamped to
    ``[min_ttl, max_ttl]`` seconds: the floor keeps a TTL of 0 from polling in a loop, the
    ceiling bounds how long a removed server stays. A membership is yielded at the start,
    then only when it changed. ``nameservers`` (``[("127.0.0.1", 5353)]``, ``"10.0.0.2:53"``,
    ``"[::1]:5353"``) replaces the system resolver's (``/etc/resolv.conf``, search domains
    included); ``timeout`` bounds each lookup, all nameservers and retries included, each
    nameserver getting an equal share of it per try.

    A failed lookup (timeout, SERVFAIL, no nameserver answering) raises ``DnsLookupError``
    from ``watch()``, so the runner keeps the last membership and retries. NXDOMAIN, or an
    answer with no records, is an empty pool with ``nxdomain="empty"``; with ``"fail"`` (the
    default) it is a failure too, since a name that vanishes is more often a broken zone or
    a typo than a service scaled to zero. ``sleep`` is injectable for tests.
    """

    __slots__ = (
        "_family",
        "_max_ttl",
        "_min_ttl",
        "_name",
        "_nameservers",
        "_nxdomain",
        "_port",
        "_qname",
        "_sleep",
        "_srv",
        "_timeout",
        "_zero_weight",
    )

    def __init__(
        self,
        name: str,
        *,
        port: int | None = None,
        srv: bool = False,
        family: Family = "any",
        nameservers: Iterable[str | tuple[str, int]] | None = None,
        timeout: float = 2.0,
        min_ttl: float = 1.0,
        max_ttl: float = 300.0,
        nxdomain: NxdomainPolicy = "fail",
        zero_weight: float = 0.01,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self._qname = _check_name(name)
        self._name = name
        if not isinstance(srv, bool):
            raise TypeError(f"srv must be a bool, not {type(srv).__name__}")
        self._srv = srv
        if srv:
            if port is not None:
                raise ValueError("port must not be given with srv=True: SRV records carry ports")
            self._port = 0
        else:
            if port is None:
                raise ValueError("port is required for A/AAAA records (or pass srv=True)")
            self._port = _check_port(port)
        if family not in _FAMILIES:
            raise ValueError(f"family must be 'any', 'ipv4' or 'ipv6', got {family!r}")
        self._family: Family = family
        if nameservers is None:
            self._nameservers: tuple[tuple[str, int], ...] | None = None
        else:
            if isinstance(nameservers, (str, bytes)) or not isinstance(nameservers, Iterable):
                raise TypeError(
                    "nameservers must be a list of 'address[:port]' or (address, port), "
                    f"not {type(nameservers).__name__}"
                )
            self._nameservers = tuple(_parse_nameserver(n) for n in nameservers)
            if not self._nameservers:
                raise ValueError("nameservers must not be empty (None uses the system's)")
        self._timeout = check_number(timeout, "timeout", above=0)
        self._min_ttl = check_number(min_ttl, "min_ttl", above=0)
        self._max_ttl = check_number(max_ttl, "max_ttl", at_least=self._min_ttl)
        if nxdomain not in ("fail", "empty"):
            raise ValueError(f"nxdomain must be 'fail' or 'empty', got {nxdomain!r}")
        self._nxdomain: NxdomainPolicy = nxdomain
        self._zero_weight = check_number(zero_weight, "zero_weight", above=0, at_most=MAX_WEIGHT)
        if not callable(sleep):
            raise TypeError(f"sleep must be callable, not {type(sleep).__name__}")
        self._sleep = sleep

    @classmethod
    def from_url(cls, url: str) -> DnsSource:
        """A source from ``dns://NAME:PORT`` or ``dns+srv://NAME``, with optional query fields
        ``nameserver`` (repeatable, ``ADDRESS[:PORT]``), ``timeout``, ``min_ttl``,
        ``max_ttl``, ``nxdomain`` (``fail``/``empty``) and ``family`` (``any``/``ipv4``/
        ``ipv6``); a bad URL raises ``ValueError`` naming the part that is wrong."""
        if not isinstance(url, str):
            raise TypeError(f"url must be a str, not {type(url).__name__}")
        try:
            parts = urlsplit(url.strip())
        except ValueError as exc:
            raise ValueError(f"url {url!r} cannot be parsed: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme not in ("dns", "dns+srv"):
            raise ValueError(
                f"url scheme must be 'dns' or 'dns+srv', got {parts.scheme or 'none'!r} in {url!r}"
            )
        if parts.username is not None or parts.password is not None:
            raise ValueError(f"url must not hold a user or password: {url!r}")
        if parts.path not in ("", "/"):
            raise ValueError(f"url path must be empty, got {parts.path!r} in {url!r}")
        if parts.fragment:
            raise ValueError(f"url fragment must be empty, got {parts.fragment!r} in {url!r}")
        netloc = parts.netloc
        host, sep, port_text = netloc.rpartition(":") if ":" in netloc else (netloc, "", "")
        if not host:
            raise ValueError(f"url host (the DNS name) is missing in {url!r}")
        kwargs: dict[str, Any] = {}
        if scheme == "dns":
            if not sep or not port_text:
                raise ValueError(f"url port is required for dns:// (dns://NAME:PORT): {url!r}")
            if not port_text.isdigit():
                raise ValueError(f"url port must be a number, got {port_text!r} in {url!r}")
            kwargs["port"] = int(port_text)
        else:
            if sep:
                raise ValueError(
                    f"url port must not be given for dns+srv:// (SRV records carry ports): {url!r}"
                )
            kwargs["srv"] = True
        nameservers: list[str] = []
        try:
            fields = parse_qsl(
                parts.query, keep_blank_values=True, strict_parsing=bool(parts.query)
            )
        except ValueError:
            raise ValueError(f"url query cannot be parsed: {parts.query!r} in {url!r}") from None
        for key, value in fields:
            if key == "nameserver":
                nameservers.append(value)
            elif key in ("timeout", "min_ttl", "max_ttl"):
                if key in kwargs:
                    raise ValueError(f"url query field {key!r} is given twice in {url!r}")
                try:
                    kwargs[key] = float(value)
                except ValueError:
                    raise ValueError(
                        f"url query field {key!r} must be a number, got {value!r}"
                    ) from None
            elif key in ("nxdomain", "family"):
                if key in kwargs:
                    raise ValueError(f"url query field {key!r} is given twice in {url!r}")
                kwargs[key] = value
            else:
                raise ValueError(f"url query field {key!r} is not known in {url!r}")
        if nameservers:
            kwargs["nameservers"] = nameservers
        try:
            return cls(host, **kwargs)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"url {url!r}: {exc}") from None

    @property
    def name(self) -> str:
        """``dns://NAME:PORT`` or ``dns+srv://NAME``, with the non-default settings as a query
        (``from_url`` reads it back)."""
        base = f"dns+srv://{self._name}" if self._srv else f"dns://{self._name}:{self._port}"
        query = [f"nameserver={_server(h, p)}" for h, p in self._nameservers or ()]
        if self._family != "any":
            query.append(f"family={self._family}")
        if self._nxdomain != "fail":
            query.append(f"nxdomain={self._nxdomain}")
        return base + ("?" + "&".join(query) if query else "")

    def _resolver(self) -> dns.asyncresolver.Resolver:
        try:
            # A fresh resolver for each watch(): resolv.conf is read again after an outage.
            resolver = dns.asyncresolver.Resolver(configure=self._nameservers is None)
        except dns.exception.DNSException as exc:
            raise DnsLookupError(f"{self.name}: no system resolver: {exc}") from exc
        if self._nameservers is not None:
            resolver.nameservers = [
                dns.nameserver.Do53Nameserver(host, port) for host, port in self._nameservers
            ]
        resolver.cache = None  # refreshing at the TTL is this source's job; a cache would lag it
        # timeout bounds the whole lookup; each nameserver gets an equal share of it per try,
        # so that one that is down cannot spend all of it before the next one is asked.
        resolver.lifetime = self._timeout
        resolver.timeout = self._timeout / max(len(resolver.nameservers), 1)
        resolver.use_edns(0, 0, _EDNS_PAYLOAD)
        return resolver

    async def _lookup(
        self,
        resolver: dns.asyncresolver.Resolver,
        qname: dns.name.Name,
        rdtype: dns.rdatatype.RdataType,
    ) -> _Lookup:
        what = f"{qname.to_text(omit_final_dot=True)} {dns.rdatatype.to_text(rdtype)}"
        try:
            answer = await resolver.resolve(
                qname,
                rdtype,
                raise_on_no_answer=False,
                search=True,
                lifetime=self._timeout,
            )
        except dns.resolver.NXDOMAIN as exc:
            ttl = _negative_ttl(exc)
            return _Lookup((), self._min_ttl if ttl is None else float(ttl), nxdomain=True)
        except dns.exception.Timeout as exc:
            raise DnsLookupError(f"{what}: no answer within {self._timeout:g} s: {exc}") from exc
        except dns.resolver.NoNameservers as exc:
            # SERVFAIL, REFUSED, or a nameserver that cannot be reached, from every one of them.
            raise DnsLookupError(f"{what}: no nameserver answered: {exc}") from exc
        except (dns.exception.DNSException, OSError) as exc:
            raise DnsLookupError(f"{what}: {type(exc).__name__}: {exc}") from exc
        rrset = answer.rrset
        records = tuple(rrset) if rrset is not None else ()
        ttl = float(answer.chaining_result.minimum_ttl)
        return _Lookup(records, ttl, nxdomain=False, response=answer.response)

    async def _addresses(
        self, resolver: dns.asyncresolver.Resolver, qname: dns.name.Name
    ) -> tuple[list[str], list[float], list[float], bool]:
        """The name's addresses, the TTLs of the record sets found and of those not found,
        and whether the name does not exist (NXDOMAIN)."""
        addresses: list[str] = []
        positive: list[float] = []
        negative: list[float] = []
        nxdomain = False
        # One after the other, not gathered: a cancelled watch() then has one query to drop.
        for rdtype in _FAMILIES[self._family]:
            found = await self._lookup(resolver, qname, rdtype)
            if found.records:
                addresses.extend(r.address for r in found.records)
                positive.append(found.ttl)
            else:
                negative.append(found.ttl)
                nxdomain = nxdomain or found.nxdomain
        return addresses, positive, negative, nxdomain

    def _empty(self, why: str) -> Membership:
        if self._nxdomain == "empty":
            return Membership({})
        raise DnsLookupError(
            f"{self.name}: {why}; taken as a failure (nxdomain='empty' makes it an empty pool)"
        )

    async def _read_addresses(
        self, resolver: dns.asyncresolver.Resolver
    ) -> tuple[Membership, float]:
        addresses, positive, negative, nxdomain = await self._addresses(resolver, self._qname)
        if not addresses:
            why = "NXDOMAIN" if nxdomain else "no address records"
            return self._empty(why), min(negative)
        unique = sorted(set(addresses), key=_address_key)
        return Membership([_server(a, self._port) for a in unique]), min(positive)

    async def _read_srv(self, resolver: dns.asyncresolver.Resolver) -> tuple[Membership, float]:
        srv = await self._lookup(resolver, self._qname, dns.rdatatype.SRV)
        ttls = [srv.ttl]
        records = [r for r in srv.records if r.target != dns.name.root]
        if not records:
            why = "NXDOMAIN" if srv.nxdomain else "no SRV records (or only '.' targets)"
            return self._empty(why), srv.ttl
        extra = self._additional(srv)
        resolved: dict[dns.name.Name, list[str]] = {}
        negative: list[float] = []
        for priority in sorted({r.priority for r in records}):
            level = sorted(
                (r for r in records if r.priority == priority),
                key=lambda r: (r.target.to_text(), r.port, r.weight),
            )
            weights: dict[tuple[str, int], float] = {}
            metadata: dict[str, dict[str, Any]] = {}
            for record in level:
                target = record.target
                if target not in resolved:
                    if target in extra:
                        addresses, target_ttls = extra[target]
                        ttls.extend(target_ttls)
                    else:
                        addresses, found_ttls, missing_ttls, _ = await self._addresses(
                            resolver, target
                        )
                        ttls.extend(found_ttls)
                        negative.extend(missing_ttls)
                    resolved[target] = sorted(set(addresses), key=_address_key)
                addresses = resolved[target]
                if not addresses:
                    log.warning(
                        "%s: the SRV target %s has no address records; skipped",
                        self.name,
                        target.to_text(omit_final_dot=True),
                    )
                    continue
                weight = (record.weight or self._zero_weight) / len(addresses)
                for address in addresses:
                    endpoint = (address, record.port)
                    weights[endpoint] = weights.get(endpoint, 0.0) + weight
                    metadata.setdefault(
                        _server(address, record.port),
                        {
                            "target": target.to_text(omit_final_dot=True),
                            "priority": record.priority,
                            "srv_weight": record.weight,
                        },
                    )
            if weights:
                ordered = sorted(weights, key=lambda e: (_address_key(e[0]), e[1]))
                servers = {_server(a, p): weights[(a, p)] for a, p in ordered}
                return Membership(servers, metadata), min(ttls)
            log.warning(
                "%s: no target of priority %d resolves; trying the next priority",
                self.name,
                priority,
            )
        return self._empty("no SRV target has address records"), min(ttls + negative)

    def _additional(self, srv: _Lookup) -> dict[dns.name.Name, tuple[list[str], list[float]]]:
        """The targets' addresses the server sent along in the additional section."""
        found: dict[dns.name.Name, tuple[list[str], list[float]]] = {}
        if srv.response is None:
            return found
        wanted = _FAMILIES[self._family]
        for rrset in srv.response.additional:
            if rrset.rdclass != dns.rdataclass.IN or rrset.rdtype not in wanted:
                continue
            addresses, ttls = found.setdefault(rrset.name, ([], []))
            addresses.extend(r.address for r in rrset)
            ttls.append(float(rrset.ttl))
        return found

    async def _read(self, resolver: dns.asyncresolver.Resolver) -> tuple[Membership, float]:
        return await (self._read_srv(resolver) if self._srv else self._read_addresses(resolver))

    def _refresh_in(self, ttl: float) -> float:
        """The TTL clamped to [min_ttl, max_ttl]: the seconds until the next read."""
        if not math.isfinite(ttl):
            return self._max_ttl
        return min(max(ttl, self._min_ttl), self._max_ttl)

    async def watch(self) -> AsyncGenerator[Membership, None]:
        """Yield the membership now, then each time a read at the TTL finds it changed."""
        resolver = self._resolver()
        last: Membership | None = None
        while True:
            membership, ttl = await self._read(resolver)
            if membership != last:
                last = membership
                yield membership
            await self._sleep(self._refresh_in(ttl))
