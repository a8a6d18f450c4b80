"""PandaRobot against a recording stand-in of panda_py (tests/hw/panda_double.py) that uses panda-py's own
kinematics, and the real panda_py failing fast when no controller is reachable."""

from __future__ import annotations

import socket
import sys
import threading
import time

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

panda_py = pytest.importorskip("panda_py")

from htouch.collector.config import RobotConfig  # noqa: E402
from htouch.collector.devices import Action, DeviceError, Robot  # noqa: E402
from htouch.collector.hardware import franka  # noqa: E402
from htouch.collector.hardware import panda as panda_backend  # noqa: E402
from htouch.collector.hardware.panda import PandaRobot, probe  # noqa: E402
from htouch.collector.safety import SafetyFilter, SafetyLimits  # noqa: E402
from tests.conftest import wait_until  # noqa: E402
from tests.hw.panda_double import HOME_Q, REFLEX, PandaPyDouble  # noqa: E402

HOME_POS = np.array([0.307, 0.0, 0.487])


@pytest.fixture
def rig():
    """A started PandaRobot on a double that begins away from home."""
    double = PandaPyDouble(q=HOME_Q + np.array([0.2, 0.1, 0.0, 0.1, 0.0, -0.1, 0.0]))
    robot = PandaRobot(RobotConfig(host="127.0.0.1"), panda_module=double)
    robot.start()
    yield robot, double
    robot.stop()


def act(dx=(0, 0, 0), rotvec=(0, 0, 0), gripper=1.0) -> Action:
    return Action(np.array([*dx, *rotvec], dtype=float), gripper)


def test_home_pose_is_panda_py_forward_kinematics():
    np.testing.assert_allclose(panda_py.fk(HOME_Q)[:3, 3], HOME_POS, atol=1e-3)
    np.testing.assert_allclose(RobotConfig().home_joints, HOME_Q, atol=1e-6)


def test_connects_reads_state_and_homes(rig):
    robot, double = rig
    assert isinstance(robot, Robot) and robot.n_joints == 7
    assert double.named("Panda") == [("127.0.0.1",)] and double.named("Gripper") == [("127.0.0.1",)]
    robot.home()
    assert len(double.named("move_to_joint_position")) == 1
    np.testing.assert_allclose(double.named("move_to_joint_position")[0][0], RobotConfig().home_joints)
    # The impedance controller restarted at home with the configured stiffness, holding that pose.
    (impedance, damping, nullspace), = double.named("CartesianImpedance")[-1:]
    np.testing.assert_allclose(np.diag(impedance), [600, 600, 600, 30, 30, 30])
    assert double.calls.index(("move_to_joint_position", double.named("move_to_joint_position")[0])) < \
        max(i for i, (name, _) in enumerate(double.calls) if name == "start_controller")
    state = robot.state()
    np.testing.assert_allclose(state.ee_pose[:3], HOME_POS, atol=1e-3)
    # Home points the gripper down: x along base x, z along -z (fk of the home joints).
    np.testing.assert_allclose(Rotation.from_quat(state.ee_pose[3:]).as_matrix(), np.diag([1, -1, -1]), atol=1e-6)
    np.testing.assert_allclose(state.joints, RobotConfig().home_joints, atol=1e-6)
    assert state.error is None and state.gripper_width == pytest.approx(0.08)
    assert double.named("move")[-1] == (0.08, 0.1)  # opened at home
    target_pos, target_quat = robot.target
    np.testing.assert_allclose(target_pos, state.ee_pose[:3])


