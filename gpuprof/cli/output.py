"""Printing records as tables for people (rich) and as JSON for machines."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence

from rich.console import Console
from rich.table import Table

# Without a terminal (CI logs, pipes) rich would fold tables to 80 columns.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
_TEXT_COLUMNS = ("kernel", "impl", "dtype", "status", "error", "model", "ceiling", "value")


def fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}"
    return str(value)


def print_table(rows: Sequence[Mapping], columns: Sequence[str], title: str | None = None) -> None:
    """One row per record; columns absent from every row are dropped."""
    columns = [c for c in columns if any(r.get(c) is not None for r in rows)]
    table = Table(title=title, show_edge=False, header_style="bold")
    for c in columns:
        table.add_column(c, justify="left" if c in _TEXT_COLUMNS else "right")
    for r in rows:
        table.add_row(*(fmt(r.get(c)) for c in columns))
    console.print(table)


def print_json(obj: object) -> None:
    click_echo(json.dumps(obj, indent=2, default=str))


def click_echo(text: str) -> None:
    import click

    click.echo(text)
