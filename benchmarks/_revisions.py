"""A library module as it was at a git revision, importable beside the working tree's."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

_ROOT = Path(__file__).resolve().parent.parent


def module_at(revision: str, path: str) -> ModuleType:
    """``path`` (under ``src/``) as at git ``revision``, as a module of its own package.

    Its relative imports resolve against the working tree's package, so only this module is
    the old one: a benchmark can time it beside the current one in the same run.
    """
    source = subprocess.run(
        ["git", "show", f"{revision}:{path}"], cwd=_ROOT, capture_output=True, check=True, text=True
    ).stdout
    parts = Path(path).with_suffix("").parts[1:]  # drop "src"
    package = ".".join(parts[:-1])
    name = f"{package}._{parts[-1]}_at_{revision.replace('^', '_').replace('~', '_')}"
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    module.__package__ = package
    sys.modules[name] = module
    exec(compile(source, f"{revision}:{path}", "exec"), module.__dict__)
    return module
