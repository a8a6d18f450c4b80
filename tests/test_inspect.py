"""`htouch inspect`: the summary against the synthetic ground truth, name resolution, JSON and the plot."""

from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest
import zarr

from htouch.dataset.plot import audio_envelope, audio_spectrogram, strip_frame_indices
from htouch.dataset.schema import CameraSpec, StreamSpecs
from htouch.dataset.store import Dataset
from htouch.dataset.summary import episode_row, summarize
from htouch.dataset.synthetic import DC_OFFSETS, SyntheticEpisode, write_synthetic_episode

RIG = StreamSpecs(name="synthetic", camera=CameraSpec(width=64, height=48))  # the fixtures' tiny size
SECONDS = 4.0
DROPS = ((0.5, 3), (2.5, 1))
GAP = (1.0, 0.3)  # lost audio just before the first contact (seed 0 puts its onset near 1.33 s)


@pytest.fixture(scope="module")
def _gt_template(tmp_path_factory):
    root = tmp_path_factory.mktemp("inspect") / "ds"
    ds = Dataset.create(root, "zip", RIG)
    _, truth = write_synthetic_episode(ds, SyntheticEpisode(duration_s=SECONDS, seed=0, frame_drops=DROPS,
                                                            audio_gaps=(GAP,)))
    return root, truth


@pytest.fixture
def gt_ds(_gt_template, tmp_path):
    """A fresh copy of a one-episode dataset with known drops, an audio gap and contacts, plus its truth."""
    root, truth = _gt_template
    shutil.copytree(root, tmp_path / "ds")
    return Dataset(tmp_path / "ds"), truth


def test_summary_matches_ground_truth(gt_ds):
    ds, truth = gt_ds
    s = summarize(ds.episode(0))
    assert s.camera.dropped == len(truth.dropped_frame_numbers) == 4
    cam = s.stream("camera")
    assert cam.rate_hz == pytest.approx(30.0, rel=0.01)
    assert cam.nominal_hz == 30.0 and abs(cam.deviation_pct) < 1.0
    assert s.camera.largest_gap_s == pytest.approx(4 / 30, abs=0.003)  # three frames lost in a row
    # audio over the whole episode (to within one 10 ms block) minus the 0.3 s lost, flagged once
    assert s.audio.seconds == pytest.approx(s.duration_s - GAP[1], abs=0.011)
    assert s.audio.overflow_blocks == 1
    assert s.stream("audio").max_gap_s == pytest.approx(GAP[1], abs=0.011)
    assert s.audio.rate_hz == pytest.approx(32000, rel=1e-4)  # the gap is not counted as slow audio
    assert s.label == "success" and s.variation == "train"
    onsets = [e.t_s for e in s.events if e.kind == "contact"]
    assert onsets == pytest.approx([c[0] for c in truth.contacts], abs=0.002)
    assert [e.detail["count"] for e in s.events if e.kind == "frame_drop"] == [3, 1]


def test_channel_levels_follow_the_synthetic_mics(gt_ds):
    ds, _ = gt_ds
    chans = summarize(ds.episode(0)).audio.channels
    assert [c.name for c in chans] == ["mic0", "mic1", "mic2", "mic3"]
    assert [c.dc_offset for c in chans] == pytest.approx(list(DC_OFFSETS), abs=2.0)
    rms = [c.rms_dbfs for c in chans]
    assert rms == sorted(rms, reverse=True)  # the mics get quieter away from the fingertips
    assert all(c.clipped == 0 for c in chans)
    assert all(c.peak_dbfs < -3 for c in chans)


def test_injected_clipping_is_counted_on_its_channel(gt_ds):
    ds, _ = gt_ds
    pcm = zarr.open_array(str(ds.episode_path(0) / "audio" / "pcm"), mode="r+", zarr_format=2)
    pcm[5000:5040, 2] = 32767
    pcm[9000:9007, 2] = -32768
    chans = summarize(ds.episode(0)).audio.channels
    assert [c.clipped for c in chans] == [0, 0, 47, 0]
    assert chans[2].peak_dbfs == pytest.approx(0.0, abs=0.01)


def test_silent_channel_has_no_level(gt_ds):
    ds, _ = gt_ds
    pcm = zarr.open_array(str(ds.episode_path(0) / "audio" / "pcm"), mode="r+", zarr_format=2)
    pcm[:, 3] = 0
    s = summarize(ds.episode(0))
    assert s.audio.channels[3].rms_dbfs is None and s.audio.channels[3].peak_dbfs is None
    json.dumps(s.to_dict(), allow_nan=False)  # no -inf in the JSON


def test_episode_row_still_serves_ls(gt_ds):
    ds, _ = gt_ds
    row = episode_row(ds.episode(0))
    assert row.flags[:2] == ["4 drops", "1 overflows"]
    assert row.audio_s == pytest.approx(row.duration_s - GAP[1], abs=0.011)