def test_targets_integrate_hand_computed_delta_sequences(rig):
    robot, double = rig
    robot.home()
    start_pos, start_quat = robot.target
    start_rot = Rotation.from_quat(start_quat)
    n_before = len(double.named("set_control"))
    steps = [act((0.01, 0, 0)), act((0.01, 0, 0)), act((0, -0.005, 0.002)), act(rotvec=(0, 0, 0.1)),
             act((0.0, 0.0, -0.01), rotvec=(0.05, 0, 0))]
    for step in steps:
        robot.apply(step)
    sent = double.named("set_control")[n_before:]
    assert len(sent) == 5
    # By hand: positions add up, rotations compose on the left (base frame).
    expected_pos = [start_pos + [0.01, 0, 0], start_pos + [0.02, 0, 0], start_pos + [0.02, -0.005, 0.002],
                    start_pos + [0.02, -0.005, 0.002], start_pos + [0.02, -0.005, -0.008]]
    rz = Rotation.from_rotvec([0, 0, 0.1])
    expected_rot = [start_rot, start_rot, start_rot, rz * start_rot,
                    Rotation.from_rotvec([0.05, 0, 0]) * rz * start_rot]
    for (position, quat), pos, rot in zip(sent, expected_pos, expected_rot, strict=True):
        np.testing.assert_allclose(position, pos, atol=1e-9)
        assert (Rotation.from_quat(quat) * rot.inv()).magnitude() < 1e-9
    # The (ideally stiff) robot followed: the measured pose is the last target (within ik's accuracy).
    state = robot.state()
    np.testing.assert_allclose(state.ee_pose[:3], expected_pos[-1], atol=1e-3)
    assert robot.lead_limited == 0


def test_target_never_leads_a_blocked_robot_by_more_than_the_limit(rig):
    robot, double = rig
    robot.home()
    double.robot.blocked = True  # pressing on a table: the arm does not move
    measured = robot.state().ee_pose[:3].copy()
    for _ in range(10):
        robot.apply(act((0.0, 0.0, -0.01), rotvec=(0.0, 0.1, 0.0)))
    position, quat = double.named("set_control")[-1]
    np.testing.assert_allclose(position, measured + [0, 0, -franka.MAX_LEAD_M], atol=1e-9)
    measured_rot = Rotation.from_quat(robot.state().ee_pose[3:])
    assert (Rotation.from_quat(quat) * measured_rot.inv()).magnitude() == pytest.approx(franka.MAX_LEAD_RAD)
    assert robot.lead_limited >= 7
    double.robot.blocked = False  # released: integration goes on from the limited target
    robot.apply(act((0.0, 0.0, 0.005)))
    np.testing.assert_allclose(double.named("set_control")[-1][0], measured + [0, 0, -0.025], atol=1e-9)


def test_commands_beyond_the_safety_box_leave_the_target_inside_it():
    """A lagging arm: the safety filter bounds each step from the measured position, so without the box
    rule the integrated target would pass the box by the lag (up to MAX_LEAD_M)."""
    limits = SafetyLimits(workspace_max=[panda_py.fk(HOME_Q)[0, 3] + 0.015, 0.4, 0.6])  # 1.5 cm ahead of home in x
    double = PandaPyDouble()
    robot = PandaRobot(RobotConfig(host="127.0.0.1"), panda_module=double, workspace=limits)
    try:
        robot.start()
        robot.home()
        safety = SafetyFilter(limits)
        double.robot.blocked = True  # the arm lags: it stays at home while the commands come
        n_before = len(double.named("set_control"))
        for _ in range(6):
            filtered = safety(act((0.5, 0.0, 0.0)), robot.state().ee_pose[:3])
            assert filtered.action.delta_ee[0] == pytest.approx(0.015, abs=1e-5)  # the filter: up to the box, from home
            robot.apply(filtered.action)
        sent = [position for position, _ in double.named("set_control")[n_before:]]
        assert len(sent) == 6
        assert max(p[0] for p in sent) == pytest.approx(limits.workspace_max[0])  # at the box, never past it
        assert robot.target[0][0] == pytest.approx(limits.workspace_max[0])
        double.robot.blocked = False  # released: the arm goes to the target, inside the box
        robot.apply(filtered.action)
        assert double.named("set_control")[-1][0][0] <= limits.workspace_max[0] + 1e-12
        assert robot.state().ee_pose[0] <= limits.workspace_max[0] + 1e-3  # ik's accuracy
    finally:
        robot.stop()


