"""`htouch validate`: each check fires on the fault it is for, and stays quiet on clean synthetic data."""

import json
import re

import numpy as np
import pytest
import zarr

import htouch.dataset.codecs  # noqa: F401 - image codecs, for opening frames with zarr directly
from htouch.dataset.schema import ATTR_FORMAT
from htouch.dataset.store import Dataset
from htouch.dataset.synthetic import SyntheticEpisode, write_synthetic_episode
from htouch.dataset.validate import (
    CHECKS,
    DEFAULT_LIMITS,
    ERROR,
    WARNING,
    ValidationLimits,
    validate_dataset,
    validate_episode,
)
from tests.conftest import TINY_RIG

NS = 1_000_000_000


def findings(ds, name="episode_000000", **limits):
    lim = ValidationLimits(**limits) if limits else DEFAULT_LIMITS
    return validate_episode(ds.root / name, ds.streams, lim)


def by_check(fs, check):
    return [f for f in fs if f.check == check]


def write_array(ds, path, fn, name="episode_000000"):
    """Rewrite one array of a committed episode in place: data = fn(data)."""
    arr = zarr.open_group(str(ds.root / name), mode="r+", zarr_format=2)[path]
    arr[...] = fn(arr[...])


def synth_episode(tmp_path, **cfg):
    ds = Dataset.create(tmp_path / "one", "zip", TINY_RIG)
    write_synthetic_episode(ds, SyntheticEpisode(duration_s=cfg.pop("duration_s", 4.0), **cfg))
    return ds


# ----------------------------------------------------------------------------------------- clean data


def test_clean_synthetic_episode_has_only_its_planted_frame_drop(tiny_ds):
    report = validate_dataset(tiny_ds)
    assert report.episodes == ["episode_000000", "episode_000001"]
    assert report.errors == 0
    assert {f.check for f in report.findings} == {"camera.gap"}
    gap = report.findings[0]
    assert gap.severity == WARNING and gap.path == "camera/timestamp_ns"
    assert gap.time_s == pytest.approx(1.97, abs=0.05)  # the generator drops frame 60 (t = 2.0 s)
    assert "1 frame(s) lost" in gap.message
    assert all(f.check in CHECKS for f in report.findings)


def test_synth_output_validates_with_exit_0(cli, tmp_path):
    """The README demo: `htouch synth` then `htouch validate` must pass (drops and 20 ppm drift are fine)."""
    assert cli("synth", tmp_path / "demo", "-n", "2", "--seconds", "6", "--width", "32", "--height", "24").code == 0
    r = cli("validate", tmp_path / "demo")
    assert r.code == 0, r.out
    assert "0 error(s)" in r.out and "camera.gap" in r.out


def test_json_lists_findings_with_stable_keys(cli, tiny_ds):
    r = cli("validate", tiny_ds.root, "--json")
    assert r.code == 0
    data = json.loads(r.out)
    assert isinstance(data, list) and data
    for item in data:
        assert set(item) == {"check", "severity", "episode", "path", "time_s", "message"}
        assert item["severity"] in (ERROR, WARNING)


def test_strict_fails_on_warnings(cli, tiny_ds):
    assert cli("validate", tiny_ds.root).code == 0
    assert cli("validate", tiny_ds.root, "--strict").code == 1


def test_target_forms(cli, tiny_ds, monkeypatch):
    r = cli("validate", "1", "--dataset", tiny_ds.root, "--json")
    assert r.code == 0 and {f["episode"] for f in json.loads(r.out)} == {"episode_000001"}
    r = cli("validate", tiny_ds.root / "episode_000000", "--json")
    assert r.code == 0 and {f["episode"] for f in json.loads(r.out)} == {"episode_000000"}
    monkeypatch.chdir(tiny_ds.root)
    r = cli("validate", "episode_0", "--json")
    assert {f["episode"] for f in json.loads(r.out)} == {"episode_000000"}
    r = cli("validate")  # the dataset in the current directory
    assert r.code == 0 and "2 episode(s) checked" in r.out


# ----------------------------------------------------------------------------------------- audio


