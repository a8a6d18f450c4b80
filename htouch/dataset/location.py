"""Where a dataset lives: a local directory (a `Path`) or a URL that fsspec reads (a `UrlPath`).

`location(x)` is the one place that tells them apart. A string with a scheme (`s3://bucket/ds`,
`gs://...`, `https://host/ds`, any protocol fsspec knows) is a `UrlPath`; `file:///abs/ds` is the local
path `/abs/ds` (so it gets everything a local dataset gets: containment, locks, writing); anything else is a
`Path`, exactly as before. Code that reads a dataset keeps using `/`, `.name`, `.parent`, `.is_dir()`,
`.iterdir()`, `.exists()` on either; the few places that use the operating system directly (os.scandir,
os.walk, open, flock) branch on `isinstance(p, UrlPath)`, so a local dataset takes exactly the path it took
before.

A URL dataset is read-only: htouch never writes to one (`refuse_url` gives the one line a writing command
prints). Credentials and options are fsspec's own: environment variables and config files as the
filesystem reads them (s3fs: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_PROFILE / AWS_ENDPOINT_URL,
~/.aws/credentials; any protocol: FSSPEC_<PROTOCOL>_<OPTION> variables and ~/.config/fsspec/*.json), so they
reach DataLoader workers and torchrun ranks too, and no secret is stored in a run directory. Object stores
have no symbolic links, FIFOs or devices, so containment reduces to "below the root".

Listings of a URL are fetched once per directory tree and kept for the process (`UrlPath.files`): committed
episodes never change, and one listing of an episode answers the structure checks, the chunk-file checks
and the manifest check (one request instead of one per array).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple
from urllib.parse import unquote, urlparse

from htouch.errors import DatasetError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_LISTINGS: dict[str, dict[str, int | None]] = {}
_ZARR_METADATA = (".zarray", ".zattrs", ".zgroup")
# (_LISTINGS: url of a directory -> {relative file path: size}; see UrlPath.files)


def url_scheme(value: Any) -> str | None:
    """The scheme of a URL string (`s3`, `https`, ...), lowercased; None for a path or a Path."""
    if isinstance(value, UrlPath):
        return value.protocol
    if not isinstance(value, str):
        return None
    m = _SCHEME.match(value)
    return m.group(1).lower() if m else None


def is_url(value: Any) -> bool:
    """True for a dataset location htouch reads through fsspec (a URL other than file://)."""
    return isinstance(value, UrlPath) or url_scheme(value) not in (None, "file")


def location(value: str | os.PathLike[str] | StoredPath) -> Path | StoredPath:
    """A command-line or stored dataset location as a Path (local, file:// included) or a UrlPath (a
    StoredPath, such as an episode packed into one file, is returned as it is)."""
    if isinstance(value, (Path, StoredPath)):
        return value
    scheme = url_scheme(value)
    if scheme == "file":
        parsed = urlparse(value)
        if parsed.netloc not in ("", "localhost"):
            raise DatasetError(f"{value}: a file:// URL names a local path (file:///abs/path), not host "
                               f"{parsed.netloc!r}")
        return Path(unquote(parsed.path))
    if scheme is not None:
        return UrlPath.from_url(value)
    return Path(value)


def refuse_url(value: Any, command: str) -> None:
    """DatasetError (one line) when a writing command is given a URL: htouch writes only local directories."""
    if is_url(value):
        raise DatasetError(f"{command} writes, and {value} is a URL: htouch only reads datasets at URLs; "
                           "run it on a local copy (and upload the result)")


def zarr_store_or_path(path: Path | StoredPath) -> Any:
    """What zarr.open_group / open_array take for a path: the path string, or the StoredPath's read-only store
    (fsspec for a URL, the packed file for a packed episode)."""
    return path.zarr_store() if isinstance(path, StoredPath) else str(path)


class _Stat(NamedTuple):
    st_size: int


_NETWORK_MODULES = ("botocore", "aiobotocore", "aiohttp", "s3fs", "gcsfs", "google", "fsspec", "requests", "urllib3")


def is_storage_error(e: BaseException) -> bool:
    """True for an exception raised by a storage library (botocore, aiohttp, gcsfs, ...) rather than htouch."""
    return (type(e).__module__ or "").split(".")[0] in _NETWORK_MODULES


def remote_error(url: str, e: BaseException) -> DatasetError | None:
    """The one line for an error of the storage behind a URL (missing object or bucket, no credentials,
    access denied, unreachable server); None for an error that is not about storage (a bug stays a bug)."""
    name = type(e).__name__
    text = str(e).strip() or name
    if isinstance(e, FileNotFoundError):
        detail = "" if text.rstrip("/") in url else f" ({text})"
        return DatasetError(f"{url}: not found{detail}")
    if isinstance(e, PermissionError):
        return DatasetError(f"{url}: access denied ({text}); check the credentials fsspec uses for it")
    if isinstance(e, (OSError, TimeoutError)) or is_storage_error(e):
        hint = ""
        if "Credential" in name or "credentials" in text.lower():
            hint = ("; s3fs reads AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws/credentials "
                    "(docs/format.md, Datasets at URLs)")
        return DatasetError(f"cannot read {url}: {text} ({name}){hint}")
    return None


@contextlib.contextmanager
def reading(url: str) -> Iterator[None]:
    """Turn storage errors raised inside the block into one-line DatasetErrors naming `url`."""
    try:
        yield
    except DatasetError:
        raise
    except Exception as e:
        err = remote_error(url, e)
        if err is None:
            raise
        raise err from None


class StoredPath:
    """A path htouch reads through its own methods, never through the operating system's file functions: a
    file at a URL (UrlPath) or a file inside a packed episode (packed.ZipPath). Both offer the subset of
    pathlib.Path that readers use plus `files()` (one listing with sizes) and `zarr_store()`; code that
    would call os.scandir, os.walk or open on a Path branches on `isinstance(p, StoredPath)`."""

    __slots__ = ()

    def files(self) -> dict[str, int | None]:
        raise NotImplementedError

    def zarr_store(self) -> Any:
        raise NotImplementedError

    def problems(self) -> list[tuple[str, str]]:
        """(path relative to this folder, why) of what makes it unsafe or impossible to read (a packed file
        that is not a sound zip); empty by default."""
        return []


class UrlPath(StoredPath):
    """A file or directory at a URL, read through an fsspec filesystem: the subset of pathlib.Path that
    readers of a dataset use. It deliberately has no __fspath__, so nothing hands it to the local file
    system by mistake. Immutable; pickles as its URL (DataLoader workers, spawn) and re-opens the filesystem."""

    __slots__ = ("fs", "path", "protocol", "_kind")

    def __init__(self, fs: Any, path: str, protocol: str, kind: str | None = None):
        self.fs, self.path, self.protocol, self._kind = fs, path.rstrip("/"), protocol, kind

    @classmethod
    def from_url(cls, url: str) -> UrlPath:
        import fsspec

        scheme = url_scheme(url) or ""
        try:
            fs, path = fsspec.url_to_fs(url)
        except ImportError as e:
            raise DatasetError(f"{url}: reading {scheme}:// needs a package that is not installed ({e})") from None
        except ValueError as e:
            raise DatasetError(f"{url}: fsspec cannot read {scheme}:// URLs ({e})") from None
        except Exception as e:
            raise remote_error(url, e) or DatasetError(f"{url}: {type(e).__name__}: {e}") from None
        return cls(fs, path, scheme)

    # ---------------------------------------------------------------- names

    @property
    def url(self) -> str:
        if self.protocol in ("http", "https"):
            return self.path  # fsspec's HTTP paths are the URLs themselves
        return f"{self.protocol}://{self.path}"

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"UrlPath({self.url!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UrlPath) and (self.protocol, self.path) == (other.protocol, other.path)

    def __hash__(self) -> int:
        return hash((self.protocol, self.path))

    def __reduce__(self) -> tuple[Any, ...]:
        return (UrlPath.from_url, (self.url,))

    def __deepcopy__(self, memo: dict[int, Any]) -> UrlPath:
        return self

    def __truediv__(self, name: str | os.PathLike[str]) -> UrlPath:
        name = str(name).strip("/")
        return UrlPath(self.fs, f"{self.path}/{name}" if name else self.path, self.protocol)

    def joinpath(self, *parts: str) -> UrlPath:
        out = self
        for p in parts:
            out = out / p
        return out

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def parent(self) -> UrlPath:
        return UrlPath(self.fs, self.path.rsplit("/", 1)[0], self.protocol) if "/" in self.path else self

    def with_name(self, name: str) -> UrlPath:
        return self.parent / name

    def relative_to(self, other: Any) -> PurePosixPath:
        if not isinstance(other, UrlPath) or other.protocol != self.protocol:
            raise ValueError(f"{self} is not below {other}")
        if self.path == other.path:
            return PurePosixPath(".")
        if not self.path.startswith(other.path + "/"):
            raise ValueError(f"{self} is not below {other}")
        return PurePosixPath(self.path[len(other.path) + 1:])

    def resolve(self) -> UrlPath:
        return self

    absolute = resolve

    def as_posix(self) -> str:
        return self.url

    # ---------------------------------------------------------------- reading

    def exists(self) -> bool:
        with reading(self.url):
            return self._kind is not None or self.fs.exists(self.path)

    def is_dir(self) -> bool:
        if self._kind is not None:
            return self._kind == "directory"
        with reading(self.url):
            return self.fs.isdir(self.path)

    def is_file(self) -> bool:
        if self._kind is not None:
            return self._kind == "file"
        with reading(self.url):
            return self.fs.isfile(self.path)

    def is_symlink(self) -> bool:
        return False  # object stores and HTTP servers have no links

    def iterdir(self) -> Iterator[UrlPath]:
        with reading(self.url):
            entries = self.fs.ls(self.path, detail=True)
        for e in entries:
            path = str(e["name"]).rstrip("/")
            if path != self.path and path.startswith(self.path + "/"):
                kind = "directory" if e.get("type") == "directory" else "file"
                yield UrlPath(self.fs, path, self.protocol, kind)

    def read_bytes(self) -> bytes:
        with reading(self.url):
            return self.fs.cat_file(self.path)

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def open(self, mode: str = "rb") -> Any:
        if mode != "rb":
            raise DatasetError(f"{self.url}: htouch only reads datasets at URLs")
        with reading(self.url):
            return self.fs.open(self.path, "rb")

    def files(self) -> dict[str, int | None]:
        """Every file below this directory: {path relative to it with "/" separators: size in bytes}, from one
        recursive listing kept for the process (or from a listing of a folder above it). A size is None where
        the listing does not give it (an HTTP server's directory page); `stat` then asks for it."""
        if self.url in _LISTINGS:
            return _LISTINGS[self.url]
        p = self
        while (q := p.parent) != p:
            if q.url in _LISTINGS:
                prefix = self.relative_to(q).as_posix() + "/"
                return {k[len(prefix):]: v for k, v in _LISTINGS[q.url].items() if k.startswith(prefix)}
            p = q
        with reading(self.url):
            found = self.fs.find(self.path, detail=True)
        out = {}
        for name, info in found.items():
            name = str(name)
            if name.startswith(self.path + "/") and info.get("type", "file") == "file":
                size = info.get("size")
                out[name[len(self.path) + 1:]] = None if size is None else int(size)
        _LISTINGS[self.url] = out
        return out

    def stat(self) -> _Stat:
        """The size, from the listing of the folder (a missing file is FileNotFoundError, as for a Path)."""
        sizes = self.parent.files()
        if self.name not in sizes:
            raise FileNotFoundError(self.url)
        if sizes[self.name] is None:
            with reading(self.url):
                return _Stat(int(self.fs.size(self.path)))
        return _Stat(sizes[self.name])

    def zarr_store(self) -> Any:
        """A read-only zarr store of this directory, safe to use after a fork (DataLoader workers)."""
        with reading(self.url):
            return _fork_safe_store_class().open(self.url)


@functools.cache
def _fork_safe_store_class() -> type:
    """zarr's FsspecStore, re-opening its filesystem in a forked child. An async filesystem (s3fs, HTTP) holds a
    client session bound to the parent's event loop, which a fork leaves behind; zarr and fsspec reset their
    own loops and instance caches at a fork, so the child just asks fsspec for the filesystem again. Arrays
    opened before the fork keep this store, so they work in the child too."""
    import fsspec
    from zarr.storage import FsspecStore

    class ForkSafeFsspecStore(FsspecStore):
        @classmethod
        def open(cls, url: str) -> ForkSafeFsspecStore:
            fs, path = fsspec.url_to_fs(url, **_store_options(url))
            store = cls(fs=fs, path=path, read_only=True)
            store._url = url
            return store

        @property
        def fs(self) -> Any:
            fs, pid = self._fs_pid
            if pid != os.getpid():
                fs = fsspec.url_to_fs(self._url, **_store_options(self._url))[0]
                self._fs_pid = (fs, os.getpid())
            return fs

        _metadata: dict[str, bytes] | None = None
        _fetching: tuple[int, Any] | None = None

        async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
            listed = _LISTINGS.get(self._url)
            if listed is not None:
                if key not in listed:
                    return None  # not in the directory's listing: absent, without a request (zarr asks for many)
                if byte_range is None and key.rsplit("/", 1)[-1] in _ZARR_METADATA:
                    found = (await self._prefetch(listed)).get(key)
                    if found is not None:
                        return prototype.buffer.from_bytes(found)
            return await super().get(key, prototype, byte_range)

        async def _prefetch(self, listed: dict[str, int | None]) -> dict[str, bytes]:
            """Every zarr metadata file of the directory, fetched at once and concurrently (zarr opens arrays one
            after the other: one round trip instead of two per array)."""
            if self._metadata is None:
                pid, task = self._fetching or (None, None)
                if task is None or pid != os.getpid():  # zarr asks for several at once: one fetch serves all
                    import asyncio

                    task = asyncio.ensure_future(self._fetch_metadata(listed))
                    self._fetching = (os.getpid(), task)
                self._metadata = await task
            return self._metadata

        async def _fetch_metadata(self, listed: dict[str, int | None]) -> dict[str, bytes]:
            keys = [k for k in listed if k.rsplit("/", 1)[-1] in _ZARR_METADATA]
            paths = [f"{self.path}/{k}" for k in keys]
            got = await self.fs._cat(paths, on_error="return") if paths else {}
            return {k: v for k, p in zip(keys, paths, strict=True) if isinstance(v := got.get(p), bytes)}

        @fs.setter
        def fs(self, value: Any) -> None:
            self._fs_pid = (value, os.getpid())

        def __reduce__(self) -> tuple[Any, ...]:  # a spawned worker opens its own
            return (_open_store, (self._url,))

    return ForkSafeFsspecStore


def _store_options(url: str) -> dict[str, Any]:
    """Options of the filesystem behind a zarr store: asynchronous (zarr's FsspecStore needs it); for S3 one
    request per chunk (s3fs otherwise asks for an object's size before every read, to split large ones, and a
    chunk is at most a few MB)."""
    return {"asynchronous": True, **({"max_concurrency": 1} if url_scheme(url) in ("s3", "s3a") else {})}


def _open_store(url: str) -> Any:
    return _fork_safe_store_class().open(url)


def forget_listings() -> None:
    """Drop the listings kept by `UrlPath.files` (for tests that change what a URL holds)."""
    _LISTINGS.clear()
