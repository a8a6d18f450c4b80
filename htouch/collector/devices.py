"""The interfaces between devices and the recording loop: one small Protocol per kind of device.

Every backend (RealSense, sounddevice, Quest over adb, panda-py, keyboard, and the simulated rig in
htouch.sim) implements one of these, so the loop never knows which rig it drives. All time stamps are
integer nanoseconds on the loop's `Clock`: the host monotonic clock on a real rig, simulated time in
a simulation that runs faster than real time. A backend maps its device clock onto it; it never stamps
a reading with "now" when the device told it when the reading was captured.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from htouch.dataset.schema import AudioSpec, CameraSpec
from htouch.errors import DeviceError  # noqa: F401 - the error every device raises, part of its interface

# ------------------------------------------------------------------------------------------- readings


@dataclass
class Frame:
    timestamp_ns: int  # capture time on the loop clock (device latency already subtracted)
    frame_number: int  # device counter; a jump of more than one is a dropped frame
    rgb: np.ndarray  # (H, W, 3) uint8


@dataclass
class AudioBlock:
    timestamp_ns: int  # capture time of the first sample on the loop clock
    pcm: np.ndarray  # (n, C) int16
    overflow: bool = False  # the device lost input before this block


@dataclass
class TeleopReading:
    timestamp_ns: int
    controller_pose: np.ndarray  # (4, 4) right controller pose in the headset frame, metres
    buttons: dict[str, bool] = field(default_factory=dict)  # "A", "B", "RThU", "RJ", "RG", "RTr"
    analog: dict[str, float] = field(default_factory=dict)  # "rightTrig", "rightGrip", "rightJS_x", "rightJS_y"


@dataclass
class RobotState:
    timestamp_ns: int
    ee_pose: np.ndarray  # (7,) x y z qx qy qz qw in the robot base frame
    joints: np.ndarray  # (n_joints,)
    gripper_width: float  # metres
    error: str | None = None  # set while the robot is in an error state (reflex, ...)
    external_force: np.ndarray | None = None  # (6,) estimated external wrench, N and Nm, base frame (if measured)


@dataclass
class Action:
    """One control step's command: an end-effector motion in the base frame and a gripper opening."""

    delta_ee: np.ndarray  # (6,) dx dy dz (m), rotation vector (rad)
    gripper: float  # target opening in [0, 1], 0 closed

    @classmethod
    def hold(cls, gripper: float) -> Action:
        return cls(np.zeros(6), float(gripper))


# ------------------------------------------------------------------------------------------- clocks


@runtime_checkable
class Clock(Protocol):
    def now_ns(self) -> int: ...

    def sleep_until(self, t_ns: int) -> None: ...


class MonotonicClock:
    """The host CLOCK_MONOTONIC: what every real device is mapped onto."""

    def now_ns(self) -> int:
        return time.monotonic_ns()

    def sleep_until(self, t_ns: int) -> None:
        delay = (t_ns - time.monotonic_ns()) / 1e9
        if delay > 0:
            time.sleep(delay)


# ------------------------------------------------------------------------------------------- devices


@runtime_checkable
class Camera(Protocol):
    spec: CameraSpec

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def read(self, timeout_s: float) -> Frame | None:
        """The next frame, in capture order; None if none arrived within timeout_s (a stall)."""
        ...


@runtime_checkable
class Microphones(Protocol):
    spec: AudioSpec

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def read(self, timeout_s: float) -> AudioBlock | None:
        """The next captured block, in order; None if none arrived within timeout_s."""
        ...


@runtime_checkable
class Teleop(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...

    def read(self) -> TeleopReading | None:
        """The newest reading, without waiting; None before the first one. The loop judges staleness
        from its time stamp."""
        ...


@runtime_checkable
class Robot(Protocol):
    n_joints: int

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def state(self) -> RobotState: ...

    def home(self) -> None:
        """Move to the home pose (a simulated rig also resets its scene) and open the gripper."""
        ...

    def apply(self, action: Action) -> None:
        """Send one control step's command (already through the safety filter). A real robot returns at
        once (its compliant controller runs at 1 kHz); a simulated one advances physics one control step."""
        ...

    def recover(self) -> None:
        """Clear an error state (a reflex) so that the session can go on."""
        ...
