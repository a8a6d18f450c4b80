"""The cheap structural checks of an episode, shared by `htouch validate` and every reader.

Before `ls`, `inspect`, `train`, `eval`, `stats`, `spectrogram`, `split` or `replay` uses an episode,
`open_episode` checks what can be checked without decoding the recording:

- every file of the episode is a regular file below it (no symbolic link, FIFO or device; metadata files of
  at most `METADATA_MAX_BYTES`), so no read leaves the episode, blocks or runs for ever;
- every schema array is there, with its dtype, the trailing shape the episode's rig gives (frame size, audio
  channels, ...) and a chunking the schema allows (whole rows per chunk, at most `CHUNK_MAX_BYTES` a chunk);
- every chunk file the length needs is present and no larger than such a chunk can be compressed
  (`max_chunk_file_bytes`), so a `.zarray` claiming 10^12 rows is refused after one directory listing,
  and nothing is ever read as zeros for a missing chunk;
- arrays sharing a time axis have equal lengths, time stamps strictly increase, audio blocks lie inside
  the PCM, and the values of state, action and teleop are finite.

That costs listing the episode's files and decoding the time stamps and the small state, action and teleop
arrays (well under 1 % of an episode's bytes); frames and PCM are not decoded. A damaged episode is
refused with `DamagedEpisodeError`, one line naming the episode and its first problem. `htouch validate`
runs the same checks (`validate._EpisodeCheck` extends `StructureCheck`), then hashes files and decodes
everything.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from htouch.dataset.episode import Episode
from htouch.dataset.location import StoredPath, location
from htouch.dataset.schema import NS, TIMED_AXES, ArraySpec, episode_arrays
from htouch.errors import DamagedEpisodeError, DatasetError

if TYPE_CHECKING:
    from htouch.dataset.store import Dataset

ERROR = "error"
WARNING = "warning"
METADATA_NAMES = (".zarray", ".zattrs", ".zgroup", ".zmetadata", "manifest.json", ".flushed.json")
METADATA_MAX_BYTES = 1 << 20  # a metadata file larger than this is not one htouch wrote
FINITE_STREAMS = ("state", "action", "teleop")  # their float values must be finite
CHUNK_MAX_BYTES = 256 << 20  # uncompressed bytes of one chunk (a 4K RGB frame is 25 MB)


def max_chunk_file_bytes(raw_bytes: int) -> int:
    """The largest file a chunk of `raw_bytes` uncompressed can take: no codec htouch uses (Blosc, JPEG,
    PNG) doubles its input, plus room for headers."""
    return 2 * raw_bytes + 65536


@dataclass
class Finding:
    check: str
    severity: str  # ERROR or WARNING
    episode: str  # episode name, "" for the dataset itself
    path: str  # stream or array path, or a file of the episode (checksum.*); "" for the whole episode
    time_s: float | None  # seconds since the episode start, when the finding has a place in time
    message: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def line(self) -> str:
        """The finding as the end of a sentence: `camera/timestamp_ns: not strictly increasing at row 4`."""
        return f"{self.path}: {self.message}" if self.path else self.message


# ------------------------------------------------------------------------------------------------ files


def unsafe_files(episode_dir: Path) -> list[tuple[str, str]]:
    """(path relative to the episode, why) of every entry no reader may open: symbolic links (even the
    episode directory itself), FIFOs, devices and sockets, and oversized metadata files. Reads no file.
    At a URL (no links or special files there) only the sizes of the metadata files are checked, from one
    listing of the episode; in a packed episode (packed.py), that the file is a sound zip of plain members too."""
    if isinstance(episode_dir, StoredPath):
        problems = episode_dir.problems()
        if problems:
            return problems
        return sorted((rel, f"is {size} bytes; a metadata file is at most {METADATA_MAX_BYTES} bytes")
                      for rel, size in episode_dir.files().items()
                      if rel.rsplit("/", 1)[-1] in METADATA_NAMES and (size or 0) > METADATA_MAX_BYTES)
    episode_dir = Path(episode_dir)
    if episode_dir.is_symlink():
        return [("", f"the episode directory is a symbolic link (to {os.path.realpath(episode_dir)}); "
                     "htouch does not follow links inside a dataset")]
    out: list[tuple[str, str]] = []
    stack = [episode_dir]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as e:
            out.append((Path(folder).relative_to(episode_dir).as_posix(), f"cannot be listed ({e.strerror})"))
            continue
        for entry in entries:
            rel = Path(entry.path).relative_to(episode_dir).as_posix()
            if entry.is_symlink():
                out.append((rel, f"is a symbolic link (to {os.path.realpath(entry.path)}); an episode holds only "
                                 "regular files"))
            elif entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
            elif not entry.is_file(follow_symlinks=False):
                out.append((rel, "is not a regular file (a FIFO, device or socket)"))
            elif entry.name in METADATA_NAMES:
                size = entry.stat(follow_symlinks=False).st_size
                if size > METADATA_MAX_BYTES:
                    out.append((rel, f"is {size} bytes; a metadata file is at most {METADATA_MAX_BYTES} bytes"))
    return sorted(out)


def chunk_index(name: str, separator: str = ".") -> int | None:
    """The index along the time axis of a chunk file's name (`12.0.0.0`); None for any other file, such as
    `.zarray` or the `12.0.0.<hex>.partial` a write interrupted by a crash leaves (it is not the chunk)."""
    parts = name.split(separator)
    return int(parts[0]) if all(p.isdigit() for p in parts) else None


def chunk_files(array_dir: Path, separator: str = ".") -> dict[int, int]:
    """Chunk index (along time) -> file size in bytes of the chunk files present (trailing dimensions are one
    chunk each; with "/" separators a chunk is a directory and its size is given as 0)."""
    if isinstance(array_dir, StoredPath):
        out = {}
        for rel, size in array_dir.files().items():
            first, sep, _ = rel.partition("/")
            i = chunk_index(first, separator)
            if i is not None:
                out[i] = 0 if sep or size is None else size  # no size in the listing: not bounded here
        return out
    try:
        entries = list(os.scandir(array_dir))
    except OSError:
        return {}
    out = {}
    for entry in entries:
        i = chunk_index(entry.name, separator)
        if i is not None:
            out[i] = entry.stat(follow_symlinks=False).st_size if entry.is_file(follow_symlinks=False) else 0
    return out


def stored_chunks(array_dir: Path, separator: str = ".") -> set[int]:
    """Indices along the time axis of the chunk files present."""
    return set(chunk_files(array_dir, separator))


def timestamp_spec(specs: list[ArraySpec], stream: str) -> ArraySpec | None:
    """The time stamp array of a timed stream (on the stream's main axis)."""
    for s in specs:
        if s.stream == stream and s.axis == TIMED_AXES.get(stream) and s.name.endswith("timestamp_ns"):
            return s
    return None


# ------------------------------------------------------------------------------------------------ arrays


class StructureCheck:
    """The structural checks of one opened episode (see the module docstring); `run_structure` fills
    `findings`. `htouch validate` extends it and reads every array fully (`read_fully`)."""

    def __init__(self, ep: Episode):
        self.ep = ep
        self.specs = episode_arrays(ep.streams)
        self.by_path = {s.path: s for s in self.specs}
        self.findings: list[Finding] = []
        self.arrays: dict[str, Any] = {}  # zarr arrays that exist with the right dtype, shape and chunks
        self.data: dict[str, np.ndarray] = {}  # fully read arrays
        self.unusable: set[str] = set()  # arrays present but with lost or oversized chunks
        self.disordered: set[str] = set()  # streams whose time stamps do not strictly increase
        self.blocks_ok = False  # audio block offsets lie inside the PCM
        self.t0: int | None = None
        self.chunk_rows: list[tuple[Finding, str, int]] = []  # (finding, array, row): time known once t0 is

    def add(self, check: str, severity: str, path: str, message: str, t_ns: int | None = None) -> None:
        time_s = None if t_ns is None or self.t0 is None else round((int(t_ns) - self.t0) / NS, 3)
        self.findings.append(Finding(check, severity, self.ep.name, path, time_s, message))

    def read_fully(self, spec: ArraySpec) -> bool:
        """Which arrays the check decodes: the time stamps, the audio block offsets and the float values of
        state, action and teleop (small next to frames and PCM)."""
        return (spec.name.endswith("timestamp_ns") or spec.path == "audio/block_offset"
                or (spec.stream in FINITE_STREAMS and np.dtype(spec.dtype).kind == "f"))

    def run_structure(self) -> list[Finding]:
        self.check_schema_version()
        self.load_arrays()
        self.check_lengths()
        self.set_start()
        self.check_time_order()
        self.check_blocks()
        self.check_finite()
        return self.findings

    def check_schema_version(self) -> None:
        from htouch.dataset.schema import SCHEMA_VERSION

        version = self.ep.attrs.get("schema_version")
        if not isinstance(version, int) or isinstance(version, bool):
            self.add("episode.schema", ERROR, "", f"no schema version in the episode attributes (got {version!r})")
        elif version != SCHEMA_VERSION:
            self.add("episode.schema", ERROR, "", f"schema version {version} is not supported "
                     f"(this htouch reads {SCHEMA_VERSION})")

    def open_array(self, spec: ArraySpec) -> Any | None:
        """The array if its metadata matches the schema (else a finding and None)."""
        try:
            arr = self.ep.group[spec.path]
        except KeyError:
            self.add("array.missing", ERROR, spec.path, "array is missing")
            return None
        except Exception as e:  # noqa: BLE001 - broken array metadata (negative shape, unknown codec, ...)
            self.add("array.missing", ERROR, spec.path, f"array metadata (.zarray) is unreadable "
                     f"({type(e).__name__}: {e})")
            return None
        if not isinstance(arr, zarr.Array):
            self.add("array.missing", ERROR, spec.path, "is a group, not an array")
            return None
        if np.dtype(arr.dtype) != np.dtype(spec.dtype):
            self.add("array.dtype", ERROR, spec.path, f"dtype is {np.dtype(arr.dtype)}, expected {spec.dtype}")
            return None
        if tuple(arr.shape[1:]) != spec.shape:
            self.add("array.shape", ERROR, spec.path, f"rows have shape {tuple(arr.shape[1:])}, expected {spec.shape}"
                     " (as the episode's rig says)")
            return None
        chunks = tuple(arr.chunks)
        raw = math.prod(chunks) * np.dtype(spec.dtype).itemsize
        if chunks[1:] != spec.shape or chunks[0] < 1 or raw > CHUNK_MAX_BYTES:
            self.add("array.layout", ERROR, spec.path, f"chunks of shape {chunks} ({raw} bytes): the schema allows "
                     f"whole rows, at most {CHUNK_MAX_BYTES} bytes a chunk")
            return None
        return arr

    def check_chunk_files(self, spec: ArraySpec, arr: Any) -> bool:
        """Every chunk the array's length needs is a file of plausible size; bounded by the files present,
        whatever length the metadata claims."""
        n, chunk_len = arr.shape[0], arr.chunks[0]
        separator = getattr(arr.metadata, "dimension_separator", ".") or "."
        files = chunk_files(self.ep.path / spec.path, separator)
        needed = -(-n // chunk_len)
        present = sum(1 for i in files if i < needed)
        if present < needed:
            first = next(i for i in range(needed) if i not in files)  # at most len(files) + 1 steps
            self.chunk_finding(spec, first * chunk_len, f"{needed - present} chunk file(s) missing, first "
                               f"chunk {first} (rows {first * chunk_len}..)")
            return False
        limit = max_chunk_file_bytes(math.prod(arr.chunks) * np.dtype(spec.dtype).itemsize)
        big = sorted(i for i, size in files.items() if i < needed and size > limit)
        if big:
            self.chunk_finding(spec, big[0] * chunk_len, f"chunk file {big[0]} is {files[big[0]]} bytes, more than "
                               f"a chunk of this array can take ({limit})")
            return False
        return True

    def load_arrays(self) -> None:
        for spec in self.specs:
            arr = self.open_array(spec)
            if arr is None:
                continue
            self.arrays[spec.path] = arr
            if not self.check_chunk_files(spec, arr):
                self.unusable.add(spec.path)
                continue
            if spec.codec == "image" or not self.read_fully(spec):
                continue
            try:
                self.data[spec.path] = arr[...]
            except Exception:  # noqa: BLE001 - locate the chunk for the message
                chunk_len = arr.chunks[0]
                bad = first_bad_chunk(arr, arr.shape[0], chunk_len)
                where = f"chunk {bad[0]} (rows {bad[0] * chunk_len}..) {bad[1]}" if bad else "cannot be read"
                self.chunk_finding(spec, bad[0] * chunk_len if bad else None, where)
                self.unusable.add(spec.path)

    def chunk_finding(self, spec: ArraySpec, row: int | None, message: str) -> None:
        self.add("array.chunk", ERROR, spec.path, message)
        if row is not None:  # its time is known once the stream's time stamps are read
            self.chunk_rows.append((self.findings[-1], spec.path, row))

    def check_lengths(self) -> None:
        groups: dict[tuple[str, str], list[ArraySpec]] = defaultdict(list)
        for s in self.specs:
            groups[(s.stream, s.axis)].append(s)
        for (stream, axis), specs in groups.items():
            lengths = {s.name: self.arrays[s.path].shape[0] for s in specs if s.path in self.arrays}
            if len(set(lengths.values())) > 1:
                shown = ", ".join(f"{k} {v}" for k, v in lengths.items())
                self.add("array.length", ERROR, stream, f"arrays on the {axis} axis differ in length: {shown}")

    # ---------------------------------------------------------------- time

    def times(self, stream: str) -> np.ndarray | None:
        spec = timestamp_spec(self.specs, stream)
        return self.data.get(spec.path) if spec else None

    def set_start(self) -> None:
        """The episode start: the earliest first time stamp of the timed streams (as Episode.time_range_ns)."""
        firsts = [int(t[0]) for s in ("camera", "audio", "state", "action") if (t := self.times(s)) is not None
                  and len(t)]
        self.t0 = min(firsts) if firsts else None
        for f, path, row in self.chunk_rows:
            t = self.row_time(path, row)
            if t is not None and self.t0 is not None:
                f.time_s = round((t - self.t0) / NS, 3)

    def time_of(self, stream: str, row: int) -> int | None:
        t = self.times(stream)
        if t is None or row >= len(t):
            return None
        return int(t[row])

    def row_time(self, path: str, row: int) -> int | None:
        """The time of a row of any array: PCM rows are placed by their block's time stamp."""
        spec = self.by_path[path]
        if spec.stream == "events":
            t = self.data.get("events/timestamp_ns")
            return int(t[row]) if t is not None and row < len(t) else None
        if spec.axis == TIMED_AXES.get(spec.stream):
            return self.time_of(spec.stream, row)
        offsets, times = self.data.get("audio/block_offset"), self.times("audio")
        if path != "audio/pcm" or offsets is None or times is None or len(offsets) != len(times) or not len(times):
            return None
        block = max(int(np.searchsorted(offsets, row, side="right")) - 1, 0)
        return int(times[block] + (row - int(offsets[block])) * NS / self.ep.streams.audio.rate_hz)

    def check_time_order(self) -> None:
        for stream in TIMED_AXES:
            t = self.times(stream)
            if t is None or len(t) < 2:
                continue
            d = np.diff(t)
            bad = np.flatnonzero(d <= 0)
            if len(bad):
                i = int(bad[0])
                self.disordered.add(stream)
                self.add("time.order", ERROR, timestamp_spec(self.specs, stream).path,
                         f"not strictly increasing at row {i + 1} ({int(d[i]) / 1e6:+.3f} ms after row {i}); "
                         f"{len(bad)} place(s)", int(t[i]))

    def check_finite(self) -> None:
        """No NaN or Inf in the values of state, action and teleop (what a policy learns from)."""
        for spec in self.specs:
            x = self.data.get(spec.path)
            if x is None or spec.stream not in FINITE_STREAMS or x.dtype.kind != "f" or not len(x):
                continue
            bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                self.add("values.nonfinite", ERROR, spec.path,
                         f"{int(bad.sum())} row(s) with NaN or Inf, first row {i}", self.time_of(spec.stream, i))

    def check_blocks(self) -> None:
        """Audio block offsets start at 0, increase and stay inside the PCM (sets blocks_ok)."""
        pcm, offsets, times = self.arrays.get("audio/pcm"), self.data.get("audio/block_offset"), self.times("audio")
        if pcm is None or offsets is None or times is None or len(times) != len(offsets):
            return  # unreadable or unequal arrays are reported already
        n = pcm.shape[0]
        if len(offsets) == 0:
            if n:
                self.add("audio.blocks", ERROR, "audio/block_offset", f"{n} samples but no blocks")
            return
        steps = np.diff(offsets)
        if offsets[0] != 0 or (steps <= 0).any() or offsets[-1] >= n:
            self.add("audio.blocks", ERROR, "audio/block_offset", "block offsets must start at 0, increase and "
                     f"stay below the {n} samples (first {int(offsets[0])}, last {int(offsets[-1])})")
            return
        self.blocks_ok = True


def first_bad_chunk(arr: Any, length: int, chunk_len: int, present: set[int] | None = None) -> tuple[int, str] | None:
    """The first chunk (in [0, length)) that is missing or does not decode, with the reason; None if all do."""
    for c in range((length + chunk_len - 1) // chunk_len):
        if present is not None and c not in present:
            return c, "chunk file missing"
        try:
            arr[c * chunk_len: min((c + 1) * chunk_len, length)]
        except Exception as e:  # noqa: BLE001 - any codec or I/O failure means the chunk is lost
            return c, f"does not decode ({type(e).__name__}: {e})"
    return None


# ------------------------------------------------------------------------------------------------ readers


def structure_findings(ep: Episode) -> list[Finding]:
    """The errors of the cheap structural checks of an opened episode (empty if it is sound); a sound episode
    keeps the arrays the checks opened and decoded (`Episode.adopt`)."""
    check = StructureCheck(ep)
    errors = [f for f in check.run_structure() if f.severity == ERROR]
    if not errors:
        ep.adopt(check.arrays, check.data)
    return errors


def damaged(name: str, problems: list[str]) -> DamagedEpisodeError:
    """The error a reader raises for a damaged episode: its first problem, and how many more there are."""
    more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
    return DamagedEpisodeError(name, f"{problems[0]}{more}")


def open_episode(path: Path, dataset: Dataset | None = None, structure: bool = True) -> Episode:
    """Open an episode for reading after the structural checks; DamagedEpisodeError names the episode and its
    first problem (`htouch validate` lists them all). structure=False checks only that every file is safe to
    open (the attributes can then be read) and skips the array checks."""
    path = location(path)
    unsafe = unsafe_files(path)
    if unsafe:
        raise damaged(path.name, [f"{rel}: {why}" if rel else why for rel, why in unsafe])
    try:
        ep = Episode(path, dataset=dataset)
    except DatasetError as e:
        raise DamagedEpisodeError(path.name, str(e).removeprefix(f"{path}: ")) from None
    errors = structure_findings(ep) if structure else []
    if errors:
        raise damaged(ep.name, [f.line() for f in errors])
    return ep