def test_an_arm_outside_the_box_is_drawn_toward_it_within_the_lead_limit():
    """Home above the box's top: the target goes toward the box from the measured pose, never jumping to
    it (the lead limit applies after the box)."""
    limits = SafetyLimits(workspace_max=[0.8, 0.4, 0.40])  # home is at z = 0.487
    double = PandaPyDouble()
    robot = PandaRobot(RobotConfig(host="127.0.0.1"), panda_module=double, workspace=limits)
    try:
        robot.home()
        double.robot.blocked = True
        measured = robot.state().ee_pose[:3].copy()
        robot.apply(act())  # no motion asked: the box alone moves the target
        np.testing.assert_allclose(double.named("set_control")[-1][0], measured - [0, 0, franka.MAX_LEAD_M],
                                   atol=1e-9)
        assert robot.lead_limited == 1
    finally:
        robot.stop()


def test_gripper_commands_from_the_action_opening(rig):
    robot, double = rig
    robot.home()
    n = len(double.named("move"))

    def gripper_calls():
        return [(name, args) for name, args in double.calls if name in ("move", "grasp")]

    before = len(gripper_calls())
    for opening in (1.0, 0.98, 0.6, 0.58, 0.2, 0.1, 0.0, 0.45, 0.9):
        robot.apply(act(gripper=opening))
        assert robot.wait_gripper(5.0)
    calls = gripper_calls()[before:]
    assert [name for name, _ in calls] == ["move", "grasp", "move"], calls
    expected = [
        # 1.0 and 0.98: already open (0.0016 m is no meaningful change); 0.58: 1.6 mm from 0.6, none
        ("move", (0.048, 0.1)),  # 0.6 * 0.08 m
        ("grasp", (0.016, 0.1, 20.0, 0.08, 0.08)),  # 0.2: below the threshold grasps once (0.1 0.0 0.45 hold)
        ("move", (0.072, 0.1)),  # 0.9: opening again
    ]
    for (name, args), (want_name, want_args) in zip(calls, expected, strict=True):
        assert name == want_name
        np.testing.assert_allclose(args, want_args)
    assert len(double.named("move")) == n + 2
    wait_until(lambda: robot.state().gripper_width == pytest.approx(0.072))


def test_grasp_on_an_object_and_gripper_state(rig):
    robot, double = rig
    robot.home()
    double.object_width = 0.03
    robot.apply(act(gripper=0.0))
    assert robot.wait_gripper(5.0)
    wait_until(lambda: robot.state().gripper_width == pytest.approx(0.03))
    assert double.gripper.is_grasped


def test_gripper_calls_run_off_the_control_thread_and_the_newest_wins(rig):
    robot, double = rig
    robot.home()
    double.gripper_gate.clear()  # the next gripper motion blocks until released
    done = threading.Event()

    def control_steps():
        robot.apply(act(gripper=0.5))  # move to 0.04: starts and blocks in the worker
        wait_until(lambda: len(double.named("move")) >= 2)
        robot.apply(act(gripper=0.0))  # grasp: waits behind the move ...
        robot.apply(act(gripper=0.75))  # ... and is replaced by this newer command
        for _ in range(30):
            robot.apply(act((0.001, 0, 0), gripper=0.75))
        done.set()

    thread = threading.Thread(target=control_steps, daemon=True)
    thread.start()
    assert done.wait(5.0), "apply() waited for the gripper"
    double.gripper_gate.set()
    assert robot.wait_gripper(5.0)
    assert double.named("move")[-2:] == [(0.04, 0.1), (0.06, 0.1)]
    assert double.named("grasp") == []


def test_gripper_failure_is_an_event_not_a_crash(rig):
    robot, double = rig
    robot.home()
    robot.pop_events()
    double.fail_next("grasp", RuntimeError("libfranka gripper: Grasp command failed"))
    robot.apply(act(gripper=0.0))
    assert robot.wait_gripper(5.0)
    (t, kind, detail), = robot.pop_events()
    assert kind == "robot_error" and detail["device"] == "gripper" and "Grasp command failed" in detail["message"]
    robot.apply(act(gripper=1.0))  # the gripper still works
    assert robot.wait_gripper(5.0)
    assert double.named("move")[-1] == (0.08, 0.1)


