"""`htouch validate`: check a dataset or an episode, optionally repairing crashed recordings first."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from itertools import groupby
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from htouch.cli import app
from htouch.cli.common import DatasetOption, console, err_console, fmt_path, local_path

if TYPE_CHECKING:
    from htouch.dataset.validate import Report

REPAIR_STYLE = {"committed": "green", "salvaged": "green", "quarantined": "yellow", "skipped": "dim", "refused": "red"}


@app.command()
def validate(
    target: str = typer.Argument(None, show_default=False,
                                 help="Dataset directory or URL, or one episode (episode_12, 12, or its path "
                                      "or URL). "
                                      "Default: the dataset found as usual."),
    as_json: bool = typer.Option(False, "--json", help="Print the findings as a JSON list (stable keys)."),
    repair: bool = typer.Option(False, "--repair", help="First salvage (or quarantine) incomplete episodes "
                                "left in .incoming by a crash (not for a dataset at a URL)."),
    strict: bool = typer.Option(False, "--strict", help="Warnings fail too (exit 1)."),
    quick: bool = typer.Option(False, "--quick", help="Do not hash the files against the episode's checksum "
                               "manifest (only check that they are there, with the listed sizes)."),
    dataset: str = DatasetOption,
) -> None:
    """Check episodes against the schema and for bad data: files against the checksum manifest, symbolic links
    and special files, unreadable chunks, time stamps, gaps, drift, dead microphones, NaN, frozen camera, too-short
    episodes. Exit 0 if clean, 1 on errors (--strict: also on warnings), 2 if the input cannot be read at all.

    Example: [bold]htouch validate demo_data --repair[/]
    """
    from htouch.dataset.repair import repair_incoming  # zarr: not needed to start the CLI
    from htouch.dataset.validate import ChecksumOptions, resolve_target, validate_dataset

    if repair:
        local_path(target, "htouch validate --repair")
        local_path(dataset, "htouch validate --repair")
    ds, episodes = resolve_target(target, dataset)
    if repair:
        out = err_console if as_json else console
        results = repair_incoming(ds)
        for r in results:
            style = REPAIR_STYLE.get(r.action, "")
            out.print(f"[{style}]{r.action}[/] {r.episode}: {r.message}", highlight=False, soft_wrap=True)
        if not results:
            out.print("nothing to repair in .incoming")
    paths = episodes if episodes is not None else [ds.episode_path(i) for i in ds.episode_indices()]
    with _progress(paths, hashing=not quick) as (advance, hashed):
        report = validate_dataset(ds, episodes, progress=advance,
                                  checksums=ChecksumOptions(contents=not quick, progress=hashed))
    if as_json:
        typer.echo(json.dumps([f.to_dict() for f in report.findings], indent=2))
    else:
        _print_report(report, strict)
    if report.failed(strict):
        raise typer.Exit(1)


@contextlib.contextmanager
def _progress(paths: list[Path], hashing: bool) -> Iterator[tuple[Callable[[], None], Callable[[int], None]]]:
    """Bars for the episodes checked and, when files are hashed, the bytes verified against the manifests
    (hidden when stderr is not a terminal); yields (advance one episode, advance n bytes hashed)."""
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
                  TextColumn("{task.fields[done]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                  console=err_console, disable=not err_console.is_terminal) as p:
        episodes = p.add_task(f"validating {len(paths)} episode(s)", total=len(paths), done="")
        p.update(episodes, done=f"0/{len(paths)}")

        def advance() -> None:
            p.advance(episodes)
            p.update(episodes, done=f"{int(p.tasks[episodes].completed)}/{len(paths)}")

        if not hashing:
            yield advance, lambda n: None
            return
        from htouch.dataset.manifest import manifest_bytes

        total = sum(manifest_bytes(path) for path in paths)
        files = p.add_task("verifying checksums", total=total, done="")

        def hashed(n: int) -> None:
            p.advance(files, n)
            p.update(files, done=f"{p.tasks[files].completed / 1e6:.0f}/{total / 1e6:.0f} MB")

        yield advance, hashed


def _print_report(report: Report, strict: bool) -> None:
    from htouch.dataset.validate import ERROR

    if report.findings:
        table = Table(title=f"validate {fmt_path(report.dataset)}", title_justify="left")
        for col, justify, ratio in [("episode", "left", None), ("severity", "left", None), ("check", "left", None),
                                    ("where", "left", 1), ("time s", "right", None), ("message", "left", 3)]:
            table.add_column(col, justify=justify, no_wrap=ratio is None, overflow="fold", ratio=ratio)
        for episode, group in groupby(report.findings, key=lambda f: f.episode):
            for k, f in enumerate(group):
                sev = "[bold red]error[/]" if f.severity == ERROR else "[yellow]warning[/]"
                table.add_row(episode if k == 0 else "", sev, f.check, f.path,
                              "" if f.time_s is None else f"{f.time_s:.3f}", f.message)
            table.add_section()
        console.print(table)
    for name in report.live:
        console.print(f"[dim]{name} is being recorded (skipped)[/]")
    colour = "red" if report.failed(strict) else ("yellow" if report.warnings else "green")
    note = " (--strict: warnings fail)" if strict and report.warnings else ""
    console.print(f"[bold {colour}]{len(report.episodes)} episode(s) checked: {report.errors} error(s), "
                  f"{report.warnings} warning(s){note}[/]")
