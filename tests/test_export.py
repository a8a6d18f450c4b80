"""htouch export: the LeRobot v3.0 layout, the grid mapping, labels and splits, and bad input.

These tests read the export with pyarrow, PyAV and numpy only; tools/verify_lerobot_export.py loads it with the
real `lerobot` package in a side environment (docs/interop.md), which is too slow to install here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

from htouch.dataset.schema import AudioSpec, CameraSpec, StreamSpecs
from htouch.dataset.split import split_dataset
from htouch.dataset.store import Dataset
from htouch.dataset.synthetic import SyntheticEpisode, write_synthetic_episode
from htouch.dataset.video import audio_track
from htouch.errors import HtouchError
from htouch.interop.common import audio_rate_for, frame_grid, staged_output
from htouch.interop.lerobot import (
    AUDIO_KEY,
    CAMERA_KEY,
    DATA_PATH,
    EPISODES_PATH,
    INFO_PATH,
    STATS_PATH,
    TASKS_PATH,
    VIDEO_PATH,
    export_lerobot,
)

# 48 kHz at 30 fps: 1600 samples a frame without resampling, so the windows can be checked sample by sample.
RIG48 = StreamSpecs(name="synthetic", camera=CameraSpec(width=64, height=48), audio=AudioSpec(rate_hz=48000.0))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A 3-episode dataset (a frame dropped at 2 s in each, labels True, True, False), split, and its export."""
    root = tmp_path_factory.mktemp("export")
    ds = Dataset.create(root / "ds", "zip", RIG48)
    for i, success in enumerate((True, True, False)):
        write_synthetic_episode(ds, SyntheticEpisode(duration_s=3.0, seed=i, success=success, frame_drops=((2.0, 1),)))
    split_dataset(ds, 0.34, 0)
    ds = Dataset(ds.root)
    report = export_lerobot(ds, root / "lr", vcodec="libx264")  # fast here; AV1 is checked once below
    return ds, root / "lr", report


def _info(out: Path) -> dict:
    return json.loads((out / INFO_PATH).read_text())


def _file(pattern: str, **kw) -> str:
    return pattern.format(chunk_index=0, file_index=0, **kw)


def test_layout_and_info(exported):
    ds, out, report = exported
    info = _info(out)
    assert info["codebase_version"] == "v3.0" and info["fps"] == 30
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    for rel in (STATS_PATH, TASKS_PATH, _file(EPISODES_PATH), _file(DATA_PATH), _file(VIDEO_PATH, video_key=CAMERA_KEY),
                "htouch/export.json", "htouch/audio/episode-000002.npz"):
        assert (out / rel).is_file(), rel
    assert not list(out.parent.glob(".lr.partial-*"))
    f = info["features"]
    assert f[CAMERA_KEY]["dtype"] == "video" and f[CAMERA_KEY]["shape"] == [48, 64, 3]
    assert f[CAMERA_KEY]["info"]["video.codec"] == "h264" and f[CAMERA_KEY]["info"]["has_audio"] is True
    assert f["observation.state"]["shape"] == [7 + 7 + 1] and f["action"]["shape"] == [7]
    assert f[AUDIO_KEY]["shape"] == [1600, 4] and f[AUDIO_KEY]["dtype"] == "float32"
    data = pq.read_table(out / _file(DATA_PATH))
    assert set(data.column_names) == {k for k, v in f.items() if v["dtype"] != "video"}
    assert info["total_frames"] == data.num_rows == report.rows and info["total_episodes"] == 3
    stats = json.loads((out / STATS_PATH).read_text())
    assert set(stats) == {k for k in f if not k.startswith("htouch.")}
    assert np.array(stats[CAMERA_KEY]["mean"]).shape == (3, 1, 1)
    assert stats["frame_index"]["count"] == [data.num_rows]
    assert stats["action"]["min"] == pytest.approx(data["action"].combine_chunks().flatten().to_numpy()
                                                   .reshape(-1, 7).min(axis=0), rel=1e-6)
    # LeRobot reads the tasks with pandas.read_parquet and looks tasks up by the frame's index: the task text,
    # stored as pandas stores an index (a column named in the pandas metadata's index_columns).
    tasks = pq.read_table(out / TASKS_PATH)
    pandas_meta = json.loads(tasks.schema.metadata[b"pandas"])
    assert pandas_meta["index_columns"] == ["__index_level_0__"]
    assert tasks.to_pydict() == {"task_index": [0], "__index_level_0__": ["zip"]}


