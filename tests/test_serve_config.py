"""`loadbalancer serve` configuration: flags and TOML files into ProxySettings, every bad file
one line naming the field, and reloads that keep each pool's balancer and its servers' state."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from loadbalancer import (
    HedgingPolicy,
    LoadBalancer,
    OutlierDetection,
    PeakEWMAStrategy,
    RingHashStrategy,
)
from loadbalancer.cli import main
from loadbalancer.serve._config import (
    ConfigError,
    ServeConfig,
    Upstreams,
    config_from_flags,
    load_config,
    parse_config,
)
from loadbalancer.serve._settings import Forwarding, Limits, Route, Sticky, Timeouts

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

EXAMPLE = """\
listen = ["127.0.0.1:8080"]
workers = 1

[admin]
listen = "127.0.0.1:9901"

[log]
access = "stdout"
level = "info"

[limits]
max_request_line = 8192
max_header_bytes = 32768
max_headers = 100
max_body = 10485760
max_connections = 10000

[timeouts]
client_header = 10.0
client_body = 60.0
keepalive = 75.0
upstream_connect = 5.0
upstream_read = 60.0
drain = 30.0

[forwarding]
trusted_hops = 1
style = "forwarded"
via = true

[pools.api]
strategy = "peak_ewma"
servers = { "127.0.0.1:9001" = 1, "127.0.0.1:9002" = 2 }
failure_statuses = [500, 502, 503, 504]

[pools.api.health]
type = "http"
path = "/health"
interval = 2.0
timeout = 1.0
rise = 2
fall = 3

[pools.api.outlier_detection]
consecutive_failures = 5
base_ejection_time = 30.0
max_ejection_percent = 10.0

[pools.api.retry]
attempts = 3
backoff_base = 0.025
per_try_timeout = 5.0
statuses = [502, 503, 504]
non_idempotent = false

[pools.api.retry_budget]
ratio = 0.2
reserve = 10

[pools.api.hedging]
delay = 0.05
attempts = 2

[pools.sessions]
strategy = { name = "ring_hash", hash = "ketama" }
servers = ["127.0.0.1:9101", "127.0.0.1:9102"]
sticky = { header = "X-User", cookie = "session" }

[pools.inventory]
strategy = "p2c"
discovery = "file:///etc/lb/inventory.toml"

[[routes]]
host = "Sessions.Example.com"
pool = "sessions"

[[routes]]
path_prefix = "/inventory/"
pool = "inventory"

