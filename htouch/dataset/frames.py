"""Camera frames at a training resolution, cached beside the episodes so training does not decode and resize.

A training sample's frames are the whole 640x480 JPEG frame resized to the policy's size (224 px, and 256 px
for augmented samples): decoding and resizing cost ~1.5 ms a frame on one core, four frames a sample. The cache
holds every frame of an episode already resized by `resize_frames` (the one resize training and the policy
runner use), so a cached frame is the same bytes training would compute. One cache per size, at

    DATASET/derived/frames/<size>px/episode_000012

in the layout of htouch.dataset.rowcache: `data` (frames, 3, size, size) uint8 uncompressed (a frame is read
through a memory map without decoding; Blosc saved 4-12 % of a noisy photo frame at 224 px, measured) and each
frame's XXH3-64, checked the first time a reader reads the frame. Plain Zarr reads it.

A cache is used only when its attributes match: the size, the resize method (RESIZE), and a fingerprint of the
episode (frame time stamps, frame shape and an XXH3 of its first and last decoded frame), so another episode's
cache (a copied dataset) is never read. `cache_status` is cheap (metadata and file sizes): a missing, stale or
truncated cache is "missing"/"stale: ..." and readers decode from the store instead; a frame whose bytes do not
match its checksum is a DatasetError naming the episode and the command that rebuilds it. `htouch frames` builds
the caches, and `htouch frames --verify` hashes every frame of the existing ones and rebuilds damaged ones.

A dataset at a URL is read from the store (no memory map over HTTP); `htouch frames` refuses a URL.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from htouch.dataset import rowcache
from htouch.dataset.episode import Episode
from htouch.dataset.files import contained
from htouch.dataset.location import UrlPath, location
from htouch.dataset.schema import DERIVED
from htouch.dataset.store import Dataset
from htouch.dataset.structure import unsafe_files
from htouch.errors import DatasetError

FRAME_DIR = "frames"
ATTR = "htouch_frames"
RESIZE = "torch-resize-antialias-bilinear"  # what resize_frames does; a change of method gets a new name
BUILD_BATCH = 32  # frames decoded and resized at a time while building

Progress = Callable[[int], None]


def resize_frames(rgb: np.ndarray, size: int) -> Any:
    """(n, H, W, 3) uint8 frames -> (n, 3, size, size) uint8 torch tensor: the whole frame resized, bilinear and
    antialiased (torchvision), as model.preprocess_frames does it. The one resize of training frames."""
    import torch
    from torchvision.transforms.v2 import functional as TF

    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(0, 3, 1, 2)
    if tuple(x.shape[-2:]) == (size, size):
        return x.contiguous()
    return TF.resize(x, [size, size], antialias=True)


def read_frames(episode: Episode, indices: Iterable[int]) -> np.ndarray:
    """Decoded full-size frames (n, H, W, 3) uint8 from the store; DatasetError for a chunk that does not decode."""
    rgb = episode.array("camera/rgb")
    out = []
    for i in indices:
        try:
            out.append(rgb[int(i)])
        except Exception as e:  # a chunk that does not decode
            raise DatasetError(f"{episode.name}: camera frame {int(i)} cannot be read ({type(e).__name__}: {e})") \
                from None
    return np.stack(out) if out else np.zeros((0, *rgb.shape[1:]), np.uint8)


def key_dir(root: Path, size: int) -> Path:
    """The folder of the caches at this size; DatasetError if any part of it is a symbolic link."""
    root = location(root)
    return contained(root, root / DERIVED / FRAME_DIR / f"{int(size)}px")


def cache_path(episode: Episode, size: int) -> Path:
    """Where the episode's cache at this size lives; DatasetError for an episode not opened from a dataset."""
    if episode.dataset is None:
        raise DatasetError(f"{episode.name} was not opened from a dataset, so it has no frame cache")
    return contained(episode.dataset.root, key_dir(episode.dataset.root, size) / episode.name)


