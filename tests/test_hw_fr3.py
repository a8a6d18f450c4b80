"""The FR3 backend through the real libfranka protocol: pylibfranka against franky-sim (MuJoCo) on 127.0.0.1,
one simulator for the module, started and stopped here (tests/hw/fr3_sim.py). The camera, microphones and
teleop of the recorded episode are the loop tests' real-time stand-ins (tests/loop_devices.py); the robot
state streams come from the simulated controller. The last two tests kill the simulator (keep them last)."""

from __future__ import annotations

import json
import re
import threading
import time

import numpy as np
import pytest

pytest.importorskip("pylibfranka", reason="pylibfranka (htouch[hardware]) is not installed")
pytest.importorskip("franky_sim", reason="franky-sim (htouch[hardware]) is not installed")

from htouch.collector.config import RobotConfig, SafetyLimits  # noqa: E402
from htouch.collector.devices import Action, DeviceError, Robot  # noqa: E402
from htouch.collector.hardware.fr3 import FR3Robot  # noqa: E402
from htouch.collector.replay import command_tracking  # noqa: E402
from htouch.collector.safety import SafetyFilter  # noqa: E402
from htouch.dataset.store import Dataset  # noqa: E402
from htouch.dataset.writer import FLUSHED_FILE  # noqa: E402
from tests.conftest import wait_until  # noqa: E402
from tests.hw.fr3_sim import HOST, FrankySim, port_in_use  # noqa: E402
from tests.loop_devices import Plan, PlannedWorld  # noqa: E402

HOME_POS = np.array([0.307, 0.0, 0.487])  # forward kinematics of RobotConfig().home_joints (Panda and FR3)
REFLEX_FORCE_N = 30.0  # the simulator's contact reflex (tests/hw/fr3_reflex_server.py): ground contact above this


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    if port_in_use():
        pytest.skip(f"{HOST}:1337 is taken (another franky-sim or controller): cannot start the simulator")
    server = FrankySim(tmp_path_factory.mktemp("franky-sim") / "franky-sim.log", reflex_force_n=REFLEX_FORCE_N)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def fr3_config(tmp_path, *extra: str, host: str = HOST) -> str:
    path = tmp_path / "fr3.toml"
    path.write_text("\n".join(['[rig]', 'kind = "real"', 'name = "fr3-sim"',
                               '[camera]', 'width = 64', 'height = 48',
                               '[microphones]', 'channels = 2', 'rate_hz = 16000',
                               '[robot]', 'kind = "fr3"', f'host = "{host}"', *extra]) + "\n")
    return str(path)


def test_rig_check_with_nothing_listening_is_one_clear_line(cli, tmp_path):
    """No controller at the address (127.0.0.2: nothing listens there): the robot row says so in one line,
    and collect fails at once with one line and exit 2, creating nothing."""
    config = fr3_config(tmp_path, host="127.0.0.2")
    r = cli("rig", "check", "--config", config, "--operator", "keyboard")
    assert r.code == 1 and "FR3 at 127.0.0.2" in r.out
    assert "cannot reach the FR3 controller at 127.0.0.2: connection refused on port 1337" in r.out
    start = time.monotonic()
    r = cli("collect", tmp_path / "d", "--task", "zip", "--config", config, "--no-panel")
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1, r.err
    assert r.err.startswith("error: cannot open the real rig: cannot reach the FR3 controller at 127.0.0.2")
    assert time.monotonic() - start < 10 and not (tmp_path / "d").exists()


def test_rig_check_finds_the_fr3_and_prints_its_state(sim, cli, tmp_path):
    r = cli("rig", "check", "--config", fr3_config(tmp_path), "--operator", "keyboard")
    robot_row = next(line for line in r.out.splitlines() if "FR3 at 127.0.0.1" in line)
    assert "OK" in robot_row and "libfranka connected" in r.out and "joints [" in r.out, r.out
    assert "missing: camera, microphones" in r.err and "robot" not in r.err.split("missing:")[1]


@pytest.fixture
def fr3(sim):
    """A started FR3Robot (stopped after the test: the controller serves one client at a time)."""
    robot = FR3Robot(RobotConfig(kind="fr3", host=HOST))
    robot.start()
    yield robot
    robot.stop()


