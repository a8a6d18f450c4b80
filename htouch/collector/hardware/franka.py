"""What the two Franka backends share (panda.py: the Panda through panda-py; fr3.py: the FR3 through
pylibfranka), so that each rule has one owner: how an action moves the impedance target (FrankaArm), how an
action's opening becomes a Franka Hand command and the threads that run it, and a timeout around blocking
library calls.

Gripper: action.gripper in [0, 1] (0 closed) times gripper_max_width is the wanted width. Below
GRASP_BELOW it grasps (closes with gripper_force on whatever is between the fingers); above, it moves to
the width. A command is sent only when it changes (a new grasp, or a width MIN_WIDTH_CHANGE_M away).
libfranka's gripper calls block for the whole motion, so a worker thread runs them (the newest waiting
command replaces an older one) and another polls the width.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from htouch.collector.config import RobotConfig
from htouch.collector.devices import Action, Clock, DeviceError, MonotonicClock
from htouch.collector.safety import SafetyLimits, clip_norm

FCI_PORT = 1337  # libfranka's command port on the controller
PROBE_TIMEOUT_S = 2.0
MAX_LEAD_M = 0.03  # the target may lead the measured pose by this much (600 N/m -> 18 N)
MAX_LEAD_RAD = 0.25
NULLSPACE_STIFFNESS = 0.5
GRASP_BELOW = 0.5  # action.gripper below this grasps
MIN_WIDTH_CHANGE_M = 0.005
GRIPPER_POLL_S = 0.05  # read_once() holds the GIL until the next gripper state, so poll gently


def call_with_timeout(factory: Callable[[], Any], what: str, timeout_s: float) -> Any:
    """factory() in a thread, so that a controller that accepts the connection but never answers fails
    within timeout_s instead of hanging (libfranka releases the GIL while it waits). DeviceError on a
    timeout or an exception."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = factory()
        except Exception as e:  # noqa: BLE001 - handed to the caller below
            box["error"] = e

    thread = threading.Thread(target=run, name=f"connect {what}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise DeviceError(f"no answer within {timeout_s:g} s (is FCI enabled in Desk?)")
    if "error" in box:
        raise DeviceError(str(box["error"]).strip() or type(box["error"]).__name__)
    return box["value"]


def limit_lead(position: np.ndarray, rotation: Rotation, measured_pos: np.ndarray,
               measured_rot: Rotation) -> tuple[np.ndarray, Rotation, bool]:
    """The target (position, rotation) pulled back to within MAX_LEAD_M / MAX_LEAD_RAD of the measured
    pose, and whether it was."""
    lead, clipped_pos = clip_norm(position - measured_pos, MAX_LEAD_M)
    turn, clipped_rot = clip_norm((rotation * measured_rot.inv()).as_rotvec(), MAX_LEAD_RAD)
    if clipped_pos:
        position = measured_pos + lead
    if clipped_rot:
        rotation = Rotation.from_rotvec(turn) * measured_rot
    return position, rotation, clipped_pos or clipped_rot


def gripper_request(opening: float, last: tuple[str, float] | None,
                    max_width: float) -> tuple[str, float] | None:
    """The Franka Hand command ("grasp" or "move", width in m) an action's opening in [0, 1] asks for,
    or None when it asks for nothing new (`last`: the previous command)."""
    if not np.isfinite(opening):
        return None
    opening = float(np.clip(opening, 0.0, 1.0))
    width = opening * max_width
    if opening < GRASP_BELOW:
        if last is None or last[0] != "grasp":
            return "grasp", width
    elif last is None or last[0] != "move" or abs(last[1] - width) >= MIN_WIDTH_CHANGE_M:
        return "move", width
    return None


class GripperWorker:
    """Runs the Franka Hand's blocking calls off the control thread: one thread executes commands (the
    newest waiting one wins), one polls the width."""

    def __init__(self, gripper: Any, config: RobotConfig, report: Callable[[str], None]):
        self.gripper = gripper
        self.config = config
        self._report = report
        self._cond = threading.Condition()
        self._pending: tuple[str, float] | None = None
        self._busy = False
        self._running = False
        self._threads: list[threading.Thread] = []
        state = gripper.read_once()
        self.width = float(state.width)
        self.is_grasped = bool(state.is_grasped)
        self.commands_done = 0

    def start(self) -> None:
        if self._running:
            return
        self._running = True
        self._threads = [threading.Thread(target=self._commands, name="gripper commands", daemon=True),
                         threading.Thread(target=self._poll, name="gripper state", daemon=True)]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        with self._cond:
            self._running = False
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=5.0)
        self._threads = []

    def submit(self, kind: str, width: float) -> None:
        with self._cond:
            self._pending = (kind, width)
            self._cond.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until every submitted command has run; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending is None and not self._busy, timeout_s)

    def _commands(self) -> None:
        cfg = self.config
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or not self._running)
                if not self._running:
                    return
                (kind, width), self._pending = self._pending, None
                self._busy = True
            try:
                if kind == "grasp":  # any width counts as a grasp: the object decides where the fingers stop
                    self.gripper.grasp(width, cfg.gripper_speed, cfg.gripper_force,
                                       cfg.gripper_max_width, cfg.gripper_max_width)
                else:
                    self.gripper.move(width, cfg.gripper_speed)
            except RuntimeError as e:
                self._report(f"gripper {kind} to {width:.3f} m failed: {e}")
            finally:
                with self._cond:
                    self._busy = False
                    self.commands_done += 1
                    self._cond.notify_all()

    def _poll(self) -> None:
        failed = False
        while True:
            with self._cond:
                if self._cond.wait_for(lambda: not self._running, GRIPPER_POLL_S):
                    return
            try:
                state = self.gripper.read_once()
                self.width, self.is_grasped = float(state.width), bool(state.is_grasped)
                failed = False
            except RuntimeError as e:
                if not failed:  # report once per outage
                    self._report(f"gripper state could not be read: {e}")
                failed = True




