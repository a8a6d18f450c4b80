"""The policy at run time: quasi open-loop control with a per-frame embedding cache.

As in the paper (section III-C, appendix A), each model call predicts H actions and the first h of them
(h = 2 by default) are executed one per control step without re-planning; the next step after those
re-plans from fresh observations. Every command, de-normalised, passes the collector's SafetyFilter.

The frames of a re-plan are chosen from the recent stream exactly as training chose them
(`htouch.dataset.episode.frame_indices`: the latest frame at or before each of n times spanning the 2 s
window), and the audio clip is gathered the same way (`gather_audio_clip`, then `audio.spectrogram`). Frame
embeddings are cached by capture time stamp: with the paper's timing (frames 2/3 s apart, re-plans every
2/30 s) the frames of one re-plan were the newest frames of earlier re-plans, so each re-plan encodes only
its newest frame. The audio clip is new at every re-plan and is always encoded.

Use it from a live stream with `ObservationBuffer` (add every Frame / AudioBlock as read, then
`runner.step(t_ns, ee_position)`), or give the observation directly to `runner.act`:

    runner = PolicyRunner.from_run("runs/zip-ours", SafetyFilter(rig_config.safety), execute=2)
    for each Frame / AudioBlock read:  runner.buffer.add_frame(frame) / runner.buffer.add_audio(block)
    every control tick:  robot.apply(runner.step(clock.now_ns(), robot.state().ee_pose[:3]))

Planning beside the control loop (`asynchronous=True`): a re-plan of the paper preset takes longer than a
30 Hz tick on a CPU, so the synchronous runner makes the re-plan tick late. The asynchronous runner asks a
worker thread (`Planner`) for the next plan every h ticks, with the observation up to the tick it asks at
(a snapshot of the buffer; frames and clip are chosen for that time), and keeps executing the current plan
meanwhile. Action i of a plan asked at time t is meant for the tick at t + i * period (as in training:
the i-th action commanded at or after the sample time), so a plan that arrives d ticks after it was asked
starts at its action d: the d actions whose ticks passed while planning are skipped (counted in
`actions_skipped`). A tick with no action left (before the first plan of an episode, or a plan later than
the H - h spare actions of the previous one cover) holds still (`ticks_held`); no tick ever waits for the
model. When planning takes longer than h ticks, the next plan is asked when the last arrives; if a divisor
of the frames' spacing (2/3 s = 20 ticks: 4 or 5) lies between that latency and H, at that many ticks after
the last ask, which keeps the older frames of each observation in the embedding cache.
On a simulated clock, `latency_ticks=L` makes this deterministic: each plan is adopted exactly L ticks
after it was asked (waited for then, which costs no simulated time); L = 0 is the synchronous schedule.
A failure in the worker is raised by the next control step as one HtouchError.
"""

from __future__ import annotations

import bisect
import copy
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from htouch.collector.devices import Action, AudioBlock, Frame
from htouch.collector.safety import FilteredAction, SafetyFilter
from htouch.dataset import audio as audio_params
from htouch.dataset.episode import SampleParams, frame_indices, gather_audio_clip
from htouch.dataset.schema import NS, AudioSpec, StreamSpecs
from htouch.errors import HtouchError
from htouch.training.checkpoints import load_run_checkpoint
from htouch.training.data import DataSpec
from htouch.training.methods import PolicyConfig
from htouch.training.model import ActionNormalization, AudioVisualPolicy, preprocess_frames
from htouch.training.onnx_encoders import OnnxEncoders
from htouch.training.run_dir import WEIGHTS_NAME


