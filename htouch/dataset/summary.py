"""Per-episode figures for listings and inspection, computed from the stored time stamps."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from htouch.dataset.episode import NS, Episode


def measured_rate_hz(times_ns: np.ndarray) -> float:
    """Rows per second from the time stamps themselves (median period), 0 if fewer than two rows."""
    if len(times_ns) < 2:
        return 0.0
    period = float(np.median(np.diff(times_ns)))
    return NS / period if period > 0 else 0.0


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
    cam = ep.camera_times
    numbers = ep.read("camera/frame_number")
    dropped = int(np.sum(np.clip(np.diff(numbers) - 1, 0, None))) if len(numbers) > 1 else 0
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
    audio_len = ep.array("audio/pcm").shape[0]
    return EpisodeRow(index=ep.index, duration_s=ep.duration_s, frames=len(cam), fps=measured_rate_hz(cam),
                      audio_s=audio_len / ep.rig.audio.rate_hz, variation=ep.variation, success=ep.success,
                      flags=flags)
