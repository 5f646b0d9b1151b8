"""The terminal: rich consoles for status and results, progress bars, and one-line reports that
only the first of several launched processes prints."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)  # progress and status lines
stdout = Console()  # results: tables a user may pipe or save


@contextlib.contextmanager
def progress_bar(description: str, total: int, enabled: bool = True, status: bool = False) -> Iterator[Callable[..., None]]:
    """Yield ``advance(n=1, status=None)``; with ``status=True`` the bar shows a status line
    (loss, lr, throughput) that ``advance(status="...")`` replaces."""
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    ]
    if status:
        columns.append(TextColumn("{task.fields[status]}"))
    with Progress(*columns, console=console, disable=not enabled, transient=False) as progress:
        task = progress.add_task(description, total=total, status="")

        def advance(n: int = 1, status: str | None = None) -> None:
            progress.update(task, advance=n, **({"status": status} if status is not None else {}))

        yield advance


def announce(line: str) -> None:
    """A one-line status report (what a data preset used and dropped), printed once: by the
    launcher's rank 0 only when several processes run the same job."""
    if launch_rank() == 0:
        console.print(line, markup=False, highlight=False, soft_wrap=True)  # one line, however long


def launch_rank() -> int:
    """This process's global rank as the launcher set it (torchrun / accelerate launch: RANK;
    mpirun: PMI_RANK or OMPI_COMM_WORLD_RANK), 0 when not launched as several processes. Read
    from the environment, so it is known before any process group exists (Hydra starts first)."""
    for name in ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0
