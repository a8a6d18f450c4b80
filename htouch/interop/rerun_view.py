"""`htouch view`: one episode in the rerun viewer (rerun-sdk), every stream placed by its own time stamps.

Each stream is logged on the timeline `time` (seconds since the episode start, from that stream's own measured
time stamps: nothing is resampled onto another stream's clock), and on a sequence timeline of its own rows, so the
viewer can scrub the episode by time or step through one stream:

    entity                           rows                                  timelines
    camera/rgb                       one JPEG image per frame              time, frame
    audio/waveform/<channel>         each microphone's samples, normalised time, audio_sample
                                     ((x - center) / scale); above
                                     WAVEFORM_MAX_HZ the min and the max
                                     of each run of samples in a block
    audio/spectrogram                the log-mel spectrogram of the mono   time, spectrogram_hop
                                     mix (`plot.audio_spectrogram`, the
                                     parameters of audio.LogMelParams),
                                     one bar chart of mel bands per hop
    state/ee_position, state/ee_orientation, state/joints, state/gripper_width       time, state_row
    action/delta_position, action/delta_rotation, action/gripper                     time, action_row
    teleop/buttons, teleop/analog, teleop/controller_position (when recorded)        time, teleop_row
    events                           one text line per event               time, event
    episode                          a static summary (label, task, rig)

An episode without microphones has no audio entities. `expected_rows` says how many rows each entity gets (what
tests/test_view.py reads back from the .rrd with rerun's own reader).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from htouch.dataset.episode import Episode
from htouch.dataset.schema import NS
from htouch.errors import DatasetError, HtouchError

TIME = "time"
WAVEFORM_MAX_HZ = 8000  # waveform points per second and channel; denser audio is shown as min/max per run
FRAME_BATCH = 64
JPEG_QUALITY = 90
WARN_EVENTS = {"frame_drop", "camera_stall", "audio_overflow", "teleop_lost", "writer_queue_full", "damage"}
ERROR_EVENTS = {"robot_error"}


def waveform_step(rate_hz: float, max_hz: int = WAVEFORM_MAX_HZ) -> int:
    """Samples per waveform run: 1 (every sample) up to max_hz, else runs whose min and max give <= max_hz points."""
    return 1 if rate_hz <= max_hz else int(np.ceil(2 * rate_hz / max_hz))


def waveform(ep: Episode, max_hz: int = WAVEFORM_MAX_HZ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each channel's waveform placed by its block time stamps: (times ns (P,), first sample index (P,), values
    (P, C) normalised). Every sample when the rate allows, else two points (min, then max) per run of `step`
    samples, runs never crossing a block boundary (so a gap between blocks stays a gap)."""
    spec = ep.streams.audio
    pcm = ep.read("audio/pcm")
    offsets, times = ep.audio_block_offsets, ep.audio_block_times
    n = len(pcm)
    if n == 0 or len(offsets) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, spec.channels), np.float32)
    norm = ((pcm.astype(np.float32) - np.float32(spec.center)) / np.float32(spec.scale))
    ends = np.append(offsets[1:], n)
    step = waveform_step(spec.rate_hz, max_hz)
    runs = -(-(ends - offsets) // step)  # runs per block
    block = np.repeat(np.arange(len(offsets)), runs)  # the block of each run
    within = np.arange(len(block)) - (np.cumsum(runs) - runs)[block]  # the run's place in its block
    starts = offsets[block] + within * step  # first sample of each run
    t = times[block] + np.round((starts - offsets[block]) * NS / spec.rate_hz).astype(np.int64)
    if step == 1:
        return t, starts, norm
    lo = np.minimum.reduceat(norm, starts, axis=0)
    hi = np.maximum.reduceat(norm, starts, axis=0)
    half = np.round(np.minimum(step, ends[block] - starts) * NS / spec.rate_hz / 2).astype(np.int64)
    t2 = np.stack([t, t + half], axis=1).reshape(-1)
    return t2, np.repeat(starts, 2), np.stack([lo, hi], axis=1).reshape(-1, norm.shape[1])


def expected_rows(ep: Episode, max_hz: int = WAVEFORM_MAX_HZ) -> dict[str, int]:
    """Rows each entity gets in the recording (static rows not counted)."""
    from htouch.dataset.plot import audio_spectrogram

    out = {"camera/rgb": len(ep.camera_times), "events": len(ep.events())}
    for name in ("ee_position", "ee_orientation", "joints", "gripper_width"):
        out[f"state/{name}"] = len(ep.state_times)
    for name in ("delta_position", "delta_rotation", "gripper"):
        out[f"action/{name}"] = len(ep.action_times)
    n_tel = len(ep.read("teleop/timestamp_ns"))
    if n_tel:
        for name in ("buttons", "analog", "controller_position"):
            out[f"teleop/{name}"] = n_tel
    if ep.has_audio and ep.audio_samples:
        points = len(waveform(ep, max_hz)[0])
        for name in channel_names(ep):
            out[f"audio/waveform/{name}"] = points
        out["audio/spectrogram"] = audio_spectrogram(ep).logmel.shape[1]
    return {k: v for k, v in out.items() if v}


def channel_names(ep: Episode) -> list[str]:
    """Entity names of the microphones: the rig's channel names (made path-safe), else ch0, ch1, ..."""
    spec = ep.streams.audio
    names = list(spec.channel_names) if len(spec.channel_names) == spec.channels else []
    names = [("".join(c if c.isalnum() or c in "-_" else "_" for c in n) or f"ch{i}") for i, n in enumerate(names)]
    if len(set(names)) != spec.channels:
        names = [f"ch{i}" for i in range(spec.channels)]
    return names


def _columns(rr: Any, times_ns: np.ndarray, start_ns: int, seq_name: str, seq: np.ndarray | None = None) -> list:
    rel = (np.asarray(times_ns, dtype=np.int64) - start_ns).astype("timedelta64[ns]")
    return [rr.TimeColumn(TIME, duration=rel),
            rr.TimeColumn(seq_name, sequence=np.arange(len(times_ns)) if seq is None else seq)]


def _scalars(rec: Any, rr: Any, entity: str, values: np.ndarray, names: list[str], index: list) -> None:
    rec.log(entity, rr.SeriesLines(names=names), static=True)
    rec.send_columns(entity, indexes=index, columns=rr.Scalars.columns(scalars=np.asarray(values, np.float64)))


def log_episode(ep: Episode, rec: Any, *, max_hz: int = WAVEFORM_MAX_HZ,
                progress: Callable[[int], None] | None = None) -> dict[str, int]:
    """Log every stream of `ep` into the rerun recording `rec` (module docstring); returns the rows per entity.
    progress(n) is called with the frames logged so far. A frame or chunk that does not decode raises
    DatasetError naming the episode."""
    import imagecodecs
    import rerun as rr

    from htouch.dataset.plot import audio_spectrogram

    start_ns, _ = ep.time_range_ns()
    rows: dict[str, int] = {}
    streams = ep.streams
    label = {True: "success", False: "failure"}.get(ep.success, "unlabelled")
    task = ep.dataset.task if ep.dataset else ep.attrs.get("task", "")
    rec.log("episode", rr.TextDocument(
        f"# {ep.name}\n\n{label} · variation {ep.variation} · task {task} · {ep.duration_s:.2f} s\n\n"
        f"rig {streams.name}: camera {streams.camera.width}x{streams.camera.height} at {streams.camera.rate_hz:g} "
        "Hz, " + (f"{streams.audio.channels} microphones at {streams.audio.rate_hz:g} Hz" if ep.has_audio
                  else "no microphones")
        + f", {streams.state.n_joints} joints\n\nTimeline `time`: seconds since the episode start; every stream is "
        "placed by its own time stamps.", media_type=rr.MediaType.MARKDOWN), static=True)

    # camera
    cam = ep.camera_times
    rgb = ep.array("camera/rgb")
    for b in range(0, len(cam), FRAME_BATCH):
        try:
            frames = rgb[b:b + FRAME_BATCH]
        except Exception as e:  # noqa: BLE001 - a chunk that no longer decodes
            raise DatasetError(f"{ep.name}: camera/rgb cannot be read ({type(e).__name__}: {e})") from None
        blobs = [imagecodecs.jpeg_encode(np.ascontiguousarray(f), level=JPEG_QUALITY) for f in frames]
        rec.send_columns("camera/rgb", indexes=_columns(rr, cam[b:b + len(frames)], start_ns, "frame",
                                                        np.arange(b, b + len(frames))),
                         columns=rr.EncodedImage.columns(blob=blobs, media_type=["image/jpeg"] * len(blobs)))
        if progress is not None:
            progress(b + len(frames))
    rows["camera/rgb"] = len(cam)

    # audio
    if ep.has_audio and ep.audio_samples:
        t, first, values = waveform(ep, max_hz)
        index = _columns(rr, t, start_ns, "audio_sample", first)
        for c, name in enumerate(channel_names(ep)):
            entity = f"audio/waveform/{name}"
            _scalars(rec, rr, entity, values[:, c:c + 1], [name], index)
            rows[entity] = len(t)
        mel = audio_spectrogram(ep)
        for k, (ts, column) in enumerate(zip(mel.times_s, mel.logmel.T, strict=True)):
            rec.set_time(TIME, duration=np.timedelta64(int(round(ts * NS)), "ns"))
            rec.set_time("spectrogram_hop", sequence=k)
            rec.log("audio/spectrogram", rr.BarChart(column.astype(np.float32)))
        rec.reset_time()
        rows["audio/spectrogram"] = mel.logmel.shape[1]

    # state and actions
    st = ep.state_times
    if len(st):
        index = _columns(rr, st, start_ns, "state_row")
        ee = ep.read("state/ee_pose")
        joints = ep.read("state/joints")
        for entity, values, names in (("state/ee_position", ee[:, :3], ["x", "y", "z"]),
                                      ("state/ee_orientation", ee[:, 3:7], ["qx", "qy", "qz", "qw"]),
                                      ("state/joints", joints, [f"joint{i}" for i in range(joints.shape[1])]),
                                      ("state/gripper_width", ep.read("state/gripper_width")[:, None], ["width"])):
            _scalars(rec, rr, entity, values, names, index)
            rows[entity] = len(st)
    at = ep.action_times
    if len(at):
        index = _columns(rr, at, start_ns, "action_row")
        delta = ep.read("action/delta_ee")
        for entity, values, names in (("action/delta_position", delta[:, :3], ["dx", "dy", "dz"]),
                                      ("action/delta_rotation", delta[:, 3:6], ["rx", "ry", "rz"]),
                                      ("action/gripper", ep.read("action/gripper")[:, None], ["gripper"])):
            _scalars(rec, rr, entity, values, names, index)
            rows[entity] = len(at)

    # teleop
    tt = ep.read("teleop/timestamp_ns")
    if len(tt):
        index = _columns(rr, tt, start_ns, "teleop_row")
        pose = ep.read("teleop/controller_pose")
        for entity, values, names in (
                ("teleop/buttons", ep.read("teleop/buttons").astype(np.float64), list(streams.teleop.button_names)),
                ("teleop/analog", ep.read("teleop/analog"), list(streams.teleop.analog_names)),
                ("teleop/controller_position", pose[:, :3, 3], ["x", "y", "z"])):
            if values.shape[1]:
                _scalars(rec, rr, entity, values, names, index)
                rows[entity] = len(tt)

    # events
    events = ep.events()
    if events:
        times = np.array([e["t_ns"] for e in events], dtype=np.int64)
        texts = [e["kind"] + (f" {json.dumps(e['detail'], separators=(',', ':'))}" if e.get("detail") else "")
                 for e in events]
        levels = ["ERROR" if e["kind"] in ERROR_EVENTS else "WARN" if e["kind"] in WARN_EVENTS else "INFO"
                  for e in events]
        rec.send_columns("events", indexes=_columns(rr, times, start_ns, "event"),
                         columns=rr.TextLog.columns(text=texts, level=levels))
        rows["events"] = len(events)
    return rows


def recording(ep: Episode) -> Any:
    """A rerun recording stream for the episode (strict: a logging mistake raises instead of warning)."""
    import rerun as rr

    rr.set_strict_mode(True)
    rec = rr.RecordingStream("htouch", recording_id=f"{ep.path.resolve()}")
    rec.set_log_time_enabled(False)  # only the episode's own time stamps place the data
    return rec


def save_rrd(ep: Episode, out: str | os.PathLike[str], *, max_hz: int = WAVEFORM_MAX_HZ,
             progress: Callable[[int], None] | None = None) -> dict[str, int]:
    """Write the episode's recording to `out` (.rrd; written beside it and renamed when complete). HtouchError
    for a directory that does not exist or an `out` that exists."""
    out = Path(out)
    if not out.parent.is_dir():
        raise HtouchError(f"--save {out}: directory {out.parent} does not exist")
    if out.exists() or out.is_symlink():
        raise HtouchError(f"--save {out}: already exists; choose a new path")
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    rec = recording(ep)
    try:
        rec.save(str(tmp))
        rows = log_episode(ep, rec, max_hz=max_hz, progress=progress)
        rec.flush()
        rec.disconnect()
        os.replace(tmp, out)
    except BaseException:
        rec.disconnect()
        tmp.unlink(missing_ok=True)
        raise
    return rows


def serve(ep: Episode, port: int, *, max_hz: int = WAVEFORM_MAX_HZ,
          progress: Callable[[int], None] | None = None) -> tuple[Any, str, dict[str, int]]:
    """Log the episode into a gRPC server bound to 127.0.0.1 only (a viewer on this machine, or through an SSH
    tunnel, connects to the returned URI); port 0: a free one. Returns (recording, uri, rows); the server lives
    until `recording.disconnect()`."""
    import rerun as rr

    rec = recording(ep)
    port = port or free_port()
    try:
        sink = rr.GrpcServerSink(bind_ip="127.0.0.1", port=port)
    except Exception as e:  # noqa: BLE001 - the port is taken, ...
        raise HtouchError(f"cannot serve on 127.0.0.1:{port}: {e}") from None
    rec.set_sinks(sink)
    rows = log_episode(ep, rec, max_hz=max_hz, progress=progress)
    rec.flush()
    return rec, sink.uri, rows


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (rerun's server does not take port 0 itself)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def has_display() -> bool:
    """Whether a viewer window could open here (an X or Wayland display is set)."""
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