def test_connects_homes_and_follows_delta_commands(fr3):
    assert isinstance(fr3, Robot)
    fr3.home()
    state = fr3.state()
    assert state.error is None and state.joints.shape == (7,) and state.external_force.shape == (6,)
    np.testing.assert_allclose(state.joints, RobotConfig().home_joints, atol=0.03)
    np.testing.assert_allclose(state.ee_pose[:3], HOME_POS, atol=0.01)
    wait_until(lambda: fr3.state().gripper_width == pytest.approx(0.08, abs=0.002))  # opened at home
    start = state.ee_pose[:3].copy()
    for _ in range(10):  # 10 x 5 mm along y, at 30 Hz
        fr3.apply(Action(np.array([0.0, 0.005, 0.0, 0.0, 0.0, 0.0]), 1.0))
        time.sleep(1 / 30)
    # The target integrated the steps, held within MAX_LEAD_M of an arm that lags (a loaded simulator runs
    # slower than the wall clock); the impedance law then brings the arm to it.
    target = fr3.target[0]
    assert 0.03 - 1e-9 <= target[1] - start[1] <= 0.05 + 1e-9 and np.allclose(target[[0, 2]], start[[0, 2]], atol=0.005)
    wait_until(lambda: np.linalg.norm(fr3.state().ee_pose[:3] - target) < 0.005, timeout=15)
    assert fr3.timing()["cycles"] > 100


def test_a_command_outside_the_safety_box_is_clipped_and_never_sent(sim):
    limits = SafetyLimits(workspace_max=[0.32, 0.4, 0.6])  # 1.3 cm ahead of home in x
    robot = FR3Robot(RobotConfig(kind="fr3", host=HOST), workspace=limits)
    try:
        robot.start()
        robot.home()
        safety = SafetyFilter(limits)
        for _ in range(8):
            state = robot.state()
            filtered = safety(Action(np.array([0.5, 0.0, 0.0, 0.0, 0.0, 0.0]), 1.0), state.ee_pose[:3])
            assert "workspace" in filtered.reasons
            assert state.ee_pose[0] + filtered.action.delta_ee[0] <= 0.32 + 1e-9
            robot.apply(filtered.action)
            # The filter bounds the step from the measured pose; the backend keeps its integrated target in
            # the box too (an arm lagging its target would otherwise let it pass the box by the lag).
            assert robot.target[0][0] <= 0.32 + 1e-9
            time.sleep(1 / 30)
        time.sleep(1.0)
        assert robot.state().ee_pose[0] < 0.322
    finally:
        robot.stop()


def test_a_contact_reflex_is_reported_commands_stop_and_recover_goes_on(fr3, sim):
    """Pushing the hand into the ground: the controller's reflex aborts the motion, libfranka raises in the
    torque thread, state() reports it, apply() sends nothing, recover() clears it and the arm moves again."""
    fr3.home()
    error = None
    deadline = time.monotonic() + 20
    while error is None and time.monotonic() < deadline:
        fr3.apply(Action(np.array([0.0, 0.0, -0.02, 0.0, 0.0, 0.0]), 1.0))
        time.sleep(1 / 30)
        error = fr3.state().error
    assert error is not None and "reflex" in error, error
    wait_until(lambda: "reflex: contact force" in sim.log.read_text())  # the simulator saw the contact
    target = fr3.target[0]
    fr3.apply(Action(np.array([0.0, 0.0, 0.02, 0.0, 0.0, 0.0]), 1.0))
    np.testing.assert_array_equal(fr3.target[0], target)  # nothing sent while in error
    for _ in range(5):  # as the recording loop does: a bouncing contact may fire the reflex again
        try:
            fr3.recover()
            break
        except DeviceError as e:
            assert "reflex" in str(e)
            time.sleep(0.2)
    state = fr3.state()
    assert state.error is None
    np.testing.assert_allclose(fr3.target[0], state.ee_pose[:3], atol=0.01)  # re-anchored where the arm is
    low = state.ee_pose[2]
    for _ in range(5):
        fr3.apply(Action(np.array([0.0, 0.0, 0.01, 0.0, 0.0, 0.0]), 1.0))
        time.sleep(1 / 30)
    # Toward its target 3 cm up (the lead limit); a compliant arm stretched out near the ground sags a
    # little below it (the simulated hand's weight is not all in the controller's gravity model).
    wait_until(lambda: fr3.state().ee_pose[2] > low + 0.01, timeout=15)
    assert fr3.state().error is None


