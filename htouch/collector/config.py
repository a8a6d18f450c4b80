"""Rig configuration: one TOML file per rig (camera serial, microphones, Quest, robot, limits, ...).

Every table maps onto a dataclass below; unknown keys and wrong types are refused with the file, table
and key named, so a typo never silently falls back to a default. `htouch rig check --config rig.toml`
lists what the file asks for and what is found. `RigConfig.rig_spec()` turns it into the stream specs
stored in the dataset.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from htouch.collector.mapping import MappingConfig
from htouch.collector.safety import SafetyLimits
from htouch.dataset.schema import ActionSpec, AudioSpec, CameraSpec, RigSpec, StateSpec, TeleopSpec
from htouch.errors import HtouchError


def _require(obj: Any, rule: str, check: Any, *names: str) -> None:
    """ValueError naming the first of `names` whose value fails `check` (NaN fails every rule)."""
    for name in names:
        value = getattr(obj, name)
        try:
            ok = bool(check(value))
        except TypeError:
            ok = False
        if not ok:
            raise ValueError(f"{name} must be {rule}, not {value!r}")


def _positive(obj: Any, *names: str) -> None:
    _require(obj, "> 0", lambda v: v > 0, *names)


def _non_negative(obj: Any, *names: str) -> None:
    _require(obj, ">= 0", lambda v: v >= 0, *names)


def _port(obj: Any, *names: str) -> None:
    _require(obj, "a port number (1-65535)", lambda v: 1 <= v <= 65535, *names)


@dataclass
class CameraConfig:
    serial: str = ""  # RealSense serial number; empty = the only one connected
    width: int = 640
    height: int = 480
    fps: int = 30
    quality: int = 90  # JPEG quality of stored frames
    latency_ms: float = 0.0  # measured capture-to-timestamp offset, subtracted from time stamps
    file: str = ""  # play a RealSense recording (.bag/.db3) instead of a live camera

    def __post_init__(self) -> None:
        _require(self, "at least 16 pixels", lambda v: v >= 16, "width", "height")
        _positive(self, "fps")
        _require(self, "in 1..100", lambda v: 1 <= v <= 100, "quality")
        _non_negative(self, "latency_ms")


@dataclass
class MicrophoneConfig:
    device: str = ""  # PortAudio device name (substring) or index; empty = the default input
    channels: int = 4
    rate_hz: int = 32000
    blocksize: int = 320  # samples per callback (10 ms at 32 kHz)
    latency_ms: float = 0.0
    center: float = 0.0  # normalisation (x - center) / scale, stored with the data
    scale: float = 32768.0

    def __post_init__(self) -> None:
        _positive(self, "channels", "rate_hz", "blocksize", "scale")
        _non_negative(self, "latency_ms")
        _require(self, "finite", lambda v: abs(v) < float("inf"), "center")


@dataclass
class TeleopConfig:
    kind: str = "quest"  # "quest" or "keyboard"
    serial: str = ""  # Quest adb serial (USB)
    ip: str = ""  # Quest IP address (adb over Wi-Fi, port `port`)
    port: int = 5555
    adb_host: str = "127.0.0.1"  # the adb server
    adb_port: int = 5037

    def __post_init__(self) -> None:
        _port(self, "port", "adb_port")


@dataclass
class RobotConfig:
    host: str = "172.16.0.2"  # the Franka controller
    home_joints: list[float] = field(
        default_factory=lambda: [0.0, -0.785398, 0.0, -2.356194, 0.0, 1.570796, 0.785398])
    translational_stiffness: float = 600.0  # N/m, Cartesian impedance controller
    rotational_stiffness: float = 30.0  # Nm/rad
    gripper_speed: float = 0.1  # m/s
    gripper_force: float = 20.0  # N, when grasping
    gripper_max_width: float = 0.08  # m, fully open

    def __post_init__(self) -> None:
        _require(self, "7 joint angles (rad)", lambda v: len(v) == 7 and all(abs(q) < 7 for q in v), "home_joints")
        _positive(self, "translational_stiffness", "rotational_stiffness", "gripper_speed", "gripper_force",
                  "gripper_max_width")


@dataclass
class ControlConfig:
    rate_hz: float = 30.0
    teleop_timeout_ms: float = 250.0  # longer than this without a reading: the robot holds still
    camera_stall_ms: float = 200.0
    max_episode_s: float = 120.0

    def __post_init__(self) -> None:
        _positive(self, "rate_hz", "teleop_timeout_ms", "camera_stall_ms", "max_episode_s")


@dataclass
class RigConfig:
    kind: str = "sim"  # "sim" or "real"
    name: str = ""
    camera: CameraConfig = field(default_factory=CameraConfig)
    microphones: MicrophoneConfig = field(default_factory=MicrophoneConfig)
    teleop: TeleopConfig = field(default_factory=TeleopConfig)
    robot: RobotConfig = field(default_factory=RobotConfig)
    safety: SafetyLimits = field(default_factory=SafetyLimits)
    mapping: MappingConfig = field(default_factory=MappingConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    source: str = ""  # the file it was read from

    def rig_spec(self, n_joints: int = 7, joint_unit: str = "rad") -> RigSpec:
        """The stream specs stored in the dataset. State, actions and teleop are recorded once per
        control step, so their nominal rate is the control rate."""
        cam, mic, rate = self.camera, self.microphones, self.control.rate_hz
        return RigSpec(
            name=self.name or self.kind,
            camera=CameraSpec(width=cam.width, height=cam.height, rate_hz=float(cam.fps), quality=cam.quality,
                              latency_ns=int(cam.latency_ms * 1e6), device=cam.serial or cam.file),
            audio=AudioSpec(rate_hz=float(mic.rate_hz), channels=mic.channels,
                            channel_names=[f"mic{i}" for i in range(mic.channels)], center=mic.center,
                            scale=mic.scale, latency_ns=int(mic.latency_ms * 1e6), device=mic.device),
            state=StateSpec(rate_hz=rate, n_joints=n_joints, joint_unit=joint_unit),
            action=ActionSpec(rate_hz=rate),
            teleop=TeleopSpec(rate_hz=rate),
        )


_TABLES = {f.name: f.type for f in dataclasses.fields(RigConfig) if f.name not in ("kind", "name", "source")}


def load_rig_config(path: str | Path) -> RigConfig:
    """Read a rig TOML file; a missing file, a syntax error or a bad key is one HtouchError line."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise HtouchError(f"rig config {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise HtouchError(f"rig config {path} cannot be read: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise HtouchError(f"rig config {path} is not valid TOML: {e}") from None
    return rig_config_from_dict(data, str(path))


def rig_config_from_dict(data: dict[str, Any], where: str = "rig config") -> RigConfig:
    hints = typing.get_type_hints(RigConfig)
    top: dict[str, Any] = {"source": where}
    for key, value in data.items():
        if key == "rig":
            top.update(_build_kw(_RigTable, value, f"{where} [rig]"))
        elif key in _TABLES:
            top[key] = _build(hints[key], value, f"{where} [{key}]")
        elif not isinstance(value, dict):
            raise HtouchError(f"{where}: key {key!r} outside a table (kind and name go under [rig]; "
                              f"tables: rig, {', '.join(_TABLES)})")
        else:
            raise HtouchError(f"{where}: unknown table [{key}] (known: rig, {', '.join(_TABLES)})")
    config = RigConfig(**top)
    if config.kind not in ("sim", "real"):
        raise HtouchError(f"{where} [rig] kind: must be 'sim' or 'real', not {config.kind!r}")
    if config.teleop.kind not in ("quest", "keyboard"):
        raise HtouchError(f"{where} [teleop] kind: must be 'quest' or 'keyboard', not {config.teleop.kind!r}")
    return config


@dataclass
class _RigTable:
    kind: str = "sim"
    name: str = ""


def _build_kw(cls: type, table: Any, where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise HtouchError(f"{where}: expected a table, got {type(table).__name__}")
    hints = typing.get_type_hints(cls)
    kw = {}
    for key, value in table.items():
        if key not in hints:
            raise HtouchError(f"{where}: unknown key {key!r} (known: {', '.join(hints)})")
        kw[key] = _check_type(value, hints[key], f"{where} {key}")
    return kw


def _build(cls: type, table: Any, where: str) -> Any:
    try:
        return cls(**_build_kw(cls, table, where))
    except ValueError as e:  # a dataclass's own check (__post_init__)
        raise HtouchError(f"{where}: {e}") from None


def _check_type(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise HtouchError(f"{where}: expected a list, got {value!r}")
        return [_check_type(v, item, where) for v in value]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint in (int, float) and isinstance(value, bool)):
        raise HtouchError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value
