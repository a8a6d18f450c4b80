"""htouch split: deterministic, stratified by (success, variation), stored as indices in the metadata."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pytest

from htouch.dataset.split import make_split, n_val, split_dataset, training_episodes
from htouch.dataset.store import Dataset
from htouch.dataset.synthetic import SyntheticEpisode, write_synthetic_episode
from htouch.errors import DatasetError, HtouchError
from tests.conftest import TINY_RIG

# (success, variation) of each episode, in index order: strata of 8, 3, 4 and 1 episodes.
LABELS = ([(True, "train")] * 8 + [(False, "train")] * 3 + [(True, "test")] * 4 + [(None, "train")])


def _write(ds: Dataset, labels) -> None:
    for i, (success, variation) in enumerate(labels):
        write_synthetic_episode(ds, SyntheticEpisode(duration_s=1.0, seed=i, success=success, variation=variation))


@pytest.fixture(scope="module")
def _template(tmp_path_factory):
    root = tmp_path_factory.mktemp("split") / "ds"
    _write(Dataset.create(root, "zip", TINY_RIG), LABELS)
    return root


@pytest.fixture
def ds(_template, tmp_path) -> Dataset:
    shutil.copytree(_template, tmp_path / "ds")
    return Dataset(tmp_path / "ds")


def _labels_of(ds: Dataset, indices) -> Counter:
    return Counter((ds.episode(i).success, ds.episode(i).variation) for i in indices)


def test_rounding_rule():
    assert n_val(1, 0.9) == 0  # a single episode always trains
    assert n_val(2, 0.5) == 1
    assert n_val(5, 0.3) == 2  # 1.5 rounds half up
    assert n_val(10, 0.25) == 3  # 2.5 rounds half up, not to even
    assert n_val(5, 0.99) == 4  # at most n - 1
    assert n_val(8, 0.2) == 2 and n_val(3, 0.2) == 1 and n_val(4, 0.2) == 1


def test_same_seed_same_split_other_seed_differs(ds):
    a, b = make_split(ds, 0.25, seed=0), make_split(ds, 0.25, seed=0)
    assert (a.train, a.val) == (b.train, b.val)
    c = make_split(ds, 0.25, seed=1)
    assert c.val != a.val
    assert sorted(c.train + c.val) == sorted(a.train + a.val) == ds.episode_indices()


def test_stratified_counts(ds):
    split = make_split(ds, 0.2, seed=0)
    # 8 -> 2 (1.6), 3 -> 1 (0.6), 4 -> 1 (0.8), 1 -> 0
    assert _labels_of(ds, split.val) == Counter({(True, "train"): 2, (False, "train"): 1, (True, "test"): 1})
    assert _labels_of(ds, split.train) == Counter({(True, "train"): 6, (False, "train"): 2, (True, "test"): 3,
                                                   (None, "train"): 1})
    summary = {(s["success"], s["variation"]): (s["episodes"], s["train"], s["val"])
               for s in split.to_metadata()["strata"]}
    assert summary == {(True, "train"): (8, 6, 2), (False, "train"): (3, 2, 1), (True, "test"): (4, 3, 1),
                       (None, "train"): (1, 1, 0)}


def test_a_stratum_does_not_depend_on_other_strata(ds, tmp_path):
    other = Dataset.create(tmp_path / "other", "zip", TINY_RIG)
    _write(other, LABELS[:8])  # the same success/train stratum alone
    full = {i for i in make_split(ds, 0.3, seed=4).val if i < 8}
    alone = set(make_split(other, 0.3, seed=4).val)
    assert full == alone and len(alone) == 2


def test_stored_in_metadata_and_shown_by_ls(ds, cli):
    r = cli("split", ds.root, "--val", "0.2", "--seed", "3")
    assert r.code == 0, r.err
    assert "failure" in r.out and "unlabelled" in r.out
    stored = Dataset(ds.root).metadata["split"]
    expected = make_split(ds, 0.2, seed=3)
    assert stored["train"] == expected.train and stored["val"] == expected.val
    assert stored["val_fraction"] == 0.2 and stored["seed"] == 3
    assert not set(stored["train"]) & set(stored["val"])
    assert len(stored["strata"]) == 4
    r = cli("split", ds.root, "--val", "0.2", "--seed", "3", "--json")
    assert r.code == 0 and json.loads(r.out) == Dataset(ds.root).metadata["split"]  # the stored split, alone
    ls = cli("ls", ds.root, "--json")
    assert ls.code == 0
    shown = {row["episode"]: row["split"] for row in json.loads(ls.out)}
    assert shown == {**{i: "train" for i in stored["train"]}, **{i: "val" for i in stored["val"]}}


def test_training_episodes_follow_the_split(ds):
    assert training_episodes(ds).episode_set == "all episodes"
    split = split_dataset(ds, 0.2, seed=0)
    sel = training_episodes(Dataset(ds.root))
    assert sel.episode_set == "train split" and sel.indices == split.train and not sel.notes
    write_synthetic_episode(ds, SyntheticEpisode(duration_s=1.0, seed=99))
    sel = training_episodes(Dataset(ds.root))
    assert sel.indices == split.train
    assert any("neither split" in n for n in sel.notes)


def test_empty_validation_warns(tmp_path, cli):
    ds = Dataset.create(tmp_path / "few", "zip", TINY_RIG)
    _write(ds, [(True, "train"), (False, "train")])
    r = cli("split", ds.root, "--val", "0.2")
    assert r.code == 0
    assert "validation set is empty" in r.err
    assert Dataset(ds.root).metadata["split"]["val"] == []


@pytest.mark.parametrize("val", ["0", "1", "1.5", "-0.1", "nan"])
def test_bad_fraction_is_one_line_exit_2(ds, cli, val):
    r = cli("split", ds.root, "--val", val)
    assert r.code == 2
    assert r.err.strip().count("\n") == 0 and "--val must be between 0 and 1" in r.err
    assert "split" not in Dataset(ds.root).metadata


def test_bad_seed_and_empty_dataset(tmp_path, ds, cli):
    r = cli("split", ds.root, "--seed", "-1")
    assert r.code == 2 and "--seed" in r.err
    empty = Dataset.create(tmp_path / "empty", "zip", TINY_RIG)
    r = cli("split", empty.root)
    assert r.code == 2 and r.err.strip().count("\n") == 0 and "no episodes" in r.err
    with pytest.raises(DatasetError):
        make_split(empty, 0.2, 0)
    with pytest.raises(HtouchError):
        make_split(ds, 1.0, 0)