def test_reflex_is_reported_commands_stop_and_recover_reanchors(rig):
    robot, double = rig
    robot.home()
    robot.apply(act((0.02, 0, 0)))
    double.robot.trigger_reflex()
    state = robot.state()
    assert state.error is not None and "reflex" in state.error
    assert robot.state().error == state.error  # latched although panda-py reports it once
    n = len(double.named("set_control"))
    robot.apply(act((0.01, 0, 0)))
    assert len(double.named("set_control")) == n  # nothing sent while in error
    double.robot._q = double.robot._q + np.array([0, 0.05, 0, 0, 0, 0, 0])  # it sagged during the reflex
    measured = robot.state().ee_pose
    n_recover = len(double.named("recover"))
    robot.recover()
    assert len(double.named("recover")) > n_recover
    assert robot.state().error is None
    target_pos, target_quat = robot.target
    np.testing.assert_allclose(target_pos, measured[:3], atol=1e-9)  # re-anchored where it is
    np.testing.assert_allclose(double.named("set_control")[-1][0], measured[:3], atol=1e-9)
    robot.apply(act((0.0, 0.01, 0)))
    np.testing.assert_allclose(double.named("set_control")[-1][0], measured[:3] + [0, 0.01, 0], atol=1e-9)


def test_refusals_surface_as_device_errors(rig):
    robot, double = rig
    double.fail_next("move_to_joint_position", RuntimeError(REFLEX))
    with pytest.raises(DeviceError, match="could not move home.*reflex"):
        robot.home()
    assert "homing failed" in robot.state().error
    double.fail_next("recover", RuntimeError("libfranka: automatic error recovery failed"))
    with pytest.raises(DeviceError, match="did not recover.*recovery failed"):
        robot.recover()
    robot.recover()
    assert robot.state().error is None
    robot.pop_events()
    robot.apply(Action(np.array([np.nan, 0, 0, 0, 0, 0]), 1.0))
    assert robot.pop_events()[0][1] == "robot_error"


def test_home_before_start_opens_the_gripper_too():
    double = PandaPyDouble()
    robot = PandaRobot(RobotConfig(host="127.0.0.1", gripper_max_width=0.07), panda_module=double)
    robot.home()
    assert double.named("move") == [(0.07, 0.1)]
    robot.stop()


def test_double_refusing_connection_names_the_host():
    with pytest.raises(DeviceError,
                       match="cannot reach the Franka controller at 127.0.0.1: libfranka: Connection to FCI refused"):
        PandaRobot(RobotConfig(host="127.0.0.1"), panda_module=PandaPyDouble(refuse=True))


# ------------------------------------------------------------------------------------------- real panda_py


def test_real_panda_py_with_no_controller_fails_fast():
    started = time.monotonic()
    with pytest.raises(DeviceError, match="cannot reach the Franka controller at 127.0.0.1: .*FCI"):
        PandaRobot(RobotConfig(host="127.0.0.1"))
    assert time.monotonic() - started < 10  # generous: it fails at once


def test_real_panda_py_silent_controller_times_out():
    """Something accepts on the FCI port but never answers: the constructor gives up instead of hanging."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(("127.0.0.3", panda_backend.FCI_PORT))
        except OSError as e:
            pytest.skip(f"cannot listen on 127.0.0.3:{panda_backend.FCI_PORT}: {e}")
        listener.listen(1)
        with pytest.raises(DeviceError,
                           match=r"cannot reach the Franka controller at 127.0.0.3: no answer within 0.3 s"):
            PandaRobot(RobotConfig(host="127.0.0.3"), connect_timeout_s=0.3)
        ok, message = probe(RobotConfig(host="127.0.0.3"))
        assert not ok
        assert message.startswith("cannot reach the Franka controller at 127.0.0.3: port 1337 accepts "
                                  "connections but libfranka got no answer within 2 s")
    # closing the listener resets the pending connection, so libfranka's thread ends too


def test_probe_without_a_controller():
    ok, message = probe(RobotConfig(host="127.0.0.1"))
    assert not ok
    assert message.startswith("cannot reach the Franka controller at 127.0.0.1: connection refused on port 1337")


def test_missing_panda_py_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "panda_py", None)
    with pytest.raises(DeviceError, match=r"panda-python is not installed.*pip install 'htouch\[hardware\]'"):
        PandaRobot(RobotConfig(host="127.0.0.1"))
    ok, message = probe(RobotConfig(host="127.0.0.1"))
    assert not ok and "htouch[hardware]" in message
