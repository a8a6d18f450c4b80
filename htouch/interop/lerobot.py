"""Export an htouch dataset as a LeRobot dataset, format v3.0 (what `lerobot.datasets.LeRobotDataset` loads).

    OUT/
      meta/info.json                              codebase_version "v3.0", fps, features, splits, paths
      meta/stats.json                             per feature: min, max, mean, std, count, q01 q10 q50 q90 q99
      meta/tasks.parquet                          the task (index: task text, column task_index)
      meta/episodes/chunk-000/file-000.parquet    one row per episode: length, rows in data/, place in the video,
                                                  per-episode stats, and htouch's labels (columns htouch/...)
      data/chunk-000/file-000.parquet             one row per frame (several files past 100 MB)
      videos/observation.images.camera/chunk-000/file-000.mp4   the episodes' frames one after another (AV1), with
                                                  a mono audio track for watching (several files past 200 MB)
      htouch/export.json                          the export report, the rig, which htouch episode is which
      htouch/audio/episode-000000.npz             lossless sidecar: the episode's PCM and block time stamps

Rows sit on LeRobot's fixed grid (timestamp = frame_index / fps); `htouch.interop.common.frame_grid` decides which
recorded frame, state and action each row holds. The contact audio is a per-frame feature `observation.audio`:
the window (t_k - 1/fps, t_k] at a rate where a frame holds a whole number of samples, all channels, normalised
with the rig's AudioSpec. LeRobot has no audio type, so that window is all a LeRobot loader sees; the sidecar keeps
every recorded sample with its block time stamps (`htouch/export.json` gives each episode's t0_ns, the recording
time of its row 0). The file layout and column names follow LeRobot's own constants (lerobot/datasets/utils.py:
INFO_PATH, DEFAULT_DATA_PATH, DEFAULT_VIDEO_PATH, DEFAULT_EPISODES_PATH, DEFAULT_TASKS_PATH, STATS_PATH).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from htouch.dataset.episode import Episode
from htouch.dataset.store import Dataset
from htouch.errors import HtouchError
from htouch.interop.common import (
    EpisodeRows,
    ExportReport,
    audio_rate_for,
    check_exportable,
    check_uniform,
    episode_rows,
    export_fps,
    grid_frames,
    staged_output,
    tree_bytes,
)

CODEBASE_VERSION = "v3.0"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
EPISODES_PATH = "meta/episodes/" + CHUNK_FILE + ".parquet"
DATA_PATH = "data/" + CHUNK_FILE + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE + ".mp4"
CHUNKS_SIZE = 1000  # files per chunk directory
DATA_FILE_MB = 100  # a new data file once one reaches this size
VIDEO_FILE_MB = 200  # a new video file once one reaches this size
EXPORT_REPORT = "htouch/export.json"
AUDIO_SIDECAR = "htouch/audio/episode-{episode_index:06d}.npz"

CAMERA_KEY = "observation.images.camera"
STATE_KEY = "observation.state"
AUDIO_KEY = "observation.audio"
ACTION_KEY = "action"
TIME_KEY = "htouch.time_ns"  # the row's time t_k on the recording's clock
REPEATED_KEY = "htouch.frame_repeated"  # the row repeats the previous frame (its own was dropped)

QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)  # LeRobot's DEFAULT_QUANTILES
IMAGE_STATS_FRAMES = 100  # frames per episode sampled for the image statistics
FRAME_BATCH = 32
VIDEO_CODECS = ("libsvtav1", "libx264")  # AV1 as LeRobot records; H.264 where SVT-AV1 is missing
AUDIO_CODEC = "aac"


def pick_video_codec(requested: str | None) -> str:
    """The requested encoder, or the first of VIDEO_CODECS this PyAV/FFmpeg build can encode with."""
    import av

    for name in ([requested] if requested else list(VIDEO_CODECS)):
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # noqa: BLE001 - PyAV raises different errors for an unknown codec across versions
            continue
    raise HtouchError(f"PyAV here has no {requested or ' or '.join(VIDEO_CODECS)} encoder" +
                      (f"; try --vcodec {VIDEO_CODECS[-1]}" if requested else ""))


# ------------------------------------------------------------------------------------------------ statistics


def feature_stats(x: np.ndarray, axis: int | tuple[int, ...] = 0) -> dict[str, np.ndarray]:
    """LeRobot's statistics of one feature over rows (`compute_stats.get_feature_stats`): min, max, mean, std,
    count and the quantiles, reduced over `axis`; 1-D features keep a (1,) shape as LeRobot's do."""
    x = np.asarray(x, dtype=np.float64)
    keep = x.ndim == 1
    out = {"min": x.min(axis=axis, keepdims=keep), "max": x.max(axis=axis, keepdims=keep),
           "mean": x.mean(axis=axis, keepdims=keep), "std": x.std(axis=axis, keepdims=keep),
           "count": np.array([x.shape[0]])}
    for q, v in zip(QUANTILES, np.quantile(x, QUANTILES, axis=axis, keepdims=keep), strict=True):
        out[f"q{int(round(q * 100)):02d}"] = v
    return out


