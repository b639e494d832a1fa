"""Membership from a registry: sources that yield whole memberships, and runners that apply them.

A ``Source`` (a file, DNS, etcd, a fixed list, or your own) yields each whole membership as it
changes; a runner (``Discovery`` in a thread, ``AsyncDiscovery`` in a task) applies each to a
balancer with ``replace()``, keeps the last good one through registry outages, and reports
changes. Importing this package loads no networking module; the DNS and etcd sources load
their client libraries (``loadbalancer[dns]``, ``loadbalancer[etcd]``) on first use.
"""

from __future__ import annotations

from ._apply import DiscoveryStatus as DiscoveryStatus
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

__all__ = [
    "AsyncDiscovery",
    "Discovery",
    "DiscoveryStatus",
    "FileSource",
    "Membership",
    "MembershipChange",
    "MembershipFileError",
    "Source",
    "StaticSource",
    "parse_membership",
    "source_from_url",
]
