"""The clutch mapping, on hand-computed cases: anchoring, the signed axis remap, gains, clipping, rotation in
the base frame, the trigger, and the episode buttons."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from htouch.collector.devices import RobotState, TeleopReading
from htouch.collector.mapping import ClutchMapping, MappingConfig, axis_remap_matrix

HOME = np.array([0.5, 0.0, 0.3])


def controller(pos=(0, 0, 0), rotvec=(0, 0, 0), grip=True, trigger=0.0, buttons=(), grip_analog=None):
    pose = np.eye(4)
    pose[:3, :3] = Rotation.from_rotvec(rotvec).as_matrix()
    pose[:3, 3] = pos
    flags = {name: True for name in buttons}
    analog = {"rightTrig": trigger}
    if grip_analog is None:
        flags["RG"] = grip
    else:
        analog["rightGrip"] = grip_analog
    return TeleopReading(0, pose, flags, analog)


def robot(pos=HOME, rotvec=(0, 0, 0)):
    quat = Rotation.from_rotvec(rotvec).as_quat()
    return RobotState(0, np.concatenate([pos, quat]), np.zeros(7), 0.08)


def engaged(mapping=None, robot_state=None, **anchor):
    """A mapping whose clutch was just pressed with the controller at `anchor` (and the robot at robot_state)."""
    m = mapping or ClutchMapping()
    first = m(controller(**anchor), robot_state or robot())
    assert first.engaged and np.all(first.action.delta_ee == 0)  # the press itself never moves the robot
    return m


def test_released_clutch_holds_and_trigger_drives_gripper():
    m = ClutchMapping()
    out = m(controller(pos=(0.3, 0.2, 0.1), grip=False, trigger=0.25), robot())
    assert not out.engaged and out.command is None
    np.testing.assert_array_equal(out.action.delta_ee, np.zeros(6))
    assert out.action.gripper == pytest.approx(0.75)  # pulled a quarter: a quarter closed
    assert m(controller(grip=False, trigger=1.0), robot()).action.gripper == 0.0
    assert m(controller(grip=False, trigger=3.0), robot()).action.gripper == 0.0  # clamped to [0, 1]


def test_default_remap_moves_robot_away_when_hand_moves_forward():
    # Default ["-z", "-x", "y"]: robot x = -controller z, robot y = -controller x, robot z = controller y.
    m = engaged()
    out = m(controller(pos=(0, 0, -0.01)), robot())  # hand 1 cm forward (away from the user: -z)
    np.testing.assert_allclose(out.action.delta_ee, [0.01, 0, 0, 0, 0, 0], atol=1e-12)
    out = m(controller(pos=(0.004, 0.003, 0)), robot())  # right 4 mm, up 3 mm
    np.testing.assert_allclose(out.action.delta_ee[:3], [0, -0.004, 0.003], atol=1e-12)


def test_action_is_controller_motion_minus_robot_motion_since_anchor():
    m = engaged()
    moved = robot(pos=HOME + [0.004, 0, 0])  # the robot already covered 4 of the 10 mm
    out = m(controller(pos=(0, 0, -0.01)), moved)
    np.testing.assert_allclose(out.action.delta_ee[:3], [0.006, 0, 0], atol=1e-12)
    # The robot overshot: the action pulls it back.
    out = m(controller(pos=(0, 0, -0.01)), robot(pos=HOME + [0.012, 0.001, 0]))
    np.testing.assert_allclose(out.action.delta_ee[:3], [-0.002, -0.001, 0], atol=1e-12)


def test_scale_and_gain():
    m = engaged(ClutchMapping(MappingConfig(motion_scale=2.0, gain=0.5)))
    out = m(controller(pos=(0.01, 0, 0)), robot())  # 1 cm right -> 2 cm target in -y, half of it this step
    np.testing.assert_allclose(out.action.delta_ee[:3], [0, -0.01, 0], atol=1e-12)
    out = m(controller(pos=(0.01, 0, 0)), robot(pos=HOME + [0, -0.01, 0]))
    np.testing.assert_allclose(out.action.delta_ee[:3], [0, -0.005, 0], atol=1e-12)


def test_per_step_clipping_keeps_direction():
    m = engaged()
    out = m(controller(pos=(0, 0.03, -0.04)), robot())  # target (0.04, 0, 0.03): 5 cm, clipped to 1.5 cm
    np.testing.assert_allclose(out.action.delta_ee[:3], [0.012, 0, 0.009], atol=1e-12)
    out = m(controller(rotvec=(0, 0.2, 0)), robot())  # 0.2 rad about up: clipped to 0.08
    np.testing.assert_allclose(out.action.delta_ee[3:], [0, 0, 0.08], atol=1e-12)


def test_rotation_remapped_and_relative_to_robot_rotation_since_anchor():
    m = engaged()
    out = m(controller(rotvec=(0, 0.05, 0)), robot())  # about controller y (up) = about robot z
    np.testing.assert_allclose(out.action.delta_ee[3:], [0, 0, 0.05], atol=1e-9)
    out = m(controller(rotvec=(0, 0.05, 0)), robot(rotvec=(0, 0, 0.02)))  # the robot turned 0.02 already
    np.testing.assert_allclose(out.action.delta_ee[3:], [0, 0, 0.03], atol=1e-9)
    out = m(controller(rotvec=(0.05, 0, 0)), robot())  # about controller x = about robot -y
    np.testing.assert_allclose(out.action.delta_ee[3:], [0, -0.05, 0], atol=1e-9)


def test_rotation_is_in_the_base_frame_whatever_the_robot_orientation():
    turned = (0, 0, np.pi / 2)  # gripper yawed 90 degrees at the anchor
    m = engaged(robot_state=robot(rotvec=turned))
    out = m(controller(rotvec=(0.05, 0, 0)), robot(rotvec=turned))
    np.testing.assert_allclose(out.action.delta_ee[3:], [0, -0.05, 0], atol=1e-9)


def test_anchor_taken_with_controller_already_rotated():
    # Anchored with the hand turned 0.3 rad about up; turning 0.05 further asks for 0.05, not 0.35.
    m = engaged(rotvec=(0, 0.3, 0))
    out = m(controller(rotvec=(0, 0.35, 0)), robot())
    np.testing.assert_allclose(out.action.delta_ee[3:], [0, 0, 0.05], atol=1e-9)


def test_each_press_reanchors():
    m = engaged()
    m(controller(pos=(0, 0, -0.01)), robot())
    # Release, move the hand 20 cm (the robot stays), press again: no jump, only motion since the new press.
    assert not m(controller(pos=(0, 0, -0.2), grip=False), robot()).engaged
    out = m(controller(pos=(0, 0, -0.2)), robot(pos=HOME + [0.01, 0, 0]))
    assert out.engaged
    np.testing.assert_array_equal(out.action.delta_ee, np.zeros(6))
    out = m(controller(pos=(0, 0, -0.205)), robot(pos=HOME + [0.01, 0, 0]))
    np.testing.assert_allclose(out.action.delta_ee[:3], [0.005, 0, 0], atol=1e-12)


def test_grip_from_analog_value():
    m = ClutchMapping(MappingConfig(grip_threshold=0.5))
    assert not m(controller(grip_analog=0.4), robot()).engaged
    assert m(controller(grip_analog=0.6), robot()).engaged


def test_buttons_act_once_per_press():
    m = ClutchMapping()
    assert m(controller(buttons=("A",)), robot()).command == "success"
    assert m(controller(buttons=("A",)), robot()).command is None  # still held
    assert m(controller(), robot()).command is None
    assert m(controller(buttons=("A",)), robot()).command == "success"
    assert m(controller(buttons=("B",)), robot()).command == "failure"
    assert m(controller(buttons=("RJ",)), robot()).command == "discard"
    custom = ClutchMapping(MappingConfig(success_button="RThU"))
    assert custom(controller(buttons=("A",)), robot()).command is None
    assert custom(controller(buttons=("RThU",)), robot()).command == "success"


def test_custom_remap():
    m = engaged(ClutchMapping(MappingConfig(axis_remap=["x", "-y", "-z"])))  # half a turn about x
    out = m(controller(pos=(0.001, 0.002, 0.003), rotvec=(0, 0, 0.04)), robot())
    np.testing.assert_allclose(out.action.delta_ee, [0.001, -0.002, -0.003, 0, 0, -0.04], atol=1e-9)
    # A mirroring remap (one axis flipped) mirrors motion, so a turn about the unflipped z reverses its sense.
    m = engaged(ClutchMapping(MappingConfig(axis_remap=["x", "-y", "z"])))
    out = m(controller(pos=(0.001, 0.002, 0.003), rotvec=(0, 0, 0.04)), robot())
    np.testing.assert_allclose(out.action.delta_ee, [0.001, -0.002, 0.003, 0, 0, -0.04], atol=1e-9)


def test_axis_remap_matrix():
    np.testing.assert_array_equal(axis_remap_matrix(["-z", "-x", "y"]), [[0, 0, -1], [-1, 0, 0], [0, 1, 0]])
    for bad in (["x", "x", "y"], ["x", "y"], ["x", "y", "w"]):
        with pytest.raises(ValueError):
            axis_remap_matrix(bad)


def test_glitched_readings_hold_and_reanchor():
    m = engaged()
    nan_pose = controller(pos=(np.nan, 0, 0))
    out = m(nan_pose, robot())
    assert not out.engaged and np.all(out.action.delta_ee == 0)
    bad_robot = RobotState(0, np.array([0.5, 0, 0.3, 0, 0, 0, 0.0]), np.zeros(7), 0.08)  # zero quaternion
    assert not m(controller(pos=(0, 0, -0.01)), bad_robot).engaged
    # Good again: the first good reading re-anchors (no jump to where the hand went meanwhile).
    out = m(controller(pos=(0, 0, -0.05)), robot())
    assert out.engaged and np.all(out.action.delta_ee == 0)
