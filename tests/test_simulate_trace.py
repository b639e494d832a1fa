"""Trace replay: arrivals.trace replays recorded arrival times, keys and service times."""

from __future__ import annotations

import json
import re
import runpy
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadbalancer.cli import main
from loadbalancer.cli.simulate import run_scenario, trace
from loadbalancer.cli.simulate.scenario import ScenarioError, load_scenario
from loadbalancer.cli.simulate.trace import TraceRows, scan_trace
from loadbalancer.cli.simulate.workload import make_workload

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "scenarios" / "replay.toml"
EXAMPLE_TRACE = ROOT / "examples" / "traces" / "requests.csv"
README = (ROOT / "README.md").read_text(encoding="utf-8")

SERVERS = """
[defaults]
capacity = 1000
latency = {{ mean = 5.0, distribution = "constant" }}
[[servers]]
name = "a"
[[servers]]
name = "b"
"""


def write(folder: Path, name: str, text: str, scenario: str = "") -> Path:
    """A trace ``name`` holding ``text``, and a scenario replaying it; returns the scenario."""
    (folder / name).write_text(text, encoding="utf-8")
    path = folder / "replay.toml"
    path.write_text(
        f'{scenario}\n[arrivals]\ntrace = "{name}"\n' + SERVERS.format(), encoding="utf-8"
    )
    return path


CSV = "time,key,service_time\n1000.0,u1,0.25\n1000.5,u2,0.5\n1001.0,u1,\n1003.0,,0.125\n"


# -- the example ---------------------------------------------------------------------------------


def test_the_example_trace_is_what_its_script_makes() -> None:
    script = runpy.run_path(str(ROOT / "examples" / "traces" / "make_requests.py"))
    lines = script["rows"](__import__("random").Random(2025))
    assert EXAMPLE_TRACE.read_text(encoding="utf-8") == "\n".join(lines) + "\n"


def test_the_example_replays_every_row_of_its_trace() -> None:
    scenario = load_scenario(EXAMPLE)
    rows = EXAMPLE_TRACE.read_text(encoding="utf-8").splitlines()[1:]
    first, last = float(rows[0].split(",")[0]), float(rows[-1].split(",")[0])
    assert scenario.arrivals.trace is not None
    assert scenario.duration == pytest.approx(last - first)  # no duration: the trace's span
    results = run_scenario(scenario)
    for result in results.strategies:
        assert result.requests == len(rows)
    assert results.strategy("ring_hash").stickiness == 1.0
    assert results == run_scenario(scenario)


def test_the_examples_burst_is_what_poisson_arrivals_miss() -> None:
    # The same cluster and mean rate, Poisson: no burst beyond capacity, so far less queueing.
    scenario = load_scenario(EXAMPLE)
    replayed = run_scenario(scenario).strategy("round_robin")
    poisson = scenario.replace(arrivals=type(scenario.arrivals)(scenario.arrivals.rate))
    drawn = run_scenario(poisson).strategy("round_robin")
    assert replayed.latency.mean > 3 * drawn.latency.mean


# -- what a trace replays ----------------------------------------------------------------------


def test_times_start_at_zero_and_keys_and_service_times_are_replayed(tmp_path: Path) -> None:
    scenario = load_scenario(write(tmp_path, "requests.csv", CSV))
    assert scenario.duration == 3.0  # the span: 1000.0 to 1003.0
    assert scenario.arrivals.rate == pytest.approx(4 / 3.0)
    workload = make_workload(scenario, 1)
    arrivals = list(workload.arrivals())
    assert arrivals == [(0.0, 0, 0.25), (0.5, 1, 0.5), (1.0, 0, None), (3.0, None, 0.125)]
    assert workload.key_names == ["u1", "u2"]
    assert list(workload.arrivals()) == arrivals  # the same for the next strategy
    result = run_scenario(scenario).strategies[0]
    # Recorded service times, not the servers' 5 s, except where the row has none.
    assert result.latency.p50 == 0.25
    assert result.latency.max == 5.0
    assert result.latency.mean == pytest.approx((0.25 + 0.5 + 5.0 + 0.125) / 4)


def test_jsonl_replays_as_csv_does(tmp_path: Path) -> None:
    lines = [
        {"time": 1000.0, "key": "u1", "service_time": 0.25},
        {"time": 1000.5, "key": "u2", "service_time": 0.5},
        {"time": 1001.0, "key": "u1", "service_time": None},
        {"time": 1003, "key": None, "service_time": 0.125},
    ]
    jsonl = "".join(json.dumps(line) + "\n" for line in lines) + "\n"
    from_json = load_scenario(write(tmp_path, "requests.jsonl", jsonl))
    from_csv = load_scenario(write(tmp_path, "requests.csv", CSV))
    assert list(make_workload(from_json, 1).arrivals()) == list(
        make_workload(from_csv, 1).arrivals()
    )
    assert run_scenario(from_json).strategies == run_scenario(from_csv).strategies


