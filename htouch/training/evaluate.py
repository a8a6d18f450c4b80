"""Closed-loop evaluation of a trained policy on the simulated rig.

Each episode is a new scene of the task (scene k of seed s, drawn as the simulated rig draws it); the
policy drives the rig through the recording loop (htouch.training.policy_source) until the task succeeds or
the time limit. The success rate comes with a Wilson 95 % confidence interval, the reward is the task's
progress in [0, 1] at the end of the episode. The simulated rig is configured like the rig the policy was
trained on (camera size and rate, audio rate and channels, control rate: the run's config.json).

Episodes go into a dataset when asked (`record`), otherwise into a temporary one that is deleted: the
loop records every rollout, so what is evaluated is exactly what a recorded rollout would hold.

`audio` ablates what the policy hears (real, silent, shuffled: htouch.training.diagnostics); the rollouts
still record the rig's real audio.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from htouch.collector.config import BOUNDS, RigConfig, allowed_range
from htouch.collector.devices import DeviceError
from htouch.dataset.files import write_json_atomic
from htouch.dataset.store import Dataset
from htouch.errors import DatasetError, HtouchError
from htouch.sim.scene import VARIATIONS
from htouch.training.constants import DEFAULT_SEED, TIME_LIMIT_FACTOR
from htouch.training.policy_source import (
    PolicySource,
    RunInfo,
    check_streams_match,
    planning_options,
    require_task,
)

FALLBACK_TIME_LIMIT_S = 60.0  # when the training dataset cannot be read
CONFIDENCE = 0.95


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval of a success rate (scipy's binomtest); (0, 1) without trials."""
    if n == 0:
        return 0.0, 1.0
    from scipy.stats import binomtest

    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


@dataclass
class EvalConfig:
    run_dir: Path
    task: str | None = None  # None: the task the policy was trained on
    episodes: int = 50
    variation: str = "train"
    seed: int = DEFAULT_SEED
    execute: int = 2  # h: actions executed per model call
    max_seconds: float | None = None  # None: TIME_LIMIT_FACTOR x the longest training demonstration
    record: Path | None = None  # a dataset to keep the rollouts in
    force: bool = False  # run a policy on a task it was not trained on
    threads: int | None = None  # torch threads for the policy (None: torch's default)
    audio: str = "real"  # what the policy hears: real, silent or shuffled (htouch.training.diagnostics)
    audio_from: Path | None = None  # shuffled audio's dataset (None: the run's training dataset)
    planner: str = "sync"  # "async": planned beside the loop, each plan used plan_latency ticks after asking
    plan_latency: int | None = None  # async: ticks (None: policy_source.DEFAULT_PLAN_LATENCY)
    precision: str = "float32"  # the re-plans' arithmetic: float32 or bfloat16 (runner.PRECISIONS)

    def check(self) -> None:
        if self.episodes < 1:
            raise HtouchError(f"--episodes must be at least 1, got {self.episodes}")
        if self.variation not in VARIATIONS:
            raise HtouchError(f"--variation must be {' or '.join(VARIATIONS)}, not {self.variation!r}")
        if self.seed < 0:
            raise HtouchError(f"--seed must be 0 or more, got {self.seed}")
        if self.threads is not None and self.threads < 1:
            raise HtouchError(f"--threads must be at least 1, got {self.threads}")
        planning_options(self.planner, False, self.plan_latency, self.precision)


@dataclass
class EpisodeResult:
    index: int  # in the dataset the rollout was recorded into
    scene: int | None  # the simulated rig's scene number (with the seed, it fixes the layout)
    success: bool
    reward: float
    duration_s: float
    end: str  # "success" (the task succeeded), "time limit", ...
    model_calls: int = 0

    @classmethod
    def from_info(cls, index: int, success: bool | None, info: dict[str, Any]) -> EpisodeResult:
        counters = info.get("policy_counters") or {}
        return cls(index=index, scene=info.get("sim_episode"), success=bool(success),
                   reward=float(info.get("reward", 0.0)), duration_s=float(info.get("duration_s", 0.0)),
                   end=str(info.get("end", "")), model_calls=int(counters.get("model_calls", 0)))