[[routes]]
pool = "api"
"""

# The README's example configuration, read from the README itself: the one copy there is.
README_EXAMPLE = re.search(
    r"## Running it as a proxy.*?```toml\n(.*?)```",
    (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8"),
    re.S,
).group(1)  # type: ignore[union-attr]

MINIMAL = """\
[pools.web]
servers = ["127.0.0.1:9001"]
"""


async def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until ``predicate()`` holds, polling the loop; fail after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def parse(text: str) -> ServeConfig:
    return parse_config(tomllib.loads(text))


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    message = str(caught.value)
    assert "\n" not in message
    return message


# -- good files ---------------------------------------------------------------------------------


def test_the_example_file_parses_field_by_field() -> None:
    config = parse(EXAMPLE)
    assert config.listen == (("127.0.0.1", 8080),)
    assert config.admin == ("127.0.0.1", 9901)
    assert config.access_log.target == "stdout"
    assert config.limits == Limits()
    assert config.timeouts == Timeouts()
    assert config.forwarding == Forwarding(trusted_hops=1, style="forwarded", via=True)
    api, sessions, inventory = config.pools
    assert (api.name, api.strategy.name) == ("api", "peak_ewma")
    assert api.servers == (("127.0.0.1:9001", 1.0), ("127.0.0.1:9002", 2.0))
    assert api.failure_statuses == {500, 502, 503, 504}
    assert api.health is not None
    assert (api.health.type, api.health.path) == ("http", "/health")
    assert (api.health.rise, api.health.fall, api.health.interval) == (2, 3, 2.0)
    assert api.outlier_detection == OutlierDetection(consecutive_failures=5)
    assert (api.retry.attempts, api.retry.per_try_timeout) == (3, 5.0)
    assert api.retry_statuses == {502, 503, 504}
    assert (api.budget.ratio, api.budget.reserve) == (0.2, 10.0)
    assert api.hedging == HedgingPolicy(delay=0.05, attempts=2)
    assert sessions.strategy.options == (("hash", "ketama"),)
    assert sessions.sticky == Sticky(header="X-User", cookie="session")
    assert inventory.strategy.name == "power_of_two_choices"  # the alias, resolved
    assert inventory.discovery == "file:///etc/lb/inventory.toml"
    assert config.routes == (
        Route(pool="sessions", host="sessions.example.com"),
        Route(pool="inventory", path_prefix="/inventory/"),
        Route(pool="api"),
    )


def test_the_readme_example_parses(tmp_path: Path) -> None:
    path = tmp_path / "proxy.toml"
    path.write_text(README_EXAMPLE)
    config = load_config(path)
    assert [p.name for p in config.pools] == ["api", "sessions", "inventory"]
    assert [r.pool for r in config.routes] == ["sessions", "inventory", "api"]
    assert config.admin == ("127.0.0.1", 9901)
    assert main(["serve", "--config", str(path), "--check"]) == 0


def test_a_minimal_file_takes_the_defaults() -> None:
    config = parse(MINIMAL)
    assert config.listen == (("127.0.0.1", 8080),)
    assert config.admin is None
    assert config.routes == (Route(pool="web"),)  # one pool: everything goes to it
    (web,) = config.pools
    assert web.strategy.name == "round_robin"
    assert web.health is None
    assert web.outlier_detection is None
    assert web.hedging is None


def test_settings_built_from_the_example_hold_built_balancers(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.json"
    inventory.write_text('{"127.0.0.1:9201": 1}')
    text = EXAMPLE.replace("file:///etc/lb/inventory.toml", inventory.as_uri())

    async def scenario() -> None:
        upstreams = Upstreams()
        settings = await upstreams.apply(parse(text))
        try:
            assert await upstreams.wait_ready(5)
            api = settings.pools["api"]
            assert isinstance(api.lb.strategy, PeakEWMAStrategy)
            assert api.lb.weights == {"127.0.0.1:9001": 1.0, "127.0.0.1:9002": 2.0}
            assert api.retry.attempts == 3
            assert api.hedging is not None
            assert isinstance(settings.pools["sessions"].lb.strategy, RingHashStrategy)
            assert settings.pools["inventory"].lb.servers == ("127.0.0.1:9201",)
            assert settings.forwarding.style == "forwarded"
            assert [r.pool for r in settings.routes] == ["sessions", "inventory", "api"]
        finally:
            await upstreams.close()

    asyncio.run(scenario())


def test_load_config_reads_a_file_and_remembers_it(tmp_path: Path) -> None:
    path = tmp_path / "proxy.toml"
    path.write_text(MINIMAL)
    assert load_config(path).source == path
    path.write_text("[pools.web\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


# -- bad files: one line naming the field -------------------------------------------------------

BAD = [
    ("prots = 1\n" + MINIMAL, "prots: unknown key"),
    (
        'listen = "localhost"\n' + MINIMAL,
        'listen: must be HOST:PORT or [IPV6]:PORT, got "localhost"',
    ),
    ('listen = "127.0.0.1:99999"\n' + MINIMAL, "listen: the port must be a number from 0 to 65535"),
    ("workers = 0\n" + MINIMAL, "workers: must be a positive integer, got 0"),
    ("", "pools: missing"),
    ("[pools]\n", "pools: must hold at least one"),
    ("[pools.web]\n", "pools.web.servers: missing: list servers, or give a discovery URL"),
    ("[pools.web]\nservers = [1]\n", "pools.web.servers[0]: must be a string, not an integer"),
    ('[pools.web]\nservers = ["web1"]\n', "pools.web.servers[0]: must be HOST:PORT"),
    ('[pools.web]\nservers = ["a:1", "a:1"]\n', 'pools.web.servers[1]: duplicate server "a:1"'),
    (
        '[pools.web]\nservers = { "a:1" = 0 }\n',
        'pools.web.servers."a:1": must be a positive number',
    ),
    (
        '[pools.web]\nservers = ["a:1"]\nstrategy = "fastest"\n',
        'pools.web.strategy: unknown strategy "fastest"',
    ),
    (
        '[pools.web]\nservers = ["a:1"]\nstrategy = 3\n',
        "pools.web.strategy: must be a strategy name or a table",
    ),
    (
        '[pools.web]\nservers = ["a:1"]\nstrategy = { name = "maglev", colour = 1 }\n',
        "pools.web.strategy.colour: unknown option for maglev",
    ),
    (
        '[pools.web]\nservers = ["a:1"]\nstrategy = { name = "maglev", balance_factor = 0.5 }\n',
        "pools.web.strategy.balance_factor: ",
    ),
    ('[pools.web]\nservers = ["a:1"]\nweights = 1\n', "pools.web.weights: unknown key"),
    (
        '[pools.web]\nservers = ["a:1"]\n[pools.web.health]\ninterval = -1\n',
        "pools.web.health.interval: must be a positive number, got -1",
    ),
    (
        '[pools.web]\nservers = ["a:1"]\n[pools.web.health]\ntype = "udp"\n',
        'pools.web.health.type: must be one of "http", "tcp", got "udp"',
    ),
    (
        '[pools.web]\nservers = ["a:1"]\n[pools.web.health]\ntype = "tcp"\npath = "/x"\n',
        'pools.web.health.path: applies only to type = "http"',
    ),
    (
        '[pools.web]\nservers = ["a:1"]\n[pools.web.health]\npath = "health"\n',
        'pools.web.health.path: must start with "/"',
    ),
    (
        '[pools.web]\nservers = ["a:1"]\n[pools.web.health]\nexpect = [700]\n',
        "pools.web.health.expect[0]: must be an HTTP status from 100 to 599, got 700",
    ),
    (
        '[pools.web]\nservers = ["a:1"]\n[pools.web.health]\nrise = 1.5\n',
        "pools.web.health.rise: must be a positive integer, not a float",
    ),
    (
        '[pools.web]\nservers = ["a:1"]\n[pools.web.outlier_detection]\nconsecutive_failures = 0\n',
        "pools.web.outlier_detection.consecutive_failures: ",
    ),
    (
        '[pools.web]\nservers = ["a:1"]\n[pools.web.outlier_detection]\nejection = 3\n',
        "pools.web.outlier_detection.ejection: unknown key",
    ),
    (
        '[pools.web]\nservers = ["a:1"]\n[pools.web.retry]\nattempts = 9\n',
        "pools.web.retry.attempts: must be at most 5, got 9",
    ),
    (
        '[pools.web]\nservers = ["a:1"]\n[pools.web.retry]\nper_try_timeout = true\n',
        "pools.web.retry.per_try_timeout: must be a number, not a boolean",
    ),
    (
        '[pools.web]\nservers = ["a:1"]\n[pools.web.retry_budget]\nratio = 2\n',
        "pools.web.retry_budget.ratio: ",
    ),
    (
        '[pools.web]\nservers = ["a:1"]\n[pools.web.hedging]\nattempts = 2\n',
        "pools.web.hedging.delay: missing",
    ),
    (
        '[pools.web]\nservers = ["a:1"]\nsticky = { header = "X-User" }\n',
        "pools.web.sticky: applies only to the hashing strategies (ring_hash, maglev, rendezvous), "
        "not round_robin",
    ),
    (
        '[pools.web]\nservers = ["a:1"]\nsticky = {}\n',
        "pools.web.sticky: set header or cookie",
    ),
    (
        '[pools.web]\nservers = ["a:1"]\nslow_start = { window = 10 }\nstrategy = "maglev"\n',
        "pools.web.slow_start: does not apply to maglev",
    ),
    (
        '[pools.web]\nservers = ["a:1"]\ndiscovery = "file:///x.json"\n',
        "pools.web.servers: give servers or discovery, not both",
    ),
    (
        '[pools.web]\ndiscovery = "ftp://x/"\n',
        "pools.web.discovery: url 'ftp://x/': the scheme must be one of",
    ),
    (
        '[pools.web]\nservers = ["a:1"]\nmax_servers = 0\n',
        "pools.web.max_servers: must be a positive integer, got 0",
    ),
    (
        '[pools.web]\nservers = ["a:1", "b:1"]\nmax_servers = 1\n',
        "pools.web.servers: lists 2 servers, more than max_servers",
    ),
    (
        MINIMAL + '[[routes]]\npool = "api"\n',
        'routes[0].pool: unknown pool "api" (the pools are: web)',
    ),
    (MINIMAL + '[[routes]]\nhost = "a"\n', "routes[0].pool: missing"),
    (
        MINIMAL + '[[routes]]\npool = "web"\npath_prefix = "api"\n',
        'routes[0].path_prefix: must start with "/"',
    ),
    (
        MINIMAL + '[pools.two]\nservers = ["a:1"]\n',
        "routes: missing: with several pools",
    ),
    (MINIMAL + "[limits]\nmax_body = -1\n", "limits.max_body: must be a positive integer, got -1"),
    (MINIMAL + "[limits]\nmax_bodies = 1\n", "limits.max_bodies: unknown key"),
    (
        MINIMAL + '[timeouts]\ndrain = "30s"\n',
        "timeouts.drain: must be a positive number, not a string",
    ),
    (
        MINIMAL + '[forwarding]\nstyle = "both"\n',
        'forwarding.style: must be one of "x-forwarded", "forwarded"',
    ),
    (
        MINIMAL + "[forwarding]\ntrusted_hops = -1\n",
        "forwarding.trusted_hops: must be an integer >= 0",
    ),
    (MINIMAL + '[forwarding]\nvia_name = "a b"\n', "forwarding.via_name: must be a token"),
    (MINIMAL + "[admin]\n", "admin.listen: missing"),
    (MINIMAL + '[log]\nlevel = "loud"\n', 'log.level: must be one of "debug"'),
    (
        MINIMAL + "workers = 2\n",
        "pools.web.workers: unknown key; if 'workers' is meant for the top level, move it above",
    ),
]


@pytest.mark.parametrize(("text", "expected"), BAD, ids=[e.partition(":")[0] for _, e in BAD])
def test_a_bad_file_is_one_line_naming_the_field(text: str, expected: str) -> None:
    assert error_of(text).startswith(expected)


def test_the_command_reports_a_bad_file_on_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "proxy.toml"
    path.write_text('[pools.web]\nservers = ["a:1"]\nstrategy = "fastest"\n')
    assert main(["serve", "--config", str(path)]) == 2
    _, err = capsys.readouterr()
    assert err.count("\n") == 1
    assert err.startswith(
        f'loadbalancer serve: error: {path}: pools.web.strategy: unknown strategy "fastest"'
    )


def test_check_prints_the_pools(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "proxy.toml"
    path.write_text(EXAMPLE)
    assert main(["serve", "--config", str(path), "--check"]) == 0
    out, _ = capsys.readouterr()
    assert out == (
        "configuration ok: pools api (peak_ewma), sessions (ring_hash), "
        "inventory (power_of_two_choices); 3 routes\n"
    )


# -- flags --------------------------------------------------------------------------------------


def test_flags_make_one_pool() -> None:
    config = config_from_flags(
        listen=["127.0.0.1:0"],
        backends=["127.0.0.1:9001", "127.0.0.1:9002"],
        strategy="least_conn",
        admin=":9901",
        workers=2,
        access_log="off",
    )
    assert config.listen == (("127.0.0.1", 0),)
    assert config.admin == ("127.0.0.1", 9901)
    assert config.workers == 2
    assert config.access_log.target == "off"
    (pool,) = config.pools
    assert (pool.name, pool.strategy.name) == ("default", "least_connections")
    assert pool.servers == (("127.0.0.1:9001", 1.0), ("127.0.0.1:9002", 1.0))
    assert config.routes == (Route("default"),)


def test_flags_override_the_file() -> None:
    config = config_from_flags(listen=["0.0.0.0:8081"], admin="127.0.0.1:0", config=parse(EXAMPLE))
    assert config.listen == (("0.0.0.0", 8081),)
    assert config.admin == ("127.0.0.1", 0)
    assert [p.name for p in config.pools] == ["api", "sessions", "inventory"]


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({}, "--backend: missing: give at least one, or --config FILE"),
        ({"backends": ["nowhere"]}, "--backend: must be HOST:PORT"),
        ({"backends": ["a:1", "a:1"]}, '--backend: "a:1" given twice'),
        ({"backends": ["a:0"]}, "--backend: a server needs a port from 1 to 65535"),
        ({"backends": ["a:1"], "strategy": "fastest"}, '--strategy: unknown strategy "fastest"'),
        ({"backends": ["a:1"], "listen": ["a:b"]}, "--listen: the port must be a number"),
        ({"backends": ["a:1"], "workers": 0}, "--workers: must be at least 1, got 0"),
    ],
)
def test_bad_flags_name_the_flag(flags: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_flags(**flags)  # type: ignore[arg-type]
    assert str(caught.value).startswith(expected)


def test_backend_flags_do_not_mix_with_a_file() -> None:
    with pytest.raises(ConfigError, match="--backend: not with --config"):
        config_from_flags(backends=["a:1"], config=parse(MINIMAL))


def test_the_command_reports_bad_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--backend", "nowhere"]) == 2
    _, err = capsys.readouterr()
    assert (
        err
        == 'loadbalancer serve: error: --backend: must be HOST:PORT or [IPV6]:PORT, got "nowhere"\n'
    )


# -- reload -------------------------------------------------------------------------------------

TWO_POOLS = """\
[pools.api]
strategy = "least_connections"
servers = ["127.0.0.1:9001", "127.0.0.1:9002"]
[pools.api.outlier_detection]
consecutive_failures = 2

