"""Franka Emika Panda through panda-py: Cartesian impedance control toward a target pose integrated from
delta actions, the Franka Hand driven from the action's gripper opening, and reflex recovery.

Control: panda-py's CartesianImpedance controller runs at 1 kHz in panda-py's own thread; each control
step sets its target. The target is the previous target plus the action (translation added, rotation
vector composed in the base frame), so replaying recorded actions reproduces the recorded targets. The
target may lead the measured pose by at most MAX_LEAD_M / MAX_LEAD_RAD: pressing on a surface the robot
cannot move into, an integrated target would otherwise wind up and the contact force (stiffness times
lead) grow step by step. Stiffness comes from RobotConfig.

Gripper: action.gripper in [0, 1] (0 closed) times gripper_max_width is the wanted width. Below
GRASP_BELOW it grasps (closes with gripper_force on whatever is between the fingers); above, it moves to
the width. A command is sent only when it changes (a new grasp, or a width MIN_WIDTH_CHANGE_M away).
libfranka's gripper calls block for the whole motion, so a worker thread runs them (the newest waiting
command replaces an older one) and another polls the width; apply() never waits for the gripper.

Errors: panda-py reports a reflex through raise_error() (its control thread died). state() latches it
into RobotState.error, apply() then sends nothing, and recover() clears it (automatic error recovery,
a new controller, the target re-anchored at the measured pose). state() and apply() never raise;
home() and recover() raise DeviceError when the robot refuses. pop_events() reports what RobotState
cannot carry: failed gripper commands and ignored actions (robot_error events).

Time stamps: panda-py refreshes the state at 1 kHz while the controller runs, so state() stamps it with
the loop clock at the call (at most about 1 ms old).
"""

from __future__ import annotations

import socket
import threading
from typing import Any, Callable

import numpy as np
from scipy.spatial.transform import Rotation

from htouch.collector.config import RobotConfig
from htouch.collector.devices import Action, Clock, DeviceError, MonotonicClock, RobotState
from htouch.collector.hardware import import_device_library
from htouch.collector.safety import clip_norm

FCI_PORT = 1337  # libfranka's command port on the controller
CONNECT_TIMEOUT_S = 5.0
PROBE_TIMEOUT_S = 2.0
MAX_LEAD_M = 0.03  # the target may lead the measured pose by this much (600 N/m -> 18 N)
MAX_LEAD_RAD = 0.25
DAMPING_RATIO = 1.0
NULLSPACE_STIFFNESS = 0.5
GRASP_BELOW = 0.5  # action.gripper below this grasps
MIN_WIDTH_CHANGE_M = 0.005
GRIPPER_POLL_S = 0.05  # read_once() holds the GIL until the next gripper state, so poll gently


def _unreachable(host: str, detail: str) -> str:
    return f"cannot reach the Franka controller at {host}: {detail}"


def _require_host(config: RobotConfig) -> None:
    """The rig file's loader refuses a real rig without a host; this guards code that builds a config."""
    if not config.host:
        raise DeviceError("no address for the Franka controller: set [robot] host in the rig file")


def probe(config: RobotConfig) -> tuple[bool, str]:
    """(reachable, one line) for `htouch rig check`: panda-py installed and the FCI port answering."""
    try:
        _require_host(config)
        import_device_library("panda_py", "panda-python")
    except DeviceError as e:
        return False, str(e)
    try:
        with socket.create_connection((config.host, FCI_PORT), timeout=PROBE_TIMEOUT_S):
            pass
    except TimeoutError:
        return False, _unreachable(config.host, f"no answer on port {FCI_PORT} within {PROBE_TIMEOUT_S:g} s "
                                                "(is it on, and this computer on its network?)")
    except ConnectionRefusedError:
        return False, _unreachable(config.host, f"connection refused on port {FCI_PORT} "
                                                "(is FCI enabled in Desk, and the host right?)")
    except OSError as e:
        return False, _unreachable(config.host, e.strerror or str(e))
    # An open port is not yet a robot (a firewall or proxy may accept anything): ask libfranka itself.
    panda_py = import_device_library("panda_py", "panda-python")
    try:
        panda = call_with_timeout(lambda: panda_py.Panda(config.host), "Franka controller", PROBE_TIMEOUT_S)
    except DeviceError as e:
        return False, _unreachable(config.host, f"port {FCI_PORT} accepts connections but libfranka got {e}")
    del panda  # closes the connection, so that the recorder can open its own
    return True, f"Franka controller at {config.host} (libfranka connected)"


