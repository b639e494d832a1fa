"""The command line: argument parsing, dispatch to a subcommand, and exit statuses.

Exit statuses: 0 on success; 2 for a usage error or a bad scenario (argparse's convention);
1 when something the run needs is missing (an optional dependency, a writable plot file) or
stdout closed early; 130 when interrupted. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from .. import __version__
from . import discover, serve
from ._errors import CommandError
from .simulate import command as simulate

__all__ = ["main", "version"]

_PROG = "loadbalancer"


def version() -> str:
    """What ``loadbalancer --version`` prints: the installed distribution's version.

    Run from a source tree that is not installed (``PYTHONPATH=src``), there is no
    distribution to ask, so it says so and gives the package's own ``__version__``.
    """
    # Imported here: importlib.metadata takes some 40 ms to import, which every other use of
    # the command would pay for nothing.
    from importlib import metadata

    try:
        return f"{_PROG} {metadata.version(_PROG)}"
    except metadata.PackageNotFoundError:
        return f"{_PROG} {__version__} (not installed: imported from source)"


class _Version(argparse.Action):
    """``--version``: print ``version()`` to stdout and exit 0, as argparse's own action."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str) -> None:
        super().__init__(
            option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, help=help
        )

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        print(version())
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description="Client-side load balancing for Python: tools around the library.",
    )
    parser.add_argument("--version", action=_Version, help="print the installed version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # Each command adds its own subparser and handler.
    simulate.add_parser(commands)
    discover.add_parser(commands)
    serve.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``loadbalancer`` command with ``argv`` (default: ``sys.argv[1:]``)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # argparse exits on --help (0) and on usage errors (2)
        return stop.code if isinstance(stop.code, int) else 2
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except CommandError as error:
        print(f"{_PROG} {args.command}: error: {error}", file=sys.stderr)
        return error.status
    except KeyboardInterrupt:
        print(f"{_PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`... | head`): nothing to report. Point stdout at devnull so
        # the interpreter's final flush does not fail again (the Python docs' recipe).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
