"""Tables of metrics for the terminal: a model before and after training, side by side."""

from __future__ import annotations

from rich.table import Table


def number_cell(value: float | None) -> str:
    """A metric to 4 decimals; "n/a" where it is undefined (read back from JSON as null)."""
    return "n/a" if value is None else f"{value:.4f}"


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
            table.add_row(name, number_cell(value))
        else:
            known = value is not None and before.get(name) is not None
            table.add_row(name, number_cell(before.get(name)), number_cell(value), change_cell(value - before[name]) if known else "n/a")
    return table
