"""Recorded traffic: arrival times, keys and service times replayed from a CSV or JSONL file.

A trace is read one row at a time, never loaded whole: once when the scenario is checked (every
row, so a bad one is reported before the run, and to count what the run will replay), then
once per strategy as the run pulls its arrivals. Times are seconds, absolute (``$msec`` of an
access log) or relative; they are replayed from the first row's, which becomes time 0, and
must not decrease. The file is UTF-8, with or without a byte-order mark (Excel writes one); other
columns or fields than ``COLUMNS`` (an access log's status, say) are ignored, and the scenario's
warnings name them.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, final

from .fields import ScenarioError
from .limits import MAX_REQUESTS, MAX_SECONDS, check_keys

__all__ = ["COLUMNS", "FORMATS", "Row", "Trace", "TraceRows", "scan_trace"]

_SHOWN = 5  # ignored column names a warning lists before "..."

COLUMNS: dict[str, str] = {
    "time": "when the request arrived, in seconds (required; absolute or relative)",
    "key": "the request's key, passed to acquire(key) (optional; empty: no key)",
    "service_time": "how long serving it took, in seconds (optional; empty: the server draws one)",
}
"""The columns (CSV) or fields (JSONL) a trace reads, and what each means; others are ignored."""

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
"""The formats a trace may be in, by file suffix."""

_PATH = "arrivals.trace"

Row = tuple[float, "str | None", "float | None"]
"""One request: its time since the first row's, its key, its recorded service time."""


@final
@dataclass(frozen=True, slots=True)
class Trace:
    """A trace file, checked: what a run of ``duration`` seconds replays from it.

    ``requests`` rows arrive at or before the end of the run, the last at ``span`` seconds after
    the first; ``keys`` of them are distinct (0: none has a key). ``ignored`` are the columns
    or fields it has that are not ``COLUMNS``, in the order first seen.
    """

    path: Path
    name: str
    requests: int
    span: float
    keys: int
    ignored: tuple[str, ...] = ()

    def warning(self) -> str | None:
        """The scenario warning that names the ignored columns, if any."""
        if not self.ignored:
            return None
        shown = ", ".join(f'"{name}"' for name in self.ignored[:_SHOWN])
        more = ", ..." if len(self.ignored) > _SHOWN else ""
        what = "column" if self.path.suffix.lower() == ".csv" else "field"
        plural = "s" if len(self.ignored) > 1 else ""
        return (
            f"{_PATH}: {self.name}: {what}{plural} {shown}{more} ignored "
            f"(a trace reads only {', '.join(COLUMNS)})"
        )


