"""A dataset on disk: a directory with htouch.json and one Zarr store per episode.

    my_dataset/
      htouch.json                 dataset metadata (schema version, task, rig, split, stats, next index)
      episode_000000/             one committed episode (a Zarr v2 group)
      .incoming/episode_000001/   an episode being written; renamed into place when committed
      .quarantine/                incomplete episodes that could not be salvaged
      derived/                    caches computed from episodes (spectrograms)

One small class owns the directory; everything that changes htouch.json goes through `update_metadata`,
which holds a file lock and replaces the file atomically.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from htouch.dataset.schema import (
    DATASET_FORMAT,
    EPISODE_PREFIX,
    MAX_EPISODE_INDEX,
    METADATA_FILE,
    SCHEMA_VERSION,
    RigSpec,
    check_strict_json,
    episode_name,
    parse_episode_name,
)
from htouch.errors import DatasetError

if TYPE_CHECKING:
    from htouch.dataset.episode import Episode
    from htouch.dataset.writer import EpisodeWriter

INCOMING = ".incoming"
QUARANTINE = ".quarantine"
DERIVED = "derived"
LOCK_FILE = ".htouch.lock"


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; it replaces `path` when the block ends without an error
    (and is removed otherwise), so a reader (or a crash) sees the old file or the new one, never a mix."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}{_REPLACING}{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


_REPLACING = ".tmp"


def is_replacing_leftover(name: str) -> bool:
    """True for the name of a temporary file `replacing` leaves when a crash interrupts it (`.NAME.tmp<pid>`)."""
    head, sep, pid = name.rpartition(_REPLACING)
    return name.startswith(".") and bool(sep) and len(head) > 1 and pid.isdigit()


def write_json_atomic(path: Path, data: Any, strict: bool = False) -> None:
    """Replace `path` with `data` as JSON. strict=True (the dataset's own metadata): a NaN or infinite
    number is a DatasetError naming the file and the key, and nothing is written."""
    if strict:
        check_strict_json(data, str(path))
    text = json.dumps(data, indent=2, sort_keys=False, allow_nan=not strict)
    with replacing(path) as tmp, open(tmp, "w") as f:
        f.write(text + "\n")
        f.flush()
        os.fsync(f.fileno())


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"it contains {name}, which strict JSON does not allow")


def read_json(path: Path, what: str, strict: bool = False) -> dict[str, Any]:
    """A JSON object from `path`; DatasetError naming the file if it is missing, not JSON or not an object.
    strict=True also refuses NaN and Infinity (which Python's json accepts but strict parsers do not)."""
    try:
        with open(path) as f:
            data = json.load(f, parse_constant=_refuse_constant if strict else None)
    except FileNotFoundError:
        raise DatasetError(f"{what} not found: {path}") from None
    except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
        raise DatasetError(f"{what} is not valid JSON: {path} ({e})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{what} is not a JSON object: {path}")
    return data


def next_index(meta: dict[str, Any], path: Path) -> int:
    """htouch.json's next_episode_index (0 when absent); DatasetError naming the file if it is not a
    non-negative integer."""
    value = meta.get("next_episode_index", 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DatasetError(f"{path}: next_episode_index is {value!r}, expected a non-negative integer")
    return value


class Dataset:
    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        meta_path = self.root / METADATA_FILE
        if not self.root.is_dir():
            raise DatasetError(f"no dataset at {self.root}: directory not found")
        if not meta_path.exists():
            raise DatasetError(f"{self.root} is not an htouch dataset: {METADATA_FILE} not found")
        self.metadata = read_json(meta_path, "dataset metadata", strict=True)
        if self.metadata.get("format") != DATASET_FORMAT:
            raise DatasetError(f"{meta_path}: not an htouch dataset file (format is {self.metadata.get('format')!r})")
        version = self.metadata.get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise DatasetError(f"{meta_path}: schema version {version!r} is not supported "
                               f"(this htouch reads up to {SCHEMA_VERSION}); upgrade htouch")
        if not isinstance(self.metadata.get("task", ""), str):
            raise DatasetError(f"{meta_path}: task is {self.metadata['task']!r}, expected a string")
        next_index(self.metadata, meta_path)
        try:
            self.rig = RigSpec.from_dict(self.metadata.get("rig", {}))
        except DatasetError as e:
            raise DatasetError(f"{meta_path}: {e}") from None

    # ---------------------------------------------------------------- creation and metadata

    @classmethod
    def create(cls, root: str | os.PathLike[str], task: str, rig: RigSpec | None = None) -> "Dataset":
        """Create a new empty dataset; refuses to touch an existing one."""
        root = Path(root)
        if (root / METADATA_FILE).exists():
            raise DatasetError(f"a dataset already exists at {root}")
        if root.exists() and any(root.iterdir()):
            raise DatasetError(f"{root} exists and is not empty; choose a new directory")
        root.mkdir(parents=True, exist_ok=True)
        rig = rig or RigSpec()
        check_strict_json(rig.to_dict(), f"{root / METADATA_FILE} (not created)")
        write_json_atomic(root / METADATA_FILE, {
            "format": DATASET_FORMAT,
            "schema_version": SCHEMA_VERSION,
            "task": task,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "rig": rig.to_dict(),
            "next_episode_index": 0,
        }, strict=True)
        return cls(root)

    @classmethod
    def open_or_create(cls, root: str | os.PathLike[str], task: str, rig: RigSpec | None = None) -> "Dataset":
        """Resume an existing dataset (same task and rig) or start a new one."""
        if (Path(root) / METADATA_FILE).exists():
            ds = cls(root)
            if ds.task != task:
                raise DatasetError(f"{root} holds task {ds.task!r}, not {task!r}; choose another directory")
            if rig is not None and rig.to_dict() != ds.rig.to_dict():
                raise DatasetError(f"{root} was recorded with a different rig ({_rig_difference(ds.rig, rig)}); "
                                   "choose another directory")
            return ds
        return cls.create(root, task, rig)

    @property
    def task(self) -> str:
        return str(self.metadata.get("task", ""))

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive lock for read-modify-write of the dataset metadata (across processes)."""
        with open(self.root / LOCK_FILE, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

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
        for folder in (self.root, self.root / INCOMING, self.root / QUARANTINE):
            if folder.is_dir():
                for p in folder.iterdir():
                    if p.name.startswith(EPISODE_PREFIX):
                        i = parse_episode_name(p.name.split(".")[0])
                        if i is not None:
                            yield i

    def episode_indices(self) -> list[int]:
        """Indices of the committed episodes, in order (gaps stay gaps)."""
        out = []
        for p in self.root.iterdir():
            if p.is_dir() and p.name.startswith(EPISODE_PREFIX):
                i = parse_episode_name(p.name)
                if i is not None and p.name == episode_name(i):
                    out.append(i)
        return sorted(out)

    def episode_path(self, index: int) -> Path:
        return self.root / episode_name(index)

    def episode(self, ref: int | str) -> "Episode":
        """Open a committed episode by index or name (`12`, `episode_12`, `episode_000012`)."""
        from htouch.dataset.episode import Episode

        index = ref if isinstance(ref, int) else parse_episode_name(str(ref))
        if index is None:
            raise DatasetError(f"{ref!r} is not an episode name (expected e.g. episode_12 or 12)")
        path = self.episode_path(index)
        if not path.is_dir():
            raise DatasetError(f"episode {index} not found in {self.root}")
        return Episode(path, dataset=self)

    def episodes(self) -> Iterator["Episode"]:
        for i in self.episode_indices():
            yield self.episode(i)

    def incoming_paths(self) -> list[Path]:
        folder = self.root / INCOMING
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith(EPISODE_PREFIX))

    def new_episode(self, **kwargs: Any) -> "EpisodeWriter":
        """Start writing the next episode. Keyword arguments go to EpisodeWriter."""
        from htouch.dataset.writer import EpisodeWriter

        return EpisodeWriter(self, self.reserve_index(), **kwargs)

    def delete_episode(self, index: int) -> None:
        """Delete a committed episode. Its index is never reused; later episodes keep theirs."""
        path = self.episode_path(index)
        if not path.is_dir():
            raise DatasetError(f"episode {index} not found in {self.root}")
        trash = self.root / INCOMING / f".deleting-{path.name}"
        trash.parent.mkdir(exist_ok=True)
        os.replace(path, trash)  # atomic: the episode is gone from the listing at once
        shutil.rmtree(trash)

    def __repr__(self) -> str:
        return f"Dataset({str(self.root)!r}, task={self.task!r})"


# -------------------------------------------------------------------- resolving command-line names


def _rig_difference(stored: RigSpec, new: RigSpec) -> str:
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
        raise DatasetError(f"no htouch dataset in {cwd} or directly below it; name one with --dataset")
    names = ", ".join(p.name for p in found)
    raise DatasetError(f"several datasets below {cwd} ({names}); name one with --dataset")


def resolve_episode_path(ref: str, dataset: str | os.PathLike[str] | None = None) -> tuple[Dataset, Path]:
    """Like `resolve_episode`, but without opening the episode (a validator reports an unreadable one)."""
    if parse_episode_name(ref) is not None and not Path(ref).is_dir():
        ds = find_dataset(dataset)
        index = parse_episode_name(ref)
        path = ds.episode_path(index)
        if not path.is_dir():
            raise DatasetError(f"episode {index} not found in {ds.root}")
        return ds, path
    path = Path(ref)
    if not path.exists():
        raise DatasetError(f"episode {ref!r} not found (not an episode name, and no such path)")
    path = path.resolve()
    ds = Dataset(dataset) if dataset is not None else Dataset(path.parent)
    root = ds.root.resolve()
    if path.parent != root:
        raise DatasetError(f"{ref} is not an episode directory of the dataset at {ds.root}")
    index = parse_episode_name(path.name)
    if index is None or path.name != episode_name(index):
        raise DatasetError(f"{ref} is not a committed episode directory (expected a name like episode_000012)")
    return ds, ds.episode_path(index)


def resolve_episode(ref: str, dataset: str | os.PathLike[str] | None = None) -> "Episode":
    """An episode from a command-line reference: a name (`episode_12`, `12`) in the dataset found as in
    `find_dataset`, or a path to an episode directory inside a dataset."""
    ds, path = resolve_episode_path(ref, dataset)
    return ds.episode(parse_episode_name(path.name))
