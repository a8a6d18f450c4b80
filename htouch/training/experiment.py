"""The paper's comparison, end to end on the simulated rig: methods x tasks x variations.

For each task: record demonstrations with the scripted operator (the recording loop and the simulated rig
`htouch collect` uses; a demonstration the operator labels a failure is discarded and recorded again), split
them and compute their statistics, pretrain BYOL-A in-domain if a method needs it, train every method, and
evaluate each policy closed-loop on the train and the test variation (scenes of a seed the demonstrations
did not use). The results table goes to a Markdown file with the scale it was run at.

Everything lives in a work directory; a stage whose output is there and complete is skipped, so an
interrupted experiment continues where it stopped (a training run resumes from its last finished epoch).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from htouch.collector.config import RigConfig
from htouch.collector.devices import DeviceError, RobotState, TeleopReading
from htouch.collector.sources import SourceCommand, TeleopSource
from htouch.dataset.schema import METADATA_FILE
from htouch.dataset.store import Dataset, read_json, replacing, write_json_atomic
from htouch.errors import HtouchError
from htouch.training.checkpoints import METHOD_PRETRAINED, read_run_config
from htouch.training.evaluate import (DEFAULT_SEED, TIME_LIMIT_FACTOR, EvalConfig, check_time_limit, default_output,
                                      evaluate)
from htouch.training.model import METHODS, PRESETS, PolicyConfig, policy_config

VARIATIONS = ("train", "test")
STATE_FILE = "experiment.json"
MAX_ATTEMPTS_FACTOR = 3  # give up on a task's demonstrations after this many attempts per demonstration
FINISHED = ("max epochs", "early stopping", "already finished")


@dataclass
class ExperimentConfig:
    out: Path  # the Markdown results file
    work: Path  # demonstrations, runs and evaluations
    tasks: list[str] = field(default_factory=lambda: ["zip"])
    methods: list[str] = field(default_factory=lambda: ["ours", "vision-only", "byol-a"])
    demos: int = 8  # successful demonstrations per task
    eval_episodes: int = 10  # per method, task and variation
    preset: str = "tiny"
    epochs: int = 5
    batch_size: int = 32
    lr: float = 1e-3
    stride: int = 1  # a training sample at every stride-th camera frame
    dropout: float | None = None  # None: the preset's
    byol_epochs: int = 10
    width: int = 64  # camera
    height: int = 48
    seed: int = 0  # demonstrations' scenes and operator, training
    eval_seed: int = DEFAULT_SEED
    execute: int = 2
    max_seconds: float | None = None  # evaluation time limit (None: evaluate's default)
    r3m: Path | None = None
    avid: Path | None = None
    threads: int | None = 1  # torch threads (one is fastest on a busy shared machine)
    command: str = ""  # how it was started, for the results file

    def check(self) -> None:
        from htouch.sim.tasks import TASKS

        if not self.tasks or not self.methods:
            raise HtouchError("--tasks and --methods must each name at least one")
        for t in self.tasks:
            if t not in TASKS:
                raise HtouchError(f"unknown task {t!r} (tasks: {', '.join(TASKS)})")
        for m in self.methods:
            if m not in METHODS:
                raise HtouchError(f"unknown method {m!r} (methods: {', '.join(METHODS)})")
        if self.preset not in PRESETS:
            raise HtouchError(f"unknown preset {self.preset!r} (presets: {', '.join(PRESETS)})")
        if self.demos < 2:
            raise HtouchError(f"--episodes-per-task must be at least 2 (one of them validates), got {self.demos}")
        for name in ("eval_episodes", "epochs", "batch_size", "byol_epochs", "stride"):
            if getattr(self, name) < 1:
                raise HtouchError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        check_time_limit(self.max_seconds)  # before the demonstrations and training, not after
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise HtouchError(f"--dropout must be in [0, 1), got {self.dropout}")
        for name, path in (("--r3m", self.r3m), ("--avid", self.avid)):
            if path is not None and not Path(path).is_file():
                raise HtouchError(f"{name} {path}: no such file")

    def policy(self, method: str) -> PolicyConfig:
        """The network a method trains: the preset's, with --dropout when given."""
        return policy_config(self.preset, method, **({} if self.dropout is None else {"dropout": self.dropout}))

    def val_fraction(self) -> float:
        """At least one validation demonstration (early stopping and the kept model need one)."""
        return max(0.2, 1.0 / self.demos)


