"""Franka Research 3 through pylibfranka (libfranka's own Python bindings, the FR3 protocol): a Cartesian
impedance law computed in htouch's 1 kHz torque callback, the Franka Hand, reflex recovery and homing.

Rates, and why:
- 1 kHz, the torque thread (`_TorqueLoop`): libfranka's torque control expects one torque command per
  robot state packet (every millisecond). The thread reads the state (readOnce), computes
  tau = J^T (-K e - D J dq) + nullspace term + Coriolis (gravity is added by the controller), with the
  Jacobian and Coriolis from libfranka's model (Robot.load_model()), and writes the torques (writeOnce).
  It takes no lock shared with the 30 Hz loop: the target is handed over as one tuple reference (an
  atomic assignment under the GIL, read once per cycle) and the newest state is published the same way.
  The target it tracks is low-pass filtered (TARGET_FILTER_S), so a 30 Hz step in the target does not
  become a torque step.
- 30 Hz, the recording loop: state() reads the newest published state, apply() moves the target by the
  action under the rule the Panda backend follows too (franka.FrankaArm: integrated, kept in the
  workspace box, never leading the measured pose by more than MAX_LEAD_M / MAX_LEAD_RAD).
- As it comes, the gripper: pylibfranka's Gripper calls block for the whole motion *holding the GIL*
  (measured: a 0.7 s move stopped every other Python thread for 0.7 s), so they run in a child process
  (`_RemoteGripper`), driven by the shared gripper worker threads (franka.GripperWorker); apply() never waits for the
  hand and the torque thread never waits for the gripper.

Python threads share the GIL: while the torque thread runs, the interpreter's switch interval is set to
SWITCH_INTERVAL_S (instead of 5 ms), so that another thread holding the GIL hands it back within a
cycle. A cycle that comes late is counted (`timing()`: missed cycles from the controller's own period).

Homing: the same thread follows a minimum-jerk joint trajectory to config.home_joints under joint
impedance (pylibfranka has no "move to joints" call), then holds the pose it reached under Cartesian
impedance.

Errors: an exception in the torque thread (a reflex: libfranka's ControlException; a lost connection:
NetworkException) stops it; state() reports it in RobotState.error and no state older than
STALE_STATE_S is passed off as current. recover() runs libfranka's automatic error recovery (or
reconnects after a lost connection) and restarts the thread holding the measured pose. state() and
apply() never raise; home() and recover() raise DeviceError, within a few seconds, when the robot refuses
or is gone.
"""

from __future__ import annotations

import collections
import json
import select
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from types import SimpleNamespace
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
START_TIMEOUT_S = 5.0  # the torque thread's first cycle
RECOVER_TIMEOUT_S = 3.0
STALE_STATE_S = 1.5  # no state for this long: taken as lost (libfranka itself gives up after 1 s without a packet)
SWITCH_INTERVAL_S = 0.0002  # the GIL hand-over interval while the torque thread runs
TARGET_FILTER_S = 0.02  # time constant of the target's low-pass filter in the torque thread
HOME_SPEED_RAD_S = 0.5  # the fastest joint of the homing trajectory, on average
HOME_MIN_S = 1.0
HOME_TOLERANCE_RAD = 0.03
HOME_SETTLE_S = 3.0  # robot time allowed after the trajectory's end to come within tolerance
JOINT_STIFFNESS = np.array([600.0, 600.0, 600.0, 600.0, 250.0, 150.0, 50.0])  # Nm/rad, homing
JOINT_DAMPING = np.array([50.0, 50.0, 50.0, 50.0, 30.0, 25.0, 15.0])  # Nms/rad (libfranka's example)
NOMINAL_PERIOD_S = 0.001
COMPUTE_SAMPLES = 60_000  # the torque thread keeps its newest computation times (for tools/bench_fr3.py)


def _pylibfranka() -> Any:
    return import_device_library("pylibfranka", "pylibfranka")


def _unreachable(host: str, detail: str) -> str:
    return f"cannot reach the FR3 controller at {host}: {detail}"


def _require_host(config: RobotConfig) -> None:
    if not config.host:
        raise DeviceError("no address for the FR3 controller: set [robot] host in the rig file")