def image_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel statistics of (n, H, W, 3) uint8 frames in [0, 1], shaped (3, 1, 1) as LeRobot's."""
    st = feature_stats(frames.reshape(-1, 3) / 255.0)
    st = {k: (v if k == "count" else v.reshape(3, 1, 1)) for k, v in st.items()}
    st["count"] = np.array([len(frames)])
    return st


def aggregate_stats(per_episode: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Dataset statistics from per-episode ones, as LeRobot aggregates them (`aggregate_feature_stats`): exact
    min, max, mean and std; quantiles are the count-weighted means of the episodes' quantiles."""
    counts = np.array([float(s["count"][0]) for s in per_episode])
    w = counts / counts.sum()
    shape = (-1,) + (1,) * per_episode[0]["mean"].ndim
    w = w.reshape(shape)
    means = np.stack([s["mean"] for s in per_episode])
    mean = (w * means).sum(axis=0)
    var = (w * (np.stack([s["std"] for s in per_episode]) ** 2 + (means - mean) ** 2)).sum(axis=0)
    out = {"min": np.min(np.stack([s["min"] for s in per_episode]), axis=0),
           "max": np.max(np.stack([s["max"] for s in per_episode]), axis=0),
           "mean": mean, "std": np.sqrt(var), "count": np.array([int(counts.sum())])}
    for key in per_episode[0]:
        if key.startswith("q"):
            out[key] = (w * np.stack([s[key] for s in per_episode])).sum(axis=0)
    return out


def _json_stats(stats: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, Any]]:
    return {k: {s: np.asarray(v).tolist() for s, v in st.items()} for k, st in stats.items()}


# ------------------------------------------------------------------------------------------------ episodes


def _order(ds: Dataset, indices: list[int]) -> tuple[list[int], dict[str, str], dict[int, str]]:
    """Episodes in export order (the stored split's train, then val, then any recorded after the split), LeRobot's
    `splits` as index ranges over that order, and each htouch index's split name."""
    split = ds.metadata.get("split")
    if not isinstance(split, dict):
        return indices, {"train": f"0:{len(indices)}"}, {i: "" for i in indices}
    groups = [("train", [i for i in split.get("train", []) if i in indices]),
              ("val", [i for i in split.get("val", []) if i in indices])]
    named = {i for _, g in groups for i in g}
    groups.append(("unsplit", [i for i in indices if i not in named]))
    order, ranges, names, at = [], {}, {}, 0
    for name, group in groups:
        if group:
            ranges[name] = f"{at}:{at + len(group)}"
            at += len(group)
            order += group
            names.update({i: name for i in group})
    return order, ranges, names


class _RollingFiles:
    """LeRobot's chunk-XXX/file-XXX numbering: a new file once the current one reaches `limit_mb`."""

    def __init__(self, root: Path, pattern: str, limit_mb: int, **fmt: str):
        self.root, self.pattern, self.limit, self.fmt = root, pattern, limit_mb * 1024 * 1024, fmt
        self.chunk, self.file = 0, -1

    def next_path(self) -> Path:
        self.file += 1
        if self.file == CHUNKS_SIZE:
            self.chunk, self.file = self.chunk + 1, 0
        path = self.root / self.pattern.format(chunk_index=self.chunk, file_index=self.file, **self.fmt)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def full(self, path: Path) -> bool:
        return path.exists() and path.stat().st_size >= self.limit


def _realtime_threads() -> set[int]:
    """Ids of this process's threads on a real-time scheduling policy (Linux; empty elsewhere)."""
    tasks = Path("/proc/self/task")
    if not hasattr(os, "sched_getscheduler") or not tasks.is_dir():
        return set()
    found = set()
    for task in tasks.iterdir():
        try:
            if os.sched_getscheduler(int(task.name)) in (os.SCHED_FIFO, os.SCHED_RR):
                found.add(int(task.name))
        except OSError:  # the thread ended meanwhile
            continue
    return found


