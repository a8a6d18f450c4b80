"""The checksum manifest: written at commit and at repair, verified by `htouch validate`, which names every
damaged, missing and unlisted file; `--quick` skips the hashing; an episode from before manifests warns."""

import json
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import xxhash

from htouch.dataset.manifest import MANIFEST_FILE, episode_files, manifest_bytes, write_manifest
from htouch.dataset.repair import repair_incoming
from htouch.dataset.store import Dataset
from htouch.dataset.validate import ChecksumOptions, chunk_index, stored_chunks, validate_dataset
from tests.test_faults import EP0, EP1, guarded, validate_json  # noqa: F401 - guarded is a fixture

FRAME = "camera/rgb/50.0.0.0"
PCM = "audio/pcm/0.0"
TIMES = "camera/timestamp_ns/0"


def flip_bits(path: Path, n: int = 8, lo: int = 0, hi: int | None = None, jpeg: bool = False) -> None:
    """Flip the lowest bit of n bytes spread evenly over [lo, hi) of a file. jpeg: skip bytes where a flip
    would make or break a JPEG marker (0xFF, 0xFE, a byte after 0xFF), so that the image still decodes."""
    data = bytearray(path.read_bytes())
    hi = len(data) if hi is None else hi
    for i in np.linspace(lo, hi - 1, n + 2).astype(int)[1:-1]:
        while jpeg and (data[i] in (0xFE, 0xFF) or data[i - 1] == 0xFF):
            i += 1
        data[i] ^= 1
    path.write_bytes(bytes(data))


def jpeg_scan_start(data: bytes) -> int:
    """Offset of the entropy-coded data of a baseline JPEG (after the start-of-scan header)."""
    sos = data.index(b"\xff\xda")
    return sos + 2 + int.from_bytes(data[sos + 2: sos + 4], "big")


def checksum_findings(items, episode=EP0):
    return {(f["check"], f["path"]): f for f in items if f["episode"] == episode and f["check"].startswith("checksum.")}


def ep0(ds) -> Path:
    return ds.root / EP0


# ----------------------------------------------------------------------------------------- the manifest


def test_commit_writes_a_manifest_of_every_file(tiny_ds):
    path = ep0(tiny_ds)
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    assert manifest["format"] == "htouch-manifest" and manifest["algorithm"] == "xxh3-128"
    assert sorted(manifest["files"]) == episode_files(path)
    assert {".zattrs", ".zgroup", "camera/rgb/.zarray", "camera/rgb/0.0.0.0", PCM} <= set(manifest["files"])
    assert MANIFEST_FILE not in manifest["files"] and ".flushed.json" not in manifest["files"]
    assert tiny_ds.episode(0).attrs["manifest"] == MANIFEST_FILE


def test_a_reader_without_htouch_can_verify_it_as_documented(tiny_ds):
    """docs/format.md: each file's XXH3-128 (what `xxh128sum` prints), and the digest of the lines
    `<hash> <size> <path>` sorted by path; uses only json and xxhash."""
    path = ep0(tiny_ds)
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    lines = ""
    for rel in sorted(manifest["files"]):
        entry = manifest["files"][rel]
        data = (path / rel).read_bytes()
        assert len(data) == entry["size"] and xxhash.xxh3_128_hexdigest(data) == entry["hash"], rel
        lines += f"{entry['hash']} {entry['size']} {rel}\n"
    assert xxhash.xxh3_128_hexdigest(lines.encode()) == manifest["digest"]


def test_clean_dataset_has_no_checksum_findings_and_progress_counts_every_byte(tiny_ds):
    hashed = []
    report = validate_dataset(tiny_ds, checksums=ChecksumOptions(progress=hashed.append))
    assert not [f for f in report.findings if f.check.startswith("checksum.")]
    assert sum(hashed) == manifest_bytes(ep0(tiny_ds)) + manifest_bytes(tiny_ds.root / EP1) > 0


# ----------------------------------------------------------------------------------------- damage, named


def damage_truncated_jpeg(path):
    f = path / FRAME
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return [("checksum.mismatch", FRAME)]


def damage_jpeg_bits(path):
    f = path / FRAME
    flip_bits(f, 8, lo=jpeg_scan_start(f.read_bytes()), hi=f.stat().st_size - 8, jpeg=True)
    imagecodecs.jpeg8_decode(f.read_bytes())  # still decodes: only the checksum sees it
    return [("checksum.mismatch", FRAME)]


def damage_pcm_bits(path):
    flip_bits(path / PCM, 8, lo=16)  # past the Blosc header
    return [("checksum.mismatch", PCM)]


