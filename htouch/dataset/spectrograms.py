"""Spectrograms at every camera frame, cached beside the episodes and read back by training.

For camera frame i of an episode, the spectrogram is that of the audio clip ending at the frame's time:
`audio.spectrogram(episode.audio_clip(t_i, clip), clip.rate_hz, params)`. audio.py owns every parameter.
The cache of one episode is a Zarr v2 group at

    DATASET/derived/spectrograms/<audio.params_key(clip, params)>/episode_000012

in the layout of htouch.dataset.rowcache: `data` (frames, *spectrogram shape) float32, uncompressed, read
through memory maps (training reads random rows: through Zarr with Blosc a row cost 0.5-2 ms, now ~0.03 ms),
and each row's XXH3-64, checked when the row is first read (committed episodes are never written to). A cache
of the older layout (a Blosc-compressed array) is stale: `htouch spectrogram` rebuilds it.

A dataset at a URL is read-only: its caches are read when they were uploaded with it and are up to date,
otherwise the spectrograms are computed in memory, as for a local dataset without a cache (`htouch spectrogram`
refuses a URL; nothing is cached on local disk). The group's attributes hold the parameters and a fingerprint
of the episode's camera and audio time stamps; a cache is used only when both match, so a parameter change (a
new key, a new directory) or a different episode behind the same name (a copied cache) is never read by
mistake. `EpisodeSpectrograms` reads the cache when it is up to date and computes the same
numbers otherwise.

Speed: about 3-5 ms per frame on one core, mostly gathering and resampling the clip; an episode's PCM is
decoded once, not once per frame. Batching the torch spectrogram over many clips gave no speed-up on CPU
(measured: equal at 8 clips, slower beyond, identical values), so clips are transformed one at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from htouch.dataset import audio, rowcache
from htouch.dataset.audio import DEFAULT_CLIP, ClipParams, SpectrogramParams
from htouch.dataset.episode import Episode
from htouch.dataset.files import contained, write_json_atomic
from htouch.dataset.location import location, zarr_store_or_path
from htouch.dataset.schema import DERIVED
from htouch.dataset.store import Dataset
from htouch.dataset.structure import unsafe_files
from htouch.errors import DatasetError

SPECTROGRAM_DIR = "spectrograms"
ATTR = "htouch_spectrogram"

Progress = Callable[[int], None]


def resolve_params(kind: str | SpectrogramParams) -> SpectrogramParams:
    """Spectrogram parameters from a kind name (avid, logmel, byol-a) or as given."""
    return audio.spectrogram_params(kind) if isinstance(kind, str) else kind


@lru_cache(maxsize=16)
def spectrogram_shape(params: SpectrogramParams, clip: ClipParams = DEFAULT_CLIP) -> tuple[int, ...]:
    """Shape of one spectrogram, taken from audio.spectrogram itself (logmel (64, 201), avid (1, 200, 257))."""
    return audio.spectrogram(np.zeros(clip.n_samples, dtype=np.float32), clip.rate_hz, params).shape


def key_dir(root: Path, params: SpectrogramParams, clip: ClipParams = DEFAULT_CLIP) -> Path:
    """The folder of the caches of these parameters; DatasetError if any part of it is a symbolic link."""
    root = location(root)
    return contained(root, root / DERIVED / SPECTROGRAM_DIR / audio.params_key(clip, params))


def cache_path(episode: Episode, params: SpectrogramParams, clip: ClipParams = DEFAULT_CLIP) -> Path:
    """Where the episode's cache for these parameters lives (contained in the dataset); DatasetError for an
    episode not opened from a dataset."""
    if episode.dataset is None:
        raise DatasetError(f"{episode.name} was not opened from a dataset, so it has no spectrogram cache")
    return contained(episode.dataset.root, key_dir(episode.dataset.root, params, clip) / episode.name)


def fingerprint(episode: Episode) -> str:
    """What a cached spectrogram depends on besides the parameters: frame times, audio block layout and
    the audio normalisation. Committed episodes never change, so this only catches a cache that was made
    from another episode (a copied or restored dataset)."""
    h = hashlib.sha256()
    for arr in (episode.camera_times, episode.audio_block_times, episode.audio_block_offsets):
        h.update(np.ascontiguousarray(arr, dtype=np.int64).tobytes())
        h.update(b"|")
    h.update(json.dumps({"pcm_shape": list(episode._pcm.shape),
                         "audio": dataclasses.asdict(episode.streams.audio)}, sort_keys=True).encode())
    return h.hexdigest()[:16]


def _expected_attrs(episode: Episode, params: SpectrogramParams, clip: ClipParams) -> dict[str, Any]:
    return {"params": dataclasses.asdict(params), "clip": dataclasses.asdict(clip),
            "fingerprint": fingerprint(episode), "episode": episode.name}


def cache_status(episode: Episode, params: SpectrogramParams, clip: ClipParams = DEFAULT_CLIP) -> str:
    """"fresh", "missing", or "stale: <why>" for the episode's cache under these parameters."""
    path = cache_path(episode, params, clip)
    if not path.exists():
        return "missing"
    if unsafe_files(path):  # rebuilt (the links themselves are removed), never read through
        return "stale: holds a symbolic link or special file"
    try:
        attrs = zarr.open_group(zarr_store_or_path(path), mode="r", zarr_format=2).attrs.asdict().get(ATTR, {})
    except Exception as e:  # an unreadable cache (or one of the older layout, an array) is stale: it is rebuilt
        return f"stale: unreadable ({type(e).__name__})"
    expected = _expected_attrs(episode, params, clip)
    for name in ("params", "clip", "fingerprint"):
        if attrs.get(name) != expected[name]:
            return f"stale: {name} differ"
    why = rowcache.status(path, len(episode.camera_times), spectrogram_shape(params, clip), np.float32)
    return "fresh" if why is None else f"stale: {why}"


