"""The dataset directory, the writer's lifecycle and its guarantees."""

import json
import threading
import time

import numpy as np
import pytest
import zarr

from htouch.dataset.schema import INCOMING, SCHEMA_VERSION, episode_arrays
from htouch.dataset.store import Dataset, find_dataset, resolve_episode
from htouch.dataset.writer import FLUSHED_FILE, is_being_written
from htouch.errors import DatasetError, WriterError
from tests.conftest import TINY_RIG

NS = 1_000_000_000


def write_rows(w, n=10, t0=0):
    rig = w.dataset.streams
    for i in range(n):
        t = t0 + i * NS // 30
        w.camera(t, i, np.full((rig.camera.height, rig.camera.width, 3), i, np.uint8))
        w.audio(t, np.full((320, rig.audio.channels), i, np.int16))
        w.state(t, np.r_[np.zeros(6), 1.0], np.zeros(rig.state.n_joints), 0.05)
        w.action(t, np.zeros(6), 1.0)


def test_create_refuses_existing(tmp_path):
    Dataset.create(tmp_path / "d", "zip", TINY_RIG)
    with pytest.raises(DatasetError, match="already exists"):
        Dataset.create(tmp_path / "d", "zip", TINY_RIG)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file.txt").write_text("x")
    with pytest.raises(DatasetError, match="not empty"):
        Dataset.create(tmp_path / "other", "zip", TINY_RIG)


def test_open_or_create_refuses_other_task_or_rig(tmp_path):
    Dataset.create(tmp_path / "d", "zip", TINY_RIG)
    with pytest.raises(DatasetError, match="task"):
        Dataset.open_or_create(tmp_path / "d", "flip", TINY_RIG)
    from htouch.dataset.schema import StreamSpecs
    with pytest.raises(DatasetError, match=r"different rig \(camera.height 48 -> 480, camera.width 64 -> 640"):
        Dataset.open_or_create(tmp_path / "d", "zip", StreamSpecs())


def test_commit_makes_episode_visible_only_at_the_end(tmp_path):
    ds = Dataset.create(tmp_path / "d", "zip", TINY_RIG)
    w = ds.new_episode(flush_interval_s=0.05)
    write_rows(w)
    assert ds.episode_indices() == []  # invisible while being written
    assert is_being_written(w.path)
    w.event(0, "start")
    path = w.commit(success=True)
    assert path == ds.root / "episode_000000"
    assert ds.episode_indices() == [0]
    assert not (ds.root / INCOMING / "episode_000000").exists()
    assert not (path / FLUSHED_FILE).exists()
    ep = ds.episode(0)
    assert ep.attrs["status"] == "committed" and ep.success is True
    assert ep.attrs["schema_version"] == SCHEMA_VERSION
    assert ep.array("camera/rgb").shape == (10, 48, 64, 3)
    assert ep.array("audio/pcm").shape == (3200, 4)
    np.testing.assert_array_equal(ep.read("audio/block_offset"), np.arange(10) * 320)
    assert [e["kind"] for e in ep.events()] == ["start"]


def test_every_schema_array_is_written(tmp_path):
    ds = Dataset.create(tmp_path / "d", "zip", TINY_RIG)
    w = ds.new_episode()
    write_rows(w, 3)
    w.commit(success=None)
    g = zarr.open_group(str(ds.episode_path(0)), mode="r")
    for spec in episode_arrays(TINY_RIG):
        arr = g[spec.path]
        assert arr.dtype == np.dtype(spec.dtype), spec.path
        assert arr.shape[1:] == spec.shape, spec.path


def test_indices_never_reused(tmp_path):
    ds = Dataset.create(tmp_path / "d", "zip", TINY_RIG)
    for _ in range(3):
        w = ds.new_episode()
        write_rows(w, 2)
        w.commit(success=True)
    ds.delete_episode(1)
    w = ds.new_episode()
    w.discard()  # a discarded re-record also consumes its index
    w = ds.new_episode()
    write_rows(w, 2)
    w.commit(success=True)
    assert ds.episode_indices() == [0, 2, 4]
    assert ds.episode(2).index == 2
    # even if the metadata counter were lost, indices on disk are respected
    meta = json.loads((ds.root / "htouch.json").read_text())
    meta["next_episode_index"] = 0
    (ds.root / "htouch.json").write_text(json.dumps(meta))
    assert Dataset(ds.root).reserve_index() == 5


