"""The recording loop with faults injected: the episode records each fault as an event, the robot holds still
when it must, the session goes on, indices are never reused, Ctrl-C keeps what was committed and nothing
half-done, and a slow writer never slows the control loop."""

import gc
import time

import numpy as np
import pytest

from htouch.collector.config import ControlConfig
from htouch.collector.loop import Recorder
from htouch.dataset.schema import INCOMING
from htouch.dataset.store import Dataset
from htouch.dataset.validate import validate_dataset
from htouch.dataset.writer import EpisodeWriter
from htouch.errors import HtouchError, WriterError
from tests.loop_devices import NS, TEST_STREAMS, Plan, PlannedWorld


def record(root, plans, episodes, *, stepped=True, control=None, emitters=(), **kw):
    world = PlannedWorld(plans, stepped=stepped)
    rig = world.rig()
    rig.event_emitters = list(emitters)
    ds = Dataset.open_or_create(root, "zip", TEST_STREAMS)
    rec = Recorder(rig, ds, control or ControlConfig(), **kw)
    try:
        result = rec.run(episodes)
    finally:
        rig.close()
    return world, ds, rec, result


def kinds(ep):
    return [e["kind"] for e in ep.events()]


def events_of(ep, kind):
    return [e for e in ep.events() if e["kind"] == kind]


def errors(ds):
    return [f for f in validate_dataset(ds).findings if f.severity == "error"]


def test_lifecycle_labels_discard_and_resume(tmp_path):
    root = tmp_path / "ds"
    world, ds, rec, result = record(root, [Plan(end_button="A"), Plan(end_button="RJ"), Plan(end_button="B")], 2)
    assert result.committed == [0, 2] and result.discarded == [1] and not result.interrupted
    assert ds.episode_indices() == [0, 2] and ds.incoming_paths() == []
    assert world.robot.homes == 3  # home before every attempt
    ok, failed = ds.episode(0), ds.episode(2)
    assert (ok.success, failed.success) == (True, False)
    assert kinds(ok) == ["start", "success", "stop"] and kinds(failed) == ["start", "failure", "stop"]
    assert ok.attrs["info"]["end"] == "success" and ok.attrs["info"]["operator"] == "scripted"
    # About 3 s at 30 Hz of every stream, all on the one clock.
    for times in (ok.camera_times, ok.action_times, ok.state_times):
        assert 85 <= len(times) <= 95
    assert ok.read("audio/pcm").shape[0] == pytest.approx(3.0 * 16000, rel=0.05)
    start, stop = events_of(ok, "start")[0]["t_ns"], events_of(ok, "stop")[0]["t_ns"]
    assert start <= ok.camera_times[0] and ok.camera_times[-1] < stop
    assert start <= ok.audio_block_times[0] and ok.audio_block_times[-1] < stop
    teleop_times = ok.read("teleop/timestamp_ns")
    assert len(np.unique(teleop_times)) == len(teleop_times)  # a teleop row only for a new reading
    assert errors(ds) == []

    # Resume: a new session continues after the highest index ever handed out (the discarded 1 stays unused).
    _, ds, _, result = record(root, [Plan(end_button="A", end_s=2.5)], 1)
    assert result.committed == [3] and ds.episode_indices() == [0, 2, 3]