def _back_to_normal_scheduling(before: set[int]) -> None:
    """SVT-AV1, run as root, puts the thread that first encodes and every worker thread it starts on SCHED_FIFO
    99: an export would starve the machine (a robot's control loop with it) and leave the caller real-time. Set
    the threads that became real-time since `before` back to SCHED_OTHER."""
    for tid in _realtime_threads() - before:
        try:
            os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
        except OSError:
            continue


class _Video:
    """The episodes' frames one after another in MP4 files (frame k of the file at pts k, time base 1/fps), with
    the mono listening track as an AAC stream; rolls to a new file once one reaches file_mb."""

    def __init__(self, root: Path, fps: int, codec: str, crf: int, gop: int, audio_rate: int, file_mb: int):
        self.files = _RollingFiles(root, VIDEO_PATH, file_mb, video_key=CAMERA_KEY)
        self.fps, self.codec, self.crf, self.gop, self.audio_rate = fps, codec, crf, gop, audio_rate
        self.container = None
        self.path: Path | None = None

    def begin_episode(self, width: int, height: int) -> tuple[int, int, float]:
        """Where the next episode starts: (chunk, file, from_timestamp in s)."""
        if self.container is None or self.files.full(self.path):
            self.close()
            self._open(width, height)
        return self.files.chunk, self.files.file, self.frames / self.fps

    def _open(self, width: int, height: int) -> None:
        import av

        self.path = self.files.next_path()
        self.container = av.open(str(self.path), mode="w")
        options = {"g": str(self.gop), "crf": str(self.crf)}
        if self.codec == "libsvtav1":
            options["preset"] = "12"
        self.vstream = self.container.add_stream(self.codec, rate=self.fps, options=options)
        self.vstream.width, self.vstream.height, self.vstream.pix_fmt = width, height, "yuv420p"
        self.vstream.codec_context.time_base = Fraction(1, self.fps)
        self.astream = None
        if self.audio_rate:  # no listening track for a rig without microphones
            self.astream = self.container.add_stream(AUDIO_CODEC, rate=self.audio_rate)
            self.astream.layout = "mono"
        self.frames = 0
        self.samples = 0
        self.pending = np.zeros(0, dtype=np.float32)

    def add_frames(self, images: np.ndarray) -> None:
        import av

        for image in images:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts, frame.time_base = self.frames, Fraction(1, self.fps)
            self.frames += 1
            before = _realtime_threads() if self.frames == 1 else None
            self.container.mux(self.vstream.encode(frame))
            if before is not None:  # the encoder starts its threads with the file's first frame
                _back_to_normal_scheduling(before)

    def add_audio(self, mono: np.ndarray) -> None:
        import av

        if self.astream is None:
            return
        size = self.astream.codec_context.frame_size or 1024
        self.pending = np.concatenate([self.pending, mono.astype(np.float32)])
        while len(self.pending) >= size:
            chunk, self.pending = self.pending[:size], self.pending[size:]
            frame = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = self.audio_rate, self.samples, Fraction(1, self.audio_rate)
            self.samples += size
            self.container.mux(self.astream.encode(frame))

    def close(self) -> None:
        if self.container is None:
            return
        if len(self.pending):
            self.add_audio(np.zeros(self.astream.codec_context.frame_size - len(self.pending), dtype=np.float32))
        self.container.mux(self.vstream.encode(None))
        if self.astream is not None:
            self.container.mux(self.astream.encode(None))
        self.container.close()
        self.container = None


def video_info(path: Path) -> dict[str, Any]:
    """The `info` LeRobot keeps for a video feature (the keys of `video_utils.get_video_info`), read from the file."""
    import av

    with av.open(str(path)) as c:
        v = c.streams.video[0]
        info: dict[str, Any] = {"video.height": v.height, "video.width": v.width,
                                "video.codec": v.codec_context.codec.canonical_name, "video.pix_fmt": v.pix_fmt,
                                "video.is_depth_map": False, "video.fps": int(v.base_rate), "video.channels": 3}
        if c.streams.audio:
            a = c.streams.audio[0]
            info.update({"audio.channels": a.channels, "audio.codec": a.codec_context.codec.canonical_name,
                         "audio.bit_rate": a.bit_rate, "audio.sample_rate": a.sample_rate,
                         "audio.bit_depth": a.format.bits, "audio.channel_layout": a.layout.name, "has_audio": True})
        else:
            info["has_audio"] = False
    return info


