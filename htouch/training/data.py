"""Training samples from an episode store: k frames over the last window, a spectrogram, H future actions.

A sample is taken at every camera frame time t with H actions ahead, from the episode's first frame on
(`Episode.sample_times`): the policy runner acts from the first frame of an episode, with
the window padded (the first frame repeated, silence before the first audio), and a demonstration does much
of its reaching in those first seconds. A sample holds the k frames at or before k times spanning [t - window, t]
(`Episode.frame_indices`), the spectrogram of the audio clip ending at t (the cache from
`htouch spectrogram` when its parameters match, else computed the same way:
`htouch.dataset.spectrograms.EpisodeSpectrograms`), and the next H actions (`Episode.action_chunk`).

Episodes come from `htouch split`; normalisation from `htouch stats` (htouch.json "stats"): actions are
standardised per dimension (model.ActionNormalization), spectrograms are handed over raw and the model
standardises them per bin (AudioVisualPolicy.set_spectrogram_stats), so the runner feeds the same thing.

Images: un-augmented samples are the whole frame resized to image_size, exactly `model.preprocess_frames`
(what the policy runner feeds). Training augments half of the samples (the paper's p = 0.5): the whole
frame resized to load_size = image_size * 8/7 (256 for 224), RandomCrop to image_size, then
ColorJitter(0.3, 0.3, 0.1, 0.2). The k frames of a sample share one crop and one jitter (one camera).
Augmentation draws from a generator seeded by (seed, epoch, sample), so a run depends neither on the
number of loader workers nor on being resumed.

Frames come from the episode's frame cache at each size when it is up to date (`htouch frames`,
htouch.dataset.frames: the same bytes, already resized), else they are decoded from the store and resized.
They are kept in memory (as uint8) when they fit `preload_mb`, likewise the spectrograms; otherwise each
sample reads its frames and reads (or computes) its spectrogram. A DataLoader fetches a batch through
`__getitems__`: each episode's frames and spectrograms of the batch in one read each.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torchvision.transforms import v2

from htouch.dataset import audio
from htouch.dataset import frames as frame_cache
from htouch.dataset.audio import DEFAULT_CLIP, ClipParams, SpectrogramParams
from htouch.dataset.episode import Episode, SampleParams
from htouch.dataset.frames import read_frames, resize_frames
from htouch.dataset.spectrograms import EpisodeSpectrograms, one_torch_thread, spectrogram_shape
from htouch.dataset.split import SPLIT_KEY, training_episodes
from htouch.dataset.stats import STATS_KEY, compute_stats, store_stats
from htouch.dataset.store import Dataset
from htouch.errors import DatasetError, HtouchError
from htouch.training.methods import PolicyConfig
from htouch.training.model import ActionNormalization

P_AUGMENT = 0.5
JITTER = dict(brightness=0.3, contrast=0.3, saturation=0.1, hue=0.2)
LOAD_RATIO = 8 / 7  # 224 -> 256, as the usual Resize(256) + Crop(224)
DEFAULT_PRELOAD_MB = 4096
PRELOAD_BLOCK = 32  # frames decoded (or read from a cache) at a time while preloading

Progress = Callable[[int], None]


# ------------------------------------------------------------------------------------------ what is read


@dataclass(frozen=True)
class DataSpec:
    """What a policy reads from a dataset (the policy config decides: see `from_policy`)."""

    n_frames: int = 4
    frame_window_s: float = 2.0
    horizon: int = 8
    action_dim: int = 7
    image_size: int = 224
    audio_kind: str | None = "avid"  # None: a vision-only policy reads no audio
    clip: ClipParams = DEFAULT_CLIP
    stride: int = 1  # a sample at every `stride`-th possible camera frame

    def __post_init__(self) -> None:
        if self.image_size < 8:
            raise HtouchError(f"image size must be at least 8 pixels, got {self.image_size}")
        if self.stride < 1:
            raise HtouchError(f"the sample stride must be at least 1, got {self.stride}")
        if self.audio_kind is not None:
            audio.spectrogram_params(self.audio_kind)  # raises for an unknown kind

    @classmethod
    def from_policy(cls, config: PolicyConfig, stride: int = 1) -> DataSpec:
        return cls(n_frames=config.n_frames, horizon=config.horizon, action_dim=config.action_dim,
                   image_size=config.image_size, audio_kind=config.audio_kind, stride=stride)

    @property
    def sample_params(self) -> SampleParams:
        return SampleParams(n_frames=self.n_frames, frame_window_s=self.frame_window_s, clip=self.clip,
                            horizon=self.horizon)

    @property
    def load_size(self) -> int:
        return int(round(self.image_size * LOAD_RATIO))

    @property
    def spectrogram_params(self) -> SpectrogramParams | None:
        return None if self.audio_kind is None else audio.spectrogram_params(self.audio_kind)

    @property
    def spectrogram_shape(self) -> tuple[int, ...] | None:
        """Shape of one spectrogram as audio.spectrogram makes it (the model's input), None without audio."""
        return None if self.spectrogram_params is None else spectrogram_shape(self.spectrogram_params, self.clip)

    def to_dict(self) -> dict[str, Any]:
        """JSON for a run's config: with the spectrogram parameters and their cache key spelled out."""
        d = dataclasses.asdict(self)
        if self.spectrogram_params is not None:
            d["spectrogram"] = dataclasses.asdict(self.spectrogram_params)
            d["spectrogram_key"] = audio.params_key(self.clip, self.spectrogram_params)
            d["spectrogram_shape"] = list(self.spectrogram_shape)
        d["load_size"] = self.load_size
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if "clip" in kw:
            kw["clip"] = ClipParams(**kw["clip"])
        return cls(**kw)


# ------------------------------------------------------------------------------------------ split and stats


@dataclass
class DatasetPlan:
    """The episodes to train and validate on and the statistics to normalise with (with notes for the user)."""

    train: list[int]
    val: list[int]
    stats: dict[str, Any]
    stats_provenance: str  # "stored" or "computed"
    notes: list[str] = field(default_factory=list)

    def action_normalization(self, action_dim: int = 7) -> ActionNormalization:
        return ActionNormalization.from_stats(self.stats, action_dim)

    def spectrogram_stats(self, kind: str | None) -> dict[str, Any] | None:
        return None if kind is None else self.stats["spectrogram"][kind]


def dataset_split(ds: Dataset) -> tuple[list[int], list[int], list[str]]:
    """Train and validation episodes from `htouch split`. A dataset without a split is refused rather than
    split here: the validation set decides early stopping and which model is kept, so it must be the
    user's, visible and reproducible (and the same one the stats were computed without)."""
    split = ds.metadata.get(SPLIT_KEY)
    if not isinstance(split, dict) or not isinstance(split.get("train"), list):
        raise DatasetError(f"dataset {ds.root} has no train/validation split; run `htouch split {ds.root}` first")
    present = set(ds.episode_indices())
    train = [int(i) for i in split["train"] if int(i) in present]
    val = [int(i) for i in split.get("val", []) if int(i) in present]
    notes = list(training_episodes(ds).notes)
    missing = len([i for i in split.get("val", []) if int(i) not in present and int(i) not in ds.left_out])
    if missing:
        notes.append(f"{missing} validation episode(s) of the split no longer exist")
    if not train:
        raise DatasetError(f"none of the split's train episodes exist in {ds.root}; re-run `htouch split`")
    if not val:
        raise DatasetError(f"the split of {ds.root} has no validation episodes (needed for early stopping); "
                           "re-run `htouch split` with a larger --val")
    return train, val, notes


def stats_problem(stats: Any, kinds: list[str], clip: ClipParams, episodes: list[int]) -> str | None:
    """Why stored stats cannot be used for training on these episodes with these spectrogram kinds (None
    when they can)."""
    if not isinstance(stats, dict) or not isinstance(stats.get("action"), dict):
        return "the dataset has no stats"
    if sorted(stats.get("episodes", [])) != sorted(episodes):
        return "the stored stats were computed on other episodes than the current train split"
    for kind in kinds:
        entry = (stats.get("spectrogram") or {}).get(kind)
        if not isinstance(entry, dict):
            return f"the stored stats have no {kind} spectrogram entry"
        if entry.get("params_key") != audio.params_key(clip, audio.spectrogram_params(kind)):
            return f"the stored {kind} spectrogram stats were made with other parameters"
    return None


def ensure_stats(ds: Dataset, kinds: list[str], clip: ClipParams, episodes: list[int], progress_bar: Any = None,
                 write: bool = True) -> tuple[dict[str, Any], str, list[str]]:
    """The stats from htouch.json, or computed (and, when `write`, stored as `htouch stats` would) when they
    are missing or were made for other episodes or parameters: (stats, "stored" | "computed", notes)."""
    stats = ds.metadata.get(STATS_KEY)
    why = stats_problem(stats, kinds, clip, episodes)
    if why is None:
        return stats, "stored", []
    old_kinds = (stats.get("spectrogram") or {}) if isinstance(stats, dict) else {}
    stats, notes = compute_stats(ds, sorted({*old_kinds, *kinds}), clip, progress_bar=progress_bar)
    stored = ""
    if write:
        try:
            store_stats(ds, stats)
            stored = " and stored them in htouch.json"
        except DatasetError as e:  # a read-only dataset trains all the same
            stored = f" (not stored: {e})"
    return stats, "computed", [f"{why}: computed them{stored}", *notes]


def plan_dataset(ds: Dataset, spec: DataSpec, progress_bar: Any = None, write: bool = True,
                 episodes: int | None = None) -> DatasetPlan:
    """Episodes from the split; statistics as `ensure_stats` gives them. `episodes`: train on only the first
    that many train episodes (by index; the demonstration-count ablation). The validation episodes and the
    normalisation statistics stay the whole split's, so runs on different counts are compared alike."""
    train, val, notes = dataset_split(ds)
    kinds = [spec.audio_kind] if spec.audio_kind else []
    stats, provenance, stat_notes = ensure_stats(ds, kinds, spec.clip, train, progress_bar, write)
    notes = stat_notes[:1] + notes + [n for n in stat_notes[1:] if n not in notes]
    if episodes is not None:
        if episodes > len(train):
            raise DatasetError(f"--episodes {episodes}: the split of {ds.root} has only {len(train)} train episodes")
        notes.append(f"training on the first {episodes} of the split's {len(train)} train episodes (--episodes); "
                     "validation and normalisation statistics from the whole split")
        train = sorted(train)[:episodes]
    return DatasetPlan(train, val, stats, provenance, notes)


# ------------------------------------------------------------------------------------------ images


def to_float(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames -> float 0..1 (done on the training device, so batches travel as bytes)."""
    return frames.float().div_(255.0)


class Augment:
    """The paper's augmentation of one sample's frames, all k frames alike: RandomCrop + ColorJitter."""

    def __init__(self, image_size: int):
        self.transform = v2.Compose([v2.RandomCrop(image_size), v2.ColorJitter(**JITTER)])

    def __call__(self, loaded: torch.Tensor, seed: int) -> torch.Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(loaded)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The random seed of one training sample in one epoch (augmentation and jitter), the same in every
    worker and process."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


def augmented(seed: int) -> bool:
    """Whether the sample with this seed is augmented (probability P_AUGMENT)."""
    return float(np.random.default_rng(seed).random()) < P_AUGMENT


# ------------------------------------------------------------------------------------------ samples


class EpisodeSamples:
    """The samples of one episode: times, frame indices, spectrogram frame and normalised actions."""

    def __init__(self, ep: Episode, spec: DataSpec, norm: ActionNormalization):
        self.ep = ep
        params = spec.sample_params
        self.times = ep.sample_times(params, stride=spec.stride)
        self.spectrogram_frame = np.searchsorted(ep.camera_times, self.times).astype(np.int64)  # times are frame times
        self.frame_idx = (np.stack([ep.frame_indices(int(t), params) for t in self.times])
                          if len(self.times) else np.zeros((0, spec.n_frames), np.int64))
        chunks = [ep.action_chunk(int(t), spec.horizon) for t in self.times]
        acts = (np.stack([c[0] for c in chunks]) if chunks else np.zeros((0, spec.horizon, 7)))[..., :spec.action_dim]
        self.mask = np.stack([c[1] for c in chunks]) if chunks else np.zeros((0, spec.horizon), bool)
        self.actions = np.where(self.mask[..., None], norm.normalize(acts), 0.0).astype(np.float32)
        self.used_frames = np.unique(self.frame_idx)
        self.frame_row = np.full(len(ep.camera_times), -1, dtype=np.int64)
        self.frame_row[self.used_frames] = np.arange(len(self.used_frames))
        # filled by preloading (None: read per sample)
        self.frames: torch.Tensor | None = None  # (used, 3, S, S) uint8
        self.loaded: torch.Tensor | None = None  # (used, 3, L, L) uint8, augmented samples crop from these
        self.spectrogram_rows: torch.Tensor | None = None  # (samples, *spectrogram shape) float32
        self.spectrograms: EpisodeSpectrograms | None = None
        self.caches: dict[int, frame_cache.FrameCache] = {}  # size -> the episode's fresh frame cache

    def __len__(self) -> int:
        return len(self.times)


class PolicySamples(torch.utils.data.Dataset):
    """Samples of some episodes of a dataset, as dicts of tensors: frames (k, 3, S, S) uint8; spectrogram (the
    raw spectrogram of audio.spectrogram, absent without audio); actions (H, action_dim) float32
    normalised, zero past the episode end; mask (H,) bool."""

    def __init__(self, ds: Dataset, episodes: list[int], spec: DataSpec, norm: ActionNormalization,
                 augment: bool = False, seed: int = 0, preload_mb: float = DEFAULT_PRELOAD_MB,
                 progress: Progress | None = None):
        self.spec = spec
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.augmenter = Augment(spec.image_size) if augment else None
        self.episode_indices = list(episodes)
        self.episodes = [EpisodeSamples(ds.episode(i), spec, norm) for i in episodes]
        lengths = np.array([len(e) for e in self.episodes], dtype=np.int64)
        if lengths.sum() == 0:
            raise DatasetError(f"episodes {episodes} of {ds.root} all have fewer than {spec.horizon} actions "
                               "after their first camera frame: no training sample")
        self.sample_episode = np.repeat(np.arange(len(lengths)), lengths)
        self.sample_row = np.concatenate([np.arange(n) for n in lengths])
        self.spectrogram_provenance = {"cache": 0, "computed": 0}
        if spec.spectrogram_params is not None:
            for e in self.episodes:
                e.spectrograms = EpisodeSpectrograms(e.ep, spec.spectrogram_params, spec.clip)
                self.spectrogram_provenance[e.spectrograms.provenance] += 1
        self.frame_provenance = {"cache": 0, "decoded": 0}
        for e in self.episodes:
            for size in self.frame_sizes():
                cache = frame_cache.open_cache(e.ep, size)
                if cache is not None:
                    e.caches[size] = cache
            self.frame_provenance["cache" if len(e.caches) == len(self.frame_sizes()) else "decoded"] += 1
        self.preloaded = {"frames": False, "spectrograms": False}
        if preload_mb > 0:
            self.preload(preload_mb, progress)

    # ---------------------------------------------------------------- preloading

    def frame_sizes(self) -> list[int]:
        """The sizes frames are read at: image_size, and load_size when augmenting."""
        return [self.spec.image_size] + ([self.spec.load_size] if self.augment else [])

    def n_frames_used(self) -> int:
        return sum(len(e.used_frames) for e in self.episodes)

    def frame_bytes(self) -> int:
        sizes = self.frame_sizes()
        return self.n_frames_used() * sum(3 * s * s for s in sizes)

    def spectrogram_bytes(self) -> int:
        shape = self.spec.spectrogram_shape
        return 0 if shape is None else len(self) * int(np.prod(shape)) * 4

    def preload_work(self, preload_mb: float = DEFAULT_PRELOAD_MB) -> int:
        """Frames to decode plus spectrograms to read within this budget, for a progress bar."""
        budget = preload_mb * 1e6
        frames = self.n_frames_used() if self.frame_bytes() <= budget else 0
        left = budget - (self.frame_bytes() if frames else 0)
        return frames + (len(self) if self.spec.spectrogram_shape and self.spectrogram_bytes() <= left else 0)

    def preload(self, budget_mb: float = DEFAULT_PRELOAD_MB, progress: Progress | None = None) -> dict[str, bool]:
        """Keep the frames, then the spectrograms, in memory if they fit the budget (what was kept)."""
        with one_torch_thread():
            return self._preload(budget_mb * 1e6, progress)

    def _preload(self, budget: float, progress: Progress | None) -> dict[str, bool]:
        out = {"frames": False, "spectrograms": False}
        if self.frame_bytes() <= budget:
            sizes = self.frame_sizes()
            for e in self.episodes:  # from the frame caches, else decoded once and resized to each size; as bytes
                banks = [torch.empty((len(e.used_frames), 3, s, s), dtype=torch.uint8) for s in sizes]
                for start in range(0, len(e.used_frames), PRELOAD_BLOCK):
                    block = e.used_frames[start:start + PRELOAD_BLOCK]
                    decoded = None if all(s in e.caches for s in sizes) else read_frames(e.ep, block)
                    for bank, s in zip(banks, sizes, strict=True):
                        cache = e.caches.get(s)
                        bank[start:start + len(block)] = (torch.from_numpy(cache.read(block)) if cache is not None
                                                          else resize_frames(decoded, s))
                    if progress:
                        progress(len(block))
                e.frames = banks[0]
                e.loaded = banks[1] if self.augment else None
            out["frames"] = True
            budget -= self.frame_bytes()
        if self.spec.spectrogram_params is not None and self.spectrogram_bytes() <= budget:
            for e in self.episodes:
                e.spectrogram_rows = torch.from_numpy(self._read_spectrograms(e, np.arange(len(e))))
                if progress:
                    progress(len(e))
            out["spectrograms"] = True
        self.preloaded = out
        return out

    # ---------------------------------------------------------------- reading

    def __len__(self) -> int:
        return len(self.sample_episode)

    def set_epoch(self, epoch: int) -> None:
        """The augmentation of the next pass draws from (seed, epoch, sample)."""
        self.epoch = epoch

    def locate(self, index: int) -> tuple[EpisodeSamples, int]:
        """The episode of a sample and the sample's row within it."""
        return self.episodes[int(self.sample_episode[index])], int(self.sample_row[index])

    def _read_spectrograms(self, e: EpisodeSamples, rows: np.ndarray) -> np.ndarray:
        return e.spectrograms.frames(e.spectrogram_frame[rows])

    def _frames_at(self, e: EpisodeSamples, frame_indices: np.ndarray, size: int) -> torch.Tensor:
        """uint8 frames (n, 3, size, size) from the episode's frame cache, else decoded and resized."""
        cache = e.caches.get(size)
        if cache is not None:
            return torch.from_numpy(cache.read(frame_indices))
        uniq, inverse = np.unique(frame_indices, return_inverse=True)
        return resize_frames(read_frames(e.ep, uniq), size)[torch.from_numpy(inverse.reshape(-1))]

    def episode_frames(self, e: EpisodeSamples, frame_indices: np.ndarray, loaded: bool = False) -> torch.Tensor:
        """uint8 frames (n, 3, s, s) of an episode: at image_size, or at load_size (`loaded`) for cropping."""
        bank = e.loaded if loaded else e.frames
        if bank is not None:
            return bank[torch.from_numpy(e.frame_row[frame_indices])]
        return self._frames_at(e, frame_indices, self.spec.load_size if loaded else self.spec.image_size)

    def spectrogram(self, index: int) -> torch.Tensor:
        e, row = self.locate(index)
        if e.spectrogram_rows is not None:
            return e.spectrogram_rows[row]
        return torch.from_numpy(self._read_spectrograms(e, np.array([row]))[0])

    def __getitems__(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        """A batch of samples, the same as [self[i] for i in indices], read together by episode: its
        spectrograms in one read; frames decoded from the store once per batch however many samples share
        them (from a frame cache, straight from its memory maps into each sample). torch's DataLoader calls
        this with a batch's indices (then collate)."""
        with one_torch_thread():
            return self._items(list(indices))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        with one_torch_thread():  # small per-sample tensors: intra-op threads only contend (100x slower, measured)
            return self._item(index)

    def _item(self, index: int) -> dict[str, torch.Tensor]:
        e, row = self.locate(index)
        frames = None
        if self.augmenter is not None:
            seed = sample_seed(self.seed, self.epoch, index)
            if augmented(seed):
                frames = self.augmenter(self.episode_frames(e, e.frame_idx[row], loaded=True), seed)
        if frames is None:
            frames = self.episode_frames(e, e.frame_idx[row])
        item = {"frames": frames, "actions": torch.from_numpy(e.actions[row]), "mask": torch.from_numpy(e.mask[row])}
        if self.spec.spectrogram_params is not None:
            item["spectrogram"] = self.spectrogram(index)
        return item

    def _items(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        rows = [self.locate(i) for i in indices]
        seeds: list[int | None] = [None] * len(indices)
        loaded = [False] * len(indices)
        if self.augmenter is not None:
            for j, i in enumerate(indices):
                seeds[j] = sample_seed(self.seed, self.epoch, i)
                loaded[j] = augmented(seeds[j])
        wanted: dict[tuple[int, bool], list[int]] = {}  # (episode, loaded) -> the batch positions reading them
        for j, (e, _) in enumerate(rows):
            wanted.setdefault((id(e), loaded[j]), []).append(j)
        frames: list[torch.Tensor | None] = [None] * len(indices)
        for (_, at_load), js in wanted.items():
            e = rows[js[0]][0]
            cache = e.caches.get(self.spec.load_size if at_load else self.spec.image_size)
            if (e.loaded if at_load else e.frames) is None and cache is not None:
                # from the cache's memory maps straight into each sample: one copy per frame (gathering the
                # batch's distinct frames first costs a second copy, and copying is all a cached frame costs)
                for j in js:
                    got = torch.from_numpy(cache.read(e.frame_idx[rows[j][1]]))
                    frames[j] = self.augmenter(got, seeds[j]) if at_load else got
                continue
            idx = np.stack([e.frame_idx[rows[j][1]] for j in js])
            uniq, inverse = np.unique(idx, return_inverse=True)
            got = self.episode_frames(e, uniq, loaded=at_load)  # each frame once, then each sample's copy
            inverse = torch.from_numpy(inverse.reshape(idx.shape))
            for k, j in enumerate(js):
                frames[j] = self.augmenter(got[inverse[k]], seeds[j]) if at_load else got[inverse[k]]
        spectrograms: list[torch.Tensor | None] = [None] * len(indices)
        if self.spec.spectrogram_params is not None:
            by_episode: dict[int, list[int]] = {}
            for j, (e, _) in enumerate(rows):
                by_episode.setdefault(id(e), []).append(j)
            for js in by_episode.values():
                e = rows[js[0]][0]
                if e.spectrogram_rows is not None:
                    for j in js:
                        spectrograms[j] = e.spectrogram_rows[rows[j][1]]
                    continue
                want = np.array([rows[j][1] for j in js])
                uniq, inverse = np.unique(want, return_inverse=True)
                got = torch.from_numpy(self._read_spectrograms(e, uniq))
                for k, j in enumerate(js):
                    spectrograms[j] = got[int(inverse[k])]
        items = []
        for j, (e, row) in enumerate(rows):
            item = {"frames": frames[j], "actions": torch.from_numpy(e.actions[row]),
                    "mask": torch.from_numpy(e.mask[row])}
            if spectrograms[j] is not None:
                item["spectrogram"] = spectrograms[j]
            items.append(item)
        return items

    def frame_cache_hint(self) -> str | None:
        """A note for the user when frames are decoded for every sample (not in memory, not all cached)."""
        if self.preloaded["frames"] or not self.frame_provenance["decoded"]:
            return None
        sizes = " ".join(f"--size {s}" for s in self.frame_sizes())
        return (f"frames are decoded from JPEG for every sample ({self.frame_provenance['decoded']} episode(s) have "
                f"no frame cache); `htouch frames DATASET {sizes}` makes training read them without decoding")

    def describe(self) -> str:
        parts = [f"{len(self)} samples from {len(self.episodes)} episode(s)",
                 f"frames at {'/'.join(map(str, self.frame_sizes()))} px: {self.frame_provenance['cache']} episode(s) "
                 f"cached, {self.frame_provenance['decoded']} decoded"]
        if self.spec.spectrogram_params is not None:
            counts = self.spectrogram_provenance
            parts.append(f"{self.spec.audio_kind} spectrograms: {counts['cache']} episode(s) cached, "
                         f"{counts['computed']} computed")
        kept = [k for k, v in self.preloaded.items() if v]
        parts.append(f"in memory: {', '.join(kept) if kept else 'nothing (read per sample)'}")
        return "; ".join(parts)


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack a list of samples (dicts of tensors) into a batch."""
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}
