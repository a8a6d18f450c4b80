"""Training samples: frames, spectrogram and actions as the episode reader gives them at the sample time,
normalised with the stored stats; augmentation reproducible; split and stats checked."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from htouch.collector.devices import Frame
from htouch.dataset import spectrograms
from htouch.dataset.split import split_dataset
from htouch.dataset.stats import STATS_KEY, compute_stats, store_stats
from htouch.dataset.store import Dataset
from htouch.errors import DatasetError
from htouch.training.data import (
    DataSpec,
    PolicySamples,
    augmented,
    collate,
    plan_dataset,
    resize_frames,
    sample_seed,
    to_float,
)
from htouch.training.model import preprocess_frames
from htouch.training.runner import ObservationBuffer
from tests.conftest import tiny_dataset

SPEC = DataSpec(image_size=32, horizon=5, audio_kind="avid")


@pytest.fixture(scope="module")
def _template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "ds"
    ds = tiny_dataset(root, n=2)
    split_dataset(ds, 0.5, seed=0)  # two episodes: one trains, one validates
    plan_dataset(Dataset(root), SPEC)  # computes and stores the stats
    return root


@pytest.fixture
def split_ds(_template, tmp_path) -> Dataset:
    shutil.copytree(_template, tmp_path / "ds")
    return Dataset(tmp_path / "ds")


def test_a_sample_is_what_the_episode_reader_gives_at_that_time(split_ds):
    plan = plan_dataset(split_ds, SPEC)
    norm = plan.action_normalization()
    samples = PolicySamples(split_ds, plan.train, SPEC, norm)
    ep = split_ds.episode(plan.train[0])
    times = ep.sample_times(SPEC.sample_params)
    assert len(samples) == len(times) > 10
    for i in (0, 7, len(times) - 1):
        item = samples[i]
        ref = ep.sample(int(times[i]), SPEC.sample_params)
        # frames: exactly what the policy runner feeds (model.preprocess_frames), kept as bytes
        assert item["frames"].dtype == torch.uint8 and item["frames"].shape == (4, 3, 32, 32)
        torch.testing.assert_close(to_float(item["frames"]), preprocess_frames(ref.frames, 32), rtol=0, atol=0)
        # actions: the next H, normalised with the dataset's stats
        np.testing.assert_allclose(item["actions"].numpy(), norm.normalize(ref.actions), rtol=1e-5, atol=1e-5)
        assert item["mask"].tolist() == ref.action_mask.tolist()
        # spectrogram: raw, of the clip ending at the sample time (the model normalises it)
        frame = int(np.searchsorted(ep.camera_times, times[i]))
        np.testing.assert_array_equal(item["spectrogram"].numpy(), spectrograms.spectrogram_at(ep, frame, "avid"))
    batch = collate([samples[0], samples[1]])
    assert batch["frames"].shape == (2, 4, 3, 32, 32) and batch["spectrogram"].shape == (2, 1, 200, 257)


def test_samples_start_at_the_first_frame_where_the_runner_starts_acting(split_ds):
    """The runner acts from an episode's first frame, its window padded with that frame; training once began
    2 s in, so a policy never learned the reaching a demonstration does first."""
    plan = plan_dataset(split_ds, SPEC)
    norm = plan.action_normalization()
    samples = PolicySamples(split_ds, plan.train, SPEC, norm)
    ep = split_ds.episode(plan.train[0])
    t0 = int(ep.camera_times[0])
    assert samples.episodes[0].times[0] == t0
    buffer = ObservationBuffer(ep.streams.audio, SPEC.sample_params)
    buffer.add_frame(Frame(t0, 0, ep.array("camera/rgb")[0]))  # what a live loop has at its first re-plan
    live = np.stack([f.rgb for f in buffer.frames(t0)])
    first = samples[0]
    torch.testing.assert_close(to_float(first["frames"]), preprocess_frames(live, 32), rtol=0, atol=0)
    recorded = np.concatenate([ep.read("action/delta_ee"), ep.read("action/gripper")[:, None]], axis=1)
    a0 = int(np.searchsorted(ep.action_times, t0))
    np.testing.assert_allclose(first["actions"].numpy(), norm.normalize(recorded[a0:a0 + SPEC.horizon]),
                               rtol=1e-5, atol=1e-5)


def test_preloaded_and_per_sample_reading_agree_and_the_cache_is_used(split_ds, cli):
    plan = plan_dataset(split_ds, SPEC)
    norm = plan.action_normalization()
    kept = PolicySamples(split_ds, plan.train, SPEC, norm, augment=True, seed=3)
    assert kept.preloaded == {"frames": True, "spectrograms": True} and kept.spectrogram_provenance["computed"] == 1
    assert cli("spectrogram", split_ds.root, "--kind", "avid").code == 0
    streamed = PolicySamples(split_ds, plan.train, SPEC, norm, augment=True, seed=3, preload_mb=0)
    assert streamed.preloaded == {"frames": False, "spectrograms": False}
    assert streamed.spectrogram_provenance == {"cache": 1, "computed": 0}
    for i in range(0, len(kept), 9):
        a, b = kept[i], streamed[i]
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (i, k)


def test_augmentation_half_of_the_samples_reproducible_per_seed_and_epoch(split_ds):
    plan = plan_dataset(split_ds, SPEC)
    norm = plan.action_normalization()
    plain = PolicySamples(split_ds, plan.train, SPEC, norm)
    aug = PolicySamples(split_ds, plan.train, SPEC, norm, augment=True, seed=1)
    n = len(aug)
    changed = [not torch.equal(aug[i]["frames"], plain[i]["frames"]) for i in range(n)]
    expected = [augmented(sample_seed(1, 0, i)) for i in range(n)]
    assert changed == expected and 0.25 < np.mean(changed) < 0.75
    again = PolicySamples(split_ds, plan.train, SPEC, norm, augment=True, seed=1, preload_mb=0)
    i = expected.index(True)
    assert torch.equal(aug[i]["frames"], again[i]["frames"])
    aug.set_epoch(1)
    assert [augmented(sample_seed(1, 1, j)) for j in range(n)] != expected  # a new draw each epoch
    assert torch.equal(aug[i]["actions"], plain[i]["actions"])  # only images are augmented


def test_augmented_frames_share_one_crop(split_ds):
    """A sample whose k frames are one image gets k identical augmented frames (one crop, one jitter)."""
    plan = plan_dataset(split_ds, SPEC)
    aug = PolicySamples(split_ds, plan.train, SPEC, plan.action_normalization(), augment=True, seed=0)
    e = aug.episodes[0]
    frame = resize_frames(e.ep.array("camera/rgb")[10][None], SPEC.load_size).expand(4, -1, -1, -1)
    out = aug.augmenter(frame, 123)
    assert out.shape == (4, 3, 32, 32) and all(torch.equal(out[0], out[j]) for j in range(1, 4))


def test_vision_only_reads_no_audio(split_ds):
    spec = DataSpec(image_size=16, horizon=3, audio_kind=None)
    plan = plan_dataset(split_ds, spec)
    samples = PolicySamples(split_ds, plan.val, spec, plan.action_normalization())
    assert set(samples[0]) == {"frames", "actions", "mask"}
    assert samples.spectrogram_provenance == {"cache": 0, "computed": 0}


def test_without_a_split_training_is_refused_with_the_command_to_run(tiny_ds):
    with pytest.raises(DatasetError, match="htouch split"):
        plan_dataset(tiny_ds, SPEC)
    split_dataset(tiny_ds, 0.1, seed=0)  # too small to give a validation episode
    with pytest.raises(DatasetError, match="no validation episodes"):
        plan_dataset(Dataset(tiny_ds.root), SPEC)


def test_missing_or_outdated_stats_are_computed_and_stored(tiny_ds):
    split_dataset(tiny_ds, 0.5, seed=0)
    split_ds = Dataset(tiny_ds.root)
    assert STATS_KEY not in split_ds.metadata
    plan = plan_dataset(split_ds, SPEC)
    assert plan.stats_provenance == "computed" and "no stats" in plan.notes[0]
    stored = Dataset(split_ds.root).metadata[STATS_KEY]
    assert stored["episodes"] == plan.train and "avid" in stored["spectrogram"]
    assert plan_dataset(Dataset(split_ds.root), SPEC).stats_provenance == "stored"
    # stats of all episodes (made before the split) are not the training set's: recomputed
    stats, _ = compute_stats(Dataset(split_ds.root), kinds=("avid",))
    stats["episodes"] = [0, 1]
    store_stats(split_ds, stats)
    again = plan_dataset(Dataset(split_ds.root), SPEC)
    assert again.stats_provenance == "computed" and "other episodes" in again.notes[0]


def test_episodes_too_short_for_one_sample_are_refused(tmp_path):
    ds = tiny_dataset(tmp_path / "short", n=2, seconds=0.2)  # 6 actions, fewer than H = 8
    split_dataset(ds, 0.5, seed=0)
    ds = Dataset(ds.root)
    with pytest.raises(DatasetError, match="no training sample"):
        plan = plan_dataset(ds, DataSpec(image_size=16, audio_kind=None))
        PolicySamples(ds, plan.train, DataSpec(image_size=16, audio_kind=None), plan.action_normalization())
