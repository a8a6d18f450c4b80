"""A trained policy as the recording loop's action source: rollouts are recorded exactly as demonstrations.

The loop's reader threads hand every camera frame and audio block to `observe_frame` / `observe_audio`,
which feed the runner's ObservationBuffer (from the start of the recording on, as a training sample only
sees its own episode). Each tick `command` returns the runner's next action (predict H, execute h, the
per-frame embedding cache; already through a SafetyFilter with the rig's limits, so the loop's own pass
changes nothing more). On a simulated clock the loop lets the readers run dry before a re-plan, so the
policy sees every frame and block captured up to that tick and a rollout does not depend on thread timing.
An asynchronous runner (htouch.training.runner, module docstring) plans in its worker thread from a snapshot
of the buffer taken at the tick it asks, so `command` returns at once; call `close` when done.

An episode ends when the operator presses A (success) / B (failure) / the joystick (discard) on the teleop,
whose motion is ignored (no clutch), or on a simulated rig when the task succeeds; otherwise at the time
limit. On a simulated rig the label is the task's ground truth unless the operator labelled it, and the
episode's info holds the reward (the task's progress in [0, 1]).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from htouch.collector.devices import AudioBlock, Frame, RobotState, TeleopReading
from htouch.collector.mapping import ClutchMapping, MappingConfig
from htouch.collector.safety import SafetyFilter, SafetyLimits
from htouch.collector.sources import Outcome, SourceCommand, end_label
from htouch.dataset.location import is_url
from htouch.dataset.schema import AudioSpec, StreamSpecs
from htouch.errors import HtouchError
from htouch.training.checkpoints import model_digest, read_run_config
from htouch.training.methods import PolicyConfig
from htouch.training.run_dir import RunDir
from htouch.training.runner import PRECISIONS, Hearing, PolicyRunner, RunnerCounters, native_bfloat16

PLANNERS = ("sync", "async")
DEFAULT_PLAN_LATENCY = 2  # ticks: a paper-preset re-plan on an idle core (about 56 ms) lands within two 30 Hz ticks


def planning_options(planner: str, realtime: bool, latency_ticks: int | None = None,
                     precision: str = "float32") -> dict[str, Any]:
    """PolicyRunner options for a planner name and a precision. "sync": plans in the control thread, exactly as
    before (the re-plan tick waits for the model). "async": plans beside the loop with the fastest encoders
    for the precision (float32: ONNX Runtime with the onnx extra, else PyTorch with channels-last weights;
    bfloat16: PyTorch with channels-last weights); on a real-time clock each plan is used from the tick it
    arrives at, on a simulated clock exactly `latency_ticks` ticks (default DEFAULT_PLAN_LATENCY) after it was
    asked, so results are deterministic."""
    if planner not in PLANNERS:
        raise HtouchError(f"--planner must be {' or '.join(PLANNERS)}, not {planner!r}")
    if precision not in PRECISIONS:
        raise HtouchError(f"--precision must be {' or '.join(PRECISIONS)}, not {precision!r}")
    if precision == "bfloat16" and not native_bfloat16():
        raise HtouchError("--precision bfloat16: this CPU has no native bfloat16 (AVX512-BF16 or AMX); use float32")
    if planner == "sync" or realtime:
        if latency_ticks is not None:
            raise HtouchError("--plan-latency is for --planner async on a simulated clock (in real time a plan is "
                              "used when it arrives)")
    arithmetic = {} if precision == "float32" else {"precision": precision}
    if planner == "sync":
        return arithmetic
    options = {"asynchronous": True, **_fastest_encoders(precision), **arithmetic}
    if not realtime:
        options["latency_ticks"] = DEFAULT_PLAN_LATENCY if latency_ticks is None else latency_ticks
    return options


def _fastest_encoders(precision: str) -> dict[str, Any]:
    """ONNX Runtime encoders where installed (the onnx extra) for float32, else PyTorch's in channels-last."""
    from htouch.training import onnx_encoders

    if precision == "float32" and onnx_encoders.available():
        return {"encoders": "onnxruntime"}
    return {"channels_last": True}


