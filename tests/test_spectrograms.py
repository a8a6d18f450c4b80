"""Spectrogram caches beside the episodes: same numbers as on the fly, stale caches never read."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import zarr

from htouch.dataset import audio, spectrograms
from htouch.dataset.audio import DEFAULT_CLIP, LogMelParams
from htouch.dataset.spectrograms import EpisodeSpectrograms, cache_path, cache_status, spectrogram_at
from htouch.dataset.store import Dataset
from htouch.errors import DatasetError
from tests.conftest import TINY_RIG, tiny_dataset

KINDS = ("logmel", "avid")


def _snapshot(root):
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def _cached(tmp_path_factory):
    """Two 2.5 s episodes with both caches built."""
    root = tmp_path_factory.mktemp("spectrograms") / "ds"
    ds = tiny_dataset(root, n=2, seconds=2.5)
    before = {ep.name: _snapshot(ep.path) for ep in ds.episodes()}
    for kind in KINDS:
        params = audio.spectrogram_params(kind)
        for job in spectrograms.plan(ds, params):
            spectrograms.build(job.episode, params)
    return root, before


@pytest.fixture
def cached_ds(_cached, tmp_path) -> Dataset:
    shutil.copytree(_cached[0], tmp_path / "ds")
    return Dataset(tmp_path / "ds")


def test_shapes_for_a_2s_window(_cached):
    ds = Dataset(_cached[0])
    assert spectrograms.spectrogram_shape(audio.spectrogram_params("logmel")) == (64, 201)
    assert spectrograms.spectrogram_shape(audio.spectrogram_params("avid")) == (1, 200, 257)
    ep = ds.episode(0)
    assert EpisodeSpectrograms(ep, "logmel").all().shape == (len(ep.camera_times), 64, 201)
    assert EpisodeSpectrograms(ep, "avid").all().shape == (len(ep.camera_times), 1, 200, 257)


@pytest.mark.parametrize("kind", KINDS)
def test_cache_equals_on_the_fly(_cached, tmp_path, kind):
    """Exact equality (assert_array_equal): the cache stores float32 values of the same computation."""
    ds = Dataset(_cached[0])
    params = audio.spectrogram_params(kind)
    ep = ds.episode(1)
    cached = EpisodeSpectrograms(ep, kind)
    assert cached.provenance == "cache"
    n = len(ep.camera_times)
    frames = [0, 1, n // 2, n - 1]
    # Independently of the cache code: the documented definition, clip by clip, without preloaded audio.
    fresh = Dataset(_cached[0]).episode(1)
    direct = np.stack([audio.spectrogram(fresh.audio_clip(int(fresh.camera_times[i]), DEFAULT_CLIP),
                                         DEFAULT_CLIP.rate_hz, params) for i in frames])
    np.testing.assert_array_equal(cached.frames(frames), direct)
    np.testing.assert_array_equal(spectrogram_at(ep, n // 2, kind), direct[2])
    # The same dataset without its cache computes on the fly.
    shutil.copytree(_cached[0], tmp_path / "nocache", ignore=shutil.ignore_patterns("derived"))
    bare = Dataset(tmp_path / "nocache").episode(1)
    otf = EpisodeSpectrograms(bare, kind)
    assert otf.provenance == "computed"
    np.testing.assert_array_equal(otf.frames(frames), direct)
    np.testing.assert_array_equal(otf[-1], direct[-1])
    if kind == "logmel":  # a whole episode both ways (avid is the same code, and 4x larger)
        np.testing.assert_array_equal(otf.all(), cached.all())


def test_cache_beside_episodes_which_are_untouched(_cached):
    root, before = _cached
    ds = Dataset(root)
    for ep in ds.episodes():
        assert _snapshot(ep.path) == before[ep.name]
        for kind in KINDS:
            path = cache_path(ep, audio.spectrogram_params(kind))
            assert path.parent.parent == root / "derived" / "spectrograms"
            assert path.parent.name == audio.params_key(DEFAULT_CLIP, audio.spectrogram_params(kind))
            attrs = json.loads((path / ".zattrs").read_text())[spectrograms.ATTR]
            assert attrs["params"]["kind"] == kind and attrs["clip"]["window_s"] == 2.0 and attrs["fingerprint"]


def test_rerun_skips_up_to_date(cached_ds, cli):
    before = _snapshot(cached_ds.root / "derived")
    r = cli("spectrogram", cached_ds.root, "--kind", "logmel")
    assert r.code == 0, r.err
    assert "0 episode(s) computed, 2 up to date" in r.out
    assert _snapshot(cached_ds.root / "derived") == before


def test_changed_params_use_a_new_key_not_the_old_cache(cached_ds):
    ep = cached_ds.episode(0)
    other = LogMelParams(n_mels=32)
    assert audio.params_key(DEFAULT_CLIP, other) != audio.params_key(DEFAULT_CLIP, LogMelParams())
    assert cache_status(ep, other) == "missing"
    spec = EpisodeSpectrograms(ep, other)
    assert spec.provenance == "computed"
    assert spec[3].shape == (32, 201)


def test_cache_of_another_episode_is_stale_and_rebuilt(cached_ds, tmp_path, cli):
    # Same episode names and parameters, but different recordings (other frame drops): a copied cache.
    other = tiny_dataset(tmp_path / "other", n=1, seconds=2.5, frame_drops=((1.0, 3),))
    shutil.copytree(cached_ds.root / "derived", other.root / "derived")
    ep = other.episode(0)
    params = audio.spectrogram_params("logmel")
    assert cache_status(ep, params) == "stale: fingerprint differ"
    spec = EpisodeSpectrograms(ep, "logmel")
    assert spec.provenance == "computed"
    assert len(spec.all()) == len(ep.camera_times)
    r = cli("spectrogram", other.root, "--kind", "logmel")
    assert r.code == 0, r.err
    assert "1 episode(s) computed (1 stale)" in r.out
    assert cache_status(other.episode(0), params) == "fresh"
    np.testing.assert_array_equal(EpisodeSpectrograms(other.episode(0), "logmel").all(), spec.all())


def test_tampered_attributes_make_a_cache_stale(cached_ds):
    ep = cached_ds.episode(0)
    params = audio.spectrogram_params("logmel")
    zattrs = cache_path(ep, params) / ".zattrs"
    attrs = json.loads(zattrs.read_text())
    attrs[spectrograms.ATTR]["params"]["n_mels"] = 32
    zattrs.write_text(json.dumps(attrs))
    assert cache_status(ep, params) == "stale: params differ"
    assert EpisodeSpectrograms(ep, params).provenance == "computed"
    zattrs.write_text("{not json")
    assert cache_status(ep, params).startswith("stale: unreadable")


def test_force_rebuilds(cached_ds, cli):
    r = cli("spectrogram", cached_ds.root, "--kind", "logmel", "--force")
    assert r.code == 0 and "2 episode(s) computed, 0 up to date" in r.out


def test_frame_out_of_range(cached_ds):
    ep = cached_ds.episode(0)
    with pytest.raises(DatasetError, match="out of range"):
        spectrogram_at(ep, len(ep.camera_times), "logmel")


def test_cli_errors_are_one_line_exit_2(tmp_path, cached_ds, cli):
    r = cli("spectrogram", cached_ds.root, "--kind", "mfcc")
    assert r.code == 2 and r.err.strip().count("\n") == 0 and "unknown spectrogram kind 'mfcc'" in r.err
    empty = Dataset.create(tmp_path / "empty", "zip", TINY_RIG)
    r = cli("spectrogram", empty.root)
    assert r.code == 2 and r.err.strip().count("\n") == 0 and "no episodes" in r.err
    r = cli("spectrogram", tmp_path / "missing")
    assert r.code == 2 and "not found" in r.err


def test_a_damaged_row_is_refused_with_one_line_and_the_older_layout_is_stale(cached_ds, cli):
    ep = cached_ds.episode(0)
    params = audio.spectrogram_params("logmel")
    path = cache_path(ep, params)
    chunk = path / "data" / "0.0.0"
    data = bytearray(chunk.read_bytes())
    row = 64 * 201 * 4
    data[row * 3 + 17] ^= 0x40  # one byte of row 3: still a float, a wrong one
    chunk.write_bytes(bytes(data))
    spec = EpisodeSpectrograms(ep, "logmel")
    assert spec.provenance == "cache"
    np.testing.assert_array_equal(spec.frames([0, 1]), spectrograms.compute(ep, params, frames=[0, 1]))
    with pytest.raises(DatasetError, match=r"^episode_000000: its logmel spectrogram cache is damaged \(row 3 does "
                                           r"not match its checksum\); rebuild it with `htouch spectrogram --kind "
                                           r"logmel --force`$"):
        spec.frames([2, 3])
    assert "2 episode(s) computed" in cli("spectrogram", cached_ds.root, "--kind", "logmel", "--force").out
    assert EpisodeSpectrograms(cached_ds.episode(0), "logmel").frames([3]).shape == (1, 64, 201)
    # the layout before the uncompressed one: one Blosc-compressed array at the same path
    shutil.rmtree(path)
    old = zarr.create_array(str(path), shape=(len(ep.camera_times), 64, 201), chunks=(5, 64, 201), dtype="float32",
                            zarr_format=2)
    old.attrs[spectrograms.ATTR] = json.loads(json.dumps(spectrograms._expected_attrs(ep, params, DEFAULT_CLIP)))
    assert cache_status(ep, params).startswith("stale: unreadable")
    assert EpisodeSpectrograms(ep, "logmel").provenance == "computed"
    assert "1 episode(s) computed (1 stale)" in cli("spectrogram", cached_ds.root, "--kind", "logmel").out
