"""The episode schema: the one definition of what an episode holds.

The writer creates exactly these arrays and the validator checks exactly these, so the two can never
disagree. docs/format.md describes the same layout for people; bump SCHEMA_VERSION when it changes.

What a rig records is described by its stream specs (`StreamSpecs`: camera size, audio rate and channels,
...). They are stored in the dataset metadata and copied into every episode (under the key "rig"), and turn
the schema below into concrete shapes.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from typing import Any

from htouch.errors import DatasetError

NS = 1_000_000_000  # nanoseconds per second: every stored time stamp is int64 ns on the rig's one clock
SCHEMA_VERSION = 1
DATASET_FORMAT = "htouch-dataset"
METADATA_FILE = "htouch.json"
EPISODE_PREFIX = "episode_"
# Beside the committed episodes in a dataset directory (see store.py for the layout):
INCOMING = ".incoming"  # episodes being written, renamed into place when committed
QUARANTINE = ".quarantine"  # incomplete episodes that could not be salvaged
DERIVED = "derived"  # caches computed from episodes (spectrograms)
LOCK_FILE = ".htouch.lock"  # held while htouch.json is updated
EPISODE_DIGITS = 6
EPISODE_RE = re.compile(r"^(?:episode_?)?(\d{1,9})$")
MAX_EPISODE_INDEX = 10**9 - 1  # the last index EPISODE_RE's nine digits can name

# Episode attribute keys (the episode's Zarr group attributes).
ATTR_FORMAT = "htouch_episode"


def episode_name(index: int) -> str:
    """The directory name of episode `index` (episode_000012)."""
    return f"{EPISODE_PREFIX}{index:0{EPISODE_DIGITS}d}"


def parse_episode_name(text: str) -> int | None:
    """`episode_000012`, `episode_12` and `12` all name episode 12; anything else is None."""
    m = EPISODE_RE.match(text)
    return int(m.group(1)) if m else None


def non_finite(data: Any, key: str = "") -> tuple[str, float] | None:
    """(dotted key, value) of the first NaN or infinite number in nested dicts and lists, or None.
    htouch.json and the episode attributes are strict JSON, which has neither."""
    if isinstance(data, float) and not math.isfinite(data):
        return key or "(the value)", data
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, (list, tuple)) else ()
    for k, v in items:
        found = non_finite(v, f"{key}.{k}" if key else str(k))
        if found:
            return found
    return None


def check_strict_json(data: Any, where: str) -> None:
    """DatasetError naming `where` and the key if `data` holds a number strict JSON cannot store."""
    found = non_finite(data)
    if found:
        raise DatasetError(f"{where}: {found[0]} is {found[1]}, which JSON cannot store (only finite numbers)")


# --------------------------------------------------------------------------------------------------
# Stream specs: what a rig records. Stored in the dataset metadata (htouch.json) and in each episode.


@dataclass
class CameraSpec:
    width: int = 640
    height: int = 480
    rate_hz: float = 30.0
    codec: str = "jpeg"  # "jpeg" (lossy, `quality`) or "png" (lossless)
    quality: int = 90
    latency_ns: int = 0  # capture-to-timestamp offset measured for this camera (added to timestamps)
    device: str = ""


@dataclass
class AudioSpec:
    rate_hz: float = 32000.0
    channels: int = 4  # 0: recorded without microphones (imported from a dataset without audio): no audio arrays
    channel_names: list[str] = field(default_factory=lambda: ["mic0", "mic1", "mic2", "mic3"])
    unit: str = "adc counts"
    # Normalisation to roughly [-1, 1]: (x - center) / scale. The paper's 12-bit ADC used 2061 / 2400;
    # a sound card's int16 is centred on 0 with full scale 32768.
    center: float = 0.0
    scale: float = 32768.0
    latency_ns: int = 0
    device: str = ""


@dataclass
class StateSpec:
    rate_hz: float = 100.0
    n_joints: int = 7
    joint_unit: str = "rad"  # an arm's joint angles; the simulated rig records its two finger joints, in m
    pose_format: str = "x y z qx qy qz qw (m, unit quaternion, robot base frame)"


@dataclass
class ActionSpec:
    rate_hz: float = 30.0
    delta_ee_format: str = "dx dy dz rx ry rz (m; rotation vector, rad; per control step, base frame)"
    gripper_format: str = "target opening in [0, 1] (0 closed, 1 open)"


@dataclass
class TeleopSpec:
    rate_hz: float = 72.0
    button_names: list[str] = field(default_factory=lambda: ["A", "B", "RThU", "RJ", "RG", "RTr"])
    analog_names: list[str] = field(default_factory=lambda: ["rightTrig", "rightGrip", "rightJS_x", "rightJS_y"])


@dataclass
class StreamSpecs:
    """Every stream a rig records, as stored under "rig" in htouch.json and in each episode; `name` and
    `description` name the rig that recorded them."""

    name: str = "synthetic"
    description: str = ""
    camera: CameraSpec = field(default_factory=CameraSpec)
    audio: AudioSpec = field(default_factory=AudioSpec)
    state: StateSpec = field(default_factory=StateSpec)
    action: ActionSpec = field(default_factory=ActionSpec)
    teleop: TeleopSpec = field(default_factory=TeleopSpec)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> StreamSpecs:
        """The spec stored in htouch.json or an episode; DatasetError naming the key for an unknown key, a
        wrong type, a non-finite number or a size or rate that is not positive."""
        if not isinstance(d, dict):
            raise DatasetError(f"stream specs are malformed: expected an object, got {d!r}")
        kw = {}
        for name, value in d.items():
            sub = _SPECS.get(name)
            if sub is None:
                kw[name] = value  # name, description: checked below with the rest
                continue
            if not isinstance(value, dict):
                raise DatasetError(f"stream specs are malformed: rig.{name} is {value!r}, not an object")
            kw[name] = sub(**_checked_fields(sub, value, f"rig.{name}"))
        return cls(**_checked_fields(cls, kw, "rig"))

    @property
    def has_audio(self) -> bool:
        """False for a rig without microphones (`audio.channels` 0): its episodes hold no audio arrays."""
        return self.audio.channels > 0

    def nominal_rate(self, stream: str) -> float:
        return float(getattr(self, stream).rate_hz)


_SPECS = {"camera": CameraSpec, "audio": AudioSpec, "state": StateSpec, "action": ActionSpec, "teleop": TeleopSpec}
# Values a reader divides by or allocates with: they must be positive.
_POSITIVE = {"rate_hz", "width", "height", "n_joints", "scale"}
_NON_NEGATIVE = {"channels"}  # 0 audio channels: a rig without microphones


def _checked_fields(cls: type, values: dict[str, Any], where: str) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        hint = hints.get(name)
        if hint is None:
            raise DatasetError(f"stream specs are malformed: unknown key {where}.{name}")
        if isinstance(hint, type) and hint in _SPECS.values():
            continue  # built above
        ok = (isinstance(value, list) and all(isinstance(v, str) for v in value) if hint == list[str]
              else isinstance(value, (int, float)) and not isinstance(value, bool) if hint is float
              else isinstance(value, hint) and not isinstance(value, bool) if hint is int
              else isinstance(value, hint))
        if not ok:
            raise DatasetError(f"stream specs are malformed: {where}.{name} is {value!r}, expected "
                               f"{getattr(hint, '__name__', str(hint))}")
        if hint in (int, float) and (not math.isfinite(value) or (name in _POSITIVE and value <= 0)
                                     or (name in _NON_NEGATIVE and value < 0)):
            sign = "positive " if name in _POSITIVE else "non-negative " if name in _NON_NEGATIVE else ""
            raise DatasetError(f"stream specs are malformed: {where}.{name} is {value!r}, expected a finite "
                               f"{sign}number")
    return values


# --------------------------------------------------------------------------------------------------
# Arrays. Each stream is a Zarr group; its arrays share a time axis (`axis`) unless stated.

EVENT_KIND_LEN = 32
EVENT_DETAIL_LEN = 256


@dataclass(frozen=True)
class ArraySpec:
    stream: str
    name: str
    dtype: str
    shape: tuple[int, ...]  # trailing shape, after the time axis
    chunk_len: int  # rows per chunk along the time axis
    codec: str  # "image" (the camera's codec) or "lossless"
    axis: str  # arrays of a stream with the same axis have the same length
    unit: str
    doc: str

    @property
    def path(self) -> str:
        return f"{self.stream}/{self.name}"


# Streams whose rows are regular samples, with their time axis name (the "rate" of a stream).
TIMED_AXES = {"camera": "frames", "audio": "blocks", "state": "rows", "action": "rows", "teleop": "rows"}


def episode_arrays(streams: StreamSpecs) -> list[ArraySpec]:
    """Every array of an episode recorded with this rig, in writing order (data before time stamps). A rig
    without microphones (`rig.has_audio` False) has no audio stream at all: its episodes hold no audio arrays."""
    cam, aud, st, tel = streams.camera, streams.audio, streams.state, streams.teleop
    ns = "ns, host CLOCK_MONOTONIC"
    specs = [
        ArraySpec("camera", "rgb", "uint8", (cam.height, cam.width, 3), 1, "image", "frames", "",
                  "RGB frames, one image-codec chunk per frame"),
        ArraySpec("camera", "frame_number", "int64", (), 4096, "lossless", "frames", "count",
                  "device frame counter; a jump of more than 1 is a dropped frame"),
        ArraySpec("camera", "timestamp_ns", "int64", (), 4096, "lossless", "frames", ns,
                  "capture time of each frame"),
        ArraySpec("audio", "pcm", "int16", (aud.channels,), 32768, "lossless", "samples", aud.unit,
                  "PCM at the native rate, all channels"),
        ArraySpec("audio", "block_offset", "int64", (), 4096, "lossless", "blocks", "samples",
                  "index in pcm of each block's first sample"),
        ArraySpec("audio", "block_overflow", "bool", (), 4096, "lossless", "blocks", "",
                  "the device reported lost input before this block"),
        ArraySpec("audio", "block_timestamp_ns", "int64", (), 4096, "lossless", "blocks", ns,
                  "capture time of each block's first sample"),
        ArraySpec("state", "ee_pose", "float64", (7,), 4096, "lossless", "rows", "m, quaternion xyzw",
                  "end-effector pose in the robot base frame"),
        ArraySpec("state", "joints", "float64", (st.n_joints,), 4096, "lossless", "rows", st.joint_unit,
                  "joint positions"),
        ArraySpec("state", "gripper_width", "float64", (), 4096, "lossless", "rows", "m", "gripper opening"),
        ArraySpec("state", "timestamp_ns", "int64", (), 4096, "lossless", "rows", ns, "time of each state"),
        ArraySpec("action", "delta_ee", "float64", (6,), 4096, "lossless", "rows", "m, rad",
                  "commanded end-effector motion for this control step"),
        ArraySpec("action", "gripper", "float64", (), 4096, "lossless", "rows", "0..1",
                  "commanded gripper opening"),
        ArraySpec("action", "timestamp_ns", "int64", (), 4096, "lossless", "rows", ns,
                  "time each command was sent"),
        ArraySpec("teleop", "controller_pose", "float64", (4, 4), 4096, "lossless", "rows", "m",
                  "raw controller pose (headset frame), as read"),
        ArraySpec("teleop", "buttons", "bool", (len(tel.button_names),), 4096, "lossless", "rows", "",
                  "pressed flags, in the order of teleop.button_names"),
        ArraySpec("teleop", "analog", "float32", (len(tel.analog_names),), 4096, "lossless", "rows", "",
                  "analog values, in the order of teleop.analog_names"),
        ArraySpec("teleop", "timestamp_ns", "int64", (), 4096, "lossless", "rows", ns, "time of each reading"),
        ArraySpec("events", "kind", f"<U{EVENT_KIND_LEN}", (), 256, "lossless", "rows", "",
                  "event kind (see EVENT_KINDS)"),
        ArraySpec("events", "detail", f"<U{EVENT_DETAIL_LEN}", (), 256, "lossless", "rows", "",
                  "JSON object with the event's details"),
        ArraySpec("events", "timestamp_ns", "int64", (), 256, "lossless", "rows", ns, "time of the event"),
    ]
    return specs if streams.has_audio else [s for s in specs if s.stream != "audio"]


# Known event kinds. Others are allowed (forward compatible) but the validator warns about them.
EVENT_KINDS = {
    "start": "recording started",
    "stop": "recording stopped",
    "success": "operator labelled the episode a success",
    "failure": "operator labelled the episode a failure",
    "frame_drop": "camera frame numbers jumped: detail.count frames lost",
    "camera_stall": "no camera frame for longer than expected",
    "audio_overflow": "the audio device reported lost input",
    "teleop_lost": "no teleop reading for over 250 ms; the robot held still",
    "robot_error": "the robot reported an error",
    "writer_queue_full": "the episode writer could not keep up; detail.dropped rows were not stored",
    "contact": "ground truth contact onset (synthetic and simulated rigs only)",
    "damage": "a simulated task's fragile part was pushed past its force limit; the episode cannot succeed",
    "note": "free text from the operator",
}
