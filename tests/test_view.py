"""htouch view: the .rrd read back with rerun's own reader (rerun.chunk.RrdReader), loopback serving, bad input."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path

import numpy as np
from rerun.chunk import RrdReader

from htouch.dataset.plot import audio_spectrogram
from htouch.dataset.schema import AudioSpec, CameraSpec, StreamSpecs
from htouch.dataset.store import Dataset
from htouch.interop import rerun_view


def _read(path: Path) -> tuple[Counter, dict[str, set[str]], dict[str, list[np.ndarray]]]:
    """Rows, timelines and `time` values (ns) of every non-static entity in the recording."""
    rows: Counter = Counter()
    timelines: dict[str, set[str]] = {}
    times: dict[str, list[np.ndarray]] = {}
    for chunk in RrdReader(path).stream():
        if chunk.is_static:
            continue
        entity = chunk.entity_path.lstrip("/")
        rows[entity] += chunk.num_rows
        timelines.setdefault(entity, set()).update(chunk.timeline_names)
        batch = chunk.to_record_batch()
        t = batch.column(batch.schema.names.index("time")).cast("int64").to_numpy()
        times.setdefault(entity, []).append(t)
    return rows, timelines, times


def _waveform_points(ep) -> int:
    """Points per channel, from the block sizes: every sample up to WAVEFORM_MAX_HZ, else min and max per run."""
    step = rerun_view.waveform_step(ep.streams.audio.rate_hz)
    sizes = np.diff(np.append(ep.audio_block_offsets, ep.audio_samples))
    return int(sizes.sum()) if step == 1 else int(2 * np.sum(-(-sizes // step)))


def test_every_stream_in_the_rrd(cli, tiny_ds, tmp_path):
    out = tmp_path / "ep.rrd"
    r = cli("view", "1", "--dataset", tiny_ds.root, "--save", out)
    assert r.code == 0, r.err
    assert out.is_file() and not list(tmp_path.glob(".ep.rrd.partial-*"))
    rows, timelines, times = _read(out)
    ep = tiny_ds.episode(1)
    start = ep.time_range_ns()[0]
    n_tel = len(ep.read("teleop/timestamp_ns"))
    mics = list(ep.streams.audio.channel_names)
    want = {"camera/rgb": len(ep.camera_times), "events": len(ep.events()),
            **{f"state/{k}": len(ep.state_times) for k in ("ee_position", "ee_orientation", "joints",
                                                           "gripper_width")},
            **{f"action/{k}": len(ep.action_times) for k in ("delta_position", "delta_rotation", "gripper")},
            **{f"teleop/{k}": n_tel for k in ("buttons", "analog", "controller_position")},
            **{f"audio/waveform/{m}": _waveform_points(ep) for m in mics},
            "audio/spectrogram": audio_spectrogram(ep).logmel.shape[1]}
    assert dict(rows) == want
    assert want["events"] >= 3 and n_tel > 0 and want["audio/spectrogram"] > 100
    # each stream on the `time` timeline from its own time stamps, and on a sequence timeline of its rows
    assert timelines["camera/rgb"] == {"time", "frame"} and timelines["state/joints"] == {"time", "state_row"}
    assert timelines["audio/waveform/mic0"] == {"time", "audio_sample"}
    assert timelines["events"] == {"time", "event"} and timelines["teleop/buttons"] == {"time", "teleop_row"}
    assert np.array_equal(np.sort(np.concatenate(times["camera/rgb"])), ep.camera_times - start)
    assert np.array_equal(np.sort(np.concatenate(times["action/gripper"])), ep.action_times - start)
    assert np.array_equal(np.sort(np.concatenate(times["events"])), [e["t_ns"] - start for e in ep.events()])
    first_block = np.concatenate(times["audio/waveform/mic1"]).min()
    assert first_block == ep.audio_block_times[0] - start
    assert rerun_view.expected_rows(ep) == want  # what the module says it logs is what rerun reads back


def test_waveform_follows_the_blocks(tiny_ds):
    ep = tiny_ds.episode(0)
    t, first, values = rerun_view.waveform(ep, max_hz=ep.streams.audio.rate_hz)  # every sample
    pcm = ep.read("audio/pcm")
    spec = ep.streams.audio
    assert np.array_equal(values, (pcm.astype(np.float32) - spec.center) / np.float32(spec.scale))
    b = 5
    lo = ep.audio_block_offsets[b]
    assert t[lo] == ep.audio_block_times[b] and np.array_equal(first[:10], np.arange(10))
    t2, _, env = rerun_view.waveform(ep)  # runs of `step` samples: min then max, inside one block
    step = rerun_view.waveform_step(spec.rate_hz)
    norm = values[lo:lo + step]
    k = int(np.searchsorted(t2, ep.audio_block_times[b]))
    assert np.array_equal(env[k], norm.min(axis=0)) and np.array_equal(env[k + 1], norm.max(axis=0))


def test_episode_without_microphones(cli, tmp_path):
    streams = StreamSpecs(camera=CameraSpec(width=32, height=24), audio=AudioSpec(channels=0, channel_names=[]))
    ds = Dataset.create(tmp_path / "ds", "zip", streams)
    with ds.new_episode(blocking=True) as w:
        for k in range(20):
            t = 1_000_000_000 + k * 33_333_333
            w.camera(t, k, np.full((24, 32, 3), k * 10, np.uint8))
            w.state(t, (0, 0, 0, 0, 0, 0, 1), np.zeros(7), 0.01)
            w.action(t, np.zeros(6), 0.5)
        w.event(1_000_000_000, "start")
        w.commit(success=True)
    assert not (ds.episode_path(0) / "audio").exists()
    r = cli("view", "0", "--dataset", ds.root, "--save", tmp_path / "n.rrd")
    assert r.code == 0, r.err
    rows, _, _ = _read(tmp_path / "n.rrd")
    assert not any(k.startswith("audio") for k in rows) and not any(k.startswith("teleop") for k in rows)
    assert rows["camera/rgb"] == 20 and rows["state/joints"] == 20 and rows["events"] == 1


def test_serving_binds_loopback_only(tiny_ds):
    ep = tiny_ds.episode(0)
    rec, uri, rows = rerun_view.serve(ep, 0)
    try:
        port = int(re.fullmatch(r"rerun\+http://127\.0\.0\.1:(\d+)/proxy", uri).group(1))
        deadline = time.monotonic() + 5
        listening: list[str] = []
        while not listening and time.monotonic() < deadline:
            for table in ("/proc/net/tcp", "/proc/net/tcp6"):
                for line in Path(table).read_text().splitlines()[1:]:
                    local, state = line.split()[1], line.split()[3]
                    if int(local.rsplit(":", 1)[1], 16) == port and state == "0A":  # LISTEN
                        listening.append(local.rsplit(":", 1)[0])
            time.sleep(0.05)
        assert listening == ["0100007F"], listening  # 127.0.0.1, and nothing on another address
        assert rows["camera/rgb"] == len(ep.camera_times)
    finally:
        rec.disconnect()


# ------------------------------------------------------------------------------------------------ bad input


def _one_line(r) -> bool:
    return r.code == 2 and len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err


def test_episode_not_found(cli, tiny_ds, tmp_path):
    r = cli("view", "7", "--dataset", tiny_ds.root, "--save", tmp_path / "x.rrd")
    assert _one_line(r) and "episode 7 not found" in r.err
    assert not list(tmp_path.glob("*.rrd")) and not list(tmp_path.glob(".x.rrd*"))


def test_damaged_episode_is_refused(cli, tiny_ds, tmp_path):
    chunk = tiny_ds.episode_path(1) / "camera" / "timestamp_ns" / "0"
    chunk.unlink()
    r = cli("view", "1", "--dataset", tiny_ds.root, "--save", tmp_path / "x.rrd")
    assert _one_line(r) and "episode_000001 is damaged" in r.err and "camera/timestamp_ns" in r.err
    assert not list(tmp_path.glob("*.rrd")) and not list(tmp_path.glob(".x.rrd*"))


def test_save_into_a_missing_directory_or_over_a_file(cli, tiny_ds, tmp_path):
    r = cli("view", "0", "--dataset", tiny_ds.root, "--save", tmp_path / "nowhere" / "x.rrd")
    assert _one_line(r) and "does not exist" in r.err and not (tmp_path / "nowhere").exists()
    (tmp_path / "there.rrd").write_text("mine")
    r = cli("view", "0", "--dataset", tiny_ds.root, "--save", tmp_path / "there.rrd")
    assert _one_line(r) and "already exists" in r.err and (tmp_path / "there.rrd").read_text() == "mine"


def test_no_display_without_save(cli, tiny_ds, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    r = cli("view", "0", "--dataset", tiny_ds.root)
    assert _one_line(r) and "--save" in r.err


def test_events_carry_their_details(tiny_ds, tmp_path):
    ep = tiny_ds.episode(0)
    rerun_view.save_rrd(ep, tmp_path / "e.rrd")
    texts = []
    for chunk in RrdReader(tmp_path / "e.rrd").stream():
        if chunk.entity_path == "/events" and not chunk.is_static:
            batch = chunk.to_record_batch()
            col = next(n for n in batch.schema.names if n.endswith("TextLog:text"))
            texts += [x for row in batch.column(col).to_pylist() for x in row]
    kinds = [e["kind"] for e in ep.events()]
    assert [t.split(" ")[0] for t in texts] == kinds
    drop = next(t for t in texts if t.startswith("frame_drop"))
    assert json.loads(drop.split(" ", 1)[1]) == next(e["detail"] for e in ep.events() if e["kind"] == "frame_drop")