def test_audio_drift_is_measured(tmp_path):
    ds = synth_episode(tmp_path, audio_drift_ppm=2000.0)
    (drift,) = by_check(findings(ds), "audio.drift")
    ppm = float(re.search(r"([+-]\d+) ppm", drift.message).group(1))
    assert ppm == pytest.approx(2000, abs=20)
    assert not by_check(findings(ds, audio_drift_ppm=2100), "audio.drift")


def test_audio_gap_is_located_and_drift_ignores_it(tmp_path):
    ds = synth_episode(tmp_path, audio_gaps=((1.5, 0.25),))
    fs = findings(ds)
    (gap,) = by_check(fs, "audio.gap")
    assert gap.severity == WARNING
    assert gap.time_s == pytest.approx(1.5, abs=0.02)
    ms = float(re.search(r"([\d.]+) ms of audio missing", gap.message).group(1))
    assert ms == pytest.approx(250, abs=11)
    assert by_check(fs, "audio.overflow")  # the generator flags the block after the gap
    assert not by_check(fs, "audio.drift")  # the gap restarts the fit instead of faking drift


def test_dead_clipped_and_offset_channels(tiny_ds):
    def spoil(pcm):
        pcm[:, 1] = 7  # stuck
        pcm[:5000, 0] = 32767  # clipping, ~4 % of the samples
        pcm[:, 3] = np.clip(pcm[:, 3].astype(np.int32) + 20000, -32768, 32767)  # DC far from the centre 0
        return pcm

    write_array(tiny_ds, "audio/pcm", spoil)
    fs = findings(tiny_ds)
    (dead,) = by_check(fs, "audio.dead")
    assert dead.severity == ERROR and "mic1" in dead.message and "constant" in dead.message
    (clipped,) = by_check(fs, "audio.clipped")
    assert clipped.severity == WARNING and "mic0" in clipped.message
    (dc,) = by_check(fs, "audio.dc")
    assert dc.severity == WARNING and "mic3" in dc.message
    assert not by_check(findings(tiny_ds, "episode_000001"), "audio.dead")


# ----------------------------------------------------------------------------------------- camera, time


def test_frozen_camera(tiny_ds):
    def freeze(rgb):
        rgb[30:60] = rgb[30]  # one second of the same frame
        return rgb

    write_array(tiny_ds, "camera/rgb", freeze)
    (frozen,) = by_check(findings(tiny_ds), "camera.frozen")
    assert frozen.severity == WARNING and "30 identical frames" in frozen.message
    assert frozen.time_s == pytest.approx(1.0, abs=0.05)
    # the same stretch is fine under a longer limit; a frozen check that cannot fail is no check
    assert not by_check(findings(tiny_ds, frozen_camera_s=2.0), "camera.frozen")


def test_many_frame_gaps_are_summed_up(tmp_path):
    drops = tuple((0.3 * k + 0.2, 1) for k in range(9))
    ds = synth_episode(tmp_path, frame_drops=drops)
    gaps = by_check(findings(ds), "camera.gap")
    assert len(gaps) == DEFAULT_LIMITS.max_reports + 1
    assert "4 more frame gaps (9 in all, 9 frame(s) lost in all)" in gaps[-1].message


