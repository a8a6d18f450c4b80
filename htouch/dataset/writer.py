"""Streaming, crash-safe episode writer.

The recording loop calls `camera()`, `audio()`, `state()`, ... at its own rate. Those calls only copy
the row into a bounded queue and return; a background thread buffers rows and appends them to the
Zarr arrays about once a second (compression happens there, not in the caller). If the queue is ever
full the row is not stored and that is recorded as a `writer_queue_full` event, never dropped silently.

The episode lives in `.incoming/episode_N/` until `commit()` renames it into place, so a listing never
sees a half-written episode. After every flush the writer records the flushed length of each array in
`.flushed.json` (replaced atomically): after a crash, `htouch validate --repair` salvages the episode up
to that point (see repair.py). A lock file held while writing tells repair the episode is still live.

Commit writes the label first, then flushes, records "committed" and the final lengths in the attributes,
removes `.flushed.json`, writes the checksum manifest and renames. A kill between any two of these steps
leaves an episode that repair commits with its label (see crashpoints.py for the steps).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import queue
import shutil
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from htouch.dataset import crashpoints
from htouch.dataset.codecs import compressor_for
from htouch.dataset.files import contained, open_lock, replacing
from htouch.dataset.manifest import MANIFEST_FILE, write_manifest
from htouch.dataset.schema import (
    ATTR_FORMAT,
    EVENT_DETAIL_LEN,
    EVENT_KIND_LEN,
    INCOMING,
    SCHEMA_VERSION,
    ArraySpec,
    check_strict_json,
    episode_arrays,
    episode_name,
)
from htouch.errors import WriterError

if TYPE_CHECKING:
    from htouch.dataset.store import Dataset

FLUSHED_FILE = ".flushed.json"
_STOP = object()


def lock_path(incoming_dir: Path) -> Path:
    """The lock file beside an episode being written in .incoming (held while its writer lives)."""
    return incoming_dir.with_name(incoming_dir.name + ".lock")


def is_being_written(incoming_dir: Path) -> bool:
    """True while a live writer holds the episode's lock (a crashed writer's lock is released by the OS).
    Writes nothing (the lock file is opened read-only), so it works on a read-only dataset."""
    try:
        fd = open_lock(lock_path(incoming_dir), create=False)
    except FileNotFoundError:
        return False  # a writer creates its lock before anything else
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def encode_event(kind: str, detail: dict[str, Any]) -> tuple[str, str]:
    """An event as stored: (kind, compact JSON of its detail); ValueError if either is too long for the
    fixed-width event arrays."""
    text = json.dumps(detail, separators=(",", ":"), default=float)
    if len(kind) > EVENT_KIND_LEN:
        raise ValueError(f"event kind {kind!r} is longer than {EVENT_KIND_LEN} characters")
    if len(text) > EVENT_DETAIL_LEN:
        raise ValueError(f"event {kind!r}: detail is longer than {EVENT_DETAIL_LEN} characters of JSON")
    return kind, text


LIVE_ENCODING_THREADS = 1  # zarr's worker threads in a process once a live (non-blocking) writer was made


class EpisodeWriter:
    def __init__(self, dataset: Dataset, index: int, *, variation: str = "default",
                 info: dict[str, Any] | None = None, queue_size: int = 256, flush_interval_s: float = 1.0,
                 blocking: bool = False, checksums: bool = True):
        """blocking=False (a live recording): a full queue drops the row and records an event.
        blocking=True (an offline producer such as a generator or converter): the caller waits instead.
        checksums=False commits without a manifest, as htouch did before manifests (to measure their cost)."""
        self.dataset = dataset
        self.checksums = checksums
        self.index = index
        self.name = episode_name(index)
        self.path = dataset.path(INCOMING, self.name)
        self.final_path = dataset.path(self.name)
        self.flush_interval_s = flush_interval_s
        self.blocking = blocking
        if not blocking:
            # A live recording shares the cores with a control loop (and perhaps a policy planner). zarr's default
            # pool (cores + 4 threads) encodes a flush's frames on every core at once, stalling them for tens of ms
            # (tools/bench_async_policy.py, bfloat16 planner, 2 cores: re-plan p99 82 ms with that pool, 55 ms with
            # one thread); one encoding thread keeps up with the rig's rates (tools/bench_recorder.py).
            # Process-wide: zarr makes its pool of this size at its next call.
            zarr.config.set({"threading.max_workers": LIVE_ENCODING_THREADS})
        self.specs = {s.path: s for s in episode_arrays(dataset.streams)}
        check_strict_json(info or {}, f"episode {self.name}: info")  # before anything is created
        self.path.parent.mkdir(exist_ok=True)

        self._lock_fd: int | None = open_lock(contained(dataset.root, lock_path(self.path)))
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._group = zarr.open_group(str(self.path), mode="w-", zarr_format=2)
        self._arrays: dict[str, zarr.Array] = {}
        for spec in self.specs.values():
            self._arrays[spec.path] = self._group.create_array(
                spec.path, shape=(0, *spec.shape), chunks=(spec.chunk_len, *spec.shape), dtype=spec.dtype,
                compressors=compressor_for(spec, dataset.streams.camera), fill_value=None,
                attributes={"unit": spec.unit, "doc": spec.doc},
                # Store every chunk, even all-zero ones, so that a missing chunk file always means data loss.
                config={"write_empty_chunks": True})
        self._attrs: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "index": index,
            "task": dataset.task,
            "variation": variation,
            "status": "recording",
            "success": None,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "rig": dataset.streams.to_dict(),
            "info": info or {},
        }
        self._save_attrs()

        self.queue_size = queue_size
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._events: list[tuple[int, str, str]] = []
        self._events_lock = threading.Lock()
        self._dropped: dict[str, int] = defaultdict(int)
        self._buffers: dict[str, list[np.ndarray]] = defaultdict(list)
        self._lengths = {path: 0 for path in self.specs}
        self._audio_samples = 0
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"writer-{self.name}", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- the caller's side (non-blocking)

    def camera(self, timestamp_ns: int, frame_number: int, rgb: np.ndarray) -> bool:
        return self._put("camera", rgb=np.array(rgb, dtype=np.uint8), frame_number=frame_number,
                         timestamp_ns=timestamp_ns)

    def audio(self, timestamp_ns: int, pcm: np.ndarray, overflow: bool = False) -> bool:
        """A block of samples (n, channels) whose first sample was captured at timestamp_ns. A rig without
        microphones has no audio stream: ValueError."""
        if not self.dataset.streams.has_audio:
            raise ValueError(f"{self.name}: the rig has no microphones (audio.channels 0); there is no audio to write")
        return self._put("audio", pcm=np.array(pcm, dtype=np.int16), block_overflow=overflow,
                         block_timestamp_ns=timestamp_ns)

    def state(self, timestamp_ns: int, ee_pose: Any, joints: Any, gripper_width: float) -> bool:
        return self._put("state", ee_pose=ee_pose, joints=joints, gripper_width=gripper_width,
                         timestamp_ns=timestamp_ns)

    def action(self, timestamp_ns: int, delta_ee: Any, gripper: float) -> bool:
        return self._put("action", delta_ee=delta_ee, gripper=gripper, timestamp_ns=timestamp_ns)

    def teleop(self, timestamp_ns: int, controller_pose: Any, buttons: Any, analog: Any) -> bool:
        return self._put("teleop", controller_pose=controller_pose, buttons=buttons, analog=analog,
                         timestamp_ns=timestamp_ns)

    def event(self, timestamp_ns: int, kind: str, **detail: Any) -> None:
        """Events never go through the queue, so a full queue can still be reported."""
        self._check_open()
        encoded = encode_event(kind, detail)
        with self._events_lock:
            self._events.append((int(timestamp_ns), *encoded))

    @property
    def dropped(self) -> dict[str, int]:
        """Rows not stored per stream because the queue was full."""
        return dict(self._dropped)

    @property
    def queued(self) -> int:
        """Rows waiting for the writer thread (of at most `queue_size`; past that, rows are dropped)."""
        return self._queue.qsize()

    def _check_open(self) -> None:
        if self._error is not None:
            raise WriterError(f"episode writer for {self.name} failed: {self._error}") from self._error
        if self._closed:
            raise WriterError(f"episode writer for {self.name} is closed")

    def _put(self, stream: str, **row: Any) -> bool:
        self._check_open()
        for key, value in row.items():
            spec = self.specs[f"{stream}/{key}"]
            shape = np.shape(value)
            expected = spec.shape if key != "pcm" else (shape[0] if shape else -1, *spec.shape)
            if shape != expected:
                raise ValueError(f"{stream}/{key}: expected shape {expected}, got {shape}")
        try:
            if self.blocking:
                while True:
                    try:
                        self._queue.put((stream, row), timeout=0.5)
                        return True
                    except queue.Full:
                        self._check_open()  # the writer thread died: say so instead of waiting forever
            self._queue.put_nowait((stream, row))
            return True
        except queue.Full:
            self._dropped[stream] += 1
            if self._dropped[stream] == 1 or self._dropped[stream] % 100 == 0:
                self.event(int(row.get("timestamp_ns", row.get("block_timestamp_ns", 0))), "writer_queue_full",
                           stream=stream, dropped=self._dropped[stream])
            return False

    # ---------------------------------------------------------------- the writer thread

    def _run(self) -> None:
        try:
            last_flush = time.monotonic()
            pending = 0
            while True:
                timeout = max(0.0, self.flush_interval_s - (time.monotonic() - last_flush))
                try:
                    item = self._queue.get(timeout=timeout)
                except queue.Empty:
                    item = None
                if item is _STOP:
                    break
                if item is not None:
                    self._buffer(*item)
                    pending += 1
                # Flush once a second, or sooner when a fast producer has buffered a queue's worth of rows,
                # so memory stays bounded however fast the caller feeds.
                if pending >= self._queue.maxsize or time.monotonic() - last_flush >= self.flush_interval_s:
                    pending = 0
                    self._flush()
                    last_flush = time.monotonic()
            self._flush()
        except BaseException as e:  # noqa: BLE001 - reported to the caller on its next call
            self._error = e

    def _buffer(self, stream: str, row: dict[str, Any]) -> None:
        if stream == "audio":
            pcm = row["pcm"]
            self._buffers["audio/pcm"].append(pcm)
            self._buffers["audio/block_offset"].append(np.int64(self._audio_samples))
            self._audio_samples += len(pcm)
            self._buffers["audio/block_overflow"].append(np.bool_(row["block_overflow"]))
            self._buffers["audio/block_timestamp_ns"].append(np.int64(row["block_timestamp_ns"]))
            return
        for key, value in row.items():
            self._buffers[f"{stream}/{key}"].append(value)

    def _flush(self) -> None:
        with self._events_lock:
            events, self._events = self._events, []
        for t, kind, detail in events:
            self._buffers["events/kind"].append(kind)
            self._buffers["events/detail"].append(detail)
            self._buffers["events/timestamp_ns"].append(np.int64(t))
        if not any(self._buffers.values()):
            return
        for path, spec in self.specs.items():  # data arrays come before their time stamps
            rows = self._buffers.pop(path, None)
            if rows:
                self._append(spec, rows)
        progress = {"lengths": self._lengths, "audio_samples": self._audio_samples,
                    "dropped": dict(self._dropped)}
        with replacing(self.path / FLUSHED_FILE) as tmp:
            tmp.write_text(json.dumps(progress))

    def _append(self, spec: ArraySpec, rows: list[Any]) -> None:
        if spec.name == "pcm":
            data = np.concatenate(rows).astype(np.int16, copy=False)
        else:
            data = np.asarray(rows, dtype=spec.dtype)
        arr = self._arrays[spec.path]
        n = self._lengths[spec.path]
        arr.resize((n + len(data), *spec.shape))
        arr[n:] = data
        self._lengths[spec.path] = n + len(data)

    # ---------------------------------------------------------------- ending the episode

    def _stop(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)  # blocking: the thread is draining, so there is room soon
        self._thread.join()

    def _save_attrs(self) -> None:
        """Store the episode attributes; they are strict JSON (no NaN or infinity, which zarr would write)."""
        check_strict_json(self._attrs, f"episode {self.name} attributes")
        self._group.attrs[ATTR_FORMAT] = self._attrs

    def commit(self, success: bool | None, **info: Any) -> Path:
        """Flush everything, write the checksum manifest and make the episode visible under its final name.
        Each step leaves the disk in a state that `htouch validate --repair` completes (see the module doc)."""
        if self._closed:
            raise WriterError(f"episode writer for {self.name} is closed")
        check_strict_json(info, f"episode {self.name}: commit info")  # nothing changed yet: the caller may retry
        self._attrs["success"] = success
        self._attrs["info"].update(info)
        self._save_attrs()  # the label survives a crash in the final flush
        crashpoints.reached("commit.labelled")
        self._stop()
        if self._error is not None:
            raise WriterError(f"episode {self.name} could not be written: {self._error}; "
                              "what was flushed stays in .incoming for `htouch validate --repair`")
        crashpoints.reached("commit.flushed")
        self._attrs.update(status="committed", dropped_rows=dict(self._dropped), lengths=dict(self._lengths),
                           committed=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
        if self.checksums:
            self._attrs["manifest"] = MANIFEST_FILE
        self._save_attrs()
        crashpoints.reached("commit.attributes")
        (self.path / FLUSHED_FILE).unlink(missing_ok=True)
        crashpoints.reached("commit.progress_removed")
        if self.checksums:
            write_manifest(self.path)
            crashpoints.reached("commit.manifest")
        os.replace(self.path, self.final_path)
        crashpoints.reached("commit.renamed")
        fsync_dir(self.dataset.root)
        self._release()
        return self.final_path

    def discard(self) -> None:
        """Throw the episode away (the operator asked to re-record). Its index is not reused."""
        self._stop()
        shutil.rmtree(self.path, ignore_errors=True)
        self._release()

    def abort(self) -> None:
        """Stop writing but keep what was flushed in .incoming, for `htouch validate --repair`."""
        self._stop()
        self._release()

    def _release(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None
            lock_path(self.path).unlink(missing_ok=True)

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if not self._closed:
            self.abort()


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries to disk, so a rename or a new file in it survives a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
