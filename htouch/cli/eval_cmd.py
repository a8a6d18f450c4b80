"""`htouch eval`, `htouch rollout` and `htouch experiment`: trained policies in closed loop."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from htouch.cli import app
from htouch.cli.collect_cmd import EXIT_INTERRUPTED, rig_config, run_session
from htouch.cli.common import console, err_console, fmt_path
from htouch.errors import HtouchError
from htouch.training.constants import DEFAULT_SEED, TIME_LIMIT_FACTOR

TIME_LIMIT_HELP = f"(default: {TIME_LIMIT_FACTOR:g} x the longest training demonstration)."
RunArgument = typer.Argument(..., help="Run directory of a trained policy (`htouch train --run`).")
EXECUTE_HELP = "h: actions executed per model call without re-planning (the paper: 2)."
PLANNER_HELP = ("sync: the policy plans in the control loop (the re-plan tick waits for it); async: beside it, "
                "re-planning every h ticks and skipping the actions whose tick passed while planning (docs/eval.md)")
PRECISION_HELP = ("The re-plans' arithmetic: float32 (as trained) or bfloat16 (about 2x faster on a CPU with AMX or "
                  "AVX512-BF16; docs/eval.md).")
PLAN_LATENCY_HELP = ("--planner async on the fast simulated clock: each plan is used this many ticks after it was "
                     "asked (default 2), deterministically.")


@contextlib.contextmanager
def _episode_bar(total: int, description: str) -> Iterator[Callable[[bool], None]]:
    """A progress bar over episodes with the running success count (hidden without a terminal)."""
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[ok]} succeeded"), TimeElapsedColumn(), TextColumn("eta"),
               TimeRemainingColumn())
    with Progress(*columns, console=err_console, disable=not err_console.is_terminal) as p:
        task = p.add_task(description, total=total, ok=0)
        count = [0]

        def advance(success: bool) -> None:
            count[0] += bool(success)
            p.update(task, advance=1, ok=count[0])

        yield advance


def _episode_table(result) -> Table:
    table = Table(title=f"{result.task} ({result.variation} variation): {result.n} episodes", title_justify="left")
    for col in ("episode", "scene", "result", "reward", "seconds", "end", "model calls"):
        table.add_column(col, justify="left" if col in ("result", "end") else "right")
    for e in result.episodes:
        table.add_row(str(e.index), "-" if e.scene is None else str(e.scene),
                      "[green]success[/]" if e.success else "[red]failure[/]", f"{e.reward:.2f}",
                      f"{e.duration_s:.1f}", e.end, str(e.model_calls))
    return table


@app.command("eval")
def eval_(
    run: Path = RunArgument,
    task: str = typer.Option(None, "--task", "-t", help="Task to run (default: the task the policy was trained on).",
                             show_default=False),
    episodes: int = typer.Option(50, "--episodes", "-n", help="Episodes (scenes 1..N of the seed)."),
    variation: str = typer.Option("train", "--variation", help="Scene looks: train or test."),
    seed: int = typer.Option(DEFAULT_SEED, "--seed", help="Seed of the scenes (the demonstrations' default is 0)."),
    execute: int = typer.Option(2, "--execute", help=EXECUTE_HELP),
    max_seconds: float = typer.Option(None, "--max-seconds", help=f"Time limit per episode {TIME_LIMIT_HELP}",
                                      show_default=False),
    record: Path = typer.Option(None, "--record", help="Keep the rollouts as episodes in this dataset.",
                                show_default=False),
    out: Path = typer.Option(None, "--out", "-o", help="Results file (default: RUN/eval-TASK-VARIATION.json, "
                             "with -AUDIO appended for an audio ablation).",
                             show_default=False),
    force: bool = typer.Option(False, "--force", help="Run the policy on a task it was not trained on."),
    threads: int = typer.Option(None, "--threads", help="CPU threads for the policy (default: one per core).",
                                show_default=False),
    audio: str = typer.Option("real", "--audio", help="What the policy hears: real, silent (digital silence) or "
                              "shuffled (another episode's audio at another time); the rollouts record the real "
                              "audio."),
    audio_from: Path = typer.Option(None, "--audio-from", help="Dataset that --audio shuffled takes its audio from "
                                    "(default: the run's training dataset).", show_default=False),
    planner: str = typer.Option("sync", "--planner", help=PLANNER_HELP + "."),
    plan_latency: int = typer.Option(None, "--plan-latency", help=PLAN_LATENCY_HELP, show_default=False),
    precision: str = typer.Option("float32", "--precision", help=PRECISION_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the results (as written to the results file) as "
                                 "JSON on stdout instead of the tables."),
) -> None:
    """Evaluate a policy closed-loop on the simulated rig: success rate with a Wilson 95 % interval, reward.

    The simulated rig gets the camera and audio the policy was trained on; each episode ends when the task
    succeeds or at the time limit. Writes the summary and every episode to a JSON file. --audio silent or
    shuffled ablates what the policy hears (docs/eval.md) and names the results file after it.

    Example: [bold]htouch eval runs/zip-ours --episodes 50 --variation test --audio shuffled[/]
    """
    from htouch.training.evaluate import EvalConfig, evaluate
    from htouch.training.run_dir import RunDir

    config = EvalConfig(run_dir=run, task=task, episodes=episodes, variation=variation, seed=seed, execute=execute,
                        max_seconds=max_seconds, record=record, force=force, threads=threads, audio=audio,
                        audio_from=audio_from, planner=planner, plan_latency=plan_latency,
                        precision=precision)
    with _episode_bar(episodes, f"eval {variation}") as advance:
        try:
            result = evaluate(config, on_episode=lambda e: advance(e.success))
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]: no results written")
            raise typer.Exit(EXIT_INTERRUPTED) from None
    path = out or RunDir(run).evaluation(result.task, variation, result.audio["condition"])
    result.write(path)
    if as_json:  # stdout holds only the JSON; where it was written goes to stderr
        print(json.dumps(result.to_dict(), indent=2))
        err_console.print(f"wrote {fmt_path(path)}", highlight=False, soft_wrap=True)
        return
    console.print(_episode_table(result))
    for note in result.notes:
        console.print(f"[dim]{note}[/]", highlight=False)
    if "heard" in result.audio:
        console.print(f"[dim]audio {result.audio['condition']}: the policy heard {result.audio['heard']}[/]",
                      highlight=False)
    console.print(f"[bold]{result.describe()}[/]; {fmt_path(path)}", highlight=False, soft_wrap=True)
    if record is not None:
        console.print(f"rollouts recorded in {fmt_path(record)}", highlight=False)


@app.command()
def rollout(
    run: Path = RunArgument,
    rig: str = typer.Option(None, "--rig", help="sim or real (default: the rig file's kind; sim without one).",
                            show_default=False),
    config: Path = typer.Option(None, "--config", "-c", help="Rig file (TOML) of the real rig.", show_default=False),
    task: str = typer.Option(None, "--task", "-t", help="Task (default: the task the policy was trained on).",
                             show_default=False),
    episodes: int = typer.Option(1, "--episodes", "-n", min=1, help="Rollouts to record."),
    record: Path = typer.Option(None, "--record", help="Dataset to record the rollouts into (default: RUN-rollouts "
                                "next to the run directory).", show_default=False),
    operator: str = typer.Option(None, "--operator", help="Who watches with a teleop, labelling with A / B: quest or "
                                 "keyboard (real rig: the rig file's); on the simulated rig none (default: the "
                                 "task's ground truth labels) or keyboard.", show_default=False),
    variation: str = typer.Option("train", "--variation", help="Simulated rig: scene looks, train or test."),
    seed: int = typer.Option(DEFAULT_SEED, "--seed", help="Simulated rig: seed of the scenes."),
    execute: int = typer.Option(2, "--execute", help=EXECUTE_HELP),
    max_seconds: float = typer.Option(None, "--max-seconds", help=f"Time limit per rollout {TIME_LIMIT_HELP}",
                                      show_default=False),
    realtime: bool = typer.Option(None, "--realtime/--fast", help="Simulated rig: pace it to the wall clock (default "
                                  "with a person watching) or run it as fast as it goes.", show_default=False),
    planner: str = typer.Option(None, "--planner", help=PLANNER_HELP + " (default: async when the rig runs in real "
                                "time, sync on the fast simulated clock).", show_default=False),
    plan_latency: int = typer.Option(None, "--plan-latency", help=PLAN_LATENCY_HELP, show_default=False),
    precision: str = typer.Option("float32", "--precision", help=PRECISION_HELP),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask before the real robot moves."),
    force: bool = typer.Option(False, "--force", help="Run the policy on a task it was not trained on."),
    no_panel: bool = typer.Option(False, "--no-panel", help="Plain progress lines instead of the live panel."),
) -> None:
    """Run a policy on the robot and record each rollout as an episode, with the live panel.

    On the real rig the operator confirms first, then starts each rollout by holding the grip (time to reset
    the scene) and stops and labels it with A (success) or B (failure); the controller's motion is ignored.
    Teleop silence holds the robot. On the simulated rig a rollout ends when the task succeeds or at the time
    limit, labelled by the task's ground truth. Every command passes the rig's safety filter.

    Example: [bold]htouch rollout runs/zip-ours --rig real --config rigs/lab.toml --episodes 5[/]
    """
    import dataclasses

    from htouch.cli.collect_cmd import session_summary
    from htouch.collector.devices import DeviceError
    from htouch.collector.loop import Recorder
    from htouch.collector.replay import command_tracking
    from htouch.dataset.store import Dataset
    from htouch.rigs import NO_OPERATOR, build_rig
    from htouch.training.evaluate import sim_rig_config, task_and_time_limit
    from htouch.training.policy_source import PolicySource, RunInfo, check_streams_match, planning_options

    cfg = rig_config(config, rig)
    info = RunInfo.read(run)
    task, limit, _ = task_and_time_limit(info, task, max_seconds, force)
    if cfg.kind == "sim":
        cfg = sim_rig_config(info, limit, base=cfg)
        who = operator or NO_OPERATOR
        if who not in (NO_OPERATOR, "keyboard"):
            raise HtouchError(f"--operator on the simulated rig: none or keyboard, not {who!r}")
    else:
        cfg.control = dataclasses.replace(cfg.control, max_episode_s=limit)
        who = operator
        if who == NO_OPERATOR:
            raise HtouchError("the real robot needs an operator who can stop it (--operator quest or keyboard)")
    root = record if record is not None else run.parent / f"{run.name}-rollouts"
    # bad flags fail before a rig opens (checked again after)
    paced = bool(realtime) or cfg.kind != "sim"
    planning_options(planner or ("async" if paced else "sync"), paced, plan_latency, precision)
    try:
        the_rig = build_rig(cfg, task, who, seed=seed, variation=variation, realtime=realtime)
    except DeviceError as e:
        raise HtouchError(f"cannot open the {cfg.kind} rig: {e}") from None
    try:
        for note in check_streams_match(info, the_rig.streams):
            err_console.print(f"[yellow]note:[/] this rig's {escape(note)}", highlight=False)
        source = PolicySource.from_run(run, cfg.safety, the_rig.streams.audio, execute,
                                       operator=the_rig.operator != NO_OPERATOR, start_on_clutch=the_rig.human,
                                       mapping=cfg.mapping, task_success=the_rig.task_success,
                                       task_progress=the_rig.task_progress, task_failed=the_rig.task_failed,
                                       **planning_options(planner or ("async" if the_rig.realtime else "sync"),
                                                          the_rig.realtime, plan_latency, precision))
        the_rig.closers.append(source.close)
        ds = Dataset.open_or_create(root, task, the_rig.streams)
        if the_rig.kind == "real" and not yes:
            typer.confirm(f"The robot will move on its own, driven by the {info.config.method} policy of "
                          f"{fmt_path(run)} (task {task}), for {episodes} rollout(s) of up to {limit:g} s. "
                          "Hold the grip to start each one; A / B stop it. Go on?", abort=True)
        console.print(f"{the_rig.description}; policy {info.config.method} from {fmt_path(run)} (h = {execute}, "
                      f"{source.episode_info()['policy']['planning']} planning); "
                      f"recording into {fmt_path(ds.root)}", highlight=False, soft_wrap=True)
        recorder = Recorder(the_rig, ds, cfg.control, cfg.mapping, cfg.safety, variation=variation, source=source)
        result = run_session(recorder, episodes, f"htouch rollout: {info.config.method} on {task} "
                             f"({the_rig.kind} rig)", no_panel)
    finally:
        the_rig.close()
    session_summary(result, ds)
    for index in result.committed:  # how closely the arm followed the policy's commands
        tracking = command_tracking(ds.episode(index))
        if tracking is not None:
            console.print(f"episode {index}: {tracking.describe()}", highlight=False)
    rewards = [o.info["reward"] for o in result.outcomes if "reward" in o.info]
    if rewards:
        console.print(f"mean reward {sum(rewards) / len(rewards):.2f} over {len(rewards)} rollout(s)")
    if result.interrupted:
        err_console.print(f"[yellow]interrupted:[/] {len(result.committed)} rollout(s) committed in "
                          f"{fmt_path(ds.root)}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_INTERRUPTED)
    if result.error:
        raise HtouchError(result.error)


def _csv(value: str, what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise HtouchError(f"{what} must name at least one")
    return items


@app.command()
def experiment(
    out: Path = typer.Option(Path("results.md"), "--out", "-o", help="Markdown results file."),
    work: Path = typer.Option(None, "--work", help="Work directory: demonstrations, runs, evaluations (default: "
                              "OUT without its suffix + '-work'); an existing one is continued.", show_default=False),
    tasks: str = typer.Option("zip,flip,scoop", "--tasks", help="Comma-separated tasks."),
    methods: str = typer.Option("ours,vision-only,byol-a", "--methods", help="Comma-separated methods."),
    demos: int = typer.Option(8, "--episodes-per-task", "--demos", help="Successful demonstrations per task."),
    eval_episodes: int = typer.Option(10, "--eval-episodes", help="Evaluation episodes per method, task, variation."),
    variations: str = typer.Option("train,test", "--variations", help="Comma-separated variations (looks) to "
                                   "evaluate on (test costs the most: a failing episode runs to the time limit)."),
    preset: str = typer.Option("tiny", "--preset", help="Network size: tiny or paper."),
    epochs: int = typer.Option(5, "--epochs", help="Training epochs per method."),
    batch_size: int = typer.Option(32, "--batch-size", "-b", help="Training batch size."),
    stride: int = typer.Option(1, "--stride", help="Training: a sample at every n-th camera frame."),
    dropout: float = typer.Option(None, "--dropout", help="Training: dropout (default: the preset's).",
                                  show_default=False),
    byol_epochs: int = typer.Option(10, "--byol-epochs", help="BYOL-A in-domain pretraining epochs (method byol-a)."),
    width: int = typer.Option(64, "--width", help="Camera width of the demonstrations (and evaluations)."),
    height: int = typer.Option(48, "--height", help="Camera height."),
    seed: int = typer.Option(0, "--seed", help="Seed of the demonstrations and of training."),
    eval_seed: int = typer.Option(DEFAULT_SEED, "--eval-seed", help="Seed of the evaluation scenes."),
    execute: int = typer.Option(2, "--execute", help=EXECUTE_HELP),
    max_seconds: float = typer.Option(None, "--max-seconds", help=f"Evaluation time limit {TIME_LIMIT_HELP}",
                                      show_default=False),
    r3m: Path = typer.Option(None, "--r3m", help="R3M checkpoint (else the image encoders start from random "
                             "weights, said in the results).", show_default=False),
    avid: Path = typer.Option(None, "--avid", help="AVID checkpoint (else random weights, said in the results).",
                              show_default=False),
    operator_episodes: int = typer.Option(50, "--operator-episodes", help="Scenes per task for the hearing and "
                                          "the deaf scripted operator (0: skip that comparison)."),
    play_episodes: int = typer.Option(0, "--play-episodes", help="Unlabelled play episodes per task for in-domain "
                                      "audio-visual pretraining, the R3M/AVID stand-in (0: none)."),
    av_epochs: int = typer.Option(10, "--av-epochs", help="Epochs of the audio-visual pretraining."),
    frozen_encoders: bool = typer.Option(False, "--frozen-encoders", help="Train only fusion and head, on "
                                         "embeddings cached once (much faster on a CPU)."),
    ablations: bool = typer.Option(True, "--ablations/--no-ablations", help="Also evaluate audio methods with "
                                   "silent and shuffled audio (train looks)."),
    probe: bool = typer.Option(True, "--probe/--no-probe", help="Contact probes and a t-SNE picture per run."),
    threads: int = typer.Option(1, "--threads", help="CPU threads for the networks."),
    report_only: bool = typer.Option(False, "--report-only", help="Write the results file from the stages that "
                                     "are done (the rest listed as not run yet); run nothing. The file gives the "
                                     "command without this flag, the one that continues the experiment."),
) -> None:
    """Run the paper's comparison end to end on the simulated rig and write the results table.

    Per task: the scripted operator hearing and deaf (what hearing is worth), play data and audio-visual
    pretraining (with --play-episodes), scripted demonstrations, split and statistics, BYOL-A pretraining
    in-domain (if byol-a is a method), training of every method, closed-loop evaluation on the train and
    test variations, audio ablations and contact probes. Stages whose outputs exist are skipped, so running
    the same command again continues.

    Example: [bold]htouch experiment --tasks zip --methods ours,vision-only --episodes-per-task 8 --out results.md[/]
    """
    from htouch.training.experiment import Experiment, ExperimentConfig

    work = work or out.with_name(out.stem + "-work")
    command = (f"htouch experiment --tasks {tasks} --methods {methods} --episodes-per-task {demos} "
               f"--eval-episodes {eval_episodes} "
               + ("" if variations == "train,test" else f"--variations {variations} ")
               + f"--preset {preset} --epochs {epochs} --batch-size {batch_size} --stride {stride} "
               + (f"--dropout {dropout:g} " if dropout is not None else "")
               + (f"--byol-epochs {byol_epochs} " if "byol-a" in methods else "")
               + f"--width {width} --height {height} --seed {seed} --eval-seed {eval_seed} --execute {execute} "
               + (f"--max-seconds {max_seconds:g} " if max_seconds is not None else "")
               + (f"--r3m {r3m} " if r3m else "") + (f"--avid {avid} " if avid else "")
               + f"--operator-episodes {operator_episodes} "
               + (f"--play-episodes {play_episodes} --av-epochs {av_epochs} " if play_episodes else "")
               + ("--frozen-encoders " if frozen_encoders else "") + ("" if ablations else "--no-ablations ")
               + ("" if probe else "--no-probe ") + f"--threads {threads} --work {work} --out {out}")
    config = ExperimentConfig(out=out, work=work, tasks=_csv(tasks, "--tasks"), methods=_csv(methods, "--methods"),
                              demos=demos, eval_episodes=eval_episodes, variations=_csv(variations, "--variations"),
                              preset=preset, epochs=epochs, batch_size=batch_size, stride=stride, dropout=dropout,
                              byol_epochs=byol_epochs, width=width, height=height, seed=seed, eval_seed=eval_seed,
                              execute=execute, max_seconds=max_seconds, r3m=r3m, avid=avid,
                              operator_episodes=operator_episodes, play_episodes=play_episodes, av_epochs=av_epochs,
                              frozen_encoders=frozen_encoders, ablations=ablations, probe=probe,
                              threads=threads, report_only=report_only, command=command)
    if width < 16 or height < 16:
        raise HtouchError("--width and --height must be at least 16 pixels")
    experiment_ = Experiment(config, say=lambda s: console.print(s, markup=False, highlight=False, soft_wrap=True))
    try:
        path = experiment_.run()
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]: finished stages are kept; run the same command to continue")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    console.print(f"[green]wrote[/] {fmt_path(path)}")
