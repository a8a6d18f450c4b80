"""Frame caches at training resolution: the same bytes as decoding and resizing, stale or damaged caches never
read as good (stale ones are decoded around and rebuilt, damaged ones refused with one line and rebuilt)."""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest
import torch
import zarr

from htouch.dataset import frames
from htouch.dataset.split import split_dataset
from htouch.dataset.store import Dataset
from htouch.errors import DatasetError
from htouch.training.data import DataSpec, PolicySamples, collate, plan_dataset
from tests.conftest import tiny_dataset

SPEC = DataSpec(image_size=32, horizon=5, audio_kind="avid")
SIZES = (SPEC.image_size, SPEC.load_size)  # 32 and 37


@pytest.fixture(scope="module")
def _cached(tmp_path_factory):
    """Two 3 s episodes, split, with stats and frame caches at both sizes."""
    root = tmp_path_factory.mktemp("frames") / "ds"
    ds = tiny_dataset(root, n=2, seconds=3.0)
    split_dataset(ds, 0.5, seed=0)
    plan_dataset(Dataset(root), SPEC)
    for size in SIZES:
        for job in frames.plan(Dataset(root), size):
            frames.build(job.episode, size)
    return root


@pytest.fixture
def cached_ds(_cached, tmp_path) -> Dataset:
    shutil.copytree(_cached, tmp_path / "ds")
    return Dataset(tmp_path / "ds")


def _uncached(ds: Dataset) -> Dataset:
    shutil.rmtree(ds.root / "derived" / "frames")
    return Dataset(ds.root)


def test_cached_frames_are_the_decoded_frames_resized_exactly(_cached):
    ds = Dataset(_cached)
    ep = ds.episode(1)
    n = len(ep.camera_times)
    for size in SIZES:
        assert frames.cache_status(ep, size) == "fresh"
        cache = frames.open_cache(ep, size)
        want = frames.resize_frames(frames.read_frames(ep, range(n)), size).numpy()
        np.testing.assert_array_equal(cache.read(np.arange(n)), want)  # tolerance 0: the same bytes
        np.testing.assert_array_equal(cache.read(np.array([5, 2, 5])), want[[5, 2, 5]])
        # plain Zarr reads the cache without htouch
        group = zarr.open_group(str(frames.cache_path(ep, size)), mode="r", zarr_format=2)
        np.testing.assert_array_equal(group["data"][...], want)


def _all_items(samples: PolicySamples) -> list[dict[str, torch.Tensor]]:
    return [samples[i] for i in range(len(samples))]


@pytest.mark.parametrize("augment", [False, True])
def test_training_samples_are_the_same_from_the_cache_and_batched(cached_ds, tmp_path, augment):
    plan = plan_dataset(cached_ds, SPEC)
    norm = plan.action_normalization()
    cached = PolicySamples(cached_ds, plan.train, SPEC, norm, augment=augment, seed=3, preload_mb=0)
    assert cached.frame_provenance == {"cache": 1, "decoded": 0}
    assert "1 episode(s) cached, 0 decoded" in cached.describe()
    preloaded = PolicySamples(cached_ds, plan.train, SPEC, norm, augment=augment, seed=3)
    assert preloaded.preloaded["frames"]
    order = list(np.random.default_rng(0).permutation(len(cached)))
    loader = torch.utils.data.DataLoader(cached, batch_size=7, sampler=order[:7], collate_fn=collate)
    batch = next(iter(loader))  # a shuffled batch through a DataLoader, which calls __getitems__
    results = [_all_items(cached), _all_items(preloaded), cached.__getitems__(list(range(len(cached))))]
    plain = PolicySamples(_uncached(cached_ds), plan.train, SPEC, norm, augment=augment, seed=3, preload_mb=0)
    assert plain.frame_provenance == {"cache": 0, "decoded": 1}
    want = _all_items(plain)
    for got in results:
        for a, b in zip(got, want, strict=True):
            assert a.keys() == b.keys()
            for k in a:
                torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    torch.testing.assert_close(batch["frames"], torch.stack([want[i]["frames"] for i in order[:7]]), rtol=0, atol=0)
    torch.testing.assert_close(batch["spectrogram"], torch.stack([want[i]["spectrogram"] for i in order[:7]]),
                               rtol=0, atol=0)


def test_a_cache_of_another_episode_is_stale_and_decoded_around_then_rebuilt(cached_ds, cli):
    ep0, ep1 = cached_ds.episode(0), cached_ds.episode(1)
    size = SPEC.image_size
    shutil.rmtree(frames.cache_path(ep1, size))
    shutil.copytree(frames.cache_path(ep0, size), frames.cache_path(ep1, size))  # the same times, other frames
    ep1 = Dataset(cached_ds.root).episode(1)
    assert frames.cache_status(ep1, size) == "stale: fingerprint differs"
    assert frames.open_cache(ep1, size) is None
    r = cli("frames", cached_ds.root, "--size", size)
    assert r.code == 0, r.err
    assert "1 episode(s) built (1 stale), 1 up to date" in r.out
    assert frames.cache_status(Dataset(cached_ds.root).episode(1), size) == "fresh"