class ObservationBuffer:
    """The recent camera frames and audio blocks of a live stream, enough to build the observation at any
    time within the last `keep_s` seconds (the longer of the frame and audio windows plus a margin)."""

    def __init__(self, audio: AudioSpec, sample: SampleParams, margin_s: float = 1.0):
        self.audio = audio
        self.sample = sample
        self.keep_ns = int((max(sample.frame_window_s, sample.clip.window_s) + margin_s) * NS)
        self._frames: list[Frame] = []
        self._frame_times: list[int] = []
        self._blocks: list[AudioBlock] = []
        self._block_times: list[int] = []

    def add_frame(self, frame: Frame) -> None:
        i = bisect.bisect_right(self._frame_times, frame.timestamp_ns)
        self._frame_times.insert(i, int(frame.timestamp_ns))
        self._frames.insert(i, frame)
        self._prune(self._frame_times, self._frames)

    def add_audio(self, block: AudioBlock) -> None:
        if block.pcm.ndim != 2 or block.pcm.shape[1] != self.audio.channels:
            raise HtouchError(f"audio block of shape {block.pcm.shape}; the rig has {self.audio.channels} channels")
        i = bisect.bisect_right(self._block_times, block.timestamp_ns)
        self._block_times.insert(i, int(block.timestamp_ns))
        self._blocks.insert(i, block)
        self._prune(self._block_times, self._blocks)

    def _prune(self, times: list[int], items: list) -> None:
        """Drop what is older than keep_s before the newest item, keeping one item before that boundary (the
        latest at or before the oldest time still asked for)."""
        cut = bisect.bisect_left(times, times[-1] - self.keep_ns) - 1
        if cut > 0:
            del times[:cut], items[:cut]

    def clear(self) -> None:
        self._frames.clear(), self._frame_times.clear(), self._blocks.clear(), self._block_times.clear()

    def snapshot(self) -> ObservationBuffer:
        """A copy that later additions do not change (the lists are copied, not the frames and blocks they
        hold: microseconds), for a planner thread to choose its observation from."""
        copy = ObservationBuffer.__new__(ObservationBuffer)
        copy.audio, copy.sample, copy.keep_ns = self.audio, self.sample, self.keep_ns
        copy._frames, copy._frame_times = list(self._frames), list(self._frame_times)
        copy._blocks, copy._block_times = list(self._blocks), list(self._block_times)
        return copy

    def frames(self, t_ns: int) -> list[Frame]:
        """The n_frames frames of the observation at time t, oldest first (repeats where frames are missing)."""
        if not self._frames:
            raise HtouchError("no camera frame received yet: the policy cannot act")
        idx = frame_indices(np.asarray(self._frame_times, dtype=np.int64), t_ns, self.sample)
        return [self._frames[int(i)] for i in idx]

    def clip(self, t_ns: int) -> np.ndarray:
        """The mono, normalised audio clip [t - window, t] at sample.clip.rate_hz; silence where none."""
        if self._blocks:
            pcm = np.concatenate([b.pcm for b in self._blocks])
            offsets = np.cumsum([0] + [len(b.pcm) for b in self._blocks[:-1]]).astype(np.int64)
        else:
            pcm, offsets = np.zeros((0, self.audio.channels), np.int16), np.zeros(0, np.int64)
        return gather_audio_clip(t_ns, np.asarray(self._block_times, dtype=np.int64), offsets, pcm, self.audio,
                                 self.sample.clip, "live audio")


class Hearing(Protocol):
    """What a policy hears instead of the live audio: the evaluation's audio ablation
    (htouch.training.diagnostics.audio_condition: silent, shuffled). Only the policy's input changes; the
    loop still records the real audio."""

    def reset(self) -> None:
        """A new episode starts."""

    def clip(self, real: np.ndarray, t_ns: int) -> np.ndarray:
        """The mono normalised clip at the clip rate to hear at time t instead of `real` (same shape)."""


@dataclass
class RunnerCounters:
    steps: int = 0  # actions returned
    model_calls: int = 0  # re-plans (one forward of the fusion and head)
    frames_encoded: int = 0  # frames through the image encoder
    frames_from_cache: int = 0  # frames of a re-plan whose embedding was cached
    audio_encoded: int = 0  # clips through the audio encoder
    safety_changed: int = 0  # commands the safety filter changed
    actions_skipped: int = 0  # asynchronous: planned actions whose tick had passed when the plan arrived
    ticks_held: int = 0  # asynchronous: ticks with no planned action left (held still)