def _connect_robot(pf: Any, host: str, timeout_s: float) -> Any:
    # kIgnore: libfranka otherwise refuses a kernel without real-time scheduling; htouch's torque loop
    # is a Python thread and counts the cycles it misses instead (timing()).
    return call_with_timeout(lambda: pf.Robot(host, pf.RealtimeConfig.kIgnore), "FR3 controller", timeout_s)


def _pose_matrix(state: Any) -> np.ndarray:
    """O_T_EE (16 floats, column-major) as a 4x4 matrix."""
    return np.asarray(state.O_T_EE, dtype=float).reshape(4, 4, order="F")


def probe(config: RobotConfig) -> tuple[bool, str]:
    """(reachable, one line with its state) for `htouch rig check`: pylibfranka installed, the FCI port
    answering and libfranka reading one state."""
    try:
        _require_host(config)
        pf = _pylibfranka()
    except DeviceError as e:
        return False, str(e)
    try:
        with socket.create_connection((config.host, FCI_PORT), timeout=PROBE_TIMEOUT_S):
            pass
    except TimeoutError:
        return False, _unreachable(config.host, f"no answer on port {FCI_PORT} within {PROBE_TIMEOUT_S:g} s")
    except ConnectionRefusedError:
        return False, _unreachable(config.host, f"connection refused on port {FCI_PORT} "
                                                "(is FCI enabled in Desk, and the host right?)")
    except OSError as e:
        return False, _unreachable(config.host, e.strerror or str(e))
    try:
        robot = _connect_robot(pf, config.host, PROBE_TIMEOUT_S)
        state = call_with_timeout(robot.read_once, "FR3 state", PROBE_TIMEOUT_S)
    except DeviceError as e:
        return False, _unreachable(config.host, f"port {FCI_PORT} accepts connections but libfranka got {e}")
    position = _pose_matrix(state)[:3, 3]
    joints = ", ".join(f"{q:.2f}" for q in state.q)
    del robot, state  # closes the connection, so that the recorder can open its own
    return True, (f"FR3 controller at {config.host} (libfranka connected): joints [{joints}] rad, "
                  f"end effector at ({position[0]:.3f}, {position[1]:.3f}, {position[2]:.3f}) m")


GRIPPER_START_TIMEOUT_S = 30.0  # a new Python process on a loaded machine


def _gripper_main(host: str) -> None:
    """The Franka Hand, served in a process of its own (`python -m htouch.collector.hardware.fr3 HOST`):
    pylibfranka's Gripper calls hold the GIL for the whole motion, which would stall the torque thread for
    as long. Reads one JSON request per line on stdin ([name, args]); answers ["ok", value] or ["error", text]."""
    def answer(status: str, value: Any) -> None:
        sys.stdout.write(json.dumps([status, value]) + "\n")
        sys.stdout.flush()

    try:
        import pylibfranka as pf

        gripper = pf.Gripper(host)
    except Exception as e:  # noqa: BLE001 - handed to the parent
        answer("error", str(e).strip() or type(e).__name__)
        return
    answer("ok", None)
    for line in sys.stdin:
        name, args = json.loads(line)
        if name == "close":
            return
        try:
            if name == "read_once":
                state = gripper.read_once()
                answer("ok", [float(state.width), bool(state.is_grasped)])
            elif name in ("move", "grasp"):
                answer("ok", bool(getattr(gripper, name)(*args)))
            else:
                answer("error", f"unknown request {name!r}")
        except Exception as e:  # noqa: BLE001 - handed to the parent
            answer("error", str(e).strip() or type(e).__name__)