def _fixed_list(values: np.ndarray, pa: Any) -> Any:
    """(n, a, b, ...) array -> nested fixed-size lists, as `datasets` stores Sequence / Array2D features."""
    arr = pa.array(np.ascontiguousarray(values).reshape(-1))
    for size in reversed(values.shape[1:]):
        arr = pa.FixedSizeListArray.from_arrays(arr, size)
    return arr


# ------------------------------------------------------------------------------------------------ the export


def export_lerobot(ds: Dataset, out: str | os.PathLike[str], *, vcodec: str | None = None, crf: int = 30,
                   gop: int = 2, data_file_mb: int = DATA_FILE_MB, video_file_mb: int = VIDEO_FILE_MB,
                   progress: Callable[[], None] | None = None) -> ExportReport:
    """Write `ds` as a LeRobot v3.0 dataset at `out` (which must not exist; it appears complete or not at all).
    vcodec: encoder (default libsvtav1, AV1 as LeRobot records, else libx264); crf and gop (keyframe interval)
    as LeRobot's defaults; data_file_mb / video_file_mb: start a new data / video file (chunk-XXX/file-XXX) at
    an episode boundary once the current one reaches this size (LeRobot's defaults). progress() is called after each
    episode. Raises DatasetError if the dataset fails validation, HtouchError for an unusable OUT."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    start = time.perf_counter()
    out = Path(out)
    codec = pick_video_codec(vcodec)
    check_exportable(ds)
    fps = export_fps(ds)
    has_audio = ds.streams.has_audio  # without microphones: no observation.audio, sidecar or listening track
    audio_rate = audio_rate_for(ds.streams.audio.rate_hz, fps) if has_audio else 0
    order, splits, split_of = _order(ds, ds.episode_indices())
    episodes = [ds.episode(i) for i in order]
    for ep in episodes:
        check_uniform(ep, ds)
    report = ExportReport(format="lerobot", out=str(out), fps=fps, video_codec=codec, audio_rate_hz=audio_rate,
                          audio_samples_per_frame=audio_rate // fps)
    if abs(ds.streams.camera.rate_hz - fps) > 1e-9:
        report.notes.append(f"camera rate {ds.streams.camera.rate_hz} Hz exported on a {fps} fps grid")
    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its whole configuration at info level

    rgb_shape = episodes[0].array("camera/rgb").shape
    height, width = rgb_shape[1] - rgb_shape[1] % 2, rgb_shape[2] - rgb_shape[2] % 2  # yuv420p: even sizes
    if (height, width) != tuple(rgb_shape[1:3]):
        report.notes.append(f"frames cropped from {rgb_shape[2]}x{rgb_shape[1]} to {width}x{height} (yuv420p needs "
                            "even sizes)")
    n_state = 7 + ds.streams.state.n_joints + 1
    channels = ds.streams.audio.channels
    task = ds.task or "task"

    with staged_output(out) as tmp:
        data_files = _RollingFiles(tmp, DATA_PATH, data_file_mb)
        data_path = data_files.next_path()
        writer = None
        video = _Video(tmp, fps, codec, crf, gop, audio_rate, video_file_mb)
        episode_table: list[dict[str, Any]] = []
        ep_stats: list[dict[str, dict[str, np.ndarray]]] = []
        index = 0
        try:
            for e, ep in enumerate(episodes):
                rows = episode_rows(ep, fps, audio_rate)
                g = rows.grid
                n = len(g)
                v_chunk, v_file, from_ts = video.begin_episode(width, height)
                stride = max(1, n // IMAGE_STATS_FRAMES)
                sampled = []
                for b, images in grid_frames(ep, g, FRAME_BATCH):
                    images = images[:, :height, :width]
                    video.add_frames(images)
                    keep = (np.arange(b, b + len(images)) % stride) == 0
                    sampled.append(images[keep][:, ::max(1, height // 64), ::max(1, width // 64)])
                video.add_audio(rows.listen)
                t = np.arange(n)
                success = ep.success
                columns = {
                    STATE_KEY: _fixed_list(rows.state, pa),
                    ACTION_KEY: _fixed_list(rows.action, pa),
                    **({AUDIO_KEY: _fixed_list(rows.audio, pa)} if has_audio else {}),
                    "timestamp": pa.array((t / fps).astype(np.float32)),
                    "frame_index": pa.array(t.astype(np.int64)),
                    "episode_index": pa.array(np.full(n, e, dtype=np.int64)),
                    "index": pa.array(np.arange(index, index + n, dtype=np.int64)),
                    "task_index": pa.array(np.zeros(n, dtype=np.int64)),
                    "next.done": pa.array(t == n - 1),
                    "next.success": pa.array((t == n - 1) & bool(success)),
                    TIME_KEY: pa.array(g.times_ns.astype(np.int64)),
                    REPEATED_KEY: pa.array(g.repeated),
                }
                table = pa.table(columns)
                if writer is not None and data_files.full(data_path):
                    writer.close()
                    writer, data_path = None, data_files.next_path()
                if writer is None:
                    writer = pq.ParquetWriter(data_path, table.schema, compression="snappy")
                writer.write_table(table)

                ep_stats.append(_episode_stats(rows, columns, np.concatenate(sampled)))

                sidecar = AUDIO_SIDECAR.format(episode_index=e) if has_audio else ""
                if has_audio:
                    _write_sidecar(tmp / sidecar, ep, g.t0_ns)

                line = report.add_episode(ep, g, episode_index=e, audio_gain_db=rows.gain_db,
                                          split=split_of[ep.index])
                episode_table.append({
                    "episode_index": e, "tasks": [task], "length": n,
                    "data/chunk_index": data_files.chunk, "data/file_index": data_files.file,
                    "dataset_from_index": index, "dataset_to_index": index + n,
                    f"videos/{CAMERA_KEY}/chunk_index": v_chunk, f"videos/{CAMERA_KEY}/file_index": v_file,
                    f"videos/{CAMERA_KEY}/from_timestamp": from_ts,
                    f"videos/{CAMERA_KEY}/to_timestamp": from_ts + n / fps,
                    "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0,
                    "htouch/episode": ep.name, "htouch/success": success, "htouch/variation": ep.variation,
                    "htouch/split": split_of[ep.index], "htouch/t0_ns": g.t0_ns,
                    "htouch/repeated_frames": line["repeated_frames"], "htouch/audio_sidecar": sidecar,
                })
                index += n
                if progress is not None:
                    progress()
        finally:
            if writer is not None:
                writer.close()
            video.close()

        _write_episodes(tmp, episode_table, ep_stats, pa, pq)
        pq.write_table(pa.table({"task_index": pa.array([0], type=pa.int64()),
                                 "__index_level_0__": pa.array([task])}).replace_schema_metadata(
            {b"pandas": json.dumps(_PANDAS_INDEX).encode()}), tmp / TASKS_PATH)
        stats = {k: aggregate_stats([s[k] for s in ep_stats]) for k in ep_stats[0]}
        _write_json(tmp / STATS_PATH, _json_stats(stats))
        features = _features(height, width, n_state, audio_rate // fps, channels, ds,
                             video_info(tmp / VIDEO_PATH.format(video_key=CAMERA_KEY, chunk_index=0, file_index=0)))
        _write_json(tmp / INFO_PATH, {
            "codebase_version": CODEBASE_VERSION, "robot_type": ds.streams.name, "total_episodes": report.episodes,
            "total_frames": report.rows, "total_tasks": 1, "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": data_file_mb, "video_files_size_in_mb": video_file_mb, "fps": fps,
            "splits": splits, "data_path": DATA_PATH, "video_path": VIDEO_PATH, "features": features,
        })
        report.seconds = time.perf_counter() - start
        report.bytes_out = tree_bytes(tmp)
        _write_json(tmp / EXPORT_REPORT, {
            "format": "htouch-lerobot-export", "version": 1,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "source": str(ds.root.resolve()), "task": ds.task, "rig": ds.streams.to_dict(),
            "time": "row k of an episode is at t0_ns + round(k * 1e9 / fps) on the recording's clock "
                    "(column htouch.time_ns); its frame is the latest captured by then plus half a period, its "
                    "state the latest at or before, its action the first commanded at or after",
            "audio": None if not has_audio else {  # a rig without microphones: no audio anywhere
                "feature": AUDIO_KEY, "rate_hz": audio_rate, "samples_per_frame": audio_rate // fps,
                "window": "(t_k - 1/fps, t_k]", "normalised": "(x - center) / scale of rig.audio",
                "sidecar": AUDIO_SIDECAR, "listening_track": "mono mix in the MP4, raised to a -1 dBFS peak "
                "per episode (audio_gain_db)"},
            "report": report.to_dict(),
        })
    report.seconds = time.perf_counter() - start
    return report


def _episode_stats(rows: EpisodeRows, columns: dict[str, Any], frames: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """One episode's statistics of every feature (LeRobot keeps them per episode in meta/episodes)."""
    stats = {STATE_KEY: feature_stats(rows.state), ACTION_KEY: feature_stats(rows.action),
             CAMERA_KEY: image_stats(frames)}
    if rows.audio.shape[-1]:
        stats[AUDIO_KEY] = feature_stats(rows.audio)
    for key in ("timestamp", "frame_index", "episode_index", "index", "task_index", "next.done", "next.success"):
        stats[key] = feature_stats(columns[key].to_numpy(zero_copy_only=False).astype(np.float64))
    return stats


