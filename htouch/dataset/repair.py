"""`htouch validate --repair`: salvage or quarantine the episodes a crashed writer left in .incoming.

The writer records after every flush how many rows of each array are safely on disk (`.flushed.json`).
Salvage keeps exactly that much, and less where it must: arrays sharing a time axis are cut to the shortest,
audio blocks to the PCM they cover (and the PCM to the blocks kept), and every chunk kept is decoded first,
cutting before any that is missing or does not decode. The episode is then committed under its own name
with status "salvaged" and no success label. What cannot be salvaged goes to .quarantine/ with a note.

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
from htouch.dataset.episode import NS
from htouch.dataset.schema import ATTR_FORMAT, RigSpec, episode_arrays
from htouch.dataset.store import QUARANTINE, Dataset, write_json_atomic
from htouch.dataset.validate import first_bad_chunk, stored_chunks
from htouch.dataset.writer import FLUSHED_FILE, _fsync_dir, lock_path

QUARANTINE_NOTE = "quarantine.json"


@dataclass
class RepairResult:
    episode: str
    action: str  # "salvaged", "quarantined", "skipped" (a live writer holds it) or "refused"
    message: str
    path: Path  # where the episode is now


class _Unsalvageable(Exception):
    pass


def repair_incoming(ds: Dataset) -> list[RepairResult]:
    """Salvage or quarantine every incomplete episode in DATASET/.incoming that no live writer holds."""
    return [repair_episode(ds, path) for path in ds.incoming_paths()]


def repair_episode(ds: Dataset, path: Path) -> RepairResult:
    name = path.name
    lock = lock_path(path)
    with open(lock, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return RepairResult(name, "skipped", "a live writer is still writing it", path)
        try:
            result = _repair_locked(ds, path)
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
    if result.action in ("salvaged", "quarantined"):
        lock.unlink(missing_ok=True)
    return result


def _repair_locked(ds: Dataset, path: Path) -> RepairResult:
    name = path.name
    final = ds.root / name
    try:
        group, attrs, lengths = _salvage_plan(path)
    except _Unsalvageable as e:
        dest = _quarantine(ds, path, str(e))
        return RepairResult(name, "quarantined", f"moved to {QUARANTINE}/: {e}", dest)
    if final.exists():
        return RepairResult(name, "refused", f"{final} already exists; left in .incoming", path)

    for spec in episode_arrays(RigSpec.from_dict(attrs["rig"])):
        arr = group[spec.path]
        if arr.shape[0] != lengths[spec.path]:
            arr.resize((lengths[spec.path], *spec.shape))
    times = group["camera/timestamp_ns"][: lengths["camera/timestamp_ns"]]
    seconds = (int(times[-1]) - int(times[0])) / NS if len(times) else 0.0
    attrs.update(status="salvaged", salvaged=True, success=None, lengths=lengths,
                 salvaged_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    group.attrs[ATTR_FORMAT] = attrs
    os.replace(path, final)
    (final / FLUSHED_FILE).unlink(missing_ok=True)
    _fsync_dir(ds.root)
    frames = lengths["camera/rgb"]
    return RepairResult(name, "salvaged", f"committed with {frames} frames ({seconds:.1f} s), "
                        f"{lengths['audio/pcm']} audio samples, up to the writer's last flush", final)


def _salvage_plan(path: Path) -> tuple[zarr.Group, dict[str, Any], dict[str, int]]:
    """The group, its attributes and the row count to keep for every array; raises _Unsalvageable."""
    try:
        progress = json.loads((path / FLUSHED_FILE).read_text())
        flushed = {str(k): int(v) for k, v in progress["lengths"].items()}
    except FileNotFoundError:
        raise _Unsalvageable("no progress file (.flushed.json): the writer never flushed any data") from None
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
        raise _Unsalvageable(f"progress file {FLUSHED_FILE} is unreadable ({type(e).__name__}: {e})") from None
    try:
        group = zarr.open_group(str(path), mode="r+", zarr_format=2)
        attrs = dict(group.attrs.asdict()[ATTR_FORMAT])
        specs = episode_arrays(RigSpec.from_dict(attrs["rig"]))
        arrays = {s.path: group[s.path] for s in specs}
    except Exception as e:  # noqa: BLE001 - any unreadable part of the group
        raise _Unsalvageable(f"episode group is unreadable ({type(e).__name__}: {e})") from None

    n: dict[str, int] = {}
    for spec in specs:  # flushed rows that are on disk and decode, chunk by chunk
        arr = arrays[spec.path]
        keep = min(flushed.get(spec.path, 0), arr.shape[0])
        separator = getattr(arr.metadata, "dimension_separator", ".") or "."
        chunk_len = arr.chunks[0]
        bad = first_bad_chunk(arr, keep, chunk_len, stored_chunks(path / spec.path, separator))
        n[spec.path] = min(keep, bad[0] * chunk_len) if bad else keep

    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for spec in specs:
        groups[(spec.stream, spec.axis)].append(spec.path)
    block_paths = groups[("audio", "blocks")]
    offsets = arrays["audio/block_offset"][: n["audio/block_offset"]]
    while True:  # only ever shrinks, so a few rounds settle it
        before = dict(n)
        for paths in groups.values():
            m = min(n[p] for p in paths)
            for p in paths:
                n[p] = m
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
    return group, attrs, n


def _quarantine(ds: Dataset, path: Path, reason: str) -> Path:
    folder = ds.root / QUARANTINE
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
        "quarantined": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    })
    return dest