def test_duration_cuts_or_extends_the_replay(tmp_path: Path) -> None:
    path = write(tmp_path, "requests.csv", CSV)
    shorter = load_scenario(path, duration=0.75)
    assert [a[0] for a in make_workload(shorter, 1).arrivals()] == [0.0, 0.5]
    assert run_scenario(shorter).strategies[0].requests == 2
    longer = load_scenario(path, duration=10.0)
    assert longer.arrivals.rate == pytest.approx(0.4)
    assert run_scenario(longer).strategies[0].requests == 4


def test_a_trace_without_keys_may_draw_them_from_keys(tmp_path: Path) -> None:
    text = "time\n0\n0.1\n0.2\n0.3\n"
    scenario = load_scenario(write(tmp_path, "t.csv", text, "[keys]\npopulation = 3"))
    keys = [key for _, key, _ in make_workload(scenario, 1).arrivals()]
    assert len(keys) == 4
    assert all(key is not None and 0 <= key < 3 for key in keys)
    with pytest.raises(ScenarioError, match=r"^keys: requests\.csv has keys: remove \[keys\]"):
        load_scenario(write(tmp_path, "requests.csv", CSV, "[keys]\npopulation = 3"))


def test_the_trace_is_read_lazily(tmp_path: Path) -> None:
    # Rows after the first past the end of the run are never read: a bad one is no error.
    path = tmp_path / "t.csv"
    path.write_text("time\n0\n1\n2\n3\nnot a time\n", encoding="utf-8")
    assert scan_trace(path, "t.csv", 2.0).requests == 3
    with TraceRows(path, "t.csv") as rows:
        iterator = iter(rows)
        assert next(iterator) == (0.0, None, None)  # read without reaching the bad row
    with pytest.raises(ScenarioError, match=r"t\.csv:6: time"):
        scan_trace(path, "t.csv", None)


def test_a_trace_changed_after_its_check_is_an_error_not_a_crash(tmp_path: Path) -> None:
    path = write(tmp_path, "requests.csv", CSV)
    scenario = load_scenario(path)
    (tmp_path / "requests.csv").write_text(CSV + "1003.5,u3,0.1\n", encoding="utf-8")
    with pytest.raises(ScenarioError, match=r"^arrivals\.trace: requests\.csv changed since"):
        run_scenario(scenario.replace(duration=5.0))


def test_a_trace_over_the_request_cap_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trace, "MAX_REQUESTS", 3)
    with pytest.raises(ScenarioError) as caught:
        load_scenario(write(tmp_path, "requests.csv", CSV))
    assert str(caught.value) == (
        "arrivals.trace: requests.csv has more than 3 requests; a simulation runs at most 3 "
        "(a shorter duration)"
    )


rows = st.lists(
    st.tuples(
        st.floats(0, 1e6),
        st.one_of(st.none(), st.sampled_from(["u1", "u2", "a b", "ü"])),
        st.one_of(st.none(), st.floats(0, 100)),
    ),
    min_size=1,
    max_size=30,
).map(lambda drawn: sorted(drawn, key=lambda row: row[0]))


@settings(max_examples=50, deadline=None)
@given(rows=rows)
def test_csv_and_jsonl_read_back_what_was_written(
    tmp_path_factory: pytest.TempPathFactory,
    rows: list[tuple[float, str | None, float | None]],
) -> None:
    folder = tmp_path_factory.mktemp("trace")
    csv_lines = ["time,key,service_time"]
    csv_lines += [f"{t!r},{k or ''},{'' if s is None else repr(s)}" for t, k, s in rows]
    (folder / "t.csv").write_text("\n".join(csv_lines) + "\n", encoding="utf-8")
    objects = [{"time": t, "key": k, "service_time": s} for t, k, s in rows]
    text = "".join(json.dumps(o) + "\n" for o in objects)
    (folder / "t.jsonl").write_text(text, encoding="utf-8")
    start = rows[0][0]
    expected = [(t - start, k, s) for t, k, s in rows]
    for name in ("t.csv", "t.jsonl"):
        with TraceRows(folder / name, name) as read:
            assert list(read) == expected, name


# -- bad traces: one line naming the file, the line and the column -------------------------------

