"""Per-episode figures for listings and inspection, computed from the stored time stamps.

`episode_row` is the cheap one-line view for `htouch ls`; `summarize` is the full view for `htouch inspect`:
measured rates against the rig's nominal ones, camera drops, audio levels per channel, and the events.
Nothing here reads camera frames, so both stay fast on long episodes.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from htouch.dataset.episode import Episode
from htouch.dataset.schema import NS, TIMED_AXES
from htouch.errors import DatasetError

# PCM rows read at a time when computing levels, so memory stays bounded on long episodes.
_PCM_ROWS_PER_READ = 1 << 20


def measured_rate_hz(times_ns: np.ndarray) -> float:
    """Rows per second from the time stamps themselves, 0 if fewer than two rows.

    The mean period over the intervals no longer than 1.5x the median one: gaps (drops, stalls) are
    left out, since they are reported on their own, but alternating periods average out. A 72 Hz teleop
    sampled by a 30 Hz loop (2 or 3 device periods) or a simulation whose physics step does not divide
    the frame period (32 and 34 ms) measures 30 Hz, not the median's 36 or 29.4 Hz."""
    if len(times_ns) < 2:
        return 0.0
    periods = np.diff(np.asarray(times_ns, dtype=np.int64)).astype(float)
    median = float(np.median(periods))
    if median <= 0:
        return 0.0
    period = float(np.mean(periods[periods <= 1.5 * median]))
    return NS / period


def dropped_frames(frame_numbers: np.ndarray) -> int:
    """Frames the device counted but never delivered: the sum of the frame-number jumps beyond 1."""
    if len(frame_numbers) < 2:
        return 0
    return int(np.sum(np.clip(np.diff(frame_numbers) - 1, 0, None)))


def audio_sample_rate_hz(offsets: np.ndarray, times_ns: np.ndarray, overflow: np.ndarray) -> float:
    """Samples per second of host time, over consecutive blocks with no reported loss between them.

    Summing samples and durations (rather than a median of per-block ratios) cancels time stamp jitter,
    so the result shows the device clock's drift against the host.
    """
    if len(times_ns) < 2:
        return 0.0
    n, dt = np.diff(offsets), np.diff(times_ns)
    keep = ~np.asarray(overflow[1:], bool) & (dt > 0)
    if not keep.any():
        return 0.0
    return float(NS * n[keep].sum() / dt[keep].sum())


@dataclass
class EpisodeRow:
    index: int
    duration_s: float
    frames: int
    fps: float
    audio_s: float
    variation: str
    success: bool | None
    flags: list[str] = field(default_factory=list)


def episode_row(ep: Episode) -> EpisodeRow:
    """One line of `htouch ls`: duration, frames, measured fps, audio seconds, labels and flags."""
    cam = ep.camera_times
    dropped = dropped_frames(ep.read("camera/frame_number"))
    kinds = Counter(e["kind"] for e in ep.events())
    flags = []
    if dropped:
        flags.append(f"{dropped} drops")
    if kinds["audio_overflow"]:
        flags.append(f"{kinds['audio_overflow']} overflows")
    if kinds["writer_queue_full"]:
        flags.append("writer queue full")
    if ep.attrs.get("salvaged"):
        flags.append("salvaged")
    return EpisodeRow(index=ep.index, duration_s=ep.duration_s, frames=len(cam), fps=measured_rate_hz(cam),
                      audio_s=ep.audio_samples / ep.streams.audio.rate_hz, variation=ep.variation, success=ep.success,
                      flags=flags)


# ------------------------------------------------------------------------------------------ full summary


@dataclass
class StreamSummary:
    stream: str
    rows: int
    rows_name: str  # what a row is: frames, blocks, rows
    rate_of: str  # what the rate counts: the rows, or (audio) the samples
    rate_hz: float  # measured from the time stamps (0 with fewer than two rows)
    nominal_hz: float  # from the stream specs
    deviation_pct: float | None  # (measured - nominal) / nominal; None if either is unknown
    first_s: float | None  # relative to the episode start
    last_s: float | None
    max_gap_s: float | None  # largest interval between consecutive time stamps


@dataclass
class CameraSummary:
    frames: int
    dropped: int
    largest_gap_s: float | None
    width: int
    height: int


@dataclass
class ChannelSummary:
    name: str
    rms_dbfs: float | None  # RMS of (x - center) / scale in dB; None for silence
    peak_dbfs: float | None
    clipped: int  # samples at the int16 extremes
    dc_offset: float  # mean - center, in the rig's unit (adc counts)


@dataclass
class AudioSummary:
    seconds: float  # stored samples / nominal rate
    blocks: int
    overflow_blocks: int
    rate_hz: float
    unit: str
    channels: list[ChannelSummary]


@dataclass
class EventSummary:
    t_s: float  # relative to the episode start
    kind: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class EpisodeSummary:
    episode: str
    index: int
    path: str
    task: str | None
    label: str  # success, failure or unlabelled
    success: bool | None
    variation: str
    start_ns: int
    duration_s: float
    streams: list[StreamSummary]
    camera: CameraSummary
    audio: AudioSummary
    events: list[EventSummary]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def stream(self, name: str) -> StreamSummary:
        return next(s for s in self.streams if s.stream == name)


