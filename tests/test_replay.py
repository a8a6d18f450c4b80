"""`htouch replay`: an episode's actions replayed through the safety filter on the simulated rig (it follows
the recorded states), the real-robot path's guards, and `--to video` (decoded back with PyAV: every frame
at its time stamp, and audio energy where the episode had contacts)."""

import io

import av
import numpy as np
import pytest

from htouch.collector.replay import replay
from htouch.collector.safety import SafetyFilter, SafetyLimits
from htouch.dataset.schema import NS
from htouch.dataset.store import Dataset
from htouch.rigs import sim_for_episode
from tests.conftest import TINY_RIG, tiny_dataset


@pytest.fixture(scope="module")
def sim_episode(tmp_path_factory):
    """One 3 s episode recorded on the simulated rig (tiny camera) by `htouch collect`."""
    from htouch.cli import main

    root = tmp_path_factory.mktemp("sim") / "d"
    config = root.parent / "rig.toml"
    config.write_text('[camera]\nwidth = 64\nheight = 48\n[control]\nmax_episode_s = 3\n')
    with pytest.raises(SystemExit) as done:
        main(["collect", str(root), "--task", "zip", "-n", "1", "-c", str(config), "--no-panel"])
    assert done.value.code in (0, None)
    return Dataset(root)


def test_replay_on_sim_follows_the_recorded_states(sim_episode):
    ep = sim_episode.episode(0)
    sim = sim_for_episode(ep, "zip")
    try:
        report = replay(ep, sim.robot, SafetyFilter(), speed=0)
    finally:
        sim.close()
    assert report.sent == report.actions == len(ep.action_times)
    assert report.clipped == 0 and report.robot_errors == 0  # recorded commands were already safe
    # The same scene and the same commands: the hand retraces the demonstration.
    assert report.error_mm_max < 5.0


def test_replay_uses_the_safety_filter(sim_episode):
    ep = sim_episode.episode(0)
    sim = sim_for_episode(ep, "zip")
    tight = SafetyLimits(max_translation_m=0.0005, max_rotation_rad=0.001)
    try:
        report = replay(ep, sim.robot, SafetyFilter(tight), speed=0)
    finally:
        sim.close()
    moving = np.linalg.norm(ep.read("action/delta_ee")[:, :3], axis=1) > 0.0005
    assert report.clip_reasons.get("translation", 0) == moving.sum() > 0


def test_replay_paces_at_the_recorded_speed(sim_episode):
    ep = sim_episode.episode(0)
    sim = sim_for_episode(ep, "zip")
    try:
        report = replay(ep, sim.robot, SafetyFilter(), speed=4.0)
    finally:
        sim.close()
    assert report.recorded_s / 4 * 0.95 <= report.wall_s < report.recorded_s  # generous: a shared CPU


def test_replay_cli_on_sim(cli, sim_episode):
    r = cli("replay", "0", "--dataset", sim_episode.root, "--speed", "0")
    assert r.code == 0, r.err
    n = len(sim_episode.episode(0).action_times)
    assert f"{n} of {n}" in r.out and "tracking error" in r.out


def test_replay_without_an_episode_takes_the_newest(cli, tiny_ds, tmp_path):
    r = cli("replay", "-d", tiny_ds.root, "--to", "video", tmp_path / "newest.mp4")
    assert r.code == 0, r.err
    assert f"the newest episode: {tiny_ds.episode(tiny_ds.episode_indices()[-1]).name}" in r.out
    empty = Dataset.open_or_create(tmp_path / "empty", "zip", TINY_RIG)
    r = cli("replay", "-d", empty.root)
    assert r.code == 2 and "has no episodes to replay" in r.err and r.err.strip().count("\n") == 0


def test_replay_on_robot_guards(cli, tiny_ds, tmp_path, monkeypatch):
    r = cli("replay", "0", "-d", tiny_ds.root, "--on", "robot")
    assert r.code == 2 and "--config" in r.err
    config = tmp_path / "rig.toml"
    config.write_text('[rig]\nkind = "real"\n[robot]\nhost = "127.0.0.1"\n')
    r = cli("replay", "0", "-d", tiny_ds.root, "--on", "robot", "-c", config, "--speed", "0")
    assert r.code == 2 and "(0, 1]" in r.err
    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
    r = cli("replay", "0", "-d", tiny_ds.root, "--on", "robot", "-c", config)
    assert r.code == 1 and "nothing sent" in r.out
    pytest.importorskip("panda_py")
    r = cli("replay", "0", "-d", tiny_ds.root, "--on", "robot", "-c", config, "--yes")
    assert r.code == 2 and "cannot use the robot" in r.err and "127.0.0.1" in r.err
    sim_config = tmp_path / "sim.toml"
    sim_config.write_text('[rig]\nkind = "sim"\n')
    r = cli("replay", "0", "-d", tiny_ds.root, "--on", "robot", "-c", sim_config, "--yes")
    assert r.code == 2 and "needs a real rig file" in r.err


