"""The paper's comparison, end to end on the simulated rig: methods x tasks x variations.

For each task: measure what hearing is worth to the scripted operator (hearing vs deaf on the evaluation scenes,
`htouch.sim.hearing`), record unlabelled play data and pretrain the encoders on it in-domain (`htouch pretrain
av`, the stand-in for R3M and AVID), record demonstrations with the scripted operator (the recording loop and the
simulated rig `htouch collect` uses; a demonstration the operator labels a failure is discarded and recorded
again), split them and compute their statistics, pretrain BYOL-A in-domain if a method needs it, train every
method, and evaluate each policy closed-loop on the train and the test variation (scenes of a seed the
demonstrations did not use), evaluate the policies that hear with their audio silenced and shuffled, and probe
their embeddings for the contact state (`htouch.training.diagnostics`). The results table goes to a Markdown file
with the scale it was run at.

Everything lives in a work directory; a stage whose output is there and complete is skipped, so an
interrupted experiment continues where it stopped (a training run resumes from its last finished epoch).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
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
from htouch.dataset.files import read_json, replacing, write_json_atomic
from htouch.dataset.schema import METADATA_FILE
from htouch.dataset.store import Dataset
from htouch.errors import HtouchError
from htouch.sim.scene import VARIATIONS  # the simulated scene's looks: train, test
from htouch.training.checkpoints import describe_initialisation, model_digest, read_run_config
from htouch.training.constants import DEFAULT_SEED, TIME_LIMIT_FACTOR
from htouch.training.evaluate import EvalConfig, check_time_limit, evaluate
from htouch.training.methods import METHOD_SPECS, METHODS, PRESETS, PolicyConfig, policy_config
from htouch.training.run_dir import FINISHED, RunDir

EXPERIMENT_FILE = "experiment.json"  # the work directory's record of finished stages and their times
OPERATORS_FILE = "operators.json"  # per task: the hearing and the deaf scripted operator
PLAY_SEED_OFFSET = 500  # play data's scenes: seed + 500 (neither the demonstrations' nor the evaluation's)
ABLATIONS = ("silent", "shuffled")  # what a policy that hears is also evaluated with (on every look evaluated)
READING_HEADING = "## Reading (hand-written"  # a results file's part that is kept when it is written again
GOAL_POINTS = 20  # the success-rate difference (points) the report counts as hearing helping
MAX_ATTEMPTS_FACTOR = 3  # give up on a task's demonstrations after this many attempts per demonstration


@dataclass
class ExperimentConfig:
    out: Path  # the Markdown results file
    work: Path  # demonstrations, runs and evaluations
    tasks: list[str] = field(default_factory=lambda: ["zip"])
    methods: list[str] = field(default_factory=lambda: ["ours", "vision-only", "byol-a"])
    demos: int = 8  # successful demonstrations per task
    eval_episodes: int = 10  # per method, task and variation
    variations: list[str] = field(default_factory=lambda: list(VARIATIONS))  # the looks evaluated closed-loop
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
    operator_episodes: int = 50  # scenes per task for the hearing and the deaf operator (0: skip)
    play_episodes: int = 0  # unlabelled play episodes per task for in-domain AV pretraining (0: none)
    av_epochs: int = 10
    frozen_encoders: bool = False  # train only the fusion and head on cached embeddings
    ablations: bool = True  # evaluate audio methods with silent and shuffled audio too
    probe: bool = True  # contact probes of each run's embeddings on its demonstrations
    report_only: bool = False  # write the results file from what is there; run no stage
    threads: int | None = 1  # torch threads (one is fastest on a busy shared machine)
    command: str = ""  # how it was started, for the results file

    def check(self) -> None:
        from htouch.sim.tasks import TASKS

        if not self.tasks or not self.methods:
            raise HtouchError("--tasks and --methods must each name at least one")
        for t in self.tasks:
            if t not in TASKS:
                raise HtouchError(f"unknown task {t!r} (tasks: {', '.join(TASKS)})")
        for v in self.variations:
            if v not in VARIATIONS:
                raise HtouchError(f"unknown variation {v!r} (variations: {', '.join(VARIATIONS)})")
        if not self.variations:
            raise HtouchError("--variations must name at least one")
        for m in self.methods:
            if m not in METHODS:
                raise HtouchError(f"unknown method {m!r} (methods: {', '.join(METHODS)})")
        if self.preset not in PRESETS:
            raise HtouchError(f"unknown preset {self.preset!r} (presets: {', '.join(PRESETS)})")
        if self.demos < 2:
            raise HtouchError(f"--episodes-per-task must be at least 2 (one of them validates), got {self.demos}")
        for name in ("eval_episodes", "epochs", "batch_size", "byol_epochs", "stride", "av_epochs"):
            if getattr(self, name) < 1:
                raise HtouchError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("operator_episodes", "play_episodes"):
            if getattr(self, name) < 0:
                raise HtouchError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(self, name)}")
        if self.play_episodes and (self.r3m or self.avid):
            raise HtouchError("--play-episodes pretrains the R3M/AVID stand-ins in-domain: do not also pass "
                              "--r3m / --avid")
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
    seconds: float | None  # None: not timed (not run yet, or made outside the experiment: `htouch eval` by hand)
    skipped: bool = False  # its output was there already
    pending: bool = False  # not run: --report-only


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
        self.operators: dict[str, dict[str, Any]] = {}  # task -> operators.json
        # (task, method, variation, audio) -> the evaluation with that audio condition on those looks
        self.ablations: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self.probes: dict[tuple[str, str], dict[str, Any]] = {}  # (task, method) -> probe report
        self.state_path = config.work / EXPERIMENT_FILE
        self.state = read_json(self.state_path, "experiment state") if self.state_path.is_file() else {}

    # ---------------------------------------------------------------- stages

    def _stage(self, name: str, done: bool, run: Callable[[], None]) -> bool:
        """Run a stage unless its output is there. Returns whether its output is there now (False only for a
        stage that --report-only leaves for later)."""
        if done:
            self.stages.append(Stage(name, self.state.get("stage_seconds", {}).get(name), True))
            self.say(f"[skip] {name}: already done")
            return True
        if self.c.report_only:
            self.stages.append(Stage(name, None, pending=True))
            self.say(f"[pending] {name}")
            return False
        self.say(f"[run] {name}")
        t0 = time.perf_counter()
        run()
        seconds = time.perf_counter() - t0
        self.stages.append(Stage(name, seconds))
        self.state.setdefault("stage_seconds", {})[name] = round(seconds, 1)
        self._save_state()
        return True

    def _save_state(self) -> None:
        """Write the state, keeping what another invocation on other tasks in the same work directory wrote
        meanwhile (its stage times and discarded demonstrations)."""
        self.c.work.mkdir(parents=True, exist_ok=True)
        if self.state_path.is_file():
            other = read_json(self.state_path, "experiment state")
            for key in ("stage_seconds", "discarded_demos"):
                self.state[key] = {**other.get(key, {}), **self.state.get(key, {})}
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
        text = self.markdown(wall) + self._kept_reading()
        c.out.parent.mkdir(parents=True, exist_ok=True)
        with replacing(c.out) as tmp:
            tmp.write_text(text)
        return c.out

    def _task(self, task: str) -> None:
        c = self.c
        root = c.work / task
        demos = root / "demos"
        if c.operator_episodes:
            path = root / OPERATORS_FILE
            if self._stage(f"{task}: scripted operator, hearing and deaf ({c.operator_episodes} scenes each)",
                           self._have_operators(path), lambda: self._operators(task, path)):
                self.operators[task] = read_json(path, "operator comparison")
        av = root / "av"
        if c.play_episodes:
            play = root / "play"
            self._stage(f"{task}: {c.play_episodes} play episodes", self._have_play(play),
                        lambda: self._collect(task, play, c.play_episodes, seed=c.seed + PLAY_SEED_OFFSET,
                                              keep_all=True))
            self._stage(f"{task}: audio-visual pretraining on play ({c.av_epochs} epochs)",
                        (av / "pretrain-av.json").is_file(), lambda: self._pretrain_av(play, av))
        have_demos = self._stage(f"{task}: {c.demos} demonstrations", self._have_demos(demos),
                                 lambda: self._collect(task, demos, c.demos, seed=c.seed))
        if have_demos:
            self._count_demos(task, demos)
        self._stage(f"{task}: split and statistics", have_demos and self._have_stats(demos),
                    lambda: self._prepare(demos))
        byol = root / "byol_a.safetensors"
        if "byol-a" in c.methods:
            self._stage(f"{task}: BYOL-A pretraining ({c.byol_epochs} epochs)", byol.is_file(),
                        lambda: self._pretrain(demos, byol))
        # Every method trained and evaluated on the looks first (the comparison), then the diagnostics.
        trained = []
        for method in c.methods:
            run_dir = root / "runs" / method
            if not self._stage(f"{task}: train {method} ({c.epochs} epochs)", self._trained(run_dir, method),
                               lambda m=method, r=run_dir: self._train(demos, m, r, byol, av)):
                continue  # --report-only: nothing of this method to report yet
            self._record_encoders(method, run_dir)
            trained.append((method, run_dir))
            for variation in c.variations:
                self._evaluation(task, method, run_dir, variation, "real")
        for method, run_dir in trained:
            if c.policy(method).uses_audio and c.ablations:
                for variation in c.variations:
                    for audio in ABLATIONS:
                        self._evaluation(task, method, run_dir, variation, audio)
            if c.probe:
                path = RunDir(run_dir).probe(demos)
                if self._stage(f"{task}: contact probe of {method}", self._probed(path, run_dir),
                               lambda r=run_dir, p=path: self._probe(r, demos, p)):
                    self.probes[(task, method)] = read_json(path, "probe")

    def _evaluation(self, task: str, method: str, run_dir: Path, variation: str, audio: str) -> None:
        """The stage that evaluates one run on one look with one audio condition, and its result kept."""
        c = self.c
        ev = self._eval_config(task, run_dir, variation, audio)
        path = RunDir(run_dir).evaluation(task, variation, audio)
        heard = "" if audio == "real" else f", {audio} audio"
        if not self._stage(f"{task}: evaluate {method} on {variation}{heard} ({c.eval_episodes} episodes)",
                           self._evaluated(path, ev), lambda: self._evaluate(ev, path, method)):
            return
        result = read_json(path, "evaluation")
        if audio == "real":
            self.results[(task, method, variation)] = result
        else:
            self.ablations[(task, method, variation, audio)] = result

    # ---------------------------------------------------------------- demonstrations

    def _have_demos(self, demos: Path) -> bool:
        if not (demos / METADATA_FILE).is_file():
            return False
        ds = Dataset(demos)
        cam = ds.streams.camera
        if (cam.width, cam.height) != (self.c.width, self.c.height):
            raise HtouchError(f"{demos} holds {cam.width}x{cam.height} demonstrations, not {self.c.width}x"
                              f"{self.c.height}: use another --work directory")
        return sum(bool(ep.success) for ep in ds.episodes()) >= self.c.demos

    def _have_play(self, play: Path) -> bool:
        return (play / METADATA_FILE).is_file() and len(Dataset(play).episode_indices()) >= self.c.play_episodes

    def _collect(self, task: str, root: Path, wanted: int, seed: int, keep_all: bool = False) -> None:
        """Record `wanted` episodes of the scripted operator on the train looks: successful demonstrations
        (failures discarded and recorded again), or, with keep_all, play data whatever its outcome."""
        from htouch.collector.loop import Recorder
        from htouch.rigs import build_rig

        c = self.c
        what = "play episode" if keep_all else "demonstration"
        cfg = RigConfig()
        cfg.camera = dataclasses.replace(cfg.camera, width=c.width, height=c.height)
        try:
            rig = build_rig(cfg, task, "scripted", seed=seed, variation="train", realtime=False)
        except DeviceError as e:
            raise HtouchError(f"cannot build the simulated rig: {e}") from None
        try:
            ds = Dataset.open_or_create(root, task, rig.streams)
            have = len(ds.episode_indices()) if keep_all else sum(bool(ep.success) for ep in ds.episodes())
            if ds.episode_indices() and rig.resume is not None:
                rig.resume(ds)
            source = TeleopSource(cfg.mapping) if keep_all else SuccessfulDemos(cfg.mapping)
            recorder = Recorder(rig, ds, cfg.control, cfg.mapping, cfg.safety, variation="train", source=source)
            cap = MAX_ATTEMPTS_FACTOR * wanted

            def outcome(o) -> None:
                self.say(f"  {what} {o.index}: {o.result} ({o.duration_s:.1f} s)")
                if recorder.attempt >= cap:
                    recorder.request_stop()

            recorder.on_outcome = outcome
            result = recorder.run(wanted - have)
        finally:
            rig.close()
        if result.error:
            raise HtouchError(f"{task}: recording {what}s failed: {result.error}")
        if keep_all:
            return
        if not self._have_demos(root):
            raise HtouchError(f"{task}: the scripted operator succeeded in only {len(result.committed) + have} of "
                              f"{cap} attempts; not enough demonstrations")
        self.state.setdefault("discarded_demos", {})[task] = (self.state.get("discarded_demos", {}).get(task, 0)
                                                              + len(result.discarded))

    # ---------------------------------------------------------------- what hearing is worth, before learning

    def _have_operators(self, path: Path) -> bool:
        if not path.is_file():
            return False
        saved = read_json(path, "operator comparison")
        return saved.get("episodes") == self.c.operator_episodes and saved.get("seed") == self.c.eval_seed

    def _operators(self, task: str, path: Path) -> None:
        from htouch.sim.hearing import compare

        def scene(deaf: bool, s) -> None:
            self.say(f"  {'deaf' if deaf else 'hearing'} operator, scene {s.episode}: "
                     f"{'success' if s.success else 'damage' if s.damaged else 'failure'}")

        hearing, deaf = compare(task, self.c.operator_episodes, self.c.eval_seed, on_scene=scene)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"episodes": self.c.operator_episodes, "seed": self.c.eval_seed,
                                 "hearing": hearing.to_dict(), "deaf": deaf.to_dict()})

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

    def _pretrain_av(self, play: Path, out: Path) -> None:
        from htouch.training.av_pretrain import AvConfig, pretrain_av

        c = self.c
        result = pretrain_av(AvConfig(dataset=play, out=out, preset=c.preset, epochs=c.av_epochs, batch_size=64,
                                      seed=c.seed, stride=c.stride, device="cpu", threads=c.threads, force=True))
        self.say(f"  cross-modal loss {result.losses[0]:.4g} -> {result.losses[-1]:.4g}")

    def _trained(self, run_dir: Path, method: str) -> bool:
        path = RunDir(run_dir).record
        if not path.is_file() or not RunDir(run_dir).weights().is_file():
            return False
        record = read_json(path, "training run")
        saved = record.get("config") or {}
        wanted = {"preset": self.c.preset, "batch_size": self.c.batch_size, "lr": self.c.lr, "seed": self.c.seed,
                  "stride": self.c.stride, "frozen_encoders": self.c.frozen_encoders}
        changed = [k for k, v in wanted.items() if saved.get(k) != v]
        if read_run_config(run_dir)[0].dropout != self.c.policy(method).dropout:  # the effective value
            changed.append("dropout")
        if changed:
            raise HtouchError(f"{run_dir} was trained with other settings ({', '.join(changed)}): use another "
                              "--work directory")
        if record.get("status") == "early stopping":
            return True
        return record.get("status") in FINISHED and int(record.get("epochs_done", 0)) >= self.c.epochs

    def _train(self, demos: Path, method: str, run_dir: Path, byol: Path, av: Path) -> None:
        from htouch.training.train import TrainConfig, train

        c = self.c
        wanted = METHOD_SPECS[method].pretrained
        r3m, avid = (av / "r3m.pt", av / "avid.pt") if c.play_episodes else (c.r3m, c.avid)
        config = TrainConfig(dataset=demos, run_dir=run_dir, method=method, preset=c.preset, epochs=c.epochs,
                             batch_size=c.batch_size, lr=c.lr, patience=c.epochs, seed=c.seed, device="cpu",
                             stride=c.stride, dropout=c.dropout, frozen_encoders=c.frozen_encoders,
                             resume=RunDir(run_dir).state.is_file(),
                             r3m=r3m if "r3m" in wanted else None, avid=avid if "avid" in wanted else None,
                             byol_a=byol if "byol-a" in wanted else None, allow_random_init=True,
                             threads=c.threads)
        result = train(config)
        self.say(f"  best validation loss {result.best_val_loss:.4g} at epoch {result.best_epoch} of "
                 f"{len(result.history)}")

    def _record_encoders(self, method: str, run_dir: Path) -> None:
        _, extra = read_run_config(run_dir)
        self.encoders[method] = describe_initialisation(extra.get("encoders") or {}, extra.get("encoder_pretraining"))

    # ---------------------------------------------------------------- evaluation

    def _eval_config(self, task: str, run_dir: Path, variation: str, audio: str = "real") -> EvalConfig:
        c = self.c
        return EvalConfig(run_dir=run_dir, task=task, episodes=c.eval_episodes, variation=variation,
                          seed=c.eval_seed, execute=c.execute, max_seconds=c.max_seconds, threads=c.threads,
                          audio=audio)

    def _evaluated(self, path: Path, ev: EvalConfig) -> bool:
        """The evaluation exists with these settings, and the model it evaluated is the run's current one."""
        if not path.is_file():
            return False
        result = read_json(path, "evaluation")
        saved = result.get("settings", {})
        same = all(saved.get(k) == getattr(ev, k) for k in ("episodes", "variation", "seed", "execute",
                                                             "max_seconds", "task"))
        same = same and result.get("audio", "real") == ev.audio
        return same and result.get("run", {}).get("model_xxh3") == model_digest(ev.run_dir)

    def _evaluate(self, ev: EvalConfig, path: Path, method: str) -> None:
        def episode(e) -> None:
            if self.on_episode is not None:
                self.on_episode(method, e)

        result = evaluate(ev, on_episode=episode)
        result.write(path)
        self.say(f"  {result.describe()}")

    def _probed(self, path: Path, run_dir: Path) -> bool:
        return path.is_file() and read_json(path, "probe").get("model_xxh3") == model_digest(run_dir)

    def _probe(self, run_dir: Path, demos: Path, path: Path) -> None:
        from htouch.training.diagnostics import contact_probe, embedding_plot, policy_embeddings

        embeddings = policy_embeddings(run_dir, demos, stride=max(self.c.stride, 2))
        report = contact_probe(embeddings, seed=self.c.seed)
        embedding_plot(embeddings, path.with_suffix(".png"), seed=self.c.seed)
        report.write(path)
        for p in report.probes:
            self.say(f"  {p.describe()}")

    # ---------------------------------------------------------------- the results file

    def markdown(self, wall_s: float) -> str:
        c = self.c
        pc = c.policy(c.methods[0])
        rig = RigConfig()  # the demonstrations' rig, as _collect builds it
        total = sum(s.seconds or 0.0 for s in self.stages)
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
        if c.play_episodes:
            lines += ["", f"R3M and AVID cannot be downloaded here: their stand-in is `htouch pretrain av`, "
                      f"cross-modal (AVID-style) pretraining of both encoders on {c.play_episodes} unlabelled play "
                      f"episodes per task (scripted operator, scenes of seed {c.seed + PLAY_SEED_OFFSET}, labels "
                      "ignored), written in the R3M and AVID layouts and loaded exactly as those files are."]
        elif missing:
            lines += ["", f"**Note:** no {' or '.join(missing)} checkpoint was given (--r3m / --avid; nothing is "
                      "downloaded), so the encoders that start from them in the paper started from random weights "
                      "here: `ours` is the paper's architecture and audio input, not its pretrained initialisation."]
        lines += self._operator_lines()
        lines += ["", "## Success rate (95 % Wilson interval) and reward", "",
                  "Reward: the task's progress in [0, 1] at the end of the episode (mean ± std over episodes).", ""]
        lines += self._table(["success", "reward"], lambda r: [
            _rate(r["successes"], r["episodes"], (r["ci_low"], r["ci_high"])),
            f"{r['reward_mean']:.2f} ± {r['reward_std']:.2f}"])
        lines += ["", "Mean episode length (s) and model calls per episode:", ""]
        lines += self._table([], lambda r: [
            f"{r['length_mean_s']:.1f} s, "
            f"{sum(e['model_calls'] for e in r['per_episode']) / max(len(r['per_episode']), 1):.0f} calls"])
        lines += self._ablation_lines() + self._probe_lines() + self._goal_lines()
        lines += ["", "## Stages", "", "| stage | minutes | |", "|---|---:|---|"]
        for s in self.stages:
            if s.pending:
                note = "not run yet"
            elif s.skipped:
                note = "earlier invocation" if s.seconds is not None else "made outside the experiment, not timed"
            else:
                note = ""
            lines.append(f"| {s.name} | {'-' if s.seconds is None else f'{s.seconds / 60:.2f}'} | {note} |")
        lines += ["", f"Work directory: `{c.work}` (demonstrations, runs with their `eval-*.json`)."]
        return "\n".join(lines) + "\n"

    def _kept_reading(self) -> str:
        """The hand-written part of an earlier results file (from READING_HEADING on), kept as it is."""
        if not self.c.out.is_file():
            return ""
        old = self.c.out.read_text(errors="replace")
        at = old.find(READING_HEADING)
        return "" if at < 0 else "\n" + old[at:]

    def _operator_lines(self) -> list[str]:
        from htouch.sim.hearing import OperatorResult

        if not self.operators:
            return []
        lines = ["", "## What hearing is worth to the scripted operator", "",
                 "Before any learning: the scripted operator (it stops when it hears the decisive contact) and the "
                 "same operator deaf (it stops where that contact is in the average episode), each on the same "
                 "scenes (the evaluation's scenes of the train looks), without recording. Success with a 95 % "
                 "Wilson interval; a deaf failure is either damage (the fragile part pushed past its force limit) "
                 "or stopping short.", "",
                 "| task | hearing | deaf | hearing - deaf | deaf: damaged | deaf: short |",
                 "|---|---:|---:|---:|---:|---:|"]
        for task, saved in self.operators.items():
            hearing, deaf = OperatorResult.from_dict(saved["hearing"]), OperatorResult.from_dict(saved["deaf"])
            short = len(deaf.scenes) - deaf.successes - deaf.damaged
            lines.append(f"| {task} | {_rate(hearing.successes, len(hearing.scenes), hearing.interval())} | "
                         f"{_rate(deaf.successes, len(deaf.scenes), deaf.interval())} | "
                         f"{(hearing.rate - deaf.rate) * 100:+.0f} points | {deaf.damaged} | {short} |")
        return lines

    def _ablation_lines(self) -> list[str]:
        if not self.ablations:
            return []
        lines = ["", "## Audio ablation", "",
                 "The same policy and scenes, hearing its real audio, silence, or audio shuffled from another time "
                 "of another demonstration (`htouch eval --audio`); the recorded episodes keep the real audio.", "",
                 "| task | method | looks | real | silent | shuffled |", "|---|---|---|---:|---:|---:|"]
        for (task, method, variation) in dict.fromkeys((t, m, v) for t, m, v, _ in self.ablations):
            cells = []
            for audio in ("real", *ABLATIONS):
                r = (self.results.get((task, method, variation)) if audio == "real"
                     else self.ablations.get((task, method, variation, audio)))
                cells.append("-" if r is None else _rate(r["successes"], r["episodes"], (r["ci_low"], r["ci_high"])))
            lines.append(f"| {task} | {method} | {variation} | " + " | ".join(cells) + " |")
        return lines

    def _probe_lines(self) -> list[str]:
        if not self.probes:
            return []
        lines = ["", "## Contact probes", "",
                 "A logistic probe from each embedding of a trained policy to the ground-truth contact state of "
                 "its demonstrations' samples (a contact began within the last 0.5 s), episodes held out; AUC with "
                 "a 95 % bootstrap interval over episodes (`htouch probe`; the t-SNE pictures are "
                 "`runs/METHOD/probe-demos.png`). The control is the probe on permuted labels.", "",
                 "| task | method | audio | image | fused | control |", "|---|---|---:|---:|---:|---:|"]
        for (task, method), report in self.probes.items():
            by = {p["features"].split(",")[0] if "shuffled" not in p["features"] else "control": p
                  for p in report["probes"]}
            cells = [f"{by[k]['auc']:.2f} ({by[k]['ci_low']:.2f}-{by[k]['ci_high']:.2f})" if k in by else "-"
                     for k in ("audio", "image", "fused", "control")]
            lines.append(f"| {task} | {method} | " + " | ".join(cells) + " |")
        return lines

    def _goal_lines(self) -> list[str]:
        """The goal's yardstick (GOAL_POINTS), applied mechanically: `ours` against `vision-only` per task and looks (a
        difference of at least GOAL_POINTS with intervals that do not overlap), and what the audio ablation
        costs `ours`. Says what was measured; the reading of why is the reader's."""
        c = self.c
        if not {"ours", "vision-only"} <= set(c.methods):
            return []
        lines = ["", "## Against the goal", "",
                 f"Goal: `ours` beats `vision-only` by at least {GOAL_POINTS} points of success on at least two "
                 f"tasks with 95 % intervals that do not overlap, and the audio ablation costs `ours` at least "
                 f"{GOAL_POINTS} points.", "",
                 "| task | looks | ours | vision-only | ours - vision-only | intervals |",
                 "|---|---|---:|---:|---:|---|"]
        met: dict[str, list[str]] = {v: [] for v in VARIATIONS}
        measured: dict[str, int] = {v: 0 for v in VARIATIONS}
        for task in c.tasks:
            for variation in VARIATIONS:
                ours, vision = (self.results.get((task, m, variation)) for m in ("ours", "vision-only"))
                if ours is None or vision is None:
                    continue
                measured[variation] += 1
                points = (ours["success_rate"] - vision["success_rate"]) * 100
                ours_ahead = ours["ci_low"] > vision["ci_high"]
                vision_ahead = vision["ci_low"] > ours["ci_high"]
                if ours_ahead and points >= GOAL_POINTS:
                    met[variation].append(task)
                intervals = ("apart, ours ahead" if ours_ahead else "apart, vision-only ahead" if vision_ahead
                             else "overlap")
                lines.append(f"| {task} | {variation} | {ours['success_rate']:.0%} | {vision['success_rate']:.0%} | "
                             f"{points:+.0f} points | {intervals} |")
        lines.append("")
        for variation in VARIATIONS:
            tasks = met[variation]
            if not measured[variation]:
                lines.append(f"- {variation} looks: not measured yet (no task has both methods evaluated).")
                continue
            lines.append(f"- {variation} looks: the goal holds on {len(tasks)} task(s)"
                         f"{' (' + ', '.join(tasks) + ')' if tasks else ''}: "
                         f"{'met' if len(tasks) >= 2 else 'not met'}.")
        for task in c.tasks:
            for variation, audio in itertools.product(VARIATIONS, ABLATIONS):
                real = self.results.get((task, "ours", variation))
                other = self.ablations.get((task, "ours", variation, audio))
                if real is None or other is None:
                    continue
                cost = (real["success_rate"] - other["success_rate"]) * 100
                lines.append(f"- {task}, {variation} looks: {audio} audio costs `ours` {cost:+.0f} points "
                             f"({real['successes']}/{real['episodes']} -> {other['successes']}/{other['episodes']}): "
                             f"{'at least' if cost >= GOAL_POINTS else 'less than'} {GOAL_POINTS}.")
        return lines

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
    """Run (or continue) the experiment and write its results file; returns the file's path."""
    return Experiment(config, say).run()


def _ordinal(n: int) -> str:
    return f"{n}{'tsnrhtdd'[(n // 10 % 10 != 1) * (n % 10 < 4) * n % 10::4]}"


def _rate(successes: int, n: int, interval: tuple[float, float]) -> str:
    """"7/10 = 70% (40%-89%)": a success count with its rate and 95 % interval."""
    low, high = interval
    return f"{successes}/{n} = {successes / max(n, 1):.0%} ({low:.0%}-{high:.0%})"
