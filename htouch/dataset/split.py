"""A train/validation split kept in the dataset metadata as episode indices (no data is copied).

The rule, so that anyone can reproduce a split by hand:
- episodes are grouped into strata by (success label, variation); the label is success, failure or unlabelled;
- within a stratum the sorted indices are shuffled by numpy's default_rng seeded with (seed, crc32 of the
  stratum name), so a stratum's split depends only on the seed and its own episodes, not on other strata;
- the first round(val * n) shuffled episodes go to validation, rounded half up, but at most n - 1: every
  stratum keeps at least one training episode, so a stratum of size 1 is always training data.
Validation therefore holds the same mix of outcomes and scene variations as training.
"""

from __future__ import annotations

import datetime as dt
import math
import zlib
from dataclasses import dataclass, field
from typing import Any

from htouch.dataset.store import Dataset
from htouch.errors import DatasetError, HtouchError

SPLIT_KEY = "split"
RULE = "per (success, variation) stratum: round half up(val * n) episodes to val, at most n - 1"


DEFAULT_VAL_FRACTION = 0.2  # `htouch split`'s default share of each stratum for validation
DEFAULT_SPLIT_SEED = 0

def success_label(success: bool | None) -> str:
    return {True: "success", False: "failure", None: "unlabelled"}[success]


def n_val(n: int, val_fraction: float) -> int:
    """Validation episodes out of a stratum of n (see the module docstring)."""
    if n <= 1:
        return 0
    # The tiny epsilon keeps e.g. 0.3 * 5 = 1.4999999... from rounding down.
    return min(math.floor(val_fraction * n + 0.5 + 1e-9), n - 1)


@dataclass
class Stratum:
    success: bool | None
    variation: str
    train: list[int] = field(default_factory=list)
    val: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{success_label(self.success)}/{self.variation}"

    def summary(self) -> dict[str, Any]:
        return {"success": self.success, "variation": self.variation, "episodes": len(self.train) + len(self.val),
                "train": len(self.train), "val": len(self.val)}


@dataclass
class Split:
    val_fraction: float
    seed: int
    strata: list[Stratum]

    @property
    def train(self) -> list[int]:
        return sorted(i for s in self.strata for i in s.train)

    @property
    def val(self) -> list[int]:
        return sorted(i for s in self.strata for i in s.val)

    def to_metadata(self) -> dict[str, Any]:
        return {"val_fraction": self.val_fraction, "seed": self.seed, "rule": RULE,
                "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "train": self.train, "val": self.val, "strata": [s.summary() for s in self.strata]}


def check_split_args(val_fraction: float, seed: int) -> None:
    if not (0.0 < val_fraction < 1.0) or math.isnan(val_fraction):
        raise HtouchError(f"--val must be between 0 and 1 (exclusive), got {val_fraction}")
    if seed < 0:
        raise HtouchError(f"--seed must be 0 or more, got {seed}")


def make_split(ds: Dataset, val_fraction: float, seed: int) -> Split:
    """The split of the dataset's committed episodes by the documented rule (nothing is written)."""
    check_split_args(val_fraction, seed)
    groups: dict[tuple[str, str], Stratum] = {}
    for ep in ds.episodes():
        key = (success_label(ep.success), ep.variation)
        groups.setdefault(key, Stratum(ep.success, ep.variation)).train.append(ep.index)
    if not groups:
        raise DatasetError(f"dataset {ds.root} has no episodes to split")
    import numpy as np  # here, not at the top: the command line reads this module's defaults at start

    strata = []
    for key in sorted(groups):
        s = groups[key]
        rng = np.random.default_rng([seed, zlib.crc32(s.name.encode())])
        order = [int(i) for i in rng.permutation(sorted(s.train))]
        k = n_val(len(order), val_fraction)
        strata.append(Stratum(s.success, s.variation, train=sorted(order[k:]), val=sorted(order[:k])))
    return Split(val_fraction=val_fraction, seed=seed, strata=strata)


def split_dataset(ds: Dataset, val_fraction: float, seed: int) -> Split:
    """Make the split and store it in the dataset metadata under "split" (replacing any earlier one)."""
    split = make_split(ds, val_fraction, seed)
    ds.update_metadata(**{SPLIT_KEY: split.to_metadata()})
    return split


@dataclass
class EpisodeSelection:
    """The episodes a computation uses (the train split when there is one), and what to tell the user."""

    indices: list[int]
    episode_set: str  # "train split" or "all episodes"
    notes: list[str] = field(default_factory=list)


def training_episodes(ds: Dataset) -> EpisodeSelection:
    """The episodes training uses: the stored split's train list (only those present), else all episodes;
    DatasetError for a dataset without episodes."""
    present = ds.episode_indices()
    if not present:
        raise DatasetError(f"dataset {ds.root} has no episodes")
    split = ds.metadata.get(SPLIT_KEY)
    if not isinstance(split, dict) or not isinstance(split.get("train"), list):
        return EpisodeSelection(present, "all episodes")
    train = {int(i) for i in split["train"]}
    in_split = train | {int(i) for i in split.get("val", [])}
    chosen = [i for i in present if i in train]
    notes = []
    missing = sorted(train - set(present) - set(ds.left_out))
    if missing:
        notes.append(f"{len(missing)} train episode(s) of the split no longer exist (e.g. {missing[0]})")
    new = [i for i in present if i not in in_split]
    if new:
        notes.append(f"{len(new)} episode(s) are in neither split (added after it?); re-run `htouch split` "
                     "to include them")
    if not chosen:
        raise DatasetError(f"none of the split's train episodes exist in {ds.root}; re-run `htouch split`")
    return EpisodeSelection(chosen, "train split", notes)


__all__ = ["Split", "Stratum", "make_split", "split_dataset", "training_episodes", "n_val", "EpisodeSelection"]