def test_replay_bad_options(cli, tiny_ds, tmp_path):
    assert "--on must be sim or robot" in cli("replay", "0", "-d", tiny_ds.root, "--on", "moon").err
    assert "video FILE.mp4" in cli("replay", "0", "-d", tiny_ds.root, "--to", "gif", tmp_path / "a.gif").err
    assert "name it FILE.mp4" in cli("replay", "0", "-d", tiny_ds.root, "--to", "video", tmp_path / "a.avi").err
    assert "not found" in cli("replay", "7", "-d", tiny_ds.root).err


def _decode(path):
    with av.open(str(path)) as c:
        frames = [(f.time, f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
    with av.open(str(path)) as c:
        chunks = [(f.time, f.to_ndarray()[0]) for f in c.decode(audio=0)]
        rate = c.streams.audio[0].rate
    t0 = chunks[0][0]
    audio = np.concatenate([a for _, a in chunks])
    return frames, audio, rate, t0


def test_video_has_every_frame_at_its_time_and_audio_where_the_contacts_are(cli, tmp_path):
    ds = tiny_dataset(tmp_path / "ds", n=1, seconds=6.0)
    ep = ds.episode(0)
    out = tmp_path / "ep.mp4"
    r = cli("replay", "0", "-d", ds.root, "--to", "video", out)
    assert r.code == 0, r.err
    assert "wrote" in r.out and "aac mono" in r.out
    frames, audio, rate, a0 = _decode(out)
    times = ep.camera_times
    # Every stored frame, each at its own time stamp (the synthetic episode drops 3 frames: gaps stay gaps).
    assert len(frames) == len(times)
    shown = np.array([t for t, _ in frames])
    np.testing.assert_allclose(shown, (times - times[0]) / NS, atol=0.0015)
    assert np.abs(frames[100][1].astype(int) - ep.array("camera/rgb")[100].astype(int)).mean() < 12
    assert rate == int(ep.streams.audio.rate_hz)
    assert len(audio) / rate == pytest.approx((times[-1] - times[0]) / NS, abs=0.1)

    def rms(start_s, end_s):
        lo, hi = int((start_s - a0) * rate), int((end_s - a0) * rate)
        return float(np.sqrt(np.mean(audio[lo:hi] ** 2)))

    contacts = [((e["t_ns"] - times[0]) / NS, e["detail"]["end_s"]) for e in ep.events() if e["kind"] == "contact"]
    assert len(contacts) == 2
    onset, length = contacts[0]
    quiet = rms(0.3, min(onset - 0.2, 1.3))
    assert rms(onset + 0.1, onset + length - 0.1) > 5 * quiet  # the sliding contact is loud
    tap, _ = contacts[1]
    assert rms(tap, tap + 0.06) > 5 * quiet  # the tap's impact too
    assert np.max(np.abs(audio)) == pytest.approx(10 ** (-1 / 20), rel=0.15)  # raised to a -1 dBFS peak


def test_video_raw_audio_keeps_the_level(cli, tmp_path):
    ds = tiny_dataset(tmp_path / "ds", n=1, seconds=4.0)
    out = tmp_path / "raw.mp4"
    assert cli("replay", "0", "-d", ds.root, "--to", "video", out, "--raw-audio").code == 0
    _, audio, _, _ = _decode(out)
    ep = ds.episode(0)
    pcm = ep.read("audio/pcm").astype(np.float32)
    expected_peak = np.max(np.abs((pcm.mean(axis=1) - ep.streams.audio.center) / ep.streams.audio.scale))
    assert np.max(np.abs(audio)) == pytest.approx(expected_peak, rel=0.2)


def test_command_tracking_measures_the_distance_to_the_commanded_path(tmp_path):
    """States exactly on the commanded path (start plus every step sent before them) track with 0 mm; one
    state 2 mm off is the maximum and moves the mean by 2 mm / the number of states."""
    from htouch.collector.replay import command_tracking

    ds = Dataset.open_or_create(tmp_path / "d", "zip", TINY_RIG)
    writer = ds.new_episode(blocking=True)
    step = np.array([0.001, 0.0, -0.0005, 0.0, 0.0, 0.0])
    position = np.array([0.4, 0.0, 0.3])
    joints = np.zeros(TINY_RIG.state.n_joints)
    for k in range(20):
        off = np.array([0.002, 0.0, 0.0]) if k == 10 else np.zeros(3)
        writer.state(k * NS // 30, np.r_[position + off, [0.0, 0.0, 0.0, 1.0]], joints, 0.08)
        writer.action(k * NS // 30 + 1000, step, 1.0)
        position = position + step[:3]
    writer.commit(True)
    tracking = command_tracking(ds.episode(0, check=False))
    assert tracking.steps == 19  # the states after the first command
    assert tracking.max_mm == pytest.approx(2.0) and tracking.mean_mm == pytest.approx(2.0 / 19)