BAD = [
    (
        "bad time",
        "t.csv",
        "time,key\n1,a\nabc,b\n",
        "t.csv:3: time: must be a number of seconds, got 'abc'",
    ),
    ("time goes back", "t.csv", "time\n5\n4\n", "t.csv:3: time: 4 is before the row above's 5"),
    ("nan", "t.csv", "time\nnan\n", "t.csv:2: time: must be a finite number of seconds"),
    ("no time column", "t.csv", "key\na\n", 't.csv:1: no "time" column'),
    ("column twice", "t.csv", "time,time\n1,1\n", "t.csv:1: a column is named twice"),
    ("short row", "t.csv", "time,key\n1,a\n2\n", "t.csv:3: expected 2 columns (time, key), got 1"),
    (
        "negative service time",
        "t.csv",
        "time,service_time\n1,-0.5\n",
        "t.csv:2: service_time: must be from 0 to 1e+09 s, got -0.5",
    ),
    ("empty", "t.csv", "", "t.csv:1: empty: the first line must name the columns"),
    ("header only", "t.csv", "time\n", "t.csv has no requests"),
    ("one time", "t.csv", "time\n7\n7\n", "t.csv spans no time (one arrival time): set duration"),
    ("json not an object", "t.jsonl", "[1]\n", "t.jsonl:1: must be a JSON object"),
    ("json broken", "t.jsonl", '{"time": 1}\n{"time": \n', "t.jsonl:2: not valid JSON"),
    ("json key number", "t.jsonl", '{"time": 1, "key": 7}\n', "t.jsonl:1: key: must be a string"),
    (
        "json time string",
        "t.jsonl",
        '{"time": "1"}\n',
        't.jsonl:1: time: must be a number of seconds, got "1"',
    ),
    ("json no time", "t.jsonl", '{"time": 1}\n{"key": "a"}\n', 't.jsonl:2: no "time" field'),
    ("json empty", "t.jsonl", "\n", "t.jsonl has no requests"),
    (
        "unknown suffix",
        "t.txt",
        "time\n1\n",
        "t.txt: unknown format: name the file .csv or .jsonl or .ndjson",
    ),
]