def open_cache(episode: Episode, params: SpectrogramParams, clip: ClipParams = DEFAULT_CLIP) -> rowcache.Rows | None:
    """The episode's cached rows when they are up to date, else None."""
    if episode.dataset is None or cache_status(episode, params, clip) != "fresh":
        return None
    return rowcache.Rows(cache_path(episode, params, clip), len(episode.camera_times), spectrogram_shape(params, clip),
                         np.float32, f"{episode.name}: its {params.kind} spectrogram cache",
                         f"htouch spectrogram --kind {params.kind} --force")


def compute(episode: Episode, params: SpectrogramParams, clip: ClipParams = DEFAULT_CLIP,
            frames: Iterable[int] | None = None, progress: Progress | None = None) -> np.ndarray:
    """Spectrograms at the given camera frames (all by default), computed from the audio: (n, *shape)."""
    times = episode.camera_times
    idx = np.arange(len(times)) if frames is None else np.asarray(list(frames), dtype=np.int64)
    out = np.empty((len(idx), *spectrogram_shape(params, clip)), dtype=np.float32)
    if len(idx) > 1:
        episode.preload_audio()
    with one_torch_thread() if len(idx) > 1 else contextlib.nullcontext():
        for j, i in enumerate(idx):
            out[j] = audio.spectrogram(episode.audio_clip(int(times[i]), clip), clip.rate_hz, params)
            if progress:
                progress(1)
    return out


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Per-clip tensors are small: torch's intra-op threads gain at most 1.5x on an idle machine but made
    loops 5-10x slower when the cores were busy (measured on 2 shared cores), so loops run on one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class EpisodeSpectrograms:
    """Spectrograms at an episode's camera frames: read from the cache when it is up to date (same
    parameters and fingerprint), computed on the fly otherwise; both give identical float32 values."""

    def __init__(self, episode: Episode, kind: str | SpectrogramParams = "logmel", clip: ClipParams = DEFAULT_CLIP):
        self.episode = episode
        self.params = resolve_params(kind)
        self.clip = clip
        self.cache = open_cache(episode, self.params, clip)

    @property
    def provenance(self) -> str:
        return "cache" if self.cache is not None else "computed"

    def __len__(self) -> int:
        return len(self.episode.camera_times)

    def _check(self, i: int) -> int:
        if not -len(self) <= i < len(self):
            raise DatasetError(f"{self.episode.name}: frame {i} out of range (the episode has {len(self)} frames)")
        return i % len(self)

    def __getitem__(self, frame_index: int) -> np.ndarray:
        i = self._check(int(frame_index))
        if self.cache is not None:
            return self.cache.read([i])[0]
        return compute(self.episode, self.params, self.clip, [i])[0]

    def frames(self, indices: Iterable[int], progress: Progress | None = None) -> np.ndarray:
        idx = np.array([self._check(int(i)) for i in indices], dtype=np.int64)
        if self.cache is not None:
            out = self.cache.read(idx)
            if progress:
                progress(len(idx))
            return out
        return compute(self.episode, self.params, self.clip, idx, progress)

    def all(self, progress: Progress | None = None) -> np.ndarray:
        if self.cache is not None:
            out = self.cache.read(np.arange(self.cache.n))
            if progress:
                progress(len(out))
            return out
        return compute(self.episode, self.params, self.clip, None, progress)