@dataclass
class RunInfo:
    """What a run directory says about the policy it holds: what it is and what it was trained on."""

    run_dir: Path
    config: PolicyConfig
    task: str | None  # the training dataset's task
    streams: StreamSpecs | None  # the training dataset's streams (camera size, audio)
    random_init: list[str]  # encoders that started from random weights
    training: dict[str, Any]
    dataset_root: str | None = None  # the training dataset
    train_episodes: list[int] = dataclasses.field(default_factory=list)

    @classmethod
    def read(cls, run_dir: str | Path) -> RunInfo:
        config, extra = read_run_config(run_dir)
        dataset = extra.get("dataset") if isinstance(extra.get("dataset"), dict) else {}
        streams = StreamSpecs.from_dict(extra["rig"]) if isinstance(extra.get("rig"), dict) else None
        return cls(Path(run_dir), config, dataset.get("task"), streams, list(extra.get("random_init") or []),
                   dict(extra.get("training") or {}), _training_dataset(Path(run_dir), dataset.get("root")),
                   list(dataset.get("train_episodes") or []))

    def summary(self) -> dict[str, Any]:
        """For an episode's info and eval.json."""
        return {"run": str(self.run_dir.resolve()), "method": self.config.method, "preset": self.config.preset,
                "horizon": self.config.horizon, "trained_task": self.task, "random_init": self.random_init,
                "best_epoch": self.training.get("best_epoch"),
                "model_xxh3": model_digest(self.run_dir)}


def _training_dataset(run_dir: Path, root: str | None) -> str | None:
    """The training dataset's directory: where the run recorded it or, when the run and its dataset were
    moved together (a copied experiment), at the same place relative to the run directory as then."""
    if not root or is_url(root) or Path(root).is_dir():  # a dataset at a URL stays where it is
        return root
    try:
        trained_in = RunDir(run_dir).read_record()["config"]["run_dir"]
        moved = (run_dir / os.path.relpath(root, trained_in)).resolve()
    except (HtouchError, KeyError, TypeError, ValueError):
        return root
    return str(moved) if moved.is_dir() else root


class PolicySource:
    """See the module docstring. `operator`: a person watches with a teleop (its silence holds the robot,
    its buttons end episodes); `start_on_clutch`: each episode starts when that person holds the grip (time
    to reset the scene). `task_success` / `task_progress`: a simulated rig's ground truth and reward;
    `task_failed`: the simulated task can no longer succeed (ends the episode as a failure)."""

    kind = "policy"
    exact_observation = True

    def __init__(self, runner: PolicyRunner, run: RunInfo, *, operator: bool, start_on_clutch: bool = False,
                 mapping: MappingConfig | None = None, task_success: Callable[[], bool] | None = None,
                 task_progress: Callable[[], float] | None = None,
                 task_failed: Callable[[], bool] | None = None):
        self.runner = runner
        self.run = run
        self.needs_teleop = operator
        self.start_on_clutch = operator and start_on_clutch
        self.mapping = ClutchMapping(mapping)  # only its buttons (and the grip that starts an episode)
        self.task_success = task_success
        self.task_progress = task_progress
        self.task_failed = task_failed
        self.ready_hint = ("hold the grip to start the policy" if self.start_on_clutch
                           else "waiting for the streams" + (" and the teleop" if operator else ""))
        self.engaged = False
        self._lock = threading.Lock()  # the buffer: reader threads add, the control thread reads
        self._start_ns: int | None = None
        self._frames = 0  # frames buffered in this episode
        self._ended_by = ""
        self._counters_at_begin = RunnerCounters()

    @classmethod
    def from_run(cls, run_dir: str | Path, safety: SafetyLimits, audio: AudioSpec, execute: int = 2,
                 hearing: Hearing | None = None, **kwargs: Any) -> PolicySource:
        """The policy of a run directory, for a rig with these safety limits and this audio spec (`hearing`:
        what the policy hears instead of the rig's audio, see PolicyRunner)."""
        run = RunInfo.read(run_dir)
        runner_options = {k: kwargs.pop(k) for k in ("asynchronous", "latency_ticks", "channels_last", "encoders",
                                                     "precision")
                          if k in kwargs}
        runner = PolicyRunner.from_run(run_dir, SafetyFilter(safety), execute=execute, audio=audio, hearing=hearing,
                                       **runner_options)
        return cls(runner, run, **kwargs)

    def close(self) -> None:
        """Stop the runner's planner thread (asynchronous runners)."""
        self.runner.close()

    # ---------------------------------------------------------------- streams (reader threads)

    def observe_frame(self, frame: Frame) -> None:
        with self._lock:
            if self._start_ns is not None and frame.timestamp_ns >= self._start_ns:
                self.runner.buffer.add_frame(frame)
                self._frames += 1

    def observe_audio(self, block: AudioBlock) -> None:
        with self._lock:
            if self._start_ns is not None and block.timestamp_ns >= self._start_ns:
                self.runner.buffer.add_audio(block)

    # ---------------------------------------------------------------- episode (control thread)

    def reset(self) -> None:
        with self._lock:
            self.runner.reset()
            self._start_ns = None
            self._frames = 0
        self.mapping.reset()
        self.engaged = False
        self._ended_by = ""

    def ready(self, reading: TeleopReading | None, state: RobotState) -> bool:
        if not self.needs_teleop:
            return True
        if reading is None:
            return False
        return self.mapping(reading, state).engaged or not self.start_on_clutch

    def begin(self, start_ns: int) -> None:
        with self._lock:
            self._start_ns = int(start_ns)
        self._counters_at_begin = dataclasses.replace(self.runner.counters)
        self.engaged = True

    def wants_observation(self) -> bool:
        return self.runner.needs_observation

    def command(self, reading: TeleopReading | None, state: RobotState, now_ns: int) -> SourceCommand:
        if reading is not None:
            label = self.mapping(reading, state).command  # A / B / discard; the controller's motion is ignored
            if label is not None:
                self._ended_by = "operator"
                return SourceCommand(None, label)
        if self.task_success is not None and self.task_success():
            self._ended_by = "task"
            return SourceCommand(None, "success")
        if self.task_failed is not None and self.task_failed():
            self._ended_by = "task"
            return SourceCommand(None, "failure")
        position = state.ee_pose[:3]
        if self.runner.asynchronous:
            with self._lock:
                if not self._frames:
                    return SourceCommand(None)  # no frame of this episode yet: hold until there is one
            action = self.runner.act_at(now_ns, position, self._snapshot)
        elif self.runner.needs_observation:
            with self._lock:
                if not self._frames:
                    return SourceCommand(None)  # no frame of this episode yet: hold until there is one
                frames = self.runner.buffer.frames(now_ns)
                clip = self.runner.heard_clip(now_ns) if self.runner.config.uses_audio else None
            action = self.runner.act(position, frames, clip)
        else:
            action = self.runner.act(position)
        return SourceCommand(action, None, self.runner.last.reasons if self.runner.last else ())

    def _snapshot(self):
        with self._lock:
            return self.runner.buffer.snapshot()

    def interrupted(self) -> None:
        """Nothing to re-anchor: the plan's actions are deltas from wherever the robot is, at most h of them."""

    def outcome(self, end: str) -> Outcome:
        if self._ended_by == "operator" or self.task_success is None:
            success, by = end_label(end), "operator"
        else:
            success, by = bool(self.task_success()), "task"
        c0, c1 = self._counters_at_begin, self.runner.counters
        info: dict[str, Any] = {"policy_counters": {f.name: getattr(c1, f.name) - getattr(c0, f.name)
                                                    for f in dataclasses.fields(RunnerCounters)}}
        if self.task_progress is not None:
            info["reward"] = round(float(self.task_progress()), 6)
        self.engaged = False
        return Outcome(success, by, info)

    def episode_info(self) -> dict[str, Any]:
        r = self.runner
        planning = ("synchronous" if not r.asynchronous else "asynchronous" if r.latency_ticks is None
                    else f"asynchronous, {r.latency_ticks} tick(s) latency")
        if r.encoders != "torch":
            planning += f", {r.encoders} encoders"
        if r.precision != "float32":
            planning += f", {r.precision}"
        return {"action_source": self.kind, "policy": {**self.run.summary(), "execute": r.execute,
                                                      "planning": planning}}


