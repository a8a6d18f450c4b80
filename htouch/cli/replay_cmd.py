"""`htouch replay`: replay an episode's actions on a robot, or render it to a video with its audio."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from htouch.cli import app
from htouch.cli.collect_cmd import EXAMPLE_RIG, ctrl_c_stops
from htouch.cli.common import DatasetOption, console, fmt_path, progress_bar, progress_to
from htouch.errors import DeviceError, HtouchError


@app.command()
def replay(
    episode: str = typer.Argument(None, help="Episode: a name (episode_12, 12) in the dataset, or a path "
                                  "(default: the newest episode of the dataset).", show_default=False),
    dataset: Path = DatasetOption,
    on: str = typer.Option("sim", "--on", help="Replay on the simulated rig (sim) or the real robot (robot)."),
    speed: float = typer.Option(1.0, "--speed", help="Pace relative to the recording; 0 = as fast as possible "
                                "(simulated rig only)."),
    to: tuple[str, Path] | None = typer.Option(None, "--to", metavar="video FILE",
                                        help="Render the episode to an MP4 (frames and mixed mono audio) "
                                        "instead of replaying it: --to video out.mp4.", show_default=False),
    config: Path = typer.Option(None, "--config", "-c", help="Rig file of the real robot (and its safety limits).",
                                show_default=False),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask before moving the real robot."),
    raw_audio: bool = typer.Option(False, "--raw-audio", help="Video: keep the audio at its recorded level "
                                   "(default: raised to a -1 dBFS peak)."),
) -> None:
    """Replay an episode's recorded actions through the safety filter on the simulated rig or the real
    robot (which asks first), reporting how closely the robot follows the recorded states; or render the
    episode to an MP4 video with its audio.

    Example: [bold]htouch replay episode_3 --on sim --speed 2[/]  or  [bold]htouch replay 3 --to video ep3.mp4[/]
    """
    from htouch.dataset.store import find_dataset, resolve_episode

    if episode is None:
        ds = find_dataset(dataset)
        indices = ds.episode_indices()
        if not indices:
            raise HtouchError(f"{fmt_path(ds.root)} has no episodes to replay")
        ep = ds.episode(indices[-1])
        console.print(f"the newest episode: {ep.name}", highlight=False)
    else:
        ep = resolve_episode(episode, dataset)
    if to is not None:
        _to_video(ep, to, not raw_audio)
        return
    if on not in ("sim", "robot"):
        raise HtouchError(f"--on must be sim or robot, not {on!r}")
    if on == "sim":
        _replay_sim(ep, speed, config)
    else:
        _replay_robot(ep, speed, config, yes)


def _to_video(ep, to: tuple[str, Path], normalize: bool) -> None:
    from htouch.dataset.video import export_video

    kind, out = to
    if kind != "video":
        raise HtouchError(f"--to takes `video FILE.mp4`, not {kind!r}")
    if out.suffix.lower() not in (".mp4", ".m4v", ".mov"):
        raise HtouchError(f"{out}: the video is written as MP4; name it FILE.mp4")
    n = len(ep.camera_times)
    with progress_to(f"rendering {ep.name}", n) as step:
        info = export_video(ep, out, normalize=normalize, progress=step)
    gain = f", audio raised {info.audio_gain_db:+.1f} dB" if info.audio_gain_db else ""
    audio = f" + {info.audio_codec} mono{gain}" if info.audio_codec else " (no audio)"
    console.print(f"[green]wrote[/] {fmt_path(info.path)}: {info.frames} frames, {info.duration_s:.1f} s at "
                  f"{info.fps:.1f} fps, {info.video_codec}{audio}", highlight=False)


def _limits(config: Path | None):
    from htouch.collector.config import load_rig_config
    from htouch.collector.safety import SafetyFilter

    cfg = load_rig_config(config) if config is not None else None
    return cfg, SafetyFilter(cfg.safety if cfg is not None else None)


def _run(ep, robot, safety, speed: float, label: str):
    from htouch.collector.replay import replay

    stop = []
    with ctrl_c_stops(lambda: stop.append(True), console.print), \
            progress_bar(f"replaying {ep.name} on {label}", len(ep.action_times)) as advance:
        done = [0]

        def step(k: int) -> None:
            advance(k - done[0])
            done[0] = k

        return replay(ep, robot, safety, speed=speed, progress=step, should_stop=lambda: bool(stop))


def _replay_sim(ep, speed: float, config: Path | None) -> None:
    from htouch.rigs import sim_for_episode

    _, safety = _limits(config)
    sim = sim_for_episode(ep, ep.attrs.get("task", "") or (ep.dataset.task if ep.dataset else ""))
    try:
        report = _run(ep, sim.robot, safety, speed, "the simulated rig")
        report.task_success = bool(sim.task.success())
    except DeviceError as e:
        raise HtouchError(f"the simulated rig failed during the replay: {e}") from None
    finally:
        sim.close()
    _print_report(ep, report)


def _replay_robot(ep, speed: float, config: Path | None, yes: bool) -> None:
    if config is None:
        raise HtouchError(f"replaying on the real robot needs its rig file: pass --config RIG.toml "
                          f"(start from {EXAMPLE_RIG})")
    if not 0 < speed <= 1:
        raise HtouchError("on the real robot --speed must be in (0, 1]: the per-step limits assume the recorded pace")
    cfg, safety = _limits(config)
    if cfg.kind != "real":
        raise HtouchError(f"{config} describes a {cfg.kind} rig; --on robot needs a real rig file")
    n, seconds = len(ep.action_times), (int(ep.action_times[-1]) - int(ep.action_times[0])) / 1e9
    from htouch.rigs import ROBOT_NAMES, build_robot

    where = f"the {ROBOT_NAMES[cfg.robot.kind]} at {cfg.robot.host}"
    if not yes and not typer.confirm(f"Replay {n} actions ({seconds / speed:.1f} s) of {ep.name} on {where}? "
                                     "The robot will move home, then move", default=False):
        console.print("nothing sent to the robot")
        raise typer.Exit(1)
    try:
        robot = build_robot(cfg.robot, safety=cfg.safety)
        robot.start()
    except DeviceError as e:
        raise HtouchError(f"cannot use the robot: {e}") from None
    try:
        report = _run(ep, robot, safety, speed, where)
    except DeviceError as e:
        raise HtouchError(f"the robot failed during the replay: {e}") from None
    finally:
        robot.stop()
    _print_report(ep, report)


def _print_report(ep, r) -> None:
    table = Table(title=f"replay of {ep.name}" + (" (stopped early)" if r.stopped else ""), title_justify="left",
                  show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("actions sent", f"{r.sent} of {r.actions}")
    table.add_row("time", f"{r.wall_s:.1f} s for {r.recorded_s:.1f} s recorded")
    clipped = ", ".join(f"{k} {v}" for k, v in sorted(r.clip_reasons.items()))
    table.add_row("safety filter", f"changed {r.clipped}" + (f" ({clipped})" if clipped else ""))
    table.add_row("robot errors", str(r.robot_errors))
    table.add_row("tracking error", f"mean {r.error_mm_mean:.1f} mm, p95 {r.error_mm_p95:.1f} mm, "
                  f"max {r.error_mm_max:.1f} mm, at the end {r.error_mm_final:.1f} mm")
    label = {True: "success", False: "failure", None: "unlabelled"}
    outcome = label[r.recorded_success]
    if r.task_success is not None:
        outcome += f"; the replay: task {'done' if r.task_success else 'not done'}"
    table.add_row("recorded", outcome)
    console.print(table)