def _write_sidecar(path: Path, ep: Episode, t0_ns: int) -> None:
    """The episode's audio as recorded (int16 PCM, block offsets, time stamps and overflow flags) and its events."""
    path.parent.mkdir(parents=True, exist_ok=True)
    events = ep.events()
    np.savez_compressed(
        path, pcm=ep.read("audio/pcm"), block_offset=ep.audio_block_offsets,
        block_timestamp_ns=ep.audio_block_times, block_overflow=ep.read("audio/block_overflow"),
        t0_ns=np.int64(t0_ns), rate_hz=np.float64(ep.streams.audio.rate_hz),
        channel_names=np.array(ep.streams.audio.channel_names, dtype=str),
        event_timestamp_ns=np.array([ev["t_ns"] for ev in events], dtype=np.int64),
        event_kind=np.array([ev["kind"] for ev in events], dtype=str),
        event_detail=np.array([json.dumps(ev.get("detail", {})) for ev in events], dtype=str))


# pandas' own description of a one-level index named None (what `DataFrame.to_parquet` writes), so that
# `pandas.read_parquet(meta/tasks.parquet)` gives LeRobot's tasks frame: the task text as the index.
_PANDAS_INDEX = {"index_columns": ["__index_level_0__"], "column_indexes": [], "columns": [
    {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64",
     "metadata": None},
    {"name": None, "field_name": "__index_level_0__", "pandas_type": "unicode", "numpy_type": "object",
     "metadata": None}], "creator": {"library": "pyarrow"}, "pandas_version": "2.2.3"}


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=4)
        f.write("\n")


