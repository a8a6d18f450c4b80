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
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from htouch.collector.devices import Action, AudioBlock, Frame
from htouch.collector.safety import FilteredAction, SafetyFilter
from htouch.dataset import audio as audio_params
from htouch.dataset.episode import SampleParams, frame_indices, gather_audio_clip
from htouch.dataset.schema import NS, AudioSpec, RigSpec
from htouch.errors import HtouchError
from htouch.training.checkpoints import load_run_checkpoint
from htouch.training.data import DataSpec
from htouch.training.methods import PolicyConfig
from htouch.training.model import ActionNormalization, AudioVisualPolicy, preprocess_frames
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


class PolicyRunner:
    def __init__(self, policy: AudioVisualPolicy, config: PolicyConfig, normalization: ActionNormalization,
                 safety: SafetyFilter, execute: int = 2, sample: SampleParams | None = None,
                 audio: AudioSpec | None = None, cache: bool = True, hearing: Hearing | None = None):
        """`execute` = h, the actions run per model call (1 <= h <= H). `sample` fixes the observation window
        (default: the config's n_frames over 2 s, a 2 s clip); `audio` is the rig's audio spec, used to
        normalise live PCM in `buffer`. `cache=False` encodes every frame at every re-plan (for comparison).
        `hearing` replaces the live audio the policy hears (`heard_clip`); None: the real audio."""
        if not 1 <= execute <= config.horizon:
            raise HtouchError(f"execute must be between 1 and the horizon {config.horizon}, got {execute}")
        if len(normalization.mean) != config.action_dim:
            raise HtouchError(f"action normalization has {len(normalization.mean)} dimensions; the policy predicts "
                              f"{config.action_dim}")
        self.sample = sample or SampleParams(n_frames=config.n_frames, horizon=config.horizon)
        if self.sample.n_frames != config.n_frames:
            raise HtouchError(f"the observation has {self.sample.n_frames} frames; the policy takes {config.n_frames}")
        self.policy = policy.eval()
        self.config = config
        self.normalization = normalization
        self.safety = safety
        self.execute = execute
        self.use_cache = cache
        self.hearing = hearing
        self.spec_params = audio_params.spectrogram_params(config.audio_kind) if config.uses_audio else None
        self.buffer = ObservationBuffer(audio or AudioSpec(), self.sample)
        self.counters = RunnerCounters()
        self.last: FilteredAction | None = None  # the last command and what the safety filter changed
        self._plan: deque[np.ndarray] = deque()
        self._cache: dict[int, torch.Tensor] = {}

    @classmethod
    def from_run(cls, run_dir: str | Path, safety: SafetyFilter, execute: int = 2, audio: AudioSpec | None = None,
                 name: str = WEIGHTS_NAME, hearing: Hearing | None = None) -> PolicyRunner:
        """A runner for a trained policy: the weights, config, action normalization and observation window of a
        run directory (as `htouch train` writes it). `audio` is the live rig's audio spec, which normalises its
        PCM; by default the training rig's."""
        model, config, extra = load_run_checkpoint(run_dir, name)
        if "action_normalization" not in extra:
            raise HtouchError(f"{run_dir}: config.json has no action_normalization")
        norm = ActionNormalization.from_dict(extra["action_normalization"])
        sample = DataSpec.from_dict(extra["data"]).sample_params if isinstance(extra.get("data"), dict) else None
        if audio is None and isinstance(extra.get("rig"), dict):
            audio = RigSpec.from_dict(extra["rig"]).audio
        return cls(model, config, norm, safety, execute=execute, sample=sample, audio=audio, hearing=hearing)

    @property
    def needs_observation(self) -> bool:
        """True when the next step re-plans (the executed part of the last plan is used up)."""
        return not self._plan

    def reset(self) -> None:
        """Start a new episode: no plan, no cached frames, an empty buffer (counters keep counting)."""
        self._plan.clear()
        self._cache.clear()
        self.buffer.clear()
        if self.hearing is not None:
            self.hearing.reset()

    def heard_clip(self, t_ns: int) -> np.ndarray:
        """The audio clip the policy hears at time t: the live buffer's, or what `hearing` puts in its place.
        Every live re-plan takes its audio from here."""
        real = self.buffer.clip(t_ns)
        return real if self.hearing is None else self.hearing.clip(real, t_ns)

    def step(self, t_ns: int, ee_position: np.ndarray) -> Action:
        """One control step at time t from the live `buffer`."""
        if not self._plan:
            clip = self.heard_clip(t_ns) if self.config.uses_audio else None
            return self.act(ee_position, self.buffer.frames(t_ns), clip)
        return self.act(ee_position)

    def act(self, ee_position: np.ndarray, frames: Sequence[Frame] | None = None,
            audio: np.ndarray | None = None) -> Action:
        """One control step. When a re-plan is due, `frames` (n_frames Frames, oldest first, uint8 RGB; each
        time stamp names the frame in the cache) and `audio` (the mono normalised clip at the clip rate, or its
        spectrogram already computed) are required; otherwise they are ignored."""
        if not self._plan:
            self._replan(frames, audio)
        raw = self._plan.popleft()
        gripper = float(raw[6]) if self.config.action_dim == 7 else self.safety.last_gripper
        self.last = self.safety(Action(raw[:6].copy(), gripper), ee_position)
        self.counters.steps += 1
        self.counters.safety_changed += bool(self.last.reasons)
        return self.last.action

    @torch.inference_mode()
    def _replan(self, frames: Sequence[Frame] | None, audio: np.ndarray | None) -> None:
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
            embeddings = dict(zip(new, self.policy.encode_frames(x), strict=True))
            self.counters.frames_encoded += len(new)
        cache = {**self._cache, **embeddings} if new else self._cache
        if self.use_cache:
            self._cache = cache
        frame_emb = torch.stack([cache[k] for k in keys]).unsqueeze(0)
        audio_emb = None
        if c.uses_audio:
            spec = audio_params.spectrogram(audio, self.sample.clip.rate_hz, self.spec_params) if audio.ndim == 1 \
                else audio
            audio_emb = self.policy.encode_audio(torch.as_tensor(spec, dtype=torch.float32,
                                                                 device=frame_emb.device).unsqueeze(0))
            self.counters.audio_encoded += 1
        chunk = self.policy.head(frame_emb, audio_emb)[0].double().cpu().numpy()
        self.counters.model_calls += 1
        actions = self.normalization.denormalize(chunk)
        self._plan.extend(actions[:self.execute])
        if self.use_cache:  # later re-plans look at later times: frames older than this plan's oldest are done
            oldest = min(keys)
            for k in [k for k in self._cache if k < oldest]:
                del self._cache[k]