@pytest.mark.parametrize(("name", "text", "line"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_a_bad_trace_is_one_line_naming_file_line_and_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, text: str, line: str
) -> None:
    path = write(tmp_path, name, text)
    assert main(["simulate", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"loadbalancer simulate: error: {path}: arrivals.trace: {line}"), err
    assert err.count("\n") == 1


# Bytes, as other tools write them: each used to end in a traceback.
BAD_BYTES = [
    (
        "latin-1 on line 2",
        "t.csv",
        b"time,key\n1,caf\xe9\n2,b\n",
        "t.csv:2: not UTF-8 text (byte 0xe9)",
    ),
    (
        "latin-1 on line 3",
        "t.csv",
        b"time,key\n1,a\n2,caf\xe9\n",
        "t.csv:3: not UTF-8 text (byte 0xe9)",
    ),
    ("latin-1 in the header", "t.csv", b"time,caf\xe9\n1\n", "t.csv:1: not UTF-8 text (byte 0xe9)"),
    (
        "latin-1 in json",
        "t.jsonl",
        b'{"time": 1}\n{"time": 2, "key": "caf\xe9"}\n',
        "t.jsonl:2: not UTF-8 text (byte 0xe9)",
    ),
    (
        "a field over the csv module's limit",
        "t.csv",
        b"time,key\n1,a\n2," + b"x" * 200_000 + b"\n",
        "t.csv:3: not valid CSV: field larger than field limit (131072)",
    ),
    (
        "a header over the csv module's limit",
        "t.csv",
        b"time," + b"x" * 200_000 + b"\n1,a\n",
        "t.csv:1: not valid CSV: field larger than field limit (131072)",
    ),
]


@pytest.mark.parametrize(
    ("name", "data", "line"), [c[1:] for c in BAD_BYTES], ids=[c[0] for c in BAD_BYTES]
)
def test_bad_bytes_are_one_line_naming_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, data: bytes, line: str
) -> None:
    path = write(tmp_path, name, "")
    (tmp_path / name).write_bytes(data)
    assert main(["simulate", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"loadbalancer simulate: error: {path}: arrivals.trace: {line}"), err
    assert err.count("\n") == 1


@pytest.mark.parametrize("name", ["t.csv", "t.jsonl"])
def test_a_byte_order_mark_is_accepted(tmp_path: Path, name: str) -> None:
    text = "time,key\n1,a\n2,b\n" if name == "t.csv" else '{"time": 1, "key": "a"}\n{"time": 2}\n'
    (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + text.encode())  # as Excel exports
    with TraceRows(tmp_path / name, name) as rows:
        assert list(rows) == [(0.0, "a", None), (1.0, "b" if name == "t.csv" else None, None)]


@pytest.mark.parametrize(
    ("name", "text", "warning"),
    [
        (
            "t.csv",
            "time,status,key,bytes\n1,200,a,10\n2,500,b,20\n",
            't.csv: columns "status", "bytes" ignored (a trace reads only time, key, service_time)',
        ),
        (
            "t.jsonl",
            '{"time": 1, "status": 200}\n{"time": 2, "key": "b", "path": "/x", "status": 5}\n',
            't.jsonl: fields "status", "path" ignored (a trace reads only time, key, service_time)',
        ),
    ],
)
def test_other_columns_are_ignored_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, text: str, warning: str
) -> None:
    """An access log's export carries more than a trace reads: replayed, and the rest named."""
    path = write(tmp_path, name, text)
    with TraceRows(tmp_path / name, name) as rows:
        assert [key for _, key, _ in rows] == [None if name == "t.jsonl" else "a", "b"]
    assert main(["simulate", str(path), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["strategies"][0]["requests"] == 2
    assert err == f"loadbalancer simulate: warning: {path}: arrivals.trace: {warning}\n"


def test_the_readme_says_how_many_requests_a_trace_may_replay() -> None:
    from loadbalancer.cli.simulate.limits import MAX_REQUESTS

    section = README.split("### Replaying recorded traffic", 1)[1].split("```", 1)[0]
    assert f"at most {MAX_REQUESTS:,} requests" in section
    assert "constant memory" not in section  # every latency is kept


def test_a_missing_trace_and_rate_with_trace_are_named(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('[arrivals]\ntrace = "gone.csv"\n' + SERVERS.format(), encoding="utf-8")
    with pytest.raises(ScenarioError, match=r"^arrivals\.trace: cannot read gone\.csv: No such"):
        load_scenario(path)
    path.write_text(
        '[arrivals]\nrate = 3.0\ntrace = "t.csv"\n' + SERVERS.format(), encoding="utf-8"
    )
    with pytest.raises(ScenarioError, match=r"^arrivals\.rate: set a rate or a trace, not both"):
        load_scenario(path)


def test_the_readmes_error_example_is_real(tmp_path: Path) -> None:
    example = re.search(r"such as `(requests\.csv:17: [^`]+)`", README)
    assert example is not None
    rows = "time\n" + "".join(f"{i}\n" for i in range(15)) + "abc\n"
    with pytest.raises(ScenarioError) as caught:
        load_scenario(write(tmp_path, "requests.csv", rows))
    assert str(caught.value) == f"arrivals.trace: {example.group(1)}"


# -- the README's nginx recipe ---------------------------------------------------------------

ACCESS_LOG = """\
1764547200.250|0.250|0.248|alice
1764547200.100|0.010|0.004, 0.006|bob
1764547200.400|0.002|-|-
1764547201.000|0.500|0.010 : 0.480|alice
1764547201.200|0.100|0.090|o"neil, jr
"""


def readme_recipe() -> str:
    section = README.split("### Replaying recorded traffic", 1)[1].split("\n## ", 1)[0]
    blocks: list[str] = re.findall(r"```sh\n(.*?)```", section, re.DOTALL)
    (block,) = [b for b in blocks if "awk" in b]
    return block


@pytest.mark.skipif(shutil.which("awk") is None, reason="needs awk")
def test_the_readmes_nginx_recipe_makes_a_trace(tmp_path: Path) -> None:
    (tmp_path / "trace.log").write_text(ACCESS_LOG, encoding="utf-8")
    subprocess.run(["sh", "-c", readme_recipe()], cwd=tmp_path, check=True)
    made = (tmp_path / "requests.csv").read_text(encoding="utf-8")
    assert made == (
        "time,key,service_time\n"
        '1764547200.000,"alice",0.248\n'  # arrived 0.250 s before it was logged
        '1764547200.090,"bob",0.006\n'  # the last upstream tried answered
        '1764547200.398,"",\n'  # no header, no upstream
        '1764547200.500,"alice",0.480\n'
        '1764547201.100,"o""neil, jr",0.090\n'  # a key with a quote and a comma, quoted
    )
    scenario = load_scenario(write(tmp_path, "requests.csv", made))
    assert scenario.arrivals.trace is not None
    assert scenario.arrivals.trace.keys == 3
    assert run_scenario(scenario).strategies[0].requests == 5
