"""Bad input and crashes: every fault gives a clear one-line finding or error, the right exit code, and no
committed episode is lost or changed by validating or repairing."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

import htouch.dataset.codecs  # noqa: F401 - image codecs, for opening frames with zarr directly
from htouch.dataset.repair import QUARANTINE_NOTE, repair_incoming
from htouch.dataset.schema import INCOMING, QUARANTINE, episode_arrays
from htouch.dataset.store import Dataset
from htouch.dataset.synthetic import SyntheticEpisode, write_synthetic_episode
from htouch.dataset.writer import FLUSHED_FILE, lock_path
from tests.conftest import TINY_RIG, wait_until

NS = 1_000_000_000
EP0, EP1 = "episode_000000", "episode_000001"
REPO = Path(__file__).resolve().parents[1]


def snapshot(root: Path, skip=(), only=None) -> dict[str, str]:
    """sha256 of every file of every committed episode (except those named in skip; only those in only)."""
    out = {}
    for ep in sorted(root.glob("episode_*")):
        if ep.name in skip or (only is not None and ep.name not in only):
            continue
        for f in sorted(ep.rglob("*")):
            if f.is_file():
                out[str(f.relative_to(root))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


@pytest.fixture
def guarded(tiny_ds):
    """tiny_ds plus a check that episode_000001 (the one no test breaks) is byte-identical afterwards."""
    before = snapshot(tiny_ds.root, only=(EP1,))
    assert before
    yield tiny_ds
    assert snapshot(tiny_ds.root, only=(EP1,)) == before


def validate_json(cli, *args):
    r = cli("validate", *args, "--json")
    return r, (json.loads(r.out) if r.out.strip() else None)


def errors_of(items, episode=EP0, checksums=False):
    """The errors of one episode. A fault planted by editing a file also shows as checksum.mismatch of
    that file; these tests are about the other checks, so those are left out unless asked for."""
    return [f for f in items if f["severity"] == "error" and f["episode"] == episode
            and (checksums or not f["check"].startswith("checksum."))]


def one_line(text: str) -> bool:
    return text.strip().count("\n") == 0 and "Traceback" not in text


def chunk_file(ds, array, index):
    """The file of chunk `index` (along time) of an array of episode_000000."""
    (path,) = [p for p in (ds.root / EP0 / array).iterdir() if p.name.split(".")[0] == str(index)]
    return path


def recreate(ds, path, data):
    """Replace an array of episode_000000 with another made by zarr (as a foreign tool might)."""
    g = zarr.open_group(str(ds.root / EP0), mode="r+", zarr_format=2)
    del g[path]
    g.create_array(path, shape=data.shape, dtype=data.dtype, chunks=(4096, *data.shape[1:]))[...] = data


# ----------------------------------------------------------------------------------------- broken files


@pytest.mark.parametrize("array", ["audio/pcm", "camera/rgb"])
def test_truncated_chunk_file(cli, guarded, array):
    f = chunk_file(guarded, array, 1)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    r, items = validate_json(cli, guarded.root)
    assert r.code == 1
    (err,) = [e for e in errors_of(items) if e["check"] == "array.chunk"]
    assert err["path"] == array and one_line(err["message"])
    assert "decode" in err["message"] and ("chunk 1" in err["message"] or "first row 1" in err["message"])
    assert err["time_s"] is not None
    assert cli("validate", guarded.root).code == 1  # and the table output does not crash on it


def test_missing_chunk_file(cli, guarded):
    chunk_file(guarded, "audio/block_overflow", 0).unlink()  # an all-False chunk: still must exist
    r, items = validate_json(cli, guarded.root)
    assert r.code == 1
    (err,) = errors_of(items)
    assert err["check"] == "array.chunk" and err["path"] == "audio/block_overflow"
    assert "chunk file(s) missing" in err["message"]
    (named,) = [f for f in errors_of(items, checksums=True) if f["check"] == "checksum.missing"]
    assert named["path"] == "audio/block_overflow/0"


def test_broken_dataset_metadata_exits_2(cli, tiny_ds):
    before = snapshot(tiny_ds.root)
    (tiny_ds.root / "htouch.json").write_text('{"format": "htouch-dataset", ')
    r = cli("validate", tiny_ds.root)
    assert r.code == 2 and one_line(r.err)
    assert "htouch.json" in r.err and "not valid JSON" in r.err
    assert cli("validate", tiny_ds.root, "--repair").code == 2
    assert snapshot(tiny_ds.root) == before


def test_broken_episode_attributes(cli, guarded):
    (guarded.root / EP0 / ".zattrs").write_text("{not json")
    for target in (guarded.root, EP0):
        r, items = validate_json(cli, target, *(("--dataset", guarded.root) if target == EP0 else ()))
        assert r.code == 1
        (err,) = errors_of(items)
        assert err["check"] == "episode.unreadable" and one_line(err["message"])
        (named,) = [f for f in errors_of(items, checksums=True) if f["check"] == "checksum.mismatch"]
        assert named["path"] == ".zattrs"
    r = cli("validate", guarded.root)
    assert r.code == 1 and "episode.unreadable" in r.out and "Traceback" not in r.out + r.err


def test_wrong_dtype_and_shape(cli, guarded):
    joints = zarr.open_group(str(guarded.root / EP0), mode="r")["state/joints"][...]
    recreate(guarded, "state/joints", joints.astype(np.float32))
    recreate(guarded, "action/delta_ee", np.zeros((joints.shape[0] // 3, 5)))
    r, items = validate_json(cli, guarded.root)
    assert r.code == 1
    checks = {(e["check"], e["path"]): e["message"] for e in errors_of(items)}
    assert "float32" in checks[("array.dtype", "state/joints")]
    assert "(5,)" in checks[("array.shape", "action/delta_ee")]


def test_nan_in_actions(cli, guarded):
    arr = zarr.open_group(str(guarded.root / EP0), mode="r+")["action/delta_ee"]
    data = arr[...]
    data[45, 2] = np.nan
    data[50, 0] = np.inf
    arr[...] = data
    r, items = validate_json(cli, guarded.root)
    assert r.code == 1
    (err,) = errors_of(items)
    assert err["check"] == "values.nonfinite" and err["path"] == "action/delta_ee"
    assert "2 row(s)" in err["message"] and "first row 45" in err["message"]
    assert err["time_s"] == pytest.approx(45 / 30 + 0.004, abs=0.002)


def test_non_monotonic_timestamps(cli, guarded):
    arr = zarr.open_group(str(guarded.root / EP0), mode="r+")["state/timestamp_ns"]
    t = arr[...]
    t[200], t[201] = t[201], t[200]
    arr[...] = t
    r, items = validate_json(cli, guarded.root)
    assert r.code == 1
    (err,) = errors_of(items)
    assert err["check"] == "time.order" and err["path"] == "state/timestamp_ns"
    assert "row 201" in err["message"] and err["time_s"] == pytest.approx(2.01, abs=0.005)


def test_audio_gap_is_a_warning(cli, tmp_path):
    ds = Dataset.create(tmp_path / "d", "zip", TINY_RIG)
    write_synthetic_episode(ds, SyntheticEpisode(duration_s=4.0, audio_gaps=((2.0, 0.3),)))
    r, items = validate_json(cli, ds.root)
    assert r.code == 0
    (gap,) = [f for f in items if f["check"] == "audio.gap"]
    assert gap["severity"] == "warning" and gap["time_s"] == pytest.approx(2.0, abs=0.02)
    assert cli("validate", ds.root, "--strict").code == 1


def test_zero_length_episode(cli, guarded):
    w = guarded.new_episode()
    w.commit(success=True)
    r, items = validate_json(cli, guarded.root)
    assert r.code == 1
    (err,) = errors_of(items, w.name)
    assert err["check"] == "episode.empty"


def test_episode_name_that_does_not_exist(cli, guarded):
    r = cli("validate", "episode_42", "--dataset", guarded.root)
    assert r.code == 2 and one_line(r.err) and "episode 42 not found" in r.err
    r = cli("validate", "nonsense", "--dataset", guarded.root)
    assert r.code == 2 and one_line(r.err) and "not found" in r.err


def test_path_escaping_the_dataset(cli, guarded, tmp_path, monkeypatch):
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(guarded.root)
    for ref in ("../elsewhere", f"{EP0}/../../elsewhere", "../../../../../../etc"):
        r = cli("validate", ref, "--dataset", guarded.root)
        assert r.code == 2 and one_line(r.err), ref
        assert "not an episode directory of the dataset" in r.err or "not found" in r.err


# ----------------------------------------------------------------------------------------- repair


def test_salvage_cuts_before_a_chunk_that_does_not_decode(cli, guarded):
    w = guarded.new_episode(flush_interval_s=0.2)  # a few flushes: each rewrites every stream's last chunk
    rgb = np.random.default_rng(0).integers(0, 255, (48, 64, 3), np.uint8)
    for i in range(90):
        t = 5_000 * NS + i * NS // 30
        w.camera(t, i, rgb)
        w.audio(t, np.random.default_rng(i).normal(0, 300, (1067, 4)).astype(np.int16))
        w.state(t, np.r_[np.zeros(6), 1.0], np.zeros(7), 0.05)
        w.action(t + 4_000_000, np.zeros(6), 1.0)

    def all_flushed() -> bool:  # the writer thread's pace depends on the machine's load: wait for it
        progress = w.path / FLUSHED_FILE
        return progress.is_file() and json.loads(progress.read_text())["lengths"].get("camera/rgb") == 90

    wait_until(all_flushed, timeout=60.0)
    w.abort()
    (w.path / "camera/rgb/70.0.0.0").write_bytes(b"\xff\xd8 broken")
    flushed = json.loads((w.path / FLUSHED_FILE).read_text())["lengths"]
    assert flushed["camera/rgb"] == 90

    (res,) = repair_incoming(guarded)
    assert res.action == "salvaged" and res.path == guarded.root / w.name
    ep = Dataset(guarded.root).episode(w.name)
    assert ep.array("camera/rgb").shape[0] == 70  # cut before the broken frame
    assert ep.array("camera/timestamp_ns").shape[0] == 70  # and its axis group with it
    assert ep.array("state/joints").shape[0] == 90  # other streams keep what was flushed
    assert ep.array("audio/pcm").shape[0] == 90 * 1067
    assert ep.attrs["status"] == "salvaged" and ep.attrs["salvaged"] is True and ep.success is None
    assert not (guarded.root / INCOMING / w.name).exists() and not lock_path(w.path).exists()
    r, items = validate_json(cli, guarded.root)
    assert r.code == 0, items
    assert {f["check"] for f in items if f["episode"] == w.name} >= {"episode.salvaged", "label.missing"}


def test_salvage_makes_audio_blocks_match_the_pcm(guarded):
    w = guarded.new_episode(flush_interval_s=0.01)
    for i in range(100):
        t = 5_000 * NS + i * 10_000_000
        w.audio(t, np.full((320, 4), i, np.int16))
        w.camera(t, i, np.zeros((48, 64, 3), np.uint8))
    w.abort()
    # as if the crash hit while the block arrays were being extended: pcm has 100 blocks, the others fewer
    progress = json.loads((w.path / FLUSHED_FILE).read_text())
    progress["lengths"]["audio/block_timestamp_ns"] = 60
    (w.path / FLUSHED_FILE).write_text(json.dumps(progress))
    (res,) = repair_incoming(guarded)
    assert res.action == "salvaged"
    ep = Dataset(guarded.root).episode(w.name)
    assert ep.array("audio/block_offset").shape[0] == 60
    assert ep.array("audio/block_overflow").shape[0] == 60
    assert ep.array("audio/pcm").shape[0] == 60 * 320  # the PCM of the dropped blocks goes too


def test_unsalvageable_goes_to_quarantine_and_live_is_skipped(cli, guarded):
    never_flushed = guarded.new_episode()
    never_flushed.abort()  # nothing written: no progress file
    no_frames = guarded.new_episode(flush_interval_s=0.01)
    no_frames.state(0, np.r_[np.zeros(6), 1.0], np.zeros(7), 0.05)
    no_frames.abort()
    live = guarded.new_episode()
    try:
        r = cli("validate", guarded.root, "--repair")
        assert "quarantined" in r.out and "skipped" in r.out
        for w, why in ((never_flushed, "no progress file"), (no_frames, "no camera frames")):
            note = json.loads((guarded.root / QUARANTINE / w.name / QUARANTINE_NOTE).read_text())
            assert why in note["reason"] and note["episode"] == w.name
            assert not w.path.exists()
        assert live.path.exists()
        assert Dataset(guarded.root).episode_indices() == [0, 1]
        assert r.code == 0  # the live episode is neither an error nor a warning
    finally:
        live.discard()


def test_repair_refuses_to_overwrite_a_committed_episode(guarded):
    w = guarded.new_episode(flush_interval_s=0.01)
    w.camera(0, 0, np.zeros((48, 64, 3), np.uint8))
    w.abort()
    squatter = guarded.root / w.name
    squatter.mkdir()
    (res,) = repair_incoming(guarded)
    assert res.action == "refused" and w.path.exists() and not any(squatter.iterdir())


# ----------------------------------------------------------------------------------------- kill -9


CHILD = textwrap.dedent("""
    import sys, time
    import numpy as np
    from htouch.dataset.store import Dataset

    NS = 1_000_000_000
    ds = Dataset(sys.argv[1])
    rig = ds.streams
    rng = np.random.default_rng(0)

    def record(w, seconds, sleep):
        due = dict(camera=0.0, action=0.0, teleop=0.0)
        period = dict(camera=1 / rig.camera.rate_hz, action=1 / rig.action.rate_hz, teleop=1 / rig.teleop.rate_hz)
        frame, k = 0, 0
        while seconds is None or k * 0.01 < seconds:
            t = k * 0.01  # one 320-sample audio block and one state per 10 ms
            ns = lambda s: 7_000 * NS + int(round(s * NS))
            w.audio(ns(t), rng.normal(0, 300, (320, rig.audio.channels)).astype(np.int16))
            w.state(ns(t), np.r_[np.zeros(6), 1.0], np.zeros(rig.state.n_joints), 0.05)
            if t >= due["camera"]:
                rgb = rng.integers(0, 255, (rig.camera.height, rig.camera.width, 3), np.uint8)
                w.camera(ns(due["camera"]), frame, rgb)
                frame += 1
                due["camera"] += period["camera"]
            if t >= due["action"]:
                w.action(ns(due["action"] + 0.004), rng.normal(0, 0.001, 6), 1.0)
                due["action"] += period["action"]
            if t >= due["teleop"]:
                w.teleop(ns(due["teleop"]), np.eye(4), np.zeros(len(rig.teleop.button_names), bool),
                         np.zeros(len(rig.teleop.analog_names), np.float32))
                due["teleop"] += period["teleop"]
            k += 1
            time.sleep(sleep)

    w = ds.new_episode(flush_interval_s=0.05, blocking=True)
    record(w, 3.0, 0.0)
    w.commit(success=True)
    print("committed", w.name, flush=True)
    w = ds.new_episode(flush_interval_s=0.05, blocking=True)
    print("writing", w.name, flush=True)
    record(w, None, 0.002)  # until killed