class _RemoteGripper:
    """pylibfranka's Gripper (move, grasp, read_once) run in a child process; each call blocks the calling
    thread only (waiting on a pipe releases the GIL). RuntimeError for what the gripper or the child reports."""

    def __init__(self, host: str):
        self._lock = threading.Lock()
        self._process = subprocess.Popen([sys.executable, "-m", "htouch.collector.hardware.fr3", host],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        ready, _, _ = select.select([self._process.stdout], [], [], GRIPPER_START_TIMEOUT_S)
        if not ready:
            self.close()
            raise RuntimeError(f"the gripper process did not answer within {GRIPPER_START_TIMEOUT_S:g} s")
        status, detail = self._receive()
        if status != "ok":
            self.close()
            raise RuntimeError(detail)

    def _receive(self) -> tuple[str, Any]:
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError("the gripper process ended")
        status, value = json.loads(line)
        return status, value

    def _call(self, name: str, *args: Any) -> Any:
        assert self._process.stdin is not None
        with self._lock:
            try:
                self._process.stdin.write(json.dumps([name, list(args)]) + "\n")
                self._process.stdin.flush()
            except (OSError, ValueError):
                raise RuntimeError("the gripper process ended") from None
            status, result = self._receive()
        if status != "ok":
            raise RuntimeError(result)
        return result

    def move(self, width: float, speed: float) -> Any:
        return self._call("move", width, speed)

    def grasp(self, width: float, speed: float, force: float, epsilon_inner: float, epsilon_outer: float) -> Any:
        return self._call("grasp", width, speed, force, epsilon_inner, epsilon_outer)

    def read_once(self) -> Any:
        width, is_grasped = self._call("read_once")
        return SimpleNamespace(width=width, is_grasped=is_grasped)

    def close(self) -> None:
        try:
            assert self._process.stdin is not None
            self._process.stdin.write(json.dumps(["close", []]) + "\n")
            self._process.stdin.close()
        except (OSError, ValueError):
            pass
        try:
            self._process.wait(2.0)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(2.0)
        if self._process.stdout is not None:
            self._process.stdout.close()


@dataclass(frozen=True)
class _Snapshot:
    """What the torque thread publishes each cycle (never mutated after)."""

    timestamp_ns: int  # loop clock when the packet was read
    q: np.ndarray  # (7,) rad
    pose: np.ndarray  # (4, 4) O_T_EE
    external_force: np.ndarray  # (6,) O_F_ext_hat_K: N, Nm in the base frame


@dataclass(frozen=True)
class _JointGoal:
    start: np.ndarray
    goal: np.ndarray
    duration_s: float


class _TorqueLoop:
    """The 1 kHz torque thread: one libfranka torque-control session, Cartesian impedance toward
    `target` (or a joint trajectory while `joint_goal` is set). Readers get `snapshot`, `error`, and the
    timing counters; writers set `target` / `joint_goal` with one assignment."""

    def __init__(self, pf: Any, robot: Any, model: Any, config: RobotConfig, clock: Clock):
        self.pf, self.robot, self.model, self.clock = pf, robot, model, clock
        kt, kr = config.translational_stiffness, config.rotational_stiffness
        self.stiffness = np.array([kt, kt, kt, kr, kr, kr])
        self.damping = 2.0 * np.sqrt(self.stiffness)
        self.nullspace_q = np.asarray(config.home_joints, dtype=float)
        self.target: tuple[np.ndarray, np.ndarray] | None = None  # position (3,), rotation matrix (3, 3)
        self.joint_goal: _JointGoal | None = None
        self.home_done = threading.Event()
        self.home_reached: bool | None = None
        self.snapshot: _Snapshot | None = None
        self.error: BaseException | None = None
        self.cycles = 0
        self.missed = 0  # packets the controller sent that this thread never read in time
        self.late_cycles = 0  # cycles whose period exceeded the nominal 1 ms
        self.compute_s_max = 0.0
        self.compute_s: collections.deque[float] = collections.deque(maxlen=COMPUTE_SAMPLES)  # newest cycles
        self._filtered: tuple[np.ndarray, np.ndarray] | None = None
        self._joint_t = 0.0
        self._stop = False
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="FR3 torque loop", daemon=True)

    # --- called from other threads

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        self._thread.start()
        if not self._started.wait(timeout_s):
            raise DeviceError(f"the torque controller did not start within {timeout_s:g} s")
        if self.error is not None:
            raise DeviceError(str(self.error))

    def stop(self, timeout_s: float = 2.0) -> bool:
        """Ask the thread to end the control session; True if it did within timeout_s."""
        self._stop = True
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # --- the thread

    def _run(self) -> None:
        pf = self.pf
        ctrl = None
        previous = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        try:
            ctrl = self.robot.start_torque_control()
            while not self._stop:
                state, period = ctrl.readOnce()
                began = time.perf_counter()
                self._publish(state)
                tau = self._torques(state, period.to_sec())
                ctrl.writeOnce(pf.Torques(tau.tolist()))
                self._count(period.to_sec(), time.perf_counter() - began)
                self._started.set()
            finished = pf.Torques([0.0] * 7)
            finished.motion_finished = True
            ctrl.writeOnce(finished)
        except Exception as e:  # noqa: BLE001 - reported through state(); libfranka raises several kinds
            # Without its traceback: the frames would keep the ActiveControl object, and libfranka refuses a
            # new control session while one exists.
            self.error = e.with_traceback(None)
        finally:
            ctrl = None  # ends the session on libfranka's side
            sys.setswitchinterval(previous)
            self._started.set()
            self.home_done.set()

    def _publish(self, state: Any) -> None:
        pose = _pose_matrix(state)
        self.snapshot = _Snapshot(self.clock.now_ns(), np.asarray(state.q, dtype=float), pose,
                                  np.asarray(state.O_F_ext_hat_K, dtype=float))
        if self.target is None:
            self.target = (pose[:3, 3].copy(), pose[:3, :3].copy())

    def _count(self, period_s: float, compute_s: float) -> None:
        self.cycles += 1
        steps = int(round(period_s / NOMINAL_PERIOD_S))
        if steps > 1:
            self.late_cycles += 1
            self.missed += steps - 1
        self.compute_s_max = max(self.compute_s_max, compute_s)
        self.compute_s.append(compute_s)

    def _torques(self, state: Any, dt: float) -> np.ndarray:
        q, dq = np.asarray(state.q, dtype=float), np.asarray(state.dq, dtype=float)
        coriolis = np.asarray(self.model.coriolis(state), dtype=float)
        goal = self.joint_goal
        if goal is not None:
            return self._joint_torques(goal, q, dq, dt) + coriolis
        jacobian = np.asarray(self.model.zero_jacobian(state), dtype=float).reshape(7, 6).T  # column-major 6x7
        pose = _pose_matrix(state)
        target_pos, target_rot = self._filter_target(pose, dt)
        error = np.concatenate([pose[:3, 3] - target_pos,
                                Rotation.from_matrix(pose[:3, :3] @ target_rot.T).as_rotvec()])
        wrench = -self.stiffness * error - self.damping * (jacobian @ dq)
        tau_task = jacobian.T @ wrench
        # Nullspace: pull the elbow toward the home joints without disturbing the end effector.
        projector = np.eye(7) - jacobian.T @ np.linalg.pinv(jacobian.T)
        tau_null = projector @ (NULLSPACE_STIFFNESS * (self.nullspace_q - q) - 2.0 * np.sqrt(NULLSPACE_STIFFNESS) * dq)
        return tau_task + tau_null + coriolis

    def _filter_target(self, pose: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
        target = self.target
        assert target is not None  # set by _publish on the first cycle
        if self._filtered is None:
            self._filtered = (pose[:3, 3].copy(), pose[:3, :3].copy())
        alpha = 1.0 - np.exp(-max(dt, 0.0) / TARGET_FILTER_S)
        position, rotation = self._filtered
        position = position + alpha * (target[0] - position)
        turn = Rotation.from_matrix(target[1] @ rotation.T).as_rotvec()
        rotation = Rotation.from_rotvec(alpha * turn).as_matrix() @ rotation
        self._filtered = (position, rotation)
        return self._filtered

    def _joint_torques(self, goal: _JointGoal, q: np.ndarray, dq: np.ndarray, dt: float) -> np.ndarray:
        self._joint_t += dt
        s = min(self._joint_t / goal.duration_s, 1.0)
        blend = 10 * s**3 - 15 * s**4 + 6 * s**5  # minimum jerk
        q_d = goal.start + blend * (goal.goal - goal.start)
        reached = bool(np.max(np.abs(q - goal.goal)) < HOME_TOLERANCE_RAD)
        if s >= 1.0 and (reached or self._joint_t > goal.duration_s + HOME_SETTLE_S):
            self._finish_home(reached)
        return JOINT_STIFFNESS * (q_d - q) - JOINT_DAMPING * dq

    def _finish_home(self, reached: bool) -> None:
        snapshot = self.snapshot
        assert snapshot is not None
        self.target = (snapshot.pose[:3, 3].copy(), snapshot.pose[:3, :3].copy())
        self._filtered = None
        self.home_reached = reached
        self.joint_goal = None
        self.home_done.set()

    def begin_home(self, goal: np.ndarray) -> None:
        snapshot = self.snapshot
        assert snapshot is not None
        span = float(np.max(np.abs(goal - snapshot.q)))
        self.home_done.clear()
        self.home_reached = None
        self._joint_t = 0.0
        self.joint_goal = _JointGoal(snapshot.q.copy(), goal, max(HOME_MIN_S, span / HOME_SPEED_RAD_S))


class FR3Robot(FrankaArm):
    """A Robot (htouch.collector.devices) on a Franka Research 3 with a Franka Hand, through pylibfranka.
    The constructor connects and fails fast with a DeviceError naming the host when the controller
    cannot be reached."""

    n_joints = 7

    def __init__(self, config: RobotConfig, clock: Clock | None = None,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S, workspace: SafetyLimits | None = None):
        """workspace: the rig's safety limits; the target is kept inside their box (FrankaArm)."""
        _require_host(config)
        super().__init__(config, clock, workspace)
        self._pf = _pylibfranka()
        self._timeout = connect_timeout_s
        self._loop: _TorqueLoop | None = None
        self.robot: Any = None
        self.model: Any = None
        self._remote: _RemoteGripper | None = None
        self._idle_width = 0.0  # the gripper width last read, while not connected
        self._connect(connect_timeout_s)
        pose = self._idle.pose
        self._target_pos, self._target_rot = pose[:3, 3].copy(), Rotation.from_matrix(pose[:3, :3])

    # --- the Robot interface

    def start(self) -> None:
        """Start the gripper threads and the torque thread holding the current pose (no motion); reconnects
        after stop()."""
        self._connect(self._timeout)
        self._gripper.start()
        if self._loop is None or not self._loop.alive:
            self._start_loop()

    def stop(self) -> None:
        """End the control session and close the connections (the controller serves one client at a time)."""
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.stop()
            if loop.snapshot is not None:
                self._idle = loop.snapshot
        if self._gripper is not None:
            self._gripper.stop()
            self._idle_width = self._gripper.width
        if self._remote is not None:
            self._remote.close()
        self._gripper = self._remote = None
        self.robot = self.model = None

    def state(self) -> RobotState:
        snapshot = self._snapshot()
        position, rotation = snapshot.pose[:3, 3], Rotation.from_matrix(snapshot.pose[:3, :3])
        ee_pose = np.concatenate([position, rotation.as_quat()])
        width = self._gripper.width if self._gripper is not None else self._idle_width
        return RobotState(snapshot.timestamp_ns, ee_pose, snapshot.q.copy(), width, self._error,
                          external_force=snapshot.external_force.copy())

    def home(self) -> None:
        """Move to config.home_joints along a joint trajectory, hold there, open the gripper."""
        try:
            self._connect(self._timeout)
        except DeviceError as e:
            raise DeviceError(f"the FR3 could not move home: {e}") from None
        self._gripper.start()  # (idempotent) home() may come before start()
        if self._loop is None or not self._loop.alive:
            self._snapshot()  # latch the error of a dead thread
            if self._error is not None:
                raise DeviceError(f"the FR3 could not move home: {self._error}")
            self._start_loop()
        loop = self._loop
        assert loop is not None
        loop.begin_home(np.asarray(self.config.home_joints, dtype=float))
        goal = loop.joint_goal
        assert goal is not None
        # Robot time runs slower than the wall clock when the controller (or a simulator) is loaded.
        if not loop.home_done.wait(10.0 + 4.0 * (goal.duration_s + HOME_SETTLE_S)):
            raise DeviceError("the FR3 did not reach home in time")
        self._snapshot()
        if self._error is not None:
            raise DeviceError(f"the FR3 could not move home: {self._error}")
        if not loop.home_reached:
            self._event("note", text="home: the motion ended away from the home joints")
        self._anchor()
        self._send_gripper("move", self.config.gripper_max_width)
        self._gripper.wait_idle(timeout_s=10.0)

    def apply(self, action: Action) -> None:
        """Move the target by action.delta_ee and command the gripper; returns at once."""
        loop = self._loop
        if self._error is not None or loop is None or loop.joint_goal is not None:
            return
        measured = self._snapshot()
        target = self._next_target(action, measured.pose[:3, 3], Rotation.from_matrix(measured.pose[:3, :3]))
        if target is None:
            return
        self._target_pos, self._target_rot = target
        loop.target = (target[0].copy(), target[1].as_matrix())  # one reference: the torque thread reads it whole
        self._gripper_command(float(action.gripper))

    def recover(self) -> None:
        """Clear a reflex (libfranka's automatic error recovery) or reconnect after a lost connection, then
        restart the torque thread holding the measured pose. DeviceError when the robot refuses or is gone."""
        loop = self._loop
        if loop is not None and loop.alive and self._error is None:
            return  # nothing to recover
        if loop is not None and not loop.stop(timeout_s=RECOVER_TIMEOUT_S):
            raise DeviceError("the torque thread does not answer (the controller may be gone)")
        self._loop = None
        network = loop is not None and isinstance(loop.error, self._pf.NetworkException)
        try:
            if network or self.robot is None or (self._error is not None and "no state" in self._error):
                self.robot = None  # closes the old connection first (the controller takes one client)
                self._connect(RECOVER_TIMEOUT_S)
            call_with_timeout(self.robot.automatic_error_recovery, "FR3 error recovery", RECOVER_TIMEOUT_S)
        except DeviceError as e:
            raise DeviceError(f"the FR3 did not recover: {e}") from None
        self._error = None
        self._start_loop()

    # --- beyond the interface

    def timing(self) -> dict[str, float]:
        """The torque thread's counters: cycles run, cycles that came late, controller packets missed, the
        longest computation (s)."""
        loop = self._loop
        if loop is None:
            return {"cycles": 0, "late_cycles": 0, "missed": 0, "compute_s_max": 0.0}
        return {"cycles": loop.cycles, "late_cycles": loop.late_cycles, "missed": loop.missed,
                "compute_s_max": loop.compute_s_max}

    # --- internals

    def _connect(self, timeout_s: float) -> None:
        """Open the controller and gripper connections unless open; DeviceError naming the host."""
        host, pf = self.config.host, self._pf
        if self.robot is None:
            try:
                robot = _connect_robot(pf, host, timeout_s)
                self.model = call_with_timeout(robot.load_model, "FR3 model", timeout_s)
                first = call_with_timeout(robot.read_once, "FR3 state", timeout_s)
            except DeviceError as e:
                raise DeviceError(_unreachable(host, str(e))) from None
            self.robot = robot
            self._idle = _Snapshot(self.clock.now_ns(), np.asarray(first.q, dtype=float), _pose_matrix(first),
                                   np.asarray(first.O_F_ext_hat_K, dtype=float))
        if self._gripper is None:
            try:
                gripper = _RemoteGripper(host)
                self._remote = gripper
                self._gripper = GripperWorker(gripper, self.config, self._gripper_failed)
                self._idle_width = self._gripper.width
            except (DeviceError, RuntimeError) as e:
                raise DeviceError(f"cannot reach the Franka Hand at {host}: {e}") from None

    def _start_loop(self) -> None:
        loop = _TorqueLoop(self._pf, self.robot, self.model, self.config, self.clock)
        try:
            loop.start()
        except DeviceError as e:
            loop.stop(timeout_s=0.5)
            self._set_error(f"the torque controller did not start: {e}")
            raise DeviceError(f"the FR3 refused torque control: {e}") from None
        self._loop = loop
        self._anchor()

    def _anchor(self) -> None:
        """The 30 Hz side's target := what the torque thread holds now."""
        loop = self._loop
        assert loop is not None and loop.target is not None
        position, rotation = loop.target
        self._target_pos, self._target_rot = position.copy(), Rotation.from_matrix(rotation)

    def _snapshot(self) -> _Snapshot:
        """The newest state; latches the torque thread's error and a state gone stale."""
        loop = self._loop
        if loop is None:
            return self._idle
        if loop.error is not None:
            self._set_error(str(loop.error).strip() or type(loop.error).__name__)
        snapshot = loop.snapshot or self._idle
        age_s = (self.clock.now_ns() - snapshot.timestamp_ns) / 1e9
        if age_s > STALE_STATE_S:
            self._set_error(f"no state from the controller for {age_s:.1f} s (connection lost?)")
        return snapshot



if __name__ == "__main__":
    _gripper_main(sys.argv[1])