def call_with_timeout(factory: Callable[[], Any], what: str, timeout_s: float) -> Any:
    """factory() in a thread, so that a controller that accepts the connection but never answers fails
    within timeout_s instead of hanging (libfranka releases the GIL while it waits). DeviceError on a
    timeout or an exception (shared by the Franka backends)."""
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
    pose, and whether it was (shared by the Franka backends)."""
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
    or None when it asks for nothing new (`last`: the previous command; shared by the Franka backends)."""
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


class _GripperWorker:
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


class PandaRobot:
    """A Robot (htouch.collector.devices) on a Franka Panda with a Franka Hand. The constructor connects
    and fails fast with a DeviceError naming the host when the controller cannot be reached."""

    n_joints = 7

    def __init__(self, config: RobotConfig, clock: Clock | None = None, panda_module: Any = None,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S):
        _require_host(config)
        self.config = config
        self.clock = clock or MonotonicClock()
        if panda_module is None:
            panda_module = import_device_library("panda_py", "panda-python")
            import_device_library("panda_py.controllers", "panda-python")
            import_device_library("panda_py.libfranka", "panda-python")
        self._pp = panda_module
        host = config.host
        try:
            self.panda = call_with_timeout(lambda: panda_module.Panda(host), "Franka controller", connect_timeout_s)
        except DeviceError as e:
            raise DeviceError(_unreachable(host, str(e))) from None
        try:
            gripper = call_with_timeout(lambda: panda_module.libfranka.Gripper(host), "Franka Hand", connect_timeout_s)
            self._gripper = _GripperWorker(gripper, config, self._gripper_failed)
        except (DeviceError, RuntimeError) as e:
            raise DeviceError(f"cannot reach the Franka Hand at {host}: {e}") from None
        self._lock = threading.Lock()
        self._events: list[tuple[int, str, dict]] = []
        self._ctrl: Any = None
        self._error: str | None = None
        self._last_gripper: tuple[str, float] | None = None
        self.lead_limited = 0  # control steps whose target was pulled back toward the measured pose
        try:
            self._pose = self._measured_pose()
            self._joints = np.asarray(self.panda.q, dtype=float)
        except RuntimeError as e:
            raise DeviceError(_unreachable(host, f"state could not be read: {e}")) from None
        self._target_pos, self._target_rot = self._pose

    # --- the Robot interface

    def start(self) -> None:
        """Start the gripper threads and hold the current pose under impedance control (no motion)."""
        self._gripper.start()
        self._drain_error()
        try:
            self._start_controller()
        except RuntimeError as e:
            raise DeviceError(f"the Panda refused the impedance controller: {e}") from None

    def stop(self) -> None:
        try:
            self.panda.stop_controller()
        except RuntimeError:
            pass
        self._ctrl = None
        self._gripper.stop()

    def state(self) -> RobotState:
        now = self.clock.now_ns()
        self._drain_error()
        try:
            self._pose = self._measured_pose()
            self._joints = np.asarray(self.panda.q, dtype=float)
        except RuntimeError as e:
            self._set_error(f"state could not be read: {e}")
        position, rotation = self._pose
        ee_pose = np.concatenate([position, rotation.as_quat()])
        return RobotState(now, ee_pose, self._joints.copy(), self._gripper.width, self._error)

    def home(self) -> None:
        """Move to config.home_joints, restart the impedance controller there, open the gripper."""
        self._gripper.start()  # (idempotent) home() may come before start()
        self._drain_error()
        try:
            reached = self.panda.move_to_joint_position(np.asarray(self.config.home_joints, dtype=float))
            self._start_controller()
        except RuntimeError as e:
            self._set_error(f"homing failed: {e}")
            raise DeviceError(f"the Panda could not move home: {e}") from None
        self._error = None
        if reached is False:
            self._event("note", text="home: the motion ended away from the home joints")
        self._send_gripper("move", self.config.gripper_max_width)
        self._gripper.wait_idle(timeout_s=10.0)

    def apply(self, action: Action) -> None:
        """Move the target by action.delta_ee and command the gripper; returns at once."""
        if self._error is not None or self._ctrl is None:
            return
        delta = np.asarray(action.delta_ee, dtype=float)
        if delta.shape != (6,) or not np.all(np.isfinite(delta)):
            self._event("robot_error", message=f"action ignored: delta_ee {delta.tolist()} is not 6 finite numbers")
            return
        position = self._target_pos + delta[:3]
        rotation = Rotation.from_rotvec(delta[3:]) * self._target_rot
        try:
            position, rotation = self._limit_lead(position, rotation)
            self._ctrl.set_control(position, rotation.as_quat())
        except RuntimeError as e:
            self._set_error(f"command failed: {e}")
            return
        self._target_pos, self._target_rot = position, rotation
        self._gripper_command(float(action.gripper))

    def recover(self) -> None:
        """Clear a reflex: panda-py's automatic error recovery, a new controller holding the measured pose."""
        self._drain_error()
        try:
            self.panda.recover()
            self._start_controller()
        except RuntimeError as e:
            raise DeviceError(f"the Panda did not recover: {e}") from None
        self._error = None

    def pop_events(self) -> list[tuple[int, str, dict]]:
        with self._lock:
            events, self._events = self._events, []
        return events

    # --- beyond the interface

    @property
    def target(self) -> tuple[np.ndarray, np.ndarray]:
        """The impedance controller's current target: position (3,), quaternion xyzw (4,)."""
        return self._target_pos.copy(), self._target_rot.as_quat()

    def wait_gripper(self, timeout_s: float = 10.0) -> bool:
        """Wait until the gripper commands sent so far have run (for scripts and tests)."""
        return self._gripper.wait_idle(timeout_s)

    # --- internals

    def _measured_pose(self) -> tuple[np.ndarray, Rotation]:
        position = np.asarray(self.panda.get_position(), dtype=float).reshape(3)
        return position, Rotation.from_quat(np.asarray(self.panda.get_orientation(), dtype=float).reshape(4))

    def _start_controller(self) -> None:
        kt, kr = self.config.translational_stiffness, self.config.rotational_stiffness
        ctrl = self._pp.controllers.CartesianImpedance(impedance=np.diag([kt, kt, kt, kr, kr, kr]),
                                                       damping_ratio=DAMPING_RATIO,
                                                       nullspace_stiffness=NULLSPACE_STIFFNESS)
        self.panda.start_controller(ctrl)
        self._ctrl = ctrl
        self._pose = self._measured_pose()
        self._target_pos, self._target_rot = self._pose
        ctrl.set_control(self._target_pos, self._target_rot.as_quat())

    def _limit_lead(self, position: np.ndarray, rotation: Rotation) -> tuple[np.ndarray, Rotation]:
        position, rotation, limited = limit_lead(position, rotation, *self._measured_pose())
        self.lead_limited += limited
        return position, rotation

    def _gripper_command(self, opening: float) -> None:
        request = gripper_request(opening, self._last_gripper, self.config.gripper_max_width)
        if request is not None:
            self._send_gripper(*request)

    def _send_gripper(self, kind: str, width: float) -> None:
        self._last_gripper = (kind, width)
        self._gripper.submit(kind, width)

    def _gripper_failed(self, message: str) -> None:
        self._event("robot_error", device="gripper", message=message)

    def _drain_error(self) -> None:
        """Latch an error panda-py's control thread left behind (a reflex); raise_error() reports it once."""
        try:
            self.panda.raise_error()
        except RuntimeError as e:
            self._set_error(str(e))

    def _set_error(self, message: str) -> None:
        if self._error is None:  # the first error is the cause; the loop sees it in RobotState.error
            self._error = message

    def _event(self, kind: str, **detail: Any) -> None:
        with self._lock:
            self._events.append((self.clock.now_ns(), kind, detail))
