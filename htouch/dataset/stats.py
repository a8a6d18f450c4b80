"""Normalisation statistics for training, stored in the dataset metadata under "stats".

Per dimension of each state and action array (the arrays the schema defines for those streams), and per
frequency bin of each spectrogram kind: mean, std (population), min, max and the 1/5/50/95/99 % quantiles,
over the training episodes (the train split when there is one, else every episode).

Spectrogram windows are those at which a training sample exists (Episode.sample_times: every camera frame
with H actions ahead, the first clips padded with silence as the policy sees them live). When
every chosen episode has an up-to-date cache, mean/std/min/max cover all those windows and the quantiles a
deterministic subsample of them; otherwise everything comes from a deterministic subsample of windows
computed on the fly. The stored entry says which ("source").
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import numpy as np

from htouch.dataset import audio
from htouch.dataset.audio import DEFAULT_CLIP, DEFAULT_MAX_WINDOWS, ClipParams, SpectrogramParams
from htouch.dataset.schema import episode_arrays
from htouch.dataset.split import training_episodes
from htouch.dataset.store import Dataset
from htouch.errors import DatasetError

if TYPE_CHECKING:  # the episode reader and the spectrogram cache are imported when statistics are computed,
    #                so that the command line starts without zarr
    from htouch.dataset.episode import Episode
    from htouch.dataset.spectrograms import EpisodeSpectrograms

STATS_KEY = "stats"
QUANTILES = (1, 5, 50, 95, 99)
QUANTILE_KEYS = tuple(f"q{q:02d}" for q in QUANTILES)
SUBSAMPLE_SEED = 0

Progress = Callable[[int], None]
ProgressBar = Callable[[str, int], AbstractContextManager[Progress]]


def stream_arrays(ds: Dataset, stream: str) -> list[str]:
    """The data arrays of a stream (time stamps excluded), as the schema defines them."""
    return [a.path for a in episode_arrays(ds.streams) if a.stream == stream and a.name != "timestamp_ns"]


def check_finite(x: np.ndarray, episode: Episode, what: str) -> None:
    """DatasetError naming the episode, the array (`what`) and the first bad row if x holds NaN or inf."""
    bad = ~np.isfinite(x)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        kind = "NaN" if np.isnan(x).any() else "infinite values"
        raise DatasetError(f"{episode.name}: {what} holds {kind} ({int(bad.sum())} values, first at row {row}); "
                           "fix or delete the episode before computing stats")


def describe(x: np.ndarray) -> dict[str, Any]:
    """Statistics per column of x (rows, dims), as JSON-ready lists."""
    x = np.asarray(x, dtype=np.float64)
    q = np.percentile(x, QUANTILES, axis=0)
    out = {"count": int(x.shape[0]), "mean": x.mean(axis=0).tolist(), "std": x.std(axis=0).tolist(),
           "min": x.min(axis=0).tolist(), "max": x.max(axis=0).tolist()}
    out.update({k: q[i].tolist() for i, k in enumerate(QUANTILE_KEYS)})
    return out


def array_stats(ds: Dataset, episodes: list[Episode], paths: list[str]) -> dict[str, dict[str, Any]]:
    """Per array path (e.g. "action/delta_ee"): mean, std, min, max and quantiles per dimension over
    every row of the given episodes."""
    out = {}
    for path in paths:
        parts = []
        for ep in episodes:
            x = ep.read(path)
            x = x.reshape(len(x), -1).astype(np.float64)
            check_finite(x, ep, path)
            parts.append(x)
        data = np.concatenate(parts)
        if len(data) == 0:
            raise DatasetError(f"{path} has no rows in the chosen episodes of {ds.root}")
        out[path.split("/", 1)[1]] = describe(data)
    return out


# ------------------------------------------------------------------------------------------ spectrograms


def bins_last(values: np.ndarray, params: SpectrogramParams) -> np.ndarray:
    """(n, *spectrogram shape) -> (values, bins): every time column of every window, one column per bin."""
    axis = audio.freq_axis(params) + 1
    moved = np.moveaxis(values, axis, -1)
    return moved.reshape(-1, moved.shape[-1])


def sample_frames(ep: Episode, clip: ClipParams) -> np.ndarray:
    """Camera frame indices at which a training sample exists (see the module docstring)."""
    from htouch.dataset.episode import SampleParams

    times = ep.sample_times(SampleParams(clip=clip))
    return np.searchsorted(ep.camera_times, times).astype(np.int64)


class _Running:
    """Exact streaming mean / population variance / min / max per column (Chan et al. pairwise update)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None
        self.lo: np.ndarray | None = None
        self.hi: np.ndarray | None = None

    def add(self, x: np.ndarray) -> None:
        if len(x) == 0:
            return
        x = x.astype(np.float64)
        n, mean = len(x), x.mean(axis=0)
        m2 = ((x - mean) ** 2).sum(axis=0)
        if self.n == 0:
            self.n, self.mean, self.m2, self.lo, self.hi = n, mean, m2, x.min(axis=0), x.max(axis=0)
            return
        total = self.n + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta ** 2 * (self.n * n / total)
        self.lo, self.hi = np.minimum(self.lo, x.min(axis=0)), np.maximum(self.hi, x.max(axis=0))
        self.n = total


