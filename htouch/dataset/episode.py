"""Reading an episode: arrays by stream, and time-aligned training samples.

Everything is chosen by time stamps, never by assuming rates: the frames shown at time t are the latest
captured at or before each of k times spanning the window, the audio clip is gathered sample by sample
from the block time stamps (gaps stay silent, not shifted), the state is the latest at or before t, and
the actions are the next H commanded at or after t.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

import htouch.dataset.codecs  # noqa: F401 - registers the image codecs
from htouch.dataset.audio import DEFAULT_CLIP, ClipParams, resample
from htouch.dataset.location import UrlPath, location, zarr_store_or_path
from htouch.dataset.schema import ATTR_FORMAT, NS, AudioSpec, StreamSpecs, check_strict_json
from htouch.errors import DatasetError

if TYPE_CHECKING:
    from htouch.dataset.store import Dataset



@dataclass(frozen=True)
class SampleParams:
    """What one training sample holds (the paper: 4 frames over 2 s, a 2 s clip, H future actions)."""

    n_frames: int = 4
    frame_window_s: float = 2.0
    clip: ClipParams = field(default_factory=ClipParams)
    horizon: int = 8

    def __post_init__(self) -> None:
        if self.n_frames < 1 or self.horizon < 1 or self.frame_window_s < 0:
            raise DatasetError("a sample needs n_frames >= 1, horizon >= 1 and a non-negative window")


@dataclass
class Sample:
    t_ns: int
    frames: np.ndarray  # (k, H, W, 3) uint8
    frame_times_ns: np.ndarray  # (k,) capture times of the frames chosen
    audio: np.ndarray  # (clip samples,) float32, mono, normalised, at clip.rate_hz
    state: np.ndarray  # (7 + n_joints + 1,) ee_pose, joints, gripper width
    actions: np.ndarray  # (H, 7) delta_ee + gripper
    action_mask: np.ndarray  # (H,) False where the episode ended before H actions


def frame_indices(camera_times: np.ndarray, t_ns: int, params: SampleParams) -> np.ndarray:
    """Indices of the k frames at or before k times evenly spanning [t - window, t] (an episode's frames or
    a live buffer's: training and the policy runner choose frames the same way)."""
    k = params.n_frames
    if k == 1:
        targets = np.array([t_ns])
    else:
        targets = t_ns - np.round(np.linspace(params.frame_window_s, 0.0, k) * NS).astype(np.int64)
    idx = np.searchsorted(camera_times, targets, side="right") - 1
    return np.clip(idx, 0, max(len(camera_times) - 1, 0))


def gather_audio_clip(t_ns: int, block_times: np.ndarray, block_offsets: np.ndarray, pcm: zarr.Array | np.ndarray,
                      spec: AudioSpec, clip: ClipParams = DEFAULT_CLIP, where: str = "audio") -> np.ndarray:
    """The clip [t - window, t] from audio blocks (first-sample times, offsets into pcm (n, C)), mono,
    normalised, resampled to clip.rate_hz; silence where no audio. Shared by episodes and live buffers."""
    rate = spec.rate_hz
    n_native = int(round(clip.window_s * rate))
    # Ask for each native-rate slot of the window which recorded sample was captured then.
    slot_times = t_ns - (np.arange(n_native, 0, -1) - 1) * (NS / rate)
    offsets, times = block_offsets, block_times
    n_total = pcm.shape[0]
    mono = np.zeros(n_native, dtype=np.float32)
    if len(offsets) == 0 or n_total == 0:
        return resample(mono, rate, clip.rate_hz)
    # Each sample's time: its block's stamp plus its position in the block at the nominal rate.
    # A slot up to half a sample before a block's first stamp belongs to that block (nearest sample).
    block = np.searchsorted(times, slot_times + 0.5 * NS / rate, side="right") - 1
    valid = block >= 0
    block = np.clip(block, 0, None)
    idx = offsets[block] + np.round((slot_times - times[block]) * rate / NS).astype(np.int64)
    block_end = np.append(offsets[1:], n_total)[block]
    valid &= (idx >= offsets[block]) & (idx < block_end)
    if valid.any():
        lo, hi = int(idx[valid].min()), int(idx[valid].max()) + 1
        try:
            raw = pcm[lo:hi].astype(np.float32)
        except Exception as e:
            raise DatasetError(f"{where}: audio/pcm cannot be read ({type(e).__name__}: {e})") from None
        mono[valid] = ((raw.mean(axis=1) - spec.center) / spec.scale)[idx[valid] - lo]
    return resample(mono, rate, clip.rate_hz)


# What the audio arrays read as in an episode recorded without microphones: no blocks, no samples.
_NO_AUDIO = {"audio/pcm": np.zeros((0, 0), np.int16), "audio/block_offset": np.zeros(0, np.int64),
             "audio/block_overflow": np.zeros(0, bool), "audio/block_timestamp_ns": np.zeros(0, np.int64)}

# Episode attributes readers use directly: (key, allowed types, what the message says is expected).
_ATTR_TYPES = [
    ("index", (int,), "an integer"),
    ("success", (bool, type(None)), "true, false or null"),
    ("variation", (str,), "a string"),
    ("task", (str,), "a string"),
    ("info", (dict,), "an object"),
    ("rig", (dict,), "an object"),
    ("lengths", (dict,), "an object"),
]


class Episode:
    def __init__(self, path: str | Path | UrlPath, dataset: Dataset | None = None):
        self.path = location(path)
        self.dataset = dataset
        try:
            self.group = zarr.open_group(zarr_store_or_path(self.path), mode="r", zarr_format=2)
            attrs = self.group.attrs.asdict()
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            raise DatasetError(f"{self.path} is not an episode store (no Zarr group)") from None
        except (ValueError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DatasetError(f"{self.path}: episode metadata is unreadable ({e})") from None
        except Exception as e:  # noqa: BLE001 - any other damage of the group's metadata files
            raise DatasetError(f"{self.path}: episode metadata is unreadable ({type(e).__name__}: {e})") from None
        if ATTR_FORMAT not in attrs or not isinstance(attrs[ATTR_FORMAT], dict):
            raise DatasetError(f"{self.path}: not an htouch episode (no {ATTR_FORMAT!r} attribute)")
        self.attrs: dict[str, Any] = attrs[ATTR_FORMAT]
        check_strict_json(self.attrs, f"{self.path}: episode attributes")
        for key, kinds, what in _ATTR_TYPES:
            value = self.attrs.get(key)
            if key in self.attrs and (not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)):
                raise DatasetError(f"{self.path}: episode attribute {key} is {value!r}, expected {what}")
        try:
            self.streams = StreamSpecs.from_dict(self.attrs.get("rig", {}))
        except DatasetError as e:
            raise DatasetError(f"{self.path}: {e}") from None
        self._arrays: dict[str, zarr.Array] = {}  # opened so far: opening one reads its metadata from the store
        self._decoded: dict[str, np.ndarray] = {}  # decoded by the structural checks, until first read

    def adopt(self, arrays: dict[str, zarr.Array], decoded: dict[str, np.ndarray]) -> None:
        """Keep the arrays the structural checks just opened and decoded (structure.open_episode), so that
        reading the episode next does not open and decode them again (each a round trip to the store). An
        adopted decoded array is handed to its first `read` and then forgotten."""
        self._arrays.update(arrays)
        self._decoded.update(decoded)

    # ---------------------------------------------------------------- metadata

    @property
    def index(self) -> int:
        return int(self.attrs.get("index", -1))

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def success(self) -> bool | None:
        return self.attrs.get("success")

    @property
    def variation(self) -> str:
        return str(self.attrs.get("variation", "default"))

    # ---------------------------------------------------------------- arrays

    def array(self, path: str) -> zarr.Array:
        if path in self._arrays:
            return self._arrays[path]
        try:
            arr = self.group[path]
        except KeyError:
            raise DatasetError(f"{self.name}: array {path} is missing") from None
        if not isinstance(arr, zarr.Array):
            raise DatasetError(f"{self.name}: {path} is not an array")
        self._arrays[path] = arr
        return arr

    @property
    def has_audio(self) -> bool:
        """False for an episode of a rig without microphones: it has no audio arrays, and the audio readers
        below give zero blocks and zero samples (silence) instead."""
        return self.streams.has_audio

    @property
    def audio_samples(self) -> int:
        """Samples of PCM recorded (per channel); 0 without microphones."""
        return int(self._pcm.shape[0])

    def read(self, path: str) -> np.ndarray:
        if not self.has_audio and path.startswith("audio/"):
            return _NO_AUDIO[path].copy()
        if path in self._decoded:
            return self._decoded.pop(path)
        try:
            return self.array(path)[...]
        except DatasetError:
            raise
        except Exception as e:  # a chunk that does not decode
            raise DatasetError(f"{self.name}: array {path} cannot be read ({type(e).__name__}: {e})") from None

    @cached_property
    def camera_times(self) -> np.ndarray:
        return self.read("camera/timestamp_ns")

    @cached_property
    def audio_block_times(self) -> np.ndarray:
        return self.read("audio/block_timestamp_ns")

    @cached_property
    def audio_block_offsets(self) -> np.ndarray:
        return self.read("audio/block_offset")

    @cached_property
    def state_times(self) -> np.ndarray:
        return self.read("state/timestamp_ns")

    @cached_property
    def action_times(self) -> np.ndarray:
        return self.read("action/timestamp_ns")

    @cached_property
    def _pcm(self) -> zarr.Array | np.ndarray:
        return self.array("audio/pcm") if self.has_audio else _NO_AUDIO["audio/pcm"]

    def preload_audio(self) -> None:
        """Decode all PCM once, so that clips at many times (a cache build, an epoch) slice memory instead of
        decoding the same chunks again for every clip (about twice as fast per clip). Idempotent."""
        if not isinstance(self.__dict__.get("_pcm"), np.ndarray):
            self.__dict__["_pcm"] = self.read("audio/pcm")

    @cached_property
    def _state(self) -> np.ndarray:
        return np.concatenate([self.read("state/ee_pose"), self.read("state/joints"),
                               self.read("state/gripper_width")[:, None]], axis=1)

    @cached_property
    def _actions(self) -> np.ndarray:
        return np.concatenate([self.read("action/delta_ee"), self.read("action/gripper")[:, None]], axis=1)

    def events(self) -> list[dict[str, Any]]:
        times, kinds, details = (self.read(f"events/{k}") for k in ("timestamp_ns", "kind", "detail"))
        out = []
        for t, k, d in zip(times, kinds, details, strict=False):
            try:
                detail = json.loads(str(d)) if d else {}
            except json.JSONDecodeError:
                detail = {"unparsed": str(d)}
            if not isinstance(detail, dict):  # the schema says an object; keep what is there, as text
                detail = {"unparsed": str(d)}
            out.append({"t_ns": int(t), "kind": str(k), **({"detail": detail} if detail else {})})
        return sorted(out, key=lambda e: e["t_ns"])

    def time_range_ns(self) -> tuple[int, int]:
        """Earliest and latest time stamp over all timed streams (events excluded)."""
        firsts, lasts = [], []
        for times in (self.camera_times, self.audio_block_times, self.state_times, self.action_times):
            if len(times):
                firsts.append(int(times[0]))
                lasts.append(int(times[-1]))
        if not firsts:
            return 0, 0
        return min(firsts), max(lasts)

    @property
    def duration_s(self) -> float:
        start, end = self.time_range_ns()
        return (end - start) / NS

    # ---------------------------------------------------------------- time-aligned samples

    def audio_clip(self, t_ns: int, clip: ClipParams = DEFAULT_CLIP) -> np.ndarray:
        """The clip [t - window, t], mono, normalised, resampled to clip.rate_hz; silence where no audio."""
        return gather_audio_clip(t_ns, self.audio_block_times, self.audio_block_offsets, self._pcm, self.streams.audio,
                                 clip, self.name)

    def sample_times(self, params: SampleParams, stride: int = 1) -> np.ndarray:
        """Camera frame times at which a training sample exists: from the first frame on, while H actions
        lie ahead. Early windows are padded as at the start of a live episode (the first frame repeated,
        silence before the first audio), because a policy acts from the first frame and a demonstration
        does much of its reaching in those first seconds."""
        cam, act = self.camera_times, self.action_times
        if len(cam) == 0 or len(act) < params.horizon:
            return np.zeros(0, dtype=np.int64)
        last_start = act[len(act) - params.horizon]
        ok = cam <= last_start
        return cam[ok][::stride]

    def frame_indices(self, t_ns: int, params: SampleParams) -> np.ndarray:
        """Indices of the k frames at or before k times evenly spanning [t - window, t]."""
        return frame_indices(self.camera_times, t_ns, params)

    def action_chunk(self, t_ns: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
        """The next `horizon` actions commanded at or after t, (H, 7) float32 zero-padded past the end of
        the episode, and the (H,) mask of those that exist."""
        a0 = int(np.searchsorted(self.action_times, t_ns, side="left"))
        actions = np.zeros((horizon, 7), dtype=np.float32)
        chunk = self._actions[a0:a0 + horizon]
        actions[:len(chunk)] = chunk
        return actions, np.arange(horizon) < len(chunk)

    def sample(self, t_ns: int, params: SampleParams = SampleParams()) -> Sample:
        if len(self.camera_times) == 0:
            raise DatasetError(f"{self.name}: no camera frames")
        fi = self.frame_indices(t_ns, params)
        rgb = self.array("camera/rgb")
        uniq, inverse = np.unique(fi, return_inverse=True)
        try:
            frames = np.stack([rgb[int(i)] for i in uniq])[inverse]
        except Exception as e:  # a frame that does not decode
            raise DatasetError(f"{self.name}: camera/rgb cannot be read ({type(e).__name__}: {e})") from None
        si = max(int(np.searchsorted(self.state_times, t_ns, side="right")) - 1, 0)
        state = self._state[si] if len(self.state_times) else np.zeros(self._state.shape[1])
        actions, mask = self.action_chunk(t_ns, params.horizon)
        return Sample(t_ns=int(t_ns), frames=frames, frame_times_ns=self.camera_times[fi],
                      audio=self.audio_clip(t_ns, params.clip), state=state.astype(np.float32),
                      actions=actions, action_mask=mask)

    def __repr__(self) -> str:
        return f"Episode({str(self.path)!r})"
