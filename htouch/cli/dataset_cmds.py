"""Dataset commands: synth, ls, pack."""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape

from htouch.cli import app
from htouch.cli.common import (
    DatasetArgument,
    LocalDatasetArgument,
    console,
    err_console,
    fmt_path,
    local_path,
    print_rows,
    progress_bar,
)
from htouch.dataset.schema import CameraSpec, StreamSpecs
from htouch.dataset.store import find_dataset
from htouch.errors import DatasetError, HtouchError


@app.command()
def synth(
    dataset: str = typer.Argument(..., help="Directory to write (new, or an existing synthetic dataset to extend)."),
    episodes: int = typer.Option(3, "--episodes", "-n", min=1, help="How many episodes to write."),
    seconds: float = typer.Option(8.0, "--seconds", min=1.0, help="Length of each episode."),
    seed: int = typer.Option(0, help="Seed; the same seed writes the same data."),
    task: str = typer.Option("zip", help="Task name stored in the dataset."),
    width: int = typer.Option(640, help="Camera width."),
    height: int = typer.Option(480, help="Camera height."),
    quality: int = typer.Option(90, min=1, max=100, help="JPEG quality of the frames."),
    lossless: bool = typer.Option(False, "--lossless", help="Store frames losslessly (PNG) instead of JPEG."),
) -> None:
    """Write a synthetic dataset with known contacts, frame drops and labels (no hardware needed).

    Example: [bold]htouch synth demo_data --episodes 3[/]
    """
    from htouch.dataset.synthetic import write_synthetic_dataset  # scipy: not needed to start the CLI

    dataset = local_path(dataset, "htouch synth")
    if width < 16 or height < 16:
        raise HtouchError("--width and --height must be at least 16 pixels")
    streams = StreamSpecs(name="synthetic", description="htouch synthetic generator",
                  camera=CameraSpec(width=width, height=height, codec="png" if lossless else "jpeg", quality=quality))
    with progress_bar(f"writing {episodes} synthetic episodes", episodes) as advance:
        ds = write_synthetic_dataset(dataset, episodes, task=task, seconds=seconds, seed=seed, streams=streams,
                                     progress=lambda _: advance())
    console.print(f"[green]wrote[/] {episodes} episodes to {fmt_path(ds.root)}")


@app.command("ls")
def ls(dataset: str = DatasetArgument,
       as_json: bool = typer.Option(False, "--json", help="Print the episodes as JSON (a list of objects).")) -> None:
    """List the episodes of a dataset: duration, frames, measured fps, audio, label and flags.

    A table on a terminal; tab-separated lines with a header when the output goes to a pipe or a file.

    Example: [bold]htouch ls demo_data[/]
    """
    from htouch.dataset.summary import episode_row  # zarr: not needed to start the CLI

    ds = find_dataset(dataset)
    split = ds.metadata.get("split", {})
    split_of = {i: name for name in ("train", "val") for i in split.get(name, [])}
    columns = [("episode", "right"), ("duration_s", "right"), ("frames", "right"), ("fps", "right"),
               ("audio_s", "right"), ("variation", "left"), ("success", "left"), ("split", "left"),
               ("flags", "left")]
    rows, refused = [], []
    for i in ds.episode_indices():
        try:  # a damaged episode is refused (not listed with made-up numbers); the others are still listed
            row = episode_row(ds.episode(i))
        except DatasetError as e:
            refused.append(str(e))
            continue
        rows.append([row.index, round(row.duration_s, 3), row.frames, round(row.fps, 2), round(row.audio_s, 3),
                     row.variation, row.success, split_of.get(row.index), row.flags if as_json else
                     ", ".join(row.flags)])

    def style(column: str, value: Any) -> str:
        if column == "success":
            return {True: "[green]yes[/]", False: "[red]no[/]", None: "[yellow]?[/]"}[value]
        if column in ("duration_s", "audio_s", "fps"):
            return f"{value:.1f}"
        return escape("" if value is None else str(value))

    print_rows(f"{fmt_path(ds.root)}  (task {ds.task}, rig {ds.streams.name})", columns, rows, as_json, style)
    incoming = ds.incoming_paths()
    if incoming:  # on stderr: the listing on stdout stays a listing (JSON, tab-separated lines)
        err_console.print(f"[yellow]{len(incoming)} incomplete episode(s) in .incoming[/] "
                      "(being recorded, or left by a crash: `htouch validate --repair`)")
    for line in refused:
        err_console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
    if refused:
        raise typer.Exit(2)


@app.command()
def pack(dataset: str = LocalDatasetArgument,
         episodes: list[str] = typer.Argument(None, show_default=False,
                                              help="Episodes to pack (episode_12 or 12). Default: every committed "
                                                   "episode not packed yet.")) -> None:
    """Store each committed episode as one file (`episode_000012.zip`) instead of a directory of one file per
    chunk; every command reads it as before, and so does plain zarr (docs/format.md, "Packed episodes").

    Each file is written under a temporary name, checked against the episode's checksum manifest, renamed into
    place, and only then is the directory removed: a crash at any point leaves the episode readable, and running
    the command again finishes the job. A damaged episode is left as it is and named (exit 2).

    Example: [bold]htouch pack demo_data[/]
    """
    from htouch.dataset.packed import pack_episode
    from htouch.dataset.schema import parse_episode_name

    ds = find_dataset(local_path(dataset, "htouch pack"))
    ds.writable("htouch pack")
    if episodes:
        indices = []
        for ref in episodes:
            index = parse_episode_name(ref)
            if index is None:
                raise HtouchError(f"{ref!r} is not an episode name (expected e.g. episode_12 or 12)")
            indices.append(index)
    else:
        indices = ds.episode_indices()
    refused = []
    with progress_bar(f"packing {len(indices)} episode(s)", len(indices)) as advance:
        for index in indices:
            try:
                console.print(escape(pack_episode(ds, index)), highlight=False, soft_wrap=True)
            except DatasetError as e:
                refused.append(str(e))
            advance()
    for line in refused:
        err_console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
    if refused:
        raise typer.Exit(2)
