"""`htouch collect` and `htouch rig check`: record episodes on the simulated or the real rig."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Table

from htouch.cli import app
from htouch.cli.common import console, err_console, fmt_path, local_path
from htouch.errors import DeviceError, HtouchError

if TYPE_CHECKING:
    from htouch.collector.config import RigConfig

EXAMPLE_RIG = "rigs/example-real.toml"
EXIT_INTERRUPTED = 130

rig_app = typer.Typer(help="Check a rig: what its configuration asks for and what is connected.\n\n"
                      "Example: [bold]htouch rig check --config rigs/example-real.toml[/]",
                      no_args_is_help=True, rich_markup_mode="rich")
app.add_typer(rig_app, name="rig")


def rig_config(config: Path | None, rig: str | None) -> RigConfig:
    """The rig configuration from --config and --rig (no file: the simulated rig with defaults)."""
    from htouch.collector.config import RigConfig, load_rig_config  # scipy (mapping): not needed to start

    if rig is not None and rig not in ("sim", "real"):
        raise HtouchError(f"--rig must be sim or real, not {rig!r}")
    if config is None:
        if rig == "real":
            raise HtouchError(f"the real rig needs a rig file: pass --config RIG.toml (start from {EXAMPLE_RIG})")
        return RigConfig()
    cfg = load_rig_config(config)
    if rig is not None:
        cfg.kind = rig  # e.g. simulate a real rig's camera and microphones with --rig sim
    if cfg.kind == "real":
        cfg.check_real()
    return cfg


@contextlib.contextmanager
def ctrl_c_stops(request_stop, say) -> Iterator[None]:
    """The first Ctrl-C asks the recorder to stop (the episode in progress is thrown away, nothing committed
    is touched); a second one interrupts at once."""
    previous = signal.getsignal(signal.SIGINT)
    pressed = []

    def handler(signum, frame):
        if pressed:
            raise KeyboardInterrupt
        pressed.append(True)
        request_stop()
        say("stopping: the episode in progress is discarded (Ctrl-C again to force)")

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@app.command()
def collect(
    dataset: str = typer.Argument(None, help="Dataset directory to record into: created, or resumed if it "
                                   "exists (default: ./TASK-demos).", show_default=False),
    task: str = typer.Option(..., "--task", "-t", help="Task to record (on the simulated rig: zip, flip or scoop)."),
    rig: str = typer.Option(None, "--rig", help="sim or real (default: the rig file's kind; sim without one).",
                            show_default=False),
    config: Path = typer.Option(None, "--config", "-c", help=f"Rig file (TOML), e.g. a copy of {EXAMPLE_RIG}.",
                                show_default=False),
    episodes: int = typer.Option(10, "--episodes", "-n", min=1, help="Record until this many are committed."),
    operator: str = typer.Option(None, "--operator", help="scripted (sim default), keyboard, quest (real default) "
                                 "or human (the rig's human interface).", show_default=False),
    variation: str = typer.Option("train", "--variation", help="Scene variation on the simulated rig: train or test."),
    seed: int = typer.Option(0, "--seed", help="Seed of the simulated scenes and the scripted operator."),
    width: int = typer.Option(None, "--width", help="Override the camera width.", show_default=False),
    height: int = typer.Option(None, "--height", help="Override the camera height.", show_default=False),
    realtime: bool = typer.Option(None, "--realtime/--fast", help="Simulated rig: pace it to the wall clock, or run "
                                  "it as fast as it goes (default: real time for a person, fast for the scripted "
                                  "operator).", show_default=False),
    no_panel: bool = typer.Option(False, "--no-panel", help="Plain progress lines instead of the live panel."),
) -> None:
    """Record demonstrations: home, ready, record, then save as success / failure or discard and re-record.

    Without a rig file it records the simulated rig driven by the scripted operator. Operator keys: A (Enter)
    success, B (x) failure, joystick press (z) discard. Ctrl-C stops: the episode in progress is thrown away,
    committed ones are kept; running the same command again resumes the dataset.

    Example: [bold]htouch collect zip-demos --task zip --episodes 5[/]
    """
    from htouch.collector.loop import Recorder
    from htouch.dataset.store import Dataset
    from htouch.rigs import build_rig, resolve_operator

    root = local_path(dataset, "htouch collect") or Path(f"{task}-demos")
    cfg = rig_config(config, rig)
    for name, value in (("--width", width), ("--height", height)):
        if value is not None and value < 16:
            raise HtouchError(f"{name} must be at least 16 pixels")
    cfg.camera.width = width or cfg.camera.width
    cfg.camera.height = height or cfg.camera.height
    who = resolve_operator(cfg, operator)
    if config is None:
        console.print(f"no hardware configured: using the simulated rig and the {who} operator "
                      f"(record a real rig with --rig real --config RIG.toml)", highlight=False, soft_wrap=True)
    try:
        the_rig = build_rig(cfg, task, who, seed=seed, variation=variation, realtime=realtime)
    except DeviceError as e:
        raise HtouchError(f"cannot open the {cfg.kind} rig: {e}") from None
    try:
        ds = Dataset.open_or_create(root, task, the_rig.streams)
        resumed = ds.episode_indices()
        if resumed and the_rig.resume is not None:
            the_rig.resume(ds)
        console.print(f"{the_rig.description}; recording into {fmt_path(ds.root)}"
                      + (f" (resuming after {len(resumed)} episodes)" if resumed else ""),
                      highlight=False, soft_wrap=True)
        recorder = Recorder(the_rig, ds, cfg.control, cfg.mapping, cfg.safety, variation=variation,
                            start_on_clutch=the_rig.human)
        result = run_session(recorder, episodes, f"htouch collect: {task} ({the_rig.kind} rig, {who})", no_panel)
    finally:
        the_rig.close()

    session_summary(result, ds)
    if result.interrupted:
        lost = ("" if result.interrupted_index is None
                else f"episode {result.interrupted_index} discarded (not finished); ")
        err_console.print(f"[yellow]interrupted:[/] {lost}{len(result.committed)} episode(s) committed in "
                          f"{fmt_path(ds.root)}; run the same command to resume", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_INTERRUPTED)
    if result.error:
        raise HtouchError(result.error)


def run_session(recorder, episodes: int, title: str, no_panel: bool):
    """Run the recorder with the live panel (or plain lines) and Ctrl-C handling; a device failure is one line."""
    from htouch.collector.panel import LivePanel, PlainProgress

    rig = recorder.rig
    view = (PlainProgress(recorder, console) if no_panel or not console.is_terminal
            else LivePanel(recorder, console, title=title, help_text=rig.help))
    recorder.on_message = view.message
    with ctrl_c_stops(recorder.request_stop, view.message), view:
        try:
            return recorder.run(episodes)
        except DeviceError as e:
            raise HtouchError(f"the {rig.kind} rig failed: {e}") from None


def session_summary(result, ds) -> None:
    """The table of a recording session's episodes (collect and rollout print it at the end)."""
    if not result.outcomes:
        return
    table = Table(title=f"session: {len(result.committed)} committed, {len(result.discarded)} discarded",
                  title_justify="left")
    for col in ("episode", "result", "seconds", "frames", "dropped", "faults"):
        table.add_column(col, justify="right" if col in ("episode", "seconds", "frames", "dropped") else "left")
    style = {"success": "green", "failure": "red", "discarded": "dim", "unlabelled": "yellow"}
    for o in result.outcomes:
        faults = ", ".join(f"{k} {v}" for k, v in o.events.items())
        table.add_row(str(o.index), f"[{style.get(o.result, '')}]{o.result}[/]", f"{o.duration_s:.1f}",
                      str(o.frames), str(o.frames_dropped), faults)
    console.print(table)


