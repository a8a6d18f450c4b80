"""What every export shares: the validation gate, the temporary output renamed into place, and the frame grid.

Formats such as LeRobot's and Diffusion Policy's store one row per frame on a fixed grid (row k is at k / fps),
while htouch stores every stream with its own measured time stamps. `frame_grid` is the one place that decides
which recorded frame, state and action each grid row holds, so that every export maps time the same way;
`episode_rows` fills the rows (state, action, audio window).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from htouch.dataset.audio import resample
from htouch.dataset.episode import Episode
from htouch.dataset.location import StoredPath
from htouch.dataset.schema import NS
from htouch.dataset.store import Dataset
from htouch.dataset.validate import ERROR, Report, validate_dataset
from htouch.dataset.video import MAX_GAIN_DB, TARGET_PEAK_DBFS, audio_track
from htouch.errors import DatasetError, HtouchError


def check_exportable(ds: Dataset) -> Report:
    """Validate the whole dataset (files against their checksums included); a dataset with any error is refused,
    because an export must not carry damaged data out where no validator looks at it again. Warnings (a dropped
    frame, clock drift) are normal and do not stop an export. Raises DatasetError (one line) on errors."""
    report = validate_dataset(ds)
    errors = [f for f in report.findings if f.severity == ERROR]
    if errors:
        f = errors[0]
        where = " ".join(p for p in (f.episode, f.path) if p)
        raise DatasetError(f"{ds.root} fails validation ({len(errors)} error(s)); the first: {where}: {f.check}: "
                           f"{f.message} (run htouch validate {ds.root})")
    if not report.episodes:
        raise DatasetError(f"{ds.root} has no committed episodes to export")
    return report


@contextlib.contextmanager
def staged_output(out: Path, directory: bool = True) -> Iterator[Path]:
    """A temporary path beside `out` (`.NAME.partial-<pid>`) to write the export into; it is renamed to `out`
    when the block ends without an error and removed otherwise, so `out` is either complete or absent.
    Refuses an `out` that exists (HtouchError). directory: the temporary path is created as a directory."""
    out = Path(out)
    if out.exists() or out.is_symlink():
        raise HtouchError(f"{out} already exists; export into a new path")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HtouchError(f"cannot create {out.parent}: {e.strerror}") from None
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    _remove(tmp)  # left by a killed export of this process id
    if directory:
        tmp.mkdir()
    try:
        yield tmp
        if out.exists() or out.is_symlink():
            raise HtouchError(f"{out} appeared while the export ran; the export is not written")
        os.rename(tmp, out)
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def check_uniform(ep: Episode, ds: Dataset) -> None:
    """The formats hold one shape per array across episodes: an episode recorded with another camera size, audio
    rate or channel count, or joint count than the dataset's rig is refused (DatasetError naming it)."""
    a, b = ep.streams, ds.streams
    rgb = ep.array("camera/rgb").shape
    mine = (rgb[2], rgb[1], a.audio.rate_hz, a.audio.channels, a.state.n_joints)
    want = (b.camera.width, b.camera.height, b.audio.rate_hz, b.audio.channels, b.state.n_joints)
    if mine != want:
        names = ("camera width", "camera height", "audio rate", "audio channels", "joints")
        diff = ", ".join(f"{n} {x} (dataset: {y})" for n, x, y in zip(names, mine, want, strict=True) if x != y)
        raise DatasetError(f"{ep.name} differs from the dataset's rig ({diff}); an export holds one shape per array: "
                           "export the episodes of each rig separately")


def export_fps(ds: Dataset) -> int:
    """The grid rate: the camera's nominal rate as a whole number of frames per second (the formats store an
    integer fps); the measured time stamps decide which frame each row shows, so a camera slightly off its
    nominal rate shows up as repeated or skipped frames in the report, not as a shifted time line."""
    rate = ds.streams.camera.rate_hz
    fps = int(round(rate))
    if fps < 1:
        raise DatasetError(f"{ds.root}: camera rate {rate} Hz cannot be exported on a whole-frame grid")
    return fps


