"""The public surface: a complete, sorted __all__, docstrings everywhere, typing shipped."""

from __future__ import annotations

import inspect
from pathlib import Path

import loadbalancer


def test_all_is_sorted_and_complete() -> None:
    exported = loadbalancer.__all__
    assert list(exported) == sorted(exported)
    public = {
        name
        for name, value in vars(loadbalancer).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }
    assert set(exported) == public


def test_every_public_name_and_method_has_a_docstring() -> None:
    missing = []
    for name in loadbalancer.__all__:
        value = getattr(loadbalancer, name)
        if not inspect.isclass(value):
            continue
        if not (value.__doc__ or "").strip():
            missing.append(name)
        for attr, member in vars(value).items():
            if attr.startswith("_") or not (
                inspect.isfunction(member) or isinstance(member, property)
            ):
                continue
            if not (member.__doc__ or "").strip():
                missing.append(f"{name}.{attr}")
    assert missing == []


def test_py_typed_is_shipped() -> None:
    assert (Path(loadbalancer.__file__).parent / "py.typed").is_file()
