"""A dataset on disk: a directory with htouch.json and one Zarr store per episode.

    my_dataset/
      htouch.json                 dataset metadata (schema version, task, rig, split, stats, next index)
      episode_000000/             one committed episode (a Zarr v2 group)
      episode_000001.zip          one committed episode packed into one file by `htouch pack` (packed.py)
      .incoming/episode_000001/   an episode being written; renamed into place when committed
      .quarantine/                incomplete episodes that could not be salvaged
      derived/                    caches computed from episodes (spectrograms)

One small class owns the directory; everything that changes htouch.json goes through `update_metadata`,
which holds a file lock and replaces the file atomically.

Containment: htouch never follows a symbolic link below the dataset root, for reading or writing. Every path
of the dataset is checked with `contained` before it is opened, listed or written (lock files are also opened
with O_NOFOLLOW); `dataset_links` lists the links `htouch validate` reports. Episodes are opened for reading
through `Dataset.episode`, which runs the structural checks of structure.py (no links, FIFOs or devices inside,
shapes and chunks as the schema says) and refuses a damaged episode with one line.

A dataset at a URL (location.py: `s3://bucket/ds`, `https://...`) is opened the same way and read through
fsspec; it is read-only: every method that would write (the lock, metadata updates, new or deleted
episodes) refuses it with one line.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from htouch.dataset.files import contained, open_lock, read_json, write_json_atomic
from htouch.dataset.location import UrlPath, location, reading
from htouch.dataset.packed import PACKED_SUFFIX, ZipPath, episode_location, unpacked_path
from htouch.dataset.schema import (
    DATASET_FORMAT,
    DERIVED,
    EPISODE_PREFIX,
    INCOMING,
    LOCK_FILE,
    MAX_EPISODE_INDEX,
    METADATA_FILE,
    QUARANTINE,
    SCHEMA_VERSION,
    StreamSpecs,
    check_strict_json,
    episode_name,
    parse_episode_name,
)
from htouch.errors import DatasetError

if TYPE_CHECKING:
    from htouch.dataset.episode import Episode
    from htouch.dataset.writer import EpisodeWriter



def dataset_links(root: Path) -> list[tuple[str, str]]:
    """(path relative to the root, target) of every symbolic link among the dataset's own entries: htouch.json,
    the lock file, .incoming (and the episodes and locks in it), .quarantine (and its entries), derived/ (all
    of it) and the committed episode directories. Links inside an episode are structure.unsafe_files'."""
    if isinstance(root, UrlPath):
        return []  # an object store has no links
    root = Path(root)
    out = []

    def note(p: Path) -> bool:
        if p.is_symlink():
            out.append((p.relative_to(root).as_posix(), os.path.realpath(p)))
            return True
        return False

    for name in (METADATA_FILE, LOCK_FILE):
        note(root / name)
    for p in sorted(root.iterdir()) if root.is_dir() else []:
        if p.name.startswith(EPISODE_PREFIX):
            note(p)
    for folder in (INCOMING, QUARANTINE):
        if not note(root / folder) and (root / folder).is_dir():
            for p in sorted((root / folder).iterdir()):
                note(p)
    if not note(root / DERIVED) and (root / DERIVED).is_dir():
        for folder, dirs, files in os.walk(root / DERIVED):
            for name in sorted(dirs + files):
                note(Path(folder) / name)
    return out