def _write_episodes(root: Path, rows: list[dict[str, Any]], stats: list[dict[str, dict[str, np.ndarray]]],
                    pa: Any, pq: Any) -> None:
    columns: dict[str, Any] = {k: [r[k] for r in rows] for k in rows[0]}
    for feature in stats[0]:
        for name in stats[0][feature]:
            columns[f"stats/{feature}/{name}"] = [np.asarray(s[feature][name]).tolist() for s in stats]
    path = root / EPISODES_PATH.format(chunk_index=0, file_index=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({k: pa.array(v, type=pa.bool_() if k == "htouch/success" else None) for k, v in columns.items()})
    pq.write_table(table, path, compression="snappy")


def _features(height: int, width: int, n_state: int, samples: int, channels: int, ds: Dataset,
              info: dict[str, Any]) -> dict[str, Any]:
    """meta/info.json's features: dtype, shape and names of every column (and the video's info)."""
    joints = [f"joint{i}" for i in range(ds.streams.state.n_joints)]
    scalar = {"shape": [1], "names": None}
    return {
        CAMERA_KEY: {"dtype": "video", "shape": [height, width, 3], "names": ["height", "width", "channels"],
                     "info": info},
        STATE_KEY: {"dtype": "float32", "shape": [n_state],
                    "names": ["x", "y", "z", "qx", "qy", "qz", "qw", *joints, "gripper_width"]},
        **({AUDIO_KEY: {"dtype": "float32", "shape": [samples, channels], "names": ["samples", "channels"],
                        "channel_names": list(ds.streams.audio.channel_names)}} if channels else {}),
        ACTION_KEY: {"dtype": "float32", "shape": [7],
                     "names": ["dx", "dy", "dz", "rx", "ry", "rz", "gripper"]},
        "timestamp": {"dtype": "float32", **scalar},
        "frame_index": {"dtype": "int64", **scalar},
        "episode_index": {"dtype": "int64", **scalar},
        "index": {"dtype": "int64", **scalar},
        "task_index": {"dtype": "int64", **scalar},
        "next.done": {"dtype": "bool", **scalar},
        "next.success": {"dtype": "bool", **scalar},
        TIME_KEY: {"dtype": "int64", **scalar},
        REPEATED_KEY: {"dtype": "bool", **scalar},
    }
