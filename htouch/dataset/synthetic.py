"""A deterministic synthetic episode generator, for tests and the first demo before the simulated rig.

It writes through the real EpisodeWriter. What it writes is known exactly and returned as ground truth:
contact intervals (an impact transient at each onset, scraping noise while in contact, heard louder on
the microphones nearer the fingertips), dropped camera frames (frame numbers skipped), and optional audio
gaps (blocks never delivered, the next block flagged as overflow).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.spatial.transform import Rotation

from htouch.dataset.schema import NS, StreamSpecs
from htouch.dataset.store import Dataset

AUDIO_BLOCK = 320  # samples per delivered block (10 ms at 32 kHz)
MIC_GAINS = (1.0, 0.7, 0.5, 0.35)  # attenuation with distance from the fingertips
DC_OFFSETS = (12, -30, 5, 0)


@dataclass
class SyntheticEpisode:
    duration_s: float = 8.0
    seed: int = 0
    variation: str = "train"
    success: bool | None = True
    # (time s, frames lost) and (time s, duration s); contacts (onset s, end s, strength) or None = from seed
    frame_drops: tuple[tuple[float, int], ...] = ((2.0, 1), (5.0, 2))
    audio_gaps: tuple[tuple[float, float], ...] = ()
    contacts: tuple[tuple[float, float, float], ...] | None = None
    start_ns: int = 5_000 * NS
    audio_drift_ppm: float = 20.0


@dataclass
class GroundTruth:
    contacts: list[tuple[float, float, float]] = field(default_factory=list)
    dropped_frame_numbers: list[int] = field(default_factory=list)
    audio_gaps: list[tuple[float, float]] = field(default_factory=list)


def default_contacts(duration_s: float, rng: np.random.Generator) -> list[tuple[float, float, float]]:
    """A long sliding contact in the middle, a short tap near the end (times jittered by the seed)."""
    a = duration_s * (0.30 + 0.05 * rng.random())
    b = duration_s * (0.55 + 0.05 * rng.random())
    tap = duration_s * (0.78 + 0.04 * rng.random())
    return [(a, b, 1.0), (tap, tap + 0.12, 0.6)]


class SyntheticScene:
    """A table, a wall, a gripper and an object, drawn with numpy (enough to compress like a real view)."""

    def __init__(self, width: int, height: int, rng: np.random.Generator, variation: str):
        self.w, self.h = width, height
        y = np.linspace(0, 1, height)[:, None, None]
        wall = np.array([190, 195, 205]) if variation == "train" else np.array([150, 185, 160])
        table = np.array([150, 110, 70]) if variation == "train" else np.array([90, 90, 110])
        grain = gaussian_filter(rng.normal(0, 1, (height, width)), (0.7, 6.0))[..., None]
        base = np.where(y < 0.45, wall * (0.9 + 0.15 * y), table * (0.85 + 0.1 * grain))
        self.background = np.clip(base, 0, 255).astype(np.float32)
        self.object_color = np.array([200, 40, 40]) if variation == "train" else np.array([40, 60, 200])
        self.rng = rng

    def render(self, x: float, z: float, obj_x: float, opening: float) -> np.ndarray:
        img = self.background.copy()
        w, h = self.w, self.h
        # object on the table
        ox, oy = int(obj_x * w), int(0.62 * h)
        img[oy - h // 16: oy, max(ox - w // 20, 0): ox + w // 20] = self.object_color
        # gripper: a palm and two fingers, height z in [0, 1] above the table line
        gx, gy = int(x * w), int(0.62 * h - z * 0.4 * h)
        fw, fh, gap = max(w // 80, 1), h // 10, int(w // 40 * (0.4 + opening))
        img[max(gy - fh - h // 30, 0): max(gy - fh, 0), max(gx - gap - fw, 0): gx + gap + fw] = (70, 70, 75)
        for sx in (gx - gap - fw, gx + gap):
            img[max(gy - fh, 0): max(gy, 0), max(sx, 0): max(sx + fw, 0)] = (90, 90, 95)
        img += self.rng.normal(0, 2.0, img.shape).astype(np.float32)
        return np.clip(img, 0, 255).astype(np.uint8)


def trajectory(t: np.ndarray, duration: float, contacts: list[tuple[float, float, float]]):
    """Gripper x, height z, opening and object x at times t (s): approach, slide in contact, lift."""
    a, b = contacts[0][0], contacts[0][1]
    x = np.interp(t, [0, a, b, duration], [0.2, 0.4, 0.7, 0.75])
    z = np.interp(t, [0, a * 0.8, a, b, b + 0.2 * (duration - b), duration], [0.6, 0.1, 0.0, 0.0, 0.4, 0.4])
    opening = np.interp(t, [0, a * 0.9, a, b, duration], [1.0, 1.0, 0.3, 0.3, 0.3])
    obj_x = np.interp(t, [0, a, b, duration], [0.42, 0.42, 0.72, 0.72])
    return x, z, opening, obj_x


def _audio_chunk(t0: float, n: int, rate: float, contacts, speed_fn, rng: np.random.Generator) -> np.ndarray:
    """n samples (float counts, 4 channels) starting at episode time t0: hum, noise, contact sound."""
    t = t0 + np.arange(n) / rate
    freqs = np.fft.rfftfreq(n, 1 / rate)
    band = ((freqs > 800) & (freqs < 6000)).astype(float)
    scrape = np.fft.irfft(np.fft.rfft(rng.normal(0, 1, n)) * band, n) * 3.0
    in_contact = np.zeros(n)
    impact = np.zeros(n)
    for onset, end, strength in contacts:
        in_contact += strength * ((t >= onset) & (t < end))
        dt = t - onset
        live = (dt >= 0) & (dt < 0.05)
        impact[live] += strength * np.exp(-dt[live] / 0.006) * (
            np.sin(2 * np.pi * 2100 * dt[live]) + 0.5 * rng.normal(0, 1, live.sum()))
    speed = speed_fn(t)
    hum = 30 * speed * (np.sin(2 * np.pi * 100 * t) + 0.5 * np.sin(2 * np.pi * 200 * t))
    contact = 1500 * in_contact * (0.3 + speed) * scrape + 6000 * impact
    out = np.empty((n, 4))
    for c in range(4):
        out[:, c] = DC_OFFSETS[c] + hum + MIC_GAINS[c] * contact + rng.normal(0, 20, n)
    return out


def write_synthetic_episode(dataset: Dataset, cfg: SyntheticEpisode) -> tuple[int, GroundTruth]:
    """Write one synthetic episode into the dataset; returns its index and the ground truth."""
    streams: StreamSpecs = dataset.streams
    rng = np.random.default_rng(cfg.seed)
    dur = cfg.duration_s
    contacts = list(cfg.contacts) if cfg.contacts is not None else default_contacts(dur, rng)
    truth = GroundTruth(contacts=contacts, audio_gaps=list(cfg.audio_gaps))
    scene = SyntheticScene(streams.camera.width, streams.camera.height, rng, cfg.variation)

    def at(ts: np.ndarray):
        return trajectory(ts, dur, contacts)

    def speed_fn(ts: np.ndarray) -> np.ndarray:
        x1, z1, _, _ = at(ts)
        x2, z2, _, _ = at(ts + 0.01)
        return np.hypot(x2 - x1, z2 - z1) / 0.01 * 2.0

    def ns(seconds: float) -> int:
        return cfg.start_ns + int(round(seconds * NS))

    # Camera: jittered capture times, some frame numbers never delivered.
    period = 1 / streams.camera.rate_hz
    n_frames = int(dur / period)
    cam_t = np.arange(n_frames) * period + rng.normal(0, 0.0004, n_frames)
    dropped: set[int] = set()
    for t_drop, count in cfg.frame_drops:
        first = int(t_drop / period)
        dropped.update(range(first, min(first + count, n_frames)))
    truth.dropped_frame_numbers = sorted(dropped)

    # Audio: blocks of AUDIO_BLOCK samples whose device clock runs drift_ppm fast against the host.
    rate = streams.audio.rate_hz
    n_blocks = int(dur * rate / AUDIO_BLOCK)
    block_t = np.arange(n_blocks) * AUDIO_BLOCK / rate * (1 + cfg.audio_drift_ppm * 1e-6)
    lost = np.zeros(n_blocks, bool)
    for g0, glen in cfg.audio_gaps:
        lost |= (block_t >= g0) & (block_t < g0 + glen)

    state_t = np.arange(int(dur * streams.state.rate_hz)) / streams.state.rate_hz
    act_period = 1 / streams.action.rate_hz
    act_t = np.arange(int(dur / act_period)) * act_period + 0.004  # sent just after the frame
    tel_t = np.arange(int(dur * streams.teleop.rate_hz)) / streams.teleop.rate_hz

    def pose(ts: np.ndarray) -> np.ndarray:
        x, z, _, _ = at(ts)
        pos = np.stack([0.3 + 0.4 * x, np.zeros_like(x), 0.1 + 0.3 * z], axis=-1)
        quat = Rotation.from_euler("xyz", np.stack([np.pi + 0 * x, 0.1 * np.sin(ts), 0 * x], -1)).as_quat()
        return np.concatenate([pos, quat], axis=-1)

    writer = dataset.new_episode(variation=cfg.variation, info={"generator": "synthetic", "seed": cfg.seed},
                                 blocking=True)
    with writer:
        writer.event(ns(0), "start")
        for onset, end, strength in contacts:
            writer.event(ns(onset), "contact", end_s=round(end - onset, 4), strength=strength)
        chunk_len = int(rate)  # audio synthesised one second at a time
        chunk_cache: dict[int, np.ndarray] = {}
        cursors = dict(cam=0, blk=0, st=0, tel=0)
        overflow_next = False
        for ta in act_t:
            while cursors["cam"] < n_frames and cam_t[cursors["cam"]] <= ta:
                i = cursors["cam"]
                cursors["cam"] += 1
                if i in dropped:
                    if i - 1 not in dropped:
                        n_lost = next(j for j in range(i, n_frames + 1) if j not in dropped) - i
                        writer.event(ns(cam_t[i]), "frame_drop", count=n_lost)
                    continue
                x, z, opening, obj_x = (float(v[0]) for v in at(np.array([cam_t[i]])))
                writer.camera(ns(cam_t[i]), i, scene.render(x, z, obj_x, opening))
            while cursors["blk"] < n_blocks and block_t[cursors["blk"]] <= ta:
                b = cursors["blk"]
                cursors["blk"] += 1
                if lost[b]:
                    overflow_next = True
                    continue
                s0 = b * AUDIO_BLOCK
                c = s0 // chunk_len
                if c not in chunk_cache:
                    raw = _audio_chunk(c * chunk_len / rate, chunk_len, rate, contacts, speed_fn,
                                       np.random.default_rng([cfg.seed, c]))
                    chunk_cache = {c: np.clip(np.round(raw), -32768, 32767).astype(np.int16)}
                block = chunk_cache[c][s0 - c * chunk_len: s0 - c * chunk_len + AUDIO_BLOCK]
                if overflow_next:
                    writer.event(ns(block_t[b]), "audio_overflow")
                writer.audio(ns(block_t[b]), block, overflow=overflow_next)
                overflow_next = False
            while cursors["st"] < len(state_t) and state_t[cursors["st"]] <= ta:
                ts = state_t[cursors["st"]]
                cursors["st"] += 1
                _, _, opening, _ = at(np.array([ts]))
                joints = 0.3 * np.sin(ts * 0.5 + np.arange(streams.state.n_joints))
                writer.state(ns(ts), pose(np.array([ts]))[0], joints, 0.08 * float(opening[0]))
            while cursors["tel"] < len(tel_t) and tel_t[cursors["tel"]] <= ta:
                ts = tel_t[cursors["tel"]]
                cursors["tel"] += 1
                p = pose(np.array([ts]))[0]
                m = np.eye(4)
                m[:3, :3] = Rotation.from_quat(p[3:]).as_matrix()
                m[:3, 3] = p[:3] + (0.0, 0.2, 0.9)
                _, _, opening, _ = at(np.array([ts]))
                buttons = np.zeros(len(streams.teleop.button_names), bool)
                if "RG" in streams.teleop.button_names:
                    buttons[streams.teleop.button_names.index("RG")] = True
                analog = np.zeros(len(streams.teleop.analog_names), np.float32)
                analog[: min(2, len(analog))] = (1 - float(opening[0]), 1.0)[: min(2, len(analog))]
                writer.teleop(ns(ts), m, buttons, analog)
            p0, p1 = pose(np.array([ta, ta + act_period]))
            rot = (Rotation.from_quat(p1[3:]) * Rotation.from_quat(p0[3:]).inv()).as_rotvec()
            _, _, opening, _ = at(np.array([ta + act_period]))
            writer.action(ns(ta), np.concatenate([p1[:3] - p0[:3], rot]), float(opening[0]))
        writer.event(ns(dur), "stop")
        if cfg.success is not None:
            writer.event(ns(dur), "success" if cfg.success else "failure")
        writer.commit(success=cfg.success)
    return writer.index, truth


def write_synthetic_dataset(root, n_episodes: int, *, task: str = "zip", seconds: float = 8.0, seed: int = 0,
                            streams: StreamSpecs | None = None, progress=None) -> Dataset:
    """A dataset of n synthetic episodes: every fourth a failure, every third a `test` variation."""
    ds = Dataset.open_or_create(root, task, streams)
    for i in range(n_episodes):
        cfg = SyntheticEpisode(duration_s=seconds, seed=seed + i, success=(i % 4 != 3),
                               variation="test" if i % 3 == 2 else "train")
        write_synthetic_episode(ds, cfg)
        if progress is not None:
            progress(i + 1)
    return ds
