"""A membership kept in a JSON or TOML file, re-read whenever the file changes."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, final

from .._validation import check_number
from ._source import Membership, Source

__all__ = ["FileSource", "MembershipFileError", "parse_membership"]

log = logging.getLogger("loadbalancer.discovery")


class MembershipFileError(ValueError):
    """A membership file that cannot be used: the message names the file and the field."""


def _toml(text: str) -> Any:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]
        except ImportError as exc:
            raise MembershipFileError(
                "reading TOML on Python 3.10 needs tomli: pip install 'loadbalancer[cli]'"
            ) from exc
    return tomllib.loads(text)


def parse_membership(text: str, where: str, *, toml: bool) -> Membership:
    """The membership in a file's ``text`` (``where`` names it in errors).

    The file holds a list of servers (``["10.0.0.1:8080", ...]``), a mapping of server to
    weight, or either under a ``servers`` key (TOML needs the key: ``servers = [...]`` or a
    ``[servers]`` table). A weight may be a table/object ``{weight = 2, ...}`` whose other
    fields are the server's metadata. Raise ``MembershipFileError`` naming the field for a
    file that is not one of these; entries with bad names or weights are left for the runner
    to skip, one by one.
    """
    try:
        data = _toml(text) if toml else json.loads(text)
    except MembershipFileError:
        raise
    except ValueError as exc:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        raise MembershipFileError(
            f"{where}: not valid {'TOML' if toml else 'JSON'}: {exc}"
        ) from None
    field = "servers"
    if isinstance(data, dict) and ("servers" in data or toml):
        if "servers" not in data:
            raise MembershipFileError(f"{where}: no 'servers' key")
        data = data["servers"]
    elif not isinstance(data, (dict, list)):
        raise MembershipFileError(f"{where}: must hold a list or a mapping of servers")
    if isinstance(data, list):
        for i, name in enumerate(data):
            if not isinstance(name, str):
                raise MembershipFileError(
                    f"{where}: {field}[{i}] must be a server name, not {type(name).__name__}"
                )
        return Membership(data)
    if not isinstance(data, dict):
        raise MembershipFileError(f"{where}: {field} must be a list or a mapping of servers")
    weights: dict[str, Any] = {}
    metadata: dict[str, dict[str, Any]] = {}
    for name, value in data.items():
        if isinstance(value, dict):
            if "weight" not in value:
                raise MembershipFileError(f"{where}: {field}.{name!r} has no 'weight'")
            weights[name] = value["weight"]
            metadata[name] = {k: v for k, v in value.items() if k != "weight"}
        else:
            weights[name] = value
    return Membership(weights, metadata)


@final
class FileSource(Source):
    """The membership in a JSON or TOML file (by its suffix), re-read when it changes.

    The file's modification and change times, size and inode are polled every ``interval``
    seconds, so an edit in place, an atomic rename and a chmod are all seen. A file that
    cannot be read or used (half written, invalid, missing) is refused with an error naming
    the file and the field, and the last good membership stays.
    See ``parse_membership`` for the format.
    """

    __slots__ = ("_interval", "_path", "_toml")

    def __init__(self, path: str | os.PathLike[str], *, interval: float = 1.0) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or a path, not {type(path).__name__}")
        self._path = Path(path).absolute()
        suffix = self._path.suffix.lower()
        if suffix not in (".json", ".toml"):
            raise ValueError(f"path must end in .json or .toml, not {suffix or 'nothing'!r}")
        self._toml = suffix == ".toml"
        self._interval = check_number(interval, "interval", above=0)

    @property
    def name(self) -> str:
        """``file://`` and the absolute path."""
        return self._path.as_uri()

    def _signature(self) -> tuple[int, int, int, int] | None:
        try:
            stat = self._path.stat()
        except OSError:
            return None
        # ctime too: a chmod that makes an unreadable file readable changes only that.
        return stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size, stat.st_ino

    def _read(self) -> Membership:
        try:
            text = self._path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise MembershipFileError(f"{self._path}: cannot be read: {exc}") from None
        return parse_membership(text, str(self._path), toml=self._toml)

    async def watch(self) -> AsyncIterator[Membership]:
        """Yield the file's membership now, then whenever a change to it is usable."""
        seen: tuple[int, int, int, int] | bool | None = False  # False: nothing looked at yet
        last: Membership | None = None
        while True:
            signature = self._signature()
            if signature != seen:
                seen = signature
                try:
                    membership = self._read()
                except MembershipFileError as error:
                    log.error("%s: refused: %s; keeping the last good membership", self.name, error)
                else:
                    if membership != last:
                        last = membership
                        yield membership
            await asyncio.sleep(self._interval)
