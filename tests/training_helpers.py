"""Small split datasets with stats for the training tests (built once per session, copied per test)."""

from __future__ import annotations

import shutil
from pathlib import Path

from htouch.dataset.split import split_dataset
from htouch.dataset.stats import compute_stats, store_stats
from htouch.dataset.store import Dataset
from tests.conftest import tiny_dataset


def make_training_dataset(root: Path, n: int = 4, seconds: float = 4.0, kinds=("avid",)) -> Dataset:
    """n synthetic episodes on the 64x48 rig, split (1 of 4 validates), stats of the given spectrogram kinds."""
    ds = tiny_dataset(root, n=n, seconds=seconds)
    split_dataset(ds, 0.25, seed=0)
    ds = Dataset(root)
    stats, _ = compute_stats(ds, list(kinds))
    store_stats(ds, stats)
    return Dataset(root)


def train_tiny_run(root: Path, template: Path) -> Path:
    """root/run: a tiny `ours` policy trained for one epoch on a synthetic 64x48 zip dataset (root/demos, a copy of
    template, the `training_template` fixture; random initial encoders), for the tests that roll a policy out."""
    from htouch.training.train import TrainConfig, train

    copy_dataset(template, root / "demos")
    run = root / "run"
    train(TrainConfig(dataset=root / "demos", run_dir=run, method="ours", preset="tiny", epochs=1, batch_size=16,
                      allow_random_init=True, threads=1))
    return run


def copy_dataset(template: Path, dest: Path) -> Dataset:
    shutil.copytree(template, dest)
    return Dataset(dest)
