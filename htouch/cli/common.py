"""What every command module shares: the consoles, global flags, common options and progress bars."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from htouch.dataset.location import refuse_url

console = Console()
err_console = Console(stderr=True)


@dataclass
class _State:
    debug: bool = False


state = _State()

DatasetOption = typer.Option(None, "--dataset", "-d", help="Dataset directory or URL (s3://, gs://, https://; "
                             "default: the current directory, or the one dataset directly below it).",
                             show_default=False)
DatasetArgument = typer.Argument(None, help="Dataset directory or URL (s3://, gs://, https://; default: the current "
                                 "directory, or the one dataset directly below it).", show_default=False)
LocalDatasetArgument = typer.Argument(None, help="Dataset directory (default: the current directory, or the one "
                                      "dataset directly below it).", show_default=False)


def local_path(value: str | None, command: str) -> Path | None:
    """A command-line path a command writes to: one line (exit 2) for a URL, which htouch only reads."""
    refuse_url(value, command)
    return None if value is None else Path(value)


@contextlib.contextmanager
def progress_bar(description: str, total: int) -> Iterator[callable]:
    """A rich progress bar; yields advance(n=1). Hidden when stdout is not a terminal."""
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=False, disable=not err_console.is_terminal) as p:
        task = p.add_task(description, total=total)
        yield lambda n=1: p.advance(task, n)


@contextlib.contextmanager
def progress_to(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """`progress_bar` for code that reports how far it is (k of total done) rather than each step."""
    with progress_bar(description, total) as advance:
        done = [0]

        def to(k: int) -> None:
            advance(k - done[0])
            done[0] = k

        yield to


def fmt_path(p: Path) -> str:
    """A path as the user is shown it: relative to the current directory when below it."""
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def print_rows(title: str, columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[Any]], as_json: bool,
               style: Callable[[str, Any], str] | None = None) -> None:
    """One listing, three ways: JSON (a list of objects keyed by column name, values as they are) with
    --json; tab-separated lines with a header when stdout is not a terminal (for cut, awk, a spreadsheet);
    otherwise a rich table titled `title`. `columns`: (name, "left" | "right"); `style(column, value)` may
    give a value its rich markup in the table."""
    if as_json:
        print(json.dumps([dict(zip((c for c, _ in columns), row, strict=True)) for row in rows], indent=2))
        return
    if not console.is_terminal:
        print("\t".join(c for c, _ in columns))
        for row in rows:
            print("\t".join("" if v is None else str(v) for v in row))
        return
    table = Table(title=title, title_justify="left")
    for name, justify in columns:
        table.add_column(name, justify=justify)
    for row in rows:
        table.add_row(*(style(c, v) if style else escape(str(v)) for (c, _), v in zip(columns, row, strict=True)))
    console.print(table)
