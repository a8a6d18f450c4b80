"""The scripted operator: a Teleop that succeeds through the clutch mapping and the safety filter, and moves
like a person (pauses, noise, corrections) differently per seed."""

from __future__ import annotations

import numpy as np
import pytest

from htouch.collector.config import RigConfig
from htouch.collector.devices import Action, Teleop, TeleopReading
from htouch.collector.mapping import ClutchMapping
from htouch.sim.operator import OperatorStyle, ScriptedOperator, drive
from htouch.sim.rig import SimRig


def tiny_config() -> RigConfig:
    config = RigConfig()
    config.camera.width, config.camera.height = 64, 48
    return config


@pytest.mark.parametrize("task", ["zip", "flip", "scoop"])
def test_operator_succeeds_through_the_mapping(task):
    """Two episodes per task (the benchmark runs ten per task; see docs/bench-sim.md)."""
    with SimRig(task, seed=11, config=tiny_config()) as rig:
        op = ScriptedOperator(rig, seed=11)
        assert isinstance(op, Teleop)
        for _ in range(2):
            outcome = drive(rig, op, max_seconds=60)
            assert outcome.command == "success" and outcome.success, outcome
            assert outcome.robot_errors == []
            assert 8 < outcome.seconds < 40


def test_readings_are_controller_readings():
    with SimRig("zip", seed=0, config=tiny_config()) as rig:
        op = ScriptedOperator(rig, seed=0)
        mapping = ClutchMapping(rig.config.mapping)
        rig.robot.home()
        engaged, moved = 0, 0.0
        for _ in range(150):
            r = op.read()
            assert isinstance(r, TeleopReading) and r.timestamp_ns == rig.clock.now_ns()
            assert op.read() is r  # the same instant: the same reading
            rot = r.controller_pose[:3, :3]
            assert np.allclose(rot @ rot.T, np.eye(3), atol=1e-9) and np.allclose(r.controller_pose[3], [0, 0, 0, 1])
            assert set(r.buttons) == {"A", "B", "RThU", "RJ", "RG", "RTr"}
            assert 0.0 <= r.analog["rightTrig"] <= 1.0 and r.analog["rightGrip"] in (0.0, 1.0)
            state = rig.robot.state()
            command = mapping(r, state)
            if not r.buttons["RG"]:
                assert not np.any(command.action.delta_ee)  # released clutch: the robot holds
            engaged += command.engaged
            moved += float(np.linalg.norm(command.action.delta_ee[:3]))
            rig.robot.apply(command.action)
        assert engaged > 100 and moved > 0.05  # it grabbed the clutch and drove the robot


def intents(task: str, seed: int, ticks: int = 420) -> np.ndarray:
    """The operator's intended EE positions per tick, driven through the mapping."""
    with SimRig(task, seed=0, config=tiny_config()) as rig:
        op = ScriptedOperator(rig, seed=seed)
        mapping = ClutchMapping(rig.config.mapping)
        rig.robot.home()
        out = []
        for _ in range(ticks):
            r = op.read()
            rig.robot.apply(mapping(r, rig.robot.state()).action)
            out.append(op.want_pos.copy())
    return np.array(out)


def test_motion_is_human_like_and_differs_per_seed():
    a, b = intents("flip", 1), intents("flip", 2)
    speed = np.linalg.norm(np.diff(a, axis=0), axis=1) * 30
    assert speed.max() < 0.3  # no teleporting: a person's reach
    still = speed < 1e-4
    runs = np.diff(np.flatnonzero(np.diff(np.r_[0, still.astype(int), 0]) != 0))[::2]
    assert runs.max() >= 4  # pauses of at least a few ticks
    assert np.abs(a - b).max() > 0.01  # another seed: another person's motion


def test_tremor_comes_from_the_style():
    """Before the first reach the hand rests: with tremor it shakes by about a millimetre, without it is still."""
    spread = {}
    for name, style in (("default", OperatorStyle()),
                        ("calm", OperatorStyle(tremor_m=0.0, drift_m=0.0, tremor_rad=0.0))):
        with SimRig("zip", seed=0, config=tiny_config()) as rig:
            op = ScriptedOperator(rig, seed=0, style=style)
            rig.robot.home()
            positions = []
            for _ in range(6):  # the operator waits at least 0.2 s before grabbing the clutch
                positions.append(op.read().controller_pose[:3, 3])
                rig.robot.apply(Action.hold(1.0))
            spread[name] = float(np.ptp(np.array(positions), axis=0).max())
    assert spread["calm"] == 0.0
    assert 0.0003 < spread["default"] < 0.01
