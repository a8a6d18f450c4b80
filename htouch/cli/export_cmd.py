"""`htouch export`: write a dataset in another tool's format (LeRobot v3.0, Diffusion Policy replay buffer);
`htouch import lerobot`: read a LeRobot v3.0 dataset into a new htouch dataset."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from htouch.cli import app
from htouch.cli.common import console, fmt_path, local_path, progress_bar
from htouch.errors import HtouchError
from htouch.interop import FORMATS


@app.command()
def export(
    dataset: str = typer.Argument(..., help="The htouch dataset to export (a directory or a URL).",
                                  show_default=False),
    out: str = typer.Argument(..., help="Where to write the export (must not exist).", show_default=False),
    format: str = typer.Option(..., "--format", "-f", help=f"Target format: {', '.join(FORMATS)}.",
                               show_default=False),
    vcodec: str = typer.Option(None, "--vcodec", help="lerobot: video encoder (default libsvtav1, AV1 as LeRobot "
                               "records; libx264 where PyAV has no SVT-AV1).", show_default=False),
    crf: int = typer.Option(30, "--crf", min=0, max=63, help="lerobot: video quality (lower is better, larger)."),
    quality: int = typer.Option(90, "--quality", min=1, max=100, help="dp: JPEG quality of the frames."),
) -> None:
    """Export a dataset for other tools: [bold]lerobot[/] (a LeRobot v3.0 dataset: parquet, AV1 MP4, the contact
    audio as a per-frame feature plus a lossless sidecar) or [bold]dp[/] (a Diffusion Policy / ManiWAV replay
    buffer: OUT.zarr.zip with camera0_rgb, robot0_*, mic_0.., action and meta/episode_ends).

    The dataset must pass `htouch validate` (warnings are fine). Frames are put on the format's fixed grid
    (frame_index / fps); a dropped frame repeats the previous one and is counted in the report. OUT is written
    into a temporary path beside it and renamed when complete. See docs/interop.md.

    Example: [bold]htouch export zip-demos zip-lerobot --format lerobot[/]
    or [bold]htouch export zip-demos zip.zarr.zip --format dp[/]
    """
    from htouch.dataset.store import Dataset

    out = local_path(out, "htouch export (its OUT)")
    if format not in FORMATS:
        raise HtouchError(f"unknown export format {format!r}; use one of {', '.join(FORMATS)}")
    if out.exists() or out.is_symlink():
        raise HtouchError(f"{out} already exists; export into a new path")
    ds = Dataset(dataset)
    n = len(ds.episode_indices())
    if format == "lerobot":
        from htouch.interop.lerobot import export_lerobot

        with progress_bar(f"exporting {n} episode(s) to LeRobot v3.0", n) as advance:
            report = export_lerobot(ds, out, vcodec=vcodec, crf=crf, progress=advance)
    else:
        from htouch.interop.dp import export_dp

        with progress_bar(f"exporting {n} episode(s) to a replay buffer", n) as advance:
            report = export_dp(ds, out, quality=quality, progress=advance)
    _print_report(report)


import_app = typer.Typer(
    help="Read another tool's dataset into a new htouch dataset (see docs/interop.md).\n\n"
         "Example: [bold]htouch import lerobot zip-lerobot zip-again[/]",
    no_args_is_help=True, rich_markup_mode="rich")
app.add_typer(import_app, name="import")


@import_app.command("lerobot")
def import_lerobot_cmd(
    src: Path = typer.Argument(..., help="The LeRobot v3.0 dataset directory (meta/, data/, videos/).",
                               show_default=False),
    out: Path = typer.Argument(..., help="The htouch dataset to create (must not exist).", show_default=False),
    camera: str = typer.Option(None, "--camera", help="The video feature to import (default "
                               "observation.images.camera, else the first).", show_default=False),
) -> None:
    """Import a LeRobot v3.0 dataset (parquet + MP4) as a new htouch dataset that validate, inspect and train read.

    LeRobot's frame timestamps become the time axis; frames, [bold]observation.state[/] and [bold]action[/] (7
    values) become the camera, state and action streams; split, task and success labels are kept. The audio of an
    htouch export comes back losslessly from its sidecar; a dataset without one has no audio streams (train it with
    --method vision-only). OUT is written into a temporary path beside it and renamed when complete.

    Example: [bold]htouch import lerobot zip-lerobot zip-again[/]
    """
    from htouch.interop.lerobot_import import import_lerobot, read_episodes, read_info

    if out.exists() or out.is_symlink():
        raise HtouchError(f"{out} already exists; import into a new path")
    read_info(src)
    n = len(read_episodes(src))
    with progress_bar(f"importing {n} episode(s) from LeRobot v3.0", n) as advance:
        r = import_lerobot(src, out, camera=camera, progress=advance)
    table = Table(title=f"LeRobot import {fmt_path(Path(r.out))}", title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("episodes", str(r.episodes))
    table.add_row("frames", f"{r.frames} from {r.rows} rows at {r.fps} fps ({r.camera_key})")
    table.add_row("audio", "lossless, from the export's sidecar" if r.audio == "sidecar" else "none (no audio "
                  "streams)")
    table.add_row("state", "ee_pose, joints, gripper_width" if r.state_layout == "htouch" else "state/joints")
    table.add_row("size", f"{r.bytes_out / 1e6:.1f} MB (LeRobot dataset: {r.bytes_in / 1e6:.1f} MB)")
    table.add_row("time", f"{r.seconds:.1f} s, {r.frames_per_s:.0f} frames/s")
    for note in r.notes:
        table.add_row("note", note)
    console.print(table)


def _print_report(r) -> None:
    table = Table(title=f"{r.format} export {fmt_path(Path(r.out))}", title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("episodes", str(r.episodes))
    table.add_row("frames", f"{r.rows} at {r.fps} fps (from {r.recorded_frames} recorded)")
    table.add_row("dropped frames", f"{r.repeated_frames} row(s) repeat the previous frame")
    if r.skipped_frames:
        table.add_row("skipped frames", f"{r.skipped_frames} recorded frame(s) fell in an earlier frame's period")
    if r.trimmed_rows:
        table.add_row("trimmed", f"{r.trimmed_rows} row(s) after the last action left out")
    if getattr(r, "video_codec", ""):
        table.add_row("video", r.video_codec)
    if getattr(r, "audio_rate_hz", 0):
        table.add_row("audio", f"{r.audio_samples_per_frame} samples a frame at {r.audio_rate_hz} Hz")
    table.add_row("size", f"{r.bytes_out / 1e6:.1f} MB (htouch episodes: {r.bytes_in / 1e6:.1f} MB)")
    table.add_row("time", f"{r.seconds:.1f} s, {r.rows_per_s:.0f} frames/s")
    for note in r.notes:
        table.add_row("note", note)
    console.print(table)
