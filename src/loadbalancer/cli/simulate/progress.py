"""A progress bar that shows itself only when a run is long enough to need one."""

from __future__ import annotations

import time
from types import TracebackType
from typing import TYPE_CHECKING, final

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

__all__ = ["LazyProgress"]


@final
class LazyProgress:
    """Called as ``progress(label, fraction)``; draws a rich bar once ``delay`` seconds passed.

    Short runs never show a bar, so their output is just the table. The bar is transient: it
    is erased when the run ends. Use it as a context manager.
    """

    __slots__ = ("_bar", "_console", "_delay", "_started", "_task")

    def __init__(self, console: Console | None = None, delay: float = 0.5) -> None:
        self._console = console
        self._delay = delay
        self._started = time.monotonic()
        self._bar: Progress | None = None
        self._task: TaskID | None = None

    def __call__(self, label: str, fraction: float) -> None:
        """Report that ``fraction`` of the run is done, now running strategy ``label``."""
        if self._bar is None:
            if time.monotonic() - self._started < self._delay:
                return
            self._start(label)
        assert self._bar is not None
        assert self._task is not None
        self._bar.update(self._task, completed=fraction, description=label)

    def _start(self, label: str) -> None:
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

        self._bar = Progress(
            TextColumn("simulating [bold]{task.description:<22}"),
            BarColumn(),
            TaskProgressColumn(),
            console=self._console,
            transient=True,
        )
        self._bar.start()
        self._task = self._bar.add_task(label, total=1.0)

    def __enter__(self) -> LazyProgress:
        self._started = time.monotonic()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.stop()