def test_rows_on_the_grid_and_episode_boundaries(exported):
    ds, out, report = exported
    data = pq.read_table(out / _file(DATA_PATH)).to_pydict()
    eps = pq.read_table(out / _file(EPISODES_PATH)).to_pydict()
    assert eps["dataset_from_index"][0] == 0 and eps["dataset_to_index"][-1] == report.rows
    assert eps["dataset_from_index"][1:] == eps["dataset_to_index"][:-1]
    ep_col, frame_col = np.array(data["episode_index"]), np.array(data["frame_index"])
    assert np.array_equal(np.array(data["index"]), np.arange(report.rows))
    assert np.allclose(np.array(data["timestamp"]), frame_col / 30, atol=1e-6)
    for e in range(3):
        lo, hi = eps["dataset_from_index"][e], eps["dataset_to_index"][e]
        assert eps["length"][e] == hi - lo and set(ep_col[lo:hi]) == {e}
        assert np.array_equal(frame_col[lo:hi], np.arange(hi - lo))
        assert eps[f"videos/{CAMERA_KEY}/from_timestamp"][e] == pytest.approx(lo / 30)
        assert eps[f"videos/{CAMERA_KEY}/to_timestamp"][e] == pytest.approx(hi / 30)
        # The planted drop (one frame at 2 s): one row repeats its predecessor, and the report counts it.
        assert sum(data["htouch.frame_repeated"][lo:hi]) == 1 == eps["htouch/repeated_frames"][e]
        t = np.array(data["htouch.time_ns"][lo:hi])
        assert np.all(np.abs(np.diff(t) - 1e9 / 30) <= 1) and t[0] == eps["htouch/t0_ns"][e]
    assert report.repeated_frames == 3 and report.rows == report.recorded_frames + 3 - report.trimmed_rows


def test_state_action_and_audio_sampled_at_the_row_times(exported):
    ds, out, _ = exported
    data = pq.read_table(out / _file(DATA_PATH))
    eps = pq.read_table(out / _file(EPISODES_PATH)).to_pydict()
    e = 1
    ep = ds.episode(eps["htouch/episode"][e])
    lo, hi = eps["dataset_from_index"][e], eps["dataset_to_index"][e]
    t = np.array(data["htouch.time_ns"].to_pylist()[lo:hi])
    state = np.array(data["observation.state"].to_pylist()[lo:hi])
    action = np.array(data["action"].to_pylist()[lo:hi])
    for k in (0, 17, len(t) - 1):
        s = np.searchsorted(ep.state_times, t[k], side="right") - 1
        a = np.searchsorted(ep.action_times, t[k], side="left")
        assert state[k] == pytest.approx(np.concatenate([ep.read("state/ee_pose")[s], ep.read("state/joints")[s],
                                                         [ep.read("state/gripper_width")[s]]]), rel=1e-6)
        assert action[k] == pytest.approx(np.append(ep.read("action/delta_ee")[a], ep.read("action/gripper")[a]),
                                          rel=1e-6)
    # Row k's audio is the window (t_k - 1/30 s, t_k]: at 48 kHz exactly the recorded samples placed by their
    # block time stamps.
    period = round(1e9 / 30)
    track, rate = audio_track(ep, int(t[0]) - period, int(t[-1]))
    assert rate == 48000
    audio = np.array(data[AUDIO_KEY].to_pylist()[lo + 40])
    assert audio.shape == (1600, 4) and np.abs(audio).max() > 0
    assert np.array_equal(audio, track[40 * 1600:41 * 1600])


def test_lossless_audio_sidecar(exported):
    ds, out, _ = exported
    eps = pq.read_table(out / _file(EPISODES_PATH)).to_pydict()
    for e, name in enumerate(eps["htouch/episode"]):
        ep = ds.episode(name)
        with np.load(out / eps["htouch/audio_sidecar"][e], allow_pickle=False) as z:
            assert np.array_equal(z["pcm"], ep.read("audio/pcm")) and z["pcm"].dtype == np.int16
            assert np.array_equal(z["block_timestamp_ns"], ep.audio_block_times)
            assert np.array_equal(z["block_offset"], ep.audio_block_offsets)
            assert int(z["t0_ns"]) == eps["htouch/t0_ns"][e] == int(ep.camera_times[0])
            assert list(z["event_kind"]) == [ev["kind"] for ev in ep.events()]


