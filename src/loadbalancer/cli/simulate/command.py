"""``loadbalancer simulate``: its arguments, and the run from scenario to report.

Everything beyond argparse is imported when the command runs, so a missing optional
dependency is reported as such instead of breaking ``loadbalancer --help``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .._errors import CommandError, UsageError

if TYPE_CHECKING:
    from .scenario import Scenario

__all__ = ["add_parser", "run"]


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``simulate`` subcommand to ``commands``."""
    parser = commands.add_parser(
        "simulate",
        help="compare strategies on a simulated cluster",
        description=(
            "Run a discrete-event simulation of clients sending requests through the real "
            "LoadBalancer to simulated servers, once per strategy, and compare them. Without "
            "a SCENARIO file, runs the built-in default scenario."
        ),
    )
    parser.add_argument(
        "scenario", nargs="?", metavar="SCENARIO.toml", help="scenario file (default: built in)"
    )
    parser.add_argument("--seed", type=int, help="random seed (default: the scenario's, else 1)")
    parser.add_argument(
        "--strategies",
        metavar="A,B,...",
        help="compare only these: labels from the scenario, strategy names or aliases (p2c)",
    )
    parser.add_argument(
        "--duration",
        type=_positive_float,
        metavar="S",
        help="simulated seconds (overrides the scenario's, or supplies it)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--plot", metavar="FILE.png", help="also draw the results to FILE.png")
    parser.add_argument(
        "--quiet", action="store_true", help="no table, progress or messages (JSON still printed)"
    )
    parser.set_defaults(handler=run)


def _require(module: str, extra: str, why: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise CommandError(f"{why} needs {module}: pip install 'loadbalancer[{extra}]'")


def _load(path: str | None, duration: float | None) -> Scenario:
    if sys.version_info < (3, 11):
        _require("tomli", "cli", "reading scenarios")
    from .scenario import ScenarioError, default_scenario, load_scenario

    try:
        if path is None:
            return default_scenario(duration=duration)
        return load_scenario(path, duration=duration)
    except ScenarioError as error:
        if path is None:  # only --duration can make the built-in scenario wrong
            raise UsageError(str(error)) from None
        raise UsageError(f"{path}: {error}") from None
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror or error}") from None


def _select(scenario: Scenario, wanted: str) -> Scenario:
    """The scenario comparing only the strategies in ``wanted`` (comma-separated).

    A name is first a label of the scenario's strategies; else a strategy name or alias, which
    means what its canonical name means: the scenario's entry of that label, or else the
    strategy with default options. Either way an alias is reported under the canonical name.
    """
    from .registry import known_names, resolve
    from .scenario import StrategySpec

    by_label = {spec.label: spec for spec in scenario.strategies}
    specs: list[StrategySpec] = []
    for name in (part.strip() for part in wanted.split(",")):
        if not name:
            raise UsageError("--strategies: empty name in the list")
        canonical = resolve(name)
        if name in by_label:
            spec = by_label[name]
        elif canonical is not None:
            spec = by_label.get(canonical) or StrategySpec(canonical, canonical)
        else:
            labels = "".join(f"{label}, " for label in by_label if resolve(label) is None)
            raise UsageError(
                f"--strategies: unknown strategy {name!r} (choose from: {labels}{known_names()})"
            )
        if any(s.label == spec.label for s in specs):
            raise UsageError(f"--strategies: {name!r} given twice")
        specs.append(spec)
    return scenario.replace(strategies=tuple(specs))


def run(args: argparse.Namespace) -> int:
    """Run the simulation ``args`` describe and report it; return the exit status."""
    scenario = _load(args.scenario, args.duration)
    if args.strategies is not None:
        scenario = _select(scenario, args.strategies)
    table = not (args.json or args.quiet)
    # Check everything the output needs before the run, not after it.
    if table:
        _require("rich", "cli", "the table (use --json without it)")
    if args.plot is not None:
        _require("matplotlib", "plot", "--plot")
        folder = Path(args.plot).parent
        if Path(args.plot).suffix.lower() != ".png":  # it writes PNG, whatever the name says
            raise UsageError(f"--plot: draws a PNG: name it FILE.png, not {args.plot!r}")
        if not folder.is_dir():
            raise UsageError(f"--plot: directory {str(folder)!r} does not exist")

    if not args.quiet:
        where = "the built-in scenario: " if args.scenario is None else f"{args.scenario}: "
        for warning in scenario.warnings:
            print(f"loadbalancer simulate: warning: {where}{warning}", file=sys.stderr)

    from .engine import run_scenario
    from .scenario import ScenarioError

    try:
        if table and sys.stdout.isatty():
            from .progress import LazyProgress

            with LazyProgress() as progress:
                results = run_scenario(scenario, seed=args.seed, progress=progress)
        else:
            results = run_scenario(scenario, seed=args.seed)
    except ScenarioError as error:  # a trace that changed after it was checked
        raise UsageError(f"{args.scenario}: {error}") from None

    if args.json:
        from .report import to_json

        json.dump(to_json(scenario, results), sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif table:
        from .report import print_report

        print_report(scenario, results)
    if args.plot is not None:
        from .plot import plot_results

        try:
            plot_results(scenario, results, args.plot)
        except OSError as error:
            raise CommandError(f"--plot: cannot write {args.plot}: {error}") from None
        if not args.quiet:
            print(f"plot written to {args.plot}", file=sys.stderr)
    return 0
