"""Time-aligned samples are chosen by time stamps, and the synthetic generator is deterministic."""

import hashlib

import numpy as np

from htouch.dataset.episode import SampleParams
from htouch.dataset.schema import NS
from htouch.dataset.store import Dataset
from htouch.dataset.synthetic import SyntheticEpisode, write_synthetic_episode
from tests.conftest import TINY_RIG


def test_frames_are_the_latest_at_or_before_each_window_time(tiny_ds):
    ep = tiny_ds.episode(0)
    params = SampleParams(n_frames=4, frame_window_s=2.0, horizon=5)
    times = ep.sample_times(params)
    t = int(times[times >= times[0] + 2.5 * NS][0])  # a full window behind, no padding
    s = ep.sample(t, params)
    targets = t - np.array([2.0, 4 / 3, 2 / 3, 0.0]) * NS
    cam = ep.camera_times
    for chosen, target in zip(s.frame_times_ns, targets, strict=True):
        assert chosen <= target + 1
        later = cam[cam > chosen]
        assert len(later) == 0 or later[0] > target  # no newer frame existed at the target time
    assert s.frames.shape == (4, 48, 64, 3)
    np.testing.assert_array_equal(s.frames[-1], ep.array("camera/rgb")[int(np.searchsorted(cam, t, "right") - 1)])


def test_actions_are_the_next_h_and_state_the_latest(tiny_ds):
    ep = tiny_ds.episode(0)
    params = SampleParams(horizon=6)
    t = int(ep.sample_times(params)[5])
    s = ep.sample(t, params)
    a0 = int(np.searchsorted(ep.action_times, t, "left"))
    np.testing.assert_allclose(s.actions[:, :6], ep.read("action/delta_ee")[a0:a0 + 6], rtol=1e-6)
    assert s.action_mask.all()
    si = int(np.searchsorted(ep.state_times, t, "right") - 1)
    np.testing.assert_allclose(s.state[:7], ep.read("state/ee_pose")[si], rtol=1e-6)
    # past the end: masked, zero-padded
    late = ep.sample(int(ep.action_times[-2]), params)
    assert late.action_mask.tolist() == [True, True, False, False, False, False]
    assert not late.actions[2:].any()


def test_audio_clip_hears_the_contact_at_its_recorded_time(tmp_path):
    ds = Dataset.create(tmp_path / "d", "zip", TINY_RIG)
    _, truth = write_synthetic_episode(ds, SyntheticEpisode(duration_s=5.0, contacts=((3.0, 3.5, 1.0),),
                                                            frame_drops=()))
    ep = ds.episode(0)
    t_start = ep.time_range_ns()[0]
    energy = lambda a: float(np.mean(a ** 2))
    before = ep.audio_clip(t_start + int(2.95 * NS))  # window [0.95, 2.95]: free motion only
    after = ep.audio_clip(t_start + int(3.2 * NS))  # the last 0.2 s are in contact
    assert before.shape == after.shape == (32000,)
    assert energy(after[-3200:]) > 50 * energy(before[-3200:])
    # the onset lands where it was recorded: silence-level energy just before 3.0 s inside the clip
    onset = 32000 - int(0.2 * 16000)
    assert energy(after[onset - 800:onset - 80]) < 0.02 * energy(after[onset + 80:onset + 800])


def test_audio_gap_stays_silent_not_shifted(tmp_path):
    ds = Dataset.create(tmp_path / "d", "zip", TINY_RIG)
    write_synthetic_episode(ds, SyntheticEpisode(duration_s=5.0, contacts=((1.0, 4.5, 1.0),), frame_drops=(),
                                                 audio_gaps=((3.0, 0.3),)))
    ep = ds.episode(0)
    t0 = ep.time_range_ns()[0]
    clip = ep.audio_clip(t0 + int(4.0 * NS))  # covers [2.0, 4.0]; the gap is [3.0, 3.3]
    gap = clip[int(1.05 * 16000):int(1.25 * 16000)]
    loud = clip[int(0.2 * 16000):int(0.9 * 16000)]
    assert np.abs(gap).max() < 1e-3 < np.abs(loud).max()


def _tree_digest(path):
    """Every file but those holding the creation time: .zattrs, and the manifest (it hashes .zattrs)."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and p.name not in (".zattrs", "manifest.json")):
        h.update(f.relative_to(path).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def test_same_seed_same_episode(tmp_path):
    digests = []
    for name in ("a", "b"):
        ds = Dataset.create(tmp_path / name, "zip", TINY_RIG)
        write_synthetic_episode(ds, SyntheticEpisode(duration_s=3.0, seed=7))
        digests.append(_tree_digest(ds.episode_path(0)))
    assert digests[0] == digests[1]
    ds = Dataset.create(tmp_path / "c", "zip", TINY_RIG)
    write_synthetic_episode(ds, SyntheticEpisode(duration_s=3.0, seed=8))
    assert _tree_digest(ds.episode_path(0)) != digests[0]


def test_a_checked_episode_reads_what_the_store_holds(tiny_ds):
    """The structural checks hand the arrays they decoded to the episode (Episode.adopt): a read gets them once,
    as the store holds them, and later reads go to the store again (changing one read changes no other)."""
    checked = tiny_ds.episode(0)
    plain = Dataset(tiny_ds.root).episode(0, check=False)  # nothing adopted: every read decodes from the store
    for path in ("camera/timestamp_ns", "audio/block_offset", "state/ee_pose", "action/delta_ee"):
        first = checked.read(path)
        np.testing.assert_array_equal(first, plain.read(path))
        first[0] = -1
        np.testing.assert_array_equal(checked.read(path), plain.read(path))
    assert checked.duration_s == plain.duration_s and checked.events() == plain.events()
    np.testing.assert_array_equal(checked.sample(checked.camera_times[30]).state,
                                  plain.sample(plain.camera_times[30]).state)
