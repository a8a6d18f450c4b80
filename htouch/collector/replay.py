"""Replaying an episode's recorded actions on a robot (simulated or real), through the one safety filter.

The robot is homed first, then each recorded command is sent at the recorded pace divided by `speed`
(speed 0: as fast as the robot takes them). Before each command the robot's end-effector position is
compared with the recorded one at the same step: the tracking error says how faithfully the actions
alone reproduce the demonstration (on the simulated rig, in the same scene).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from htouch.collector.devices import Action, DeviceError, Robot
from htouch.collector.safety import SafetyFilter
from htouch.dataset.episode import Episode
from htouch.dataset.schema import NS
from htouch.errors import DatasetError, HtouchError


@dataclass
class ReplayReport:
    actions: int
    sent: int
    clipped: int  # commands the safety filter changed
    clip_reasons: dict[str, int] = field(default_factory=dict)
    robot_errors: int = 0
    wall_s: float = 0.0
    recorded_s: float = 0.0
    error_mm_mean: float = 0.0  # end-effector position vs the recorded one, step by step
    error_mm_p95: float = 0.0
    error_mm_max: float = 0.0
    error_mm_final: float = 0.0
    recorded_success: bool | None = None
    task_success: bool | None = None  # the simulated task's own verdict after the replay
    stopped: bool = False


def episode_actions(ep: Episode) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(times ns, delta_ee (n, 6), gripper (n,)) of the recorded commands."""
    times = ep.action_times
    if len(times) == 0:
        raise DatasetError(f"{ep.name} has no recorded actions to replay")
    return times, ep.read("action/delta_ee"), ep.read("action/gripper")


def replay(ep: Episode, robot: Robot, safety: SafetyFilter, *, speed: float = 1.0,
           progress: Callable[[int], None] | None = None, should_stop: Callable[[], bool] | None = None,
           sleep: Callable[[float], None] = time.sleep) -> ReplayReport:
    """Home `robot` and send the episode's actions (robot already started); returns the report."""
    if speed < 0 or not np.isfinite(speed):
        raise HtouchError(f"--speed must be >= 0 (0: as fast as possible), not {speed}")
    times, deltas, grippers = episode_actions(ep)
    state_times = ep.state_times
    recorded_pos = ep.read("state/ee_pose")[:, :3] if len(state_times) else np.zeros((0, 3))
    robot.home()
    report = ReplayReport(actions=len(times), sent=0, clipped=0, recorded_success=ep.success,
                          recorded_s=(int(times[-1]) - int(times[0])) / NS)
    reasons: dict[str, int] = {}
    errors: list[float] = []
    in_error = False
    wall0 = time.monotonic()
    for i, t in enumerate(times):
        if should_stop is not None and should_stop():
            report.stopped = True
            break
        if speed > 0:
            delay = wall0 + (int(t) - int(times[0])) / NS / speed - time.monotonic()
            if delay > 0:
                sleep(delay)
        try:
            state = robot.state()
            error = state.error
        except DeviceError as e:
            state, error = None, str(e)
        if error is not None:
            if not in_error:
                report.robot_errors += 1
            in_error = True
            try:
                robot.recover()
            except DeviceError:
                pass
        else:
            in_error = False
        if state is not None and len(state_times):
            k = max(int(np.searchsorted(state_times, t, side="right")) - 1, 0)
            errors.append(float(np.linalg.norm(np.asarray(state.ee_pose[:3]) - recorded_pos[k])) * 1000)
        position = state.ee_pose[:3] if state is not None and error is None else np.full(3, np.nan)
        filtered = safety(Action(np.asarray(deltas[i], float), float(grippers[i])), position)
        if filtered.reasons:
            report.clipped += 1
            for r in filtered.reasons:
                reasons[r] = reasons.get(r, 0) + 1
        try:
            robot.apply(filtered.action)
            report.sent += 1
        except DeviceError:
            if not in_error:
                report.robot_errors += 1
            in_error = True
        if progress is not None:
            progress(i + 1)
    report.wall_s = time.monotonic() - wall0
    report.clip_reasons = reasons
    if errors:
        e = np.asarray(errors)
        report.error_mm_mean, report.error_mm_p95 = float(e.mean()), float(np.percentile(e, 95))
        report.error_mm_max, report.error_mm_final = float(e.max()), float(e[-1])
    return report


@dataclass
class Tracking:
    """How closely the arm followed the commands of a recorded episode, in mm: at each recorded state, the
    distance between the measured end-effector position and the commanded path (the first state's position
    plus every commanded step sent before it), i.e. where an ideally stiff arm would be. It includes the
    arm's lag behind its commands and anything that stopped it (a contact, a reflex)."""

    steps: int
    mean_mm: float
    p95_mm: float
    max_mm: float

    def describe(self) -> str:
        return (f"tracking error {self.mean_mm:.1f} mm mean, {self.p95_mm:.1f} mm p95, {self.max_mm:.1f} mm max "
                f"over {self.steps} states")


def command_tracking(ep: Episode) -> Tracking | None:
    """The episode's tracking error (see Tracking); None without states after its first command."""
    times, deltas, _ = episode_actions(ep)
    state_t = np.asarray(ep.state_times, dtype=np.int64)
    positions = ep.read("state/ee_pose")[:, :3].astype(np.float64)
    later = state_t > times[0]
    if not later.any():
        return None
    start = positions[np.flatnonzero(~later)[-1]] if (~later).any() else positions[0]
    path = np.cumsum(deltas[:, :3].astype(np.float64), axis=0)  # after each command, from the start
    sent = np.searchsorted(times, state_t[later], side="left")  # commands sent before each state
    error = np.linalg.norm(positions[later] - (start + path[sent - 1]), axis=1) * 1000
    return Tracking(int(len(error)), float(error.mean()), float(np.percentile(error, 95)), float(error.max()))