ENCODER_BACKENDS = ("torch", "onnxruntime")
PRECISIONS = ("float32", "bfloat16")  # the arithmetic of a re-plan (training is always float32)
PLAN_TIMEOUT_S = 30.0  # a plan asked for this long ago and still not made: the planner is stuck


def native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); elsewhere torch emulates it slowly.
    (oneDNN's own test, as torch's tests use it; False if a torch build lacks it.)"""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass
class Plan:
    """A chunk from the planner: action i (de-normalised, (H, action_dim)) is for the tick at t_ns + i * period."""

    t_ns: int  # the time of the observation it was made from (the tick it was asked at)
    actions: np.ndarray
    seconds: float  # wall time the planning took


class Planner:
    """One worker thread that makes plans one at a time: `submit` a job (a function returning the chunk),
    `take` the plan when it is done. The worker starts at the first job; `close` stops it. An exception in a
    job is kept and raised by `take` as HtouchError (the original as its cause)."""

    def __init__(self, name: str = "htouch-planner"):
        self.name = name
        self._cond = threading.Condition()
        self._job: tuple[int, Callable[[], np.ndarray]] | None = None
        self._done: Plan | None = None
        self._error: BaseException | None = None
        self._asked_at = 0.0  # monotonic seconds of the job in flight
        self._closed = False
        self._thread: threading.Thread | None = None
        self.plan_seconds: list[float] = []  # every plan's planning time (wall), for benchmarks
        self.plan_cpu_seconds: list[float] = []  # and the worker thread's CPU time for it

    @property
    def pending(self) -> bool:
        """A job was submitted and its plan not taken yet."""
        with self._cond:
            return self._job is not None or self._done is not None or self._error is not None

    def submit(self, t_ns: int, job: Callable[[], np.ndarray]) -> None:
        with self._cond:
            if self._closed:
                raise HtouchError("the planner was closed")
            if self._job is not None or self._done is not None:
                raise HtouchError("the planner has a plan in flight; take it before asking for another")
            self._job, self._asked_at = (int(t_ns), job), time.monotonic()
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def take(self, wait: bool = False) -> Plan | None:
        """The finished plan (once), or None while it is being made (`wait`: block until it is made, at most
        PLAN_TIMEOUT_S). Raises HtouchError if the job failed or the planner is stuck."""
        with self._cond:
            if wait:
                self._cond.wait_for(lambda: self._job is None, PLAN_TIMEOUT_S)
            if self._error is not None:
                e = self._error
                raise HtouchError(f"the policy failed while planning: {type(e).__name__}: {e}") from e
            if self._job is not None and time.monotonic() - self._asked_at > PLAN_TIMEOUT_S:
                raise HtouchError(f"the policy has not returned a plan in {PLAN_TIMEOUT_S:g} s")
            plan, self._done = self._done, None
            return plan

    def cancel(self) -> None:
        """Forget the job in flight (waiting for it to finish, at most PLAN_TIMEOUT_S) and any error."""
        with self._cond:
            self._cond.wait_for(lambda: self._job is None, PLAN_TIMEOUT_S)
            self._done = self._error = None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(PLAN_TIMEOUT_S)

    def _work(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._job is not None or self._closed)
                if self._closed:
                    return
                t_ns, job = self._job
            start, cpu = time.perf_counter(), time.thread_time()
            try:
                actions, error = job(), None
            except BaseException as e:  # noqa: BLE001 - raised in the control thread by take()
                actions, error = None, e
            with self._cond:
                if error is None:
                    self._done = Plan(t_ns, actions, time.perf_counter() - start)
                    self.plan_seconds.append(self._done.seconds)
                    self.plan_cpu_seconds.append(time.thread_time() - cpu)
                else:
                    self._error = error
                self._job = None
                self._cond.notify_all()


class PolicyRunner:
    def __init__(self, policy: AudioVisualPolicy, config: PolicyConfig, normalization: ActionNormalization,
                 safety: SafetyFilter, execute: int = 2, sample: SampleParams | None = None,
                 audio: AudioSpec | None = None, cache: bool = True, hearing: Hearing | None = None,
                 asynchronous: bool = False, latency_ticks: int | None = None, period_ns: int | None = None,
                 channels_last: bool = False, encoders: str = "torch", precision: str = "float32"):
        """`execute` = h, the actions run per model call (1 <= h <= H). `sample` fixes the observation window
        (default: the config's n_frames over 2 s, a 2 s clip); `audio` is the rig's audio spec, used to
        normalise live PCM in `buffer`. `cache=False` encodes every frame at every re-plan (for comparison).
        `hearing` replaces the live audio the policy hears (`heard_clip`); None: the real audio.
        `asynchronous`: plan in a worker thread (module docstring), re-planning every h ticks of `period_ns`
        (default 1/30 s); `latency_ticks` (simulated clocks): adopt each plan exactly that many ticks after
        asking, 0 <= L <= H - h; None: as soon as it is there. `channels_last`: the model's weights in the
        channels-last layout (faster convolutions on a CPU; changes `policy` in place). `encoders`: "torch", or
        "onnxruntime" to run the encoders with ONNX Runtime (htouch.training.onnx_encoders; the onnx extra).
        `precision`: "bfloat16" computes re-plans with a bfloat16 copy of the weights under torch's autocast
        (2-3x faster on a CPU with AMX or AVX512-BF16; embeddings within about 1 % of float32's,
        docs/bench-async-policy.md); torch encoders only, and only on such a CPU.
        Call `close` when done with an asynchronous runner (its worker thread is a daemon, so forgetting it
        does not block exit)."""
        if encoders not in ENCODER_BACKENDS:
            raise HtouchError(f"encoders must be {' or '.join(ENCODER_BACKENDS)}, not {encoders!r}")
        if precision not in PRECISIONS:
            raise HtouchError(f"precision must be {' or '.join(PRECISIONS)}, not {precision!r}")
        if precision == "bfloat16" and encoders != "torch":
            raise HtouchError(f"bfloat16 re-plans need the torch encoders ({encoders} computes in float32)")
        if precision == "bfloat16" and not native_bfloat16():
            raise HtouchError("this CPU has no native bfloat16 (AVX512-BF16 or AMX): use float32")
        if not 1 <= execute <= config.horizon:
            raise HtouchError(f"execute must be between 1 and the horizon {config.horizon}, got {execute}")
        if latency_ticks is not None and not (asynchronous and 0 <= latency_ticks <= config.horizon - execute):
            raise HtouchError(f"latency_ticks must be between 0 and horizon - execute = {config.horizon - execute} "
                              f"with asynchronous planning, got {latency_ticks}")
        if len(normalization.mean) != config.action_dim:
            raise HtouchError(f"action normalization has {len(normalization.mean)} dimensions; the policy predicts "
                              f"{config.action_dim}")
        self.sample = sample or SampleParams(n_frames=config.n_frames, horizon=config.horizon)
        if self.sample.n_frames != config.n_frames:
            raise HtouchError(f"the observation has {self.sample.n_frames} frames; the policy takes {config.n_frames}")
        # bfloat16: a copy with bfloat16 weights (autocast would cast every weight at every call, half its gain)
        self.policy = (copy.deepcopy(policy).to(torch.bfloat16) if precision == "bfloat16" else policy).eval()
        self.config = config
        self.normalization = normalization
        self.safety = safety
        self.execute = execute
        self.use_cache = cache
        self.hearing = hearing
        self.spectrogram_params = audio_params.spectrogram_params(config.audio_kind) if config.uses_audio else None
        self.buffer = ObservationBuffer(audio or AudioSpec(), self.sample)
        self.counters = RunnerCounters()
        self.last: FilteredAction | None = None  # the last command and what the safety filter changed
        self._plan: deque[np.ndarray] = deque()
        self._cache: dict[int, torch.Tensor] = {}  # asynchronous: used by the worker thread only
        self.encoders = encoders
        self.precision = precision
        self._encoders: AudioVisualPolicy | OnnxEncoders = self.policy
        if encoders == "onnxruntime":
            shape = None
            if config.uses_audio:
                silence = np.zeros(self.sample.clip.n_samples, np.float32)
                shape = (1, *audio_params.spectrogram(silence, self.sample.clip.rate_hz, self.spectrogram_params).shape)
            self._encoders = OnnxEncoders(self.policy, config.image_size, shape, torch.get_num_threads())
        if channels_last:
            self.policy.to(memory_format=torch.channels_last)
        self._memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.asynchronous = asynchronous
        self.latency_ticks = latency_ticks
        self.period_ns = int(period_ns or round(NS / 30))
        self.planner = Planner() if asynchronous else None
        self._chunk: Plan | None = None  # asynchronous: the plan being executed
        self._asked_ns: int | None = None  # asynchronous: when the plan in flight (or the last one) was asked
        self._next_ask_ns: int | None = None  # asynchronous: when the next plan is due
        spacing = self.sample.frame_window_s / max(self.sample.n_frames - 1, 1) * NS / self.period_ns
        # Ticks between the observation's frames, when whole: asking every divisor (or multiple) of it keeps
        # each plan's older frames in the cache (they were the newest frames of earlier plans).
        self._frame_spacing = round(spacing) if self.sample.n_frames > 1 and abs(spacing - round(spacing)) < 1e-6 \
            else None
        self._last_t: int | None = None  # asynchronous: the last tick stepped

    @classmethod
    def from_run(cls, run_dir: str | Path, safety: SafetyFilter, execute: int = 2, audio: AudioSpec | None = None,
                 name: str = WEIGHTS_NAME, hearing: Hearing | None = None, **options) -> PolicyRunner:
        """A runner for a trained policy: the weights, config, action normalization and observation window of a
        run directory (as `htouch train` writes it). `audio` is the live rig's audio spec, which normalises its
        PCM; by default the training rig's. `options`: the constructor's asynchronous, latency_ticks,
        channels_last, encoders, precision (the control period is the training rig's action rate)."""
        model, config, extra = load_run_checkpoint(run_dir, name)
        if "action_normalization" not in extra:
            raise HtouchError(f"{run_dir}: config.json has no action_normalization")
        norm = ActionNormalization.from_dict(extra["action_normalization"])
        sample = DataSpec.from_dict(extra["data"]).sample_params if isinstance(extra.get("data"), dict) else None
        streams = StreamSpecs.from_dict(extra["rig"]) if isinstance(extra.get("rig"), dict) else None
        if audio is None and streams is not None:
            audio = streams.audio
        if streams is not None and "period_ns" not in options:
            options["period_ns"] = int(round(NS / streams.action.rate_hz))
        return cls(model, config, norm, safety, execute=execute, sample=sample, audio=audio, hearing=hearing,
                   **options)

    @property
    def needs_observation(self) -> bool:
        """True when the next step re-plans (synchronous: the executed part of the last plan is used up;
        asynchronous: the next tick asks for a plan)."""
        if self.asynchronous:
            return self._next_ask_ns is None or self._due((self._last_t or 0) + self.period_ns)
        return not self._plan

    def reset(self) -> None:
        """Start a new episode: no plan, no cached frames, an empty buffer (counters keep counting). An
        asynchronous runner first lets a plan in flight finish (it is thrown away)."""
        if self.planner is not None:
            self.planner.cancel()
        self._plan.clear()
        self._chunk = self._asked_ns = self._next_ask_ns = self._last_t = None
        self._cache.clear()
        self.buffer.clear()
        if self.hearing is not None:
            self.hearing.reset()

    def close(self) -> None:
        """Stop an asynchronous runner's worker thread (nothing to do for a synchronous one)."""
        if self.planner is not None:
            self.planner.close()

    def heard_clip(self, t_ns: int) -> np.ndarray:
        """The audio clip the policy hears at time t: the live buffer's, or what `hearing` puts in its place.
        Every live re-plan takes its audio from here."""
        real = self.buffer.clip(t_ns)
        return real if self.hearing is None else self.hearing.clip(real, t_ns)

    def step(self, t_ns: int, ee_position: np.ndarray) -> Action:
        """One control step at time t from the live `buffer`."""
        if self.asynchronous:
            return self.act_at(t_ns, ee_position, self.buffer.snapshot)
        if not self._plan:
            clip = self.heard_clip(t_ns) if self.config.uses_audio else None
            return self.act(ee_position, self.buffer.frames(t_ns), clip)
        return self.act(ee_position)

    def act(self, ee_position: np.ndarray, frames: Sequence[Frame] | None = None,
            audio: np.ndarray | None = None) -> Action:
        """One control step. When a re-plan is due, `frames` (n_frames Frames, oldest first, uint8 RGB; each
        time stamp names the frame in the cache) and `audio` (the mono normalised clip at the clip rate, or its
        spectrogram already computed) are required; otherwise they are ignored."""
        if self.asynchronous:
            raise HtouchError("an asynchronous runner acts through step or act_at")
        if not self._plan:
            self._replan(frames, audio)
        return self._command(self._plan.popleft(), ee_position)

    # ------------------------------------------------------------------------------- asynchronous

    def _due(self, t_ns: int) -> bool:
        """Is a plan to be asked for at tick t (the first at once, then see `_interval`)?"""
        return self._next_ask_ns is None or t_ns >= self._next_ask_ns - self.period_ns // 2

    def _interval(self, latency: int) -> int:
        """Ticks from one plan's asking to the next's, for a plan that arrived `latency` ticks after it was
        asked: h, or when planning takes longer, the smallest divisor of the frame spacing from the latency up
        to H (a plan still covers the ticks until the next arrives), else the latency. Asking at intervals
        that do not divide the spacing leaves the older frames of each observation uncached: up to n encodes
        per plan on a machine already too slow for one."""
        need = max(self.execute, latency)
        if need == self.execute or self._frame_spacing is None:
            return need
        s = self._frame_spacing
        return min([d for d in range(need, min(s, self.config.horizon) + 1) if s % d == 0] or [need])

    def act_at(self, t_ns: int, ee_position: np.ndarray, observe: Callable[[], ObservationBuffer]) -> Action:
        """One control step at tick t of an asynchronous runner. `observe()` returns the observation buffer as
        of t (a snapshot the caller will not change; called only when a plan is asked for). Returns at once
        with the current plan's action for t, or a hold (zero motion, the last gripper command) when none is
        left; raises HtouchError if the worker failed."""
        if self.planner is None:
            raise HtouchError("act_at is for an asynchronous runner (asynchronous=True)")
        t_ns = int(t_ns)
        self._last_t = t_ns
        if self._asked_ns is not None and self.planner.pending:
            if self.latency_ticks is None:
                self._adopt(self.planner.take(), t_ns)
            elif t_ns >= self._asked_ns + self.latency_ticks * self.period_ns - self.period_ns // 2:
                self._adopt(self.planner.take(wait=True), t_ns)
        if not self.planner.pending and self._due(t_ns):
            buffer = observe()
            self.planner.submit(t_ns, lambda: self._plan_from(buffer, t_ns))
            self._asked_ns, self._next_ask_ns = t_ns, t_ns + self.execute * self.period_ns
            if self.latency_ticks == 0:
                self._adopt(self.planner.take(wait=True), t_ns)
        i = -1 if self._chunk is None else (t_ns - self._chunk.t_ns + self.period_ns // 2) // self.period_ns
        if not 0 <= i < len(self._chunk.actions if self._chunk is not None else ()):
            self.counters.ticks_held += 1
            return self._command(np.zeros(self.config.action_dim), ee_position, hold=True)
        return self._command(self._chunk.actions[i], ee_position)

    def _adopt(self, plan: Plan | None, t_ns: int) -> None:
        """Execute `plan` from tick t on: its actions for earlier ticks are skipped."""
        if plan is None:
            return
        self._chunk = plan
        late = max(0, (t_ns - plan.t_ns + self.period_ns // 2) // self.period_ns)
        self.counters.actions_skipped += late
        self._next_ask_ns = plan.t_ns + self._interval(late) * self.period_ns

    def _plan_from(self, buffer: ObservationBuffer, t_ns: int) -> np.ndarray:
        """The worker's job: the observation at t from the snapshot, and the plan (all H actions)."""
        frames = buffer.frames(t_ns)
        clip = None
        if self.config.uses_audio:
            real = buffer.clip(t_ns)
            clip = real if self.hearing is None else self.hearing.clip(real, t_ns)
        return self._chunk_for(frames, clip)

    def _command(self, raw: np.ndarray, ee_position: np.ndarray, hold: bool = False) -> Action:
        gripper = float(raw[6]) if self.config.action_dim == 7 and not hold else self.safety.last_gripper
        self.last = self.safety(Action(raw[:6].copy(), gripper), ee_position)
        self.counters.steps += 1
        self.counters.safety_changed += bool(self.last.reasons)
        return self.last.action

    # ------------------------------------------------------------------------------- planning

    def _replan(self, frames: Sequence[Frame] | None, audio: np.ndarray | None) -> None:
        self._plan.extend(self._chunk_for(frames, audio)[:self.execute])

    def _networks(self) -> torch.autocast:
        """The arithmetic of the networks (not of the spectrogram): bfloat16 autocast when asked. Autocast is per
        thread, so it is entered where the networks run, in the planner's thread as in the control thread."""
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bfloat16")

    @torch.inference_mode()
    def _chunk_for(self, frames: Sequence[Frame] | None, audio: np.ndarray | None) -> np.ndarray:
        """The de-normalised (H, action_dim) chunk for this observation (see `act`)."""
        c = self.config
        if frames is None or len(frames) != c.n_frames:
            raise HtouchError(f"re-planning needs {c.n_frames} frames, got {0 if frames is None else len(frames)}")
        if c.uses_audio and audio is None:
            raise HtouchError(f"re-planning needs the audio clip ({c.method} hears)")
        keys = [int(f.timestamp_ns) for f in frames]
        if self.use_cache:
            new = {k: f for k, f in zip(keys, frames, strict=True) if k not in self._cache}  # each unseen frame once
            self.counters.frames_from_cache += sum(k in self._cache for k in keys)
        else:
            new = dict(enumerate(frames))  # every frame, as a plain forward does
            keys = list(new)
        if new:
            device = self.policy.pos_embedding.device
            x = preprocess_frames(np.stack([f.rgb for f in new.values()]), c.image_size).to(device)
            x = x.contiguous(memory_format=self._memory_format)
            with self._networks():
                embeddings = dict(zip(new, self._encoders.encode_frames(x), strict=True))
            self.counters.frames_encoded += len(new)
        cache = {**self._cache, **embeddings} if new else self._cache
        if self.use_cache:
            self._cache = cache
        frame_emb = torch.stack([cache[k] for k in keys]).unsqueeze(0)
        audio_emb = None
        if c.uses_audio:
            spectrogram = (audio_params.spectrogram(audio, self.sample.clip.rate_hz, self.spectrogram_params)
                           if audio.ndim == 1 else audio)
            with self._networks():
                audio_emb = self._encoders.encode_audio(torch.as_tensor(spectrogram, dtype=torch.float32,
                                                                     device=frame_emb.device).unsqueeze(0))
            self.counters.audio_encoded += 1
        with self._networks():
            chunk = self.policy.head(frame_emb, audio_emb)[0].double().cpu().numpy()
        self.counters.model_calls += 1
        actions = self.normalization.denormalize(chunk)
        if self.use_cache:  # later re-plans look at later times: frames older than this plan's oldest are done
            oldest = min(keys)
            for k in [k for k in self._cache if k < oldest]:
                del self._cache[k]
        return actions
