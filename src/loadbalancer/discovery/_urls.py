"""A source named by a URL: what ``loadbalancer discover SOURCE`` and configuration files take."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from ._file import FileSource
from ._source import Source

__all__ = ["SCHEMES", "source_from_url"]

SCHEMES = ("file", "dns", "dns+srv", "etcd")
"""The URL schemes ``source_from_url`` knows."""


def source_from_url(url: str) -> Source:
    """The source a URL names.

    * ``file:///etc/lb/inventory.toml`` (or ``.json``): a ``FileSource``;
    * ``dns://inventory.svc:8080``: the A/AAAA records of a name, at that port;
    * ``dns+srv://_http._tcp.inventory.svc``: its SRV records;
    * ``etcd://127.0.0.1:2379/services/inventory/``: the keys under an etcd prefix.

    The DNS and etcd sources accept more in their query (see ``DnsSource.from_url`` and
    ``EtcdSource.from_url``). Raise ``ValueError`` naming what is wrong.
    """
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, not {type(url).__name__}")
    scheme = urlsplit(url).scheme.lower()
    if scheme == "file":
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"url {url!r}: a file URL names a local path (file:///path)")
        return FileSource(unquote(parts.path))
    if scheme in ("dns", "dns+srv"):
        from .dns import DnsSource

        return DnsSource.from_url(url)
    if scheme == "etcd":
        from .etcd import EtcdSource

        return EtcdSource.from_url(url)
    raise ValueError(f"url {url!r}: the scheme must be one of {', '.join(SCHEMES)}")
