"""One figure of one episode, every panel on one time axis (seconds since the episode start).

From the top: a strip of frames spread over the episode, the events, each microphone's waveform (a min/max
envelope per audio block, so millions of samples become a few thousand points), the log-mel spectrogram of
the mono mix (the policy's own front end, over the whole episode), the commanded actions and the robot state.
Event times are drawn as vertical lines on every panel, so a contact can be followed from the image down
to the gripper.

Only the strip's frames are decoded. The figure is drawn with matplotlib's Agg canvas (no display, no
pyplot global state).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory

from htouch.dataset.audio import ClipParams, LogMelParams, mel_transform, spectrogram
from htouch.dataset.episode import Episode
from htouch.dataset.files import replacing
from htouch.dataset.schema import NS
from htouch.dataset.summary import EpisodeSummary, summarize
from htouch.errors import HtouchError

STRIP_FRAMES = 8
ENVELOPE_POINTS = 4000  # at most this many min/max bins per channel
STRIP_MAX_WIDTH = 320  # frames are subsampled to about this width before drawing
PLOT_STAGES = 5  # progress callbacks per plot: frames, waveforms, spectrogram, traces, saving

EVENT_COLORS = {
    "contact": "#e67e00", "frame_drop": "#d62728", "camera_stall": "#d62728", "audio_overflow": "#9467bd",
    "writer_queue_full": "#8c564b", "teleop_lost": "#8c564b", "robot_error": "#8c564b",
    "success": "#2ca02c", "failure": "#d62728", "start": "#7f7f7f", "stop": "#7f7f7f", "note": "#17becf",
}
TRACE_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c")


# ------------------------------------------------------------------------------------- data for the panels


@dataclass
class EpisodeSpectrogram:
    times_s: np.ndarray  # (T,) centre of each spectrogram frame, seconds since the episode start
    logmel: np.ndarray  # (n_mels, T)
    mel_hz: np.ndarray  # (n_mels,) centre frequency of each mel band
    params: LogMelParams


def audio_spectrogram(ep: Episode, params: LogMelParams | None = None) -> EpisodeSpectrogram:
    """Log-mel spectrogram of the whole episode's mono mix, placed by the audio block time stamps.

    The signal is gathered with the reader's own `audio_clip` (lost audio stays silent rather than
    shifting what follows), as one clip spanning all blocks, then passed to the policy's spectrogram.
    """
    params = params or LogMelParams()
    start_ns, _ = ep.time_range_ns()
    fb = mel_transform(params).mel_scale.fb.numpy()  # (n_freqs, n_mels): the filter bank the transform uses
    mel_hz = np.linspace(0, params.rate_hz / 2, fb.shape[0])[fb.argmax(axis=0)]
    offsets, times = ep.audio_block_offsets, ep.audio_block_times
    n_total = ep.audio_samples
    rate = ep.streams.audio.rate_hz
    if len(times) == 0 or n_total == 0:
        return EpisodeSpectrogram(np.zeros(0), np.zeros((params.n_mels, 0), np.float32), mel_hz, params)
    last_len = max(n_total - int(offsets[-1]), 1)
    t_end = int(times[-1] + (last_len - 1) * NS / rate)
    n_native = int(round((t_end - int(times[0])) * rate / NS)) + 1
    clip = ep.audio_clip(t_end, ClipParams(window_s=n_native / rate, rate_hz=params.rate_hz))
    logmel = spectrogram(clip, params.rate_hz, params)
    t0 = (t_end - (n_native - 1) * NS / rate - start_ns) / NS
    return EpisodeSpectrogram(t0 + np.arange(logmel.shape[1]) * params.hop / params.rate_hz, logmel, mel_hz,
                              params)


@dataclass
class AudioEnvelope:
    t0_s: np.ndarray  # (B,) start of each bin
    t1_s: np.ndarray  # (B,) end of each bin
    lo: np.ndarray  # (B, C) normalised minimum
    hi: np.ndarray  # (B, C) normalised maximum


def audio_envelope(ep: Episode, max_points: int = ENVELOPE_POINTS) -> AudioEnvelope:
    """Per-channel min/max of (x - center) / scale over runs of whole audio blocks, placed by block time."""
    spec = ep.streams.audio
    start_ns, _ = ep.time_range_ns()
    offsets, times = ep.audio_block_offsets, ep.audio_block_times
    pcm = ep.read("audio/pcm")
    n_total = pcm.shape[0]
    step = max(1, -(-len(offsets) // max_points))
    sel = np.arange(0, len(offsets), step)
    sel = sel[offsets[sel] < n_total]
    _, first = np.unique(offsets[sel], return_index=True)  # empty blocks share an offset: keep one
    sel = sel[first]
    if len(sel) == 0:
        empty = np.zeros((0, pcm.shape[1]))
        return AudioEnvelope(np.zeros(0), np.zeros(0), empty, empty)
    starts = offsets[sel]
    lo = np.minimum.reduceat(pcm, starts, axis=0).astype(np.float64)
    hi = np.maximum.reduceat(pcm, starts, axis=0).astype(np.float64)
    lengths = np.diff(np.append(starts, n_total))
    t0 = (times[sel] - start_ns) / NS
    return AudioEnvelope(t0, t0 + lengths / spec.rate_hz, (lo - spec.center) / spec.scale,
                         (hi - spec.center) / spec.scale)


def strip_frame_indices(camera_times: np.ndarray, start_ns: int, span_s: float, n: int = STRIP_FRAMES) -> np.ndarray:
    """The frames nearest the centres of n equal slices of the episode (fewer if the episode has fewer)."""
    if len(camera_times) == 0:
        return np.zeros(0, np.int64)
    targets = start_ns + (np.arange(n) + 0.5) / n * span_s * NS
    right = np.clip(np.searchsorted(camera_times, targets), 0, len(camera_times) - 1)
    left = np.clip(right - 1, 0, None)
    nearest = np.where(np.abs(camera_times[left] - targets) <= np.abs(camera_times[right] - targets), left, right)
    return np.unique(nearest)


# ------------------------------------------------------------------------------------------------- figure


def check_out_path(out: Path, canvas: FigureCanvasAgg) -> str:
    """The figure format for `out` (from its suffix); HtouchError if matplotlib cannot write it or its
    directory does not exist, checked before any drawing."""
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in canvas.get_supported_filetypes():
        raise HtouchError(f"cannot write a plot to {out}: use a file name ending in .png (or .pdf, .svg)")
    if not out.parent.is_dir():
        raise HtouchError(f"cannot write a plot to {out}: directory {out.parent} does not exist")
    return fmt


def _event_lines(ax, events, contact_spans) -> None:
    for t0, t1 in contact_spans:
        ax.axvspan(t0, t1, color=EVENT_COLORS["contact"], alpha=0.10, lw=0)
    for e in events:
        ax.axvline(e.t_s, color=EVENT_COLORS.get(e.kind, "#444444"), lw=0.9, alpha=0.75, zorder=3)


def _legend_outside(ax) -> None:
    ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=7, frameon=False, handlelength=1.2,
              borderaxespad=0.0)


def plot_episode(ep: Episode, out: str | os.PathLike[str], summary: EpisodeSummary | None = None,
                 n_frames: int = STRIP_FRAMES, progress: Callable[[], None] | None = None) -> Path:
    """Draw the episode figure into `out` (its suffix picks the format) and return the path written."""
    out = Path(out)
    tick = progress or (lambda: None)
    fig = Figure(dpi=100)
    canvas = FigureCanvasAgg(fig)
    fmt = check_out_path(out, canvas)
    summary = summary or summarize(ep)
    start_ns = summary.start_ns
    span = max([summary.duration_s, *(e.t_s for e in summary.events)], default=0.0) or 1.0
    streams = ep.streams

    # --- data ------------------------------------------------------------------------------------------
    cam = ep.camera_times
    frame_idx = strip_frame_indices(cam, start_ns, span, n_frames)
    rgb = ep.array("camera/rgb")
    stride = max(1, -(-streams.camera.width // STRIP_MAX_WIDTH))
    try:
        frames = [rgb[int(i)][::stride, ::stride] for i in frame_idx]
    except Exception as e:  # a frame that does not decode
        raise HtouchError(f"{ep.name}: camera/rgb cannot be read ({type(e).__name__}: {e})") from None
    tick()
    env = audio_envelope(ep)
    tick()
    mel = audio_spectrogram(ep)
    tick()
    st_t = (ep.state_times - start_ns) / NS
    act_t = (ep.action_times - start_ns) / NS
    ee = ep.read("state/ee_pose")
    width = ep.read("state/gripper_width")
    delta = ep.read("action/delta_ee")
    grip = ep.read("action/gripper")
    events = summary.events
    contact_spans = [(e.t_s, e.t_s + float(e.detail["end_s"])) for e in events
                     if e.kind == "contact" and isinstance(e.detail.get("end_s"), (int, float))]
    kinds = list(dict.fromkeys(e.kind for e in events))

    # --- layout (heights in inches; the strip's height keeps the frames' aspect ratio) ------------------
    fig_w, left, right = 16.0, 0.075, 0.905
    n_strip = max(len(frame_idx), 1)
    strip_h = fig_w * (right - left) / n_strip * streams.camera.height / streams.camera.width
    channels = [c.name for c in summary.audio.channels]
    heights = ([strip_h, 0.22 * max(len(kinds), 1) + 0.2] + [0.7] * len(channels)
               + [1.7, 1.0, 1.0, 0.8, 1.0])
    top_in, bottom_in, gap_in = 0.85, 0.55, 0.12
    fig_h = sum(heights) + top_in + bottom_in + gap_in * (len(heights) - 1)
    fig.set_size_inches(fig_w, fig_h)
    gs = fig.add_gridspec(len(heights), 1, height_ratios=heights, left=left, right=right,
                          top=1 - top_in / fig_h, bottom=bottom_in / fig_h,
                          hspace=gap_in / (sum(heights) / len(heights)))
    axes = [fig.add_subplot(gs[0])]
    axes += [fig.add_subplot(gs[i], sharex=axes[0]) for i in range(1, len(heights))]
    ax_strip, ax_ev = axes[0], axes[1]
    ax_ch = axes[2:2 + len(channels)]
    ax_mel, ax_dpos, ax_drot, ax_grip, ax_ee = axes[2 + len(channels):]

    # --- frames -----------------------------------------------------------------------------------------
    slot = span / n_strip
    for k, (i, img) in enumerate(zip(frame_idx, frames, strict=False)):
        c = (k + 0.5) * slot
        ax_strip.imshow(img, extent=(c - 0.48 * slot, c + 0.48 * slot, 0, 1), aspect="auto",
                        interpolation="antialiased")
        t = (cam[i] - start_ns) / NS
        ax_strip.plot([t], [0.0], marker="^", color="black", ms=6, clip_on=False, zorder=4)
        ax_strip.text(c, 0.04, f"{t:.2f} s", ha="center", va="bottom", fontsize=8, color="white",
                      bbox=dict(boxstyle="round,pad=0.15", fc="black", alpha=0.55, lw=0))
    if len(frame_idx) == 0:
        ax_strip.text(0.5, 0.5, "no camera frames", transform=ax_strip.transAxes, ha="center", va="center")
    ax_strip.set_ylim(0, 1)
    ax_strip.set_yticks([])
    ax_strip.set_ylabel("frames", rotation=0, ha="right", va="center")

    # --- events lane ------------------------------------------------------------------------------------
    for t0, t1 in contact_spans:
        y = kinds.index("contact")
        ax_ev.plot([t0, t1], [y, y], color=EVENT_COLORS["contact"], lw=5, alpha=0.35, solid_capstyle="butt")
    for e in events:
        y = kinds.index(e.kind)
        color = EVENT_COLORS.get(e.kind, "#444444")
        ax_ev.plot([e.t_s], [y], marker="|", ms=11, mew=2, color=color)
        if e.kind == "frame_drop" and "count" in e.detail:
            ax_ev.text(e.t_s, y, f" -{e.detail['count']}", fontsize=7, va="center", color=color)
    ax_ev.set_yticks(range(len(kinds)), kinds, fontsize=8)
    for label, kind in zip(ax_ev.get_yticklabels(), kinds, strict=False):
        label.set_color(EVENT_COLORS.get(kind, "#444444"))
    ax_ev.set_ylim(len(kinds) - 0.5, -0.5)
    if not kinds:
        ax_ev.set_yticks([])

    # --- audio waveforms ----------------------------------------------------------------------------------
    lost_audio: list[tuple[float, float]] = []
    if len(env.t0_s):
        x = np.stack([env.t0_s, env.t1_s], axis=1)
        gap = np.append(env.t0_s[1:] > env.t1_s[:-1] + 0.5 * np.median(env.t1_s - env.t0_s), False)
        lost_audio = [(float(env.t1_s[i]), float(env.t0_s[i + 1])) for i in np.flatnonzero(gap)]
    for c, (ax, name) in enumerate(zip(ax_ch, channels, strict=False)):
        ch = summary.audio.channels[c]
        if len(env.t0_s):
            lo = np.repeat(env.lo[:, c], 2).reshape(-1, 2)
            hi = np.repeat(env.hi[:, c], 2).reshape(-1, 2)
            # a NaN point after each bin followed by lost audio breaks the fill there
            xs, los, his = (np.concatenate([a, np.where(gap, np.nan, a[:, -1])[:, None]], axis=1).ravel()
                            for a in (x, lo, hi))
            ax.fill_between(xs, los, his, color="#34495e", lw=0.3, edgecolor="#34495e")
            lim = max(float(np.nanmax(np.abs([env.lo[:, c], env.hi[:, c]]))) * 1.15, 1e-3)
            if lim >= 0.9:
                lim = 1.05
                for y in (-1, 1):
                    ax.axhline(y, color="#d62728", lw=0.7, ls="--")
            ax.set_ylim(-lim, lim)
        ax.set_ylabel(name, rotation=0, ha="right", va="center")
        level = "silent" if ch.rms_dbfs is None else f"rms {ch.rms_dbfs:.0f} dBFS"
        peak = "" if ch.peak_dbfs is None else f"peak {ch.peak_dbfs:.0f} dBFS"
        clip_note = f", {ch.clipped} clipped" if ch.clipped else ""
        ax.text(1.005, 0.5, f"{level}\n{peak}{clip_note}", transform=ax.transAxes, fontsize=7, va="center",
                color="#d62728" if ch.clipped else "black")
        ax.tick_params(axis="y", labelsize=7)

    for ax in [*ax_ch, ax_mel]:
        for t0, t1 in lost_audio:
            ax.axvspan(t0, t1, facecolor="none", edgecolor="#999999", hatch="///", lw=0)
    for t0, t1 in lost_audio:
        if ax_ch and t1 - t0 > 0.03 * span:
            ax_ch[0].text((t0 + t1) / 2, 0.5, "no audio", transform=blended_transform_factory(
                ax_ch[0].transData, ax_ch[0].transAxes), ha="center", va="center", fontsize=7, color="#555555",
                bbox=dict(fc="white", lw=0, pad=1))

    # --- spectrogram ----------------------------------------------------------------------------------
    if mel.logmel.shape[1]:
        half = mel.params.hop / mel.params.rate_hz / 2
        finite = mel.logmel[mel.logmel > np.log(mel.params.log_eps) + 1]
        vmin, vmax = (np.percentile(finite, [5, 99.7]) if finite.size else (None, None))
        ax_mel.imshow(mel.logmel, origin="lower", aspect="auto", cmap="magma", vmin=vmin, vmax=vmax,
                      extent=(mel.times_s[0] - half, mel.times_s[-1] + half, 0, mel.logmel.shape[0]),
                       interpolation="nearest")
        marks = [f for f in (250, 500, 1000, 2000, 4000, 8000) if f <= mel.mel_hz[-1]]
        bins = [int(np.argmin(np.abs(mel.mel_hz - f))) + 0.5 for f in marks]
        ax_mel.set_yticks(bins, [f"{f / 1000:g}k" if f >= 1000 else str(f) for f in marks], fontsize=7)
    ax_mel.set_ylabel("log-mel\nmono (Hz)", rotation=0, ha="right", va="center")

    # --- actions and state ----------------------------------------------------------------------------------
    def traces(ax, t, ys, names, ylabel):
        for y, name, color in zip(ys.T, names, TRACE_COLORS, strict=False):
            ax.plot(t, y, lw=1.0, color=color, label=name)
        ax.set_ylabel(ylabel, rotation=0, ha="right", va="center")
        ax.tick_params(axis="y", labelsize=7)
        _legend_outside(ax)

    traces(ax_dpos, act_t, delta[:, :3] * 1e3, ["dx", "dy", "dz"], "action Δpos\n(mm/step)")
    traces(ax_drot, act_t, delta[:, 3:6] * 1e3, ["droll", "dpitch", "dyaw"], "action Δrot\n(mrad/step)")
    ax_grip.plot(act_t, grip, color=TRACE_COLORS[0], lw=1.2, label="command (0-1)")
    ax_grip.set_ylim(-0.05, 1.05)
    ax_grip.set_ylabel("gripper", rotation=0, ha="right", va="center")
    ax_grip.tick_params(axis="y", labelsize=7, colors=TRACE_COLORS[0])
    ax_w = ax_grip.twinx()
    ax_w.plot(st_t, width * 1e3, color=TRACE_COLORS[1], lw=1.2, label="width (mm)")
    ax_w.tick_params(axis="y", labelsize=7, colors=TRACE_COLORS[1])
    handles = ax_grip.get_legend_handles_labels()[0] + ax_w.get_legend_handles_labels()[0]
    ax_grip.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.035, 1.0), fontsize=7, frameon=False,
                   handlelength=1.2, borderaxespad=0.0)
    traces(ax_ee, st_t, ee[:, :3], ["x", "y", "z"], "state EE\nposition (m)")

    # --- shared decorations ----------------------------------------------------------------------------------
    for ax in axes:
        # the frames stay unshaded and ungridded; the event lines still cross them
        _event_lines(ax, events, [] if ax is ax_strip else contact_spans)
        if ax is not ax_strip:
            ax.grid(axis="x", color="#dddddd", lw=0.6)
            ax.set_axisbelow(True)
        if ax is not axes[-1]:
            ax.tick_params(axis="x", labelbottom=False)
    ax_ee.set_xlim(-0.01 * span, 1.01 * span)  # events at the very start and end stay visible
    ax_ee.set_xlabel("time since episode start (s)")
    ax_ee.tick_params(axis="x", labelsize=8)
    cam_s = summary.camera
    aud = summary.audio
    clipped = sum(c.clipped for c in aud.channels)
    title = (f"{summary.episode}  ·  {summary.label}  ·  variation {summary.variation}  ·  "
             f"{summary.duration_s:.2f} s" + (f"  ·  task {summary.task}" if summary.task else ""))
    facts = (f"camera {cam_s.frames} frames, {cam_s.dropped} dropped   ·   audio {aud.seconds:.2f} s, "
             f"{aud.overflow_blocks} overflow blocks, {clipped} clipped samples   ·   "
             f"log-mel {mel.params.n_mels} bands, hop {mel.params.hop / mel.params.rate_hz * 1e3:g} ms")
    fig.text(left, 1 - 0.18 / fig_h, title, fontsize=13, weight="bold", va="top")
    fig.text(left, 1 - 0.45 / fig_h, facts, fontsize=9, va="top", color="#333333")
    tick()

    try:
        with replacing(out) as tmp:
            fig.savefig(tmp, format=fmt)
    except OSError as e:
        raise HtouchError(f"cannot write a plot to {out}: {e.strerror or e}") from None
    tick()
    return out
