"""Import a LeRobot dataset (format v3.0: parquet + MP4) as an htouch dataset, so that `validate`, `inspect`,
`train --method vision-only` and the other readers work on it.

What becomes what (docs/interop.md, "htouch import lerobot"):

- time: LeRobot's frame `timestamp` (s from the episode's start) is the episode's time axis: row k is at
  `base + round(timestamp_k * 1e9)` ns, base being the `htouch/t0_ns` of an htouch export (its recording clock, so
  that the audio sidecar's block time stamps line up unchanged) and 0 otherwise. Frames, states and actions of a row
  share its time;
- camera: each row's video frame, decoded with PyAV from `videos/<key>/chunk-XXX/file-XXX.mp4` between the episode's
  `from_timestamp` and `to_timestamp`; `frame_number` is the row's frame_index. A row flagged
  `htouch.frame_repeated` (an htouch export repeats the previous frame where one was dropped) is left out, so the
  drop is a gap again, as recorded;
- state: `observation.state`. Named as htouch exports it (x y z qx qy qz qw joint.. gripper_width) it is split
  back into ee_pose, joints and gripper_width; any other state goes whole into `state/joints`, with ee_pose the
  identity pose and gripper_width 0 (htouch's schema has those arrays; the episode's info says they were not
  measured);
- action: `action`, which must have htouch's 7 values (dx dy dz rx ry rz gripper);
- audio: the lossless sidecar of an htouch export (`htouch/audio/episode-NNNNNN.npz`: PCM, block offsets, time
  stamps, overflow flags and the events) when every episode has one; otherwise the dataset has no audio streams
  (rig.audio.channels 0: LeRobot has no audio type, and the per-frame `observation.audio` windows of an export
  without its sidecar are not the recording);
- labels: `htouch/success` and `htouch/variation` of an export, else `next.success` (any true row) and
  "default"; the split from `htouch/split`, else from info.json's `splits` (stored only if it has validation
  episodes); the dataset's task from the export report, else the first task of meta/tasks.parquet; each episode's
  own task in its info.

The result is written into a temporary directory beside OUT and renamed when complete (common.staged_output).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from htouch.dataset.schema import NS, AudioSpec, CameraSpec, StateSpec, StreamSpecs, parse_episode_name
from htouch.dataset.split import SPLIT_KEY
from htouch.dataset.store import Dataset
from htouch.errors import DatasetError, HtouchError
from htouch.interop.common import staged_output, tree_bytes
from htouch.interop.lerobot import (
    ACTION_KEY,
    CAMERA_KEY,
    CODEBASE_VERSION,
    EXPORT_REPORT,
    INFO_PATH,
    REPEATED_KEY,
    STATE_KEY,
    TASKS_PATH,
)

EPISODES_DIR = "meta/episodes"
HTOUCH_STATE_POSE = ["x", "y", "z", "qx", "qy", "qz", "qw"]
IDENTITY_POSE = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0)
ACTION_DIM = 7


@dataclass
class ImportReport:
    """What an import read and wrote."""

    src: str
    out: str
    fps: int = 0
    episodes: int = 0
    rows: int = 0  # LeRobot rows read
    frames: int = 0  # camera frames written (rows minus those repeating a dropped frame)
    audio: str = "none"  # "sidecar" (lossless, from an htouch export) or "none"
    camera_key: str = ""
    state_layout: str = ""  # "htouch" (split back into ee_pose, joints, gripper) or "joints"
    seconds: float = 0.0
    bytes_in: int = 0
    bytes_out: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def frames_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "frames_per_s": self.frames_per_s}


# ------------------------------------------------------------------------------------------------ reading


def _inside(root: Path, path: Path) -> bool:
    """`path` names a file below `root` (no `..` or link leads out): the import reads nothing else."""
    try:
        return path.resolve().is_relative_to(root.resolve())
    except OSError:
        return False


def _bad(src: Path, message: str) -> DatasetError:
    return DatasetError(f"{src}: {message}")


def read_info(src: Path) -> dict[str, Any]:
    """The LeRobot dataset's meta/info.json; DatasetError (one line) for a missing directory or file, bad
    JSON or another codebase version."""
    if not src.is_dir():
        raise DatasetError(f"{src} is not a directory; a LeRobot dataset is a directory with {INFO_PATH}"
                           if src.exists() else f"{src} not found")
    path = src / INFO_PATH
    if not path.is_file():
        raise _bad(src, f"not a LeRobot dataset: {INFO_PATH} not found")
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _bad(src, f"{INFO_PATH} is unreadable ({e})") from None
    if not isinstance(info, dict):
        raise _bad(src, f"{INFO_PATH} is not a JSON object")
    version = info.get("codebase_version")
    if version != CODEBASE_VERSION:
        raise _bad(src, f"LeRobot codebase_version {version!r}; htouch imports {CODEBASE_VERSION} (convert it with "
                   "LeRobot's own conversion script first)")
    for key in ("fps", "features", "data_path", "video_path"):
        if key not in info:
            raise _bad(src, f"{INFO_PATH} has no {key!r}")
    if not isinstance(info["features"], dict):
        raise _bad(src, f"{INFO_PATH}: features is not an object")
    fps = info["fps"]
    if not isinstance(fps, (int, float)) or isinstance(fps, bool) or not fps > 0:
        raise _bad(src, f"{INFO_PATH}: fps is {fps!r}, expected a positive number")
    return info


def _read_parquet(src: Path, path: Path, columns: list[str] | None = None) -> Any:
    import pyarrow.parquet as pq

    rel = path.relative_to(src) if path.is_relative_to(src) else path
    if not path.is_file():
        raise _bad(src, f"{rel} not found")
    try:
        return pq.read_table(path, columns=columns)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several kinds for a damaged or foreign file
        raise _bad(src, f"{rel} is not a readable parquet file with the columns needed ({type(e).__name__}: "
                   f"{str(e).splitlines()[0] if str(e) else ''})") from None


def read_episodes(src: Path) -> list[dict[str, Any]]:
    """meta/episodes/chunk-*/file-*.parquet as one row per episode, in episode_index order."""
    files = sorted((src / EPISODES_DIR).glob("chunk-*/file-*.parquet"))
    if not files:
        raise _bad(src, f"no {EPISODES_DIR}/chunk-XXX/file-XXX.parquet")
    rows: list[dict[str, Any]] = []
    for f in files:
        table = _read_parquet(src, f)
        keep = [c for c in table.column_names if not c.startswith("stats/")]
        rows += table.select(keep).to_pylist()
    for need in ("episode_index", "length", "data/chunk_index", "data/file_index"):
        if any(need not in r for r in rows):
            raise _bad(src, f"{EPISODES_DIR} has no {need!r} column")
    rows.sort(key=lambda r: r["episode_index"])
    if len({r["episode_index"] for r in rows}) != len(rows):
        raise _bad(src, f"{EPISODES_DIR} lists an episode_index twice")
    return rows


def _first_task(src: Path) -> str:
    path = src / TASKS_PATH
    if not path.is_file():
        raise _bad(src, f"{TASKS_PATH} not found")
    table = _read_parquet(src, path)
    meta = json.loads((table.schema.metadata or {}).get(b"pandas", b"{}") or b"{}")
    index_cols = [c for c in meta.get("index_columns", []) if isinstance(c, str)]
    for col in index_cols + ["task", "__index_level_0__"]:
        if col in table.column_names and table.num_rows:
            return str(table.column(col)[0].as_py())
    return ""


def _column(table: Any, name: str, rows: np.ndarray) -> np.ndarray:
    """A (fixed-size) list or scalar column as a numpy array (n, ...) of the selected rows."""
    import pyarrow as pa

    col = table.column(name).combine_chunks()
    n = len(col)
    shape: list[int] = []
    while pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type) or pa.types.is_large_list(col.type):
        flat = col.flatten()
        if n and len(flat) % (n * int(np.prod(shape or [1]))):
            raise DatasetError(f"column {name} holds lists of different lengths")
        shape.append(len(flat) // (n * int(np.prod(shape or [1]))) if n else 0)
        col = flat
    values = col.to_numpy(zero_copy_only=False)
    return values.reshape(n, *shape)[rows]


class _Frames:
    """Decodes one video file after another with PyAV, episode by episode (sequential reads need no seek)."""

    def __init__(self, src: Path, pattern: str, key: str):
        self.src, self.pattern, self.key = src, pattern, key
        self.container = None
        self.path: Path | None = None
        self.frames: Iterator[Any] | None = None
        self.last_t = -np.inf

    def _open(self, path: Path, from_ts: float) -> None:
        import av

        self.close()
        rel = path.relative_to(self.src)
        if not path.is_file():
            raise _bad(self.src, f"{rel} not found")
        try:
            self.container = av.open(str(path))
            stream = self.container.streams.video[0]
        except Exception as e:  # noqa: BLE001 - not a video file, no video stream
            raise _bad(self.src, f"{rel} is not a readable video ({type(e).__name__}: {e})") from None
        self.path, self.stream = path, stream
        if from_ts > 0:
            self.container.seek(int(from_ts / stream.time_base), stream=stream, backward=True, any_frame=False)
        self.frames = self.container.decode(stream)
        self.last_t = -np.inf

    def episode(self, path: Path, from_ts: float, n: int, fps: float) -> Iterator[tuple[int, np.ndarray]]:
        """(row, (H, W, 3) uint8) for the n rows from `from_ts` on; DatasetError if the video has fewer."""
        half = 0.5 / fps
        if path != self.path or from_ts - half < self.last_t:
            self._open(path, from_ts)
        rel = path.relative_to(self.src)
        got = 0
        try:
            for frame in self.frames:
                t = float(frame.pts * frame.time_base) if frame.pts is not None else float(frame.time)
                self.last_t = t
                if t < from_ts - half:
                    continue
                row = int(round((t - from_ts) * fps))
                if row < got:
                    continue  # a duplicate time stamp: keep the first
                if row > got:
                    raise _bad(self.src, f"{rel}: no frame at {from_ts + got / fps:.3f} s (row {got})")
                yield row, frame.to_ndarray(format="rgb24")
                got += 1
                if got == n:
                    return
        except DatasetError:
            raise
        except Exception as e:  # noqa: BLE001 - a damaged stream
            raise _bad(self.src, f"{rel} does not decode at {self.last_t:.3f} s ({type(e).__name__}: {e})") from None
        raise _bad(self.src, f"{rel} ends after {got} of the {n} frames from {from_ts:.3f} s")

    def close(self) -> None:
        if self.container is not None:
            self.container.close()
            self.container = None
            self.path = None


# ------------------------------------------------------------------------------------------------ the import


def _streams(info: dict[str, Any], export: dict[str, Any] | None, camera_key: str, state_dim: int, htouch_state: bool,
         audio: bool, fps: float) -> StreamSpecs:
    """The htouch rig that describes what the import holds: an htouch export's own rig when there is one (its
    camera size, audio and joint count), with the state and action rates the rows have (one per frame)."""
    shape = info["features"][camera_key]["shape"]
    height, width = int(shape[0]), int(shape[1])
    if export is not None:
        streams = StreamSpecs.from_dict(export["rig"])
    else:
        streams = StreamSpecs(name=str(info.get("robot_type") or "lerobot"),
                              description="imported from a LeRobot dataset", camera=CameraSpec(quality=95))
        streams.state = StateSpec(joint_unit="as in the LeRobot dataset")
    streams.camera.width, streams.camera.height, streams.camera.rate_hz = width, height, float(fps)
    streams.state.rate_hz = streams.action.rate_hz = float(fps)
    streams.state.n_joints = state_dim - 8 if htouch_state else state_dim
    if not audio:
        streams.audio = AudioSpec(channels=0, channel_names=[], device="")
    return streams


def _state_layout(info: dict[str, Any]) -> tuple[int, bool]:
    feat = info["features"].get(STATE_KEY)
    if not isinstance(feat, dict):
        raise DatasetError(f"the LeRobot dataset has no {STATE_KEY} feature; htouch episodes need a state")
    dim = int(np.prod(feat.get("shape", [0])))
    names = feat.get("names")
    htouch = (isinstance(names, list) and len(names) == dim and dim >= 9 and names[:7] == HTOUCH_STATE_POSE
              and names[-1] == "gripper_width")
    if dim < 1:
        raise DatasetError(f"{STATE_KEY} has shape {feat.get('shape')}; expected a vector")
    return dim, htouch


def _camera_key(info: dict[str, Any], requested: str | None) -> tuple[str, list[str]]:
    videos = [k for k, v in info["features"].items() if isinstance(v, dict) and v.get("dtype") == "video"]
    if requested:
        if requested not in videos:
            raise DatasetError(f"--camera {requested}: not a video feature of the dataset "
                               f"({', '.join(videos) or 'it has none'})")
        return requested, [k for k in videos if k != requested]
    if not videos:
        raise DatasetError("the LeRobot dataset has no video feature; htouch episodes need camera frames")
    key = CAMERA_KEY if CAMERA_KEY in videos else videos[0]
    return key, [k for k in videos if k != key]


def _split(episodes: list[dict[str, Any]], info: dict[str, Any], index_of: dict[int, int]) -> dict[str, Any] | None:
    """The split as `htouch split` stores it, from the export's `htouch/split` or info.json's `splits`."""
    named: dict[int, str] = {}
    if all("htouch/split" in r for r in episodes):
        named = {index_of[r["episode_index"]]: str(r["htouch/split"] or "") for r in episodes}
    elif isinstance(info.get("splits"), dict):
        for name, span in info["splits"].items():
            m = re.fullmatch(r"(\d+):(\d+)", str(span))
            if m:
                for e in range(int(m.group(1)), int(m.group(2))):
                    if e in index_of:
                        named[index_of[e]] = str(name)
    val = sorted(i for i, n in named.items() if n in ("val", "validation"))
    if not val:
        return None
    train = sorted(i for i, n in named.items() if n == "train")
    return {"rule": "imported from the LeRobot dataset's splits", "train": train, "val": val,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}


def import_lerobot(src: str | Path, out: str | Path, *, camera: str | None = None,
                   progress: Callable[[], None] | None = None) -> ImportReport:
    """Write the LeRobot v3.0 dataset at `src` as a new htouch dataset at `out` (which must not exist; it appears
    complete or not at all). camera: the video feature to import (default observation.images.camera, else the
    first). progress() is called after each episode. Raises DatasetError (one line naming the file) for a
    dataset htouch cannot import, HtouchError for an existing OUT."""
    start = time.perf_counter()
    src, out = Path(src), Path(out)
    if out.exists() or out.is_symlink():
        raise HtouchError(f"{out} already exists; import into a new path")
    info = read_info(src)
    fps = float(info["fps"])
    episodes = read_episodes(src)
    key, others = _camera_key(info, camera)
    state_dim, htouch_state = _state_layout(info)
    act = info["features"].get(ACTION_KEY)
    if not isinstance(act, dict) or int(np.prod(act.get("shape", [0]))) != ACTION_DIM:
        raise DatasetError(f"{src}: the action has shape {act.get('shape') if isinstance(act, dict) else None}; "
                           f"htouch's action is {ACTION_DIM} values (dx dy dz rx ry rz gripper)")
    export = None
    if (src / EXPORT_REPORT).is_file():
        try:
            export = json.loads((src / EXPORT_REPORT).read_text())
            StreamSpecs.from_dict(export["rig"])
        except (OSError, ValueError, KeyError, TypeError, DatasetError) as e:
            raise _bad(src, f"{EXPORT_REPORT} is unreadable ({e})") from None
    sidecars = [str(r.get("htouch/audio_sidecar") or "") for r in episodes]
    present = [bool(s) and _inside(src, src / s) and (src / s).is_file() for s in sidecars]
    audio = export is not None and all(present)
    if export is not None and any(present) and not audio:
        missing = next(s for s, p in zip(sidecars, present, strict=True) if not p)
        raise _bad(src, f"audio sidecar {missing} not found (the others are there)")
    if export is not None and not audio and (export.get("rig", {}).get("audio", {}).get("channels") or 0) > 0:
        notes = ["the export's audio sidecars are missing: imported without audio streams"]
    else:
        notes = []
    report = ImportReport(src=str(src), out=str(out), fps=int(round(fps)), camera_key=key, notes=notes,
                          audio="sidecar" if audio else "none", state_layout="htouch" if htouch_state else "joints")
    if others:
        report.notes.append(f"only {key} imported (htouch records one camera); left out: {', '.join(others)}")
    if not htouch_state:
        report.notes.append(f"{STATE_KEY} ({state_dim} values) imported as state/joints; ee_pose and gripper_width "
                            "were not measured (identity pose, 0)")
    streams = _streams(info, export, key, state_dim, htouch_state, audio, fps)
    task = str(export.get("task") or "") if export else ""
    task = task or _first_task(src) or "task"
    # htouch indices: the exported episode's own (an htouch export) when every one is known and unique.
    names = [parse_episode_name(str(r.get("htouch/episode") or "")) for r in episodes]
    if all(n is not None for n in names) and len(set(names)) == len(names):
        index_of = {r["episode_index"]: int(n) for r, n in zip(episodes, names, strict=True)}
    else:
        index_of = {r["episode_index"]: int(r["episode_index"]) for r in episodes}
    data_pattern, video_pattern = str(info["data_path"]), str(info["video_path"])

    with staged_output(out) as tmp:
        ds = Dataset.create(tmp, task, streams)
        frames = _Frames(src, video_pattern, key)
        table_path: Path | None = None
        table = None
        try:
            for r in sorted(episodes, key=lambda r: index_of[r["episode_index"]]):
                e = r["episode_index"]
                path = src / data_pattern.format(chunk_index=r["data/chunk_index"], file_index=r["data/file_index"])
                if path != table_path:
                    table, table_path = _read_parquet(src, path), path
                _import_episode(ds, src, info, r, table, path, frames, index_of[e], audio, htouch_state, report)
                if progress is not None:
                    progress()
        finally:
            frames.close()
        split = _split(episodes, info, index_of)
        ds.update_metadata(imported={
            "from": "lerobot", "codebase_version": CODEBASE_VERSION, "source": str(src.resolve()),
            "camera": key, "audio": report.audio, "state_layout": report.state_layout,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")},
            **({SPLIT_KEY: split} if split else {}))
        report.seconds = time.perf_counter() - start
        report.bytes_out = tree_bytes(tmp)
    report.bytes_in = tree_bytes(src)
    report.seconds = time.perf_counter() - start
    return report


def _import_episode(ds: Dataset, src: Path, info: dict[str, Any], r: dict[str, Any], table: Any, data_path: Path,
                    frames: _Frames, index: int, audio: bool, htouch_state: bool, report: ImportReport) -> None:
    e, n = int(r["episode_index"]), int(r["length"])
    fps = float(info["fps"])
    rel = data_path.relative_to(src)
    try:
        ep_col = table.column("episode_index").to_numpy()
        rows = np.flatnonzero(ep_col == e)
        if len(rows) != n:
            raise _bad(src, f"{rel} holds {len(rows)} rows of episode {e}; meta/episodes says {n}")
        order = np.argsort(_column(table, "frame_index", rows), kind="stable")
        rows = rows[order]
        timestamps = _column(table, "timestamp", rows).astype(np.float64).reshape(n)
        state = _column(table, STATE_KEY, rows).astype(np.float64).reshape(n, -1)
        action = _column(table, ACTION_KEY, rows).astype(np.float64).reshape(n, -1)
        frame_index = _column(table, "frame_index", rows).astype(np.int64).reshape(n)
        repeated = (_column(table, REPEATED_KEY, rows).astype(bool).reshape(n) if REPEATED_KEY in table.column_names
                    else np.zeros(n, bool))
        success_col = (_column(table, "next.success", rows).astype(bool).reshape(n)
                       if "next.success" in table.column_names else None)
    except KeyError as err:
        raise _bad(src, f"{rel} has no column {err}") from None
    except DatasetError as err:
        raise _bad(src, f"{rel}: {err}") from None
    if not np.isfinite(state).all() or not np.isfinite(action).all() or not np.isfinite(timestamps).all():
        raise _bad(src, f"{rel}: episode {e} holds NaN or infinite state, action or timestamp values")
    if n and (np.diff(timestamps) <= 0).any():
        raise _bad(src, f"{rel}: the timestamps of episode {e} do not increase")
    base = int(r["htouch/t0_ns"]) if r.get("htouch/t0_ns") is not None else 0
    times = base + np.round(timestamps * NS).astype(np.int64)
    success = r["htouch/success"] if "htouch/success" in r else (bool(success_col.any()) if success_col is not None
                                                                  else None)
    tasks = r.get("tasks") or []
    ep_info = {"imported_from": "lerobot", "lerobot_episode_index": e, "task": str(tasks[0]) if tasks else "",
               "source": str(src.resolve())}
    if not htouch_state:
        ep_info["state"] = "observation.state in state/joints; ee_pose and gripper_width not measured"
    key = frames.key
    video = src / str(info["video_path"]).format(video_key=key, chunk_index=r.get(f"videos/{key}/chunk_index", 0),
                                                 file_index=r.get(f"videos/{key}/file_index", 0))
    from_ts = float(r.get(f"videos/{key}/from_timestamp", 0.0) or 0.0)
    sidecar = None
    if audio:
        try:
            with np.load(src / r["htouch/audio_sidecar"], allow_pickle=False) as z:
                sidecar = {k: z[k] for k in z.files}
        except Exception as err:  # noqa: BLE001 - a damaged npz
            raise _bad(src, f"{r['htouch/audio_sidecar']} is unreadable ({type(err).__name__}: {err})") from None
        for group in (("block_offset", "block_timestamp_ns", "block_overflow"),
                      ("event_timestamp_ns", "event_kind", "event_detail")):
            lengths = {k: len(sidecar[k]) for k in group if k in sidecar}
            if len(lengths) != len(group) or len(set(lengths.values())) != 1:
                raise _bad(src, f"{r['htouch/audio_sidecar']}: {', '.join(group)} missing or of different lengths "
                           f"({lengths})")

    ds.update_metadata(next_episode_index=index)  # indices ascend, so the writer reserves exactly this one
    writer = ds.new_episode(variation=str(r.get("htouch/variation") or "default"), info=ep_info, blocking=True)
    with writer:
        h, w = ds.streams.camera.height, ds.streams.camera.width
        for row, image in frames.episode(video, from_ts, n, fps):
            if repeated[row]:
                continue
            if image.shape != (h, w, 3):
                raise _bad(src, f"{video.relative_to(src)}: frames of {image.shape[1]}x{image.shape[0]}; "
                           f"info.json says {w}x{h}")
            writer.camera(int(times[row]), int(frame_index[row]), image)
            report.frames += 1
        if htouch_state:
            for t, s in zip(times, state, strict=True):
                writer.state(int(t), s[:7], s[7:-1], float(s[-1]))
        else:
            for t, s in zip(times, state, strict=True):
                writer.state(int(t), IDENTITY_POSE, s, 0.0)
        for t, a in zip(times, action, strict=True):
            writer.action(int(t), a[:6], float(a[6]))
        if sidecar is not None:
            pcm, offsets = sidecar["pcm"], sidecar["block_offset"]
            ends = np.append(offsets[1:], len(pcm))
            blocks = zip(offsets, ends, sidecar["block_timestamp_ns"], sidecar["block_overflow"], strict=True)
            for lo, hi, t, over in blocks:
                writer.audio(int(t), pcm[lo:hi], overflow=bool(over))
            events = zip(sidecar["event_timestamp_ns"], sidecar["event_kind"], sidecar["event_detail"], strict=True)
            for t, kind, detail in events:
                writer.event(int(t), str(kind), **json.loads(str(detail)))
        elif n:
            writer.event(int(times[0]), "start")
            writer.event(int(times[-1]), "stop")
            if success is not None:
                writer.event(int(times[-1]), "success" if success else "failure")
        writer.commit(success=success)
    report.episodes += 1
    report.rows += n
