"""The simulated rig behind the device interfaces: streams, time stamps, audio that follows the physics,
contact events, determinism, queues, reflexes, bad input and the two offscreen GL back ends."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
from scipy.signal import butter, sosfilt

from htouch.collector.config import RigConfig
from htouch.collector.devices import Action, Camera, DeviceError, Microphones, Robot
from htouch.dataset.schema import NS
from htouch.sim.operator import ScriptedOperator, drive
from htouch.sim.rig import BASE_NS, SimRig

HP_1KHZ = butter(4, 1000, "hp", fs=32000, output="sos")


def tiny_config(**robot) -> RigConfig:
    config = RigConfig()
    config.camera.width, config.camera.height = 64, 48
    for key, value in robot.items():
        setattr(config.robot, key, value)
    return config


def drain(device) -> list:
    items = []
    while (item := device.read(0)) is not None:
        items.append(item)
    return items


def hold(rig: SimRig, ticks: int, delta=(0, 0, 0, 0, 0, 0), gripper: float | None = None) -> None:
    g = rig.task.home_opening if gripper is None else gripper
    for _ in range(ticks):
        rig.robot.apply(Action(np.asarray(delta, float), g))


def test_devices_implement_the_protocols():
    with SimRig("zip", config=tiny_config()) as rig:
        assert isinstance(rig.camera, Camera) and isinstance(rig.microphones, Microphones)
        assert isinstance(rig.robot, Robot)
        spec = rig.stream_specs()
        assert (spec.camera.width, spec.camera.height) == (64, 48)
        assert spec.state.n_joints == rig.robot.n_joints == 2
        assert spec.audio.channels == 4 and spec.audio.rate_hz == 32000
        state = rig.robot.state()
        assert state.ee_pose.shape == (7,) and abs(np.linalg.norm(state.ee_pose[3:]) - 1) < 1e-9
        assert np.allclose(state.ee_pose[:3], rig.task.home_position, atol=0.003)
        assert 0.07 < state.gripper_width <= 0.08 and state.error is None


def test_streams_are_stamped_on_simulated_time():
    with SimRig("zip", config=tiny_config()) as rig:
        rig.camera.start()
        rig.microphones.start()
        t0 = rig.clock.now_ns()
        states = []
        for _ in range(60):  # two seconds
            rig.robot.apply(Action.hold(1.0))
            states.append(rig.robot.state().timestamp_ns)
        assert rig.clock.now_ns() - t0 == pytest.approx(2 * NS, abs=rig.dt_ns)
        frames, blocks = drain(rig.camera), drain(rig.microphones)
        times = np.array([f.timestamp_ns for f in frames])
        assert len(frames) in (60, 61)
        assert np.diff(times).mean() == pytest.approx(NS / 30, rel=0.01)
        assert np.all(np.diff(times) <= NS / 30 + rig.dt_ns)
        numbers = [f.frame_number for f in frames]
        assert numbers == list(range(numbers[0], numbers[0] + len(frames)))
        assert frames[0].rgb.shape == (48, 64, 3) and frames[0].rgb.dtype == np.uint8
        # Audio: 10 ms blocks, no gap, each stamped at its first sample.
        assert all(b.pcm.shape == (320, 4) and b.pcm.dtype == np.int16 and not b.overflow for b in blocks)
        starts = np.array([b.timestamp_ns for b in blocks])
        assert np.all(np.diff(starts) == 10_000_000)
        assert len(blocks) * 320 == pytest.approx(2 * 32000, abs=320)
        assert np.all(np.diff(states) > 0)


def test_nothing_is_produced_while_stopped_and_unread_queues_drop_the_oldest():
    with SimRig("zip", config=tiny_config()) as rig:
        hold(rig, 10)
        assert rig.camera.read(0) is None and rig.microphones.read(0) is None
        rig.camera.start()
        rig.microphones.start()
        hold(rig, 330)  # eleven seconds nobody reads: more than the queues hold (3 s of frames, 10 s of audio)
        first = rig.camera.read(0)
        assert first.frame_number > 1  # the oldest frames were dropped: the frame numbers jump
        block = rig.microphones.read(0)
        assert block.overflow  # the device "lost input" before this block
        assert not any(b.overflow for b in drain(rig.microphones))
        rig.camera.stop()
        hold(rig, 5)
        assert rig.camera.read(0) is None


def record_episode(task: str, seed: int = 0, ticks: int | None = None, camera: bool = False):
    """Drive a scripted episode; return the outcome, the audio, the frames, the states and the events."""
    rig = SimRig(task, seed=seed, config=tiny_config())
    op = ScriptedOperator(rig, seed=seed)
    blocks, frames, states, events = [], [], [], []
    log: dict[int, float] = {}
    step = rig.world.step

    def logged_step():  # ground truth per physics step: friction power and impulses heard
        heard = step()
        log[rig.world.step_index] = sum(h.normal_force * h.slip_speed + 100 * h.impulse for h in heard)
        return heard

    rig.world.step = logged_step
    rig.microphones.start()
    if camera:
        rig.camera.start()
    original_apply = rig.robot.apply

    def apply(action):
        original_apply(action)
        blocks.extend(drain(rig.microphones))
        frames.extend(drain(rig.camera))
        states.append(rig.robot.state())
        events.extend(rig.pop_events())
        if ticks is not None and len(states) >= ticks:
            raise StopIteration

    rig.robot.apply = apply
    try:
        outcome = drive(rig, op, max_seconds=60)
    except StopIteration:
        outcome = None
    rig.close()
    return outcome, blocks, frames, states, events, log, rig


def test_contact_is_loud_and_free_motion_quiet():
    """Audio energy above 1 kHz in 10 ms windows with contact (ground truth from the physics) against
    windows of free motion: the measured ratio of medians is asserted."""
    outcome, blocks, _, _, events, log, rig = record_episode("zip")
    assert outcome.success
    pcm = np.concatenate([b.pcm for b in blocks]).astype(float).mean(axis=1)
    high = sosfilt(HP_1KHZ, pcm - pcm.mean())
    n = len(high) // 320
    rms = np.sqrt((high[: n * 320].reshape(n, 320) ** 2).mean(axis=1))
    contact, free = [], []
    for i in range(n):
        first_step = (blocks[0].timestamp_ns - BASE_NS) // rig.dt_ns + i * 5
        power = [log.get(s) for s in range(first_step, first_step + 5)]
        if any(p is None for p in power):
            continue  # before or after the logged steps
        (contact if sum(power) > 1e-3 else free if sum(power) == 0 else []).append(rms[i])
    assert len(contact) > 100 and len(free) > 100
    ratio = np.median(contact) / np.median(free)
    assert ratio > 20, ratio  # measured about 130 (the slider scraping along its metal track)
    assert np.median(free) < 15  # free motion: the sensor's noise floor above 1 kHz (the hum is below)
    kinds = [e[1] for e in events]
    assert set(kinds) == {"contact"}
    touched = [e[2]["with"] for e in events]
    assert touched[0] == "slider" and "end_stop" in touched


def test_no_sound_without_a_cause():
    with SimRig("flip", config=tiny_config()) as rig:
        rig.microphones.start()
        hold(rig, 30)  # still, in the air
        still = np.concatenate([b.pcm for b in drain(rig.microphones)]).astype(float)
        hold(rig, 20, delta=(0, 0.01, 0, 0, 0, 0))  # moving in the air: motor hum only
        moving = np.concatenate([b.pcm for b in drain(rig.microphones)]).astype(float)
        assert rig.pop_events() == []
    noise = still.std(axis=0)
    assert np.all(noise < 20)  # the ambient floor
    assert np.all(moving.std(axis=0) > 2 * noise)  # the hum is heard ...
    high = sosfilt(HP_1KHZ, moving - moving.mean(axis=0), axis=0).std(axis=0)
    assert np.all(high < 1.3 * noise)  # ... but stays below 1 kHz


def test_contact_events_mark_the_touch():
    with SimRig("flip", config=tiny_config()) as rig:
        rig.microphones.start()
        hold(rig, 5)
        assert rig.pop_events() == []
        touched_at = None
        for _ in range(90):  # lower the spatula onto the table
            rig.robot.apply(Action(np.array([-0.004, 0, -0.006, 0, 0, 0]), 0.0))
            if touched_at is None and rig.world.heard_within("table_top", 17):
                touched_at = rig.clock.now_ns()
        events = rig.pop_events()
    assert touched_at is not None
    assert len(events) == 1, events
    t, kind, detail = events[0]
    assert kind == "contact" and detail["with"] == "table_top" and detail["material"] == "wood"
    assert 0 < touched_at - t <= NS / 30 + 2 * rig.dt_ns
    assert 0.005 < detail["impulse"] < 0.5  # about the hand's 0.9 kg at a few cm/s


def test_same_seed_same_episode_and_a_new_seed_differs():
    a = record_episode("flip", seed=5, ticks=75, camera=True)
    b = record_episode("flip", seed=5, ticks=75, camera=True)
    c = record_episode("flip", seed=6, ticks=75, camera=True)
    for x, y in ((a, b),):
        _, blocks_x, frames_x, states_x, events_x, _, _ = x
        _, blocks_y, frames_y, states_y, events_y, _, _ = y
        assert len(frames_x) == len(frames_y) > 60
        assert all(f.timestamp_ns == g.timestamp_ns and np.array_equal(f.rgb, g.rgb)
                   for f, g in zip(frames_x, frames_y, strict=True))
        assert np.array_equal(np.concatenate([q.pcm for q in blocks_x]), np.concatenate([q.pcm for q in blocks_y]))
        assert all(np.array_equal(s.ee_pose, t.ee_pose) and s.timestamp_ns == t.timestamp_ns
                   for s, t in zip(states_x, states_y, strict=True))
        assert events_x == events_y
    assert not np.array_equal(a[3][-1].ee_pose, c[3][-1].ee_pose)
    assert not np.array_equal(a[2][-1].rgb, c[2][-1].rgb)


def test_home_draws_the_next_episode_deterministically():
    layouts = []
    for _ in range(2):
        with SimRig("scoop", seed=2, config=tiny_config()) as rig:
            assert rig.episode_index == 0
            first = dict(rig.task.layout)
            rig.robot.home()
            rig.robot.home()
            assert rig.episode_index == 2
            layouts.append((first, dict(rig.task.layout)))
            t = rig.clock.now_ns()
            rig.robot.home()
            assert rig.clock.now_ns() > t  # homing takes (simulated) time; the clock never goes back
    assert layouts[0] == layouts[1] and layouts[0][0] != layouts[0][1]


def test_reflex_stops_the_robot_until_recover():
    # A stiff controller pushing the fingertips into the table exceeds the reflex threshold (60 N).
    with SimRig("zip", config=tiny_config(translational_stiffness=8000.0)) as rig:
        for _ in range(60):
            rig.robot.apply(Action(np.array([0, 0, -0.02, 0, 0, 0]), 1.0))
            if rig.robot.state().error:
                break
        state = rig.robot.state()
        assert state.error and "reflex" in state.error
        z = state.ee_pose[2]
        hold(rig, 10, delta=(0, 0, 0.02, 0, 0, 0))  # commands are ignored while in error
        assert abs(rig.robot.state().ee_pose[2] - z) < 0.005
        rig.robot.recover()
        assert rig.robot.state().error is None
        hold(rig, 10, delta=(0, 0, 0.02, 0, 0, 0))
        assert rig.robot.state().ee_pose[2] > z + 0.05


def test_bad_input_is_refused_with_a_clear_error():
    with pytest.raises(DeviceError, match="unknown simulated task 'knit'"):
        SimRig("knit")
    with pytest.raises(DeviceError, match="unknown variation 'night'"):
        SimRig("zip", variation="night")
    config = tiny_config()
    config.microphones.channels = 6
    with pytest.raises(DeviceError, match="4 contact microphones"):
        SimRig("zip", config=config)
    rig = SimRig("zip", config=tiny_config())
    with pytest.raises(DeviceError, match="non-finite"):
        rig.robot.apply(Action(np.array([np.nan, 0, 0, 0, 0, 0]), 1.0))
    rig.close()
    with pytest.raises(DeviceError, match="closed"):
        rig.robot.apply(Action.hold(1.0))


def test_realtime_clock_paces_to_the_wall_clock():
    with SimRig("zip", config=tiny_config(), realtime=True) as rig:
        rig.clock.sleep_until(rig.clock.now_ns())  # anchors
        start = time.monotonic()
        rig.robot.apply(Action.hold(1.0))
        rig.robot.apply(Action.hold(1.0))
        rig.robot.apply(Action.hold(1.0))
        rig.clock.sleep_until(rig.clock.now_ns())
        assert time.monotonic() - start >= 0.09  # three control periods of simulated time took >= 0.1 s
    with SimRig("zip", config=tiny_config()) as rig:
        start = time.monotonic()
        rig.clock.sleep_until(rig.clock.now_ns() + 10 * NS)
        assert time.monotonic() - start < 1.0  # simulated time does not wait


RENDER_SCRIPT = """
import sys
import numpy as np
from htouch.collector.config import RigConfig
from htouch.collector.devices import Action
from htouch.sim.rig import SimRig
config = RigConfig(); config.camera.width, config.camera.height = 64, 48
rig = SimRig("scoop", seed=1, config=config)
rig.camera.start()
rig.robot.apply(Action.hold(0.0))
frame = rig.camera.read(1.0)
np.save(sys.argv[1], frame.rgb)
rig.close()
"""


@pytest.mark.parametrize("backend", ["egl", "osmesa"])
def test_offscreen_back_ends_render_the_same_scene(backend, tmp_path):
    out = tmp_path / f"{backend}.npy"
    env = {**os.environ, "MUJOCO_GL": backend}
    env.pop("PYOPENGL_PLATFORM", None)
    subprocess.run([sys.executable, "-c", RENDER_SCRIPT, str(out)], env=env, check=True, timeout=120,
                   capture_output=True)
    image = np.load(out)
    assert image.shape == (48, 64, 3) and image.std() > 10  # a scene, not a blank buffer
    reference = tmp_path / "reference.npy"
    if not reference.exists():
        with SimRig("scoop", seed=1, config=tiny_config()) as rig:
            rig.camera.start()
            rig.robot.apply(Action.hold(0.0))
            np.save(reference, rig.camera.read(1.0).rgb)
    assert np.abs(image.astype(int) - np.load(reference).astype(int)).mean() < 3
