"""The layout of htouch's per-frame caches (spectrograms, resized frames): rows read without decoding.

Training reads a few rows (one per camera frame) of an episode's cache at random. Through Zarr's own reader a
row cost ~0.4 ms of overhead on top of its decompression (measured on 32 random rows of AVID spectrograms:
12.7 ms uncompressed, 16-25 ms with Blosc lz4/zstd, 70 ms for today's 5-row zstd chunks), and Blosc saved only
12-19 % of a spectrogram and 4-12 % of a noisy 224 px frame. So a cache is a Zarr v2 group of two arrays:

    data   (n, *row shape)  uncompressed, chunks of `rows_per_chunk` rows (about CHUNK_BYTES a file)
    xxh3   (n,) uint64       the XXH3-64 of each row's bytes, one chunk

A chunk of an uncompressed Zarr v2 array is the rows' bytes in C order (the last chunk padded to full size),
so a local reader maps the chunk files into memory and copies the rows it wants; plain Zarr reads the same
arrays (`zarr.open_group(path)["data"]`), and so do readers of a dataset at a URL. Each row's checksum is
checked the first time a reader reads it: damage is a DatasetError naming the cache and the command that
rebuilds it, never wrong numbers. `status` checks metadata and file sizes only (cheap, for every open).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import xxhash
import zarr

from htouch.dataset.location import UrlPath, zarr_store_or_path
from htouch.errors import DatasetError

DATA, HASHES = "data", "xxh3"
CHUNK_BYTES = 16 << 20  # ~30 files per minute of 224 px frames; a URL reader fetches at most this for a row


def rows_per_chunk(row_shape: tuple[int, ...], dtype: Any, n: int) -> int:
    """Rows per chunk file of an n-row cache: about CHUNK_BYTES, at least one, at most n (a chunk file is
    always whole, so a short episode's one chunk is not padded to CHUNK_BYTES)."""
    return max(1, min(n, CHUNK_BYTES // (int(np.prod(row_shape)) * np.dtype(dtype).itemsize)))


def _chunk_file(path: Path, array: str, k: int, ndim: int) -> Path:
    return path / array / ".".join([str(k)] + ["0"] * (ndim - 1))


def write_rows(path: Path, n: int, row_shape: tuple[int, ...], dtype: Any, blocks: Iterable[np.ndarray]) -> None:
    """Create the two arrays in the Zarr v2 group at `path` (a temporary directory the caller renames when
    done) and fill them from `blocks`, consecutive row blocks (k, *row_shape) that add up to n rows."""
    dtype = np.dtype(dtype)
    per = rows_per_chunk(row_shape, dtype, n)
    group = zarr.open_group(str(path), mode="a", zarr_format=2)
    group.create_array(DATA, shape=(n, *row_shape), chunks=(per, *row_shape), dtype=dtype, compressors=None,
                       fill_value=0)
    group.create_array(HASHES, shape=(n,), chunks=(max(n, 1),), dtype="<u8", compressors=None, fill_value=0)
    hashes = np.zeros(n, dtype="<u8")
    buf = np.zeros((per, *row_shape), dtype)
    filled = row = k = 0
    ndim = 1 + len(row_shape)

    def flush() -> None:
        nonlocal filled, k
        buf[filled:] = 0
        with open(_chunk_file(path, DATA, k, ndim), "wb") as f:
            f.write(buf.tobytes())
            f.flush()
            os.fsync(f.fileno())
        filled, k = 0, k + 1

    for block in blocks:
        block = np.ascontiguousarray(block, dtype=dtype)
        if row + len(block) > n:
            raise ValueError(f"more than the {n} rows announced")
        for r in block:
            hashes[row] = xxhash.xxh3_64_intdigest(np.ascontiguousarray(r).data)
            buf[filled] = r
            filled, row = filled + 1, row + 1
            if filled == per:
                flush()
    if row != n:
        raise ValueError(f"{row} rows written, {n} announced")
    if filled:
        flush()
    if n:
        _chunk_file(path, HASHES, 0, 1).write_bytes(hashes.tobytes())


def replace(final: Path, n: int, row_shape: tuple[int, ...], dtype: Any, blocks: Iterable[np.ndarray],
            attr: str, attrs: dict[str, Any]) -> Path:
    """Write a cache of n rows from `blocks` (see write_rows) with `attrs` under the group attribute `attr`, and
    put it at `final` atomically: a reader sees the old cache or the complete new one; a killed build leaves only
    a hidden temporary directory, removed by the next build."""
    final.parent.mkdir(parents=True, exist_ok=True)
    for left in final.parent.glob(f".{final.name}.tmp*"):  # left by a build that was killed
        pid = left.name.rpartition(".tmp")[2]
        if pid == str(os.getpid()) or not _alive(pid):
            shutil.rmtree(left, ignore_errors=True)
    tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
    try:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=2)
        write_rows(tmp, n, row_shape, dtype, blocks)
        group.attrs[attr] = attrs
        if final.exists():
            old = final.with_name(f".{final.name}.old{os.getpid()}")
            os.replace(final, old)
            shutil.rmtree(old)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def dir_size(path: Path) -> int:
    """Bytes of all files below `path` (0 if it does not exist)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def status(path: Path, n: int, row_shape: tuple[int, ...], dtype: Any) -> str | None:
    """Why the arrays at `path` cannot be read as n rows of this shape and dtype (None when they can): other
    metadata, a compressed or filtered array, a chunk file missing or of another size (truncated)."""
    dtype = np.dtype(dtype)
    shape = [n, *map(int, row_shape)]
    try:
        meta = json.loads((path / DATA / ".zarray").read_text())  # a local path or a UrlPath alike
    except Exception as e:  # noqa: BLE001 - unreadable metadata of any kind makes the cache unusable
        return f"unreadable ({type(e).__name__})"
    chunks = meta.get("chunks")
    if meta.get("shape") != shape or not isinstance(chunks, list) or chunks[1:] != shape[1:] or chunks[0] < 1:
        return f"{DATA} has shape {meta.get('shape')} in chunks {chunks}, expected {shape}"
    if np.dtype(meta.get("dtype")) != dtype or meta.get("compressor") is not None or meta.get("filters") \
            or meta.get("order") != "C":
        return f"{DATA} is not an uncompressed {dtype} array (an older layout?)"
    if isinstance(path, UrlPath):
        return None  # sizes are checked as the rows are read (their checksums)
    row_bytes = int(np.prod(row_shape)) * dtype.itemsize
    for k in range(-(-n // chunks[0])):
        f = _chunk_file(path, DATA, k, len(shape))
        got = f.stat().st_size if f.is_file() else -1
        if got != chunks[0] * row_bytes:
            return (f"{DATA} chunk {k} holds {max(got, 0)} bytes, expected {chunks[0] * row_bytes} "
                    "(truncated or missing)")
    f = _chunk_file(path, HASHES, 0, 1)
    if n and (f.stat().st_size if f.is_file() else -1) != n * 8:
        return f"{HASHES} is missing or truncated"
    return None


class Rows:
    """The rows of one cache (`status` said it is readable): `read(indices)` -> (len, *row_shape) array.
    Local caches are read through memory maps of the chunk files, opened lazily and not pickled (a
    DataLoader worker opens its own); caches at a URL through Zarr. `what` names the cache and `rebuild`
    the command that rebuilds it, for the message about a damaged row."""

    def __init__(self, path: Path, n: int, row_shape: tuple[int, ...], dtype: Any, what: str, rebuild: str):
        self.path, self.n, self.row_shape, self.dtype = path, n, tuple(row_shape), np.dtype(dtype)
        self.what, self.rebuild = what, rebuild
        self.chunk_rows = self._chunk_rows()
        self._maps: dict[int, np.ndarray] = {}
        self._hashes: np.ndarray | None = None
        self._zarr: Any = None
        self._verified = np.zeros(n, dtype=bool)

    def _chunk_rows(self) -> int:
        return int(json.loads((self.path / DATA / ".zarray").read_text())["chunks"][0])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_maps": {}, "_hashes": None, "_zarr": None}

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.n, *self.row_shape)

    def _checksums(self) -> np.ndarray:
        if self._hashes is None:
            if isinstance(self.path, UrlPath):
                self._hashes = zarr.open_array(zarr_store_or_path(self.path / HASHES), mode="r", zarr_format=2)[...]
            else:
                self._hashes = np.fromfile(_chunk_file(self.path, HASHES, 0, 1), dtype="<u8", count=self.n)
        return self._hashes

    def _gather(self, idx: np.ndarray) -> np.ndarray:
        if isinstance(self.path, UrlPath):
            if self._zarr is None:
                self._zarr = zarr.open_array(zarr_store_or_path(self.path / DATA), mode="r", zarr_format=2)
            return self._zarr.get_orthogonal_selection((idx,))
        out = np.empty((len(idx), *self.row_shape), self.dtype)
        for j, (k, r) in enumerate(zip(*np.divmod(idx, self.chunk_rows), strict=True)):  # one copy per row
            mm = self._maps.get(int(k))
            if mm is None:
                mm = self._maps[int(k)] = np.memmap(_chunk_file(self.path, DATA, int(k), 1 + len(self.row_shape)),
                                                    dtype=self.dtype, mode="r",
                                                    shape=(self.chunk_rows, *self.row_shape))
            out[j] = mm[r]
        return out

    def read(self, indices: Iterable[int] | np.ndarray) -> np.ndarray:
        """Rows by index (repeats allowed); each row's checksum is checked the first time it is read."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= self.n):
            raise DatasetError(f"{self.what}: row index out of range (the cache has {self.n} rows)")
        try:
            out = self._gather(idx)
            hashes = self._checksums()
        except DatasetError:
            raise
        except Exception as e:  # noqa: BLE001 - a chunk that cannot be read, at a URL or on disk
            raise DatasetError(f"{self.what} cannot be read ({type(e).__name__}: {e}); rebuild it with "
                               f"`{self.rebuild}`") from None
        todo = np.flatnonzero(~self._verified[idx])
        for j in todo:
            if xxhash.xxh3_64_intdigest(np.ascontiguousarray(out[j]).data) != int(hashes[idx[j]]):
                raise DatasetError(f"{self.what} is damaged (row {int(idx[j])} does not match its checksum); "
                                   f"rebuild it with `{self.rebuild}`")
        self._verified[idx[todo]] = True
        return out

    def verify(self, block: int = 64) -> str | None:
        """Every row hashed against its checksum: None, or why the cache is damaged."""
        for start in range(0, self.n, block):
            try:
                self.read(np.arange(start, min(start + block, self.n)))
            except DatasetError as e:
                return str(e)
        return None