class SpectrogramStats:
    """Per-bin statistics of one spectrogram kind over the episodes (see the module docstring for which
    windows). Planned on creation, so `total` (windows to read or compute) is known for a progress bar."""

    def __init__(self, episodes: list[Episode], kind: str | SpectrogramParams, clip: ClipParams = DEFAULT_CLIP,
                 max_windows: int = DEFAULT_MAX_WINDOWS):
        if max_windows < 1:
            raise DatasetError(f"the number of spectrogram windows must be at least 1, got {max_windows}")
        from htouch.dataset import spectrograms

        self.params = spectrograms.resolve_params(kind)
        self.clip = clip
        self.readers = [spectrograms.EpisodeSpectrograms(ep, self.params, clip) for ep in episodes]
        self.frames = [sample_frames(ep, clip) for ep in episodes]
        pairs = [(e, int(f)) for e, fr in enumerate(self.frames) for f in fr]
        self.pairs = np.array(pairs, dtype=np.int64).reshape(-1, 2)
        if len(self.pairs) == 0:
            raise DatasetError(f"no {self.params.kind} spectrogram windows: the chosen episodes are all shorter "
                               f"than the {clip.window_s} s audio window")
        if len(self.pairs) > max_windows:
            rng = np.random.default_rng(SUBSAMPLE_SEED)
            self.chosen = self.pairs[np.sort(rng.choice(len(self.pairs), max_windows, replace=False))]
        else:
            self.chosen = self.pairs
        self.all_cached = all(s.provenance == "cache" for s in self.readers)

    @property
    def total(self) -> int:
        return len(self.chosen) + (len(self.pairs) if self.all_cached else 0)

    def _read(self, reader: EpisodeSpectrograms, idx: np.ndarray, progress: Progress | None) -> np.ndarray:
        values = reader.frames(idx, progress)
        check_finite(values.reshape(len(values), -1), reader.episode,
                     f"the {self.params.kind} spectrogram ({reader.provenance})")
        return bins_last(values, self.params)

    def run(self, progress: Progress | None = None) -> dict[str, Any]:
        p, clip = self.params, self.clip
        values = np.concatenate([self._read(reader, self.chosen[self.chosen[:, 0] == e, 1], progress)
                                 for e, reader in enumerate(self.readers) if (self.chosen[:, 0] == e).any()])
        out: dict[str, Any] = {"kind": p.kind, "params_key": audio.params_key(clip, p),
                               "params": dataclasses.asdict(p), "clip": dataclasses.asdict(clip),
                               "windows_total": int(len(self.pairs)), "quantile_windows": int(len(self.chosen))}
        stats = describe(values)
        if self.all_cached:
            run = _Running()
            for reader, fr in zip(self.readers, self.frames, strict=True):
                block = max(1, reader.cache.chunk_rows)
                for start in range(0, len(fr), block):
                    run.add(self._read(reader, fr[start:start + block], progress))
            stats.update(count=int(run.n), mean=run.mean.tolist(), std=np.sqrt(run.m2 / run.n).tolist(),
                         min=run.lo.tolist(), max=run.hi.tolist())
            out.update(source="cache", windows=int(len(self.pairs)))
        else:
            cached = sum(s.provenance == "cache" for s in self.readers)
            out.update(source="subsample" if cached == 0 else f"subsample ({cached} of {len(self.readers)} "
                       "episodes cached)", windows=int(len(self.chosen)))
        out.update(stats)
        out["bins"] = len(out["mean"])
        return out


# ------------------------------------------------------------------------------------------ all together


def compute_stats(ds: Dataset, kinds: list[str] | tuple[str, ...] = tuple(audio.SPECTROGRAM_KINDS),
                  clip: ClipParams = DEFAULT_CLIP, max_windows: int = DEFAULT_MAX_WINDOWS,
                  progress_bar: ProgressBar | None = None) -> tuple[dict[str, Any], list[str]]:
    """The statistics (not stored yet) and notes for the user about the episodes used. `progress_bar`
    (description, total) -> context yielding advance(n), as cli.common.progress_bar. A dataset without audio
    has no spectrogram statistics: pass no kinds (DatasetError otherwise)."""
    if kinds:
        ds.require_audio("spectrogram statistics")
    selection = training_episodes(ds)
    episodes = [ds.episode(i) for i in selection.indices]
    stats: dict[str, Any] = {
        "computed": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "episode_set": selection.episode_set,
        "episodes": selection.indices,
        "quantiles": list(QUANTILES),
        "state": array_stats(ds, episodes, stream_arrays(ds, "state")),
        "action": array_stats(ds, episodes, stream_arrays(ds, "action")),
        "spectrogram": {},
    }
    for kind in kinds:
        job = SpectrogramStats(episodes, kind, clip, max_windows)
        with (progress_bar or _no_progress)(f"{job.params.kind} spectrogram stats", job.total) as advance:
            stats["spectrogram"][job.params.kind] = job.run(advance)
    return stats, selection.notes


@contextlib.contextmanager
def _no_progress(description: str, total: int) -> Iterator[Progress]:
    yield lambda n=1: None


def store_stats(ds: Dataset, stats: dict[str, Any]) -> None:
    """Keep the statistics in the dataset's metadata (htouch.json), where training reads them."""
    ds.update_metadata(**{STATS_KEY: stats})