def fingerprint(episode: Episode) -> str:
    """What the cached frames depend on besides size and method: the frame times and shape, and the content
    of the first and last frame (decoded: the same whatever the episode's file layout). Committed episodes
    never change, so this catches a cache made from another episode (a copied or restored dataset)."""
    cached = getattr(episode, "_frames_fingerprint", None)
    if cached is not None:
        return cached
    h = xxhash.xxh3_128()
    h.update(np.ascontiguousarray(episode.camera_times, dtype=np.int64).tobytes())
    rgb = episode.array("camera/rgb")
    h.update(json.dumps(list(rgb.shape)).encode())
    if rgb.shape[0]:
        h.update(np.ascontiguousarray(read_frames(episode, sorted({0, rgb.shape[0] - 1}))).tobytes())
    episode._frames_fingerprint = h.hexdigest()[:16]
    return episode._frames_fingerprint


def _expected(episode: Episode, size: int) -> dict[str, Any]:
    return {"size": int(size), "resize": RESIZE, "fingerprint": fingerprint(episode), "episode": episode.name}


def _row(size: int) -> tuple[int, int, int]:
    return (3, int(size), int(size))


def cache_status(episode: Episode, size: int) -> str:
    """"fresh", "missing", or "stale: <why>" (other parameters or episode, a file missing or of the wrong size).
    Reads metadata and file sizes only; the frames' checksums are checked as they are read."""
    if isinstance(episode.path, UrlPath) or episode.dataset is None:
        return "missing"
    path = cache_path(episode, size)
    if not path.exists():
        return "missing"
    if unsafe_files(path):
        return "stale: holds a symbolic link or special file"
    try:
        attrs = json.loads((path / ".zattrs").read_text()).get(ATTR, {})
    except (OSError, ValueError, AttributeError) as e:
        return f"stale: unreadable ({type(e).__name__})"
    expected = _expected(episode, size)
    for name in ("size", "resize", "fingerprint"):
        if attrs.get(name) != expected[name]:
            return f"stale: {name} differs"
    why = rowcache.status(path, len(episode.camera_times), _row(size), np.uint8)
    return "fresh" if why is None else f"stale: {why}"


def open_cache(episode: Episode, size: int) -> rowcache.Rows | None:
    """The episode's cache at this size when it is fresh, else None (read from the store instead):
    `.read(indices)` gives (n, 3, size, size) uint8."""
    if cache_status(episode, size) != "fresh":
        return None
    return rowcache.Rows(cache_path(episode, size), len(episode.camera_times), _row(size), np.uint8,
                         f"{episode.name}: its {int(size)} px frame cache",
                         f"htouch frames --size {int(size)} --verify")


def verify(episode: Episode, size: int) -> str:
    """cache_status, plus every frame hashed against its checksum: "fresh", "missing", "stale: ..." or
    "damaged: ..."."""
    status = cache_status(episode, size)
    if status != "fresh":
        return status
    why = open_cache(episode, size).verify()
    return "fresh" if why is None else f"damaged: {why}"


# ------------------------------------------------------------------------------------------ building


@dataclass
class CacheJob:
    episode: Episode
    status: str  # as cache_status (or verify), before building

    @property
    def frames(self) -> int:
        return len(self.episode.camera_times)

    @property
    def needed(self) -> bool:
        return self.status != "fresh"


def plan(ds: Dataset, size: int, force: bool = False, check: bool = False) -> list[CacheJob]:
    """Each episode with its cache status; `check` hashes existing caches (finds damaged frames), `force`
    rebuilds fresh caches too."""
    jobs = []
    for ep in ds.episodes():
        status = verify(ep, size) if check else cache_status(ep, size)
        jobs.append(CacheJob(ep, "forced" if force and status == "fresh" else status))
    return jobs


def build(episode: Episode, size: int, progress: Progress | None = None) -> Path:
    """Decode, resize and store one episode's frames at `size`, replacing any old cache atomically (a reader sees
    the old cache or the complete new one; a killed build leaves only a hidden temporary directory, removed by
    the next build)."""
    if episode.dataset is not None:
        episode.dataset.writable("htouch frames (caching frames)")
    final = cache_path(episode, size)
    n = len(episode.camera_times)

    def blocks():
        for start in range(0, n, BUILD_BATCH):
            stop = min(start + BUILD_BATCH, n)
            yield resize_frames(read_frames(episode, range(start, stop)), size).numpy()
            if progress:
                progress(stop - start)

    return rowcache.replace(final, n, _row(size), np.uint8, blocks(), ATTR, _expected(episode, size))
