"""`htouch pack`: a committed episode as one zip file that every reader reads as it read the directory; a damaged
packed file refused in one line; a kill at any step of a pack leaves the episode readable, and a second pack
finishes the job."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from htouch.dataset import crashpoints
from htouch.dataset.episode import SampleParams
from htouch.dataset.manifest import MANIFEST_FILE
from htouch.dataset.packed import ZipPath, interrupted_packs, pack_episode
from htouch.dataset.schema import episode_arrays
from htouch.dataset.split import split_dataset
from htouch.dataset.store import Dataset
from htouch.dataset.validate import ERROR, validate_dataset
from htouch.errors import DamagedEpisodeError, DatasetError
from htouch.training.data import DataSpec, PolicySamples, plan_dataset
from tests.conftest import tiny_dataset
from tests.test_commit_crash import CRASHED, run_child

SPEC = DataSpec(image_size=32, horizon=5, audio_kind="avid")


@pytest.fixture(scope="module")
def _pair(tmp_path_factory) -> tuple[Path, Path]:
    """The same 2-episode dataset twice (split, stats stored): as recorded, and packed by `htouch pack`."""
    base = tmp_path_factory.mktemp("pack")
    ds = tiny_dataset(base / "plain", n=2, seconds=3.0)
    split_dataset(ds, 0.5, seed=0)
    plan_dataset(Dataset(ds.root), SPEC)
    shutil.copytree(ds.root, base / "packed")
    from htouch.cli import main

    with pytest.raises(SystemExit) as e:
        main(["pack", str(base / "packed")])
    assert e.value.code in (0, None)
    return base / "plain", base / "packed"


@pytest.fixture
def packed_ds(_pair, tmp_path) -> Dataset:
    shutil.copytree(_pair[1], tmp_path / "packed")
    return Dataset(tmp_path / "packed")


@pytest.fixture
def plain_ds(_pair, tmp_path) -> Dataset:
    shutil.copytree(_pair[0], tmp_path / "plain")
    return Dataset(tmp_path / "plain")


def test_a_packed_episode_is_one_file_holding_the_same_arrays_and_attributes(_pair):
    plain, packed = Dataset(_pair[0]), Dataset(_pair[1])
    assert sorted(p.name for p in packed.root.iterdir() if p.name.startswith("episode_")) == [
        "episode_000000.zip", "episode_000001.zip"]
    assert packed.episode_indices() == plain.episode_indices() == [0, 1]
    for i in (0, 1):
        a, b = plain.episode(i), packed.episode(i)
        assert isinstance(b.path, ZipPath) and b.name == a.name
        assert a.attrs == b.attrs
        for spec in episode_arrays(a.streams):
            assert np.array_equal(a.read(spec.path), b.read(spec.path)), spec.path
        t = int(a.sample_times(SampleParams(horizon=5))[10])
        sa, sb = a.sample(t, SampleParams(horizon=5)), b.sample(t, SampleParams(horizon=5))
        assert np.array_equal(sa.frames, sb.frames) and np.array_equal(sa.audio, sb.audio)
        # the members are the directory's files, byte for byte, and the manifest lists every one but itself
        with zipfile.ZipFile(packed.root / f"{a.name}.zip") as zf:
            names = set(zf.namelist())
            assert all(zf.getinfo(n).compress_type == zipfile.ZIP_STORED for n in names)
            manifest = json.loads(zf.read(MANIFEST_FILE))
        assert names - {MANIFEST_FILE} == set(manifest["files"])


def test_every_reading_command_answers_the_same_packed_and_unpacked(_pair, cli):
    plain, packed = _pair
    for args in (["ls", "--json"], ["validate", "--json"], ["stats", "--json"]):
        a, b = cli(*args[:1], plain, *args[1:]), cli(*args[:1], packed, *args[1:])
        assert a.code == b.code == 0, (args, a.err, b.err)
        ja, jb = json.loads(a.out), json.loads(b.out)
        if args[0] == "stats":
            ja.pop("computed"), jb.pop("computed")
        assert ja == jb, args
    a = json.loads(cli("inspect", "episode_1", "--dataset", plain, "--json").out)
    b = json.loads(cli("inspect", str(packed / "episode_000001.zip"), "--json").out)
    assert b.pop("path").endswith("episode_000001.zip") and a.pop("path").endswith("episode_000001")
    assert a == b


def test_training_samples_and_spectrogram_caches_are_the_same(plain_ds, packed_ds, cli):
    assert cli("spectrogram", packed_ds.root, "--kind", "avid").code == 0
    assert cli("spectrogram", plain_ds.root, "--kind", "avid").code == 0
    out = []
    for ds in (plain_ds, packed_ds):
        plan = plan_dataset(ds, SPEC)
        samples = PolicySamples(ds, plan.train, SPEC, plan.action_normalization(), preload_mb=0)
        assert samples.spectrogram_provenance == {"cache": 1, "computed": 0}
        out.append([samples[i] for i in range(0, len(samples), 7)])
    for a, b in zip(*out, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    # a DataLoader worker gets the episode by pickle and reads it again from the packed file
    ep = pickle.loads(pickle.dumps(packed_ds.episode(0)))
    assert np.array_equal(ep.read("camera/rgb"), plain_ds.episode(0).read("camera/rgb"))


def test_export_reads_packed_episodes(plain_ds, packed_ds, cli, tmp_path):
    import zarr

    for ds, out in ((plain_ds, tmp_path / "a.zarr.zip"), (packed_ds, tmp_path / "b.zarr.zip")):
        r = cli("export", ds.root, out, "--format", "dp")
        assert r.code == 0, r.err
    a = zarr.open_group(zarr.storage.ZipStore(tmp_path / "a.zarr.zip", mode="r"), mode="r")
    b = zarr.open_group(zarr.storage.ZipStore(tmp_path / "b.zarr.zip", mode="r"), mode="r")
    for key in ("data/camera0_rgb", "data/action", "data/mic_0", "meta/episode_ends"):
        assert np.array_equal(a[key][:], b[key][:]), key


def test_packing_twice_or_named_episodes_and_deleting_a_packed_one(plain_ds, cli):
    r = cli("pack", plain_ds.root, "episode_1")
    assert r.code == 0 and "packed episode_000001" in r.out
    assert (plain_ds.root / "episode_000000").is_dir() and not (plain_ds.root / "episode_000001").exists()
    r = cli("pack", plain_ds.root)
    assert r.code == 0 and "episode_000001 is packed already" in r.out and "packed episode_000000" in r.out
    assert cli("pack", plain_ds.root, "episode_7").code == 2
    plain_ds.delete_episode(1)
    assert plain_ds.episode_indices() == [0]


def test_an_episode_recorded_before_checksums_gets_a_manifest_in_its_packed_file(plain_ds, cli):
    ep_dir = plain_ds.root / "episode_000000"
    (ep_dir / MANIFEST_FILE).unlink()
    attrs = json.loads((ep_dir / ".zattrs").read_text())
    del attrs["htouch_episode"]["manifest"]
    (ep_dir / ".zattrs").write_text(json.dumps(attrs))
    assert "no checksum manifest" in pack_episode(plain_ds, 0)
    findings = [f for f in validate_dataset(Dataset(plain_ds.root)).findings if f.episode == "episode_000000"]
    assert not [f for f in findings if f.severity == ERROR or f.check.startswith("checksum")]


def test_a_damaged_episode_is_not_packed(plain_ds, cli):
    chunk = plain_ds.root / "episode_000000" / "camera" / "rgb" / "3.0.0.0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    r = cli("pack", plain_ds.root)
    assert r.code == 2
    lines = [x for x in r.err.splitlines() if x.strip()]
    assert len(lines) == 1 and "episode_000000 does not match its checksum manifest" in lines[0]
    assert "camera/rgb/3.0.0.0" in lines[0]
    assert (plain_ds.root / "episode_000000").is_dir() and not (plain_ds.root / "episode_000000.zip").exists()
    assert (plain_ds.root / "episode_000001.zip").is_file()  # the sound one is packed
    assert not list(plain_ds.root.glob(".*packing"))


def _truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def test_a_truncated_packed_file_is_refused_in_one_line(packed_ds, cli):
    _truncate(packed_ds.root / "episode_000001.zip", 0.6)
    r = cli("inspect", "episode_1", "--dataset", packed_ds.root)
    assert r.code == 2 and "Traceback" not in r.err
    lines = [x for x in r.err.splitlines() if x.strip()]
    assert len(lines) == 1 and "episode_000001 is damaged" in lines[0] and "not a readable zip" in lines[0]
    r = cli("ls", packed_ds.root, "--json")
    assert r.code == 2 and [row["episode"] for row in json.loads(r.out)] == [0]
    r = cli("validate", packed_ds.root, "--json")
    findings = [f for f in json.loads(r.out) if f["episode"] == "episode_000001"]
    assert r.code == 1 and [f["check"] for f in findings] == ["episode.packed"]
    with pytest.raises(DamagedEpisodeError):
        Dataset(packed_ds.root).episode(1)


def test_a_changed_byte_in_a_member_is_named_by_validate(packed_ds, cli):
    path = packed_ds.root / "episode_000000.zip"
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("audio/pcm/0.0")
    data = bytearray(path.read_bytes())
    data[info.header_offset + 30 + len(info.filename) + info.file_size // 2] ^= 0x01
    path.write_bytes(bytes(data))
    r = cli("validate", packed_ds.root, "--json")
    bad = [(f["check"], f["path"]) for f in json.loads(r.out) if f["severity"] == ERROR]
    assert r.code == 1 and ("checksum.mismatch", "audio/pcm/0.0") in bad


def _rezip(src: Path, out: Path, change) -> None:
    """A copy of a packed file with each member's ZipInfo and bytes passed through change(info, data)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            info, data = change(info, data)
            zout.writestr(info, data)