def test_faults_are_events_and_the_session_goes_on(tmp_path):
    class EventEmitter:
        """Ground-truth contacts (like the simulated rig) and a teleop device reporting its own loss."""

        def __init__(self):
            self.plan = [(1.2, "contact", {"force_n": 3.5}), (2.2, "teleop_lost", {"reason": "connection dropped"})]

        def pop_events(self):
            w = world_ref[0]
            due = [e for e in self.plan if w.since(w.clock.now_ns()) >= e[0]]
            self.plan = [e for e in self.plan if e not in due]
            return [(w.base_ns + int(t * NS), kind, detail) for t, kind, detail in due]

    world_ref = []
    faults = Plan(end_s=4.0, end_button="B", drop_frames={1.0: 2}, camera_stall=(1.5, 2.0),
                  audio_overflow=(0.5,), teleop_silence=(2.2, 2.8), robot_error=(3.2, 3.4), apply_raises=(0.8,))
    world = PlannedWorld([faults])
    world_ref.append(world)
    rig = world.rig()
    rig.event_emitters = [EventEmitter()]
    ds = Dataset.create(tmp_path / "ds", "zip", TEST_STREAMS)
    result = Recorder(rig, ds, ControlConfig()).run(1)
    assert result.committed == [0]
    ep = ds.episode(0)
    assert ep.success is False
    t0 = world.base_ns

    drop = events_of(ep, "frame_drop")
    assert len(drop) == 1 and drop[0]["detail"]["count"] == 2
    assert ep.attrs["info"]["frames_dropped"] == 2
    stall = events_of(ep, "camera_stall")
    assert len(stall) == 1 and 1.69 <= (stall[0]["t_ns"] - t0) / NS <= 1.8  # 200 ms after the last frame
    overflow = events_of(ep, "audio_overflow")
    assert len(overflow) == 1 and abs((overflow[0]["t_ns"] - t0) / NS - 0.5) < 0.011
    assert ep.read("audio/block_overflow").sum() == 1
    lost = events_of(ep, "teleop_lost")
    assert len(lost) == 1 and 2.45 <= (lost[0]["t_ns"] - t0) / NS <= 2.5  # once per outage, after 250 ms
    assert lost[0]["detail"]["reason"] == "connection dropped"  # what the device said, in the loop's event
    robot_errors = events_of(ep, "robot_error")
    assert len(robot_errors) == 2  # apply() raised once; the state reported a reflex later
    assert 0.8 <= (robot_errors[0]["t_ns"] - t0) / NS <= 0.9 and "communication" in robot_errors[0]["detail"]["error"]
    assert 3.2 <= (robot_errors[1]["t_ns"] - t0) / NS <= 3.25
    assert robot_errors[1]["detail"]["error"] == "cartesian reflex"
    assert world.robot.recovers >= 2
    contact = events_of(ep, "contact")
    assert len(contact) == 1 and contact[0]["t_ns"] == t0 + int(1.2 * NS) and contact[0]["detail"]["force_n"] == 3.5

    # The robot held still while teleop was silent (after the timeout) and while it was in error.
    times, delta = ep.action_times, ep.read("action/delta_ee")
    s = (times - t0) / NS
    silent = (s > lost[0]["t_ns"] / NS - t0 / NS) & (s < 2.8)
    in_error = (s >= 3.2) & (s < 3.4)
    assert silent.sum() >= 8 and in_error.sum() >= 5
    assert np.all(delta[silent] == 0) and np.all(delta[in_error] == 0)
    moving = (s > 0.5) & (s < 0.8)
    assert np.abs(delta[moving]).sum() > 0  # it was moving before
    # The writer got everything the devices delivered: frames lost only to the planned drop and stall.
    assert len(ep.camera_times) == pytest.approx(4.0 * 30 - 15, abs=3)
    assert errors(ds) == []


def test_camera_read_errors_show_as_a_stall(tmp_path):
    _, ds, _, result = record(tmp_path / "ds", [Plan(end_s=2.0, camera_errors=(0.8, 1.3))], 1)
    stall = events_of(ds.episode(0), "camera_stall")
    assert len(stall) == 1 and "USB transfer failed" in stall[0]["detail"]["error"]


def test_time_limit_saves_unlabelled(tmp_path):
    _, ds, _, result = record(tmp_path / "ds", [Plan(end_button=None)], 1, control=ControlConfig(max_episode_s=2.5))
    ep = ds.episode(0)
    assert result.committed == [0] and ep.success is None
    assert ep.attrs["info"]["end"] == "time limit" and ep.attrs["info"]["duration_s"] == pytest.approx(2.5, abs=0.04)
    assert events_of(ep, "stop")[0]["detail"]["reason"] == "time limit"


def test_robot_stuck_in_error_ends_the_session_with_the_episode_saved(tmp_path):
    _, ds, _, result = record(tmp_path / "ds", [Plan(end_s=9, robot_error=(1.0, 99.0))], 3)
    assert result.committed == [0] and result.error and "robot" in result.error and not result.interrupted
    ep = ds.episode(0)
    assert ep.success is None and ep.attrs["info"]["end"] == "robot error"
    assert len(events_of(ep, "robot_error")) == 1


@pytest.mark.parametrize("how", ["keyboard-interrupt", "request-stop"])
def test_ctrl_c_discards_only_the_unfinished_episode(tmp_path, how):
    holder = []
    plan = (Plan(end_s=9, interrupt_at=1.0) if how == "keyboard-interrupt"
            else Plan(end_s=9, callback_at=(1.0, lambda: holder[0].request_stop())))
    world = PlannedWorld([Plan(end_s=2.6), plan])
    rig = world.rig()
    ds = Dataset.create(tmp_path / "ds", "zip", TEST_STREAMS)
    rec = Recorder(rig, ds, ControlConfig())
    holder.append(rec)
    result = rec.run(3)
    assert result.interrupted and result.committed == [0] and result.interrupted_index == 1
    assert ds.episode_indices() == [0] and ds.incoming_paths() == []
    assert not (ds.root / INCOMING / "episode_000001").exists()
    assert ds.episode(0).success is True and errors(ds) == []
    assert world.camera.stopped == world.robot.stopped == 1  # devices released
    assert ds.reserve_index() == 2  # the discarded index is never handed out again