@dataclass
class EvalResult:
    config: dict[str, Any]
    run: dict[str, Any]
    task: str
    variation: str
    time_limit_s: float
    episodes: list[EpisodeResult]
    wall_s: float
    notes: list[str] = field(default_factory=list)
    audio: dict[str, Any] = field(default_factory=lambda: {"condition": "real"})  # what the policy heard

    @property
    def n(self) -> int:
        return len(self.episodes)

    @property
    def successes(self) -> int:
        return sum(e.success for e in self.episodes)

    @property
    def rate(self) -> float:
        return self.successes / self.n if self.n else float("nan")

    @property
    def ci(self) -> tuple[float, float]:
        return wilson_interval(self.successes, self.n)

    @property
    def reward_mean(self) -> float:
        return float(np.mean([e.reward for e in self.episodes])) if self.episodes else float("nan")

    @property
    def reward_std(self) -> float:
        return float(np.std([e.reward for e in self.episodes])) if self.episodes else float("nan")

    @property
    def length_mean_s(self) -> float:
        return float(np.mean([e.duration_s for e in self.episodes])) if self.episodes else float("nan")

    def summary(self) -> dict[str, Any]:
        low, high = self.ci
        return {"episodes": self.n, "successes": self.successes, "success_rate": self.rate,
                "ci_low": low, "ci_high": high, "confidence": CONFIDENCE, "ci_method": "wilson",
                "reward_mean": self.reward_mean, "reward_std": self.reward_std,
                "length_mean_s": self.length_mean_s}

    def describe(self) -> str:
        low, high = self.ci
        return (f"success {self.successes}/{self.n} = {self.rate:.0%} (95% CI {low:.0%}-{high:.0%}), "
                f"reward {self.reward_mean:.2f} ± {self.reward_std:.2f}, mean length {self.length_mean_s:.1f} s, "
                f"audio {self.audio['condition']}")

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "variation": self.variation, "audio": self.audio["condition"], **self.summary(),
                "time_limit_s": self.time_limit_s, "audio_condition": self.audio,
                "wall_s": round(self.wall_s, 1), "run": self.run, "settings": self.config, "notes": self.notes,
                "per_episode": [dataclasses.asdict(e) for e in self.episodes],
                "host": {"python": platform.python_version(), "torch": torch.__version__,
                         "machine": platform.machine()}}

    def write(self, path: Path) -> None:
        write_json_atomic(path, self.to_dict())


def default_time_limit(run: RunInfo) -> tuple[float, str]:
    """TIME_LIMIT_FACTOR x the longest training demonstration, and where the figure came from."""
    if run.dataset_root:
        try:
            ds = Dataset(run.dataset_root)
            durations = [ds.episode(i).duration_s for i in run.train_episodes]
        except (HtouchError, DatasetError, OSError, KeyError, ValueError):
            durations = []
        if durations and max(durations) > 0:
            return (round(TIME_LIMIT_FACTOR * max(durations), 1),
                    f"{TIME_LIMIT_FACTOR:g} x the longest training demonstration ({max(durations):.1f} s)")
    return FALLBACK_TIME_LIMIT_S, "the training dataset is not readable: the default limit"


def task_and_time_limit(run: RunInfo, task: str | None, max_seconds: float | None,
                        force: bool) -> tuple[str, float, str]:
    """The task to run the policy on (default: its training task), and the time limit with where it came from."""
    task = task or run.task
    if task is None:
        raise HtouchError(f"{run.run_dir}: the run does not say its task; pass --task")
    require_task(run, task, force)
    if max_seconds is None:
        return (task, *default_time_limit(run))
    check_time_limit(max_seconds)
    return task, float(max_seconds), "--max-seconds"


def check_time_limit(max_seconds: float | None) -> None:
    """The limit becomes the rig's [control] max_episode_s, so it obeys that key's range."""
    lo, hi = BOUNDS[("control", "max_episode_s")]
    if max_seconds is not None and not (max_seconds > 0 and math.isfinite(max_seconds) and lo <= max_seconds <= hi):
        raise HtouchError(f"--max-seconds must be a positive number, got {max_seconds:g} "
                          f"(allowed: {allowed_range('control', 'max_episode_s')} s)")