def spectrogram_at(episode: Episode, frame_index: int, kind: str | SpectrogramParams = "logmel",
                   clip: ClipParams = DEFAULT_CLIP) -> np.ndarray:
    """The spectrogram of the clip ending at camera frame `frame_index` (cached or computed)."""
    return EpisodeSpectrograms(episode, kind, clip)[frame_index]


def episode_spectrograms(episode: Episode, kind: str | SpectrogramParams = "logmel",
                         clip: ClipParams = DEFAULT_CLIP) -> np.ndarray:
    """All of an episode's spectrograms, (frames, *shape) float32 (cached or computed)."""
    return EpisodeSpectrograms(episode, kind, clip).all()


# ------------------------------------------------------------------------------------------ building


@dataclass
class CacheJob:
    episode: Episode
    status: str  # as cache_status, before building

    @property
    def frames(self) -> int:
        return len(self.episode.camera_times)

    @property
    def needed(self) -> bool:
        return self.status != "fresh"


def plan(ds: Dataset, params: SpectrogramParams, clip: ClipParams = DEFAULT_CLIP,
         force: bool = False) -> list[CacheJob]:
    """Each episode with its cache status; `force` rebuilds fresh caches too."""
    jobs = []
    for ep in ds.episodes():
        status = cache_status(ep, params, clip)
        jobs.append(CacheJob(ep, "forced" if force and status == "fresh" else status))
    return jobs


def build(episode: Episode, params: SpectrogramParams, clip: ClipParams = DEFAULT_CLIP,
          progress: Progress | None = None) -> Path:
    """Compute and store one episode's cache, replacing any old one atomically (a reader sees the old
    array or the complete new one)."""
    if episode.dataset is not None:
        episode.dataset.writable("htouch spectrogram (caching spectrograms)")
    final = cache_path(episode, params, clip)
    final.parent.mkdir(parents=True, exist_ok=True)
    params_file = final.parent / "params.json"
    if not params_file.exists():
        write_json_atomic(params_file, {"key": final.parent.name, "params": dataclasses.asdict(params),
                                        "clip": dataclasses.asdict(clip)})
    shape = spectrogram_shape(params, clip)
    n = len(episode.camera_times)
    block = rowcache.rows_per_chunk(shape, np.float32, n)
    blocks = (compute(episode, params, clip, range(start, min(start + block, n)), progress)
              for start in range(0, n, block))
    attrs = {**_expected_attrs(episode, params, clip), "kind": params.kind, "shape": [n, *shape]}
    return rowcache.replace(final, n, shape, np.float32, blocks, ATTR, attrs)