def act_world() -> PlannedWorld:
    """Camera, microphones and teleop stand-ins in real time (a 30 Hz camera, 10 ms audio blocks, a
    scripted controller that holds the grip and circles slowly)."""
    world = PlannedWorld([Plan(end_button=None)], stepped=False)
    world.start_producer()
    return world


@pytest.fixture
def stand_ins(monkeypatch):
    """`--rig real` with the FR3 backend as is, the other devices replaced by the stand-ins."""
    world = act_world()
    monkeypatch.setattr("htouch.collector.hardware.realsense.RealSenseCamera", lambda cfg, clock: world.camera)
    monkeypatch.setattr("htouch.collector.hardware.microphones.SoundDeviceMicrophones",
                        lambda cfg, clock: world.microphones)
    monkeypatch.setattr("htouch.collector.hardware.quest.QuestTeleop", lambda cfg, clock: world.teleop)
    yield world
    world.stop_producer()


def test_collect_an_episode_on_the_fr3_and_it_validates(sim, cli, tmp_path, stand_ins):
    root = tmp_path / "d"
    config = fr3_config(tmp_path, "[control]", "max_episode_s = 2.0")
    r = cli("collect", root, "--task", "zip", "-n", "1", "--config", config, "--no-panel")
    assert r.code == 0, r.out + r.err
    assert "1/1 committed" in r.out + r.err
    r = cli("validate", root)
    assert r.code == 0, r.out + r.err
    (index,) = Dataset(root).episode_indices()
    ep = Dataset(root).episode(index)
    joints = np.asarray(ep.group["state/joints"][:])
    poses = np.asarray(ep.group["state/ee_pose"][:])
    assert len(joints) >= 15  # 2 s at 30 Hz (a loaded 2-core machine loses ticks; their timing is not tested here)
    np.testing.assert_allclose(joints[0], RobotConfig().home_joints, atol=0.03)  # from the controller
    np.testing.assert_allclose(poses[0, :3], HOME_POS, atol=0.01)
    assert np.ptp(poses[:, 0]) > 0.002  # the scripted controller moved the arm
    # The recorded actions replayed on the FR3 (it homes first), with the tracking error reported.
    r = cli("replay", ep.path, "--on", "robot", "--config", config, "--yes")
    assert r.code == 0, r.out + r.err
    assert "actions sent" in r.out and "tracking error" in r.out and "robot errors" in r.out, r.out
    errors = re.search(r"robot errors\W+(\d+)", r.out)
    assert errors is not None and errors.group(1) == "0", r.out