def test_a_truncated_or_reshaped_cache_is_stale(cached_ds):
    ep = cached_ds.episode(0)
    size = SPEC.image_size
    chunk = frames.cache_path(ep, size) / "data" / "0.0.0.0"
    data = chunk.read_bytes()
    chunk.write_bytes(data[:-100])
    assert frames.cache_status(ep, size).startswith("stale: data chunk 0 holds")
    chunk.write_bytes(data)
    assert frames.cache_status(ep, size) == "fresh"
    meta_file = frames.cache_path(ep, size) / "data" / ".zarray"
    meta = json.loads(meta_file.read_text())
    meta["compressor"] = {"id": "zlib", "level": 1}
    meta_file.write_text(json.dumps(meta))
    assert frames.cache_status(ep, size).startswith("stale: data is not an uncompressed")
    (frames.cache_path(ep, size) / ".zattrs").write_text("{not json")
    assert frames.cache_status(ep, size) == "stale: unreadable (JSONDecodeError)"


def test_a_damaged_frame_is_refused_with_one_line_and_verify_rebuilds_it(cached_ds, cli):
    plan = plan_dataset(cached_ds, SPEC)
    ep = cached_ds.episode(plan.train[0])
    size = SPEC.image_size
    chunk = frames.cache_path(ep, size) / "data" / "0.0.0.0"
    data = bytearray(chunk.read_bytes())
    data[3 * size * size * 4 + 10] ^= 0xFF  # one byte of frame 4
    chunk.write_bytes(bytes(data))
    assert frames.cache_status(ep, size) == "fresh"  # sizes and metadata are fine: found when read
    samples = PolicySamples(cached_ds, plan.train, SPEC, plan.action_normalization(), preload_mb=0)
    with pytest.raises(DatasetError, match=r"32 px frame cache is damaged \(row 4 does not match its checksum\); "
                                           r"rebuild it with `htouch frames --size 32 --verify`"):
        samples.__getitems__(list(range(len(samples))))
    r = cli("frames", cached_ds.root, "--size", size)
    assert "0 episode(s) built, 2 up to date" in r.out  # without --verify nothing is hashed
    r = cli("frames", cached_ds.root, "--size", size, "--verify")
    assert r.code == 0, r.err
    assert "1 episode(s) built (1 damaged), 1 up to date" in r.out
    assert frames.verify(Dataset(cached_ds.root).episode(plan.train[0]), size) == "fresh"


def test_frames_command_builds_the_preset_sizes_and_refuses_bad_input(tiny_ds, cli, tmp_path):
    r = cli("frames", tiny_ds.root, "--preset", "tiny")
    assert r.code == 0, r.err
    assert "64 px: 2 episode(s) built, 0 up to date" in r.out and "73 px: 2 episode(s) built" in r.out
    for ep in tiny_ds.episodes():
        assert frames.cache_status(ep, 64) == frames.cache_status(ep, 73) == "fresh"
    assert "0 episode(s) built, 2 up to date" in cli("frames", tiny_ds.root, "--preset", "tiny").out
    assert "2 episode(s) built" in cli("frames", tiny_ds.root, "--size", "64", "--force").out
    for args, message in [(("--size", "4"), "--size must be at least 8 pixels"),
                          (("--preset", "huge"), "unknown model preset 'huge'")]:
        r = cli("frames", tiny_ds.root, *args)
        assert r.code == 2 and message in r.err and "Traceback" not in r.err
    r = cli("frames", "https://example.invalid/ds")
    assert r.code == 2 and "htouch frames" in r.err
    assert not list(tiny_ds.root.glob("derived/frames/*/.*tmp*"))  # nothing half-written left


def test_training_says_when_frames_are_decoded_for_every_sample(cached_ds):
    plan = plan_dataset(cached_ds, SPEC)
    norm = plan.action_normalization()
    assert PolicySamples(cached_ds, plan.train, SPEC, norm, augment=True, preload_mb=0).frame_cache_hint() is None
    plain = PolicySamples(_uncached(cached_ds), plan.train, SPEC, norm, augment=True, preload_mb=0)
    assert plain.frame_cache_hint() == ("frames are decoded from JPEG for every sample (1 episode(s) have no frame "
                                        "cache); `htouch frames DATASET --size 32 --size 37` makes training read "
                                        "them without decoding")
    assert PolicySamples(cached_ds, plan.train, SPEC, norm).frame_cache_hint() is None  # preloaded: decoded once


def test_a_cache_reader_pickles_without_its_memory_maps(_cached):
    """DataLoader workers started by spawn get the dataset pickled: the maps are reopened, not copied."""
    cache = frames.open_cache(Dataset(_cached).episode(0), SPEC.image_size)
    want = cache.read([0, 3])
    blob = pickle.dumps(cache)
    assert len(blob) < 10_000  # not the frames
    np.testing.assert_array_equal(pickle.loads(blob).read([0, 3]), want)