def damage_timestamp_bits(path):
    flip_bits(path / TIMES, 8, lo=16)
    return [("checksum.mismatch", TIMES)]


def damage_zarray(path):
    f = path / "audio/pcm/.zarray"
    f.write_text(f.read_text().replace('"clevel": 3', '"clevel": 2'))  # still valid metadata
    return [("checksum.mismatch", "audio/pcm/.zarray")]


def damage_label(path):
    f = path / ".zattrs"
    f.write_text(f.read_text().replace('"success": true', '"success": false'))  # a silently changed label
    return [("checksum.mismatch", ".zattrs")]


def damage_array_attributes(path):
    f = path / "state/joints/.zattrs"
    flip_bits(f, 1, lo=f.stat().st_size // 2)
    return [("checksum.mismatch", "state/joints/.zattrs")]


def damage_missing_chunk_with_partial(path):
    f = path / FRAME
    f.rename(path / "camera/rgb/50.0.0.4d2e9bba7c2f4c3b.partial")  # what a write a crash interrupted leaves
    return [("checksum.missing", FRAME), ("checksum.extra", "camera/rgb/50.0.0.4d2e9bba7c2f4c3b.partial")]


def damage_extra_file(path):
    (path / "camera/notes.txt").write_text("not part of the recording")
    return [("checksum.extra", "camera/notes.txt")]


DAMAGE = {f.__name__.removeprefix("damage_"): f for f in (
    damage_truncated_jpeg, damage_jpeg_bits, damage_pcm_bits, damage_timestamp_bits, damage_zarray, damage_label,
    damage_array_attributes, damage_missing_chunk_with_partial, damage_extra_file)}


@pytest.mark.parametrize("kind", DAMAGE)
def test_damage_is_detected_and_the_file_named(cli, guarded, kind):  # noqa: F811
    expected = DAMAGE[kind](ep0(guarded))
    r, items = validate_json(cli, guarded.root)
    found = checksum_findings(items)
    assert set(found) == set(expected)
    for check, path in expected:
        assert found[(check, path)]["severity"] == ("warning" if check == "checksum.extra" else "error")
    errors = [c for c, _ in expected if c != "checksum.extra"]
    assert r.code == (1 if errors else 0)
    if kind in ("truncated_jpeg", "jpeg_bits", "missing_chunk_with_partial"):  # placed in time by its row
        assert found[expected[0]]["time_s"] == pytest.approx(50 / 30, abs=0.1)


def test_every_damaged_file_is_named(cli, guarded):  # noqa: F811
    path = ep0(guarded)
    frames = [f"camera/rgb/{i}.0.0.0" for i in (3, 17, 60)]
    for f in frames:
        flip_bits(path / f, 1, lo=jpeg_scan_start((path / f).read_bytes()))
    r, items = validate_json(cli, guarded.root)
    assert r.code == 1
    assert sorted(p for c, p in checksum_findings(items) if c == "checksum.mismatch") == sorted(frames)


def test_partial_file_is_not_counted_as_the_chunk(guarded):  # noqa: F811
    array = ep0(guarded) / "camera/rgb"
    (array / "50.0.0.0").rename(array / "50.0.0.0a1b2.partial")
    assert chunk_index("50.0.0.0") == 50 and chunk_index("50.0.0.0a1b2.partial") is None
    assert 50 not in stored_chunks(array) and 49 in stored_chunks(array)


def test_quick_checks_presence_and_sizes_but_does_not_hash(cli, guarded):  # noqa: F811
    damage_jpeg_bits(ep0(guarded))
    r, items = validate_json(cli, guarded.root, "--quick")
    assert r.code == 0 and not checksum_findings(items)
    damage_truncated_jpeg(ep0(guarded))
    r, items = validate_json(cli, guarded.root, "--quick")
    assert r.code == 1 and set(checksum_findings(items)) == {("checksum.mismatch", FRAME)}
    assert "bytes" in checksum_findings(items)[("checksum.mismatch", FRAME)]["message"]


# ----------------------------------------------------------------------------------------- the manifest itself


def flip_hex(text: str) -> str:
    return text[:-1] + ("0" if text[-1] != "0" else "1")


MANIFEST_DAMAGE = {  # each from the intact manifest; what validate must say
    "hash digit": (lambda m: m["files"][FRAME].update(hash=flip_hex(m["files"][FRAME]["hash"])), "digest"),
    "size": (lambda m: m["files"][FRAME].update(size=m["files"][FRAME]["size"] + 1), "digest"),
    "listed path": (lambda m: m["files"].update({FRAME + "x": m["files"].pop(FRAME)}), "digest"),
    "digest": (lambda m: m.update(digest=flip_hex(m["digest"])), "digest"),
    "algorithm": (lambda m: m.update(algorithm="md5"), "not supported"),
}


@pytest.mark.parametrize("kind", [*MANIFEST_DAMAGE, "truncated"])
def test_damaged_manifest_is_an_error_not_a_damaged_file(cli, guarded, kind):  # noqa: F811
    f = ep0(guarded) / MANIFEST_FILE
    if kind == "truncated":
        f.write_text(f.read_text()[:100])
        said = "not valid JSON"
    else:
        manifest = json.loads(f.read_text())
        damage, said = MANIFEST_DAMAGE[kind]
        damage(manifest)
        f.write_text(json.dumps(manifest))
    r, items = validate_json(cli, guarded.root)
    (finding,) = checksum_findings(items).values()  # no data file is blamed
    assert r.code == 1 and finding["check"] == "checksum.manifest" and finding["path"] == MANIFEST_FILE
    assert said in finding["message"] and "cannot be verified" in finding["message"]


def test_deleted_manifest_is_an_error(cli, guarded):  # noqa: F811
    (ep0(guarded) / MANIFEST_FILE).unlink()
    r, items = validate_json(cli, guarded.root)
    (finding,) = checksum_findings(items).values()
    assert r.code == 1 and finding["check"] == "checksum.manifest" and "missing" in finding["message"]


def test_episode_from_before_manifests_warns_no_checksums(cli, guarded):  # noqa: F811
    """An older htouch wrote no manifest and no `manifest` attribute: a warning, and validate still passes."""
    path = ep0(guarded)
    (path / MANIFEST_FILE).unlink()
    attrs = json.loads((path / ".zattrs").read_text())
    del attrs["htouch_episode"]["manifest"]
    (path / ".zattrs").write_text(json.dumps(attrs))
    r, items = validate_json(cli, guarded.root)
    assert r.code == 0, items
    (finding,) = checksum_findings(items).values()
    assert finding["check"] == "checksum.none" and finding["severity"] == "warning"
    assert "no checksums" in finding["message"]
    r = cli("validate", guarded.root)
    assert "no checksums" in r.out and r.code == 0


def test_writer_without_checksums_writes_no_manifest(tiny_ds):
    w = tiny_ds.new_episode(checksums=False)
    w.camera(0, 0, np.zeros((48, 64, 3), np.uint8))
    path = w.commit(success=None)
    assert not (path / MANIFEST_FILE).exists() and "manifest" not in tiny_ds.episode(w.index).attrs


# ----------------------------------------------------------------------------------------- repair


def test_salvage_writes_a_manifest_that_verifies(guarded):  # noqa: F811
    w = guarded.new_episode(flush_interval_s=0.01)
    for i in range(40):
        w.camera(5_000_000_000 + i * 33_333_333, i, np.full((48, 64, 3), i, np.uint8))
    w.abort()
    # what writes a crash interrupted leave: a chunk, the progress file, a manifest
    (w.path / "camera/rgb/3.0.0.deadbeef.partial").write_bytes(b"half a chunk")
    (w.path / ".flushed.json.tmp4242").write_text('{"lengths": ')
    (w.path / ".manifest.json.tmp4242").write_text('{"format": ')
    (res,) = repair_incoming(guarded)
    assert res.action == "salvaged"
    report = validate_dataset(Dataset(guarded.root), [res.path])
    assert not [f for f in report.findings if f.check.startswith("checksum.")]
    assert not list(res.path.rglob("*.partial")) and not list(res.path.glob(".*.tmp*"))
    assert json.loads((res.path / MANIFEST_FILE).read_text())["files"].keys() == set(episode_files(res.path))


def test_salvage_cuts_before_a_chunk_that_differs_from_the_manifest(guarded):  # noqa: F811
    """A crash after the manifest was written, then damage that still decodes: repair cuts before it."""
    w = guarded.new_episode(flush_interval_s=0.01)
    for i in range(40):
        w.camera(5_000_000_000 + i * 33_333_333, i, np.random.default_rng(i).integers(0, 255, (48, 64, 3), np.uint8))
    w.abort()
    write_manifest(w.path)
    f = w.path / "camera/rgb/30.0.0.0"
    flip_bits(f, 8, lo=jpeg_scan_start(f.read_bytes()), hi=f.stat().st_size - 2)
    (res,) = repair_incoming(guarded)
    assert res.action == "salvaged"
    assert Dataset(guarded.root).episode(w.index).array("camera/rgb").shape[0] == 30
