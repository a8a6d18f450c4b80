"""`htouch validate --repair`: salvage or quarantine the episodes a crashed writer left in .incoming.

The writer records after every flush how many rows of each array are safely on disk (`.flushed.json`).
Salvage keeps exactly that much, and less where it must: arrays sharing a time axis are cut to the shortest,
audio blocks to the PCM they cover (and the PCM to the blocks kept), and every chunk kept is decoded first,
cutting before any that is missing, does not decode or differs from the episode's manifest. The episode is
then committed under its own name with status "salvaged", the success label it had (the writer stores the
label before its final flush) and a new checksum manifest. What cannot be salvaged goes to .quarantine/ with
a note.

A commit that a crash interrupted after the final flush (the attributes say "committed") is completed as it
was meant: nothing cut, status and label kept. Every step of a repair is safe to be killed too: the lengths
are in the attributes before `.flushed.json` goes, so the next repair finds the same plan (see crashpoints.py).

Only .incoming is touched, and only episodes whose lock no live writer holds (the lock is held during the
repair, so a writer cannot start on it meanwhile). Committed episodes are never opened for writing.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

import htouch.dataset.codecs  # noqa: F401 - registers the image codecs
from htouch.dataset import crashpoints
from htouch.dataset.files import contained, is_replacing_leftover, open_lock, write_json_atomic
from htouch.dataset.manifest import EXTRA, MANIFEST_FILE, ManifestError, read_manifest, verify_files, write_manifest
from htouch.dataset.schema import ATTR_FORMAT, NS, QUARANTINE, ArraySpec, StreamSpecs, episode_arrays
from htouch.dataset.store import Dataset
from htouch.dataset.structure import first_bad_chunk, stored_chunks, unsafe_files
from htouch.dataset.validate import PARTIAL_SUFFIX, chunk_of
from htouch.dataset.writer import FLUSHED_FILE, fsync_dir, lock_path
from htouch.errors import DatasetError

QUARANTINE_NOTE = "quarantine.json"
_NEVER_FLUSHED = "no progress file (.flushed.json): the writer never flushed any data"


@dataclass
class RepairResult:
    episode: str
    action: str  # "committed" (a commit a crash interrupted), "salvaged", "quarantined", "skipped" (a live
    # writer holds it) or "refused"
    message: str
    path: Path  # where the episode is now


class _Unsalvageable(Exception):
    pass


def repair_incoming(ds: Dataset) -> list[RepairResult]:
    """Salvage or quarantine every incomplete episode in DATASET/.incoming that no live writer holds."""
    ds.writable("htouch validate --repair")
    return [repair_episode(ds, path) for path in ds.incoming_paths()]


def repair_episode(ds: Dataset, path: Path) -> RepairResult:
    """Repair one episode left in .incoming: commit it if complete, salvage what was flushed, or quarantine
    it; skipped while a live writer holds it, refused (left as it is) if links or special files are inside."""
    name = path.name
    lock = lock_path(path)
    try:  # nothing is read or written through a symbolic link: not the episode, its files or its lock
        contained(ds.root, path)
        contained(ds.root, lock)
        unsafe = unsafe_files(path)
        if unsafe:
            rel, why = unsafe[0]
            raise DatasetError(f"{rel + ' ' if rel else ''}{why}")
        fd = open_lock(lock)
    except DatasetError as e:
        return RepairResult(name, "refused", f"{e}; left as it is", path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return RepairResult(name, "skipped", "a live writer is still writing it", path)
        result = _repair_locked(ds, path)
    finally:
        os.close(fd)
    if result.action in ("committed", "salvaged", "quarantined"):
        lock.unlink(missing_ok=True)
    return result


def _repair_locked(ds: Dataset, path: Path) -> RepairResult:
    name = path.name
    final = ds.root / name
    _remove_interrupted_writes(path)
    try:
        group, attrs, lengths, manifest_ok = _salvage_plan(path)
    except _Unsalvageable as e:
        try:
            dest = _quarantine(ds, path, str(e))
        except DatasetError as refused:
            return RepairResult(name, "refused", f"{e}, but it cannot be quarantined: {refused}", path)
        return RepairResult(name, "quarantined", f"moved to {QUARANTINE}/: {e}", dest)
    if final.exists():
        return RepairResult(name, "refused", f"{final} already exists; left in .incoming", path)

    # An episode whose commit (or an earlier repair) got as far as its final attributes keeps them as they
    # are, label included, when nothing more has to be cut; any other is cut and marked salvaged.
    finished = attrs.get("status") in ("committed", "salvaged") and attrs.get("lengths") == lengths
    if not finished:
        for spec in episode_arrays(StreamSpecs.from_dict(attrs["rig"])):
            arr = group[spec.path]
            if arr.shape[0] != lengths[spec.path]:
                arr.resize((lengths[spec.path], *spec.shape))
        crashpoints.reached("repair.resized")
        # The success label stays as recorded: the writer stores it before its final flush.
        attrs.update(status="salvaged", salvaged=True, lengths=lengths, manifest=MANIFEST_FILE,
                     salvaged_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
        group.attrs[ATTR_FORMAT] = attrs
        crashpoints.reached("repair.attributes")
    (path / FLUSHED_FILE).unlink(missing_ok=True)
    crashpoints.reached("repair.progress_removed")
    if not (finished and manifest_ok):
        write_manifest(path)
    crashpoints.reached("repair.manifest")
    os.replace(path, final)
    crashpoints.reached("repair.renamed")
    fsync_dir(ds.root)
    frames = lengths["camera/rgb"]
    if finished and attrs.get("status") == "committed":
        return RepairResult(name, "committed", f"its commit was interrupted; committed with {frames} frames "
                            f"and its label ({_label(attrs.get('success'))})", final)
    times = zarr.open_array(str(final / "camera/timestamp_ns"), mode="r", zarr_format=2)[:frames]
    seconds = (int(times[-1]) - int(times[0])) / NS if len(times) else 0.0
    return RepairResult(name, "salvaged", f"committed with {frames} frames ({seconds:.1f} s), "
                        f"{lengths.get('audio/pcm', 0)} audio samples, up to the writer's last flush; "
                        f"label {_label(attrs.get('success'))}", final)


def _label(success: Any) -> str:
    return {True: "success", False: "failure"}.get(success, "none")


def _salvage_plan(path: Path) -> tuple[zarr.Group, dict[str, Any], dict[str, int], bool]:
    """The group, its attributes, the row count to keep for every array, and whether the episode's manifest
    (if any) matches every file; raises _Unsalvageable."""
    try:
        progress = json.loads((path / FLUSHED_FILE).read_text())
        flushed: dict[str, int] | None = {str(k): int(v) for k, v in progress["lengths"].items()}
    except FileNotFoundError:
        flushed = None
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
        raise _Unsalvageable(f"progress file {FLUSHED_FILE} is unreadable ({type(e).__name__}: {e})") from None
    try:
        group = zarr.open_group(str(path), mode="r+", zarr_format=2)
        attrs = dict(group.attrs.asdict()[ATTR_FORMAT])
        specs = episode_arrays(StreamSpecs.from_dict(attrs["rig"]))
        arrays = {s.path: group[s.path] for s in specs}
    except Exception as e:  # noqa: BLE001 - any unreadable part of the group
        if flushed is None:
            raise _Unsalvageable(_NEVER_FLUSHED) from None
        raise _Unsalvageable(f"episode group is unreadable ({type(e).__name__}: {e})") from None
    if flushed is None:
        # A commit (or repair) removes the progress file only after recording the lengths in the attributes.
        recorded = attrs.get("lengths")
        if attrs.get("status") not in ("committed", "salvaged") or not isinstance(recorded, dict):
            raise _Unsalvageable(_NEVER_FLUSHED)
        try:
            flushed = {str(k): int(v) for k, v in recorded.items()}
        except (TypeError, ValueError) as e:
            raise _Unsalvageable(f"the lengths in the episode attributes are malformed ({e})") from None

    damaged, manifest_ok = _damaged_chunks(path, specs)
    n: dict[str, int] = {}
    for spec in specs:  # flushed rows that are on disk, decode and match the manifest, chunk by chunk
        arr = arrays[spec.path]
        keep = min(flushed.get(spec.path, 0), arr.shape[0])
        separator = getattr(arr.metadata, "dimension_separator", ".") or "."
        chunk_len = arr.chunks[0]
        present = stored_chunks(path / spec.path, separator) - damaged.get(spec.path, set())
        bad = first_bad_chunk(arr, keep, chunk_len, present)
        n[spec.path] = min(keep, bad[0] * chunk_len) if bad else keep

    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for spec in specs:
        groups[(spec.stream, spec.axis)].append(spec.path)
    block_paths = groups.get(("audio", "blocks"), [])  # none for a rig without microphones
    offsets = arrays["audio/block_offset"][: n["audio/block_offset"]] if block_paths else None
    while True:  # only ever shrinks, so a few rounds settle it
        before = dict(n)
        for paths in groups.values():
            m = min(n[p] for p in paths)
            for p in paths:
                n[p] = m
        if offsets is None:
            break
        blocks, pcm = n[block_paths[0]], n["audio/pcm"]
        if blocks < len(offsets):  # the PCM of dropped blocks goes too
            pcm = min(pcm, int(offsets[blocks]))
        blocks = int(np.searchsorted(offsets[:blocks], pcm, side="left"))  # blocks must start inside the PCM
        n["audio/pcm"] = pcm
        for p in block_paths:
            n[p] = blocks
        if n == before:
            break
    if n["camera/rgb"] == 0:
        raise _Unsalvageable("no camera frames were flushed")
    return group, attrs, n, manifest_ok


def _remove_interrupted_writes(path: Path) -> None:
    """Delete the temporary files of writes a crash interrupted: zarr's chunk and metadata writes
    (`NAME.<hex>.partial`) and htouch's atomic replacements (`.NAME.tmp<pid>`: progress file, manifest).
    None of them holds data the episode keeps."""
    for folder, _, names in os.walk(path):
        for name in names:
            if name.endswith(PARTIAL_SUFFIX) or is_replacing_leftover(name):
                os.unlink(os.path.join(folder, name))


def _damaged_chunks(path: Path, specs: list[ArraySpec]) -> tuple[dict[str, set[int]], bool]:
    """Chunks whose files differ from the episode's manifest, by array (a crash after the manifest was
    written, then damage), and whether every file matches it. Without a readable manifest: none, False."""
    try:
        manifest = read_manifest(path)
    except ManifestError:
        return {}, False
    if manifest is None:
        return {}, False
    problems = verify_files(path, manifest)
    damaged: dict[str, set[int]] = defaultdict(set)
    for p in problems:
        found = chunk_of(p.file, specs)
        if found is not None and p.kind != EXTRA:
            damaged[found[0].path].add(found[1])
    return damaged, not problems


def _quarantine(ds: Dataset, path: Path, reason: str) -> Path:
    folder = ds.path(QUARANTINE)  # refused if it is a symbolic link: nothing is moved out of the dataset
    folder.mkdir(exist_ok=True)
    dest = folder / path.name
    k = 1
    while dest.exists():
        dest = folder / f"{path.name}.{k}"
        k += 1
    os.replace(path, dest)
    write_json_atomic(dest / QUARANTINE_NOTE, {
        "episode": path.name,
        "reason": reason,
        "quarantined": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    })
    return dest