@rig_app.command("check")
def rig_check(
    config: Path = typer.Option(None, "--config", "-c", help="Rig file (TOML) to check (default: the simulated rig).",
                                show_default=False),
    operator: str = typer.Option(None, "--operator", help="Check this operator's device instead of the file's.",
                                 show_default=False),
) -> None:
    """List what the rig file asks for and what is found: camera, microphones, teleop, robot. Exit 1 if
    something is missing.

    Example: [bold]htouch rig check --config rigs/example-real.toml[/]
    """
    from htouch.rigs import probe_real, probe_sim

    cfg = rig_config(config, None)
    rows = probe_sim() if cfg.kind == "sim" else probe_real(cfg, operator)
    where = fmt_path(Path(cfg.path)) if cfg.path else "no rig file: the simulated rig"
    table = Table(title=f"rig check: {where} ({cfg.kind})", title_justify="left")
    for col in ("device", "the config asks for", "found", ""):
        table.add_column(col)
    for device, wants, ok, found in rows:
        table.add_row(device, escape(wants), escape(found), "[green]OK[/]" if ok else "[bold red]MISSING[/]")
    console.print(table)
    missing = [device for device, _, ok, _ in rows if not ok]
    if missing:
        err_console.print(f"[red]missing:[/] {', '.join(missing)}", highlight=False)
        raise typer.Exit(1)
    console.print("[green]all devices found[/]")