class SuccessfulDemos(TeleopSource):
    """The scripted operator's demonstrations, keeping only those it labels a success: a failure is
    discarded (not committed) and the loop records the next scene instead."""

    def command(self, reading: TeleopReading | None, state: RobotState, now_ns: int) -> SourceCommand:
        c = super().command(reading, state, now_ns)
        return dataclasses.replace(c, command="discard") if c.command == "failure" else c


@dataclass
class Stage:
    name: str
    seconds: float
    skipped: bool = False


class Experiment:
    """Runs the stages of an ExperimentConfig; `say` gets one line per stage."""

    def __init__(self, config: ExperimentConfig, say: Callable[[str], None] = lambda _s: None,
                 on_episode: Callable[[str, Any], None] | None = None):
        config.check()
        self.c = config
        self.say = say
        self.on_episode = on_episode
        self.stages: list[Stage] = []
        self.results: dict[tuple[str, str, str], dict[str, Any]] = {}  # eval-*.json contents
        self.demo_notes: dict[str, str] = {}
        self.encoders: dict[str, dict[str, str]] = {}  # method -> encoder -> where its initial weights came from
        self.state_path = config.work / STATE_FILE
        self.state = read_json(self.state_path, "experiment state") if self.state_path.is_file() else {}

    # ---------------------------------------------------------------- stages

    def _stage(self, name: str, done: bool, run: Callable[[], None]) -> None:
        if done:
            self.stages.append(Stage(name, float(self.state.get("stage_seconds", {}).get(name, 0.0)), True))
            self.say(f"[skip] {name}: already done")
            return
        self.say(f"[run] {name}")
        t0 = time.perf_counter()
        run()
        seconds = time.perf_counter() - t0
        self.stages.append(Stage(name, seconds))
        self.state.setdefault("stage_seconds", {})[name] = round(seconds, 1)
        self._save_state()

    def _save_state(self) -> None:
        self.c.work.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.state_path, self.state)

    def run(self) -> Path:
        c = self.c
        start = time.perf_counter()
        c.work.mkdir(parents=True, exist_ok=True)
        self.state["config"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(c).items()}
        self._save_state()
        threads = torch.get_num_threads()
        try:
            if c.threads is not None:
                torch.set_num_threads(c.threads)
            for task in c.tasks:
                self._task(task)
        finally:
            torch.set_num_threads(threads)
        wall = time.perf_counter() - start
        self.state["last_invocation_s"] = round(wall, 1)
        self._save_state()
        text = self.markdown(wall)
        c.out.parent.mkdir(parents=True, exist_ok=True)
        with replacing(c.out) as tmp:
            tmp.write_text(text)
        return c.out

    def _task(self, task: str) -> None:
        c = self.c
        root = c.work / task
        demos = root / "demos"
        self._stage(f"{task}: {c.demos} demonstrations", self._have_demos(demos), lambda: self._collect(task, demos))
        self._count_demos(task, demos)
        self._stage(f"{task}: split and statistics", self._have_stats(demos), lambda: self._prepare(demos))
        byol = root / "byol_a.safetensors"
        if "byol-a" in c.methods:
            self._stage(f"{task}: BYOL-A pretraining ({c.byol_epochs} epochs)", byol.is_file(),
                        lambda: self._pretrain(demos, byol))
        for method in c.methods:
            run_dir = root / "runs" / method
            self._stage(f"{task}: train {method} ({c.epochs} epochs)", self._trained(run_dir, method),
                        lambda m=method, r=run_dir: self._train(demos, m, r, byol))
            self._record_encoders(method, run_dir)
            for variation in VARIATIONS:
                ev = self._eval_config(task, run_dir, variation)
                path = default_output(run_dir, task, variation)
                done = self._evaluated(path, ev)
                self._stage(f"{task}: evaluate {method} on {variation} ({c.eval_episodes} episodes)", done,
                            lambda e=ev, p=path, m=method: self._evaluate(e, p, m))
                self.results[(task, method, variation)] = read_json(path, "evaluation")

    # ---------------------------------------------------------------- demonstrations

    def _have_demos(self, demos: Path) -> bool:
        if not (demos / METADATA_FILE).is_file():
            return False
        ds = Dataset(demos)
        cam = ds.rig.camera
        if (cam.width, cam.height) != (self.c.width, self.c.height):
            raise HtouchError(f"{demos} holds {cam.width}x{cam.height} demonstrations, not {self.c.width}x"
                              f"{self.c.height}: use another --work directory")
        return sum(bool(ep.success) for ep in ds.episodes()) >= self.c.demos

    def _collect(self, task: str, root: Path) -> None:
        from htouch.collector.loop import Recorder
        from htouch.collector.rigs import build_rig

        c = self.c
        cfg = RigConfig()
        cfg.camera = dataclasses.replace(cfg.camera, width=c.width, height=c.height)
        try:
            rig = build_rig(cfg, task, "scripted", seed=c.seed, variation="train", realtime=False)
        except DeviceError as e:
            raise HtouchError(f"cannot build the simulated rig: {e}") from None
        try:
            ds = Dataset.open_or_create(root, task, rig.spec)
            have = sum(bool(ep.success) for ep in ds.episodes())
            if ds.episode_indices() and rig.resume is not None:
                rig.resume(ds)
            recorder = Recorder(rig, ds, cfg.control, cfg.mapping, cfg.safety, variation="train",
                                source=SuccessfulDemos(cfg.mapping))
            cap = MAX_ATTEMPTS_FACTOR * c.demos

            def outcome(o) -> None:
                self.say(f"  demonstration {o.index}: {o.result} ({o.duration_s:.1f} s)")
                if recorder.attempt >= cap:
                    recorder.request_stop()

            recorder.on_outcome = outcome
            result = recorder.run(c.demos - have)
        finally:
            rig.close()
        if result.error:
            raise HtouchError(f"{task}: recording demonstrations failed: {result.error}")
        if not self._have_demos(root):
            raise HtouchError(f"{task}: the scripted operator succeeded in only {len(result.committed) + have} of "
                              f"{cap} attempts; not enough demonstrations")
        self.state.setdefault("discarded_demos", {})[task] = (self.state.get("discarded_demos", {}).get(task, 0)
                                                              + len(result.discarded))

    def _count_demos(self, task: str, root: Path) -> None:
        ds = Dataset(root)
        durations = [ep.duration_s for ep in ds.episodes()]
        dropped = self.state.get("discarded_demos", {}).get(task, 0)
        self.demo_notes[task] = (f"{len(durations)} demonstrations, {min(durations):.1f}-{max(durations):.1f} s "
                                 f"(mean {sum(durations) / len(durations):.1f} s); {dropped} failed attempt(s) "
                                 "discarded while recording")

    def _kinds(self) -> list[str]:
        kinds = {self.c.policy(m).audio_kind for m in self.c.methods}
        return sorted(k for k in kinds if k is not None)

    def _have_stats(self, root: Path) -> bool:
        ds = Dataset(root)
        split, stats = ds.metadata.get("split"), ds.metadata.get("stats")
        if not isinstance(split, dict) or not isinstance(stats, dict):
            return False
        episodes = sorted(split.get("train", []) + split.get("val", []))
        have = set((stats.get("spectrogram") or {}).keys())
        return episodes == ds.episode_indices() and set(self._kinds()) <= have

    def _prepare(self, root: Path) -> None:
        from htouch.dataset.split import split_dataset
        from htouch.dataset.stats import compute_stats, store_stats

        ds = Dataset(root)
        split_dataset(ds, self.c.val_fraction(), self.c.seed)
        ds = Dataset(root)
        stats, _ = compute_stats(ds, self._kinds())
        store_stats(ds, stats)

    # ---------------------------------------------------------------- encoders and training

    def _pretrain(self, demos: Path, out: Path) -> None:
        from htouch.training.byol_a import ByolaConfig, pretrain_byol_a

        c = self.c
        result = pretrain_byol_a(ByolaConfig(dataset=demos, out=out, preset=c.preset, epochs=c.byol_epochs,
                                             batch_size=256, seed=c.seed, device="cpu", threads=c.threads))
        self.say(f"  BYOL loss {result.losses[0]:.4g} -> {result.losses[-1]:.4g} on {result.n_windows} windows")

    def _trained(self, run_dir: Path, method: str) -> bool:
        path = run_dir / "run.json"
        if not path.is_file() or not (run_dir / "model.safetensors").is_file():
            return False
        record = read_json(path, "training run")
        saved = record.get("config") or {}
        wanted = {"preset": self.c.preset, "batch_size": self.c.batch_size, "lr": self.c.lr, "seed": self.c.seed,
                  "stride": self.c.stride}
        changed = [k for k, v in wanted.items() if saved.get(k) != v]
        if read_run_config(run_dir)[0].dropout != self.c.policy(method).dropout:  # the effective value
            changed.append("dropout")
        if changed:
            raise HtouchError(f"{run_dir} was trained with other settings ({', '.join(changed)}): use another "
                              "--work directory")
        if record.get("status") == "early stopping":
            return True
        return record.get("status") in FINISHED and int(record.get("epochs_done", 0)) >= self.c.epochs

    def _train(self, demos: Path, method: str, run_dir: Path, byol: Path) -> None:
        from htouch.training.train import STATE_FILE as TRAIN_STATE
        from htouch.training.train import TrainConfig, train

        c = self.c
        wanted = METHOD_PRETRAINED[method]
        config = TrainConfig(dataset=demos, run_dir=run_dir, method=method, preset=c.preset, epochs=c.epochs,
                             batch_size=c.batch_size, lr=c.lr, patience=c.epochs, seed=c.seed, device="cpu",
                             stride=c.stride, dropout=c.dropout,
                             resume=(run_dir / TRAIN_STATE).is_file(),
                             r3m=c.r3m if "r3m" in wanted else None, avid=c.avid if "avid" in wanted else None,
                             byol_a=byol if "byol-a" in wanted else None, allow_random_init=True,
                             threads=c.threads)
        result = train(config)
        self.say(f"  best validation loss {result.best_val_loss:.4g} at epoch {result.best_epoch} of "
                 f"{len(result.history)}")

    def _record_encoders(self, method: str, run_dir: Path) -> None:
        _, extra = read_run_config(run_dir)
        for name, origin in (extra.get("encoders") or {}).items():
            if origin == "random":
                text = "random"
            elif origin == "none":
                text = "none (no audio)"
            elif str(origin).startswith("byol-a"):
                text = "BYOL-A, pretrained in-domain on the task's demonstrations"
            else:
                text = f"pretrained ({Path(str(origin).split(': ', 1)[-1]).name})"
            self.encoders.setdefault(method, {})[name] = text

    # ---------------------------------------------------------------- evaluation

    def _eval_config(self, task: str, run_dir: Path, variation: str) -> EvalConfig:
        c = self.c
        return EvalConfig(run_dir=run_dir, task=task, episodes=c.eval_episodes, variation=variation,
                          seed=c.eval_seed, execute=c.execute, max_seconds=c.max_seconds, threads=c.threads)

    def _evaluated(self, path: Path, ev: EvalConfig) -> bool:
        """The evaluation exists with these settings, and the model it evaluated is the run's current one."""
        if not path.is_file():
            return False
        saved = read_json(path, "evaluation").get("settings", {})
        same = all(saved.get(k) == getattr(ev, k) for k in ("episodes", "variation", "seed", "execute",
                                                             "max_seconds", "task"))
        return same and path.stat().st_mtime >= (ev.run_dir / "model.safetensors").stat().st_mtime

    def _evaluate(self, ev: EvalConfig, path: Path, method: str) -> None:
        def episode(e) -> None:
            if self.on_episode is not None:
                self.on_episode(method, e)

        result = evaluate(ev, on_episode=episode)
        result.write(path)
        self.say(f"  {result.describe()}")

    # ---------------------------------------------------------------- the results file

    def markdown(self, wall_s: float) -> str:
        c = self.c
        pc = c.policy(c.methods[0])
        rig = RigConfig()  # the demonstrations' rig, as _collect builds it
        total = sum(s.seconds for s in self.stages)
        lines = ["# Experiment: methods x tasks x variations on the simulated rig", ""]
        if c.command:
            lines += ["Command:", "", f"    {c.command}", ""]
        lines += [f"Date: {dt.datetime.now().isoformat(timespec='seconds')}; {platform.machine()}, "
                  f"Python {platform.python_version()}, torch {torch.__version__}, "
                  f"{c.threads or torch.get_num_threads()} torch thread(s).", ""]
        lines += ["## Scale", ""]
        lines += [f"- Tasks: {', '.join(c.tasks)}; methods: {', '.join(c.methods)}.",
                  f"- Demonstrations: {c.demos} successful ones per task from the scripted operator on the train "
                  f"variation (seed {c.seed}), {c.width}x{c.height} camera at {rig.camera.fps} Hz, "
                  f"{rig.microphones.channels} contact microphones at {rig.microphones.rate_hz / 1000:g} kHz; split "
                  "with at least one validation demonstration "
                  f"(val fraction {c.val_fraction():.2f}).",
                  *[f"  - {task}: {note}" for task, note in self.demo_notes.items()],
                  f"- Policies: preset `{c.preset}` ({pc.image_size} px frames, width {pc.width}), {c.epochs} "
                  f"epochs end to end (batch {c.batch_size}, lr {c.lr:g}, dropout {pc.dropout:g}, a sample at every "
                  f"{'' if c.stride == 1 else _ordinal(c.stride) + ' '}camera frame, no early stopping), the "
                  "lowest-validation-loss epoch kept.",
                  f"- Evaluation: {c.eval_episodes} closed-loop episodes per method, task and variation, scenes 1.."
                  f"{c.eval_episodes} of seed {c.eval_seed} (not the demonstrations' scenes; train and test share "
                  f"layouts and differ in looks), h = {c.execute} of H = {pc.horizon} actions per model call, time "
                  f"limit {self._limits()}.",
                  f"- Time: {total / 60:.1f} min over all stages ({wall_s / 60:.1f} min in the last invocation); "
                  "per stage below."]
        lines += ["", "## Initial encoder weights", "", "| method | image encoder | audio encoder |", "|---|---|---|"]
        for method in c.methods:
            enc = self.encoders.get(method, {})
            lines.append(f"| {method} | {enc.get('image_encoder', '-')} | {enc.get('audio_encoder', 'none')} |")
        missing = [name for name, path in (("R3M", c.r3m), ("AVID", c.avid)) if path is None]
        if missing:
            lines += ["", f"**Note:** no {' or '.join(missing)} checkpoint was given (--r3m / --avid; nothing is "
                      "downloaded), so the encoders that start from them in the paper started from random weights "
                      "here: `ours` is the paper's architecture and audio input, not its pretrained initialisation."]
        lines += ["", "## Success rate (95 % Wilson interval) and reward", "",
                  "Reward: the task's progress in [0, 1] at the end of the episode (mean ± std over episodes).", ""]
        lines += self._table(["success", "reward"], lambda r: [
            f"{r['successes']}/{r['episodes']} = {r['success_rate']:.0%} ({r['ci_low']:.0%}-{r['ci_high']:.0%})",
            f"{r['reward_mean']:.2f} ± {r['reward_std']:.2f}"])
        lines += ["", "Mean episode length (s) and model calls per episode:", ""]
        lines += self._table([], lambda r: [
            f"{r['length_mean_s']:.1f} s, "
            f"{sum(e['model_calls'] for e in r['per_episode']) / max(len(r['per_episode']), 1):.0f} calls"])
        lines += ["", "## Stages", "", "| stage | minutes | |", "|---|---:|---|"]
        for s in self.stages:
            lines.append(f"| {s.name} | {s.seconds / 60:.2f} | {'earlier invocation' if s.skipped else ''} |")
        lines += ["", f"Work directory: `{c.work}` (demonstrations, runs with their `eval-*.json`)."]
        return "\n".join(lines) + "\n"

    def _table(self, columns: list[str], cells: Callable[[dict], list[str]]) -> list[str]:
        """A Markdown table: a row per method, a column per task x variation (x column name), "-" where no
        evaluation exists."""
        c = self.c
        heads = [f"{t} {v}" + (f": {col}" if col else "") for t in c.tasks for v in VARIATIONS
                 for col in (columns or [""])]
        out = ["| method | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(heads)]
        for method in c.methods:
            row = []
            for task in c.tasks:
                for variation in VARIATIONS:
                    r = self.results.get((task, method, variation))
                    row += ["-"] * max(len(columns), 1) if r is None else cells(r)
            out.append(f"| {method} | " + " | ".join(row) + " |")
        return out

    def _limits(self) -> str:
        if self.c.max_seconds is not None:
            return f"{self.c.max_seconds:g} s"
        limits = sorted({float(r["time_limit_s"]) for r in self.results.values()})
        text = ", ".join(f"{x:g}" for x in limits) if limits else "?"
        return f"{text} s ({TIME_LIMIT_FACTOR:g} x the longest demonstration of the task)"


def run_experiment(config: ExperimentConfig, say: Callable[[str], None] = lambda _s: None) -> Path:
    return Experiment(config, say).run()


def _ordinal(n: int) -> str:
    return f"{n}{'tsnrhtdd'[(n // 10 % 10 != 1) * (n % 10 < 4) * n % 10::4]}"
