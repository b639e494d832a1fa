"""A newcomer's first hour (issue 16): every step the README and the docs walk through holds.

Installing and checking the version, the package's own help, a full pool, the URL an HTTP
health probe asks for, starting an async checker, and the page on choosing a strategy.
"""

from __future__ import annotations

import asyncio
import doctest
import gc
import importlib.util
import logging
import re
import sys
import warnings
from importlib import metadata
from pathlib import Path

import pytest

import loadbalancer
from loadbalancer import LoadBalancer
from loadbalancer.checks import AsyncHealthChecker, AsyncHttpProbe, HttpProbe
from loadbalancer.checks._address import DEFAULT_PORTS
from loadbalancer.cli import main
from loadbalancer.cli._app import version

from .health_servers import FakeBalancer, HealthServer, client_tls, server_tls

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def section(text: str, heading: str) -> str:
    """The body of the ``## heading`` section of ``text``, up to the next ``## ``."""
    found = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert found is not None, f"no '## {heading}' section"
    return found.group(1)


def one_line(text: str) -> str:
    """``text`` with every run of whitespace made one space, as Markdown renders it."""
    return " ".join(text.split())


# -- installing, and loadbalancer --version ----------------------------------------------------


def test_version_prints_the_installed_distributions(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"loadbalancer {metadata.version('loadbalancer')}\n"


def test_version_from_a_source_tree_that_is_not_installed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def not_installed(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    assert version() == "loadbalancer 0.1.0 (not installed: imported from source)"
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"{version()}\n"


def test_the_package_version_is_the_projects() -> None:
    # Two places say the version; --version falls back on the package's own.
    assert loadbalancer.__version__ == PYPROJECT["project"]["version"]


def test_the_install_section_installs_from_a_checkout() -> None:
    install = section(README, "Install")
    commands = re.search(r"```sh\n(.*?)```", install, re.S)
    assert commands is not None
    lines = commands.group(1).splitlines()
    # Not on PyPI yet: the commands to run today install from the checkout, not by name.
    assert not any(re.match(r"pip install '?loadbalancer\b", line) for line in lines)
    assert any(line.startswith("pip install -e '.[cli,plot]'") for line in lines)
    assert any(line.startswith("loadbalancer --version") for line in lines)
    assert "pip install '.[httpx]'" in install
    assert "pip install loadbalancer" in install  # for when it is published


def test_the_install_sections_extras_are_the_projects() -> None:
    table = re.findall(r"^\| (`.*?) \|", section(README, "Install"), re.M)
    listed = [name for row in table for name in re.findall(r"`(\w+)`", row)]
    assert sorted(listed) == sorted(PYPROJECT["project"]["optional-dependencies"])


# -- help(loadbalancer): an example and a map --------------------------------------------------


def test_the_package_docstring_example_runs() -> None:
    doc = loadbalancer.__doc__
    assert doc is not None
    test = doctest.DocTestParser().get_doctest(doc, {}, "loadbalancer", None, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    result = runner.run(test, out=lambda text: None)
    assert result.attempted >= 5
    assert result.failed == 0, "run it: python -m doctest -v src/loadbalancer/__init__.py"


def test_the_package_docstring_maps_every_public_name_once() -> None:
    doc = loadbalancer.__doc__
    assert doc is not None
    api = doc[doc.index("The public API") :]
    # The map's entries are the indented lines of names under each heading.
    names = [
        name
        for line in api.splitlines()
        if line.startswith("    ")
        for name in re.findall(r"[A-Za-z_]\w*", line)
    ]
    assert sorted(names) == sorted(loadbalancer.__all__)


def test_the_package_docstring_names_modules_that_exist() -> None:
    doc = loadbalancer.__doc__
    assert doc is not None
    modules = set(re.findall(r"``(loadbalancer(?:\.\w+)+)``", doc))
    assert {"loadbalancer.integrations", "loadbalancer.discovery", "loadbalancer.cli"} <= modules
    for name in sorted(modules):
        if name.endswith(".STRATEGIES"):
            name = name.rsplit(".", 1)[0]
        assert importlib.util.find_spec(name) is not None, name


# -- a full pool -------------------------------------------------------------------------------


def test_a_full_pool_refuses_at_debug_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    lb = LoadBalancer()
    assert lb.max_servers == 10  # the default the README and the docstrings give
    caplog.set_level(logging.DEBUG, logger="loadbalancer")
    assert all(lb.register(f"10.0.0.{i}:8080") for i in range(1, 11))
    assert lb.register("10.0.0.1:8080") is False  # already present: not the pool's capacity
    assert caplog.records == []
    assert lb.register("10.0.0.11:8080") is False
    assert lb.register("10.0.0.12:8080") is False
    assert len(lb) == 10
    messages = [r.getMessage() for r in caplog.records]
    assert [(r.name, r.levelno) for r in caplog.records] == [("loadbalancer", logging.DEBUG)] * 2
    assert messages[0] == (
        "register('10.0.0.11:8080') returned False: the pool is full (max_servers=10); "
        "make the LoadBalancer with a larger max_servers to add it"
    )
    quoted = re.search(r"`(register\('10\.0\.0\.11:8080'\).*?); \.\.\.`", README, re.S)
    assert quoted is not None, "the Quickstart quotes the message"
    assert messages[0].startswith(one_line(quoted.group(1)))


def test_a_larger_pool_takes_every_replica() -> None:
    lb = LoadBalancer(max_servers=12)
    assert all(lb.register(f"pod-{i}:8080") for i in range(12))
    assert {lb.get() for _ in range(12)} == set(lb.servers)


def test_the_docs_say_a_full_pool_returns_false_and_the_default() -> None:
    quickstart = one_line(section(README, "Quickstart"))
    assert "at most `max_servers` servers, 10 by default" in quickstart
    assert "`register()` returns False" in quickstart
    for doc in (LoadBalancer.__doc__, LoadBalancer.register.__doc__):
        text = one_line(doc or "")
        assert "10 by default" in text
        assert re.search(r"full pool.*return(s|ing) False", text), text


def test_replace_over_capacity_raises_rather_than_dropping() -> None:
    lb = LoadBalancer(max_servers=2)
    lb.replace(["a", "b"])
    with pytest.raises(ValueError, match=r"3 entries, more than max_servers=2"):
        lb.replace(["a", "b", "c"])
    assert lb.servers == ("a", "b")


# -- the URL an HTTP probe asks for ------------------------------------------------------------

DOC_SERVER = re.compile(r"10\.0\.0\.1:(8080|8443)")


def readme_probe_urls() -> list[tuple[str, str]]:
    """The Health section's table: (server, probed URL), for ``path="/healthz"``."""
    health = section(README, "Health")
    assert 'With\n`path="/healthz"`' in health or 'With `path="/healthz"`' in one_line(health)
    return re.findall(r"^\| `(\S+)` \| `(\S+)` \|$", health, re.M)


def docstring_probe_urls() -> list[tuple[str, str]]:
    """The same table in ``HttpProbe``'s docstring."""
    return re.findall(r"^\s+(\S+)\s+->\s+(\S+)$", HttpProbe.__doc__ or "", re.M)


def test_the_readme_and_the_docstring_document_the_same_urls() -> None:
    rows = readme_probe_urls()
    assert len(rows) >= 4
    assert ("http://10.0.0.1:8080/api", "http://10.0.0.1:8080/api/healthz") in rows
    assert docstring_probe_urls() == rows
    assert 'path="/healthz"' in (HttpProbe.__doc__ or "")


@pytest.mark.parametrize(("server", "url"), readme_probe_urls())
def test_the_documented_url_is_the_one_built(server: str, url: str) -> None:
    for probe in (HttpProbe(path="/healthz"), AsyncHttpProbe(path="/healthz")):
        address, scheme, path = probe._target(server)
        port = "" if address.port == DEFAULT_PORTS[scheme] else f":{address.port}"
        assert f"{scheme}://{address.host}{port}{path}" == url


@pytest.mark.parametrize(("server", "url"), readme_probe_urls())
def test_the_documented_url_is_the_one_requested(server: str, url: str) -> None:
    # The documented server and URL, with the documented address replaced by a live one.
    tls = url.startswith("https://")
    with HealthServer(tls=server_tls() if tls else None) as live:
        target = DOC_SERVER.sub(live.address, server)
        sync = HttpProbe(path="/healthz", ssl_context=client_tls() if tls else None)
        both = AsyncHttpProbe(path="/healthz", ssl_context=client_tls() if tls else None)
        assert sync(target)
        assert asyncio.run(both(target))
    expected = DOC_SERVER.sub(live.address, url)
    for path, headers in live.requests:
        assert f"{'https' if tls else 'http'}://{headers['Host']}{path}" == expected
    assert len(live.requests) == 2


# -- starting an AsyncHealthChecker ------------------------------------------------------------


def test_start_without_await_starts_checking() -> None:
    async def main() -> tuple[bool, list[str]]:
        probed = asyncio.Event()
        seen: list[str] = []

        async def probe(server: str) -> bool:
            seen.append(server)
            probed.set()
            return True

        checker = AsyncHealthChecker(FakeBalancer("a"), probe, interval=3600)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            checker.start()  # the await forgotten
            gc.collect()  # a coroutine never awaited would warn when collected
        running = checker.running
        await asyncio.wait_for(probed.wait(), 5.0)
        await checker.aclose()
        assert [str(w.message) for w in caught] == []
        return running, seen

    assert asyncio.run(main()) == (True, ["a"])


def test_await_start_still_starts_checking() -> None:
    async def probe(server: str) -> bool:
        return True

    async def main() -> bool:
        checker = AsyncHealthChecker(FakeBalancer("a"), probe, interval=3600)
        await checker.start()
        running = checker.running
        await checker.aclose()
        return running and not checker.running

    assert asyncio.run(main())


def test_start_outside_an_event_loop_names_the_mistake() -> None:
    async def probe(server: str) -> bool:
        return True

    checker = AsyncHealthChecker(FakeBalancer("a"), probe)
    with pytest.raises(RuntimeError) as raised:
        checker.start()
    message = str(raised.value)
    assert message.startswith(
        "AsyncHealthChecker.start() needs a running event loop: call it from async code "
        "(`await checker.start()` or `async with checker:`)"
    )
    assert not checker.running
    quoted = re.search(r"`RuntimeError:\s+(AsyncHealthChecker\.start\(\).*?) \(\.\.\.\)`", README)
    assert quoted is not None, "the Health section quotes the message"
    assert message.startswith(one_line(quoted.group(1)))