[pools.old]
servers = ["127.0.0.1:9101"]

[[routes]]
path_prefix = "/old/"
pool = "old"
[[routes]]
pool = "api"
"""

RELOADED = """\
[pools.api]
strategy = "least_conn"
servers = ["127.0.0.1:9002", "127.0.0.1:9003"]
[pools.api.outlier_detection]
consecutive_failures = 2
[pools.api.retry]
attempts = 3

[pools.new]
servers = ["127.0.0.1:9201"]

[[routes]]
path_prefix = "/new/"
pool = "new"
[[routes]]
pool = "api"
"""


def test_reload_keeps_a_pools_balancer_and_the_state_of_servers_that_stay() -> None:
    changes: list[tuple[set[str], set[str]]] = []

    async def scenario() -> None:
        upstreams = Upstreams(
            on_pools=lambda added, removed: changes.append((set(added), set(removed)))
        )
        first = await upstreams.apply(parse(TWO_POOLS))
        lb = first.pools["api"].lb
        held = lb.acquire()  # one request in flight, on whichever server
        for _ in range(2):
            lb.done("127.0.0.1:9002", ok=False)  # two failures: ejected
        lb.refresh()
        assert lb.stats()["127.0.0.1:9002"].ejected_until is not None
        second = await upstreams.apply(parse(RELOADED))
        assert second.pools["api"].lb is lb  # same pool, same strategy (an alias of it)
        assert second.pools["api"].retry.attempts == 3  # the pool's new retry policy
        assert lb.servers == ("127.0.0.1:9002", "127.0.0.1:9003")
        stats = lb.stats()
        assert stats["127.0.0.1:9002"].ejected_until is not None  # still ejected
        assert stats["127.0.0.1:9002"].failures == 2
        if held.server == "127.0.0.1:9002":
            assert stats["127.0.0.1:9002"].in_flight == 1
        held.release()
        assert set(second.pools) == {"api", "new"}
        assert [r.pool for r in second.routes] == ["new", "api"]
        await upstreams.close()

    asyncio.run(scenario())
    assert changes == [({"api", "old"}, set()), ({"new"}, {"old"})]


def test_reload_with_another_strategy_or_health_settings_builds_a_new_balancer() -> None:
    async def scenario() -> None:
        upstreams = Upstreams()
        first = await upstreams.apply(parse(TWO_POOLS))
        second = await upstreams.apply(parse(TWO_POOLS.replace("least_connections", "maglev")))
        assert second.pools["api"].lb is not first.pools["api"].lb
        assert second.pools["old"].lb is first.pools["old"].lb
        third = await upstreams.apply(
            parse(TWO_POOLS.replace("least_connections", "maglev").replace("= 2\n", "= 3\n"))
        )
        assert third.pools["api"].lb is not second.pools["api"].lb  # outlier detection changed
        await upstreams.close()

    asyncio.run(scenario())


def test_reload_starts_and_stops_health_checkers_and_discovery(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.json"
    inventory.write_text('["127.0.0.1:9301", "127.0.0.1:9302"]')
    checked = MINIMAL + '[pools.web.health]\ntype = "tcp"\ninterval = 0.2\ntimeout = 0.1\n'
    discovered = f'[pools.web]\ndiscovery = "{inventory.as_uri()}"\n'

    async def scenario() -> None:
        upstreams = Upstreams()
        await upstreams.apply(parse(MINIMAL))
        assert upstreams.health_status("web") == {}
        first = await upstreams.apply(parse(checked))
        # The first round runs at start: nothing listens on 9001, so it fails.
        await eventually(lambda: "127.0.0.1:9001" in upstreams.health_status("web"))
        assert upstreams.health_status("web")["127.0.0.1:9001"].failures >= 1
        second = await upstreams.apply(parse(discovered))
        assert second.pools["web"].lb is first.pools["web"].lb
        assert upstreams.health_status("web") == {}  # the checker stopped
        assert await upstreams.wait_ready(5)
        assert second.pools["web"].lb.servers == ("127.0.0.1:9301", "127.0.0.1:9302")
        (status,) = second.pools["web"].lb.stats().discovery
        assert status.running
        await upstreams.apply(parse(MINIMAL))  # back to a static list: the runner stops
        assert list(second.pools["web"].lb.servers) == ["127.0.0.1:9001"]
        assert not any(d.running for d in second.pools["web"].lb.stats().discovery)
        await upstreams.close()

    asyncio.run(scenario())


def test_a_pool_balancer_is_a_loadbalancer_with_the_pool_capacity() -> None:
    async def scenario() -> None:
        upstreams = Upstreams()
        settings = await upstreams.apply(
            parse(MINIMAL.replace("[pools.web]", "[pools.web]\nmax_servers = 64"))
        )
        lb = settings.pools["web"].lb
        assert isinstance(lb, LoadBalancer)
        assert lb.max_servers == 64
        await upstreams.close()

    asyncio.run(scenario())