class FrankaArm:
    """What a Franka Robot does the same whatever library drives it: the target rule, the gripper rule,
    the event log and the latched error. A backend sets `_gripper` (a GripperWorker) when it connects,
    `_target_pos` / `_target_rot` when it anchors the target, and calls `_next_target()` in apply().

    The target rule (`_next_target`): the previous target moved by the action (translation added, rotation vector
    composed in the base frame, so that replaying recorded actions reproduces the recorded targets), then
    clipped into the workspace box, then pulled back to within MAX_LEAD_M / MAX_LEAD_RAD of the measured
    pose. The lead limit: pressing on a surface the robot cannot move into, an integrated target would
    otherwise wind up and the contact force (stiffness times lead) grow step by step. The box: the safety
    filter bounds each step from the *measured* position, so an arm that lags its target would otherwise let
    the integrated target pass the box by the lag. The lead limit last: it moves the target toward the
    measured pose, so a target clipped into the box stays in it while the arm is inside (the box is convex),
    and the target never leads by more than the limit, even for an arm outside the box (which is then drawn
    toward it, as the safety filter draws it)."""

    def __init__(self, config: RobotConfig, clock: Clock | None, workspace: SafetyLimits | None):
        """workspace: the rig's safety limits, whose box the target is kept in (None: no box)."""
        self.config = config
        self.clock = clock or MonotonicClock()
        self._box = None if workspace is None else (np.asarray(workspace.workspace_min, dtype=float),
                                                    np.asarray(workspace.workspace_max, dtype=float))
        self._lock = threading.Lock()
        self._events: list[tuple[int, str, dict]] = []
        self._error: str | None = None
        self._last_gripper: tuple[str, float] | None = None
        self._gripper: GripperWorker | None = None
        self._target_pos = np.zeros(3)
        self._target_rot = Rotation.identity()
        self.lead_limited = 0  # control steps whose target was pulled back toward the measured pose

    def pop_events(self) -> list[tuple[int, str, dict]]:
        with self._lock:
            events, self._events = self._events, []
        return events

    @property
    def target(self) -> tuple[np.ndarray, np.ndarray]:
        """The impedance controller's current target: position (3,), quaternion xyzw (4,)."""
        return self._target_pos.copy(), self._target_rot.as_quat()

    def wait_gripper(self, timeout_s: float = 10.0) -> bool:
        """Wait until the gripper commands sent so far have run (for scripts and tests)."""
        return self._gripper is None or self._gripper.wait_idle(timeout_s)

    def _next_target(self, action: Action, measured_pos: np.ndarray,
                     measured_rot: Rotation) -> tuple[np.ndarray, Rotation] | None:
        """The target this action asks for under the rule above (not yet taken: the caller sets
        _target_pos / _target_rot once it is sent), or None, with a robot_error event, for a delta that is
        not 6 finite numbers."""
        delta = np.asarray(action.delta_ee, dtype=float)
        if delta.shape != (6,) or not np.all(np.isfinite(delta)):
            self._event("robot_error", message=f"action ignored: delta_ee {delta.tolist()} is not 6 finite numbers")
            return None
        position = self._target_pos + delta[:3]
        rotation = Rotation.from_rotvec(delta[3:]) * self._target_rot
        if self._box is not None:
            position = np.clip(position, *self._box)
        position, rotation, limited = limit_lead(position, rotation, measured_pos, measured_rot)
        self.lead_limited += limited
        return position, rotation

    def _gripper_command(self, opening: float) -> None:
        request = gripper_request(opening, self._last_gripper, self.config.gripper_max_width)
        if request is not None:
            self._send_gripper(*request)

    def _send_gripper(self, kind: str, width: float) -> None:
        assert self._gripper is not None
        self._last_gripper = (kind, width)
        self._gripper.submit(kind, width)

    def _gripper_failed(self, message: str) -> None:
        self._event("robot_error", device="gripper", message=message)

    def _set_error(self, message: str) -> None:
        if self._error is None:  # the first error is the cause; the loop sees it in RobotState.error
            self._error = message

    def _event(self, kind: str, **detail: Any) -> None:
        with self._lock:
            self._events.append((self.clock.now_ns(), kind, detail))
