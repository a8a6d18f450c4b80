"""Packed episodes: a committed episode kept as one zip file (`episode_000012.zip`) instead of a directory of
one file per Zarr chunk (about 500 for 14 s), written by `htouch pack`.

The zip holds exactly the files of the episode directory, under their paths relative to it, uncompressed
(ZIP_STORED: the chunks are compressed already), `manifest.json` included. So the episode is the same Zarr
format-2 group (plain zarr reads it with `zarr.storage.ZipStore(path, mode="r")`), and its checksum manifest
verifies the members exactly as it verified the files. docs/bench-pack.md has the measurements that chose a zip
over Zarr format 3 with sharding (files per episode, bytes, random reads).

`episode_location` is the one place that says where an episode is: its directory, or its packed file opened
as a `ZipPath` (a StoredPath, location.py: the part of pathlib.Path readers use). A member is read with
os.pread at its offset (one open and one read, as a chunk file costs): no file position is shared, so threads
and forked DataLoader workers read one archive safely. A packed file that is not a sound zip (truncated,
compressed or encrypted members, names leaving the episode, members marked as links) has `problems()`, which
structure.unsafe_files reports, so no reader opens it and `htouch validate` names it in one line.

Packing keeps the dataset's guarantees (`pack_episode`, in this order, each step a crash point of
crashpoints.py): the directory is checked against its manifest; the zip is written under a hidden temporary
name in the dataset (`.episode_000012.zip.packing`), fsynced and verified (zip structure, structural checks,
every member hashed against the manifest) [pack.written, pack.verified]; it is renamed into place
[pack.renamed]: from then on readers open the packed file; the directory is moved aside into
`.incoming/.deleting-episode_000012` [pack.moved] and removed [pack.removed]. A crash anywhere leaves either the
directory or a verified packed file (or both: the packed file wins); `htouch pack` run again finishes the job
and `htouch validate` warns (`episode.pack`) until it has. The episode being recorded stays a directory in
.incoming; packing is only for committed episodes.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import shutil
import stat
import struct
import threading
import zipfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from htouch.dataset import crashpoints
from htouch.dataset.location import StoredPath, UrlPath, reading
from htouch.errors import DatasetError

PACKED_SUFFIX = ".zip"
PACKING_SUFFIX = ".packing"  # the temporary file pack writes: `.episode_000012.zip.packing`
DELETING_PREFIX = ".deleting-"  # a directory moved into .incoming to be removed (as Dataset.delete_episode does)
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., name length, extra length (30 bytes)
_ARCHIVES_KEPT = 256  # central directories kept per process


def packed_name(name: str) -> str:
    """The file name of a packed episode: `episode_000012` -> `episode_000012.zip`."""
    return name + PACKED_SUFFIX


def packing_name(name: str) -> str:
    """The hidden temporary name a packed file is written under before it is verified and renamed."""
    return f".{packed_name(name)}{PACKING_SUFFIX}"


def episode_location(root: Path | UrlPath, name: str, packed_at_url: bool | None = None) -> Path | ZipPath:
    """Where the committed episode `name` (`episode_000012`) of the dataset at `root` is: its packed file as a
    ZipPath when there is one (a regular file or a link, which the readers' checks then refuse), else its
    directory (which may not exist; callers say so). When both exist a pack was interrupted after the packed
    file was verified and renamed into place: the packed file is the episode. packed_at_url: for a dataset at a
    URL, whether its listing showed the packed file (None: ask the storage, one request)."""
    packed = root / packed_name(name)
    if isinstance(root, UrlPath):
        if packed_at_url is None:
            packed_at_url = packed.is_file()
        return ZipPath(_archive(packed)) if packed_at_url else root / name
    if packed.is_symlink() or packed.is_file():
        return ZipPath(_archive(packed))
    return root / name


def unpacked_path(path: Path | ZipPath) -> Path | UrlPath:
    """The file or directory on disk (or at a URL) that holds the episode at `path`."""
    return path.archive.file if isinstance(path, ZipPath) else path


# ------------------------------------------------------------------------------------------------ reading


class _Archive:
    """The central directory of one packed file, read once (a packed file is never changed, only replaced).
    `problems` lists what makes it unsafe or impossible to read; members are then not read."""

    def __init__(self, file: Path | UrlPath):
        self.file = file
        self.name = file.name.removesuffix(PACKED_SUFFIX)
        self.sizes: dict[str, int] = {}
        self.problems: list[tuple[str, str]] = []
        self._headers: dict[str, int] = {}  # member -> offset of its local header
        self._data: dict[str, int] = {}  # member -> offset of its bytes, known once read
        self._lock = threading.Lock()
        self._load()

    def _load(self) -> None:
        if not isinstance(self.file, UrlPath):
            try:
                st = os.lstat(self.file)
            except OSError as e:
                self.problems.append(("", f"{self.file.name} cannot be read ({e.strerror})"))
                return
            if stat.S_ISLNK(st.st_mode):
                self.problems.append(("", f"{self.file.name} is a symbolic link (to {os.path.realpath(self.file)}); "
                                          "htouch does not follow links inside a dataset"))
                return
            if not stat.S_ISREG(st.st_mode):
                self.problems.append(("", f"{self.file.name} is not a regular file (a FIFO, device or socket)"))
                return
            self.size = st.st_size
        try:
            with self._open() as f:
                if isinstance(self.file, UrlPath):
                    self.size = f.seek(0, io.SEEK_END)
                    f.seek(0)
                infos = zipfile.ZipFile(f).infolist()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, struct.error) as e:
            self.problems.append(("", f"{self.file.name} is not a readable zip file (truncated or damaged: {e})"))
            return
        except OSError as e:
            self.problems.append(("", f"{self.file.name} cannot be read ({e.strerror or e})"))
            return
        for info in infos:
            why = _member_problem(info, self.size, self.sizes)
            if why:
                self.problems.append((info.filename, f"{why} (in {self.file.name})"))
            else:
                self.sizes[info.filename] = info.file_size
                self._headers[info.filename] = info.header_offset

    def _open(self) -> Any:
        if isinstance(self.file, UrlPath):
            return self.file.open("rb")
        return open(os.open(self.file, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb")

    def _pread(self, fd: int | None, offset: int, n: int) -> bytes:
        if fd is None:
            with reading(str(self.file)):
                data = self.file.fs.cat_file(self.file.path, start=offset, end=offset + n)
        else:
            data = os.pread(fd, n, offset)
        if len(data) != n:
            raise DatasetError(f"{self.file}: the packed file ends inside a member (truncated)")
        return data

    def read(self, member: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes [start, end) of a member; FileNotFoundError if there is no such member."""
        size = self.sizes.get(member)
        if size is None or self.problems:
            raise FileNotFoundError(f"{self.file}/{member}")
        end = size if end is None else min(end, size)
        start = min(max(start, 0), end)
        fd = None if isinstance(self.file, UrlPath) else os.open(self.file, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            data_at = self._data.get(member)
            if data_at is None:
                # The local header and the bytes in one read, as the header is when htouch wrote the file (no
                # extra field); a header with an extra field costs a second read.
                header = self._headers[member]
                guess = header + _LOCAL_HEADER.size + len(member.encode())
                first = self._pread(fd, header, min(guess + end, self.size) - header)
                sig, name_len, extra_len = _LOCAL_HEADER.unpack(first[:_LOCAL_HEADER.size])
                if sig != b"PK\x03\x04":
                    raise DatasetError(f"{self.file}: member {member} has no header at its offset (the packed "
                                       "file is damaged)")
                data_at = header + _LOCAL_HEADER.size + name_len + extra_len
                if data_at + size > self.size:
                    raise DatasetError(f"{self.file}: member {member} ends beyond the end of the file (truncated)")
                with self._lock:
                    self._data[member] = data_at
                if data_at == guess and len(first) == guess + end - header:
                    return first[guess - header + start:]
            return self._pread(fd, data_at + start, end - start) if end > start else b""
        finally:
            if fd is not None:
                os.close(fd)


def _member_problem(info: zipfile.ZipInfo, archive_size: int, seen: dict[str, int]) -> str | None:
    """Why a member may not be read, or None. Members are plain files stored as they are, below the episode."""
    name = info.filename
    parts = name.split("/")
    if not name or name.startswith("/") or "\\" in name or any(p in ("", ".", "..") for p in parts):
        return "the name leaves the episode or is not a plain relative path"
    if name in seen:
        return "the name appears twice"
    if info.flag_bits & 0x1:
        return "is encrypted"
    if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
        return f"is compressed (method {info.compress_type}); a packed episode stores its files as they are"
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "is marked as a symbolic link; an episode holds only regular files"
    if mode and not stat.S_ISREG(mode):
        return "is not a regular file"
    if info.header_offset + _LOCAL_HEADER.size + len(name) + info.file_size > archive_size:
        return "ends beyond the end of the file (truncated)"
    return None


_cache: collections.OrderedDict[tuple[str, int, int], _Archive] = collections.OrderedDict()
_cache_lock = threading.Lock()


def _archive(file: Path | UrlPath) -> _Archive:
    """The archive of a packed file, from the process's cache when the file is unchanged (same size and
    modification time; a URL's packed file is read once, as its listings are)."""
    if isinstance(file, UrlPath):
        key = (str(file), 0, 0)
    else:
        try:
            st = os.lstat(file)
            key = (str(file), st.st_size, st.st_mtime_ns)
        except OSError:
            return _Archive(file)
    with _cache_lock:
        found = _cache.get(key)
        if found is not None:
            _cache.move_to_end(key)
            return found
    archive = _Archive(file)
    with _cache_lock:
        _cache[key] = archive
        while len(_cache) > _ARCHIVES_KEPT:
            _cache.popitem(last=False)
    return archive


def open_packed(file: str | os.PathLike[str] | UrlPath) -> ZipPath:
    """A packed episode file as the ZipPath of its episode."""
    return ZipPath(_archive(file if isinstance(file, UrlPath) else Path(file)))


class _Stat:
    def __init__(self, size: int):
        self.st_size = size


class ZipPath(StoredPath):
    """A file or folder inside a packed episode (`rel` "" is the episode itself, named like its directory):
    the subset of pathlib.Path that readers use, as UrlPath offers it. Read-only; pickles as its file."""

    __slots__ = ("archive", "rel")

    def __init__(self, archive: _Archive, rel: str = ""):
        self.archive, self.rel = archive, rel.strip("/")

    # ---------------------------------------------------------------- names

    @property
    def name(self) -> str:
        return self.rel.rsplit("/", 1)[-1] if self.rel else self.archive.name

    @property
    def parent(self) -> Any:
        if not self.rel:
            return self.archive.file.parent
        return ZipPath(self.archive, self.rel.rsplit("/", 1)[0] if "/" in self.rel else "")

    def __truediv__(self, name: str | os.PathLike[str]) -> ZipPath:
        name = str(name).strip("/")
        return ZipPath(self.archive, f"{self.rel}/{name}" if self.rel and name else self.rel or name)

    def joinpath(self, *parts: str) -> ZipPath:
        out = self
        for p in parts:
            out = out / p
        return out

    def with_name(self, name: str) -> Any:
        return self.parent / name

    def relative_to(self, other: Any) -> PurePosixPath:
        if not isinstance(other, ZipPath) or other.archive.file != self.archive.file:
            raise ValueError(f"{self} is not below {other}")
        if other.rel and not (self.rel == other.rel or self.rel.startswith(other.rel + "/")):
            raise ValueError(f"{self} is not below {other}")
        rest = self.rel[len(other.rel):].strip("/")
        return PurePosixPath(rest or ".")

    def __str__(self) -> str:
        return f"{self.archive.file}/{self.rel}" if self.rel else str(self.archive.file)

    def __repr__(self) -> str:
        return f"ZipPath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ZipPath) and (str(self.archive.file), self.rel) == (str(other.archive.file),
                                                                                      other.rel)

    def __hash__(self) -> int:
        return hash((str(self.archive.file), self.rel))

    def __reduce__(self) -> tuple[Any, ...]:
        return (_zip_path, (self.archive.file, self.rel))

    def __deepcopy__(self, memo: dict[int, Any]) -> ZipPath:
        return self

    def resolve(self) -> ZipPath:
        return self

    absolute = resolve

    def as_posix(self) -> str:
        return str(self)

    # ---------------------------------------------------------------- reading

    def problems(self) -> list[tuple[str, str]]:
        return list(self.archive.problems) if not self.rel else []

    def files(self) -> dict[str, int | None]:
        if not self.rel:
            return dict(self.archive.sizes)
        prefix = self.rel + "/"
        return {k[len(prefix):]: v for k, v in self.archive.sizes.items() if k.startswith(prefix)}

    def exists(self) -> bool:
        return not self.rel or self.is_file() or self.is_dir()

    def is_file(self) -> bool:
        return bool(self.rel) and self.rel in self.archive.sizes

    def is_dir(self) -> bool:
        return not self.rel or any(k.startswith(self.rel + "/") for k in self.archive.sizes)

    def is_symlink(self) -> bool:
        return False  # a member marked as a link is one of the archive's problems

    def iterdir(self) -> Iterable[ZipPath]:
        seen = []
        for k in self.files():
            first = k.split("/", 1)[0]
            if first not in seen:
                seen.append(first)
        return [self / n for n in sorted(seen)]

    def stat(self) -> _Stat:
        size = self.archive.sizes.get(self.rel)
        if size is None:
            raise FileNotFoundError(str(self))
        return _Stat(size)

    def read_bytes(self) -> bytes:
        return self.archive.read(self.rel)

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def open(self, mode: str = "rb") -> io.BytesIO:
        if mode != "rb":
            raise DatasetError(f"{self}: a packed episode is only read")
        return io.BytesIO(self.read_bytes())

    def zarr_store(self) -> Any:
        from htouch.dataset.packed_store import PackedStore  # zarr: only for commands that read arrays

        return PackedStore(self.archive, self.rel)


def _zip_path(file: Path | UrlPath, rel: str) -> ZipPath:
    return ZipPath(_archive(file), rel)


# ------------------------------------------------------------------------------------------------ packing


def _write_zip(src: Path, files: list[str], out: Path, manifest: bytes) -> None:
    """Write the episode's files and `manifest` (as manifest.json) into a new zip at `out`, fsynced."""
    from htouch.dataset.manifest import MANIFEST_FILE

    with open(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644), "wb") as f:
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            # metadata first: opening the group reads them, and they then lie together at the start of the file
            order = sorted(files, key=lambda p: (not p.rsplit("/", 1)[-1].startswith("."), p))
            for rel in [*order, MANIFEST_FILE]:
                info = zipfile.ZipInfo(rel, date_time=(1980, 1, 1, 0, 0, 0))  # the same episode packs the same
                info.compress_type = zipfile.ZIP_STORED
                info.external_attr = (stat.S_IFREG | 0o644) << 16
                zf.writestr(info, manifest if rel == MANIFEST_FILE else (src / rel).read_bytes())
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pack_episode(ds: Any, index: int) -> str:
    """Pack committed episode `index` of the local dataset `ds` into one file (module docstring: the steps and
    what a crash leaves). Returns one line saying what was done. DatasetError (one line, nothing changed) if
    the episode is damaged: it must pass the readers' structural checks and match its manifest."""
    from htouch.dataset.files import contained
    from htouch.dataset.manifest import (
        ALGORITHM,
        MANIFEST_FILE,
        MANIFEST_FORMAT,
        MANIFEST_VERSION,
        episode_files,
        file_hash,
        files_digest,
        read_manifest,
        verify_files,
    )
    from htouch.dataset.schema import INCOMING, episode_name
    from htouch.dataset.structure import open_episode

    ds.writable("htouch pack")
    name = episode_name(index)
    directory = contained(ds.root, ds.root / name)
    packed = contained(ds.root, ds.root / packed_name(name))
    tmp = contained(ds.root, ds.root / packing_name(name))
    trash = ds.root / INCOMING / f"{DELETING_PREFIX}{name}"
    with ds.lock():
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()  # left by an interrupted pack: never renamed, so never the episode
        if trash.is_dir() and not trash.is_symlink():
            shutil.rmtree(contained(ds.root, trash))
        if packed.exists() or packed.is_symlink():
            if not directory.is_dir():
                return f"{name} is packed already"
            open_episode(ZipPath(_archive(packed)), dataset=ds)  # a damaged one is refused, and the directory kept
            _remove_directory(ds, directory, trash)
            return f"{name} was packed; removed the directory an interrupted pack left"
        if not directory.is_dir():
            raise DatasetError(f"episode {index} not found in {ds.root}")
        open_episode(directory, dataset=ds)  # no links, FIFOs, devices; arrays as the schema says
        manifest = read_manifest(directory)  # ManifestError: a DatasetError naming the problem
        files = episode_files(directory)
        if manifest is None:  # recorded before checksums: the packed file gets a manifest of its own
            entries = {p: {"size": (directory / p).stat().st_size, "hash": file_hash(directory / p)} for p in files}
            manifest = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "algorithm": ALGORITHM,
                        "files": entries, "digest": files_digest(entries)}
            manifest_bytes, made = (json.dumps(manifest, indent=2) + "\n").encode(), True
        else:
            bad = verify_files(directory, manifest)
            if bad:
                raise DatasetError(f"{name} does not match its checksum manifest ({bad[0].file}: {bad[0].message}"
                                   f"{f'; and {len(bad) - 1} more' if len(bad) > 1 else ''}); not packed: "
                                   "`htouch validate` lists the damage")
            manifest_bytes, made = (directory / MANIFEST_FILE).read_bytes(), False
        try:
            try:
                _write_zip(directory, files, tmp, manifest_bytes)
            except OSError as e:  # a full disk, a read-only dataset
                raise DatasetError(f"cannot write {tmp} ({e.strerror or e}); {name} is unchanged") from None
            crashpoints.reached("pack.written")
            packed_ep = ZipPath(_Archive(tmp))
            if packed_ep.problems():
                raise DatasetError(f"{name}: the packed file does not read back ({packed_ep.problems()[0][1]}); "
                                   "not packed")
            bad = verify_files(packed_ep, manifest)
            if bad:
                raise DatasetError(f"{name}: the packed file does not match the manifest ({bad[0].file}: "
                                   f"{bad[0].message}); not packed")
            open_episode(packed_ep, dataset=ds)
            crashpoints.reached("pack.verified")
            os.rename(tmp, packed)
            _fsync_dir(ds.root)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        crashpoints.reached("pack.renamed")
        _remove_directory(ds, directory, trash)
    note = " (it had no checksum manifest: the packed file has one)" if made else ""
    return f"packed {name}: {len(files) + 1} files -> 1 ({packed.stat().st_size / 1e6:.2f} MB){note}"