@final
class TraceRows:
    """The rows of trace ``path``, read lazily; ``name`` is how messages call the file.

    Iterate once; use it in a ``with`` block, so the file is closed however the reading ends.
    """

    __slots__ = ("_file", "_format", "_header", "_line", "_name", "_read", "_reader", "ignored")

    def __init__(self, path: Path, name: str) -> None:
        self._name = name
        suffix = path.suffix.lower()
        if suffix not in FORMATS:
            raise ScenarioError(
                _PATH, f"{name}: unknown format: name the file {' or '.join(FORMATS)}"
            )
        self._format = FORMATS[suffix]
        try:
            # utf-8-sig drops a byte-order mark; surrogateescape defers a bad byte to the line
            # that holds it, so the error can name that line (_lines).
            self._file: IO[str] = path.open(
                encoding="utf-8-sig", errors="surrogateescape", newline=""
            )
        except OSError as error:
            raise ScenarioError(_PATH, f"cannot read {name}: {error.strerror or error}") from None
        self.ignored: dict[str, None] = {}
        """The columns or fields read so far that are not ``COLUMNS``, in the order seen."""
        self._read = 0  # physical lines read
        self._reader = csv.reader(self._lines())  # used only for CSV
        self._line = 0
        self._header: list[str] = []
        if self._format == "csv":
            try:
                self._header = self._csv_header()
            except BaseException:
                self._file.close()
                raise

    def __enter__(self) -> TraceRows:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    def _error(self, message: str, line: int | None = None) -> ScenarioError:
        return ScenarioError(
            _PATH, f"{self._name}:{self._line if line is None else line}: {message}"
        )

    def _lines(self) -> Iterator[str]:
        """The file's lines, each checked to be UTF-8 text."""
        for text in self._file:
            self._read += 1
            if not text.isascii():
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError as error:
                    byte = ord(text[error.start]) - 0xDC00  # surrogateescape's stand-in
                    raise self._error(
                        f"not UTF-8 text (byte 0x{byte:02x}): save the trace as UTF-8", self._read
                    ) from None
            yield text

    def _records(self) -> Iterator[list[str]]:
        """The CSV records, a malformed one reported at its line."""
        while True:
            try:
                row = next(self._reader)
            except StopIteration:
                return
            except csv.Error as error:
                raise self._error(f"not valid CSV: {error}", self._reader.line_num) from None
            self._line = self._reader.line_num
            yield row

    def _csv_header(self) -> list[str]:
        for row in self._records():
            if row:
                header = [cell.strip() for cell in row]
                self._known(header)
                read = [name for name in header if name in COLUMNS]
                if len(set(read)) < len(read):
                    raise self._error("a column is named twice")
                return header
        raise self._error("empty: the first line must name the columns (time, ...)", 1)

    def _known(self, names: list[str], what: str = "column") -> None:
        for name in names:
            if name not in COLUMNS and name not in self.ignored:
                self.ignored[name] = None
        if "time" not in names:
            raise self._error(f'no "time" {what}')

    def _object(self, text: str) -> dict[str, object]:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            raise self._error(f"not valid JSON: {error.msg}") from None
        if not isinstance(value, dict):
            raise self._error("must be a JSON object")
        return value

    def __iter__(self) -> Iterator[Row]:
        rows = self._csv_rows() if self._format == "csv" else self._jsonl_rows()
        first: float | None = None
        previous = -math.inf
        for time, key, service in rows:
            if time < previous:
                raise self._error(
                    f"time: {time:.17g} is before the row above's {previous:.17g}: "
                    "sort the trace by time"
                )
            previous = time
            if first is None:
                first = time
            yield time - first, key, service

    def _csv_rows(self) -> Iterator[tuple[float, str | None, float | None]]:
        header = self._header
        width = len(header)
        at = {name: header.index(name) for name in header if name in COLUMNS}
        time_at = at["time"]
        key_at = at.get("key")
        service_at = at.get("service_time")
        for row in self._records():
            if not row:
                continue
            if len(row) != width:
                raise self._error(f"expected {width} columns ({', '.join(header)}), got {len(row)}")
            time = self._seconds(row[time_at], "time")
            key = row[key_at] if key_at is not None and row[key_at] != "" else None
            service = None
            if service_at is not None and row[service_at].strip():
                service = self._service(self._seconds(row[service_at], "service_time"))
            yield time, key, service

    def _jsonl_rows(self) -> Iterator[tuple[float, str | None, float | None]]:
        for text in self._lines():
            self._line = self._read
            if not text.strip():
                continue
            row = self._object(text)
            self._known(list(row), "field")
            time = self._number(row["time"], "time")
            key = row.get("key")
            if key is not None and not isinstance(key, str):
                raise self._error(f"key: must be a string or null, got {json.dumps(key)}")
            value = row.get("service_time")
            service = None if value is None else self._service(self._number(value, "service_time"))
            yield time, key or None, service

    def _seconds(self, text: str, column: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise self._error(f"{column}: must be a number of seconds, got {text!r}") from None
        if not math.isfinite(value):
            raise self._error(f"{column}: must be a finite number of seconds, got {text!r}")
        return value

    def _number(self, value: object, column: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            shown = json.dumps(value)
            raise self._error(f"{column}: must be a number of seconds, got {shown}")
        if not math.isfinite(value):
            raise self._error(f"{column}: must be a finite number of seconds, got {value!r}")
        return float(value)

    def _service(self, value: float) -> float:
        if not 0 <= value <= MAX_SECONDS:
            raise self._error(f"service_time: must be from 0 to {MAX_SECONDS:g} s, got {value:g}")
        return value


def scan_trace(path: Path, name: str, duration: float | None) -> Trace:
    """Check every row of the trace at ``path`` that a run of ``duration`` seconds replays
    (every row when None), and count them; raise ``ScenarioError`` naming file:line and column.
    """
    requests = 0
    span = 0.0
    keys: set[str] = set()
    with TraceRows(path, name) as rows:
        for time, key, _ in rows:
            if duration is not None and time > duration:
                break
            requests += 1
            if requests > MAX_REQUESTS:
                raise ScenarioError(
                    _PATH,
                    f"{name} has more than {MAX_REQUESTS:,} requests"
                    + ("" if duration is None else f" in {duration:g} s")
                    + f"; a simulation runs at most {MAX_REQUESTS:,} (a shorter duration)",
                )
            span = time
            if key is not None and key not in keys:
                keys.add(key)
                check_keys(len(keys), _PATH, f"distinct keys in {name}")
        ignored = tuple(rows.ignored)
    if not requests:
        raise ScenarioError(_PATH, f"{name} has no requests")
    return Trace(path, name, requests, span, len(keys), ignored)