@dataclass(frozen=True)
class Grid:
    """One episode's rows on the grid t_k = t0 + k / fps (t0 = the first frame's capture time), ns on the
    recording's clock. Index arrays point into the episode's camera, state and action arrays."""

    fps: int
    t0_ns: int
    times_ns: np.ndarray  # (n,) int64 t_k
    frame: np.ndarray  # (n,) the latest frame captured by t_k + half a period
    repeated: np.ndarray  # (n,) bool: the row repeats the previous row's frame (its own frame was dropped)
    state: np.ndarray  # (n,) the latest state at or before t_k (the first state before it exists)
    action: np.ndarray  # (n,) the first action commanded at or after t_k
    skipped_frames: int  # recorded frames no row shows (two captured within one period)
    trimmed_rows: int  # rows after the last action, left out (no action to go with them)

    def __len__(self) -> int:
        return len(self.times_ns)


def frame_grid(ep: Episode, fps: int) -> Grid:
    """Map the episode onto the grid: row k shows the latest frame captured by t_k + half a period (a dropped
    frame repeats the previous one), with the state at or before t_k and the action at or after t_k (htouch's
    own sampling rule, as in `Episode.sample`). Rows after the last action are left out and counted."""
    cam, states, actions = ep.camera_times, ep.state_times, ep.action_times
    if len(cam) == 0 or len(states) == 0 or len(actions) == 0:
        raise DatasetError(f"{ep.name}: needs camera frames, states and actions to export "
                           f"({len(cam)}, {len(states)}, {len(actions)})")
    t0 = int(cam[0])
    period = NS / fps
    n_all = int(np.floor((int(cam[-1]) - t0) / period + 0.5)) + 1
    times = t0 + np.round(np.arange(n_all) * period).astype(np.int64)
    keep = times <= int(actions[-1])
    times = times[keep]
    if len(times) == 0:
        raise DatasetError(f"{ep.name}: no action is commanded at or after its first frame; nothing to export")
    frame = np.searchsorted(cam, times + int(period // 2), side="right") - 1
    repeated = np.zeros(len(times), dtype=bool)
    repeated[1:] = frame[1:] == frame[:-1]
    state = np.clip(np.searchsorted(states, times, side="right") - 1, 0, None)
    action = np.searchsorted(actions, times, side="left")
    skipped = int(frame[-1] + 1 - len(np.unique(frame)))
    return Grid(fps, t0, times, frame, repeated, state, action, skipped, int(n_all - len(times)))


def grid_frames(ep: Episode, grid: Grid, batch: int = 32) -> Iterator[tuple[int, np.ndarray]]:
    """The frames the grid's rows show, `batch` rows at a time: (first row, (rows, H, W, 3) uint8), each recorded
    frame decoded once per batch. A chunk that no longer decodes raises DatasetError naming the episode."""
    rgb = ep.array("camera/rgb")
    for b in range(0, len(grid), batch):
        idx = grid.frame[b:b + batch]
        try:
            block = rgb[int(idx[0]):int(idx[-1]) + 1]
        except Exception as exc:  # noqa: BLE001 - a chunk damaged since the validation
            raise DatasetError(f"{ep.name}: camera/rgb cannot be read ({type(exc).__name__}: {exc})") from None
        yield b, block[idx - idx[0]]


AUDIO_RATES = (16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000)


def audio_rate_for(native_hz: float, fps: int) -> int:
    """The per-frame audio rate: the first common rate at or above the native one that gives a whole number of
    samples per frame (32 kHz at 30 fps -> 44.1 kHz, 1470 a frame; 48 kHz -> 1600); else the native rate rounded
    up to a multiple of fps."""
    native = int(np.ceil(native_hz))
    for rate in AUDIO_RATES:
        if rate >= native and rate % fps == 0:
            return rate
    return -(-native // fps) * fps


@dataclass
class EpisodeRows:
    """One episode on the grid: what every row holds, ready for any format."""

    grid: Grid
    state: np.ndarray  # (n, S) float32
    action: np.ndarray  # (n, 7) float32
    audio: np.ndarray  # (n, m, C) float32
    listen: np.ndarray  # (n * m,) mono track for the video's audio stream, raised for listening
    gain_db: float


def episode_rows(ep: Episode, fps: int, audio_rate: int) -> EpisodeRows:
    """The episode's rows: frame_grid's choice of state and action, and each row's audio window (t_k - 1/fps, t_k]
    at `audio_rate` (all channels, normalised; no channels for a rig without microphones); plus a mono listening
    track for a video's audio stream."""
    grid = frame_grid(ep, fps)
    n = len(grid)
    state = ep._state[grid.state].astype(np.float32)
    action = ep._actions[grid.action].astype(np.float32)
    m = audio_rate // fps
    if not ep.has_audio:  # a rig without microphones: windows of no channels, a silent listening track
        return EpisodeRows(grid, state, action, np.zeros((n, m, 0), np.float32), np.zeros(n * m, np.float32), 0.0)
    period = int(round(NS / fps))
    # (t_k - 1/fps, t_k] for every row: one track from t_0 - 1/fps to t_{n-1}, cut into n windows.
    track, native = audio_track(ep, grid.t0_ns - period, int(grid.times_ns[-1]))
    track = resample(track.T, native, audio_rate).T if len(track) else np.zeros((0, ep.streams.audio.channels))
    windows = np.zeros((n * m, ep.streams.audio.channels), dtype=np.float32)
    windows[:min(len(track), n * m)] = track[:n * m]
    audio = windows.reshape(n, m, -1)
    # What plays while frame k is on screen ([k, k+1) / fps) was recorded in (t_k, t_k+1]: row k+1's window.
    listen = np.concatenate([windows[m:].mean(axis=1), np.zeros(m, dtype=np.float32)])
    peak = float(np.max(np.abs(listen))) if len(listen) else 0.0
    gain_db = float(min(TARGET_PEAK_DBFS - 20 * np.log10(peak), MAX_GAIN_DB)) if peak > 0 else 0.0
    listen = np.clip(listen * np.float32(10 ** (gain_db / 20)), -1.0, 1.0)
    return EpisodeRows(grid, state, action, audio, listen, gain_db)


@dataclass
class ExportReport:
    """What an export wrote and how the recording's time stamps were mapped onto the grid."""

    format: str
    out: str
    fps: int
    episodes: int = 0
    rows: int = 0  # frames of the export (one per grid row)
    recorded_frames: int = 0  # frames in the htouch episodes
    repeated_frames: int = 0  # rows whose own frame was dropped: they repeat the previous frame
    skipped_frames: int = 0  # recorded frames no row shows (two within one period)
    trimmed_rows: int = 0  # grid rows after an episode's last action, left out
    video_codec: str = ""
    audio_rate_hz: int = 0
    audio_samples_per_frame: int = 0
    seconds: float = 0.0
    bytes_in: int = 0  # the htouch episodes exported
    bytes_out: int = 0
    notes: list[str] = field(default_factory=list)
    episode_map: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rows_per_s": self.rows_per_s}

    def add_episode(self, ep: Episode, grid: Grid, **details: Any) -> dict[str, Any]:
        """Count an exported episode; returns (and keeps in episode_map) its line: name, rows, t0, frame counts,
        label and `details`."""
        line = {"htouch_episode": ep.name, "rows": len(grid), "t0_ns": grid.t0_ns,
                "recorded_frames": len(ep.camera_times), "repeated_frames": int(grid.repeated.sum()),
                "skipped_frames": grid.skipped_frames, "trimmed_rows": grid.trimmed_rows, "success": ep.success,
                "variation": ep.variation, **details}
        self.episode_map.append(line)
        self.episodes += 1
        self.rows += len(grid)
        self.recorded_frames += line["recorded_frames"]
        self.repeated_frames += line["repeated_frames"]
        self.skipped_frames += grid.skipped_frames
        self.trimmed_rows += grid.trimmed_rows
        self.bytes_in += tree_bytes(ep.path)
        return line


def tree_bytes(path: Path) -> int:
    """Bytes of the files below `path` (or of the file itself)."""
    if isinstance(path, StoredPath):  # a URL, or a packed episode (the bytes of its members)
        return sum(size or 0 for size in path.files().values())
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
