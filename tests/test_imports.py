"""Importing the core loads no networking module; the health checks load theirs on first use.

Each check runs in a fresh interpreter: this test process has long since imported asyncio.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Modules that mean network I/O (or the bulk of its import time), absent until first use.
NETWORKING = ("asyncio", "ssl", "socket", "http.client", "selectors", "urllib.request", "email")


def run_python(code: str) -> str:
    """Run ``code`` in a fresh interpreter and return its stdout; fail on a non-zero exit."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def loaded_after(statement: str) -> dict[str, list[str]]:
    """Which NETWORKING modules are loaded before and after ``statement``, run after import."""
    code = (
        "import json, sys\n"
        "import loadbalancer\n"
        f"names = {NETWORKING!r}\n"
        "before = [n for n in names if n in sys.modules]\n"
        f"{statement}\n"
        "after = [n for n in names if n in sys.modules]\n"
        "print(json.dumps({'before': before, 'after': after}))\n"
    )
    result: dict[str, list[str]] = json.loads(run_python(code))
    return result


def test_importing_the_core_loads_no_networking_module() -> None:
    assert loaded_after("pass") == {"before": [], "after": []}


@pytest.mark.parametrize(
    "name",
    [
        "AsyncHealthChecker",
        "AsyncHttpProbe",
        "AsyncTcpProbe",
        "HealthCheckStatus",
        "HealthChecker",
        "HttpProbe",
        "ProbeResult",
        "TcpProbe",
    ],
)
def test_health_check_names_import_the_checks_on_first_access(name: str) -> None:
    statement = (
        f"value = loadbalancer.{name}\n"
        "import loadbalancer.checks as checks\n"
        f"assert value is getattr(checks, {name!r}), value\n"
        f"assert {name!r} in vars(loadbalancer)  # cached: __getattr__ runs once"
    )
    loaded = loaded_after(statement)
    assert loaded["before"] == []
    assert {"asyncio", "ssl", "socket"} <= set(loaded["after"])


def test_a_health_checker_works_after_a_lazy_import() -> None:
    statement = (
        "lb = loadbalancer.LoadBalancer()\n"
        "lb.register('a')\n"
        "checker = loadbalancer.HealthChecker(lb, lambda server: False, fall=1)\n"
        "assert checker.check_now() == {'a': False}\n"
        "checker.stop()"
    )
    assert "asyncio" in loaded_after(statement)["after"]


def test_unknown_names_still_raise_attribute_error() -> None:
    import loadbalancer

    with pytest.raises(AttributeError, match="has no attribute 'NoSuchThing'"):
        loadbalancer.NoSuchThing  # noqa: B018  # the attribute access is the test


def test_dir_lists_the_lazy_names() -> None:
    import loadbalancer

    assert {"HealthChecker", "AsyncHttpProbe", "LoadBalancer"} <= set(dir(loadbalancer))


def test_import_time_of_the_core(capsys: pytest.CaptureFixture[str]) -> None:
    # Reported, not asserted: machines differ too much for a limit that means anything.
    code = (
        "import time\n"
        "started = time.perf_counter()\n"
        "import loadbalancer\n"
        "print(time.perf_counter() - started)\n"
    )
    best = min(float(run_python(code)) for _ in range(5))
    with capsys.disabled():
        print(f"\nimport loadbalancer: {best * 1000:.1f} ms (best of 5)")
    assert best > 0


CLIENT_LIBRARIES = (
    "httpx",
    "requests",
    "aiohttp",
    "urllib3",
    "http.server",
    "dns",
    "aetcd",
    "grpc",
)


@pytest.mark.parametrize(
    "statement",
    [
        "import loadbalancer.discovery",
        "import loadbalancer.failover",
        "import loadbalancer.integrations",
        "import loadbalancer.integrations._http",
        "import loadbalancer.testing",
    ],
)
def test_no_client_library_loads_until_its_integration_is_imported(statement: str) -> None:
    code = (
        "import json, sys\n"
        "import loadbalancer\n"
        f"{statement}\n"
        f"print(json.dumps([n for n in {CLIENT_LIBRARIES!r} if n in sys.modules]))\n"
    )
    assert json.loads(run_python(code)) == []


@pytest.mark.parametrize(
    "statement",
    [
        "import loadbalancer.integrations._semconv",
        "import loadbalancer.integrations.httpx",
        "import loadbalancer.integrations.requests",
        "import loadbalancer.integrations.aiohttp",
        "from loadbalancer.integrations.httpx import BalancedTransport\n"
        "BalancedTransport(loadbalancer.LoadBalancer(), meter_provider=None).close()",
    ],
)
def test_the_http_integrations_import_opentelemetry_only_for_a_meter_provider(
    statement: str,
) -> None:
    code = (
        "import json, sys\n"
        "import loadbalancer\n"
        f"{statement}\n"
        "print(json.dumps(sorted(n for n in sys.modules if n.startswith('opentelemetry'))))\n"
    )
    assert json.loads(run_python(code)) == []
