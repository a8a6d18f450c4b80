"""The one safety filter every command passes through, whoever made it: teleop, replay or a policy.

The limits are defined here once (and configured in the rig TOML under [safety]). A command that is
not finite makes the robot hold still; otherwise it is clipped, never rejected, so that teleoperation
stays smooth near the limits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from htouch.collector.devices import Action


@dataclass
class SafetyLimits:
    workspace_min: list[float] = field(default_factory=lambda: [0.20, -0.40, 0.0])  # m, robot base frame
    workspace_max: list[float] = field(default_factory=lambda: [0.80, 0.40, 0.60])
    max_translation_m: float = 0.02  # per control step (0.6 m/s at 30 Hz)
    max_rotation_rad: float = 0.10  # per control step (3 rad/s at 30 Hz)
    gripper_min: float = 0.0
    gripper_max: float = 1.0

    def __post_init__(self) -> None:
        lo, hi = np.asarray(self.workspace_min, float), np.asarray(self.workspace_max, float)
        if lo.shape != (3,) or hi.shape != (3,) or not np.all(lo < hi):
            raise ValueError("workspace_min and workspace_max must be 3 numbers each, min < max on every axis")
        if not (self.max_translation_m >= 0 and self.max_rotation_rad >= 0):
            raise ValueError("max_translation_m and max_rotation_rad must be >= 0")
        if not 0.0 <= self.gripper_min <= self.gripper_max <= 1.0:
            raise ValueError("gripper limits must satisfy 0 <= gripper_min <= gripper_max <= 1")


@dataclass
class FilteredAction:
    action: Action
    reasons: tuple[str, ...]  # what was changed and why ("non-finite", "translation", "rotation", ...)


def clip_norm(v: np.ndarray, limit: float) -> tuple[np.ndarray, bool]:
    """v scaled down to length `limit` if longer, and whether it was (no overflow for huge finite v)."""
    v = np.asarray(v, dtype=float)
    peak = float(np.max(np.abs(v))) if v.size else 0.0
    if peak == 0.0:
        return v, False
    unit = v / peak
    n = peak * float(np.linalg.norm(unit))
    if n <= limit:
        return v, False
    return unit * (limit / float(np.linalg.norm(unit))), True


class SafetyFilter:
    def __init__(self, limits: SafetyLimits | None = None):
        self.limits = limits or SafetyLimits()
        self._lo = np.asarray(self.limits.workspace_min, float)
        self._hi = np.asarray(self.limits.workspace_max, float)
        self.last_gripper = self.limits.gripper_max  # held when a gripper command is not finite

    def __call__(self, action: Action, ee_position: np.ndarray) -> FilteredAction:
        """Make `action` safe for a robot whose end effector is at `ee_position` (x, y, z)."""
        lim = self.limits
        reasons: list[str] = []
        delta = np.asarray(action.delta_ee, dtype=float).reshape(-1)
        position = np.asarray(ee_position, dtype=float)[:3]
        position_ok = position.shape == (3,) and bool(np.all(np.isfinite(position)))
        if delta.shape != (6,) or not np.all(np.isfinite(delta)) or not position_ok:
            delta = np.zeros(6)
            reasons.append("non-finite")
        # Workspace first (the target is clipped into the box), then the step size: scaling a step that
        # starts inside the box toward zero keeps its end inside the (convex) box. Where the robot is
        # unknown, it does not move.
        translation = np.zeros(3)
        if position_ok:
            with np.errstate(over="ignore", invalid="ignore"):
                target = np.clip(position + delta[:3], self._lo, self._hi)
                translation = target - position
                if not np.all(np.isfinite(translation)):
                    translation = np.zeros(3)
                if not np.allclose(translation, delta[:3]):
                    reasons.append("workspace")
        translation, clipped = clip_norm(translation, lim.max_translation_m)
        if clipped:
            reasons.append("translation")
        rotation, clipped = clip_norm(delta[3:], lim.max_rotation_rad)
        if clipped:
            reasons.append("rotation")

        gripper = float(action.gripper) if np.isfinite(action.gripper) else self.last_gripper
        if not np.isfinite(action.gripper):
            reasons.append("non-finite gripper")
        if not lim.gripper_min <= gripper <= lim.gripper_max:
            gripper = min(max(gripper, lim.gripper_min), lim.gripper_max)
            reasons.append("gripper")
        self.last_gripper = gripper
        return FilteredAction(Action(np.concatenate([translation, rotation]), gripper), tuple(reasons))
