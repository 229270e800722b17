"""Progress bars for ``.map`` and image builds: shown on a terminal with output enabled, never in logs.

rich is imported only when a bar is shown, so importing minimodal stays light.
"""

from __future__ import annotations

import sys
from typing import Any

from .runtime import output_enabled


def wanted() -> bool:
    """Only when a person watches: output enabled (``minimodal run``) and stderr is a terminal."""
    return output_enabled() and sys.stderr.isatty()


class Bar:
    """A progress bar whose total may be learned late (a map's input count); a no-op when not wanted."""

    def __init__(self, description: str, total: int | None = None) -> None:
        self._progress: Any = None
        if not wanted():
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(file=sys.stderr),
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(description, total=total)

    def advance(self, n: int = 1, *, total: int | None = None) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=n, total=total)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
