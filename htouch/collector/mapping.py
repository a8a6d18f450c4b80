"""Teleoperation mapping: controller readings to end-effector actions, with a clutch.

Hold the grip to move. Each press re-anchors both origins: the controller's pose and the robot's pose
at that instant. While held, the position action is (controller motion since the anchor, remapped into
the robot base frame and scaled) minus (robot motion since the anchor), times a gain, so the robot
closes the gap to where the hand says it should be; rotation likewise, as a relative rotation. The
result is clipped per step. The analog trigger drives the gripper (pulled = closed). Buttons end the
episode: success, failure, or discard and re-record. This follows DROID's Quest mapping.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation

from htouch.collector.devices import Action, RobotState, TeleopReading
from htouch.collector.safety import clip_norm

_AXES = {"x": 0, "y": 1, "z": 2}


def axis_remap_matrix(spec: list[str]) -> np.ndarray:
    """["-z", "-x", "y"] means robot x = -controller z, robot y = -controller x, robot z = controller y."""
    if len(spec) != 3:
        raise ValueError(f"axis_remap needs 3 entries like ['-z', '-x', 'y'], got {spec!r}")
    m = np.zeros((3, 3))
    for row, entry in enumerate(spec):
        text = str(entry).strip().lower()
        sign = -1.0 if text.startswith("-") else 1.0
        axis = text.lstrip("+-")
        if axis not in _AXES:
            raise ValueError(f"axis_remap entry {entry!r} is not one of x, y, z with an optional sign")
        m[row, _AXES[axis]] = sign
    if not np.allclose(np.abs(m).sum(axis=0), 1):
        raise ValueError(f"axis_remap {spec!r} must use each of x, y, z exactly once")
    return m


@dataclass
class MappingConfig:
    # Quest controller frame (x right, y up, z toward the user) to a robot base frame facing the user.
    axis_remap: list[str] = field(default_factory=lambda: ["-z", "-x", "y"])
    motion_scale: float = 1.0  # robot metres per controller metre
    gain: float = 1.0  # share of the remaining gap closed per control step
    rotation_gain: float = 1.0
    max_step_m: float = 0.015  # per-step clipping (the safety filter's hard limits apply after this)
    max_step_rad: float = 0.08
    grip_threshold: float = 0.5  # rightGrip above this (or the RG flag) engages the clutch
    success_button: str = "A"
    failure_button: str = "B"
    discard_button: str = "RJ"

    def __post_init__(self) -> None:
        axis_remap_matrix(self.axis_remap)  # ValueError naming axis_remap
        for name in ("motion_scale", "gain", "rotation_gain"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, not {getattr(self, name)!r}")
        for name in ("max_step_m", "max_step_rad"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, not {getattr(self, name)!r}")
        if not 0 <= self.grip_threshold <= 1:
            raise ValueError(f"grip_threshold must be in [0, 1], not {self.grip_threshold!r}")


@dataclass
class MappedCommand:
    action: Action
    engaged: bool  # the clutch is held
    command: str | None = None  # "success", "failure" or "discard" on a button press


def _pose(ee_pose: np.ndarray) -> tuple[np.ndarray, Rotation]:
    """Position and rotation of an (x y z qx qy qz qw) pose; ValueError if it is not finite or not a rotation."""
    pose = np.asarray(ee_pose, dtype=float)
    if pose.shape != (7,) or not np.all(np.isfinite(pose)):
        raise ValueError("robot pose is not 7 finite numbers")
    return pose[:3], Rotation.from_quat(pose[3:7])


class ClutchMapping:
    def __init__(self, config: MappingConfig | None = None):
        self.config = config or MappingConfig()
        self.remap = axis_remap_matrix(self.config.axis_remap)
        self.engaged = False
        self._anchor_controller: np.ndarray | None = None  # 4x4, already in the robot frame
        self._anchor_robot_pos = np.zeros(3)
        self._anchor_robot_rot = Rotation.identity()
        self._pressed: set[str] = set()

    def reset(self) -> None:
        """Forget the anchor and button states (a new episode starts released)."""
        self.engaged = False
        self._anchor_controller = None
        self._pressed = set()

    def _to_robot_frame(self, pose: np.ndarray) -> tuple[np.ndarray, Rotation]:
        pose = np.asarray(pose, dtype=float)
        if pose.shape != (4, 4) or not np.all(np.isfinite(pose)):
            raise ValueError("controller pose is not a finite 4x4 matrix")
        try:
            rotation = Rotation.from_matrix(self.remap @ pose[:3, :3] @ self.remap.T)
        except np.linalg.LinAlgError as e:
            raise ValueError(f"controller rotation is degenerate: {e}") from None
        return self.remap @ pose[:3, 3], rotation

    def __call__(self, reading: TeleopReading, robot: RobotState) -> MappedCommand:
        cfg = self.config
        gripper = 1.0 - float(np.clip(reading.analog.get("rightTrig", 0.0), 0.0, 1.0))
        command = self._button_command(reading.buttons)
        grip = reading.buttons.get("RG", False) or reading.analog.get("rightGrip", 0.0) > cfg.grip_threshold
        try:
            robot_pos, robot_rot = _pose(robot.ee_pose)
            controller_pos, controller_rot = self._to_robot_frame(reading.controller_pose)
        except ValueError:  # a glitched reading (NaN, a degenerate matrix): hold, and re-anchor when it is good
            self.engaged = False
            return MappedCommand(Action.hold(gripper), False, command)

        if not grip:
            self.engaged = False
            return MappedCommand(Action.hold(gripper), False, command)
        if not self.engaged:  # the press: re-anchor both origins, no motion this step
            self.engaged = True
            self._anchor_controller = (controller_pos, controller_rot)
            self._anchor_robot_pos, self._anchor_robot_rot = robot_pos, robot_rot
            return MappedCommand(Action.hold(gripper), True, command)

        anchor_pos, anchor_rot = self._anchor_controller
        target_offset = (controller_pos - anchor_pos) * cfg.motion_scale
        robot_offset = robot_pos - self._anchor_robot_pos
        translation = cfg.gain * (target_offset - robot_offset)
        # Where the hand says the gripper should point, and the rotation from here to there (base frame).
        target_rot = (controller_rot * anchor_rot.inv()) * self._anchor_robot_rot
        rotation = cfg.rotation_gain * (target_rot * robot_rot.inv()).as_rotvec()
        translation, _ = clip_norm(translation, cfg.max_step_m)
        rotation, _ = clip_norm(rotation, cfg.max_step_rad)
        return MappedCommand(Action(np.concatenate([translation, rotation]), gripper), True, command)

    def _button_command(self, buttons: dict[str, bool]) -> str | None:
        """The command of a button that went down since the last reading (a held button acts once)."""
        cfg = self.config
        pressed = {name for name, down in buttons.items() if down}
        new = pressed - self._pressed
        self._pressed = pressed
        for name, command in ((cfg.success_button, "success"), (cfg.failure_button, "failure"),
                              (cfg.discard_button, "discard")):
            if name in new:
                return command
        return None