def next_index(meta: dict[str, Any], path: Path) -> int:
    """htouch.json's next_episode_index (0 when absent); DatasetError naming the file if it is not a
    non-negative integer."""
    value = meta.get("next_episode_index", 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DatasetError(f"{path}: next_episode_index must be a whole number (a non-negative integer), got "
                           f"{value!r}")
    return value


def _check_metadata(meta: dict[str, Any]) -> None:
    """The JSON types of the htouch.json keys that commands read (rig: StreamSpecs.from_dict; next_episode_index:
    next_index); DatasetError naming the key otherwise."""
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if not isinstance(meta.get("task", ""), str):
        raise DatasetError(f"task is {meta['task']!r}, expected a string")
    split = meta.get("split")
    if split is not None:
        if not isinstance(split, dict):
            raise DatasetError(f"split must be a JSON object, got {split!r}; remove the key and run `htouch split`")
        for key in ("train", "val"):
            if key in split and not (isinstance(split[key], list) and all(is_int(i) for i in split[key])):
                raise DatasetError(f"split.{key} must be a list of episode indices; remove the split key and run "
                                   "`htouch split`")
    if not isinstance(meta.get("stats", {}), dict):
        raise DatasetError(f"stats must be a JSON object, got {meta['stats']!r}; remove the key and run "
                           "`htouch stats`")


class Dataset:
    def __init__(self, root: str | os.PathLike[str] | UrlPath):
        self.root = location(root)
        if isinstance(self.root, UrlPath):
            with reading(str(self.root)):
                self._open()
        else:
            self._open()
        self._checked: set[str] = set()  # episodes that passed the structural checks
        self.left_out: dict[int, str] = {}  # damaged episodes `leave_out_damaged` hides, with why
        self._packed_at_url: set[int] | None = None  # at a URL: the packed episodes the last listing showed

    @property
    def remote(self) -> bool:
        """True for a dataset at a URL (read through fsspec, never written)."""
        return isinstance(self.root, UrlPath)

    def writable(self, what: str = "this command") -> None:
        """DatasetError (one line) if the dataset is at a URL: htouch only reads those."""
        if self.remote:
            raise DatasetError(f"{self.root} is a dataset at a URL, which htouch only reads; {what} writes to "
                               "the dataset: run it on a local copy")

    def _open(self) -> None:
        meta_path = self.root / METADATA_FILE
        if self.remote:  # one read tells a missing bucket, object or credentials (location.reading's line)
            try:
                self.metadata = read_json(meta_path, "dataset metadata", strict=True)
            except DatasetError as e:
                raise DatasetError(f"no htouch dataset at {self.root}: {e}") from None
        else:
            if not self.root.is_dir():
                raise DatasetError(f"no dataset at {self.root}: directory not found")
            if not meta_path.exists() and not meta_path.is_symlink():
                raise DatasetError(f"{self.root} is not an htouch dataset: {METADATA_FILE} not found")
            if not contained(self.root, meta_path).is_file():  # a FIFO would block, a device never end
                raise DatasetError(f"{meta_path} is not a regular file")
            self.metadata = read_json(meta_path, "dataset metadata", strict=True)
        if self.metadata.get("format") != DATASET_FORMAT:
            raise DatasetError(f"{meta_path}: not an htouch dataset file (format is {self.metadata.get('format')!r})")
        version = self.metadata.get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise DatasetError(f"{meta_path}: schema version {version!r} is not supported "
                               f"(this htouch reads up to {SCHEMA_VERSION}); upgrade htouch")
        try:
            _check_metadata(self.metadata)
            self.streams = StreamSpecs.from_dict(self.metadata.get("rig", {}))
        except DatasetError as e:
            raise DatasetError(f"{meta_path}: {e}") from None
        next_index(self.metadata, meta_path)

    def path(self, *parts: str) -> Path:
        """ROOT/parts, after checking that no part of it is a symbolic link (see `contained`)."""
        return contained(self.root, self.root.joinpath(*parts))

    # ---------------------------------------------------------------- creation and metadata

    def require_audio(self, what: str) -> None:
        """DatasetError (one line) when the dataset's rig has no microphones (`audio.channels` 0, such as a
        dataset imported from LeRobot without audio) and `what` (a method, a command) needs the contact audio."""
        if not self.streams.has_audio:
            raise DatasetError(f"{what} needs contact audio, but {self.root} has no audio streams (its rig has no "
                               "microphones); of the training methods only vision-only works without it")

    @classmethod
    def create(cls, root: str | os.PathLike[str], task: str, streams: StreamSpecs | None = None) -> Dataset:
        """Create a new empty dataset; refuses to touch an existing one (and a URL: htouch writes only locally)."""
        if isinstance(location(root), UrlPath):
            raise DatasetError(f"{root} is a URL; htouch creates datasets only in local directories")
        root = Path(root)
        if (root / METADATA_FILE).exists():
            raise DatasetError(f"a dataset already exists at {root}")
        if root.exists() and any(root.iterdir()):
            raise DatasetError(f"{root} exists and is not empty; choose a new directory")
        root.mkdir(parents=True, exist_ok=True)
        streams = streams or StreamSpecs()
        check_strict_json(streams.to_dict(), f"{root / METADATA_FILE} (not created)")
        write_json_atomic(root / METADATA_FILE, {
            "format": DATASET_FORMAT,
            "schema_version": SCHEMA_VERSION,
            "task": task,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "rig": streams.to_dict(),
            "next_episode_index": 0,
        }, strict=True)
        return cls(root)

    @classmethod
    def open_or_create(cls, root: str | os.PathLike[str], task: str, streams: StreamSpecs | None = None) -> Dataset:
        """Resume an existing dataset (same task and rig) or start a new one."""
        if isinstance(location(root), UrlPath):
            raise DatasetError(f"{root} is a URL; htouch records only into local directories")
        if (Path(root) / METADATA_FILE).exists():
            ds = cls(root)
            if ds.task != task:
                raise DatasetError(f"{root} holds task {ds.task!r}, not {task!r}; choose another directory")
            if streams is not None and streams.to_dict() != ds.streams.to_dict():
                diff = _streams_difference(ds.streams, streams)
                raise DatasetError(f"{root} was recorded with a different rig ({diff}); choose another directory")
            return ds
        return cls.create(root, task, streams)

    @property
    def task(self) -> str:
        return str(self.metadata.get("task", ""))

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive lock for read-modify-write of the dataset metadata (across processes)."""
        self.writable("changing htouch.json")
        fd = open_lock(self.path(LOCK_FILE))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def update_metadata(self, **changes: Any) -> dict[str, Any]:
        """Set top-level metadata keys (None deletes one) atomically; returns the new metadata."""
        with self.lock():
            meta = read_json(self.root / METADATA_FILE, "dataset metadata", strict=True)
            for key, value in changes.items():
                if value is None:
                    meta.pop(key, None)
                else:
                    meta[key] = value
            write_json_atomic(self.root / METADATA_FILE, meta, strict=True)
        self.metadata = meta
        return meta

    # ---------------------------------------------------------------- episodes

    def reserve_index(self) -> int:
        """A fresh episode index, never handed out before, even if that episode was deleted or discarded.
        DatasetError when the indices the episode names can hold are used up."""
        path = self.root / METADATA_FILE
        with self.lock():
            meta = read_json(path, "dataset metadata", strict=True)
            seen = [i + 1 for i in self._indices_on_disk()]
            index = max([next_index(meta, path), *seen])
            if index > MAX_EPISODE_INDEX:
                raise DatasetError(f"{path}: no episode index left: the next would be {index}, beyond "
                                   f"{episode_name(MAX_EPISODE_INDEX)}, the last name the format allows; "
                                   "record into a new dataset")
            meta["next_episode_index"] = index + 1
            write_json_atomic(path, meta, strict=True)
        self.metadata = meta
        return index

    def _indices_on_disk(self) -> Iterator[int]:
        for folder in (self.root, self.path(INCOMING), self.path(QUARANTINE)):
            if folder.is_dir():
                for p in folder.iterdir():
                    if p.name.startswith(EPISODE_PREFIX):
                        i = parse_episode_name(p.name.split(".")[0])
                        if i is not None:
                            yield i

    def episode_indices(self) -> list[int]:
        """Indices of the committed episodes, in order (gaps stay gaps): directories `episode_000012` and packed
        files `episode_000012.zip` (packed.py)."""
        out, packed = set(), set()
        for p in self.root.iterdir():
            if p.name.startswith(EPISODE_PREFIX):
                name = p.name.removesuffix(PACKED_SUFFIX)
                i = parse_episode_name(name)
                if i is None or name != episode_name(i) or i in self.left_out:
                    continue
                if p.is_dir() if name == p.name else (p.is_file() or p.is_symlink()):
                    out.add(i)
                    if name != p.name:
                        packed.add(i)
        if self.remote:  # what the listing showed, so that opening an episode asks the storage nothing more
            self._packed_at_url = packed
        return sorted(out)

    def episode_path(self, index: int) -> Path | ZipPath:
        """Where committed episode `index` is: its directory, or its packed file as a ZipPath (the one place that
        chooses: packed.episode_location). The directory is returned when neither exists."""
        known = self._packed_at_url
        return episode_location(self.root, episode_name(index), None if known is None else index in known)

    def episode(self, ref: int | str, check: bool = True) -> Episode:
        """Open a committed episode by index or name (`12`, `episode_12`, `episode_000012`) for reading.
        check=True (every reader) first runs the cheap structural checks of structure.py once per episode and
        raises DamagedEpisodeError (a DatasetError: one line naming the episode and the problem) if it fails.
        check=False skips the array checks but not the file checks (no link, FIFO or device is ever opened): for
        code that only needs the attributes."""
        from htouch.dataset.structure import open_episode

        index = ref if isinstance(ref, int) else parse_episode_name(str(ref))
        if index is None:
            raise DatasetError(f"{ref!r} is not an episode name (expected e.g. episode_12 or 12)")
        path = self.episode_path(index)
        if not path.is_dir() and not path.is_symlink():
            raise DatasetError(f"episode {index} not found in {self.root}")
        if not check or path.name in self._checked:
            contained(self.root, unpacked_path(path))
            return open_episode(path, dataset=self, structure=False)
        ep = open_episode(path, dataset=self)
        self._checked.add(path.name)
        return ep

    def episodes(self, check: bool = True) -> Iterator[Episode]:
        for i in self.episode_indices():
            yield self.episode(i, check=check)

    def leave_out_damaged(self, indices: list[int] | None = None) -> list[str]:
        """Check the given committed episodes (all by default) and hide those that fail the structural checks
        from `episode_indices` (and so from splits, stats and training); returns one line per episode left
        out. For `htouch train --skip-invalid`: nothing is left out without a word."""
        from htouch.errors import DamagedEpisodeError

        lines = []
        for i in self.episode_indices() if indices is None else indices:
            try:
                self.episode(i)
            except DamagedEpisodeError as e:
                self.left_out[i] = e.problem
                lines.append(f"left out {e}")
        return lines

    def incoming_paths(self) -> list[Path]:
        """The episodes in .incoming (symbolic links among them too, so that repair can refuse them)."""
        folder = self.path(INCOMING)
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir()
                      if (p.is_dir() or p.is_symlink()) and p.name.startswith(EPISODE_PREFIX)
                      and not p.name.endswith(".lock"))

    def new_episode(self, **kwargs: Any) -> EpisodeWriter:
        """Start writing the next episode. Keyword arguments go to EpisodeWriter."""
        from htouch.dataset.writer import EpisodeWriter

        return EpisodeWriter(self, self.reserve_index(), **kwargs)

    def delete_episode(self, index: int) -> None:
        """Delete a committed episode. Its index is never reused; later episodes keep theirs."""
        self.writable("deleting an episode")
        path = unpacked_path(self.episode_path(index))
        if not path.exists():
            raise DatasetError(f"episode {index} not found in {self.root}")
        contained(self.root, path)
        trash = self.path(INCOMING, f".deleting-{path.name}")
        trash.parent.mkdir(exist_ok=True)
        os.replace(path, trash)  # atomic: the episode is gone from the listing at once
        if trash.is_dir():
            shutil.rmtree(trash)
        else:
            trash.unlink()
        if self.episode_path(index).exists():  # the directory an interrupted pack left beside the packed file
            self.delete_episode(index)

    def __repr__(self) -> str:
        return f"Dataset({str(self.root)!r}, task={self.task!r})"


# -------------------------------------------------------------------- resolving command-line names


def _streams_difference(stored: StreamSpecs, new: StreamSpecs) -> str:
    """The first few settings that differ, as `camera.width 64 -> 640`."""
    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    a, b = flat(stored.to_dict()), flat(new.to_dict())
    diffs = [f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]
    return ", ".join(diffs[:3]) + (f" and {len(diffs) - 3} more" if len(diffs) > 3 else "")


def find_dataset(path: str | os.PathLike[str] | None = None) -> Dataset:
    """The dataset a command means: PATH if given, else the current directory, else the one dataset
    directly below it (where `htouch collect` leaves it)."""
    if path is not None:
        return Dataset(path)
    cwd = Path.cwd()
    if (cwd / METADATA_FILE).exists():
        return Dataset(cwd)
    found = sorted(p for p in cwd.iterdir() if (p / METADATA_FILE).exists()) if cwd.is_dir() else []
    if len(found) == 1:
        return Dataset(found[0])
    if not found:
        raise DatasetError(f"no htouch dataset in {cwd} or directly below it; give its directory "
                           "(see the command's --help)")
    names = ", ".join(p.name for p in found)
    raise DatasetError(f"several datasets below {cwd} ({names}); give its directory"
                       " (see the command's --help)")


def resolve_episode_path(ref: str, dataset: str | os.PathLike[str] | None = None) -> tuple[Dataset, Path | ZipPath]:
    """Like `resolve_episode`, but without opening the episode (a validator reports an unreadable one)."""
    if parse_episode_name(ref) is not None and not Path(ref).exists():
        ds = find_dataset(dataset)
        index = parse_episode_name(ref)
        path = ds.episode_path(index)
        if not path.is_dir():
            raise DatasetError(f"episode {index} not found in {ds.root}")
        return ds, path
    path = location(ref)
    if not path.exists():
        raise DatasetError(f"episode {ref!r} not found (not an episode name, and no such path)")
    path = path.resolve()
    ds = Dataset(dataset) if dataset is not None else Dataset(path.parent)
    root = ds.root.resolve()
    if path.parent != root:
        raise DatasetError(f"{ref} is not an episode directory of the dataset at {ds.root}")
    name = path.name.removesuffix(PACKED_SUFFIX)
    index = parse_episode_name(name)
    if index is None or name != episode_name(index):
        raise DatasetError(f"{ref} is not a committed episode (expected a directory like episode_000012 or a packed "
                           "file like episode_000012.zip)")
    return ds, ds.episode_path(index)


def resolve_episode(ref: str, dataset: str | os.PathLike[str] | None = None) -> Episode:
    """An episode from a command-line reference: a name (`episode_12`, `12`) in the dataset found as in
    `find_dataset`, or a path to an episode directory inside a dataset."""
    ds, path = resolve_episode_path(ref, dataset)
    return ds.episode(parse_episode_name(path.name.removesuffix(PACKED_SUFFIX)))
