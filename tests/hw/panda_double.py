"""A recording stand-in for the `panda_py` module at its Python API boundary.

Nothing on our machines speaks the libfranka protocol version panda-py's libfranka uses, so the arm is
replaced where PandaRobot meets panda-py: `Panda`, `controllers.CartesianImpedance` and
`libfranka.Gripper` with the real signatures and behaviour that matters to the caller:

- the arm's kinematics are panda-py's own (`panda_py.fk` / `panda_py.ik`): get_position() and
  get_orientation() (xyzw) are fk(q), and a running CartesianImpedance controller moves q to ik(target)
  at each set_control(), as an ideally stiff robot would (within panda-py's ik accuracy, about 0.5 mm) (a
  `blocked` robot stays where it is, as when pressing on a surface);
- move_to_joint_position() and start_controller() stop the running controller and recover first, like
  panda-py; a reflex (trigger_reflex()) ends the control thread, raise_error() then raises libfranka's
  RuntimeError once, and the robot holds still until recover();
- the gripper's move()/grasp() block for a while (gate them with `gripper_gate` to hold them), grasp()
  stops on an object of `object_width`, read_once() returns the width;
- fail_next(name, error) makes the next call of that method raise, as the real library does on failure;
- every call is recorded in `calls` as (name, args).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import panda_py
from scipy.spatial.transform import Rotation

HOME_Q = np.array([0.0, -np.pi / 4, 0.0, -3 * np.pi / 4, 0.0, np.pi / 2, np.pi / 4])
REFLEX = 'libfranka: Move command aborted: motion aborted by reflex! ["cartesian_reflex"]'
REFUSED = "libfranka: Connection to FCI refused. Please install FCI feature or enable FCI mode in Desk."


@dataclass
class GripperState:  # libfranka.GripperState has no Python constructor
    width: float
    max_width: float
    is_grasped: bool
    temperature: int = 31


class PandaPyDouble(SimpleNamespace):
    """Pass as PandaRobot(..., panda_module=PandaPyDouble()). The test drives it through its attributes."""

    def __init__(self, q=HOME_Q, refuse: bool = False, max_width: float = 0.08):
        super().__init__()
        self.calls: list[tuple[str, tuple]] = []
        self.q0 = np.array(q, dtype=float)
        self.refuse = refuse
        self.max_width = max_width
        self.object_width: float | None = None  # an object between the fingers
        self.gripper_gate = threading.Event()  # gripper motions wait for it
        self.gripper_gate.set()
        self._failures: dict[str, Exception] = {}
        self._lock = threading.Lock()
        self.robot: Any = None
        self.gripper: Any = None
        self.fk, self.ik = panda_py.fk, panda_py.ik
        double = self

        class Panda:
            def __init__(self, hostname: str, name: str = "panda", realtime_config: Any = None):
                double._record("Panda", hostname)
                if double.refuse:
                    raise RuntimeError(REFUSED)
                self.hostname = hostname
                self._q = double.q0.copy()
                self._controller: Any = None
                self._pending_error: Exception | None = None
                self.reflex = False
                self.blocked = False
                double.robot = self

            @property
            def q(self) -> np.ndarray:
                return self._q.copy()

            def get_pose(self) -> np.ndarray:
                return panda_py.fk(self._q)

            def get_position(self) -> np.ndarray:
                double._record("get_position")
                return panda_py.fk(self._q)[:3, 3].copy()

            def get_orientation(self, scalar_first: bool = False) -> np.ndarray:
                double._record("get_orientation")
                quat = Rotation.from_matrix(panda_py.fk(self._q)[:3, :3]).as_quat()
                return np.roll(quat, 1) if scalar_first else quat

            def move_to_joint_position(self, positions, speed_factor=0.2, *args, **kw) -> bool:
                double._record("move_to_joint_position", np.array(positions, dtype=float))
                double._maybe_fail("move_to_joint_position")
                self.stop_controller()
                self.recover()
                self._q = np.array(positions, dtype=float)
                return True

            def start_controller(self, controller) -> None:
                double._record("start_controller", controller)
                double._maybe_fail("start_controller")
                self.stop_controller()
                self.recover()
                controller.robot = self
                self._controller = controller

            def stop_controller(self) -> None:
                double._record("stop_controller")
                if self._controller is not None:
                    self._controller.robot = None
                self._controller = None

            def is_moving(self) -> bool:
                return self._controller is not None

            def raise_error(self) -> None:
                error, self._pending_error = self._pending_error, None
                if error is not None:
                    raise error

            def recover(self) -> None:
                double._record("recover")
                double._maybe_fail("recover")
                self.reflex = False

            def trigger_reflex(self) -> None:
                """The control thread dies with a reflex (panda-py keeps the controller object)."""
                self.reflex = True
                self._pending_error = RuntimeError(REFLEX)

            def _track(self, position, orientation) -> None:
                if self.reflex or self.blocked:
                    return
                pose = np.eye(4)
                pose[:3, :3] = Rotation.from_quat(orientation).as_matrix()
                pose[:3, 3] = position
                if np.allclose(pose, panda_py.fk(self._q), atol=1e-9):
                    return  # holding still (ik(fk(q)) is only within about 1e-3 rad of q)
                q = panda_py.ik(pose, self._q)
                if np.all(np.isfinite(q)):
                    self._q = q

        class CartesianImpedance:
            def __init__(self, impedance=None, damping_ratio=1.0, nullspace_stiffness=0.5, filter_coeff=1.0):
                double._record("CartesianImpedance", np.array(impedance), damping_ratio, nullspace_stiffness)
                self.robot: Any = None

            def set_control(self, position, orientation, q_nullspace=None) -> None:
                position, orientation = np.array(position, dtype=float), np.array(orientation, dtype=float)
                double._record("set_control", position, orientation)
                if position.shape != (3,) or orientation.shape != (4,):
                    raise TypeError("set_control(): incompatible function arguments")
                if self.robot is not None:
                    self.robot._track(position, orientation)

        class Gripper:
            def __init__(self, franka_address: str):
                double._record("Gripper", franka_address)
                if double.refuse:
                    raise RuntimeError(REFUSED)
                self.width = double.max_width
                self.is_grasped = False
                double.gripper = self

            def _motion(self) -> None:
                double.gripper_gate.wait(timeout=10)
                time.sleep(0.002)

            def homing(self) -> bool:
                double._record("homing")
                self._motion()
                self.width = double.max_width
                return True

            def move(self, width: float, speed: float) -> bool:
                double._record("move", float(width), float(speed))
                double._maybe_fail("move")
                if not 0.0 <= width <= double.max_width:
                    raise RuntimeError("libfranka gripper: Move command failed: width out of range")
                self._motion()
                self.width, self.is_grasped = float(width), False
                return True

            def grasp(self, width, speed, force, epsilon_inner=0.005, epsilon_outer=0.005) -> bool:
                double._record("grasp", float(width), float(speed), float(force), float(epsilon_inner),
                               float(epsilon_outer))
                double._maybe_fail("grasp")
                self._motion()
                stop = double.object_width if double.object_width is not None else 0.0
                self.width = max(float(width), stop)
                self.is_grasped = width - epsilon_inner <= self.width <= width + epsilon_outer
                return self.is_grasped

            def read_once(self) -> GripperState:
                time.sleep(0.001)  # the next UDP state
                return GripperState(self.width, double.max_width, self.is_grasped)

            def stop(self) -> bool:
                double._record("gripper_stop")
                return True

        self.Panda = Panda
        self.controllers = SimpleNamespace(CartesianImpedance=CartesianImpedance)
        self.libfranka = SimpleNamespace(Gripper=Gripper, GripperState=GripperState)

    def fail_next(self, name: str, error: Exception) -> None:
        with self._lock:
            self._failures[name] = error

    def named(self, name: str) -> list[tuple]:
        """The arguments of every recorded call of `name`."""
        with self._lock:
            return [args for call, args in self.calls if call == name]

    def _record(self, name: str, *args) -> None:
        with self._lock:
            self.calls.append((name, args))

    def _maybe_fail(self, name: str) -> None:
        with self._lock:
            error = self._failures.pop(name, None)
        if error is not None:
            raise error