def sim_rig_config(run: RunInfo, max_seconds: float, base: RigConfig | None = None) -> RigConfig:
    """The simulated rig's configuration with the streams the policy was trained on."""
    cfg = base or RigConfig()
    try:
        if run.streams is not None:
            cam, audio = run.streams.camera, run.streams.audio
            cfg.camera = dataclasses.replace(cfg.camera, width=cam.width, height=cam.height,
                                             fps=int(round(cam.rate_hz)))
            cfg.microphones = dataclasses.replace(cfg.microphones, rate_hz=int(round(audio.rate_hz)),
                                                  channels=audio.channels)
            rate = run.streams.action.rate_hz
        else:
            rate = cfg.control.rate_hz
        cfg.control = dataclasses.replace(cfg.control, rate_hz=rate, max_episode_s=max_seconds)
    except ValueError as e:  # a config value the rig refuses
        raise HtouchError(f"{run.run_dir}: the training rig cannot be simulated: {e}") from None
    cfg.kind = "sim"
    return cfg


def evaluate(config: EvalConfig, on_episode: Callable[[EpisodeResult], None] | None = None,
             on_message: Callable[[str], None] | None = None) -> EvalResult:
    """Run the policy for config.episodes episodes on the simulated rig; see the module docstring."""
    from htouch.collector.loop import Recorder
    from htouch.rigs import NO_OPERATOR, build_rig
    from htouch.training.diagnostics import audio_condition, describe_condition

    config.check()
    run = RunInfo.read(config.run_dir)
    task, limit, limit_note = task_and_time_limit(run, config.task, config.max_seconds, config.force)
    hearing = audio_condition(config.audio, run, config.seed, config.audio_from)
    rig_config = sim_rig_config(run, limit)
    threads = torch.get_num_threads()
    start = time.perf_counter()
    episodes: list[EpisodeResult] = []
    try:
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        try:
            rig = build_rig(rig_config, task, NO_OPERATOR, seed=config.seed, variation=config.variation,
                            realtime=False)
        except DeviceError as e:
            raise HtouchError(f"cannot build the simulated rig: {e}") from None
        try:
            notes = [f"time limit {limit:g} s: {limit_note}"] + [f"rig differs: {n}" for n in
                                                                  check_streams_match(run, rig.streams)]
            source = PolicySource.from_run(config.run_dir, rig_config.safety, rig.streams.audio, config.execute,
                                           hearing=hearing, operator=False, task_success=rig.task_success,
                                           task_progress=rig.task_progress, task_failed=rig.task_failed,
                                           **planning_options(config.planner, False, config.plan_latency,
                                                              config.precision))
            rig.closers.append(source.close)
            with _dataset_dir(config.record) as root:
                ds = Dataset.open_or_create(root, task, rig.streams)
                recorder = Recorder(rig, ds, rig_config.control, rig_config.mapping, rig_config.safety,
                                    variation=config.variation, source=source, on_message=on_message)

                def done(outcome) -> None:
                    if outcome.result == "discarded":
                        return
                    episodes.append(EpisodeResult.from_info(outcome.index, outcome.result == "success",
                                                            outcome.info))
                    if on_episode is not None:
                        on_episode(episodes[-1])

                recorder.on_outcome = done
                result = recorder.run(config.episodes)
        finally:
            rig.close()
    finally:
        torch.set_num_threads(threads)
    if result.interrupted:
        raise KeyboardInterrupt
    if result.error:
        raise HtouchError(f"evaluation stopped after {len(episodes)} episode(s): {result.error}")
    settings = {**dataclasses.asdict(config), "task": task, "run_dir": str(Path(config.run_dir).resolve()),
                "record": str(config.record.resolve()) if config.record else None,
                "camera": f"{rig.streams.camera.width}x{rig.streams.camera.height}@{rig.streams.camera.rate_hz:g}",
                "audio": f"{rig.streams.audio.channels}x{rig.streams.audio.rate_hz:g}",
                "control_rate_hz": rig_config.control.rate_hz,
                "audio_from": str(config.audio_from.resolve()) if config.audio_from else None}
    return EvalResult(settings, run.summary(), task, config.variation, limit, episodes,
                      time.perf_counter() - start, notes, describe_condition(hearing))


@contextlib.contextmanager
def _dataset_dir(record: Path | None) -> Iterator[Path]:
    """The dataset directory to record into: the given one, or a temporary one deleted afterwards."""
    if record is not None:
        yield Path(record)
        return
    with tempfile.TemporaryDirectory(prefix="htouch-eval-") as tmp:
        yield Path(tmp) / "rollouts"
