"""Rich progress bars shared by training, evaluation and encoding."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)  # progress and status lines
stdout = Console()  # results: tables a user may pipe or save


@contextlib.contextmanager
def progress_bar(description: str, total: int, enabled: bool = True, status: bool = False) -> Iterator[Callable[..., None]]:
    """Yield ``advance(n=1, **fields)``; with ``status=True`` the bar shows a ``status`` field
    (loss, lr, throughput) that ``advance(status="...")`` updates."""
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
    if status:
        columns.append(TextColumn("{task.fields[status]}"))
    with Progress(*columns, console=console, disable=not enabled, transient=False) as progress:
        task = progress.add_task(description, total=total, status="")

        def advance(n: int = 1, **fields) -> None:
            progress.update(task, advance=n, **fields)

        yield advance


def announce(line: str) -> None:
    """A one-line status report (what a data preset used and dropped), printed once: by the
    launcher's rank 0 only when several processes run the same job."""
    from embedtune.distributed import launch_rank

    if launch_rank() == 0:
        console.print(line, markup=False, highlight=False, soft_wrap=True)  # one line, however long