def check_streams_match(run: RunInfo, streams: StreamSpecs) -> list[str]:
    """How a rig's streams differ from those the policy was trained on (empty: they match)."""
    if run.streams is None:
        return []
    want, have = run.streams, streams
    notes = []
    if (want.camera.width, want.camera.height) != (have.camera.width, have.camera.height):
        notes.append(f"camera {have.camera.width}x{have.camera.height} (trained on "
                     f"{want.camera.width}x{want.camera.height})")
    if want.camera.rate_hz != have.camera.rate_hz:
        notes.append(f"camera {have.camera.rate_hz:g} Hz (trained on {want.camera.rate_hz:g} Hz)")
    if want.audio.rate_hz != have.audio.rate_hz or want.audio.channels != have.audio.channels:
        notes.append(f"audio {have.audio.channels} ch at {have.audio.rate_hz:g} Hz (trained on "
                     f"{want.audio.channels} ch at {want.audio.rate_hz:g} Hz)")
    if want.action.rate_hz != have.action.rate_hz:
        notes.append(f"control at {have.action.rate_hz:g} Hz (trained on {want.action.rate_hz:g} Hz)")
    return notes


def require_task(run: RunInfo, task: str, force: bool) -> None:
    """HtouchError unless the policy was trained on `task` (or `force`: run it on another task anyway)."""
    if run.task is not None and run.task != task and not force:
        raise HtouchError(f"{run.run_dir}: the policy was trained on task {run.task!r}, not {task!r} "
                          "(pass --force to run it anyway)")
