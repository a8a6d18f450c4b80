"""htouch import lerobot: the round trip htouch -> LeRobot v3.0 -> htouch, a dataset without audio, and bad input.

The LeRobot datasets are htouch's own exports (tests/test_export.py checks those against LeRobot's layout), edited
where a test needs what another LeRobot dataset would hold (no htouch sidecar, another state layout, ...).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from htouch.dataset.schema import AudioSpec, CameraSpec, StreamSpecs, episode_arrays
from htouch.dataset.split import split_dataset
from htouch.dataset.store import Dataset
from htouch.dataset.synthetic import SyntheticEpisode, write_synthetic_episode
from htouch.dataset.validate import ERROR, validate_dataset
from htouch.errors import DatasetError
from htouch.interop.common import frame_grid
from htouch.interop.lerobot import CAMERA_KEY, DATA_PATH, INFO_PATH, VIDEO_PATH, export_lerobot
from htouch.interop.lerobot_import import import_lerobot

RIG48 = StreamSpecs(name="synthetic", camera=CameraSpec(width=64, height=48), audio=AudioSpec(rate_hz=48000.0))
PSNR_FLOOR_DB = 30.0  # H.264 at crf 30, then the rig's JPEG at quality 90, on 64x48 synthetic frames


@pytest.fixture(scope="module")
def round_trip(tmp_path_factory):
    """Episodes 0, 2 and 3 (1 was deleted; a frame dropped at 2 s in each; labels True, True, False), split,
    exported and imported."""
    root = tmp_path_factory.mktemp("import")
    ds = Dataset.create(root / "ds", "zip", RIG48)
    for i, success in enumerate((True, True, True, False)):
        write_synthetic_episode(ds, SyntheticEpisode(duration_s=3.0, seed=i, success=success, frame_drops=((2.0, 1),),
                                                     variation="test" if i == 3 else "train"))
    ds.delete_episode(1)
    split_dataset(ds, 0.34, 0)
    ds = Dataset(ds.root)
    export_lerobot(ds, root / "lr", vcodec="libx264")
    report = import_lerobot(root / "lr", root / "back")
    return ds, root / "lr", Dataset(root / "back"), report


def _errors(ds: Dataset) -> list:
    return [f for f in validate_dataset(ds).findings if f.severity == ERROR]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


def test_round_trip_validates_and_keeps_labels(round_trip):
    ds, _, back, report = round_trip
    assert _errors(back) == []
    assert back.task == "zip" and back.episode_indices() == ds.episode_indices() == [0, 2, 3]
    assert back.metadata["split"]["train"] == ds.metadata["split"]["train"]
    assert back.metadata["split"]["val"] == ds.metadata["split"]["val"]
    assert back.metadata["imported"]["from"] == "lerobot" and back.metadata["imported"]["audio"] == "sidecar"
    assert back.streams.audio == ds.streams.audio and back.streams.state.n_joints == ds.streams.state.n_joints
    for i in ds.episode_indices():
        a, b = ds.episode(i), back.episode(i)
        assert (b.success, b.variation) == (a.success, a.variation)
    assert report.episodes == 3 and report.audio == "sidecar" and report.frames == report.rows - 3
    assert report.frames_per_s > 0 and not list(back.root.parent.glob(".back.partial-*"))


def test_round_trip_frames_state_and_actions(round_trip):
    ds, _, back, _ = round_trip
    psnrs = []
    for i in ds.episode_indices():
        a, b = ds.episode(i), back.episode(i)
        g = frame_grid(a, 30)
        shown = np.flatnonzero(~g.repeated)  # the rows whose own frame was recorded
        # LeRobot's frame timestamps (float32 seconds) are the time axis, from the recording's t0
        assert len(b.camera_times) == len(shown)
        assert np.abs(b.camera_times - g.times_ns[shown]).max() < 20_000
        assert np.array_equal(b.read("camera/frame_number"), shown)
        got, want = b.read("camera/rgb"), a.read("camera/rgb")[g.frame[shown]]
        psnrs += [_psnr(x, y) for x, y in zip(got, want, strict=True)]
        # one state and one action per row, the values LeRobot holds (float32)
        assert np.array_equal(b._state, a._state[g.state].astype(np.float32).astype(np.float64))
        assert np.array_equal(b._actions, a._actions[g.action].astype(np.float32).astype(np.float64))
        assert np.array_equal(b.state_times, b.action_times) and len(b.state_times) == len(g)
    assert min(psnrs) > PSNR_FLOOR_DB, min(psnrs)


def test_round_trip_audio_and_events_exact(round_trip):
    ds, _, back, _ = round_trip
    for i in ds.episode_indices():
        a, b = ds.episode(i), back.episode(i)
        for path in ("audio/pcm", "audio/block_offset", "audio/block_timestamp_ns", "audio/block_overflow"):
            assert np.array_equal(b.read(path), a.read(path)), path
        assert b.events() == a.events()
        # the training clip at a frame time is the recorded one
        t = int(a.camera_times[50])
        assert np.array_equal(b.audio_clip(t), a.audio_clip(t))


def test_import_cli(cli, round_trip, tmp_path):
    _, lr, _, _ = round_trip
    r = cli("import", "lerobot", lr, tmp_path / "again")
    assert r.code == 0, r.err
    assert "267 from 270 rows" in r.out and "lossless" in r.out
    r = cli("validate", tmp_path / "again")
    assert r.code == 0, r.out + r.err


# ------------------------------------------------------------------------------------------------ no audio


@pytest.fixture(scope="module")
def no_audio(round_trip, tmp_path_factory):
    """The export without htouch's sidecar and report, and with a state named otherwise (as another LeRobot dataset
    holds one), imported: a dataset with no audio streams."""
    _, lr, _, _ = round_trip
    root = tmp_path_factory.mktemp("noaudio")
    src = root / "lr"
    shutil.copytree(lr, src)
    shutil.rmtree(src / "htouch")
    info = json.loads((src / INFO_PATH).read_text())
    info["features"]["observation.state"]["names"] = [f"motor{i}" for i in range(15)]
    (src / INFO_PATH).write_text(json.dumps(info))
    report = import_lerobot(src, root / "ds")
    return Dataset(root / "ds"), report


def test_no_audio_is_first_class(no_audio, cli):
    ds, report = no_audio
    assert not ds.streams.has_audio and ds.streams.audio.channels == 0 and report.audio == "none"
    assert report.state_layout == "joints" and ds.streams.state.n_joints == 15
    assert _errors(ds) == []
    ep = ds.episode(0)
    assert not (ep.path / "audio").exists() and all(s.stream != "audio" for s in episode_arrays(ds.streams))
    assert ep.audio_samples == 0 and len(ep.audio_block_times) == 0
    assert not ep.audio_clip(int(ep.camera_times[10])).any()
    assert np.array_equal(ep.read("state/ee_pose")[0], [0, 0, 0, 0, 0, 0, 1])
    assert [e["kind"] for e in ep.events()] == ["start", "stop", "success"]  # labels from next.success
    r = cli("inspect", ep.path)
    assert r.code == 0 and "audio: none" in r.out, r.err
    r = cli("inspect", ep.path, "--plot", ds.root.parent / "p.png")
    assert r.code == 0 and (ds.root.parent / "p.png").is_file(), r.err
    with pytest.raises(ValueError, match="no microphones"):
        with ds.new_episode() as w:
            w.audio(0, np.zeros((10, 0), np.int16))


def test_audio_methods_refuse_and_vision_only_trains(no_audio, cli, tmp_path):
    from htouch.training.train import TrainConfig, train

    ds, _ = no_audio
    split_dataset(ds, 0.34, 0)
    for args in (("train", ds.root, "--run", tmp_path / "r", "--method", "ours", "--preset", "tiny",
                  "--allow-random-init"),
                 ("spectrogram", ds.root), ("stats", ds.root, "--kind", "avid"),
                 ("pretrain", "av", ds.root, "--out", tmp_path / "av")):
        r = cli(*args)
        assert r.code == 2 and "has no audio streams" in r.err and len(r.err.strip().splitlines()) == 1, r.err
    assert not (tmp_path / "r").exists() and not (tmp_path / "av").exists()
    r = cli("stats", ds.root)
    assert r.code == 0 and Dataset(ds.root).metadata["stats"]["spectrogram"] == {}, r.err
    result = train(TrainConfig(dataset=ds.root, run_dir=tmp_path / "v", method="vision-only", preset="tiny",
                               epochs=1, batch_size=16, stride=2, allow_random_init=True, threads=1))
    assert result is not None and (tmp_path / "v").is_dir()


def test_a_dataset_without_audio_exports_again(no_audio, tmp_path):
    ds, _ = no_audio
    export_lerobot(ds, tmp_path / "lr", vcodec="libx264")
    info = json.loads((tmp_path / "lr" / INFO_PATH).read_text())
    assert "observation.audio" not in info["features"] and info["features"][CAMERA_KEY]["info"]["has_audio"] is False
    back = import_lerobot(tmp_path / "lr", tmp_path / "back")
    assert back.audio == "none" and _errors(Dataset(tmp_path / "back")) == []


def test_crashed_episode_without_microphones_is_salvaged(tmp_path):
    """Repair (htouch validate --repair) handles a rig without audio arrays too."""
    from htouch.dataset.repair import repair_incoming

    streams = StreamSpecs(camera=CameraSpec(width=32, height=24), audio=AudioSpec(channels=0, channel_names=[]))
    ds = Dataset.create(tmp_path / "ds", "zip", streams)
    w = ds.new_episode(flush_interval_s=0.01)
    for k in range(40):
        t = 5_000_000_000 + k * 33_333_333
        w.camera(t, k, np.full((24, 32, 3), k, np.uint8))
        w.state(t, (0, 0, 0, 0, 0, 0, 1), np.zeros(7), 0.01)
        w.action(t, np.zeros(6), 0.5)
    w.abort()
    (res,) = repair_incoming(ds)
    assert res.action == "salvaged" and "0 audio samples" in res.message, res.message
    report = validate_dataset(Dataset(ds.root), [res.path])
    assert not [f for f in report.findings if f.severity == ERROR]

# ------------------------------------------------------------------------------------------------ bad input


def _no_leftovers(parent: Path, name: str) -> bool:
    return not (parent / name).exists() and not list(parent.glob(f".{name}.partial-*"))


def _copy(round_trip, tmp_path) -> Path:
    src = tmp_path / "src"
    shutil.copytree(round_trip[1], src)
    return src


def _refused(cli, src, out: Path, *needles: str) -> None:
    r = cli("import", "lerobot", src, out)
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err, r.err
    for needle in needles:
        assert needle in r.err, r.err
    assert _no_leftovers(out.parent, out.name)


def test_other_codebase_version_is_refused(cli, round_trip, tmp_path):
    src = _copy(round_trip, tmp_path)
    info = json.loads((src / INFO_PATH).read_text())
    info["codebase_version"] = "v2.1"
    (src / INFO_PATH).write_text(json.dumps(info))
    _refused(cli, src, tmp_path / "out", "codebase_version 'v2.1'", "v3.0")


@pytest.mark.parametrize("missing, needle", [
    (DATA_PATH.format(chunk_index=0, file_index=0), "data/chunk-000/file-000.parquet not found"),
    (VIDEO_PATH.format(video_key=CAMERA_KEY, chunk_index=0, file_index=0), "file-000.mp4 not found"),
    ("meta/episodes", "no meta/episodes"),
    (INFO_PATH, "not a LeRobot dataset"),
])
def test_missing_files_are_refused(cli, round_trip, tmp_path, missing, needle):
    src = _copy(round_trip, tmp_path)
    p = src / missing
    shutil.rmtree(p) if p.is_dir() else p.unlink()
    _refused(cli, src, tmp_path / "out", needle)


def test_damaged_files_are_refused(cli, round_trip, tmp_path):
    src = _copy(round_trip, tmp_path)
    video = src / VIDEO_PATH.format(video_key=CAMERA_KEY, chunk_index=0, file_index=0)
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 3])  # cut off: the episodes run out of frames
    _refused(cli, src, tmp_path / "out", "file-000.mp4")
    data = src / DATA_PATH.format(chunk_index=0, file_index=0)
    data.write_bytes(b"PAR1 not parquet")
    _refused(cli, src, tmp_path / "out2", "not a readable parquet file")


def test_existing_out_non_directory_and_action_shape_are_refused(cli, round_trip, tmp_path):
    out = tmp_path / "there"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = cli("import", "lerobot", round_trip[1], out)
    assert r.code == 2 and "already exists" in r.err and [p.name for p in out.iterdir()] == ["keep.txt"]
    f = tmp_path / "file.txt"
    f.write_text("x")
    _refused(cli, f, tmp_path / "out", "is not a directory")
    _refused(cli, tmp_path / "nowhere", tmp_path / "out", "not found")
    src = _copy(round_trip, tmp_path)
    info = json.loads((src / INFO_PATH).read_text())
    info["features"]["action"]["shape"] = [14]
    (src / INFO_PATH).write_text(json.dumps(info))
    _refused(cli, src, tmp_path / "out", "htouch's action is 7 values")


def test_library_raises_dataset_error(round_trip, tmp_path):
    with pytest.raises(DatasetError, match="not a LeRobot dataset"):
        import_lerobot(tmp_path, tmp_path / "out")
    assert _no_leftovers(tmp_path, "out")
