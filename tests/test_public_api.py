"""The public surface: a complete, sorted __all__, docstrings everywhere, typing shipped."""

from __future__ import annotations

import inspect
import logging
import subprocess
import sys
from pathlib import Path

import loadbalancer

LAZY = {
    "AsyncHealthChecker",
    "AsyncHttpProbe",
    "AsyncTcpProbe",
    "HealthCheckStatus",
    "HealthChecker",
    "HttpProbe",
    "ProbeResult",
    "TcpProbe",
}


def test_all_is_sorted_and_complete() -> None:
    exported = loadbalancer.__all__
    # Sorted as ruff's RUF022 sorts it: constants first, then the rest.
    assert list(exported) == sorted(exported, key=lambda name: (not name.isupper(), name))
    # The lazy names may or may not be in vars() yet (another test may have touched them).
    public = {
        name
        for name, value in vars(loadbalancer).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }
    assert set(exported) == public | LAZY
    listed = {
        name
        for name in dir(loadbalancer)
        if not name.startswith("_") and not inspect.ismodule(getattr(loadbalancer, name))
    }
    assert set(exported) == listed


def test_lazy_names_resolve_to_the_checks_package() -> None:
    from loadbalancer import checks

    for name in sorted(LAZY):
        assert getattr(loadbalancer, name) is getattr(checks, name)
        assert name in checks.__all__


def test_subpackage_all_lists_are_sorted_and_importable() -> None:
    from loadbalancer import checks, health

    for package in (checks, health):
        assert list(package.__all__) == sorted(package.__all__)
        for name in package.__all__:
            assert getattr(package, name).__module__.startswith(package.__name__)
    assert health.__all__ == ["OutlierDetection", "SlowStart"]


def test_the_package_logger_has_a_null_handler() -> None:
    handlers = logging.getLogger("loadbalancer").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)


def test_a_library_warning_prints_nothing_when_logging_is_unconfigured() -> None:
    # Without the NullHandler, Python's last-resort handler writes the warning to stderr.
    code = (
        "import logging, loadbalancer\n"
        "lb = loadbalancer.LoadBalancer()\n"
        "lb.register('a')\n"
        "checker = loadbalancer.HealthChecker(lb, lambda server: False, fall=1)\n"
        "assert checker.check_now() == {'a': False}  # logs 'a is unhealthy' at WARNING\n"
        "checker.stop()\n"
        "logging.getLogger('elsewhere').warning('control: this one is printed')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0
    assert done.stderr == "control: this one is printed\n"


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
