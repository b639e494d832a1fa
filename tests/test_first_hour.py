"""A newcomer's first hour (issue 16): every step the README and the docs walk through holds.

Installing and checking the version, the package's own help, a full pool, the URL an HTTP
health probe asks for, starting an async checker, and the page on choosing a strategy.
"""

from __future__ import annotations

import asyncio
import doctest
import functools
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
from loadbalancer.cli.simulate.engine import run_scenario
from loadbalancer.cli.simulate.results import Results
from loadbalancer.cli.simulate.scenario import StrategySpec, default_scenario
from loadbalancer.strategies.registry import STRATEGIES

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


# -- choosing a strategy -----------------------------------------------------------------------


PAGE_PATH = ROOT / "docs" / "choosing-a-strategy.md"
PAGE = PAGE_PATH.read_text(encoding="utf-8")


def page_sections() -> dict[str, str]:
    """The page's strategy headings: canonical name to the heading's text after it."""
    return dict(re.findall(r"^## `(\w+)`: (.*)$", PAGE, re.M))


def test_the_readme_links_the_page_from_its_strategies_section() -> None:
    assert "(docs/choosing-a-strategy.md)" in section(README, "Strategies")


def test_the_page_covers_every_registered_strategy_by_name_and_class() -> None:
    sections = page_sections()
    assert list(sections) == list(STRATEGIES)
    for name, heading in sections.items():
        assert heading.startswith(f"`{STRATEGIES[name].__name__}("), name
        body = section(PAGE, f"`{name}`: {heading}")
        for part in ("**Use it**", "**Costs:**", "**In the simulator:**"):
            assert part in body, (name, part)


def test_the_readme_strategy_table_lists_every_registered_class() -> None:
    listed = set(re.findall(r"^\| `(\w+)\(", section(README, "Strategies"), re.M))
    assert listed == {cls.__name__ for cls in STRATEGIES.values()}


def test_the_pages_command_runs_every_registered_strategy() -> None:
    (names,) = re.findall(r"^loadbalancer simulate --strategies (\S+)$", PAGE, re.M)
    assert names.split(",") == list(STRATEGIES)


@functools.lru_cache(maxsize=1)
def simulated() -> Results:
    """The page's simulator run: the default scenario with every registered strategy."""
    scenario = default_scenario()
    by_label = {spec.label: spec for spec in scenario.strategies}
    specs = tuple(by_label.get(name) or StrategySpec(name, name) for name in STRATEGIES)
    return run_scenario(scenario.replace(strategies=specs))


def test_the_pages_simulator_figures_are_the_simulators() -> None:
    # The figures the page quotes, from the results themselves rather than from the table
    # `loadbalancer simulate` prints, so that the page does not depend on its layout.
    results = simulated()
    current = {}
    for result in results.strategies:
        latency = result.latency
        current[result.label] = [
            f"{latency.p50 * 1000:,.1f}",
            f"{latency.p99 * 1000:,.1f}",
            f"{result.error_rate * 100:.2f}%",
            str(result.peak_in_flight),
            f"{result.stickiness:.2f}",
        ]
    rows = re.findall(r"^\| `(\w+)` \| (.*) \|$", PAGE, re.M)
    quoted = {name: cells.split(" | ") for name, cells in rows}
    assert quoted == current, f"update the table in {PAGE_PATH.name}: {current}"
    requests = sum(r.requests for r in results.strategies) // len(results.strategies)
    assert f"{requests:,} requests over {results.duration:g} s" in one_line(PAGE)


def test_the_pages_claims_about_the_simulation_hold() -> None:
    results = simulated()
    run = {r.label: r for r in results.strategies}
    page = one_line(PAGE)

    def share(label: str, server: str) -> str:
        return f"{run[label].server(server).share * 100:.1f}%"

    # Each server's share of requests, as the page's prose quotes it.
    assert share("round_robin", "s01") == share("round_robin", "s02")
    quoted = (
        f"s01 gets the same {share('round_robin', 's01')} of requests",
        f"s01 gets its double share ({share('weighted_random', 's01')} of requests)",
        f"s01 gets {share('weighted_round_robin', 's01')})",
        f"it is sent fewer ({share('least_connections', 's05')} of them)",
        f"sends it {share('peak_ewma', 's05')} of requests without needing to eject it",
    )
    for phrase in quoted:
        assert phrase in page, f"the page no longer says {phrase!r}"
    assert {e.server for e in run["least_connections"].ejections} == {"s08"}
    assert "s05" not in {e.server for e in run["peak_ewma"].ejections}
    # "every failed request of the four strategies that ignore load, of maglev and of
    # rendezvous timed out at the slow s05" (s08's aside); "the load- and latency-aware ones
    # had no timeouts at all".
    blind = ("round_robin", "random", "weighted_random", "weighted_round_robin")
    for label in (*blind, "maglev", "rendezvous"):
        result = run[label]
        elsewhere = [s.server for s in result.servers if s.failures and s.server != "s08"]
        assert elsewhere == ["s05"], label
        assert result.server("s05").failures == result.timeouts, label
    for label in ("least_connections", "power_of_two_choices", "peak_ewma"):
        assert run[label].timeouts == 0, label
    # The bests and worsts the page names.
    assert max(run, key=lambda label: run[label].latency.p50) == "random"
    assert min(run, key=lambda label: run[label].latency.p50) == "least_connections"
    assert min(run, key=lambda label: run[label].latency.p99) == "peak_ewma"
    assert min(run, key=lambda label: run[label].error_rate) == "peak_ewma"
    assert min(run, key=lambda label: run[label].peak_in_flight) == "power_of_two_choices"
    assert max(run, key=lambda label: run[label].stickiness or 0.0) == "maglev"
    sticky = ("ring_hash", "maglev", "rendezvous")
    assert min(sticky, key=lambda label: run[label].latency.p99) == "rendezvous"
    ring = run["ring_hash"]
    s02 = ring.server("s02")
    first = ring.phases[0].shares[results.servers.index("s02")]
    assert (round(first * 100), s02.peak_in_flight, s02.failures, ring.failures) == (
        13,
        ring.peak_in_flight,
        903,
        1382,
    )
    assert "903 of the 1,382 failed requests were at s02" in page
    assert "s02 draws 13% of the requests of the first 10 s" in page
