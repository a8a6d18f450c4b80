"""Franka Emika Panda through panda-py: Cartesian impedance control toward a target pose integrated from
delta actions, the Franka Hand driven from the action's gripper opening, and reflex recovery.

Control: panda-py's CartesianImpedance controller runs at 1 kHz in panda-py's own thread; each control
step sets its target, moved by the action under the rule the FR3 backend follows too (franka.FrankaArm:
integrated, kept in the workspace box, never leading the measured pose by more than MAX_LEAD_M /
MAX_LEAD_RAD). Stiffness comes from RobotConfig.

Gripper: the action's opening becomes a Franka Hand command (franka.gripper_request) run by worker
threads (franka.GripperWorker); apply() never waits for the gripper.

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
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from htouch.collector.config import RobotConfig
from htouch.collector.devices import Action, Clock, DeviceError, RobotState
from htouch.collector.hardware import import_device_library
from htouch.collector.hardware.franka import (
    FCI_PORT,
    NULLSPACE_STIFFNESS,
    PROBE_TIMEOUT_S,
    FrankaArm,
    GripperWorker,
    call_with_timeout,
)
from htouch.collector.safety import SafetyLimits

CONNECT_TIMEOUT_S = 5.0
DAMPING_RATIO = 1.0


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


class PandaRobot(FrankaArm):
    """A Robot (htouch.collector.devices) on a Franka Panda with a Franka Hand. The constructor connects
    and fails fast with a DeviceError naming the host when the controller cannot be reached."""

    n_joints = 7

    def __init__(self, config: RobotConfig, clock: Clock | None = None, panda_module: Any = None,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S, workspace: SafetyLimits | None = None):
        """workspace: the rig's safety limits; the target is kept inside their box (FrankaArm)."""
        _require_host(config)
        super().__init__(config, clock, workspace)
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
            self._gripper = GripperWorker(gripper, config, self._gripper_failed)
        except (DeviceError, RuntimeError) as e:
            raise DeviceError(f"cannot reach the Franka Hand at {host}: {e}") from None
        self._ctrl: Any = None
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
        try:
            target = self._next_target(action, *self._measured_pose())
            if target is None:
                return
            self._ctrl.set_control(target[0], target[1].as_quat())
        except RuntimeError as e:
            self._set_error(f"command failed: {e}")
            return
        self._target_pos, self._target_rot = target
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

    def _drain_error(self) -> None:
        """Latch an error panda-py's control thread left behind (a reflex); raise_error() reports it once."""
        try:
            self.panda.raise_error()
        except RuntimeError as e:
            self._set_error(str(e))