# ---------------------------------------------------------------------------------------- plot data


def test_spectrogram_is_louder_in_contact_and_aligned_across_the_audio_gap(gt_ds):
    ds, truth = gt_ds
    ep = ds.episode(0)
    mel = audio_spectrogram(ep)
    assert mel.logmel.shape[0] == mel.params.n_mels == len(mel.mel_hz)
    energy = mel.logmel.mean(axis=0)
    t = mel.times_s
    (a, b, _), (tap, tap_end, _) = truth.contacts
    in_contact = (t > a + 0.05) & (t < b - 0.05)
    lost = (t > GAP[0] - 0.05) & (t < GAP[0] + GAP[1] + 0.05)
    free = ~lost & ~((t > a - 0.1) & (t < b + 0.1)) & ~((t > tap - 0.1) & (t < tap_end + 0.1))
    assert energy[in_contact].mean() > energy[free].mean() + 3.0  # natural log units: e^3 ~ 20x the power
    # the contact starts 30 ms after 0.3 s of lost audio: placed by time stamps, its onset stays in place
    mid = (np.median(energy[in_contact]) + np.median(energy[free])) / 2
    onset = t[np.argmax((energy > mid) & (t > 0.1))]
    assert onset == pytest.approx(a, abs=0.03)


def test_envelope_is_decimated_and_keeps_the_extremes(gt_ds):
    ds, _ = gt_ds
    ep = ds.episode(0)
    env = audio_envelope(ep, max_points=50)
    assert 0 < len(env.t0_s) <= 50
    spec = ep.streams.audio
    x = (ep.read("audio/pcm").astype(np.float64) - spec.center) / spec.scale
    np.testing.assert_allclose(env.hi.max(axis=0), x.max(axis=0))
    np.testing.assert_allclose(env.lo.min(axis=0), x.min(axis=0))
    assert np.all(np.diff(env.t0_s) > 0) and np.all(env.t1_s > env.t0_s)


def test_strip_frames_spread_over_the_episode():
    times = np.arange(120) * (10**9 // 30)
    idx = strip_frame_indices(times, 0, 4.0, n=8)
    assert len(idx) == 8 and np.all(np.diff(idx) > 10)
    assert idx[0] == pytest.approx(120 / 16, abs=1) and idx[-1] == pytest.approx(120 * 15 / 16, abs=1)
    assert len(strip_frame_indices(times[:3], 0, 0.1, n=8)) == 3
    assert len(strip_frame_indices(times[:0], 0, 0.1, n=8)) == 0


# ---------------------------------------------------------------------------------------- CLI


@pytest.mark.parametrize("where", ["inside", "parent"])
def test_inspect_resolves_the_episode_by_name(cli, tiny_ds, monkeypatch, where):
    monkeypatch.chdir(tiny_ds.root if where == "inside" else tiny_ds.root.parent)
    r = cli("inspect", "episode_1")
    assert r.code == 0, r.err
    assert "episode_000001" in r.out and "streams" in r.out and "mic3" in r.out


def test_inspect_by_path_and_dataset_option(cli, tiny_ds, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path.parent)
    r = cli("inspect", tiny_ds.episode_path(0))
    assert r.code == 0, r.err
    assert "episode_000000" in r.out
    r = cli("inspect", "1", "--dataset", tiny_ds.root, "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["index"] == 1


@pytest.mark.parametrize("args", [["episode_99"], ["not/an/episode"], ["0", "--dataset", "nowhere"]])
def test_bad_episode_is_one_line_exit_2(cli, tiny_ds, monkeypatch, args):
    monkeypatch.chdir(tiny_ds.root)
    r = cli("inspect", *args)
    assert r.code == 2
    assert r.err.strip().count("\n") == 0 and "error" in r.err and "Traceback" not in r.err


def test_inspect_json_and_plot(cli, tiny_ds, tmp_path):
    out = tmp_path / "ep.png"
    r = cli("inspect", tiny_ds.episode_path(0), "--json", "--plot", out)
    assert r.code == 0, r.err
    data = json.loads(r.out)  # the "wrote plot" note goes to stderr, not into the JSON
    assert data["episode"] == "episode_000000" and data["camera"]["frames"] > 100
    assert {s["stream"] for s in data["streams"]} == {"camera", "audio", "state", "action", "teleop"}
    assert "ep.png" in r.err
    png = out.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk
    assert width >= 1200 and height >= 800 and len(png) > 50_000
    assert not list(tmp_path.glob(".ep.tmp*"))


@pytest.mark.parametrize("target", ["missing_dir/ep.png", "ep.notaformat"])
def test_plot_to_a_bad_path_is_one_line_exit_2(cli, tiny_ds, tmp_path, target):
    r = cli("inspect", tiny_ds.episode_path(0), "--plot", tmp_path / target)
    assert r.code == 2
    assert r.err.strip().count("\n") == 0 and "cannot write a plot" in r.err