def test_wrong_shape_rejected_at_the_call(tmp_path):
    ds = Dataset.create(tmp_path / "d", "zip", TINY_RIG)
    w = ds.new_episode()
    with pytest.raises(ValueError, match="camera/rgb"):
        w.camera(0, 0, np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(ValueError, match="audio/pcm"):
        w.audio(0, np.zeros((320, 2), np.int16))
    w.discard()


def test_full_queue_is_an_event_not_a_silent_drop(tmp_path):
    ds = Dataset.create(tmp_path / "d", "zip", TINY_RIG)
    w = ds.new_episode(queue_size=2, flush_interval_s=0.01)
    slow_buffer = w._buffer

    def stalled_disk(*args):  # the writer thread takes 0.2 s per row, like a disk that stalls
        time.sleep(0.2)
        slow_buffer(*args)

    w._buffer = stalled_disk
    accepted = [w.action(i, np.zeros(6), 1.0) for i in range(6)]
    assert accepted.count(False) >= 1
    assert w.dropped["action"] == accepted.count(False)
    w.commit(success=True)
    ep = ds.episode(0)
    full = [e for e in ep.events() if e["kind"] == "writer_queue_full"]
    assert full and full[0]["detail"]["stream"] == "action"
    assert ep.array("action/timestamp_ns").shape[0] == accepted.count(True)
    assert ep.attrs["dropped_rows"] == {"action": accepted.count(False)}


def test_writer_failure_is_reported_not_hidden(tmp_path):
    ds = Dataset.create(tmp_path / "d", "zip", TINY_RIG)
    w = ds.new_episode(flush_interval_s=0.01)
    w._arrays["action/delta_ee"].resize = None  # the next flush of actions fails inside the writer thread
    w.action(0, np.zeros(6), 1.0)
    deadline = time.monotonic() + 5
    while w._error is None and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(WriterError, match="failed"):
        w.action(1, np.zeros(6), 1.0)
    with pytest.raises(WriterError):
        w.commit(success=True)
    assert ds.episode_indices() == []
    assert (ds.root / INCOMING / "episode_000000").exists()  # kept for repair, not deleted


def test_exception_inside_with_keeps_flushed_data_for_repair(tmp_path):
    ds = Dataset.create(tmp_path / "d", "zip", TINY_RIG)
    with pytest.raises(RuntimeError):
        with ds.new_episode(flush_interval_s=0.01) as w:
            write_rows(w, 5)
            raise RuntimeError("operator pulled the plug")
    incoming = ds.incoming_paths()
    assert [p.name for p in incoming] == ["episode_000000"]
    flushed = json.loads((incoming[0] / FLUSHED_FILE).read_text())
    assert flushed["lengths"]["camera/rgb"] == 5
    assert not is_being_written(incoming[0])


def test_memory_is_bounded_by_flushing(tmp_path):
    """Buffers are emptied at every flush, whatever the episode length."""
    ds = Dataset.create(tmp_path / "d", "zip", TINY_RIG)
    w = ds.new_episode(flush_interval_s=0.01, blocking=True)
    write_rows(w, 60)
    deadline = time.monotonic() + 10  # the flush thread may wait for a CPU on a busy machine
    while sum(len(v) for v in w._buffers.values()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sum(len(v) for v in w._buffers.values()) == 0
    w.commit(success=True)


def test_a_live_writer_encodes_on_one_thread(tmp_path):
    """A live recording's chunks are encoded on one zarr thread: the other cores stay with the control loop and the
    policy planner (zarr's default pool encodes a flush on every core at once)."""
    before = set(threading.enumerate())  # pools of earlier zarr calls in this process stay; none get new threads
    ds = Dataset.create(tmp_path / "d", "zip", TINY_RIG)
    w = ds.new_episode(flush_interval_s=0.01)
    write_rows(w, 30)
    w.commit(success=True)
    started = [t.name for t in set(threading.enumerate()) - before if t.name.startswith(("zarr_pool", "asyncio_"))]
    assert started in ([], ["zarr_pool_0"])
    assert [t.name for t in threading.enumerate() if t.name.startswith("zarr_pool")] == ["zarr_pool_0"]


def test_find_and_resolve(tiny_ds, tmp_path, monkeypatch):
    monkeypatch.chdir(tiny_ds.root)
    assert find_dataset().root.resolve() == tiny_ds.root.resolve()
    assert resolve_episode("episode_1").index == 1
    assert resolve_episode("1").index == 1
    monkeypatch.chdir(tiny_ds.root.parent)
    assert resolve_episode("episode_000001").index == 1
    assert resolve_episode(str(tiny_ds.root / "episode_000000")).index == 0
    with pytest.raises(DatasetError, match="episode 7 not found"):
        resolve_episode("episode_7")
    with pytest.raises(DatasetError, match="not an episode"):
        tiny_ds.episode("../etc")
    with pytest.raises(DatasetError):
        resolve_episode("../etc/passwd", dataset=tiny_ds.root)
    with pytest.raises(DatasetError, match="not an episode directory"):
        resolve_episode(str(tiny_ds.root / "episode_000000" / "camera"), dataset=tiny_ds.root)
    (tmp_path / "empty").mkdir()  # not tmp_path.parent: other tests' datasets lie there
    monkeypatch.chdir(tmp_path / "empty")
    with pytest.raises(DatasetError, match="no htouch dataset"):
        find_dataset()


def test_broken_metadata_is_a_clear_error(tiny_ds):
    (tiny_ds.root / "htouch.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        Dataset(tiny_ds.root)
    (tiny_ds.root / "htouch.json").write_text(json.dumps({"format": "htouch-dataset", "schema_version": 99}))
    with pytest.raises(DatasetError, match="schema version 99"):
        Dataset(tiny_ds.root)