def test_the_session_leaves_its_long_lived_objects_out_of_garbage_collections(tmp_path):
    """While recording, what existed when the session started is frozen (a full collection would otherwise walk
    it all with every thread stopped); afterwards the collector is as it was."""
    assert gc.get_freeze_count() == 0
    seen = []
    plan = Plan(end_s=1.0, callback_at=(0.5, lambda: seen.append((gc.get_freeze_count(), gc.isenabled()))))
    _, ds, _, result = record(tmp_path / "ds", [plan], 1)
    assert result.committed == [0] and errors(ds) == []
    assert len(seen) == 1 and seen[0][0] > 1000 and seen[0][1]  # frozen, and collections still run
    assert gc.get_freeze_count() == 0


def test_start_on_clutch_waits_for_the_grip(tmp_path):
    world, ds, _, _ = record(tmp_path / "ds", [Plan(grip_s=0.7, end_s=2.0)], 1, start_on_clutch=True)
    start = events_of(ds.episode(0), "start")[0]["t_ns"]
    assert (start - world.base_ns) / NS == pytest.approx(0.7, abs=0.04)


def test_no_camera_after_homing_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr("htouch.collector.loop.READY_TIMEOUT_S", 2.0)
    with pytest.raises(HtouchError, match="no data from the camera"):
        record(tmp_path / "ds", [Plan(camera_stall=(0.0, 99.0))], 1)
    assert Dataset(tmp_path / "ds").episode_indices() == []


def test_writer_failure_keeps_committed_episodes_and_the_flushed_part(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    record(root, [Plan(end_s=2.0)], 1)
    original = EpisodeWriter._append

    def disk_full(self, spec, rows):
        if self.index == 1 and spec.stream == "camera":
            raise OSError(28, "No space left on device")
        return original(self, spec, rows)

    monkeypatch.setattr(EpisodeWriter, "_append", disk_full)
    with pytest.raises(WriterError, match="No space left"):
        record(root, [Plan(end_s=5.0)], 1)
    ds = Dataset(root)
    assert ds.episode_indices() == [0] and ds.episode(0).success is True
    assert [p.name for p in ds.incoming_paths()] == ["episode_000001"]  # for `htouch validate --repair`


def test_an_episode_starts_once_its_writer_exists(tmp_path, monkeypatch):
    """A disk (or loaded machine) that takes 1.5 s to create an episode's arrays: the episode starts at the first
    tick after, and records its whole length (from the ready tick, a 2 s episode was over before its first tick:
    seen after an in-process export, docs/teleop-and-robot.md)."""
    original = EpisodeWriter.__init__

    def slow_create(self, *args, **kw):
        time.sleep(1.5)
        original(self, *args, **kw)

    monkeypatch.setattr(EpisodeWriter, "__init__", slow_create)
    _, ds, rec, result = record(tmp_path / "ds", [Plan(end_button=None)], 1, stepped=False,
                                control=ControlConfig(max_episode_s=2.0))
    ep = ds.episode(0)
    assert result.committed == [0] and ep.attrs["info"]["duration_s"] == pytest.approx(2.0, abs=0.1)
    start = events_of(ep, "start")[0]["t_ns"]
    for stream in ("state", "action", "teleop"):
        t = ep.read(f"{stream}/timestamp_ns")
        assert len(t) >= 0.8 * 2.0 * 30, stream  # generous: the CPU is shared
        assert (t[0] - start) / NS < 0.1, stream
    assert errors(ds) == []


def test_real_time_loop_keeps_its_rate_with_a_slow_writer(tmp_path, monkeypatch):
    original = EpisodeWriter._flush

    def slow_flush(self):
        time.sleep(0.6)  # a disk that takes 0.6 s per flush
        original(self)

    monkeypatch.setattr(EpisodeWriter, "_flush", slow_flush)
    world, ds, rec, result = record(tmp_path / "ds", [Plan(end_s=2.5)], 1, stepped=False,
                                    writer_options={"queue_size": 24})
    assert result.committed == [0]
    ep = ds.episode(0)
    full = events_of(ep, "writer_queue_full")
    assert full and sum(ep.attrs["dropped_rows"].values()) > 0  # the writer fell behind: recorded, not silent
    # The loop kept its 30 Hz all the same (generous bounds: the CPU is shared).
    period_ms = np.array(rec.timing.periods_ns) / 1e6
    assert np.median(period_ms) == pytest.approx(1000 / 30, rel=0.05)
    assert rec.timing.ticks >= 0.85 * 2.5 * 30 and rec.timing.overruns <= 0.05 * rec.timing.ticks
    np.testing.assert_allclose(rec.timing.wall_periods_ns, rec.timing.periods_ns, atol=1e6)  # one clock here
    applied = np.array([t for t, _ in world.robot.applied])
    assert len(applied) >= 0.85 * 2.5 * 30
