"""An episode as an MP4 a person can watch and hear: the camera frames with the contact audio, mixed to mono.

Frames are placed by their time stamps (a dropped frame leaves the previous one on screen for longer;
nothing is invented or shifted), and the audio by its block time stamps relative to the first frame
(gaps stay silent). The audio is normalised with the rig's AudioSpec (center, scale) and, by default,
raised so that its loudest sample sits at -1 dBFS: contact microphones are often quiet to the ear. H.264
(libx264) when PyAV has it, else MPEG-4 part 2; AAC audio.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from htouch.dataset.episode import Episode
from htouch.dataset.schema import NS
from htouch.errors import DatasetError, HtouchError

VIDEO_TIME_BASE = Fraction(1, 1000)  # frame time stamps in ms: enough for any camera rate
AUDIO_FRAME = 1024  # samples per encoded audio frame (AAC's frame size)
TARGET_PEAK_DBFS = -1.0
MAX_GAIN_DB = 40.0  # never raise the noise floor of a silent episode beyond this
FRAME_BATCH = 32  # frames decoded from the store at a time


@dataclass
class VideoInfo:
    path: Path
    frames: int
    duration_s: float
    fps: float  # measured camera rate (frames over their span), the stream's nominal rate
    video_codec: str
    audio_codec: str | None
    audio_gain_db: float | None  # applied on top of the AudioSpec normalisation


def _codec(names: tuple[str, ...]) -> str:
    import av

    for name in names:
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # noqa: BLE001 - PyAV raises different errors for an unknown codec across versions
            continue
    raise HtouchError(f"PyAV has none of the encoders {', '.join(names)}")


def audio_track(ep: Episode, t0_ns: int, t1_ns: int) -> tuple[np.ndarray, int]:
    """The episode's audio between t0 and t1 on one time line at the native rate (silence where no block), every
    channel, normalised with the AudioSpec: (samples (n, channels) float32, rate). Each block is placed by its
    first sample's time stamp, so gaps stay silent and nothing is shifted."""
    spec = ep.streams.audio
    rate = int(round(spec.rate_hz))
    n = max(int(round((t1_ns - t0_ns) * rate / NS)), 0)
    out = np.zeros((n, spec.channels), dtype=np.float32)
    offsets, times = ep.audio_block_offsets, ep.audio_block_times
    if not len(offsets) or n == 0:
        return out, rate
    pcm = ep.read("audio/pcm")
    ends = np.append(offsets[1:], len(pcm))
    norm = (pcm.astype(np.float32) - np.float32(spec.center)) / np.float32(spec.scale)
    for start, end, t in zip(offsets, ends, times, strict=True):
        at = int(round((int(t) - t0_ns) * rate / NS))  # where this block's first sample goes
        lo, hi = max(at, 0), min(at + int(end - start), n)
        if hi > lo:
            out[lo:hi] = norm[start + (lo - at): start + (hi - at)]
    return out, rate


def mono_track(ep: Episode, t0_ns: int, t1_ns: int) -> tuple[np.ndarray, int]:
    """The episode's audio between t0 and t1 on one time line (silence where no block), mono, normalised
    with the AudioSpec: (samples float32, rate)."""
    track, rate = audio_track(ep, t0_ns, t1_ns)
    return (track.mean(axis=1) if track.shape[1] else np.zeros(len(track), np.float32)), rate


def export_video(ep: Episode, out: str | Path, *, normalize: bool = True, crf: int = 20,
                 progress: Callable[[int], None] | None = None) -> VideoInfo:
    """Write the episode to `out` (MP4). progress(n) is called with the number of frames written so far."""
    import av

    out = Path(out)
    times = ep.camera_times
    if len(times) == 0:
        raise DatasetError(f"{ep.name} has no camera frames to make a video of")
    rgb = ep.array("camera/rgb")
    height, width = rgb.shape[1], rgb.shape[2]
    even_h, even_w = height - height % 2, width - width % 2  # yuv420p needs even sizes
    if even_h < 2 or even_w < 2:
        raise DatasetError(f"{ep.name}: frames of {width}x{height} are too small for a video")
    t0 = int(times[0])
    span = int(times[-1]) - t0
    fps = (len(times) - 1) * NS / span if len(times) > 1 and span > 0 else float(ep.streams.camera.rate_hz)
    end_ns = int(times[-1]) + int(NS / fps)  # the last frame is shown for one period

    track, rate = mono_track(ep, t0, end_ns)
    gain_db = None
    if normalize and len(track):
        peak = float(np.max(np.abs(track)))
        gain_db = float(min(TARGET_PEAK_DBFS - 20 * np.log10(peak), MAX_GAIN_DB)) if peak > 0 else 0.0
        track = track * np.float32(10 ** (gain_db / 20))
    track = np.clip(track, -1.0, 1.0)

    out.parent.mkdir(parents=True, exist_ok=True)
    video_codec = _codec(("libx264", "mpeg4"))
    audio_codec = _codec(("aac", "libmp3lame", "libopus")) if len(track) else None
    try:
        container = av.open(str(out), mode="w")
    except (OSError, av.error.FFmpegError) as e:
        raise HtouchError(f"cannot write {out}: {e}") from None
    try:
        vstream = container.add_stream(video_codec, rate=Fraction(fps).limit_denominator(1000))
        vstream.width, vstream.height, vstream.pix_fmt = even_w, even_h, "yuv420p"
        vstream.codec_context.time_base = VIDEO_TIME_BASE
        if video_codec == "libx264":
            vstream.options = {"crf": str(crf), "preset": "veryfast"}
        else:
            vstream.bit_rate = 4_000_000
        astream = None
        if audio_codec is not None:
            astream = container.add_stream(audio_codec, rate=rate)
            astream.layout = "mono"

        last_pts = -1
        for start in range(0, len(times), FRAME_BATCH):
            batch = rgb[start: start + FRAME_BATCH]
            for i, image in enumerate(batch):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[:even_h, :even_w]), format="rgb24")
                pts = int(round((int(times[start + i]) - t0) / NS / VIDEO_TIME_BASE))
                frame.pts = max(pts, last_pts + 1)  # two frames within a millisecond: keep both, in order
                frame.time_base = VIDEO_TIME_BASE
                last_pts = frame.pts
                container.mux(vstream.encode(frame))
            if progress is not None:
                progress(min(start + FRAME_BATCH, len(times)))
        container.mux(vstream.encode(None))

        if astream is not None:
            frame_size = astream.codec_context.frame_size or AUDIO_FRAME
            for start in range(0, len(track), frame_size):
                chunk = track[start: start + frame_size]
                if len(chunk) < frame_size:
                    chunk = np.pad(chunk, (0, frame_size - len(chunk)))
                aframe = av.AudioFrame.from_ndarray(chunk[None, :].astype(np.float32), format="fltp", layout="mono")
                aframe.sample_rate = rate
                aframe.pts = start
                aframe.time_base = Fraction(1, rate)
                container.mux(astream.encode(aframe))
            container.mux(astream.encode(None))
    finally:
        container.close()
    return VideoInfo(out, len(times), (end_ns - t0) / NS, fps, video_codec, audio_codec, gain_db)
