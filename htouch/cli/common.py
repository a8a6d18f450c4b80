"""What every command module shares: the consoles, global flags, common options and progress bars."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console()
err_console = Console(stderr=True)


@dataclass
class _State:
    debug: bool = False


state = _State()

DatasetOption = typer.Option(None, "--dataset", "-d", help="Dataset directory (default: the current directory, "
                             "or the one dataset directly below it).", show_default=False)
DatasetArgument = typer.Argument(None, help="Dataset directory (default: the current directory, or the one "
                                 "dataset directly below it).", show_default=False)


@contextlib.contextmanager
def progress_bar(description: str, total: int) -> Iterator[callable]:
    """A rich progress bar; yields advance(n=1). Hidden when stdout is not a terminal."""
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=False, disable=not err_console.is_terminal) as p:
        task = p.add_task(description, total=total)
        yield lambda n=1: p.advance(task, n)


def fmt_path(p: Path) -> str:
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)