def test_rollout_of_a_policy_on_the_fr3_goes_through_the_safety_filter_and_records(sim, cli, tmp_path, stand_ins,
                                                                                    tiny_run):
    """`htouch rollout RUN --rig real` on the simulated FR3: it homes, the operator's grip (the stand-in holds it)
    starts the policy, which drives the arm through the rig file's safety limits (small ones here, so that the
    filter has work to do) until the time limit; the rollout is an episode whose state comes from the controller,
    and it validates. h = 8 actions per model call: on a loaded 2-core machine a model call can take 0.5 s, and
    with h = 2 a 3 s rollout then held fewer actions than one training sample needs (validate: episode.short)."""
    step_m, turn_rad = 0.005, 0.05
    config = fr3_config(tmp_path, "[safety]", f"max_translation_m = {step_m}", f"max_rotation_rad = {turn_rad}")
    dest = tmp_path / "rollouts"
    r = cli("rollout", tiny_run, "--rig", "real", "--config", config, "--max-seconds", "3", "--execute", "8",
            "--record", dest, "--yes", "--no-panel")
    assert r.code == 0, r.out + r.err
    assert "policy ours" in r.out and "episode 0 saved" in r.out and "session: 1 committed" in r.out, r.out
    assert "Traceback" not in r.out + r.err
    ds = Dataset(dest)
    (index,) = ds.episode_indices()
    ep = ds.episode(index)
    info = ep.attrs["info"]
    assert info["action_source"] == "policy" and info["policy"]["run"] == str(tiny_run.resolve())
    assert info["rig"] == "real" and info["end"] == "time limit"
    # Every command sent went through the filter with the rig file's limits (the untrained policy asks for more).
    deltas = np.asarray(ep.group["action/delta_ee"][:])
    assert len(deltas) >= 8
    assert np.linalg.norm(deltas[:, :3], axis=1).max() <= step_m + 1e-9
    assert np.linalg.norm(deltas[:, 3:], axis=1).max() <= turn_rad + 1e-9
    assert info["safety_clips"].get("translation", 0) > 0, info["safety_clips"]
    # The state is the controller's: from home (the rollout homes first), and the arm moved.
    joints = np.asarray(ep.group["state/joints"][:])
    poses = np.asarray(ep.group["state/ee_pose"][:])
    # (homing ends within 0.03 rad of the home joints; the Cartesian impedance law then holds the pose, not the joints)
    np.testing.assert_allclose(joints[0], RobotConfig().home_joints, atol=0.05)
    np.testing.assert_allclose(poses[0, :3], HOME_POS, atol=0.01)
    assert np.linalg.norm(np.ptp(poses[:, :3], axis=0)) > 0.002
    # The tracking error is reported, and is what the recorded states and commands say.
    tracking = command_tracking(ep)
    assert f"episode {index}: {tracking.describe()}" in r.out, r.out
    assert 0 <= tracking.mean_mm <= tracking.p95_mm <= tracking.max_mm < 100 and tracking.steps > 8
    r = cli("validate", dest)
    assert r.code == 0, r.out + r.err


def test_the_simulator_killed_mid_episode_is_one_line_and_no_hang(sim, cli, tmp_path, stand_ins):
    """The controller vanishes while recording: the state goes stale, recovery fails at once, and the loop's
    rule for a robot that stays in error ends the episode (saved) with one line."""
    root = tmp_path / "d"
    config = fr3_config(tmp_path, "[control]", "max_episode_s = 30.0")

    def state_rows_flushed() -> bool:  # the writer's progress file (about once a second)
        for progress in root.glob(f"**/{FLUSHED_FILE}"):
            try:
                if json.loads(progress.read_text())["lengths"].get("state/timestamp_ns", 0) > 0:
                    return True
            except (OSError, ValueError, KeyError):
                pass
        return False

    def kill_when_recording():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not state_rows_flushed():
            time.sleep(0.05)
        sim.kill()

    killer = threading.Thread(target=kill_when_recording, daemon=True)
    killer.start()
    start = time.monotonic()
    r = cli("collect", root, "--task", "zip", "-n", "1", "--config", config, "--no-panel")
    killer.join(5)
    assert not sim.alive
    assert time.monotonic() - start < 60
    assert r.code == 2, r.out + r.err
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the robot stayed in error; the episode was saved"), r.err
    assert "robot error:" in r.out and ("no state from the controller" in r.out or "libfranka" in r.out), r.out
    assert "Traceback" not in r.out + r.err
    r = cli("validate", root)
    assert r.code == 0, r.out + r.err


def test_rollout_with_the_controller_gone_is_one_line(sim, cli, tmp_path, stand_ins, tiny_run):
    """franky-sim stopped (the test before killed it; killed here if not): one line naming the controller, exit 2,
    no traceback, no dataset created."""
    sim.kill()
    dest = tmp_path / "rollouts"
    start = time.monotonic()
    r = cli("rollout", tiny_run, "--rig", "real", "--config", fr3_config(tmp_path), "--max-seconds", "3",
            "--record", dest, "--yes", "--no-panel")
    assert r.code == 2, r.out + r.err
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: cannot open the real rig: cannot reach the FR3 controller at 127.0.0.1"), r.err
    assert "Traceback" not in r.out + r.err
    assert time.monotonic() - start < 15 and not dest.exists()
