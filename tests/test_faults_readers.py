"""The fault-injection suite, part 2 (part 1 is test_faults.py): every kind of damage to an episode is found by
`htouch validate` and refused by the readers (ls, inspect, train) with one line naming the episode, not a
traceback; symbolic links never lead a command out of the dataset; reads that could run for ever (a FIFO,
/dev/zero, 10^12 rows) end at once; damaged dataset metadata and a full disk are one-line errors; a read-only
dataset works for the commands that only read. `test_number_of_kinds` states how many kinds are covered."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import zarr

import htouch.dataset.codecs  # noqa: F401 - image codecs, for opening frames with zarr directly
from htouch.dataset.schema import INCOMING, QUARANTINE
from htouch.dataset.store import Dataset
from htouch.dataset.writer import lock_path
from htouch.errors import DatasetError
from tests.test_faults import EP0, EP1, one_line, snapshot
from tests.training_helpers import copy_dataset, make_training_dataset

REPO = Path(__file__).resolve().parents[1]
TRAIN = ("--preset", "tiny", "--method", "vision-only", "--allow-random-init", "--epochs", "1", "--batch-size", "16",
         "--frozen-encoders", "--threads", "1")


@pytest.fixture(scope="module")
def _template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults") / "ds"
    make_training_dataset(root, n=3, seconds=4.0, kinds=())  # split: 2 train, 1 validation; stats stored
    return root


@pytest.fixture
def ds(_template, tmp_path) -> Dataset:
    return copy_dataset(_template, tmp_path / "ds")


# ----------------------------------------------------------------------------------------- ways to damage


def group(ep: Path) -> zarr.Group:
    return zarr.open_group(str(ep), mode="r+", zarr_format=2)


def edit_json(path: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def edit_zarray(array: str, **changes):
    return lambda ep: edit_json(ep / array / ".zarray", lambda m: m.update(changes))


def edit_attrs(change: Callable[[dict], None]):
    return lambda ep: edit_json(ep / ".zattrs", lambda a: change(a["htouch_episode"]))


def rewrite(array: str, change: Callable[[np.ndarray], np.ndarray]):
    def apply(ep: Path) -> None:
        arr = group(ep)[array]
        arr[...] = change(arr[...])
    return apply


def recreate(array: str, make: Callable[[np.ndarray], np.ndarray]):
    """Replace an array with another made by zarr (as a foreign tool might)."""
    def apply(ep: Path) -> None:
        g = group(ep)
        data = make(g[array][...])
        del g[array]
        g.create_array(array, shape=data.shape, dtype=data.dtype, chunks=(4096, *data.shape[1:]))[...] = data
    return apply


def chunk(ep: Path, array: str, index: int) -> Path:
    (path,) = [p for p in (ep / array).iterdir() if p.name.split(".")[0] == str(index)]
    return path


def unlink_chunk(array: str, index: int):
    return lambda ep: chunk(ep, array, index).unlink()


def truncate_chunk(array: str, index: int, size: int):
    return lambda ep: os.truncate(chunk(ep, array, index), size)


def swap_rows(a: np.ndarray) -> np.ndarray:
    a[20], a[21] = a[21].copy(), a[20].copy()
    return a


def set_nan(a: np.ndarray) -> np.ndarray:
    a[10, 1] = np.nan
    return a


def block_offsets_past_pcm(a: np.ndarray) -> np.ndarray:
    a[-1] = 10**9
    return a


def shorten(array: str):
    def apply(ep: Path) -> None:
        arr = group(ep)[array]
        arr.resize((arr.shape[0] - 1, *arr.shape[1:]))
    return apply


def grow(path_of: Callable[[Path], Path], extra: int):
    def apply(ep: Path) -> None:
        with open(path_of(ep), "ab") as f:
            f.write(b"\0" * extra)
    return apply


def link_to_copy_outside(array: str, index: int):
    """The chunk replaced by a symbolic link to an identical copy outside the dataset: refused all the same."""
    def apply(ep: Path) -> None:
        f = chunk(ep, array, index)
        outside = ep.parent.parent / "outside" / f.name
        outside.parent.mkdir(exist_ok=True)
        shutil.copy(f, outside)
        f.unlink()
        f.symlink_to(outside)
    return apply


def episode_dir_is_link(ep: Path) -> None:
    outside = ep.parent.parent / "outside" / ep.name
    outside.parent.mkdir(exist_ok=True)
    shutil.move(ep, outside)
    ep.symlink_to(outside, target_is_directory=True)


@dataclass(frozen=True)
class Damage:
    name: str
    apply: Callable[[Path], None]  # damages the episode directory it is given
    check: str  # the validate check that reports it (an error)
    where: str = ""  # in the finding's path


# Damage that the structural checks find: validate reports it, and ls, inspect and train refuse the episode.
REFUSED = [
    Damage("timestamp chunk missing", unlink_chunk("camera/timestamp_ns", 0), "array.chunk", "camera/timestamp_ns"),
    Damage("pcm chunk missing", unlink_chunk("audio/pcm", 1), "array.chunk", "audio/pcm"),
    Damage("frame chunk missing", unlink_chunk("camera/rgb", 7), "array.chunk", "camera/rgb"),
    Damage("timestamp chunk truncated", truncate_chunk("state/timestamp_ns", 0, 10), "array.chunk",
           "state/timestamp_ns"),
    Damage("time stamps out of order", rewrite("state/timestamp_ns", swap_rows), "time.order", "state/timestamp_ns"),
    Damage("time stamps all equal", rewrite("camera/timestamp_ns", lambda t: np.full_like(t, t[0])), "time.order",
           "camera/timestamp_ns"),
    Damage("2-channel audio in a 4-channel rig", recreate("audio/pcm", lambda a: a[:, :2].copy()), "array.shape",
           "audio/pcm"),
    Damage("frames of the wrong size", recreate("camera/rgb", lambda a: a[:, :24, :32].copy()), "array.shape",
           "camera/rgb"),
    Damage("wrong dtype", recreate("state/joints", lambda a: a.astype(np.float32)), "array.dtype", "state/joints"),
    Damage("arrays of one axis differ in length", shorten("action/gripper"), "array.length", "action"),
    Damage("audio blocks past the PCM", rewrite("audio/block_offset", block_offsets_past_pcm), "audio.blocks",
           "audio/block_offset"),
    Damage("NaN in state", rewrite("state/ee_pose", set_nan), "values.nonfinite", "state/ee_pose"),
    Damage("array missing", lambda ep: shutil.rmtree(ep / "teleop/analog"), "array.missing", "teleop/analog"),
    Damage(".zarray with a negative shape", edit_zarray("action/delta_ee", shape=[-5, 6]), "array.missing",
           "action/delta_ee"),
    Damage(".zarray with an unknown compressor", edit_zarray("state/joints", compressor={"id": "nope"}),
           "array.missing", "state/joints"),
    Damage(".zarray not JSON", lambda ep: (ep / "camera/frame_number/.zarray").write_text("{shape"),
           "array.missing", "camera/frame_number"),
    Damage(".zarray with a non-integer shape", edit_zarray("audio/block_overflow", shape="many"), "array.missing",
           "audio/block_overflow"),
    Damage(".zarray chunks beyond the schema", edit_zarray("audio/block_overflow", chunks=[10**12]), "array.layout",
           "audio/block_overflow"),
    Damage("chunk file larger than a chunk can be", grow(lambda ep: chunk(ep, "events/timestamp_ns", 0), 200_000),
           "array.chunk", "events/timestamp_ns"),
    Damage("success label of the wrong type", edit_attrs(lambda a: a.update(success="yes")), "episode.unreadable"),
    Damage("index of the wrong type", edit_attrs(lambda a: a.update(index="zero")), "episode.unreadable"),
    Damage("rig not an object", edit_attrs(lambda a: a.update(rig=[1, 2])), "episode.unreadable"),
    Damage("zero audio rate", edit_attrs(lambda a: a["rig"]["audio"].update(rate_hz=0)), "episode.unreadable"),
    Damage("channel count of the wrong type", edit_attrs(lambda a: a["rig"]["audio"].update(channels="four")),
           "episode.unreadable"),
    Damage("episode attributes not JSON", lambda ep: (ep / ".zattrs").write_text("{not json"),
           "episode.unreadable"),
    Damage("schema version missing", edit_attrs(lambda a: a.pop("schema_version")), "episode.schema"),
    Damage("chunk is a link to an identical copy outside", link_to_copy_outside("camera/frame_number", 0),
           "episode.files", "camera/frame_number/0"),
    Damage("episode directory is a link", episode_dir_is_link, "episode.files"),
    Damage("oversized metadata file", grow(lambda ep: ep / "camera/.zattrs", 2 << 20), "episode.files",
           "camera/.zattrs"),
]


def validate_errors(cli, root: Path, episode: str = EP0) -> tuple[int, list[dict]]:
    r = cli("validate", root, "--json")
    assert "Traceback" not in r.err
    items = json.loads(r.out)
    return r.code, [f for f in items if f["severity"] == "error" and f["episode"] == episode]


@pytest.mark.parametrize("damage", REFUSED, ids=lambda d: d.name)
def test_damage_is_found_and_refused(cli, ds, tmp_path, damage):
    untouched = snapshot(ds.root, only=(EP1,))
    damage.apply(ds.root / EP0)

    code, errors = validate_errors(cli, ds.root)
    assert code == 1
    found = [f for f in errors if f["check"] == damage.check and damage.where in f["path"]]
    assert found, errors
    assert all(one_line(f["message"]) for f in errors)

    r = cli("ls", ds.root)  # the other episodes are listed, the damaged one named on one line
    assert r.code == 2 and one_line(r.err), r.err
    assert f"{EP0} is damaged" in r.err and "htouch validate" in r.err
    assert [line.split("\t")[0] for line in r.out.splitlines()] == ["episode", "1", "2"]  # tab-separated: a pipe

    r = cli("inspect", EP0, "--dataset", ds.root)
    assert r.code == 2 and one_line(r.err) and f"{EP0} is damaged" in r.err, r.err
    assert cli("inspect", EP1, "--dataset", ds.root, "--json").code == 0

    for args in (("split", ds.root), ("spectrogram", ds.root),  # they read every episode
                 ("replay", EP0, "--dataset", ds.root, "--to", "video", tmp_path / "ep.mp4")):
        r = cli(*args)
        assert r.code == 2 and one_line(r.err) and f"{EP0} is damaged" in r.err, (args, r.err)
    assert not (tmp_path / "ep.mp4").exists()

    run = tmp_path / "run"
    r = cli("train", ds.root, "--run", run, *TRAIN)
    assert r.code == 2 and one_line(r.err) and f"{EP0} is damaged" in r.err, r.err
    assert not (run / "model.safetensors").exists()
    assert snapshot(ds.root, only=(EP1,)) == untouched


def test_train_skip_invalid_leaves_the_damaged_episode_out_and_says_so(cli, ds, tmp_path):
    victim = ds.metadata["split"]["train"][0]
    name = f"episode_{victim:06d}"
    stats_before = ds.metadata["stats"]
    (ds.root / name / "audio/pcm/1.0").unlink()
    r = cli("train", ds.root, "--run", tmp_path / "run", *TRAIN, "--skip-invalid")
    assert r.code == 0, r.err
    assert f"left out {name} is damaged: audio/pcm" in r.out
    used = json.loads((tmp_path / "run" / "config.json").read_text())["dataset"]
    assert victim not in used["train_episodes"] + used["val_episodes"] and used["train_episodes"]
    assert Dataset(ds.root).metadata["stats"] == stats_before  # stats without the episode are not stored


# ----------------------------------------------------------------------------------------- validate only


def flip_bits(array: str, index: int):
    def apply(ep: Path) -> None:
        f = chunk(ep, array, index)
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0xFF
        f.write_bytes(bytes(data))
    return apply


# Damage that still decodes or lies in frames, which the readers' cheap checks do not decode: validate finds it
# (checksums, decoding every frame); ls and inspect go on (they read no frames); train, which decodes the frames,
# stops with a line naming the episode.
VALIDATE_ONLY = [
    Damage("frame chunk truncated", truncate_chunk("camera/rgb", 3, 200), "array.chunk", "camera/rgb"),
    Damage("frame chunk with flipped bits", flip_bits("camera/rgb", 5), "checksum.mismatch", "camera/rgb/5"),
    Damage("pcm chunk with flipped bits", flip_bits("audio/pcm", 0), "checksum.mismatch", "audio/pcm/0"),
    Damage("manifest damaged", lambda ep: edit_json(ep / "manifest.json", lambda m: m.update(digest="0")),
           "checksum.manifest", "manifest.json"),
]


@pytest.mark.parametrize("damage", VALIDATE_ONLY, ids=lambda d: d.name)
def test_damage_found_by_validate(cli, ds, damage):
    damage.apply(ds.root / EP0)
    code, errors = validate_errors(cli, ds.root)
    assert code == 1
    assert [f for f in errors if f["check"] == damage.check and damage.where in f["path"]], errors
    assert cli("ls", ds.root).code == 0


def test_train_stops_on_a_frame_that_does_not_decode(cli, ds, tmp_path):
    truncate_chunk("camera/rgb", 3, 200)(ds.root / EP0)
    r = cli("train", ds.root, "--run", tmp_path / "run", *TRAIN)
    assert r.code == 2 and one_line(r.err) and EP0 in r.err and "camera" in r.err, r.err


def test_malformed_event_details_are_shown_not_a_crash(cli, ds):
    arr = group(ds.root / EP0)["events/detail"]
    details = arr[...]
    details[0], details[1] = "[1, 2]", "{not json"
    arr[...] = details
    r = cli("inspect", EP0, "--dataset", ds.root, "--json")
    assert r.code == 0, r.err
    shown = [e["detail"] for e in json.loads(r.out)["events"] if "unparsed" in e["detail"]]
    assert {d["unparsed"] for d in shown} == {"[1, 2]", "{not json"}
    assert cli("inspect", EP0, "--dataset", ds.root).code == 0
    assert cli("ls", ds.root).code == 0


# ----------------------------------------------------------------------------------------- dataset metadata


@pytest.mark.parametrize("change, words", [
    (lambda m: m.update(rig="rig"), "expected an object, got 'rig'"),
    (lambda m: m["rig"]["audio"].update(rate_hz=0), "rig.audio.rate_hz is 0, expected a finite positive number"),
    (lambda m: m["rig"]["camera"].update(width="64"), "rig.camera.width is '64', expected int"),
    (lambda m: m["rig"].update(audio=None), "rig.audio is None, not an object"),
    (lambda m: m.update(split={"train": ["a"], "val": [1]}), "split.train must be a list of episode indices"),
    (lambda m: m.update(split="all"), "split must be a JSON object"),
    (lambda m: m.update(next_episode_index="3"), "next_episode_index must be a whole number"),
], ids=["rig not an object", "zero rate", "width a string", "audio null", "split indices strings", "split a string",
        "next index a string"])
def test_dataset_metadata_of_the_wrong_type(cli, ds, tmp_path, change, words):
    edit_json(ds.root / "htouch.json", change)
    for args in (("validate", ds.root), ("ls", ds.root), ("inspect", EP0, "--dataset", ds.root),
                 ("stats", ds.root), ("train", ds.root, "--run", tmp_path / "run", *TRAIN)):
        r = cli(*args)
        assert r.code == 2 and one_line(r.err), (args, r.err)
        assert "htouch.json" in r.err and words in r.err, (args, r.err)


@pytest.mark.parametrize("command", ["split", "stats"])
def test_full_disk_leaves_the_metadata_as_it_was(cli, ds, monkeypatch, command):
    before = (ds.root / "htouch.json").read_bytes()

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    r = cli(command, ds.root, *(("--kind", "logmel", "--windows", "8") if command == "stats" else ()))
    assert r.code == 2 and one_line(r.err), r.err
    assert "htouch.json" in r.err and "No space left on device" in r.err and "unchanged" in r.err
    assert (ds.root / "htouch.json").read_bytes() == before
    assert sorted(p.name for p in ds.root.iterdir() if p.name.startswith(".htouch.json")) == []


# ----------------------------------------------------------------------------------------- symbolic links


def tree(path: Path) -> dict[str, bytes | str]:
    """Everything below a directory (links as their target), to show nothing there changed."""
    out: dict[str, bytes | str] = {}
    for p in sorted(path.rglob("*")):
        rel = str(p.relative_to(path))
        out[rel] = f"-> {os.readlink(p)}" if p.is_symlink() else (p.read_bytes() if p.is_file() else "dir")
    return out


def crashed_episode(ds: Dataset, frames: int = 40) -> Path:
    w = ds.new_episode(flush_interval_s=0.01)
    for i in range(frames):
        t = 5_000 * 10**9 + i * 10**9 // 30
        w.camera(t, i, np.zeros((48, 64, 3), np.uint8))
        w.state(t, np.r_[np.zeros(6), 1.0], np.zeros(7), 0.05)
        w.action(t + 4_000_000, np.zeros(6), 1.0)
    w.abort()
    return w.path


def test_symlinked_incoming_episode_is_not_repaired(cli, ds, tmp_path):
    path = crashed_episode(ds)
    outside = tmp_path / "outside"
    shutil.move(path, outside)
    path.symlink_to(outside, target_is_directory=True)
    before = tree(outside)
    r = cli("validate", ds.root, "--repair")
    assert r.code == 1 and "refused" in r.out and "symbolic link" in r.out
    assert tree(outside) == before and path.is_symlink()
    assert not (ds.root / path.name).exists()
    r, items = cli("validate", ds.root, "--json"), None
    items = json.loads(r.out)
    assert r.code == 1 and [f for f in items if f["check"] == "dataset.link" and f["path"] == f"{INCOMING}/{path.name}"]


def test_symlinked_quarantine_is_refused(cli, ds, tmp_path):
    never_flushed = ds.new_episode()
    never_flushed.abort()
    outside = tmp_path / "outside"
    outside.mkdir()
    (ds.root / QUARANTINE).symlink_to(outside, target_is_directory=True)
    r = cli("validate", ds.root, "--repair")
    assert "refused" in r.out and "cannot be quarantined" in r.out and "symbolic link" in r.out
    assert list(outside.iterdir()) == [] and never_flushed.path.is_dir()


def test_symlinked_derived_is_refused(cli, ds, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (ds.root / "derived").symlink_to(outside, target_is_directory=True)
    for args in (("spectrogram", ds.root), ("stats", ds.root, "--kind", "logmel", "--windows", "8"),
                 ("train", ds.root, "--run", tmp_path / "run", *TRAIN[:2], "--method", "ours",
                  *TRAIN[4:])):
        r = cli(*args)
        assert r.code == 2 and one_line(r.err) and "derived" in r.err and "symbolic link" in r.err, (args, r.err)
    assert list(outside.iterdir()) == []


def test_symlinked_cache_file_is_rebuilt_not_read(cli, ds, tmp_path):
    assert cli("spectrogram", ds.root).code == 0
    cache = next((ds.root / "derived/spectrograms").glob(f"*/{EP0}"))
    first = next(p for p in (cache / "data").iterdir() if p.name[0].isdigit())
    outside = tmp_path / "outside"
    outside.write_bytes(first.read_bytes())
    first.unlink()
    first.symlink_to(outside)
    r = cli("spectrogram", ds.root)
    assert r.code == 0 and "1 episode(s) computed (1 stale)" in r.out
    assert not first.is_symlink() and outside.read_bytes() == first.read_bytes()


@pytest.mark.parametrize("lock", ["dataset", "episode"])
def test_symlinked_lock_files_create_nothing_elsewhere(cli, ds, tmp_path, lock):
    target = tmp_path / "created-elsewhere"
    if lock == "dataset":
        (ds.root / ".htouch.lock").unlink(missing_ok=True)
        (ds.root / ".htouch.lock").symlink_to(target)
        r = cli("split", ds.root)
        assert r.code == 2 and one_line(r.err) and "symbolic link" in r.err and ".htouch.lock" in r.err
    else:
        path = crashed_episode(ds)
        lock_path(path).symlink_to(target)
        r = cli("validate", ds.root, "--json")  # reported, not followed
        items = json.loads(r.out)
        assert r.code == 1 and [f for f in items if f["check"] == "dataset.link" and f["path"].endswith(".lock")]
        r = cli("validate", ds.root, "--repair")
        assert "refused" in r.out and "symbolic link" in r.out
        assert path.is_dir()
    assert not target.exists()


def test_no_episode_is_written_through_a_symlinked_incoming(ds, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (ds.root / INCOMING).rmdir()  # empty: the writers of the template committed
    (ds.root / INCOMING).symlink_to(outside, target_is_directory=True)
    with pytest.raises(DatasetError, match="symbolic link"):
        ds.new_episode()
    assert list(outside.iterdir()) == []


def test_symlinked_metadata_file_is_refused(cli, ds, tmp_path):
    outside = tmp_path / "htouch.json"
    shutil.move(ds.root / "htouch.json", outside)
    (ds.root / "htouch.json").symlink_to(outside)
    for args in (("validate", ds.root), ("ls", ds.root), ("split", ds.root)):
        r = cli(*args)
        assert r.code == 2 and one_line(r.err) and "symbolic link" in r.err, (args, r.err)


# ----------------------------------------------------------------------------------------- unbounded work


PROBE = textwrap.dedent("""
    import contextlib, io, json, resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))  # a regression fails, it does not eat the machine
    from htouch.cli import main
    for args in json.loads(sys.argv[1]):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(args)
                code = 0
            except SystemExit as e:
                code = e.code
        print(json.dumps({"args": args, "code": code, "out": out.getvalue(), "err": err.getvalue()}), flush=True)