def test_video_holds_every_row_frame(exported):
    ds, out, report = exported
    data = pq.read_table(out / _file(DATA_PATH)).to_pydict()
    eps = pq.read_table(out / _file(EPISODES_PATH)).to_pydict()
    with av.open(str(out / _file(VIDEO_PATH, video_key=CAMERA_KEY))) as c:
        frames = [(f.time, f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
        assert len(list(c.streams.audio)) == 1
    assert len(frames) == report.rows
    assert np.allclose([t for t, _ in frames], np.arange(report.rows) / 30, atol=1e-3)
    # Each row shows the frame the grid chose: closer to it than to its neighbours, and near-identical (PSNR).
    e = 0
    ep = ds.episode(eps["htouch/episode"][e])
    grid = frame_grid(ep, 30)
    rgb = ep.read("camera/rgb")
    for k in (5, 30, 59, 60, 61):
        got = frames[eps["dataset_from_index"][e] + k][1].astype(float)
        mse = np.mean((got - rgb[grid.frame[k]]) ** 2)
        assert 10 * np.log10(255 ** 2 / mse) > 28
        assert bool(data["htouch.frame_repeated"][k]) == (grid.frame[k] == grid.frame[k - 1])


def test_labels_and_split_carried(exported):
    ds, out, _ = exported
    info = _info(out)
    eps = pq.read_table(out / _file(EPISODES_PATH)).to_pydict()
    data = pq.read_table(out / _file(DATA_PATH)).to_pydict()
    split = ds.metadata["split"]
    names = eps["htouch/episode"]
    assert [ds.episode(n).index for n in names] == split["train"] + split["val"]
    n_train = len(split["train"])
    assert info["splits"] == {"train": f"0:{n_train}", "val": f"{n_train}:3"}
    assert eps["htouch/split"] == ["train"] * n_train + ["val"] * (3 - n_train)
    for e, name in enumerate(names):
        success = ds.episode(name).success
        assert eps["htouch/success"][e] is success
        last = eps["dataset_to_index"][e] - 1
        assert data["next.done"][last] and not data["next.done"][last - 1]
        assert data["next.success"][last] is success


def test_frame_grid_repeats_skips_and_trims(tiny_ds):
    ep = tiny_ds.episode(0)
    g = frame_grid(ep, 30)
    # synthetic: 4 s at 30 fps with one frame lost at 2 s
    assert int(g.repeated.sum()) == 1 and g.skipped_frames == 0
    assert g.frame[int(np.flatnonzero(g.repeated)[0])] == g.frame[int(np.flatnonzero(g.repeated)[0]) - 1]
    # on a 15 fps grid every other recorded frame falls between rows
    g15 = frame_grid(ep, 15)
    assert g15.skipped_frames >= len(ep.camera_times) // 2 - 2
    assert np.all(g.times_ns <= ep.action_times[-1]) and len(g) + g.trimmed_rows >= len(ep.camera_times)


def test_audio_rate_gives_whole_samples_per_frame():
    assert audio_rate_for(32000, 30) == 44100 and audio_rate_for(48000, 30) == 48000
    assert audio_rate_for(16000, 20) == 16000 and audio_rate_for(32000, 7) == 44100
    assert audio_rate_for(32000, 11) == 32010  # no common rate divides into 11 frames: the next multiple


def test_av1_by_default(tiny_ds, tmp_path):
    report = export_lerobot(tiny_ds, tmp_path / "lr")
    info = _info(tmp_path / "lr")["features"][CAMERA_KEY]["info"]
    assert report.video_codec == "libsvtav1" and info["video.codec"] == "av1"
    assert report.rows_per_s > 0 and report.bytes_out > 0


def test_the_av1_encoder_leaves_no_thread_real_time(tiny_ds, tmp_path):
    """SVT-AV1 run as root (as here) makes its caller and its workers SCHED_FIFO 99; the export undoes it."""
    realtime = (os.SCHED_FIFO, os.SCHED_RR)
    export_lerobot(tiny_ds, tmp_path / "lr")
    assert os.sched_getscheduler(0) not in realtime
    for task in Path("/proc/self/task").iterdir():
        try:
            policy = os.sched_getscheduler(int(task.name))
        except OSError:  # ended meanwhile
            continue
        assert policy not in realtime, f"thread {task.name}"


def test_rolls_over_into_several_files(tiny_ds, tmp_path):
    """Past the size limits a new data and video file starts at the next episode (LeRobot's chunk-XXX/file-XXX):
    with limits of 0 MB every episode gets its own files, and the episode table points into them."""
    out = tmp_path / "lr"
    report = export_lerobot(tiny_ds, out, vcodec="libx264", data_file_mb=0, video_file_mb=0)
    eps = pq.read_table(out / _file(EPISODES_PATH)).to_pydict()
    assert eps["data/file_index"] == [0, 1] and eps[f"videos/{CAMERA_KEY}/file_index"] == [0, 1]
    assert eps[f"videos/{CAMERA_KEY}/from_timestamp"] == [0.0, 0.0]
    for e in range(2):
        data = pq.read_table(out / DATA_PATH.format(chunk_index=0, file_index=e)).to_pydict()
        assert set(data["episode_index"]) == {e} and len(data["index"]) == eps["length"][e]
        assert data["index"][0] == eps["dataset_from_index"][e]
        video = out / VIDEO_PATH.format(video_key=CAMERA_KEY, chunk_index=0, file_index=e)
        with av.open(str(video)) as c:
            assert sum(1 for _ in c.decode(video=0)) == eps["length"][e]
    assert report.rows == sum(eps["length"])


def test_episode_of_another_rig_is_refused(tiny_ds, tmp_path):
    streams = tiny_ds.streams.to_dict()
    streams["audio"]["channels"] = 2
    streams["audio"]["channel_names"] = ["a", "b"]
    tiny_ds.update_metadata(rig=streams)  # the episodes keep the rig they were recorded with: a validation warning
    with pytest.raises(HtouchError, match=r"episode_000000 differs from the dataset's rig \(audio channels 4 "
                                          r"\(dataset: 2\)\)"):
        export_lerobot(Dataset(tiny_ds.root), tmp_path / "lr")
    assert _no_leftovers(tmp_path, "lr")


def test_unknown_encoder_is_refused(cli, tiny_ds, tmp_path):
    r = cli("export", tiny_ds.root, tmp_path / "x", "--format", "lerobot", "--vcodec", "nosuchcodec")
    assert r.code == 2 and "no nosuchcodec encoder" in r.err and _no_leftovers(tmp_path, "x")


# ------------------------------------------------------------------------------------------------ bad input


def _no_leftovers(parent: Path, name: str) -> bool:
    return not (parent / name).exists() and not list(parent.glob(f".{name}.partial-*"))


def test_existing_out_is_refused(cli, tiny_ds, tmp_path):
    out = tmp_path / "there"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = cli("export", tiny_ds.root, out, "--format", "lerobot")
    assert r.code == 2 and "already exists" in r.err and len(r.err.strip().splitlines()) == 1
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_unknown_format_is_refused(cli, tiny_ds, tmp_path):
    r = cli("export", tiny_ds.root, tmp_path / "x", "--format", "rlds")
    assert r.code == 2 and "unknown export format 'rlds'" in r.err and _no_leftovers(tmp_path, "x")


@pytest.mark.parametrize("fmt, name", [("lerobot", "x"), ("dp", "x.zarr.zip")])
def test_dataset_failing_validation_is_refused(cli, tiny_ds, tmp_path, fmt, name):
    chunk = tiny_ds.episode_path(1) / "camera" / "rgb" / "3.0.0.0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    r = cli("export", tiny_ds.root, tmp_path / name, "--format", fmt)
    assert r.code == 2 and "fails validation" in r.err and "episode_000001" in r.err
    assert "checksum.mismatch" in r.err and "camera/rgb/3.0.0.0" in r.err
    assert len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err
    assert _no_leftovers(tmp_path, name) and sorted(os.listdir(tmp_path)) == ["ds"]


def test_not_a_dataset_is_refused(cli, tmp_path):
    r = cli("export", tmp_path / "nothing", tmp_path / "x", "--format", "lerobot")
    assert r.code == 2 and "no dataset" in r.err and _no_leftovers(tmp_path, "x")


def test_a_failure_midway_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with staged_output(out) as tmp:
            (tmp / "data").mkdir()
            (tmp / "data" / "half.parquet").write_bytes(b"half")
            raise RuntimeError("disk full")
    assert _no_leftovers(tmp_path, "out")
    with staged_output(out) as tmp:
        (tmp / "ok").write_text("done")
    assert (out / "ok").read_text() == "done" and _no_leftovers(tmp_path, "nope")
    with pytest.raises(HtouchError, match="already exists"):
        with staged_output(out):
            pass


def test_export_cli_reports(cli, tiny_ds, tmp_path):
    r = cli("export", tiny_ds.root, tmp_path / "lr", "--format", "lerobot", "--vcodec", "libx264")
    assert r.code == 0, r.err
    assert "dropped frames" in r.out and "2 row(s) repeat" in r.out
    assert (tmp_path / "lr" / INFO_PATH).is_file()
    assert sorted(os.listdir(tmp_path)) == ["ds", "lr"]


# ------------------------------------------------------------------------------------------------ --format dp


def test_dp_replay_buffer_layout(exported, tmp_path):
    import zipfile

    import zarr
    from scipy.spatial.transform import Rotation

    from htouch.interop.common import episode_rows
    from htouch.interop.dp import DP_JPEG_KEYS, export_dp

    ds, _, _ = exported
    out = tmp_path / "replay.zarr.zip"
    report = export_dp(ds, out)
    with zipfile.ZipFile(out) as z:
        names = z.namelist()
        assert len(names) == len(set(names)), "duplicate ZIP entries"
        assert all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())
        config = json.loads(z.read("data/camera0_rgb/.zarray"))["compressor"]
    # Diffusion Policy's Jpeg codec is built from these keys; any other key would fail in its from_config.
    assert config["id"] == "imagecodecs_jpeg" and set(config) <= set(DP_JPEG_KEYS)
    assert sum(n.startswith("data/camera0_rgb/") and not n.endswith((".zarray", ".zattrs")) for n in names) \
        == report.rows  # every frame's chunk is stored
    with zarr.storage.ZipStore(out, mode="r") as store:
        root = zarr.open_group(store, mode="r", zarr_format=2)
        data = root["data"]
        assert set(data.keys()) == {"camera0_rgb", "robot0_eef_pos", "robot0_eef_rot_axis_angle",
                                    "robot0_gripper_width", "robot0_joint_pos", "mic_0", "mic_1", "mic_2", "mic_3",
                                    "action", "timestamp", "frame_repeated"}
        ends = root["meta/episode_ends"][:]
        attrs = root.attrs["htouch"]
        assert ends.dtype == np.int64 and list(ends) == list(np.cumsum([e["rows"] for e in attrs["episodes"]]))
        assert all(data[k].shape[0] == ends[-1] for k in data.keys())
        assert data["camera0_rgb"].shape[1:] == (48, 64, 3) and data["robot0_gripper_width"].shape[1:] == (1,)
        assert data["mic_0"].shape[1:] == (1600,) and data["action"].shape[1:] == (7,)
        e = 1
        name = attrs["episodes"][e]["htouch_episode"]
        assert attrs["episodes"][e]["success"] is ds.episode(name).success
        assert attrs["episodes"][e]["split"] in ("train", "val")
        lo, hi = int(ends[e - 1]), int(ends[e])
        rows = episode_rows(ds.episode(name), 30, 48000)
        for c in range(4):
            assert np.array_equal(data[f"mic_{c}"][lo:hi], rows.audio[:, :, c])
        assert np.array_equal(data["robot0_eef_pos"][lo:hi], rows.state[:, :3])
        assert np.array_equal(data["action"][lo:hi], rows.action)
        quat = Rotation.from_rotvec(data["robot0_eef_rot_axis_angle"][lo:hi].astype(np.float64)).as_quat()
        ref = rows.state[:, 3:7] / np.linalg.norm(rows.state[:, 3:7], axis=1, keepdims=True)
        assert np.allclose(np.abs(np.sum(quat * ref, axis=1)), 1.0, atol=1e-5)
        frames = data["camera0_rgb"][lo:hi]
        src = ds.episode(name).read("camera/rgb")[rows.grid.frame]
        mse = np.mean((frames.astype(float) - src) ** 2)
        assert 10 * np.log10(255 ** 2 / mse) > 35
        assert int(data["frame_repeated"][lo:hi].sum()) == 1
    assert not list(tmp_path.glob(".replay.zarr.zip.*"))


def test_dp_needs_a_zarr_zip_name(cli, tiny_ds, tmp_path):
    r = cli("export", tiny_ds.root, tmp_path / "replay.zarr", "--format", "dp")
    assert r.code == 2 and ".zarr.zip" in r.err and len(r.err.strip().splitlines()) == 1
    assert sorted(os.listdir(tmp_path)) == ["ds"]


def test_dp_cli(cli, tiny_ds, tmp_path):
    import zarr

    r = cli("export", tiny_ds.root, tmp_path / "r.zarr.zip", "--format", "dp")
    assert r.code == 0, r.err
    assert "2 row(s) repeat" in r.out and sorted(os.listdir(tmp_path)) == ["ds", "r.zarr.zip"]
    # 32 kHz recorded; ManiWAV's mic_* are 48 kHz: 1600 samples a frame at 30 fps
    assert "1600 samples a frame at 48000 Hz" in r.out
    with zarr.storage.ZipStore(tmp_path / "r.zarr.zip", mode="r") as store:
        assert zarr.open_group(store, mode="r", zarr_format=2)["data/mic_3"].shape[1:] == (1600,)
    r = cli("export", tiny_ds.root, tmp_path / "r.zarr.zip", "--format", "dp")
    assert r.code == 2 and "already exists" in r.err
