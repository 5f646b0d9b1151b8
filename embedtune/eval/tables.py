"""Tables of metrics for the terminal: a model before and after training, side by side."""

from __future__ import annotations

from rich.table import Table


def change_cell(change: float) -> str:
    """A signed difference, green when it rose and red when it fell."""
    color = "green" if change > 0 else "red" if change < 0 else ""
    return f"[{color}]{change:+.4f}[/]" if color else f"{change:+.4f}"


def comparison_table(title: str, before: dict | None, after: dict) -> Table:
    """Metrics of the starting model and the trained one, side by side, with their change."""
    table = Table(title=title)
    table.add_column("metric")
    if before is not None:
        table.add_column("base", justify="right")
    table.add_column("fine-tuned", justify="right")
    if before is not None:
        table.add_column("change", justify="right")
    for name, value in after.items():
        if before is None:
            table.add_row(name, f"{value:.4f}")
        else:
            table.add_row(name, f"{before[name]:.4f}", f"{value:.4f}", change_cell(value - before[name]))
    return table
