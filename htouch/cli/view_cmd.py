"""`htouch view`: one episode in the rerun viewer, saved to an .rrd, served on loopback, or in a spawned viewer."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import typer

from htouch.cli import app
from htouch.cli.common import DatasetOption, console, err_console, fmt_path, progress_to
from htouch.errors import HtouchError

DEFAULT_PORT = 9876  # rerun's own default gRPC port


@app.command()
def view(
    episode: str = typer.Argument(..., help="Episode name (episode_12, 12) or path to an episode directory."),
    dataset: Path = DatasetOption,
    save: Path = typer.Option(None, "--save", help="Write the recording to this .rrd file instead of showing it "
                              "(for machines without a display; open it with `rerun FILE.rrd`).",
                              show_default=False),
    serve: bool = typer.Option(False, "--serve", help="Serve the recording over gRPC on 127.0.0.1 (this machine "
                               "only; reach it through an SSH tunnel) until Ctrl-C, instead of spawning a viewer."),
    port: int = typer.Option(DEFAULT_PORT, "--port", min=0, max=65535, help="--serve and the spawned viewer: "
                             "the gRPC port on 127.0.0.1 (0: any free port)."),
) -> None:
    """Scrub one episode in the rerun viewer: frames, each microphone's waveform, the log-mel spectrogram,
    state, actions, teleop readings and events, each on the timeline [bold]time[/] by its own time stamps.

    Without --save or --serve a rerun viewer is spawned (it needs a display); everything listens on 127.0.0.1 only.
    See docs/interop.md.

    Example: [bold]htouch view episode_3 --save ep3.rrd[/]
    """
    from htouch.dataset.store import resolve_episode
    from htouch.interop import rerun_view

    if save is not None and serve:
        raise HtouchError("--save and --serve exclude each other")
    if save is not None:  # before reading anything: a missing directory is the user's to fix
        if not save.parent.is_dir():
            raise HtouchError(f"--save {save}: directory {save.parent} does not exist")
        if save.exists() or save.is_symlink():
            raise HtouchError(f"--save {save}: already exists; choose a new path")
    elif not serve:
        if not rerun_view.has_display():
            raise HtouchError("no display here (DISPLAY and WAYLAND_DISPLAY are unset): use --save FILE.rrd and open "
                              "it where there is one, or --serve")
        if shutil.which("rerun") is None:
            raise HtouchError("the rerun viewer is not on PATH (pip install rerun-sdk); or use --save FILE.rrd")
    ep = resolve_episode(episode, dataset)
    n = len(ep.camera_times)
    with progress_to(f"logging {ep.name}", n) as step:
        if save is not None:
            rows = rerun_view.save_rrd(ep, save, progress=step)
            console.print(f"[green]wrote[/] {fmt_path(save)}: {len(rows)} entities, {sum(rows.values())} rows; "
                          f"open it with `rerun {save}`", highlight=False)
            return
        rec, uri, rows = rerun_view.serve(ep, port, progress=step)
    if serve:
        console.print(f"serving {ep.name} at {uri} (127.0.0.1 only): on this machine `rerun {uri}`; from another, "
                      "tunnel the port (ssh -L) first. Ctrl-C stops.", highlight=False)
        _wait(None)
    else:
        viewer = subprocess.Popen(["rerun", "--bind", "127.0.0.1", "--port", "auto", uri])
        err_console.print(f"viewer started (pid {viewer.pid}); close it or press Ctrl-C to stop serving")
        _wait(viewer)
    rec.disconnect()


def _wait(viewer: subprocess.Popen | None) -> None:
    """Keep the process (and so the server) alive until the viewer exits or Ctrl-C."""
    try:
        while viewer is None or viewer.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        if viewer is not None:
            viewer.terminate()
