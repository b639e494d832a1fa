"""Errors a command reports on one line of stderr, with the exit status they call for."""

from __future__ import annotations

__all__ = ["CommandError", "UsageError"]


class CommandError(Exception):
    """The command cannot do what it was asked, through no fault of the arguments: status 1."""

    status = 1


class UsageError(CommandError):
    """What the user asked for is wrong (a flag, a scenario file): status 2, as argparse."""

    status = 2