def _remove_directory(ds: Any, directory: Path, trash: Path) -> None:
    """Move the unpacked directory out of the listing at once (a rename), then delete it."""
    trash.parent.mkdir(exist_ok=True)
    os.replace(directory, trash)
    _fsync_dir(ds.root)
    crashpoints.reached("pack.moved")
    shutil.rmtree(trash)
    crashpoints.reached("pack.removed")


def interrupted_packs(root: Path) -> list[tuple[str, str]]:
    """(name, what is left) for every pack a crash interrupted in the dataset at `root`: a temporary packed
    file, an episode directory beside its packed file, or a directory moved aside and not yet deleted. All are
    harmless (readers use the packed file, never the others) and `htouch pack` run again clears them."""
    from htouch.dataset.schema import INCOMING

    if isinstance(root, UrlPath) or not Path(root).is_dir():
        return []
    root, out = Path(root), []
    for p in sorted(root.iterdir()):
        if p.name.startswith(".") and p.name.endswith(PACKED_SUFFIX + PACKING_SUFFIX):
            out.append((p.name[1:].removesuffix(PACKED_SUFFIX + PACKING_SUFFIX),
                        f"{p.name}: a packed file an interrupted `htouch pack` did not finish"))
        elif p.name.endswith(PACKED_SUFFIX) and not p.is_symlink() and (root / p.name.removesuffix(
                PACKED_SUFFIX)).is_dir():
            out.append((p.name.removesuffix(PACKED_SUFFIX), f"the directory {p.name.removesuffix(PACKED_SUFFIX)} is "
                        f"still there beside {p.name}, which readers use (an interrupted `htouch pack`)"))
    incoming = root / INCOMING
    if incoming.is_dir() and not incoming.is_symlink():
        for p in sorted(incoming.iterdir()):
            name = p.name.removeprefix(DELETING_PREFIX).removesuffix(PACKED_SUFFIX)
            if p.name.startswith(DELETING_PREFIX) and (root / packed_name(name)).exists():
                out.append((name, f"{INCOMING}/{p.name}: the directory an interrupted `htouch pack` moved aside "
                                  "to delete"))
    return out