@pytest.mark.parametrize("what", ["deflated", "traversal", "link"])
def test_unsound_members_are_refused(packed_ds, tmp_path, what):
    path = packed_ds.root / "episode_000000.zip"

    def change(info, data):
        if info.filename == "camera/.zgroup":
            if what == "deflated":
                info.compress_type = zipfile.ZIP_DEFLATED
            elif what == "traversal":
                info.filename = "../camera/.zgroup"
            else:
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
        return info, data

    _rezip(path, tmp_path / "x.zip", change)
    os.replace(tmp_path / "x.zip", path)
    with pytest.raises(DamagedEpisodeError, match="camera/.zgroup"):
        Dataset(packed_ds.root).episode(0)


def test_a_packed_file_that_is_a_link_is_not_followed(packed_ds, tmp_path):
    path = packed_ds.root / "episode_000000.zip"
    os.replace(path, tmp_path / "elsewhere.zip")
    path.symlink_to(tmp_path / "elsewhere.zip")
    with pytest.raises(DatasetError, match="symbolic link"):
        Dataset(packed_ds.root).episode(0)
    report = validate_dataset(Dataset(packed_ds.root))
    assert any(f.check == "dataset.link" for f in report.findings)


@pytest.mark.parametrize("crash_at", crashpoints.PACK)
def test_a_kill_at_any_step_of_a_pack_leaves_the_episode_readable(plain_ds, crash_at, cli):
    expected = plain_ds.episode(0).read("camera/rgb")
    status, reached = run_child(lambda: pack_episode(Dataset(plain_ds.root), 0), crash_at)
    assert status == CRASHED and reached == list(crashpoints.PACK[:crashpoints.PACK.index(crash_at) + 1])
    ds = Dataset(plain_ds.root)
    assert ds.episode_indices() == [0, 1]
    assert np.array_equal(ds.episode(0).read("camera/rgb"), expected)
    report = validate_dataset(ds)
    assert report.errors == 0, [f for f in report.findings if f.severity == ERROR]
    left = interrupted_packs(ds.root)
    assert [f.check for f in report.findings if f.check == "episode.pack"] == ["episode.pack"] * len(left)
    r = cli("pack", ds.root)  # finishes (or redoes) the pack
    assert r.code == 0, r.err
    assert not interrupted_packs(ds.root)
    assert sorted(p.name for p in ds.root.iterdir() if not p.name.startswith(".")) == [
        "episode_000000.zip", "episode_000001.zip", "htouch.json"]
    assert not [p for p in (ds.root / ".incoming").iterdir()]
    assert np.array_equal(Dataset(ds.root).episode(0).read("camera/rgb"), expected)
    assert not [f for f in validate_dataset(Dataset(ds.root)).findings if f.check.startswith(("checksum", "episode"))]


def test_pack_refuses_a_url_and_a_missing_dataset(cli, tmp_path):
    for target, words in (("s3://bucket/ds", "URL"), (tmp_path / "nope", "no dataset")):
        r = cli("pack", target)
        lines = [x for x in r.err.splitlines() if x.strip()]
        assert r.code == 2 and len(lines) == 1 and words in lines[0], r.err


def test_members_with_extra_fields_read_the_same(packed_ds, tmp_path):
    """A zip from another tool (here: an extra field in every local header) reads as htouch's own."""
    path = packed_ds.root / "episode_000000.zip"
    expected = Dataset(packed_ds.root).episode(0).read("audio/pcm")

    def change(info, data):
        info.extra = b"\xfe\xca\x04\x00abcd"  # one extra block: id 0xcafe, 4 bytes
        return info, data

    _rezip(path, tmp_path / "x.zip", change)
    os.replace(tmp_path / "x.zip", path)
    assert np.array_equal(Dataset(packed_ds.root).episode(0).read("audio/pcm"), expected)
