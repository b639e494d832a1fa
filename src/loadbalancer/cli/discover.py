"""``loadbalancer discover SOURCE``: print a source's live membership as it changes.

The first thing to run when wiring a registry: it shows what a balancer fed by SOURCE would
hold, and every change after, until interrupted (``--once``: the first membership only).
Warnings from the source (entries skipped, files refused, registry outages) go to stderr.
"""

from __future__ import annotations

import argparse
import logging
import queue
import sys
import time
from typing import TextIO

from .._balancer import LoadBalancer
from ._errors import CommandError, UsageError

__all__ = ["add_parser", "run"]


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``discover`` subcommand to ``commands``."""
    parser = commands.add_parser(
        "discover",
        help="print a registry's live membership as it changes",
        description=(
            "Follow a discovery source and print its membership, then every change, as a "
            "balancer fed by it would see them. SOURCE is a URL: file:///path/servers.toml "
            "(or .json), dns://NAME:PORT, dns+srv://_service._tcp.NAME, "
            "etcd://HOST:PORT/PREFIX/."
        ),
    )
    parser.add_argument("source", metavar="SOURCE", help="the source's URL")
    parser.add_argument("--once", action="store_true", help="print the first membership and exit")
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        metavar="S",
        help="give up after S seconds without a first membership (default with --once: 10)",
    )
    parser.add_argument(
        "--max-servers",
        type=int,
        default=1000,
        metavar="N",
        help="the balancer's capacity: a larger membership is refused (default 1000)",
    )
    parser.set_defaults(handler=run)


def _now() -> str:
    return time.strftime("%H:%M:%S")


def _print_membership(out: TextIO, weights: dict[str, float], header: str) -> None:
    print(header, file=out)
    for server, weight in weights.items():
        print(f"  {server}  weight {weight:g}", file=out)
    out.flush()


def run(args: argparse.Namespace) -> int:
    """Follow ``args.source`` and print its memberships; see the module docstring."""
    from ..discovery import Discovery, MembershipChange, source_from_url

    try:
        source = source_from_url(args.source)
    except ValueError as error:
        raise UsageError(str(error)) from None
    except ImportError as error:  # the source's client library is an extra
        raise CommandError(f"{error}; install the extra it needs, as the README says") from None
    if args.max_servers < 1:
        raise UsageError(f"--max-servers must be at least 1, got {args.max_servers}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("loadbalancer.discovery")
    logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.WARNING)
    lb = LoadBalancer(max_servers=args.max_servers)
    timeout = args.timeout if args.timeout is not None else (10.0 if args.once else None)
    out = sys.stdout
    changes: queue.Queue[MembershipChange] = queue.Queue()

    def show(change: MembershipChange) -> None:
        # Printed by the main thread, so that a closed stdout (`| head`) and Ctrl-C reach
        # main() there; the weights are read now, while lb holds exactly this membership.
        changes.put(change)
        weights.put(lb.weights)

    weights: queue.Queue[dict[str, float]] = queue.Queue()
    try:
        with Discovery(lb, source, on_change=show) as runner:
            if not runner.wait_ready(timeout):
                raise CommandError(f"no membership from {source.name} within {timeout:g} s")
            if changes.empty():  # the first membership was empty: no change to show
                _print_membership(out, {}, f"{_now()} {source.name}: 0 servers")
            while True:
                change = changes.get()
                moves = [f"+{s}" for s in change.added] + [f"-{s}" for s in change.removed]
                moves += [f"~{s}" for s in change.reweighted]
                header = f"{_now()} {source.name}: {change.size} servers ({' '.join(moves)})"
                _print_membership(out, weights.get(), header)
                if args.once:
                    return 0
    finally:
        logger.removeHandler(handler)
