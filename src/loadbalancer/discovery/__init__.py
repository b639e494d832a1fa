"""Membership from a registry: sources that yield whole memberships, and runners that apply them.

A ``Source`` (a file, DNS, etcd, a fixed list, or your own) yields each whole membership as it
changes; a runner (``Discovery`` in a thread, ``AsyncDiscovery`` in a task) applies each to a
balancer with ``replace()``, keeps the last good one through registry outages, and reports
changes. ``import loadbalancer`` does not load this package; importing it loads asyncio (the
runners and sources are asyncio code) but no client library: the DNS and etcd sources load
theirs (``loadbalancer[dns]``, ``loadbalancer[etcd]``) on first use of their names.
"""

from __future__ import annotations

import importlib
import typing

from .._stats import DiscoveryStatus as DiscoveryStatus
from ._apply import MembershipChange as MembershipChange
from ._file import FileSource as FileSource
from ._file import MembershipFileError as MembershipFileError
from ._file import parse_membership as parse_membership
from ._runner import AsyncDiscovery as AsyncDiscovery
from ._runner import Discovery as Discovery
from ._source import Membership as Membership
from ._source import Source as Source
from ._source import StaticSource as StaticSource
from ._urls import source_from_url as source_from_url

if typing.TYPE_CHECKING:  # for mypy and IDEs; at run time __getattr__ imports these lazily
    from .dns import DnsLookupError as DnsLookupError
    from .dns import DnsSource as DnsSource
    from .etcd import AsyncEtcdRegistration as AsyncEtcdRegistration
    from .etcd import EtcdRegistration as EtcdRegistration
    from .etcd import EtcdSource as EtcdSource
    from .etcd import EtcdWatchError as EtcdWatchError

# Names whose modules import a client library (dnspython, aetcd): loaded on first access.
_LAZY = {
    "DnsLookupError": "dns",
    "DnsSource": "dns",
    "AsyncEtcdRegistration": "etcd",
    "EtcdRegistration": "etcd",
    "EtcdSource": "etcd",
    "EtcdWatchError": "etcd",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


__all__ = [
    "AsyncDiscovery",
    "AsyncEtcdRegistration",
    "Discovery",
    "DiscoveryStatus",
    "DnsLookupError",
    "DnsSource",
    "EtcdRegistration",
    "EtcdSource",
    "EtcdWatchError",
    "FileSource",
    "Membership",
    "MembershipChange",
    "MembershipFileError",
    "Source",
    "StaticSource",
    "parse_membership",
    "source_from_url",
]
