"""Checksums of an episode: `manifest.json` lists every file of the episode with its size and content hash.

A Zarr store only fails when a chunk does not decode, and many damaged chunks still do (a truncated JPEG, a
flipped bit in entropy-coded data or in a Blosc block). So the writer lists every file at commit (repair does
so when it salvages an episode) and `htouch validate` compares the files with the list: it names each file
that is missing, has another size or other content, and each file that is not listed. The manifest carries a
digest of its own list, so a damaged manifest is told apart from damaged data. docs/format.md describes the
file for readers without htouch (each hash is what `xxh128sum` prints).

The hash is XXH3-128 (the `xxhash` package): fast enough to check a recording at disk speed; it detects
accidental damage, not deliberate tampering.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xxhash

from htouch.dataset.files import write_json_atomic
from htouch.dataset.location import StoredPath, location
from htouch.errors import DatasetError

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "htouch-manifest"
MANIFEST_VERSION = 1
ALGORITHM = "xxh3-128"
_READ_BYTES = 1 << 20  # files are hashed in blocks of this size, so memory stays bounded

# What a FileProblem is about.
MISSING, SIZE, CONTENT, EXTRA = "missing", "size", "content", "extra"


class ManifestError(DatasetError):
    """The manifest is there but cannot be trusted (not JSON, wrong format, its digest does not match)."""


@dataclass(frozen=True)
class FileProblem:
    kind: str  # MISSING, SIZE, CONTENT (a listed file) or EXTRA (a file not listed)
    file: str  # path relative to the episode directory, with "/" separators
    message: str


def file_hash(path: Path) -> str:
    """XXH3-128 of a file's bytes as 32 hex digits (what `xxh128sum` prints)."""
    h = xxhash.xxh3_128()
    with path.open("rb") if isinstance(path, StoredPath) else open(path, "rb") as f:
        while block := f.read(_READ_BYTES):
            h.update(block)
    return h.hexdigest()


def episode_files(episode_dir: Path) -> list[str]:
    """Every file below the episode directory but the manifest, as sorted relative "/" paths."""
    if isinstance(episode_dir, StoredPath):  # a URL or a packed episode: one listing
        return sorted(p for p in episode_dir.files() if p != MANIFEST_FILE)
    out = []
    for folder, dirs, names in os.walk(episode_dir):
        dirs.sort()
        rel = Path(folder).relative_to(episode_dir)
        out.extend((rel / n).as_posix() for n in names)
    out = [p for p in out if p != MANIFEST_FILE]
    return sorted(out)


def files_digest(files: dict[str, dict[str, Any]]) -> str:
    """The manifest's own check: XXH3-128 of the lines `<hash> <size> <path>\\n` of every file, sorted by path."""
    lines = "".join(f"{files[p]['hash']} {files[p]['size']} {p}\n" for p in sorted(files))
    return xxhash.xxh3_128_hexdigest(lines.encode())


def write_manifest(episode_dir: Path) -> dict[str, Any]:
    """Hash every file of the episode and replace its manifest atomically (fsynced); returns the manifest.
    Call it last, once nothing in the episode changes any more."""
    episode_dir = Path(episode_dir)
    files = {p: {"size": (episode_dir / p).stat().st_size, "hash": file_hash(episode_dir / p)}
             for p in episode_files(episode_dir)}
    manifest = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "algorithm": ALGORITHM,
                "files": files, "digest": files_digest(files)}
    write_json_atomic(episode_dir / MANIFEST_FILE, manifest)
    return manifest


def read_manifest(episode_dir: Path) -> dict[str, Any] | None:
    """The episode's manifest, None if it has none; ManifestError if it is damaged."""
    path = location(episode_dir) / MANIFEST_FILE
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError) as e:
        raise ManifestError(f"{MANIFEST_FILE} is not valid JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise ManifestError(f"{MANIFEST_FILE} is not an htouch manifest")
    if data.get("version") != MANIFEST_VERSION or data.get("algorithm") != ALGORITHM:
        raise ManifestError(f"{MANIFEST_FILE}: version {data.get('version')!r} with {data.get('algorithm')!r} "
                            f"is not supported (this htouch reads version {MANIFEST_VERSION}, {ALGORITHM})")
    files = data.get("files")
    if not isinstance(files, dict) or not all(
            isinstance(e, dict) and isinstance(e.get("size"), int) and isinstance(e.get("hash"), str)
            for e in files.values()):
        raise ManifestError(f"{MANIFEST_FILE}: the file list is malformed")
    if data.get("digest") != files_digest(files):
        raise ManifestError(f"{MANIFEST_FILE} is damaged: its digest does not match its file list")
    return data


def manifest_bytes(episode_dir: Path) -> int:
    """Bytes a full check of the episode hashes (0 without a readable manifest); for progress bars."""
    try:
        manifest = read_manifest(episode_dir)
    except ManifestError:
        return 0
    return sum(e["size"] for e in manifest["files"].values()) if manifest else 0


def verify_files(episode_dir: Path, manifest: dict[str, Any], *, contents: bool = True,
                 progress: Callable[[int], None] | None = None) -> list[FileProblem]:
    """Every difference between the episode's files and its manifest, listed files first, by path.
    contents=False checks presence and sizes only (no file is read). progress(n) gets the bytes hashed."""
    episode_dir = location(episode_dir)
    listed: dict[str, dict[str, Any]] = manifest["files"]
    problems = []
    for rel in sorted(listed):
        entry, path = listed[rel], episode_dir / rel
        try:
            size = path.stat().st_size
            if size != entry["size"]:
                problems.append(FileProblem(SIZE, rel, f"{size} bytes, the manifest says {entry['size']}"))
            elif contents and file_hash(path) != entry["hash"]:
                problems.append(FileProblem(CONTENT, rel, f"content differs from the manifest ({ALGORITHM})"))
        except FileNotFoundError:
            problems.append(FileProblem(MISSING, rel, "listed in the manifest but missing"))
        except OSError as e:  # a read error is damage too
            problems.append(FileProblem(CONTENT, rel, f"cannot be read ({e.strerror or e})"))
        if contents and progress is not None:
            progress(entry["size"])
    for rel in episode_files(episode_dir):
        if rel not in listed:
            problems.append(FileProblem(EXTRA, rel, "not listed in the manifest: not part of the recording"))
    return problems