""")


def fifo_chunk(ep: Path) -> None:
    f = chunk(ep, "audio/block_timestamp_ns", 0)
    f.unlink()
    os.mkfifo(f)


def dev_zero(path_of: Callable[[Path], Path]):
    def apply(ep: Path) -> None:
        f = path_of(ep)
        f.unlink()
        f.symlink_to("/dev/zero")
    return apply


UNBOUNDED = [
    Damage(".zarray claiming 10^12 rows", edit_zarray("camera/timestamp_ns", shape=[10**12]), "array.chunk",
           "camera/timestamp_ns"),
    Damage(".zarray claiming 10^12 PCM samples", edit_zarray("audio/pcm", shape=[10**12, 4]), "array.chunk",
           "audio/pcm"),
    Damage("chunk is a link to /dev/zero", dev_zero(lambda ep: chunk(ep, "audio/pcm", 0)), "episode.files",
           "audio/pcm/0"),
    Damage(".zarray is a link to /dev/zero", dev_zero(lambda ep: ep / "state/joints/.zarray"), "episode.files",
           "state/joints/.zarray"),
    Damage("chunk is a FIFO", fifo_chunk, "episode.files", "audio/block_timestamp_ns/0"),
]


def test_unbounded_reads_end_at_once(_template, tmp_path):
    """Each probe in its own dataset; all commands in one child process with a timeout and a memory cap, so a
    regression (a read of /dev/zero, a FIFO that blocks, a loop over 10^12 rows) fails instead of hanging."""
    commands = []
    for k, damage in enumerate(UNBOUNDED):
        root = tmp_path / f"ds{k}"
        shutil.copytree(_template, root)
        damage.apply(root / EP0)
        commands += [["validate", str(root), "--json"], ["ls", str(root)],
                     ["inspect", EP0, "--dataset", str(root)], ["validate", str(root), "--repair", "--json"]]
    fifo_metadata = tmp_path / "fifo"
    shutil.copytree(_template, fifo_metadata)
    (fifo_metadata / "htouch.json").unlink()
    os.mkfifo(fifo_metadata / "htouch.json")
    commands += [["validate", str(fifo_metadata)], ["ls", str(fifo_metadata)]]
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(commands)], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(results) == len(commands)
    for k, damage in enumerate(UNBOUNDED):
        validate, ls, inspect, repair = results[4 * k: 4 * k + 4]
        assert validate["code"] == 1, (damage.name, validate["err"])
        errors = [f for f in json.loads(validate["out"]) if f["severity"] == "error" and f["episode"] == EP0]
        assert [f for f in errors if f["check"] == damage.check and damage.where in f["path"]], (damage.name, errors)
        for r in (ls, inspect):
            assert r["code"] == 2 and one_line(r["err"]) and f"{EP0} is damaged" in r["err"], (damage.name, r)
        assert repair["code"] == 1 and "Traceback" not in repair["err"], (damage.name, repair)
    for r in results[4 * len(UNBOUNDED):]:  # htouch.json is a FIFO
        assert r["code"] == 2 and one_line(r["err"]) and "htouch.json is not a regular file" in r["err"], r


# ----------------------------------------------------------------------------------------- read-only datasets


def listing(root: Path) -> dict[str, tuple]:
    """Every entry below the root with its kind, size and modification time: any write shows."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            st = os.lstat(os.path.join(folder, name))
            out[os.path.relpath(os.path.join(folder, name), root)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


READ_ONLY_COMMANDS = [("validate",), ("validate", "--quick"), ("ls",), ("inspect", EP0, "--dataset"),
                      ("inspect", EP1, "--json", "--dataset")]


def test_commands_that_only_read_write_nothing(cli, ds):
    crashed_episode(ds)  # .incoming is not empty: validate used to create and lock its lock file
    (ds.root / INCOMING / "episode_000003.lock").unlink(missing_ok=True)
    before = listing(ds.root)
    for args in READ_ONLY_COMMANDS:
        r = cli(*args, ds.root)
        assert r.code == 0, (args, r.err)
    assert listing(ds.root) == before


@pytest.fixture
def read_only(ds, tmp_path):
    """The dataset seen through a read-only bind mount (tests run as root, for whom chmod does not bite)."""
    crashed_episode(ds)
    (ds.root / INCOMING / "episode_000003.lock").unlink(missing_ok=True)
    mount = tmp_path / "ro"
    mount.mkdir()
    if subprocess.run(["mount", "--bind", "-o", "ro", str(ds.root), str(mount)], capture_output=True).returncode:
        pytest.skip("no read-only bind mount here (needs root)")
    try:
        if os.access(mount, os.W_OK) and subprocess.run(["touch", str(mount / "x")],
                                                        capture_output=True).returncode == 0:
            pytest.skip("the bind mount is not read-only")
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_read_only_dataset(cli, read_only, tmp_path):
    for args in READ_ONLY_COMMANDS:
        r = cli(*args, read_only)
        assert r.code == 0, (args, r.err)
    r = cli("split", read_only)  # a command that writes says so in one line
    assert r.code == 2 and one_line(r.err) and "Read-only file system" in r.err
    r = cli("train", read_only, "--run", tmp_path / "run", *TRAIN)  # reads the dataset, writes only the run
    assert r.code == 0, r.err
    assert (tmp_path / "run" / "model.safetensors").is_file()

