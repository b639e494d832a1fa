"""Reading TOML tables field by field, with errors that name the field's path.

Each check takes a value and its path (``servers[3].latency.mean``) and returns the value
converted, or raises ``ScenarioError`` saying what is wrong with it at that path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterator
from typing import NoReturn, TypeVar, final

__all__ = [
    "OneOf",
    "ScenarioError",
    "Table",
    "as_array",
    "as_boolean",
    "as_integer",
    "as_name",
    "as_non_negative",
    "as_number",
    "as_percentage",
    "as_positive",
    "as_positive_int",
    "as_probability",
    "as_text",
    "explain_misplaced_key",
    "items",
    "join",
    "kind",
    "library_error",
    "one_of",
]

_T = TypeVar("_T")


class ScenarioError(ValueError):
    """A scenario that cannot be run; ``path`` names the field at fault (empty: the file)."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


def kind(value: object) -> str:
    """The TOML name of ``value``'s type, for messages."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return f"a {type(value).__name__}"  # dates and times


def join(path: str, key: str) -> str:
    """``path.key``, or ``key`` at the top level."""
    return f"{path}.{key}" if path else key


@final
class Table:
    """A TOML table being read: lookups are checked, and keys it may not hold are an error."""

    __slots__ = ("_data", "_path")

    def __init__(self, data: object, path: str, known: tuple[str, ...] | None = None) -> None:
        if not isinstance(data, dict):
            raise ScenarioError(path, f"must be a table, not {kind(data)}")
        self._data: dict[str, object] = data
        self._path = path
        # A typo must not be silently ignored: it would run a different scenario than meant.
        unknown = [] if known is None else sorted(set(data) - set(known))
        if unknown:
            expected = ", ".join(sorted(known or ()))
            raise ScenarioError(self.path(unknown[0]), f"unknown key (expected one of: {expected})")

    def path(self, key: str) -> str:
        """The path of ``key`` in this table."""
        return join(self._path, key)

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def raw(self, key: str) -> object:
        """The value of ``key``, which must be present."""
        return self._data[key]

    def get(self, key: str, check: Callable[[object, str], _T], default: _T) -> _T:
        """``check(value, path)`` of ``key``, or ``default`` when it is absent."""
        if key not in self._data:
            return default
        return check(self._data[key], self.path(key))

    def require(self, key: str, check: Callable[[object, str], _T], hint: str = "") -> _T:
        """``check(value, path)`` of ``key``, which must be present."""
        if key not in self._data:
            raise ScenarioError(self.path(key), f"missing{hint}")
        return check(self._data[key], self.path(key))


def as_number(value: object, path: str) -> float:
    """A finite number (integer or float, not a boolean)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ScenarioError(path, f"must be a number, not {kind(value)}")
    if not math.isfinite(value):
        raise ScenarioError(path, f"must be a finite number, got {value!r}")
    return float(value)


def as_positive(value: object, path: str) -> float:
    """A finite number above zero."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ScenarioError(path, f"must be a positive number, not {kind(value)}")
    if not math.isfinite(value) or value <= 0:
        raise ScenarioError(path, f"must be a positive number, got {value!r}")
    return float(value)


def as_non_negative(value: object, path: str) -> float:
    """A finite number at or above zero."""
    number = as_number(value, path)
    if number < 0:
        raise ScenarioError(path, f"must be a number >= 0, got {value!r}")
    return number


def as_probability(value: object, path: str) -> float:
    """A number from 0 to 1."""
    number = as_number(value, path)
    if not 0 <= number <= 1:
        raise ScenarioError(path, f"must be a probability between 0 and 1, got {value!r}")
    return number


def as_percentage(value: object, path: str) -> float:
    """A number from 0 to 100."""
    number = as_number(value, path)
    if not 0 <= number <= 100:
        raise ScenarioError(path, f"must be a percentage between 0 and 100, got {value!r}")
    return number


def as_positive_int(value: object, path: str) -> int:
    """An integer of at least 1 (``2.0`` is a float, so it is refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ScenarioError(path, f"must be a positive integer, not {kind(value)}")
    if value < 1:
        raise ScenarioError(path, f"must be a positive integer, got {value}")
    return value


def as_integer(value: object, path: str) -> int:
    """Any integer."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ScenarioError(path, f"must be an integer, not {kind(value)}")
    return value


def as_text(value: object, path: str) -> str:
    """A string, possibly empty."""
    if not isinstance(value, str):
        raise ScenarioError(path, f"must be a string, not {kind(value)}")
    return value


def as_name(value: object, path: str) -> str:
    """A string that is not blank."""
    text = as_text(value, path)
    if not text.strip():
        raise ScenarioError(path, "must not be empty")
    return text


def as_boolean(value: object, path: str) -> bool:
    """``true`` or ``false``."""
    if not isinstance(value, bool):
        raise ScenarioError(path, f"must be true or false, not {kind(value)}")
    return value


@final
class OneOf:
    """A check accepting exactly one of the strings ``choices``."""

    __slots__ = ("choices",)

    def __init__(self, choices: tuple[str, ...]) -> None:
        self.choices = choices

    def __call__(self, value: object, path: str) -> str:
        """``value`` if it is one of the choices."""
        text = as_text(value, path)
        if text not in self.choices:
            raise ScenarioError(path, f'must be one of {self.quoted()}, got "{text}"')
        return text

    def quoted(self) -> str:
        """The choices, quoted: ``"a", "b"``."""
        return ", ".join(f'"{c}"' for c in self.choices)


def one_of(*choices: str) -> OneOf:
    """A check accepting exactly one of the strings ``choices``."""
    return OneOf(choices)


def as_array(value: object, path: str) -> list[object]:
    """An array."""
    if not isinstance(value, list):
        raise ScenarioError(path, f"must be an array, not {kind(value)}")
    return value


def items(table: Table, key: str) -> Iterator[tuple[object, str]]:
    """Each element of the array ``key`` (if present) with its path."""
    if key in table:
        path = table.path(key)
        for index, item in enumerate(as_array(table.raw(key), path)):
            yield item, f"{path}[{index}]"


def library_error(error: Exception, path: str, names: tuple[str, ...]) -> ScenarioError:
    """``error`` from a library constructor, with the argument it names moved into the path:
    ``ValueError("weight must be ...")`` at ``servers[2]`` is ``servers[2].weight: must be ...``."""
    message = str(error)
    for name in sorted(names, key=len, reverse=True):
        if message.startswith(f"{name} "):
            return ScenarioError(join(path, name), message[len(name) + 1 :])
    return ScenarioError(path, message)


def explain_misplaced_key(
    error: ScenarioError, root_keys: Collection[str], headers: str
) -> NoReturn:
    """Raise ``error`` again, saying why if it is TOML's classic trap: a key the top level
    takes (one of ``root_keys``), written after a table header (``headers`` names the kinds
    the file has, such as ``"[table]"``), belongs to that table and is unknown there."""
    key = error.path.rpartition(".")[2]
    if error.message.startswith("unknown key") and "." in error.path and key in root_keys:
        raise ScenarioError(
            error.path,
            f"unknown key; if {key!r} is meant for the top level, move it above the first "
            f"{headers} header",
        ) from None
    raise error