""")


def test_kill_9_while_writing_then_repair(cli, tiny_ds, tmp_path):
    script = tmp_path / "writer_child.py"
    script.write_text(CHILD)
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])  # keeps the network guard's entry
    proc = subprocess.Popen([sys.executable, str(script), str(tiny_ds.root)], stdout=subprocess.PIPE, text=True,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": path})
    try:
        assert proc.stdout.readline().split() == ["committed", "episode_000002"]
        assert proc.stdout.readline().split() == ["writing", "episode_000003"]
        progress_file = tiny_ds.root / INCOMING / "episode_000003" / FLUSHED_FILE
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # a few flushes with over 3 s of recorded time
            try:
                if json.loads(progress_file.read_text())["lengths"]["camera/rgb"] >= 100:
                    break
            except (FileNotFoundError, ValueError):
                pass
            time.sleep(0.02)
        else:
            pytest.fail("the child never flushed enough")
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    committed = snapshot(tiny_ds.root)
    assert {Path(k).parts[0] for k in committed} == {EP0, EP1, "episode_000002"}
    flushed = json.loads(progress_file.read_text())["lengths"]

    # before repair: reported as incomplete (a warning), the committed episodes are clean
    r, items = validate_json(cli, tiny_ds.root)
    assert r.code == 0, [f for f in items if f["severity"] == "error"]
    (inc,) = [f for f in items if f["check"] == "dataset.incomplete"]
    assert inc["episode"] == "episode_000003" and "--repair" in inc["message"]
    assert not [f for f in items if f["severity"] == "error"]

    r = cli("validate", tiny_ds.root, "--repair")
    assert r.code == 0, r.out
    assert "salvaged episode_000003" in r.out

    ds = Dataset(tiny_ds.root)
    assert ds.episode_indices() == [0, 1, 2, 3]
    ep = ds.episode(3)
    assert ep.attrs["status"] == "salvaged" and ep.attrs["salvaged"] is True and ep.success is None
    for spec in episode_arrays(ds.streams):  # exactly up to the last flush
        assert ep.array(spec.path).shape[0] == flushed[spec.path], spec.path
    n = flushed["camera/rgb"]
    np.testing.assert_array_equal(ep.read("camera/frame_number"), np.arange(n))
    assert ep.array("audio/pcm").shape[0] == 320 * flushed["audio/block_offset"]
    assert not (ds.root / INCOMING / "episode_000003").exists()
    assert ep.attrs["lengths"]["camera/rgb"] == n

    r, items = validate_json(cli, ds.root)
    assert r.code == 0, items
    assert not [f for f in items if f["check"] == "dataset.incomplete"]
    assert {f["check"] for f in items if f["episode"] == "episode_000003"} == {"episode.salvaged", "label.missing"}
    assert snapshot(ds.root, skip=("episode_000003",)) == committed  # byte-identical
