"""`htouch collect` end to end on the simulated rig (then `htouch validate` is clean), resuming, Ctrl-C from a
real signal, `--rig real` failing fast with no robot, and `htouch rig check`."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from htouch.dataset.store import Dataset

REPO = Path(__file__).resolve().parents[1]
# A tiny camera and short episodes (the time limit ends them, unlabelled) keep the simulated rig fast.
TINY_SIM = '[rig]\nkind = "sim"\n[camera]\nwidth = 64\nheight = 48\n[control]\nmax_episode_s = {seconds}\n'


@pytest.fixture
def tiny_sim(tmp_path):
    def make(seconds=3.0):
        path = tmp_path / f"sim-{seconds}.toml"
        path.write_text(TINY_SIM.format(seconds=seconds))
        return path
    return make


def test_collect_sim_then_validate_and_resume(cli, tmp_path, tiny_sim):
    root = tmp_path / "zip-demos"
    r = cli("collect", root, "--task", "zip", "--episodes", "2", "--config", tiny_sim(3.0), "--no-panel")
    assert r.code == 0, r.err
    assert "simulated rig" in r.out and "scripted operator" in r.out
    ds = Dataset(root)
    assert ds.episode_indices() == [0, 1] and ds.streams.camera.width == 64
    ep = ds.episode(1)
    # Each episode names the simulated scene it was recorded in (for replay).
    assert ep.attrs["info"]["rig"] == "sim"
    assert ep.attrs["info"]["sim_episode"] == ds.episode(0).attrs["info"]["sim_episode"] + 1
    assert len(ep.camera_times) == pytest.approx(90, abs=2) and len(ep.action_times) == pytest.approx(90, abs=2)
    assert "contact" in {e["kind"] for e in ep.events()} or ep.attrs["info"]["task_success"] is not None
    v = cli("validate", root)
    assert v.code == 0, v.out + v.err
    r = cli("collect", root, "--task", "zip", "--episodes", "1", "--config", tiny_sim(3.0), "--no-panel")
    assert r.code == 0 and "resuming after 2 episodes" in r.out
    ds = Dataset(root)
    assert ds.episode_indices() == [0, 1, 2]
    # The resumed session goes on with the next simulated scene, not the first one again.
    scenes = [ds.episode(i).attrs["info"]["sim_episode"] for i in (0, 1, 2)]
    assert scenes == [scenes[0], scenes[0] + 1, scenes[0] + 2]


def test_same_seed_records_the_same_episode(cli, tmp_path, tiny_sim):
    """Every array, byte for byte, whatever the reader threads' timing (a frame stamped exactly at the stop
    tick used to be kept or not depending on which thread came first)."""
    import numpy as np

    roots = [tmp_path / "a", tmp_path / "b"]
    for root in roots:
        r = cli("collect", root, "--task", "zip", "--episodes", "1", "--seed", "3", "--config", tiny_sim(2.0),
                "--no-panel")
        assert r.code == 0, r.err
    a, b = (Dataset(root).episode(0) for root in roots)
    for path in ("camera/rgb", "camera/timestamp_ns", "audio/pcm", "audio/block_timestamp_ns", "state/ee_pose",
                 "action/delta_ee", "teleop/controller_pose", "events/kind", "events/timestamp_ns"):
        assert np.array_equal(a.array(path)[:], b.array(path)[:]), path


def test_collect_without_config_says_it_uses_the_sim(cli, tmp_path):
    # The wrong task is caught before anything is recorded; the message names the known tasks.
    r = cli("collect", tmp_path / "d", "--task", "origami")
    assert r.code == 2 and "no hardware configured: using the simulated rig and the scripted operator" in r.out
    assert "origami" in r.err and "zip" in r.err and "Traceback" not in r.err
    assert not (tmp_path / "d").exists()


def test_collect_into_a_dataset_of_another_task_is_refused(cli, tmp_path, tiny_sim):
    root = tmp_path / "d"
    assert cli("collect", root, "--task", "zip", "-n", "1", "-c", tiny_sim(2.5), "--no-panel").code == 0
    r = cli("collect", root, "--task", "flip", "-n", "1", "-c", tiny_sim(2.5), "--no-panel")
    assert r.code == 2 and "holds task 'zip'" in r.err


def test_real_rig_needs_a_config(cli, tmp_path):
    r = cli("collect", tmp_path / "d", "--task", "zip", "--rig", "real")
    assert r.code == 2 and "--config" in r.err and "rigs/example-real.toml" in r.err
    assert len(r.err.strip().splitlines()) == 1


def test_real_rig_without_a_robot_fails_fast(cli, tmp_path):
    pytest.importorskip("panda_py")
    config = tmp_path / "rig.toml"
    config.write_text('[rig]\nkind = "real"\n[robot]\nhost = "127.0.0.1"\n')  # nothing listens there
    start = time.monotonic()
    r = cli("collect", tmp_path / "d", "--task", "zip", "--config", config)
    assert r.code == 2 and "cannot open the real rig" in r.err and "127.0.0.1" in r.err
    assert time.monotonic() - start < 10 and "Traceback" not in r.err
    assert not (tmp_path / "d").exists()


def test_bad_options(cli, tmp_path, tiny_sim):
    r = cli("collect", tmp_path / "d", "--task", "zip", "--rig", "moon")
    assert r.code == 2 and "--rig must be sim or real" in r.err
    r = cli("collect", tmp_path / "d", "--task", "zip", "--operator", "quest")
    assert r.code == 2 and "operator 'quest' is not available on the sim rig" in r.err
    r = cli("collect", tmp_path / "d", "--task", "zip", "--width", "8")
    assert r.code == 2 and "--width" in r.err
    r = cli("collect", tmp_path / "d", "--task", "zip", "--config", tmp_path / "missing.toml")
    assert r.code == 2 and "does not exist" in r.err


def test_ctrl_c_keeps_committed_episodes_and_drops_the_unfinished_one(tmp_path, tiny_sim):
    root = tmp_path / "d"
    # Paced to the wall clock, so episode 1 is still recording when the signal arrives (the fast sim
    # could finish a whole episode between the line and the signal on a loaded machine).
    cmd = [sys.executable, "-m", "htouch", "collect", str(root), "--task", "zip", "-n", "5",
           "-c", str(tiny_sim(4.0)), "--no-panel", "--realtime"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "recording episode 1" in line:
                time.sleep(0.3)
                proc.send_signal(signal.SIGINT)
                break
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, "".join(lines) + out + err
    assert "interrupted: episode 1 discarded" in err and "1 episode(s) committed" in err
    ds = Dataset(root)
    assert ds.episode_indices() == [0] and ds.incoming_paths() == []
    assert ds.reserve_index() == 2


def test_rig_check_of_the_example_as_shipped_is_one_line_and_dials_nothing():
    """The example's robot host is a placeholder: `rig check` refuses it (exit 2) before probing any device.
    The network guard (tests/netguard.py) would fail this test if the child reached for an address."""
    r = subprocess.run([sys.executable, "-m", "htouch", "rig", "check", "--config", "rigs/example-real.toml"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == "", (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: rigs/example-real.toml [robot]: host is still the example's placeholder")
    assert "set it to your Franka controller's IP address or host name" in lines[0]


@pytest.mark.parametrize("command", [("rig", "check"), ("collect", "DIR", "--task", "zip"),
                                     ("collect", "DIR", "--task", "zip", "--rig", "real")])
def test_a_real_rig_without_a_robot_host_is_one_line(cli, tmp_path, command):
    config = tmp_path / "rig.toml"
    config.write_text('[rig]\nkind = "sim"\n' if "--rig" in command else '[rig]\nkind = "real"\n')
    args = [str(tmp_path / "d") if a == "DIR" else a for a in command]
    r = cli(*args, "--config", config)
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1, r.err
    assert f"{config} [robot] host: not set" in r.err
    assert not (tmp_path / "d").exists()


def test_errors_quoting_a_table_keep_the_brackets(cli, tmp_path):
    """"[camera]" in an error is text, not rich markup that would swallow it."""
    config = tmp_path / "rig.toml"
    config.write_text("[camera]\nfps = 1e30\n")
    r = cli("rig", "check", "--config", config)
    assert r.code == 2
    assert f"error: {config} [camera] fps: expected an integer in 1..1000, got 1e+30" in r.err
    config.write_text("[control]\nrate_hz = inf\n")
    r = cli("collect", tmp_path / "d", "--task", "zip", "--config", config)
    assert r.code == 2 and f"{config} [control] rate_hz: inf is not a finite number (allowed: 1..1000)" in r.err


def test_rig_check_sim_and_real(cli, tmp_path):
    r = cli("rig", "check")
    assert r.code == 0 and "simulator" in r.out and "OK" in r.out
    config = tmp_path / "rig.toml"
    # Nothing of this rig is here: a camera serial nobody has, a device name no card has, an adb port
    # nobody listens on, a robot host with nothing listening.
    config.write_text('[rig]\nkind = "real"\n[camera]\nserial = "000000000000"\n'
                      '[microphones]\ndevice = "no-such-card"\n[teleop]\nadb_port = 1\n[robot]\nhost = "127.0.0.1"\n')
    r = cli("rig", "check", "--config", config)
    assert r.code == 1
    for device in ("camera", "microphones", "teleop", "robot"):
        assert device in r.out
    assert "MISSING" in r.out and "missing: camera, microphones, teleop, robot" in r.err
    assert "[microphones]" not in r.out or "no-such-card" in r.out  # device text shown as text, not markup
    r = cli("rig", "check", "--config", config, "--operator", "keyboard")
    assert "keyboard" in r.out and "missing: camera, microphones, robot" in r.err


def test_keyboard_operator_on_the_sim(cli, tmp_path, tiny_sim, monkeypatch):
    """Keys from a pipe, in real time: space holds the clutch (which starts the recording), then w moves the
    gripper forward."""
    import threading

    read_fd, write_fd = os.pipe()
    monkeypatch.setattr("sys.stdin", os.fdopen(read_fd, "r"))

    def type_keys():
        os.write(write_fd, b" ")
        time.sleep(1.0)
        for _ in range(12):
            os.write(write_fd, b"w")
            time.sleep(0.03)

    typist = threading.Thread(target=type_keys)
    typist.start()
    try:
        r = cli("collect", tmp_path / "d", "--task", "zip", "-n", "1", "-c", tiny_sim(2.5), "--operator",
                "keyboard", "--no-panel")
    finally:
        typist.join()
        os.close(write_fd)
    assert r.code == 0, r.err
    assert "keyboard operator" in r.out and "hold the grip to start recording" in r.out
    ep = Dataset(tmp_path / "d").episode(0)
    assert ep.attrs["info"]["operator"] == "keyboard"
    moved = ep.read("action/delta_ee")[:, :3].sum(axis=0)
    assert moved[0] > 0.03 and abs(moved[1]) < 0.01  # 12 steps of 5 mm forward (+x), nothing sideways
