"""Rig configuration: one TOML file per rig (camera serial, microphones, Quest, robot, limits, ...).

Every table maps onto a dataclass below; unknown keys and wrong types are refused with the file, table
and key named, so a typo never silently falls back to a default. `htouch rig check --config rig.toml`
lists what the file asks for and what is found. `RigConfig.stream_specs()` turns it into the stream specs
stored in the dataset.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from htouch.collector.mapping import MappingConfig
from htouch.collector.safety import SafetyLimits
from htouch.dataset.schema import ActionSpec, AudioSpec, CameraSpec, StateSpec, StreamSpecs, TeleopSpec
from htouch.errors import HtouchError

# The allowed range of every number in a rig file, inclusive, in one place: (table, key) -> (low, high).
# A list's items each obey their key's range, and every number must be finite (TOML allows inf and nan).
# The loader refuses a value outside its range with the file, table, key and range named; the config
# dataclasses of this module check the same ranges when code builds them (SafetyLimits and MappingConfig,
# defined beside their code, keep their own structural checks).
BOUNDS: dict[tuple[str, str], tuple[float, float]] = {
    ("camera", "width"): (16, 8192),
    ("camera", "height"): (16, 8192),
    ("camera", "fps"): (1, 1000),
    ("camera", "quality"): (1, 100),
    ("camera", "latency_ms"): (0, 10_000),
    ("microphones", "channels"): (1, 64),
    ("microphones", "rate_hz"): (1000, 768_000),
    ("microphones", "blocksize"): (1, 65_536),
    ("microphones", "latency_ms"): (0, 10_000),
    ("microphones", "center"): (-1e9, 1e9),
    ("microphones", "scale"): (1e-9, 1e9),
    ("teleop", "port"): (1, 65_535),
    ("teleop", "adb_port"): (1, 65_535),
    ("robot", "home_joints"): (-7, 7),  # rad
    ("robot", "translational_stiffness"): (1, 10_000),  # N/m
    ("robot", "rotational_stiffness"): (0.1, 1000),  # Nm/rad
    ("robot", "gripper_speed"): (0.001, 1),  # m/s
    ("robot", "gripper_force"): (0.1, 500),  # N
    ("robot", "gripper_max_width"): (0.001, 1),  # m
    ("safety", "workspace_min"): (-10, 10),  # m
    ("safety", "workspace_max"): (-10, 10),
    ("safety", "max_translation_m"): (0, 1),
    ("safety", "max_rotation_rad"): (0, 3.2),
    ("safety", "gripper_min"): (0, 1),
    ("safety", "gripper_max"): (0, 1),
    ("mapping", "motion_scale"): (0.001, 1000),
    ("mapping", "gain"): (0.001, 1),
    ("mapping", "rotation_gain"): (0.001, 1),
    ("mapping", "max_step_m"): (0, 1),
    ("mapping", "max_step_rad"): (0, 3.2),
    ("mapping", "grip_threshold"): (0, 1),
    ("control", "rate_hz"): (1, 1000),
    ("control", "teleop_timeout_ms"): (1, 60_000),
    ("control", "camera_stall_ms"): (1, 60_000),
    ("control", "max_episode_s"): (0.1, 86_400),
}


def allowed_range(table: str, key: str) -> str:
    """The inclusive range of [table] key as a rig file error shows it ("lo..hi")."""
    lo, hi = BOUNDS[(table, key)]
    return f"{lo:g}..{hi:g}"


def out_of_bounds(table: str, key: str, value: Any) -> str | None:
    """Why `value` (a number or a list of numbers) is not allowed for [table] key, or None if it is."""
    if (table, key) not in BOUNDS:
        return None
    lo, hi = BOUNDS[(table, key)]
    for v in value if isinstance(value, list) else [value]:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue  # a wrong type is the type check's to report
        if not math.isfinite(v):
            return f"{v!r} is not a finite number (allowed: {allowed_range(table, key)})"
        if not lo <= v <= hi:
            return f"{v!r} is outside the allowed range {allowed_range(table, key)}"
    return None


def check_bounds(obj: Any, table: str) -> None:
    """ValueError naming the first key of `obj` (a config dataclass) whose value is outside BOUNDS."""
    for (t, key), _ in BOUNDS.items():
        if t == table:
            problem = out_of_bounds(table, key, getattr(obj, key))
            if problem:
                raise ValueError(f"{key}: {problem}")


ROBOT_KINDS = ("panda", "fr3")  # [robot] kind: the backend in htouch/collector/hardware/ of that name

# The example rig file's robot host: refused until the user writes their controller's address there.
PLACEHOLDER_HOST = "EDIT-ME"
_HOSTNAME_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def host_problem(host: str, device: str = "the device") -> str | None:
    """Why `host` is not a usable network address (an IP address or a host name), or None if it is."""
    if host.strip().upper() == PLACEHOLDER_HOST:
        return f"is still the example's placeholder {host!r}: set it to {device}'s IP address or host name"
    if not host.strip():
        return "is empty: give an IP address or a host name"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
        if len(host) > 253 or not all(_HOSTNAME_LABEL.match(label) for label in labels) or labels[-1].isdigit():
            return f"{host!r} is neither an IP address nor a host name"
        return None
    if address.is_unspecified or address.is_multicast or str(address) == "255.255.255.255":
        return f"{host!r} is not the address of one device"
    return None


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


def _host(obj: Any, name: str, device: str, optional: bool = False) -> None:
    value = getattr(obj, name)
    problem = None if optional and value == "" else host_problem(value, device)
    if problem:
        raise ValueError(f"{name} {problem}")


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
        check_bounds(self, "camera")


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
        check_bounds(self, "microphones")


@dataclass
class TeleopConfig:
    kind: str = "quest"  # "quest" or "keyboard"
    serial: str = ""  # Quest adb serial (USB)
    ip: str = ""  # Quest IP address (adb over Wi-Fi, port `port`)
    port: int = 5555
    adb_host: str = "127.0.0.1"  # the adb server
    adb_port: int = 5037

    def __post_init__(self) -> None:
        check_bounds(self, "teleop")
        _host(self, "adb_host", "the adb server")
        _host(self, "ip", "the Quest", optional=True)


@dataclass
class RobotConfig:
    kind: str = "panda"  # "panda" (panda-py) or "fr3" (pylibfranka, the FR3's protocol)
    # The Franka controller's address. Deliberately no default: "" means "not set", which the simulated rig
    # never needs and a real rig refuses (see RigConfig.check_real).
    host: str = ""
    home_joints: list[float] = field(
        default_factory=lambda: [0.0, -0.785398, 0.0, -2.356194, 0.0, 1.570796, 0.785398])
    translational_stiffness: float = 600.0  # N/m, Cartesian impedance controller
    rotational_stiffness: float = 30.0  # Nm/rad
    gripper_speed: float = 0.1  # m/s
    gripper_force: float = 20.0  # N, when grasping
    gripper_max_width: float = 0.08  # m, fully open

    def __post_init__(self) -> None:
        _require(self, "'panda' or 'fr3'", lambda v: v in ROBOT_KINDS, "kind")
        _require(self, "7 joint angles (rad)", lambda v: len(v) == 7, "home_joints")
        check_bounds(self, "robot")
        _host(self, "host", "your Franka controller", optional=True)


@dataclass
class ControlConfig:
    rate_hz: float = 30.0
    teleop_timeout_ms: float = 250.0  # longer than this without a reading: the robot holds still
    camera_stall_ms: float = 200.0
    max_episode_s: float = 120.0

    def __post_init__(self) -> None:
        check_bounds(self, "control")


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
    path: str = ""  # the file it was read from

    def check_real(self) -> None:
        """HtouchError unless this config can drive the real robot: its address must be set in the file
        (there is no default, so that nothing is ever dialled that the user did not write down)."""
        if not self.robot.host:
            raise HtouchError(f"{self.path or 'rig config'} [robot] host: not set; a real rig needs the "
                              "address of its Franka controller (an IP address or a host name)")

    def stream_specs(self, n_joints: int = 7, joint_unit: str = "rad") -> StreamSpecs:
        """The stream specs stored in the dataset. State, actions and teleop are recorded once per
        control step, so their nominal rate is the control rate."""
        cam, mic, rate = self.camera, self.microphones, self.control.rate_hz
        return StreamSpecs(
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


_TABLES = {f.name: f.type for f in dataclasses.fields(RigConfig) if f.name not in ("kind", "name", "path")}


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
    """The config a parsed rig file describes; HtouchError naming `where`, the table and the key for an
    unknown table or key, a wrong type, a number outside BOUNDS, a bad address or a real rig without
    `[robot] host`."""
    hints = typing.get_type_hints(RigConfig)
    top: dict[str, Any] = {"path": where}
    for key, value in data.items():
        if key == "rig":
            top.update(_build_kw(_RigTable, value, where, "rig"))
        elif key in _TABLES:
            top[key] = _build(hints[key], value, where, key)
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
    if config.kind == "real":
        config.check_real()
    return config


@dataclass
class _RigTable:
    kind: str = "sim"
    name: str = ""


def _build_kw(cls: type, value: Any, where: str, table: str) -> dict[str, Any]:
    """The keyword arguments of `cls` from one TOML table, every value type- and range-checked."""
    if not isinstance(value, dict):
        raise HtouchError(f"{where} [{table}]: expected a table, got {type(value).__name__}")
    hints = typing.get_type_hints(cls)
    kw = {}
    for key, item in value.items():
        if key not in hints:
            raise HtouchError(f"{where} [{table}]: unknown key {key!r} (known: {', '.join(hints)})")
        here = f"{where} [{table}] {key}"
        kw[key] = _check_type(item, hints[key], here, (table, key))
        problem = out_of_bounds(table, key, kw[key])
        if problem:
            raise HtouchError(f"{here}: {problem}")
        if key in ("host", "adb_host") and not item:  # "" would mean "not set": say so instead
            raise HtouchError(f"{here}: is empty: give an IP address or a host name")
    return kw


def _build(cls: type, value: Any, where: str, table: str) -> Any:
    try:
        return cls(**_build_kw(cls, value, where, table))
    except ValueError as e:  # a dataclass's own check (__post_init__)
        raise HtouchError(f"{where} [{table}]: {e}") from None


def _check_type(value: Any, hint: Any, where: str, bounds_key: tuple[str, str]) -> Any:
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise HtouchError(f"{where}: expected a list, got {value!r}")
        return [_check_type(v, item, where, bounds_key) for v in value]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint in (int, float) and isinstance(value, bool)):
        expected = {int: "an integer", float: "a number", str: "a string"}.get(hint, hint.__name__)
        if bounds_key in BOUNDS:
            expected += f" in {allowed_range(*bounds_key)}"
        raise HtouchError(f"{where}: expected {expected}, got {value!r}")
    return value