def _db(x: float) -> float | None:
    return 20.0 * math.log10(x) if x > 0 else None


def _relative_s(t_ns: int, start_ns: int) -> float:
    return (int(t_ns) - start_ns) / NS


def _stream_summary(stream: str, times: np.ndarray, rate_hz: float, nominal: float, start_ns: int,
                    rate_of: str | None = None) -> StreamSummary:
    dev = (rate_hz - nominal) / nominal * 100.0 if nominal > 0 and rate_hz > 0 else None
    return StreamSummary(
        stream=stream, rows=len(times), rows_name=TIMED_AXES[stream], rate_of=rate_of or TIMED_AXES[stream],
        rate_hz=float(rate_hz), nominal_hz=float(nominal), deviation_pct=dev,
        first_s=_relative_s(times[0], start_ns) if len(times) else None,
        last_s=_relative_s(times[-1], start_ns) if len(times) else None,
        max_gap_s=float(np.diff(times).max()) / NS if len(times) > 1 else None)


def channel_levels(ep: Episode) -> list[ChannelSummary]:
    """Level, peak, clipping and DC offset of each microphone, read in bounded slices of the PCM."""
    spec = ep.streams.audio
    if not ep.has_audio:
        return []
    pcm = ep.array("audio/pcm")
    n, channels = pcm.shape[0], pcm.shape[1]
    lo, hi = np.iinfo(pcm.dtype).min, np.iinfo(pcm.dtype).max
    total = np.zeros(channels)
    squares = np.zeros(channels)
    peak = np.zeros(channels)
    clipped = np.zeros(channels, np.int64)
    for start in range(0, n, _PCM_ROWS_PER_READ):
        try:
            raw = pcm[start:start + _PCM_ROWS_PER_READ]
        except Exception as e:  # a chunk that does not decode
            raise DatasetError(f"{ep.name}: audio/pcm cannot be read ({type(e).__name__}: {e})") from None
        clipped += np.count_nonzero((raw == lo) | (raw == hi), axis=0)
        x = raw.astype(np.float64) - spec.center
        total += x.sum(axis=0)
        squares += np.square(x).sum(axis=0)
        peak = np.maximum(peak, np.abs(x).max(axis=0))
    names = list(spec.channel_names) + [f"ch{c}" for c in range(len(spec.channel_names), channels)]
    out = []
    for c in range(channels):
        rms = math.sqrt(squares[c] / n) if n else 0.0
        out.append(ChannelSummary(name=names[c], rms_dbfs=_db(rms / spec.scale), peak_dbfs=_db(peak[c] / spec.scale),
                                  clipped=int(clipped[c]), dc_offset=float(total[c] / n) if n else 0.0))
    return out


def summarize(ep: Episode) -> EpisodeSummary:
    """Everything `htouch inspect` reports about one episode (no camera frames are decoded)."""
    rig = ep.streams
    start_ns, _ = ep.time_range_ns()
    streams = []
    for stream in TIMED_AXES:
        if stream == "audio":
            continue
        times = ep.read(f"{stream}/timestamp_ns")
        streams.append(_stream_summary(stream, times, measured_rate_hz(times), rig.nominal_rate(stream), start_ns))
    offsets, block_times = ep.audio_block_offsets, ep.audio_block_times
    overflow = ep.read("audio/block_overflow")
    audio_rate = audio_sample_rate_hz(offsets, block_times, overflow)
    if ep.has_audio:  # a rig without microphones has no audio stream to summarise
        streams.insert(1, _stream_summary("audio", block_times, audio_rate, rig.nominal_rate("audio"), start_ns,
                                          rate_of="samples"))
    cam = ep.camera_times
    camera = CameraSummary(frames=len(cam), dropped=dropped_frames(ep.read("camera/frame_number")),
                           largest_gap_s=float(np.diff(cam).max()) / NS if len(cam) > 1 else None,
                           width=rig.camera.width, height=rig.camera.height)
    audio = AudioSummary(seconds=ep.audio_samples / rig.audio.rate_hz, blocks=len(block_times),
                         overflow_blocks=int(np.count_nonzero(overflow)), rate_hz=audio_rate, unit=rig.audio.unit,
                         channels=channel_levels(ep))
    events = [EventSummary(t_s=_relative_s(e["t_ns"], start_ns), kind=e["kind"], detail=e.get("detail", {}))
              for e in ep.events()]
    label = {True: "success", False: "failure"}.get(ep.success, "unlabelled")
    return EpisodeSummary(
        episode=ep.name, index=ep.index, path=str(ep.path), task=ep.dataset.task if ep.dataset else None,
        label=label, success=ep.success, variation=ep.variation, start_ns=int(start_ns),
        duration_s=float(ep.duration_s), streams=streams, camera=camera, audio=audio, events=events)
