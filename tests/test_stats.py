"""htouch stats: normalisation statistics equal to numpy on the arrays; NaN and empty data refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from htouch.dataset import audio, spectrograms
from htouch.dataset.split import split_dataset
from htouch.dataset.stats import QUANTILE_KEYS, QUANTILES, SpectrogramStats, compute_stats, sample_frames
from htouch.dataset.store import Dataset
from htouch.errors import DatasetError
from tests.conftest import TINY_RIG

STATE = {"ee_pose": "state/ee_pose", "joints": "state/joints", "gripper_width": "state/gripper_width"}
ACTION = {"delta_ee": "action/delta_ee", "gripper": "action/gripper"}


def _expected(ds: Dataset, indices, path):
    arrays = [ds.episode(i).read(path) for i in indices]
    return np.concatenate([a.reshape(len(a), -1) for a in arrays])


def _assert_describes(d, x, rtol=1e-12, atol=0.0):
    x = x.astype(np.float64)  # the stats are computed in float64
    np.testing.assert_allclose(d["mean"], x.mean(axis=0), rtol=rtol, atol=atol)
    np.testing.assert_allclose(d["std"], x.std(axis=0), rtol=rtol, atol=max(atol, 1e-15))
    np.testing.assert_array_equal(d["min"], x.min(axis=0))
    np.testing.assert_array_equal(d["max"], x.max(axis=0))
    for key, q in zip(QUANTILE_KEYS, QUANTILES, strict=True):
        np.testing.assert_allclose(d[key], np.percentile(x, q, axis=0), rtol=rtol, atol=atol)
    assert d["count"] == len(x)


def test_state_and_action_match_numpy(tiny_ds):
    stats, notes = compute_stats(tiny_ds, kinds=())
    assert stats["episode_set"] == "all episodes" and stats["episodes"] == [0, 1] and not notes
    assert set(stats["state"]) == set(STATE) and set(stats["action"]) == set(ACTION)
    for group, arrays in (("state", STATE), ("action", ACTION)):
        for name, path in arrays.items():
            x = _expected(tiny_ds, [0, 1], path)
            assert len(stats[group][name]["mean"]) == x.shape[1]
            _assert_describes(stats[group][name], x)


def test_train_split_only(tiny_ds):
    split = split_dataset(tiny_ds, 0.5, seed=0)  # two success/train episodes -> one each
    assert len(split.train) == 1
    stats, _ = compute_stats(Dataset(tiny_ds.root), kinds=())
    assert stats["episode_set"] == "train split" and stats["episodes"] == split.train
    _assert_describes(stats["state"]["joints"], _expected(tiny_ds, split.train, "state/joints"))


def test_spectrograms_on_the_fly_and_from_cache_agree_with_numpy(tiny_ds):
    params = audio.spectrogram_params("logmel")
    frames = {ep.index: sample_frames(ep, audio.DEFAULT_CLIP) for ep in tiny_ds.episodes()}
    total = sum(len(f) for f in frames.values())
    assert 0 < total < sum(len(ep.camera_times) for ep in tiny_ds.episodes())  # padded windows left out

    otf = SpectrogramStats(list(tiny_ds.episodes()), "logmel", max_windows=10_000).run()
    assert otf["source"] == "subsample" and otf["windows"] == total and otf["bins"] == 64

    for job in spectrograms.plan(tiny_ds, params):
        spectrograms.build(job.episode, params)
    cached = SpectrogramStats(list(tiny_ds.episodes()), "logmel", max_windows=10_000).run()
    assert cached["source"] == "cache" and cached["windows"] == total

    # numpy over every time column of every window, one column per mel bin
    specs = np.concatenate([spectrograms.open_cache(ep, params).read(frames[ep.index]) for ep in tiny_ds.episodes()])
    x = specs.transpose(0, 2, 1).reshape(-1, 64)
    _assert_describes(cached, x, rtol=1e-9)  # streamed (Chan) float64 sums vs numpy's pairwise sums
    _assert_describes(otf, x)


def test_subsample_is_deterministic_and_bounded(tiny_ds):
    eps = list(tiny_ds.episodes())
    a = SpectrogramStats(eps, "avid", max_windows=6).run()
    b = SpectrogramStats(list(Dataset(tiny_ds.root).episodes()), "avid", max_windows=6).run()
    assert a["source"] == "subsample" and a["windows"] == 6 and a["windows_total"] > 6
    assert a["bins"] == 257
    assert a["mean"] == b["mean"] and a["q99"] == b["q99"]
    assert a["params_key"] == audio.params_key(audio.DEFAULT_CLIP, audio.spectrogram_params("avid"))


def test_cli_stores_stats_and_prints_tables(tiny_ds, cli):
    r = cli("stats", tiny_ds.root, "--kind", "logmel", "--windows", "8")
    assert r.code == 0, r.err
    assert "state/ee_pose" in r.out and "action/delta_ee" in r.out and "subsample" in r.out
    assert "all episodes" in r.out
    stored = Dataset(tiny_ds.root).metadata["stats"]
    assert stored["episodes"] == [0, 1] and stored["quantiles"] == list(QUANTILES)
    assert set(stored["spectrogram"]) == {"logmel"} and stored["spectrogram"]["logmel"]["windows"] == 8
    r = cli("stats", tiny_ds.root, "--kind", "logmel", "--windows", "8", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out) == Dataset(tiny_ds.root).metadata["stats"]  # stdout is the JSON alone, as stored


def _poison(ds: Dataset, index: int, path: str, row: int) -> None:
    arr = zarr.open_array(str(ds.episode_path(index) / path), mode="r+", zarr_format=2)
    data = arr[...]
    data[row] = np.nan
    arr[...] = data


def test_nan_names_episode_and_array(tiny_ds, cli):
    _poison(tiny_ds, 1, "action/delta_ee", 7)
    # refused when the episode is opened (the structural checks every reader runs), before any stats
    with pytest.raises(DatasetError, match=r"episode_000001 is damaged: action/delta_ee: 1 row\(s\) with NaN or Inf, "
                       r"first row 7"):
        compute_stats(tiny_ds, kinds=())
    r = cli("stats", tiny_ds.root, "--kind", "logmel")
    assert r.code == 2 and r.err.strip().count("\n") == 0
    assert "episode_000001" in r.err and "action/delta_ee" in r.err
    assert "stats" not in Dataset(tiny_ds.root).metadata


def test_errors_exit_2(tmp_path, tiny_ds, cli):
    empty = Dataset.create(tmp_path / "empty", "zip", TINY_RIG)
    r = cli("stats", empty.root)
    assert r.code == 2 and r.err.strip().count("\n") == 0 and "no episodes" in r.err
    r = cli("stats", tiny_ds.root, "--kind", "mfcc")
    assert r.code == 2 and "unknown spectrogram kind" in r.err
    r = cli("stats", tiny_ds.root, "--windows", "0")
    assert r.code == 2 and "--windows" in r.err
