"""The zarr store of a packed episode (packed.py): read-only, members read at their offset in the file.

Kept apart from packed.py so that listing and resolving episodes does not import zarr (the CLI starts without
it). Pickles as the packed file and the folder in it, so DataLoader workers (fork or spawn) open it again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

from zarr.abc.store import OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest

from htouch.dataset.location import UrlPath
from htouch.dataset.packed import _Archive, _archive
from htouch.errors import DatasetError


class PackedStore(Store):
    """The members of a packed episode below `prefix` ("" for the episode's group) as a read-only zarr store."""

    supports_writes = False
    supports_deletes = False
    supports_partial_writes = False
    supports_listing = True

    def __init__(self, archive: _Archive, prefix: str = ""):
        super().__init__(read_only=True)
        self._archive, self._prefix = archive, prefix.strip("/")

    def _key(self, key: str) -> str:
        return f"{self._prefix}/{key}" if self._prefix else key

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, PackedStore) and str(other._archive.file) == str(self._archive.file)
                and other._prefix == self._prefix)

    def __hash__(self) -> int:
        return hash((str(self._archive.file), self._prefix))

    def __reduce__(self) -> tuple[Any, ...]:
        return (_open_store, (self._archive.file, self._prefix))

    def __str__(self) -> str:
        return f"packed://{self._archive.file}"

    def _read(self, key: str, byte_range: Any) -> bytes | None:
        member = self._key(key)
        size = self._archive.sizes.get(member)
        if size is None:
            return None
        if byte_range is None:
            return self._archive.read(member)
        if isinstance(byte_range, RangeByteRequest):
            return self._archive.read(member, byte_range.start, byte_range.end)
        if isinstance(byte_range, OffsetByteRequest):
            return self._archive.read(member, byte_range.offset)
        if isinstance(byte_range, SuffixByteRequest):
            return self._archive.read(member, max(0, size - byte_range.suffix))
        raise TypeError(f"unexpected byte range {byte_range!r}")

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
        data = self._read(key, byte_range)
        return None if data is None else prototype.buffer.from_bytes(data)

    async def get_partial_values(self, prototype: Any, key_ranges: Iterable[tuple[str, Any]]) -> list[Any]:
        return [await self.get(k, prototype, r) for k, r in key_ranges]

    async def exists(self, key: str) -> bool:
        return self._key(key) in self._archive.sizes

    async def set(self, key: str, value: Any) -> None:
        raise DatasetError(f"{self._archive.file}: a packed episode is only read")

    async def delete(self, key: str) -> None:
        raise DatasetError(f"{self._archive.file}: a packed episode is only read")

    def _keys(self) -> list[str]:
        if not self._prefix:
            return list(self._archive.sizes)
        p = self._prefix + "/"
        return [k[len(p):] for k in self._archive.sizes if k.startswith(p)]

    async def list(self) -> AsyncIterator[str]:
        for k in self._keys():
            yield k

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        for k in self._keys():
            if k.startswith(prefix):
                yield k

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        prefix = prefix.rstrip("/")
        seen = set()
        for k in self._keys():
            if prefix and not k.startswith(prefix + "/"):
                continue
            first = (k[len(prefix) + 1:] if prefix else k).split("/", 1)[0]
            if first not in seen:
                seen.add(first)
                yield first


def _open_store(file: Path | UrlPath, prefix: str) -> PackedStore:
    return PackedStore(_archive(file), prefix)
