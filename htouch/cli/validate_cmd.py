"""`htouch validate`: check a dataset or an episode, optionally repairing crashed recordings first."""

from __future__ import annotations

import json
from itertools import groupby
from pathlib import Path

import typer
from rich.table import Table

from htouch.cli import app
from htouch.cli.common import DatasetOption, console, err_console, fmt_path, progress_bar
from htouch.dataset.repair import repair_incoming
from htouch.dataset.validate import ERROR, Report, resolve_target, validate_dataset

REPAIR_STYLE = {"salvaged": "green", "quarantined": "yellow", "skipped": "dim", "refused": "red"}


@app.command()
def validate(
    target: str = typer.Argument(None, show_default=False,
                                 help="Dataset directory, or one episode (episode_12, 12, or its path). "
                                      "Default: the dataset found as usual."),
    as_json: bool = typer.Option(False, "--json", help="Print the findings as a JSON list (stable keys)."),
    repair: bool = typer.Option(False, "--repair", help="First salvage (or quarantine) incomplete episodes "
                                "left in .incoming by a crash."),
    strict: bool = typer.Option(False, "--strict", help="Warnings fail too (exit 1)."),
    dataset: Path = DatasetOption,
) -> None:
    """Check episodes against the schema and for bad data: unreadable chunks, time stamps, gaps, drift,
    dead microphones, NaN, frozen camera, too-short episodes. Exit 0 if clean, 1 on errors (--strict:
    also on warnings), 2 if the input cannot be read at all.

    Example: [bold]htouch validate demo_data --repair[/]
    """
    ds, episodes = resolve_target(target, dataset)
    if repair:
        out = err_console if as_json else console
        results = repair_incoming(ds)
        for r in results:
            style = REPAIR_STYLE.get(r.action, "")
            out.print(f"[{style}]{r.action}[/] {r.episode}: {r.message}", highlight=False, soft_wrap=True)
        if not results:
            out.print("nothing to repair in .incoming")
    n = len(episodes) if episodes is not None else len(ds.episode_indices())
    with progress_bar(f"validating {n} episode(s)", n) as advance:
        report = validate_dataset(ds, episodes, progress=advance)
    if as_json:
        typer.echo(json.dumps([f.to_dict() for f in report.findings], indent=2))
    else:
        _print_report(report, strict)
    if report.failed(strict):
        raise typer.Exit(1)


def _print_report(report: Report, strict: bool) -> None:
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