def test_rate_off_nominal(tiny_ds):
    write_array(tiny_ds, "state/timestamp_ns", lambda t: t[0] + (t - t[0]) * 100 // 90)  # 90 Hz, not 100
    (rate,) = by_check(findings(tiny_ds), "rate.off")
    assert rate.path == "state" and "90.00 Hz" in rate.message


def test_streams_must_overlap(tiny_ds):
    write_array(tiny_ds, "action/timestamp_ns", lambda t: t + 100 * NS)
    (f,) = by_check(findings(tiny_ds), "time.overlap")
    assert f.severity == ERROR and "action" in f.message


def test_arrays_of_one_axis_must_agree_in_length(tiny_ds):
    arr = zarr.open_group(str(tiny_ds.root / "episode_000000"), mode="r+", zarr_format=2)["state/joints"]
    arr.resize((arr.shape[0] - 3, arr.shape[1]))
    (f,) = by_check(findings(tiny_ds), "array.length")
    assert f.severity == ERROR and f.path == "state" and "joints" in f.message


# ----------------------------------------------------------------------------------------- actions, events, labels


def test_action_jump_reported_with_time(tiny_ds):
    def spike(d):
        d[70, 0] = 0.08  # 8 cm in one control step
        return d

    write_array(tiny_ds, "action/delta_ee", spike)
    (f,) = by_check(findings(tiny_ds), "action.jump")
    assert f.severity == WARNING and "row 70" in f.message and "1 step(s)" in f.message
    assert f.time_s == pytest.approx(70 / 30 + 0.004, abs=0.002)  # the generator's action times
    assert not by_check(findings(tiny_ds, "episode_000001"), "action.jump")


def test_unknown_event_kinds_and_missing_label(tmp_path):
    ds = synth_episode(tmp_path, success=None)
    write_array(ds, "events/kind", lambda k: np.where(k == "start", "teleport", k))
    fs = findings(ds)
    (ev,) = by_check(fs, "events.unknown")
    assert ev.severity == WARNING and "teleport" in ev.message and ev.time_s == 0.0
    assert by_check(fs, "label.missing")[0].severity == WARNING


def test_rig_different_from_dataset(tiny_ds):
    g = zarr.open_group(str(tiny_ds.root / "episode_000000"), mode="r+", zarr_format=2)
    attrs = g.attrs[ATTR_FORMAT]
    attrs["rig"]["description"] = "another rig"
    g.attrs[ATTR_FORMAT] = attrs
    (f,) = by_check(findings(tiny_ds), "episode.rig")
    assert f.severity == WARNING and "description" in f.message


def test_too_short_for_a_training_sample(tmp_path):
    ds = synth_episode(tmp_path, duration_s=0.2, frame_drops=())
    (f,) = by_check(findings(ds), "episode.short")
    assert f.severity == ERROR and "needs 8 actions" in f.message
    assert not by_check(findings(synth_episode(tmp_path / "b", duration_s=1.5, frame_drops=())), "episode.short")


def test_incomplete_and_live_episodes_in_incoming(tiny_ds):
    aborted = tiny_ds.new_episode(flush_interval_s=0.01)
    aborted.abort()
    live = tiny_ds.new_episode()
    try:
        report = validate_dataset(tiny_ds)
        (f,) = by_check(report.findings, "dataset.incomplete")
        assert f.episode == aborted.name and "htouch validate --repair" in f.message
        assert report.live == [live.name]
    finally:
        live.discard()


def test_measured_rate_averages_alternating_periods_and_skips_gaps():
    """A 30 Hz stream stamped on a 2 ms physics grid (32/34/34 ms) or sampled from a 72 Hz device
    (2 or 3 device periods) measures 30 Hz; a stall is left to the gap checks, not averaged in."""
    from htouch.dataset.summary import measured_rate_hz

    grid = np.cumsum([0] + [32_000_000, 34_000_000, 34_000_000] * 50)
    assert abs(measured_rate_hz(grid) - 30.0) < 1e-6
    device = np.round(np.arange(0, 10, 1 / 30) * 72) / 72  # 30 Hz ticks taking the newest 72 Hz reading
    assert abs(measured_rate_hz((device * 1e9).astype(np.int64)) - 30.0) < 0.05
    stalled = np.cumsum([0] + [33_333_333] * 60 + [500_000_000] + [33_333_333] * 60)
    assert abs(measured_rate_hz(stalled) - 30.0) < 1e-3


def test_frozen_camera_is_found_across_decoding_batches(tiny_ds):
    """Identical consecutive frames over frozen_camera_s are one warning, also when the run spans several
    decoding batches (frames are compared byte by byte); a moving camera's frames give none."""
    assert not by_check(findings(tiny_ds, frame_batch=8), "camera.frozen")
    write_array(tiny_ds, "camera/rgb", lambda x: np.concatenate([x[:10], np.repeat(x[10:11], 30, axis=0), x[40:]]))
    for batch in (8, 32, 1000):
        found = by_check(findings(tiny_ds, frame_batch=batch), "camera.frozen")
        assert len(found) == 1 and found[0].message.startswith("30 identical frames over 0.97 s"), (batch, found)
