#!/usr/bin/env python
"""Storage benchmark: writer throughput and caller latency, bytes and image quality, training-sample reads
(against the paper authors' file layout), the training inputs of the paper preset (today's decoding path, scaled
DCT decoding, the frame cache per sample and batched, the paper layout), and writer memory over a long episode.

Performance is measured here, not in timed tests. The machine may be shared, so the whole run (and its
subprocesses) is pinned to ONE core, ratios are measured within one run, and the conditions (load average,
the CPU share the pinned core actually gave us) are printed with the figures. All data goes into a temporary
directory that is removed at the end.

    .venv/bin/python tools/bench_store.py                # full run (~5-8 min), writes docs/benchmarks.md
    .venv/bin/python tools/bench_store.py --quick --out /tmp/bench.md   # smoke run
"""

from __future__ import annotations

import argparse
import datetime as dt
import inspect
import io
import json
import math
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
NS = 1_000_000_000
START_NS = 1_000 * NS
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")  # bundled in scikit-image's wheel, load offline
NOISE_SIGMA = 2.0  # sensor noise added to every frame (uint8 levels)
PACED_SPEED = 4.0  # the memory run's "paced" mode feeds at this multiple of real time (10 min must fit)
MAX_TICK_S = 1 / 30  # caller latency check: no tick's calls may take a whole camera period
TRAIN_BATCH = 32  # the training-input readers deliver batches of this many samples (the paper's batch size)
TRAIN_GOAL_TODAY, TRAIN_GOAL_PAPER = 10.0, 20.0  # goal speed-ups of the new path over today's path / the paper layout


@dataclass(frozen=True)
class Sizes:
    throughput_s: float  # recording written as fast as the writer accepts
    latency_s: float  # recording paced in real time (non-blocking writer)
    quality_s: float  # clip per codec setting
    candidate_frames: int  # frames for codecs the writer does not offer (measured directly)
    read_episode_s: float  # each of the 2 episodes sampled
    read_samples: int
    train_batches: int  # batches of TRAIN_BATCH random training samples (section 3b)
    memory_min: float
    pool_frames: int  # pre-generated frames, cycled


FULL = Sizes(throughput_s=60, latency_s=20, quality_s=10, candidate_frames=60, read_episode_s=60,
             read_samples=300, train_batches=20, memory_min=10, pool_frames=300)
QUICK = Sizes(throughput_s=5, latency_s=1.5, quality_s=2, candidate_frames=6, read_episode_s=6,
              read_samples=30, train_batches=2, memory_min=1, pool_frames=60)


# ------------------------------------------------------------------------------------------------ setup


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, for a report's conditions."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def elapsed_logger(console: Any) -> Callable[[str], None]:
    """log(msg): msg printed on a rich console after the seconds since this call."""
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        console.print(f"[dim]{time.perf_counter() - t_start:6.1f} s[/]  {msg}")

    return log


def chosen_cpu(ap: argparse.ArgumentParser, requested: int | None) -> int:
    """The core a benchmark pins itself to: --cpu, else the last one this process may use."""
    allowed = os.sched_getaffinity(0)
    cpu = requested if requested is not None else max(allowed)
    if cpu not in allowed:
        ap.error(f"--cpu {cpu} is not one of the cores this process may use ({sorted(allowed)})")
    return cpu


def pin_to_cpu(cpu: int) -> None:
    """Pin every thread of this process (numpy/BLAS start threads at import) and all future ones."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), {cpu})
        except OSError:
            pass  # a thread that has just exited
    os.sched_setaffinity(0, {cpu})


def proc_status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import peak_signal_noise_ratio

    if np.array_equal(a, b):
        return math.inf  # lossless
    return float(peak_signal_noise_ratio(a, b, data_range=255))


# ------------------------------------------------------------------------------------------------ data


class PhotoVideo:
    """A camera moving slowly over natural photographs, with sensor noise.

    The four photos are scaled to one height (16/15 of the frame height) and laid side by side. The video is
    four shots of equal length, one starting at each photo: the camera pans right at a tenth of the frame
    width per second, drifts vertically and zooms in and out by up to 10 %; then Gaussian noise (sigma 2)."""

    def __init__(self, width: int, height: int, seed: int = 0):
        import skimage.data
        from PIL import Image

        self.w, self.h, self.seed = width, height, seed
        ph = round(height * 16 / 15)
        parts = []
        for name in PHOTOS:
            im = Image.fromarray(getattr(skimage.data, name)())
            parts.append(im.resize((max(1, round(im.width * ph / im.height)), ph), Image.LANCZOS))
        self.scales = [ph / getattr(skimage.data, name)().shape[0] for name in PHOTOS]
        self.starts = np.cumsum([0] + [p.width for p in parts[:-1]])
        self.pano = Image.new("RGB", (sum(p.width for p in parts), ph))
        for x, p in zip(self.starts, parts, strict=True):
            self.pano.paste(p, (int(x), 0))

    def clean(self, i: int, n: int, rate: float = 30.0) -> np.ndarray:
        """Frame i of an n-frame video, before noise."""
        from PIL import Image

        shot_len = max(1, math.ceil(n / len(PHOTOS)))
        shot, t = i // shot_len, (i % shot_len) / rate
        zoom = 1.0 + 0.05 * (1 - math.cos(2 * math.pi * t / 5.0))
        cw, ch = self.w / zoom, self.h / zoom
        pw, ph = self.pano.size
        x0 = min(float(self.starts[shot % len(PHOTOS)]) + 0.1 * self.w * t, pw - cw)
        y0 = (ph - ch) / 2 * (1 + 0.8 * math.sin(2 * math.pi * t / 6.0))
        box = (x0, y0, x0 + cw, y0 + ch)
        return np.asarray(self.pano.resize((self.w, self.h), Image.BICUBIC, box=box))

    def frame(self, i: int, n: int) -> np.ndarray:
        noise = np.random.default_rng([self.seed, i]).standard_normal((self.h, self.w, 3), dtype=np.float32)
        return np.clip(self.clean(i, n) + NOISE_SIGMA * noise, 0, 255).astype(np.uint8)

    def pool(self, n: int) -> list[np.ndarray]:
        return [self.frame(i, n) for i in range(n)]


def synthetic_scene_pool(width: int, height: int, n: int, rate: float = 30.0) -> list[np.ndarray]:
    """Frames of htouch's synthetic generator (its table, wall, gripper and object, noise sigma 2)."""
    from htouch.dataset.synthetic import SyntheticScene, default_contacts, trajectory

    rng = np.random.default_rng(0)
    dur = n / rate
    contacts = default_contacts(dur, rng)
    scene = SyntheticScene(width, height, rng, "train")
    t = np.arange(n) / rate
    x, z, opening, obj_x = trajectory(t, dur, contacts)
    return [scene.render(float(x[i]), float(z[i]), float(obj_x[i]), float(opening[i])) for i in range(n)]


def audio_pool(rate: float, channels: int, seconds: float, seed: int = 0) -> np.ndarray:
    """Contact-microphone-like int16 audio: a noise floor (sigma 20 counts), mains hum, and band-limited
    scraping bursts (a third of the time), so it compresses like a recording rather than like silence."""
    from scipy.signal import butter, sosfilt

    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    sos = butter(4, [800, 6000], btype="band", fs=rate, output="sos")
    scrape = sosfilt(sos, rng.normal(0, 1, n)) * 1500 * (np.sin(2 * np.pi * t / 3.0) > 0.5)
    hum = 30 * np.sin(2 * np.pi * 100 * t)
    gains = np.linspace(1.0, 0.35, channels)
    out = hum[:, None] + scrape[:, None] * gains + rng.normal(0, 20, (n, channels))
    return np.clip(np.round(out), -32768, 32767).astype(np.int16)


@dataclass
class Recording:
    """Every row of a recording, generated before writing so that producing them is not measured.
    Frames and audio come from pools that are cycled; frame k is pool[(k + frame_offset) % len(pool)]."""

    streams: Any
    seconds: float
    frames: list[np.ndarray]
    audio: np.ndarray  # (pool samples, channels) int16
    frame_offset: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        from htouch.dataset.synthetic import AUDIO_BLOCK

        streams, rng = self.streams, np.random.default_rng(self.seed)
        self.block = AUDIO_BLOCK
        self.n = {"camera": int(self.seconds * streams.camera.rate_hz),
                  "audio": int(self.seconds * streams.audio.rate_hz / AUDIO_BLOCK),
                  "state": int(self.seconds * streams.state.rate_hz),
                  "action": int(self.seconds * streams.action.rate_hz),
                  "teleop": int(self.seconds * streams.teleop.rate_hz)}
        self.rate = {"camera": streams.camera.rate_hz, "audio": streams.audio.rate_hz / AUDIO_BLOCK,
                     "state": streams.state.rate_hz, "action": streams.action.rate_hz, "teleop": streams.teleop.rate_hz}
        ts = np.arange(self.n["state"]) / self.rate["state"]
        wave = lambda t, k: np.stack([np.sin(0.3 * (j + 1) * t + j) for j in range(k)], -1)  # noqa: E731
        self.ee_pose = np.concatenate([0.4 + 0.1 * wave(ts, 3), np.tile([1.0, 0, 0, 0], (len(ts), 1))], 1)
        self.ee_pose += rng.normal(0, 1e-5, self.ee_pose.shape)  # sensor noise, as the robot reports it
        self.joints = 0.3 * wave(ts, streams.state.n_joints) + rng.normal(0, 1e-5, (len(ts), streams.state.n_joints))
        self.gripper_width = 0.04 + 0.04 * np.sin(0.2 * ts)
        ta = np.arange(self.n["action"]) / self.rate["action"]
        self.delta_ee = 1e-3 * wave(ta, 6)
        self.gripper = (np.sin(0.2 * ta) > 0).astype(np.float64)
        tt = np.arange(self.n["teleop"]) / self.rate["teleop"]
        self.controller_pose = np.tile(np.eye(4), (len(tt), 1, 1))
        self.controller_pose[:, :3, 3] = wave(tt, 3) * 0.2 + rng.normal(0, 1e-4, (len(tt), 3))
        self.buttons = np.zeros((len(tt), len(streams.teleop.button_names)), bool)
        self.buttons[:, 0] = np.sin(0.2 * tt) > 0
        self.analog = (0.5 + 0.5 * wave(tt, len(streams.teleop.analog_names))).astype(np.float32)

    def time_ns(self, stream: str, i: int) -> int:
        return START_NS + round(i * NS / self.rate[stream])

    def frame(self, k: int) -> np.ndarray:
        return self.frames[(k + self.frame_offset) % len(self.frames)]

    def audio_block(self, b: int) -> np.ndarray:
        s = (b * self.block) % len(self.audio)
        return self.audio[s:s + self.block]

    def audio_samples(self) -> np.ndarray:
        """The whole recording's audio as one array (what the writer receives, block after block)."""
        n = self.n["audio"] * self.block
        return np.take(self.audio, np.arange(n) % len(self.audio), axis=0)

    def write(self, writer: Any, *, speed: float | None = None, tick_times: list[float] | None = None,
              on_tick: Callable[[int], None] | None = None) -> None:
        """Feed the rows tick by tick (one camera frame per tick, the other streams up to the next frame).
        speed: pace ticks at this multiple of real time (None: as fast as the writer accepts).
        tick_times: gets the time (s) each tick spent inside the writer's calls."""
        done = {s: 0 for s in self.n}
        n_ticks = self.n["camera"]
        cam_rate = self.rate["camera"]
        t_start = time.perf_counter()
        for k in range(n_ticks):
            if speed is not None:
                wait = t_start + k / cam_rate / speed - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
            last = k == n_ticks - 1  # the final tick takes every remaining row
            until = {s: self.n[s] if last else min(self.n[s], math.ceil((k + 1) * self.rate[s] / cam_rate))
                     for s in self.n}
            t0 = time.perf_counter()
            writer.camera(self.time_ns("camera", k), k, self.frame(k))
            for b in range(done["audio"], until["audio"]):
                writer.audio(self.time_ns("audio", b), self.audio_block(b))
            for i in range(done["state"], until["state"]):
                writer.state(self.time_ns("state", i), self.ee_pose[i], self.joints[i], self.gripper_width[i])
            for i in range(done["action"], until["action"]):
                writer.action(self.time_ns("action", i), self.delta_ee[i], self.gripper[i])
            for i in range(done["teleop"], until["teleop"]):
                writer.teleop(self.time_ns("teleop", i), self.controller_pose[i], self.buttons[i], self.analog[i])
            if tick_times is not None:
                tick_times.append(time.perf_counter() - t0)
            done = until
            if on_tick is not None:
                on_tick(k)


def new_dataset(root: Path, streams: Any) -> Any:
    from htouch.dataset.store import Dataset

    return Dataset.create(root, "bench", streams)


def write_episode(ds: Any, rec: Recording, **kw: Any) -> tuple[Path, Any]:
    writer = ds.new_episode(blocking=kw.pop("blocking", True), info={"generator": "bench_store"})
    rec.write(writer, **kw)
    return writer.commit(success=True), writer


# ------------------------------------------------------------------------------------------------ 1. writer


def bench_writer(tmp: Path, streams: Any, frames: list[np.ndarray], audio: np.ndarray, sizes: Sizes,
                 log: Callable[[str], None]) -> dict[str, Any]:
    rec = Recording(streams, sizes.throughput_s, frames, audio)
    ds = new_dataset(tmp / "throughput", streams)
    log(f"writer throughput: {sizes.throughput_s:g} s recording, blocking writer, as fast as it accepts")
    c0, t0 = cpu_seconds(), time.perf_counter()
    path, writer = write_episode(ds, rec)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    out: dict[str, Any] = {"seconds": rec.seconds, "wall_s": wall, "cpu_s": cpu, "x_realtime": rec.seconds / wall,
                           "x_realtime_cpu": rec.seconds / cpu, "cpu_share": cpu / wall,
                           "stream_bytes": {s: tree_bytes(path / s) for s in ("camera", "audio", "state", "action",
                                                                               "teleop", "events")},
                           "episode_bytes": tree_bytes(path), "dropped": writer.dropped}

    log(f"caller latency: {sizes.latency_s:g} s recording paced in real time, non-blocking writer")
    rec = Recording(streams, sizes.latency_s, frames, audio)
    ticks: list[float] = []
    _, writer = write_episode(ds, rec, blocking=False, speed=1.0, tick_times=ticks)
    ms = np.array(ticks) * 1e3
    out["latency"] = {"seconds": rec.seconds, "ticks": len(ms), "p50_ms": float(np.percentile(ms, 50)),
                      "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max()),
                      "dropped": sum(writer.dropped.values())}
    return out


def raw_bytes_per_s(streams: Any) -> dict[str, float]:
    """Uncompressed bytes per second of each stream, from the schema's arrays at the rig's nominal rates."""
    from htouch.dataset.schema import episode_arrays
    from htouch.dataset.synthetic import AUDIO_BLOCK

    rows = {"frames": streams.camera.rate_hz, "samples": streams.audio.rate_hz,
            "blocks": streams.audio.rate_hz / AUDIO_BLOCK}
    out: dict[str, float] = {}
    for a in episode_arrays(streams):
        if a.stream == "events":
            continue
        per_row = np.dtype(a.dtype).itemsize * int(np.prod(a.shape, dtype=np.int64))
        rate = rows.get(a.axis) or streams.nominal_rate(a.stream)
        out[a.stream] = out.get(a.stream, 0.0) + per_row * rate
    out["camera/rgb"] = streams.camera.width * streams.camera.height * 3 * streams.camera.rate_hz
    return out


# ------------------------------------------------------------------------------------------------ 2. quality


def bench_quality(tmp: Path, streams: Any, video: PhotoVideo, frames: list[np.ndarray], synth: list[np.ndarray],
                  audio: np.ndarray, sizes: Sizes, log: Callable[[str], None]) -> list[dict[str, Any]]:
    from htouch.dataset.episode import Episode

    n = int(sizes.quality_s * streams.camera.rate_hz)
    default_q = streams.camera.quality
    settings = [("photos", "jpeg", q) for q in sorted({80, 90, 95, default_q})] + [("photos", "png", None)]
    settings.append(("synthetic scene", "jpeg", default_q))
    raw_frame = streams.camera.width * streams.camera.height * 3
    rows = []
    for i, (video_name, codec, q) in enumerate(settings):
        pool = frames if video_name == "photos" else synth
        cam = replace(streams.camera, codec=codec, quality=q if q is not None else streams.camera.quality)
        qstreams = replace(streams, camera=cam)
        label = f"{codec} {q}" if q is not None else codec
        log(f"image quality: {video_name}, {label}, {n} frames")
        ds = new_dataset(tmp / f"quality{i}", qstreams)
        rec = Recording(qstreams, n / streams.camera.rate_hz, pool[:n], audio)
        t0 = time.perf_counter()
        path, _ = write_episode(ds, rec)
        wall = time.perf_counter() - t0
        stored = Episode(path).read("camera/rgb")
        p_noisy = [psnr(rec.frame(k), stored[k]) for k in range(n)]
        p_clean = [psnr(video.clean(k, len(frames)), stored[k]) for k in range(n)] if video_name == "photos" else []
        rgb_bytes = tree_bytes(path / "camera" / "rgb")
        rows.append({"video": video_name, "codec": codec, "quality": q, "label": label, "frames": n,
                     "bytes_per_frame": rgb_bytes / n, "ratio": rgb_bytes / (n * raw_frame),
                     "psnr_mean": float(np.mean(p_noisy)), "psnr_min": float(np.min(p_noisy)),
                     "psnr_clean": float(np.mean(p_clean)) if p_clean else None,
                     "x_realtime": rec.seconds / wall, "default": codec == streams.camera.codec and q == default_q})
    return rows


def bench_candidates(video: PhotoVideo, frames: list[np.ndarray], n: int,
                     log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Codecs the writer does not offer, measured with imagecodecs directly on the same frames, to show
    what a change of codec would buy (size, PSNR, single-core encode time)."""
    import imagecodecs

    cands = []
    if imagecodecs.JPEGXL.available:
        cands.append(("jpeg xl, distance 1, effort 3", lambda f: imagecodecs.jpegxl_encode(f, distance=1.0, effort=3),
                      imagecodecs.jpegxl_decode))
    if imagecodecs.AVIF.available:
        cands.append(("avif, level 75, speed 8", lambda f: imagecodecs.avif_encode(f, level=75, speed=8),
                      imagecodecs.avif_decode))
    step = max(1, len(frames) // n)
    picked = list(range(0, len(frames), step))[:n]
    rows = []
    for name, enc, dec in cands:
        log(f"candidate codec: {name}, {len(picked)} frames")
        size, enc_s, ps, pc = 0, 0.0, [], []
        for k in picked:
            t0 = time.perf_counter()
            blob = enc(frames[k])
            enc_s += time.perf_counter() - t0
            size += len(blob)
            back = dec(blob)
            ps.append(psnr(frames[k], back))
            pc.append(psnr(video.clean(k, len(frames)), back))
        rows.append({"label": name, "frames": len(picked), "ratio": size / (len(picked) * frames[0].nbytes),
                     "psnr_mean": float(np.mean(ps)), "psnr_clean": float(np.mean(pc)),
                     "encode_ms": enc_s / len(picked) * 1e3})
    return rows


# ------------------------------------------------------------------------------------------------ 3. reads


class PaperLayoutEpisode:
    """The paper authors' layout of one episode, generated from the same data:

        frames/000123.jpg   one JPEG per frame (the same encoder and quality as the Zarr store)
        frames.csv          frame_number,timestamp_ns
        audio.txt           one line per sample: the 4 channel values as integers, space separated
        audio_start_ns.txt  capture time of the first audio sample (the authors shifted clocks to start at 0)
        actions.csv         timestamp_ns,dx,dy,dz,droll,dpitch,dyaw,gripper

    Frame times and actions are loaded once per episode (as Episode caches its time stamps). Per sample the
    4 JPEG files are read and decoded and the H actions sliced; the 2 s of audio lines are reached by
    `audio_mode`: "index" (byte offsets of all lines computed once per episode, then one seek, one read and
    np.loadtxt of those lines), "skiprows" (np.loadtxt(skiprows=first, max_rows=n): numpy skips the lines
    before the clip) or "memory" (the whole file parsed once per episode, then sliced)."""

    AUDIO_MODES = ("index", "skiprows", "memory")

    def __init__(self, root: Path, streams: Any, audio_mode: str):
        self.root, self.streams, self.audio_mode = root, streams, audio_mode
        self.frame_times = np.loadtxt(root / "frames.csv", delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)[:, 1]
        acts = np.loadtxt(root / "actions.csv", delimiter=",", skiprows=1, ndmin=2)
        self.action_times, self.actions = acts[:, 0].astype(np.int64), acts[:, 1:]
        self.audio_t0 = int((root / "audio_start_ns.txt").read_text())
        self.audio_path = root / "audio.txt"
        if audio_mode == "index":
            data = np.frombuffer(self.audio_path.read_bytes(), np.uint8)
            self.line_offsets = np.concatenate([[0], np.flatnonzero(data == ord("\n")) + 1])
        elif audio_mode == "memory":
            self.audio = np.loadtxt(self.audio_path, dtype=np.int32, ndmin=2)
        self.parts = dict.fromkeys(("frames", "audio", "actions"), 0.0)

    @staticmethod
    def export(root: Path, rec: Recording, quality: int) -> None:
        import imagecodecs

        (root / "frames").mkdir(parents=True)
        encoded = {}
        with open(root / "frames.csv", "w") as f:
            f.write("frame_number,timestamp_ns\n")
            for k in range(rec.n["camera"]):
                p = (k + rec.frame_offset) % len(rec.frames)
                if p not in encoded:
                    encoded[p] = imagecodecs.jpeg8_encode(rec.frames[p], level=quality)
                (root / "frames" / f"{k:06d}.jpg").write_bytes(encoded[p])
                f.write(f"{k},{rec.time_ns('camera', k)}\n")
        np.savetxt(root / "audio.txt", rec.audio_samples(), fmt="%d")
        (root / "audio_start_ns.txt").write_text(str(rec.time_ns("audio", 0)))
        times = np.array([rec.time_ns("action", i) for i in range(rec.n["action"])])
        table = np.column_stack([times, rec.delta_ee, rec.gripper])
        np.savetxt(root / "actions.csv", table, delimiter=",", fmt=["%d"] + ["%.17g"] * 7,
                   header="timestamp_ns,dx,dy,dz,droll,dpitch,dyaw,gripper", comments="")

    def audio_lines(self, first: int, n: int) -> np.ndarray:
        if self.audio_mode == "memory":
            return self.audio[first:first + n]
        if self.audio_mode == "skiprows":
            return np.loadtxt(self.audio_path, dtype=np.int32, skiprows=first, max_rows=n, ndmin=2)
        with open(self.audio_path, "rb") as f:
            f.seek(int(self.line_offsets[first]))
            text = f.read(int(self.line_offsets[first + n] - self.line_offsets[first]))
        return np.loadtxt(io.BytesIO(text), dtype=np.int32, ndmin=2)

    def sample(self, t_ns: int, params: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        import imagecodecs

        from htouch.dataset.audio import resample

        t0 = time.perf_counter()
        targets = t_ns - np.round(np.linspace(params.frame_window_s, 0.0, params.n_frames) * NS).astype(np.int64)
        idx = np.clip(np.searchsorted(self.frame_times, targets, side="right") - 1, 0, None)
        frames = np.stack([imagecodecs.jpeg8_decode((self.root / "frames" / f"{i:06d}.jpg").read_bytes())
                           for i in idx])
        t1 = time.perf_counter()
        spec = self.streams.audio
        n = int(round(params.clip.window_s * spec.rate_hz))
        last = int(round((t_ns - self.audio_t0) * spec.rate_hz / NS))  # the sample captured at t
        raw = self.audio_lines(last - n + 1, n)
        mono = ((raw.mean(axis=1) - spec.center) / spec.scale).astype(np.float32)
        clip = resample(mono, spec.rate_hz, params.clip.rate_hz)
        t2 = time.perf_counter()
        a0 = int(np.searchsorted(self.action_times, t_ns, side="left"))
        actions = np.zeros((params.horizon, 7))
        chunk = self.actions[a0:a0 + params.horizon]
        actions[:len(chunk)] = chunk
        t3 = time.perf_counter()
        self.parts["frames"] += t1 - t0
        self.parts["audio"] += t2 - t1
        self.parts["actions"] += t3 - t2
        return frames, clip, actions.astype(np.float32)


class HtouchTimedParts:
    """Episode.sample's two costly parts timed apart (frames through the Zarr array, the audio clip),
    in a separate pass, to show where its time goes."""

    def __init__(self, episode: Any):
        self.ep = episode
        self.parts = dict.fromkeys(("frames", "audio", "actions"), 0.0)

    def sample(self, t_ns: int, params: Any) -> None:
        t0 = time.perf_counter()
        rgb = self.ep.array("camera/rgb")
        [rgb[int(i)] for i in np.unique(self.ep.frame_indices(t_ns, params))]
        t1 = time.perf_counter()
        self.ep.audio_clip(t_ns, params.clip)
        self.parts["frames"] += t1 - t0
        self.parts["audio"] += time.perf_counter() - t1


READ_LAYOUTS = {  # reader name: (layout, audio mode)
    "htouch": ("htouch", None),
    "paper, line index": ("paper", "index"),
    "paper, loadtxt skiprows": ("paper", "skiprows"),
    "htouch, preload_audio()": ("htouch", "memory"),
    "paper, audio.txt parsed once": ("paper", "memory"),
}


def bench_reads(tmp: Path, streams: Any, frames: list[np.ndarray], audio: np.ndarray, sizes: Sizes,
                log: Callable[[str], None]) -> dict[str, Any]:
    from htouch.dataset.episode import Episode, SampleParams

    params = SampleParams()
    ds = new_dataset(tmp / "reads", streams)
    readers: dict[str, list[Any]] = {name: [] for name in READ_LAYOUTS}
    setup_s = dict.fromkeys(READ_LAYOUTS, 0.0)
    htouch_bytes = paper_bytes = 0
    for e in range(2):
        rec = Recording(streams, sizes.read_episode_s, frames, audio, frame_offset=e * len(frames) // 3, seed=e)
        log(f"sample reads: writing episode {e + 1}/2 ({rec.seconds:g} s) and its paper-layout copy")
        path, _ = write_episode(ds, rec)
        proot = tmp / "paper_layout" / path.name
        PaperLayoutEpisode.export(proot, rec, streams.camera.quality)
        htouch_bytes += tree_bytes(path)
        paper_bytes += tree_bytes(proot)
        for name, (kind, mode) in READ_LAYOUTS.items():
            t0 = time.perf_counter()
            if kind == "htouch":
                ep = Episode(path, dataset=ds)
                if mode == "memory":
                    ep.preload_audio()
                readers[name].append(ep)
            else:
                readers[name].append(PaperLayoutEpisode(proot, streams, mode))
            setup_s[name] += time.perf_counter() - t0

    rng = np.random.default_rng(1)
    # samples with a whole window behind them (the paper-layout reader does not pad the episode start)
    window = int(max(params.frame_window_s, params.clip.window_s) * 1e9)
    times = []
    for ep in readers["htouch"]:
        t = ep.sample_times(params)
        times.append(t[t >= ep.camera_times[0] + window])
    picks = [(int(e), int(rng.choice(times[e]))) for e in rng.integers(0, 2, sizes.read_samples)]

    def read(name: str, e: int, t: int) -> Any:
        return readers[name][e].sample(t, params)

    # Same output from every layout, or the comparison means nothing. Frames and actions must be identical;
    # the audio clips must agree to 10 % of the clip's norm (a clip one sample off would differ by ~140 %).
    audio_diff = 0.0
    for e, t in picks[:5]:
        s = read("htouch", e, t)
        for name in READ_LAYOUTS:
            got = read(name, e, t)
            f, clip, act = (got.frames, got.audio, got.actions) if name.startswith("htouch") else got
            rel = float(np.linalg.norm(clip - s.audio) / max(np.linalg.norm(s.audio), 1e-12))
            audio_diff = max(audio_diff, rel)
            if not (np.array_equal(f, s.frames) and np.array_equal(act, s.actions) and rel < 0.1):
                raise RuntimeError(f"{name} returns a different sample than Episode.sample at t={t} "
                                   f"(audio differs by {rel:.1%})")

    log(f"sample reads: {len(picks)} random samples from each of {len(READ_LAYOUTS)} readers, taking turns")
    spent = dict.fromkeys(READ_LAYOUTS, 0.0)
    names = list(READ_LAYOUTS)
    for p in readers.values():
        for r in p:
            if isinstance(r, PaperLayoutEpisode):
                r.parts = dict.fromkeys(r.parts, 0.0)
    for j, (e, t) in enumerate(picks):
        for name in names[j % len(names):] + names[:j % len(names)]:  # rotate so none always goes first
            t0 = time.perf_counter()
            read(name, e, t)
            spent[name] += time.perf_counter() - t0
    parts: dict[str, list[Any]] = {}
    for name, rs in readers.items():
        parts[name] = [HtouchTimedParts(r) if isinstance(r, Episode) else r for r in rs]
        if isinstance(rs[0], Episode):
            for e, t in picks:
                parts[name][e].sample(t, params)
    breakdown = {name: {k: sum(p.parts[k] for p in ps) / len(picks) * 1e3 for k in ("frames", "audio", "actions")}
                 for name, ps in parts.items()}
    for name, (kind, _) in READ_LAYOUTS.items():
        if kind == "htouch":
            breakdown[name]["actions"] = math.nan  # not timed apart
    train = bench_training_inputs(ds, readers["htouch"], readers["paper, line index"], sizes, log)
    return {"train": train, "samples": len(picks), "episode_s": sizes.read_episode_s,
            "rates": {n: len(picks) / s for n, s in spent.items()}, "parts_ms": breakdown,
            "setup_ms": {n: s / 2 * 1e3 for n, s in setup_s.items()},
            "htouch_bytes": htouch_bytes, "paper_bytes": paper_bytes, "params": params, "audio_diff": audio_diff}


class PaperTrainingReader:
    """The paper layout as a training sample: its reader's frames resized as htouch's training resizes them and
    the spectrogram computed from its clip (audio.spectrogram, as a loader of that layout must)."""

    def __init__(self, paper: PaperLayoutEpisode, params: Any, size: int, spectrogram_params: Any):
        self.paper, self.params, self.size, self.spectrogram_params = paper, params, size, spectrogram_params

    def sample(self, t_ns: int) -> dict[str, Any]:
        import torch

        from htouch.dataset import audio
        from htouch.dataset.frames import resize_frames

        frames, clip, actions = self.paper.sample(t_ns, self.params)
        spectrogram = audio.spectrogram(clip, self.params.clip.rate_hz, self.spectrogram_params)
        return {"frames": resize_frames(frames, self.size), "spectrogram": torch.from_numpy(spectrogram),
                "actions": torch.from_numpy(actions)}


class ScaledDecodeReader:
    """Frames decoded at reduced size by libjpeg-turbo's scaled DCT (PIL `Image.draft`: the smallest of the
    scales 1/1, 1/2, 1/4, 1/8 that keeps both sides >= size, 320x240 for 224 px from 640x480), then resized
    as training resizes; the JPEG bytes read straight from the episode's chunk files; spectrogram from the
    cache; actions as PolicySamples gives them."""

    def __init__(self, samples: Any, size: int):
        self.samples, self.size = samples, size

    def frames(self, e: Any, idx: np.ndarray) -> Any:
        from PIL import Image

        from htouch.dataset.frames import resize_frames

        out = []
        for i in idx:
            with Image.open(io.BytesIO((e.ep.path / "camera" / "rgb" / f"{int(i)}.0.0.0").read_bytes())) as im:
                im.draft("RGB", (self.size, self.size))
                out.append(resize_frames(np.asarray(im.convert("RGB"))[None], self.size)[0])
        import torch

        return torch.stack(out)

    def sample(self, index: int) -> dict[str, Any]:
        import torch

        e, row = self.samples.locate(index)
        return {"frames": self.frames(e, e.frame_idx[row]), "spectrogram": self.samples.spectrogram(index),
                "actions": torch.from_numpy(e.actions[row]), "mask": torch.from_numpy(e.mask[row])}


TRAIN_READERS = (  # section 3b, in the order of the table
    "today: PolicySamples per sample (decode + resize; spectrogram cache)",
    "scaled DCT decode (PIL draft) + resize; spectrogram cache",
    "frame cache, per sample (__getitem__)",
    "frame cache, batched (__getitems__)",
    "paper layout + resize + spectrogram",
)


def bench_training_inputs(ds: Any, episodes: list[Any], papers: list[PaperLayoutEpisode], sizes: Sizes,
                          log: Callable[[str], None]) -> dict[str, Any]:
    """Training samples of the paper preset (4 frames at 224 px + the AVID spectrogram + 8 normalised actions),
    delivered as batches of TRAIN_BATCH, through each reader in turn on the same random batches."""
    import torch

    from htouch.dataset import frames as frame_cache
    from htouch.dataset import rowcache, spectrograms
    from htouch.training.data import DataSpec, PolicySamples, collate
    from htouch.training.methods import policy_config
    from htouch.training.model import ActionNormalization

    spec = DataSpec.from_policy(policy_config("paper", "ours"))
    size = spec.image_size
    t0 = time.perf_counter()
    n_frames = 0
    for ep in episodes:
        spectrograms.build(ep, spec.spectrogram_params, spec.clip)
        n_frames += len(ep.camera_times)
    spectrogram_build_s = time.perf_counter() - t0
    log(f"training inputs: {spec.audio_kind} spectrogram caches built ({spectrogram_build_s:.0f} s); "
        "opening today's path")
    norm = ActionNormalization.identity(spec.action_dim)
    idx = [ep.index for ep in episodes]
    today = PolicySamples(ds, idx, spec, norm, preload_mb=0)  # before the frame caches exist: decodes
    t0 = time.perf_counter()
    for ep in episodes:
        frame_cache.build(ep, size)
    build_s = time.perf_counter() - t0
    cache_bytes = rowcache.dir_size(frame_cache.key_dir(ds.root, size))
    log(f"training inputs: {size} px frame caches built ({build_s:.0f} s, {cache_bytes / 1e6:.0f} MB)")
    cached = PolicySamples(ds, idx, spec, norm, preload_mb=0)
    assert today.frame_provenance["decoded"] == 2 and cached.frame_provenance["cache"] == 2
    scaled = ScaledDecodeReader(today, size)
    paper = [PaperTrainingReader(p, spec.sample_params, size, spec.spectrogram_params) for p in papers]

    rng = np.random.default_rng(2)
    window = int(max(spec.frame_window_s, spec.clip.window_s) * 1e9)  # the paper reader does not pad
    times = np.concatenate([e.times for e in today.episodes])
    eligible = np.flatnonzero(times >= np.repeat([int(ep.camera_times[0]) + window for ep in episodes],
                                                 [len(e) for e in today.episodes]))
    batches = [rng.choice(eligible, TRAIN_BATCH, replace=False).tolist() for _ in range(sizes.train_batches)]

    def batch_of(name: str, b: list[int]) -> dict[str, Any]:
        if name == TRAIN_READERS[0]:
            return collate([today[i] for i in b])
        if name == TRAIN_READERS[1]:
            return collate([scaled.sample(i) for i in b])
        if name == TRAIN_READERS[2]:
            return collate([cached[i] for i in b])
        if name == TRAIN_READERS[3]:
            return collate(cached.__getitems__(b))
        items = []
        for i in b:
            e, row = today.locate(i)
            items.append(paper[int(today.sample_episode[i])].sample(int(e.times[row])))
        return collate(items)

    # Same samples from every reader: frames identical from the cache (it holds the bytes training computes),
    # the scaled decode's resize difference measured, spectrograms and actions compared.
    ref = batch_of(TRAIN_READERS[0], batches[0])
    diff: dict[str, dict[str, float]] = {}
    for name in TRAIN_READERS[1:]:
        got = batch_of(name, batches[0])
        d = (got["frames"].float() - ref["frames"].float()).abs()
        sd = float((got["spectrogram"] - ref["spectrogram"]).abs().max())
        diff[name] = {"max": float(d.max()), "mean": float(d.mean()), "spectrogram": sd,
                      "spectrogram_scale": float(ref["spectrogram"].abs().max())}
        if name.startswith("frame cache") and not (d.max() == 0 and sd == 0 and torch.equal(got["actions"],
                                                                                           ref["actions"])):
            raise RuntimeError(f"{name} returns other samples than today's path")

    log(f"training inputs: {len(batches)} batches of {TRAIN_BATCH} through each of {len(TRAIN_READERS)} readers")
    spent = dict.fromkeys(TRAIN_READERS, 0.0)
    cpu = dict.fromkeys(TRAIN_READERS, 0.0)
    names = list(TRAIN_READERS)
    for j, b in enumerate(batches):
        for name in names[j % len(names):] + names[:j % len(names)]:  # rotate so none always goes first
            c0, t0 = time.process_time(), time.perf_counter()
            batch_of(name, b)
            spent[name] += time.perf_counter() - t0
            cpu[name] += time.process_time() - c0
    n = len(batches) * TRAIN_BATCH
    # where the batched path's time goes (a separate pass)
    parts = {"frames": 0.0, "spectrograms": 0.0}
    for b in batches:
        by_ep: dict[int, list[int]] = {}
        for i in b:
            by_ep.setdefault(int(cached.sample_episode[i]), []).append(int(cached.sample_row[i]))
        for k, rows in by_ep.items():
            e = cached.episodes[k]
            t0 = time.perf_counter()
            e.caches[size].read(np.unique(e.frame_idx[rows]))
            t1 = time.perf_counter()
            e.spectrograms.frames(np.unique(e.spectrogram_frame[rows]))
            parts["frames"] += t1 - t0
            parts["spectrograms"] += time.perf_counter() - t1
    return {"spec": spec, "batches": len(batches), "samples": n, "rates": {k: n / v for k, v in spent.items()},
            "cpu_rates": {k: n / v for k, v in cpu.items()}, "diff": diff,
            "parts_ms": {k: v / n * 1e3 for k, v in parts.items()}, "cache_bytes": cache_bytes,
            "cache_build_s": build_s, "spectrogram_build_s": spectrogram_build_s, "frames": n_frames,
            "spectrogram_bytes": rowcache.dir_size(spectrograms.key_dir(ds.root, spec.spectrogram_params, spec.clip))}


# ------------------------------------------------------------------------------------------------ 4. memory


def memory_child(mode: str, minutes: float, width: int, height: int) -> None:
    """Runs in a subprocess: write one long episode and print RSS figures as JSON (stdout's last line)."""
    from htouch.dataset.schema import CameraSpec, StreamSpecs

    streams = StreamSpecs(name="bench", camera=CameraSpec(width=width, height=height))
    frames = PhotoVideo(width, height).pool(30)
    audio = audio_pool(streams.audio.rate_hz, streams.audio.channels, 1.0)
    rec = Recording(streams, minutes * 60, frames, audio)
    marks_at = {max(0, round(m * rec.n["camera"]) - 1): m for m in (0.1, 0.5, 1.0)}
    marks: list[dict[str, Any]] = []

    def on_tick(k: int) -> None:
        if k in marks_at:
            marks.append({"minute": marks_at[k] * minutes, "rss_mb": proc_status_kb("VmRSS") / 1024,
                          "peak_mb": proc_status_kb("VmHWM") / 1024})

    with tempfile.TemporaryDirectory(prefix="htouch-bench-mem-") as tmp:
        ds = new_dataset(Path(tmp) / "ds", streams)
        before = proc_status_kb("VmRSS") / 1024
        t0 = time.perf_counter()
        _, writer = write_episode(ds, rec, speed=PACED_SPEED if mode == "paced" else None, on_tick=on_tick)
        wall = time.perf_counter() - t0
    print(json.dumps({"mode": mode, "minutes": minutes, "before_mb": before, "marks": marks,
                      "peak_mb": proc_status_kb("VmHWM") / 1024,
                      "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "wall_s": wall, "dropped": sum(writer.dropped.values())}))


def bench_memory(width: int, height: int, minutes: float, cpu: int, log: Callable[[str], None]) -> list[dict]:
    out = []
    for mode in ("paced", "unpaced"):
        how = f"paced at {PACED_SPEED:g}x real time" if mode == "paced" else "as fast as the writer accepts"
        log(f"memory: {minutes:g} min episode in a subprocess ({how})")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", mode, "--memory-minutes",
               str(minutes), "--frame-size", f"{width}x{height}", "--cpu", str(cpu)]
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if r.returncode != 0:
            raise RuntimeError(f"memory subprocess failed ({r.returncode}):\n{r.stderr[-3000:]}")
        out.append(json.loads(r.stdout.strip().splitlines()[-1]))
    return out


def memory_bounded(m: dict[str, Any]) -> bool:
    """Bounded: the peak at the end is within 25 % of the peak after the first tenth of the episode."""
    return m["peak_mb"] <= 1.25 * m["marks"][0]["peak_mb"]


# ------------------------------------------------------------------------------------------------ report


def machine_info(cpu: int) -> dict[str, str]:
    import imagecodecs
    import numcodecs
    import zarr

    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    libjpeg = next((p for p in imagecodecs.version().split(", ") if p.startswith("libjpeg")), "?")
    return {"CPU": model, "cores (nproc)": str(os.cpu_count()), "pinned to": f"CPU {cpu} (one core)",
            "memory": f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
            "OS": platform.platform(), "Python": platform.python_version(), "numpy": np.__version__,
            "zarr": zarr.__version__, "numcodecs": numcodecs.__version__, "imagecodecs": imagecodecs.__version__,
            "JPEG library": libjpeg}


def mb(x: float) -> str:
    return f"{x / 1e6:.1f}"


def db(x: float | None) -> str:
    return "n/a" if x is None else "lossless" if math.isinf(x) else f"{x:.1f}"


def build_report(res: dict[str, Any]) -> tuple[list[tuple[str, str, str, str]], str]:
    """The goal table (figure, value, goal, verdict) and the markdown document."""
    w, q, r, mem = res["writer"], res["quality"], res["reads"], res["memory"]
    streams = res["streams"]
    lat = w["latency"]
    default = next(x for x in q if x["default"])
    raw = raw_bytes_per_s(streams)
    ok = lambda b: "PASS" if b else "FAIL"  # noqa: E731
    rr = lambda name: f"{r['rates'][name]:.0f}"  # noqa: E731
    ratio = lambda a, b: r["rates"][a] / r["rates"][b]  # noqa: E731
    goals = [
        ("Writer throughput (one core)", f"{w['x_realtime']:.1f}x real time", ">= 4x", ok(w["x_realtime"] >= 4)),
        ("Caller time per 30 Hz tick (non-blocking)",
         f"p99 {lat['p99_ms']:.2f} ms, max {lat['max_ms']:.1f} ms, {lat['dropped']} rows dropped",
         f"max < {MAX_TICK_S * 1e3:.0f} ms, none dropped",
         ok(lat["max_ms"] < MAX_TICK_S * 1e3 and lat["dropped"] == 0)),
        (f"Camera bytes, default JPEG {default['quality']}", f"{default['ratio'] * 100:.1f} % of raw RGB",
         "< 6 %", ok(default["ratio"] < 0.06)),
        (f"Image quality, default JPEG {default['quality']}", f"PSNR {default['psnr_mean']:.1f} dB", ">= 38 dB",
         ok(default["psnr_mean"] >= 38)),
        ("Random sample reads: htouch / paper layout", f"{rr('htouch')}/s vs {rr('paper, line index')}/s = "
         f"{ratio('htouch', 'paper, line index'):.2f}x (audio preloaded in both: "
         f"{ratio('htouch, preload_audio()', 'paper, audio.txt parsed once'):.2f}x)", "report (no goal)", "info"),
    ]
    tr = r["train"]
    new, today, paper = (tr["rates"][TRAIN_READERS[k]] for k in (3, 0, 4))
    goals += [
        ("Training samples (paper preset inputs): frame cache, batched / today's path",
         f"{new:.0f}/s vs {today:.0f}/s = {new / today:.1f}x", f">= {TRAIN_GOAL_TODAY:g}x",
         ok(new / today >= TRAIN_GOAL_TODAY)),
        ("Training samples: frame cache, batched / paper layout (+ resize + spectrogram)",
         f"{new:.0f}/s vs {paper:.0f}/s = {new / paper:.1f}x (vs its raw reads, section 3: "
         f"{new / r['rates']['paper, line index']:.1f}x)", f">= {TRAIN_GOAL_PAPER:g}x",
         ok(new / paper >= TRAIN_GOAL_PAPER)),
    ]
    for m in mem:
        goals.append((f"Writer peak RSS, {m['minutes']:g} min episode, {m['mode']}",
                      f"{m['peak_mb']:.0f} MB (at {m['marks'][0]['minute']:g} min: {m['marks'][0]['peak_mb']:.0f} MB)",
                      "bounded (< +25 %)", ok(memory_bounded(m))))

    L: list[str] = []
    L += ["# Storage benchmarks", "",
          "Written by `tools/bench_store.py` (do not edit by hand; rerun it). Performance is measured by this script, "
          "not by timed tests.", "",
          f"- Command: `{res['command']}`", f"- Date: {res['date']}",
          f"- Run time: {res['elapsed_s'] / 60:.1f} min; load average at start / end: {res['load_start']} / "
          f"{res['load_end']}", ""]
    L += ["## Machine", "", "| | |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in res["machine"].items()] + [""]
    L += ["## Conditions", "",
          "The machine is shared with other jobs (other developers' test runs; see the load averages above), so "
          "absolute figures move from run to run. The benchmark and its subprocesses are pinned to one core; "
          "figures that are compared (codec settings, the read layouts) are measured in the same run, interleaved "
          f"where possible. During the throughput run the pinned core gave this process {w['cpu_share'] * 100:.0f} % "
          "of its time (CPU time / wall time; the rest went to other jobs). Reads come from a warm page cache (the "
          "files were just written); cold reads from disk are not measured.", ""]
    L += ["## Goals", "", "| figure | measured | goal | result |", "| --- | --- | --- | --- |"]
    L += [f"| {a} | {b} | {c} | **{d}** |" if d != "info" else f"| {a} | {b} | {c} | {d} |" for a, b, c, d in goals]
    L += [""]

    L += ["## 1. Writer throughput and caller latency", "",
          f"A recording of {streams.camera.width}x{streams.camera.height} RGB at {streams.camera.rate_hz:g} Hz, "
          f"{streams.audio.channels} x {streams.audio.rate_hz / 1000:g} kHz int16 audio in {res['audio_block']}-sample "
          f"blocks, state at {streams.state.rate_hz:g} Hz, actions at {streams.action.rate_hz:g} Hz and teleop at "
          f"{streams.teleop.rate_hz:g} Hz, written through `EpisodeWriter`. All rows are generated before writing "
          f"(frames from a pool of {res['pool_frames']} pre-rendered photo-video frames, cycled), so only the "
          "writer is measured.", "",
          f"- **Throughput** (`blocking=True`, the producer feeds as fast as the writer accepts; from creating the "
          f"writer to `commit()` returning): {w['seconds']:g} s of recording in {w['wall_s']:.1f} s wall = "
          f"**{w['x_realtime']:.1f}x real time** on one core. CPU time {w['cpu_s']:.1f} s "
          f"({w['x_realtime_cpu']:.1f}x real time per CPU-second, less sensitive to other jobs). Rows dropped: "
          f"{sum(w['dropped'].values())}.",
          f"- **Caller time per tick** (`blocking=False`, the live-recording mode, paced in real time for "
          f"{lat['seconds']:g} s, on the same single core as the writer thread): the calls of one 30 Hz tick "
          f"(1 frame, ~3 audio blocks, ~3 states, 1 action, ~2 teleop readings) took p50 {lat['p50_ms']:.2f} ms, "
          f"p99 {lat['p99_ms']:.2f} ms, max {lat['max_ms']:.1f} ms over {lat['ticks']} ticks; "
          f"{lat['dropped']} rows dropped. The calls only copy rows into a queue; compression runs in the "
          "writer thread.", ""]

    L += ["## 2. Bytes and image quality", "",
          "**Bytes per minute** (from the throughput episode; stored = file sizes on disk, raw = the schema's "
          "array item sizes at the nominal rates):", "",
          "| stream | raw MB/min | stored MB/min | stored / raw |", "| --- | --- | --- | --- |"]
    tot_raw = tot_st = 0.0
    for s in ("camera", "audio", "state", "action", "teleop"):
        st = w["stream_bytes"][s] / w["seconds"] * 60
        rw = raw[s] * 60
        tot_raw, tot_st = tot_raw + rw, tot_st + st
        L.append(f"| {s} | {mb(rw)} | {mb(st)} | {st / rw * 100:.1f} % |")
    other = w["episode_bytes"] - sum(w["stream_bytes"].values()) + w["stream_bytes"]["events"]
    L += [f"| events + metadata | - | {mb(other / w['seconds'] * 60)} | |",
          f"| **total** | **{mb(tot_raw)}** | **{mb(w['episode_bytes'] / w['seconds'] * 60)}** | "
          f"**{w['episode_bytes'] / w['seconds'] * 60 / tot_raw * 100:.1f} %** |", "",
          f"Raw RGB alone is {raw['camera/rgb'] / 1e6:.1f} MB/s ({mb(raw['camera/rgb'] * 60)} MB/min).", ""]
    L += ["**Image codecs** (the writer's camera codec settings; each a clip of "
          f"{q[0]['frames']} frames written through `EpisodeWriter` and read back through `Episode`). "
          "PSNR is the mean over frames against the exact frames given to the writer (noise included); "
          "'PSNR vs clean' compares with the same frames before the sensor noise was added.", "",
          "| video | codec | bytes / frame | % of raw RGB | PSNR dB (mean / min) | PSNR vs clean | write x real time |",
          "| --- | --- | --- | --- | --- | --- | --- |"]
    for x in q:
        clean = db(x["psnr_clean"])
        name = x["label"] + (" (default)" if x["default"] else "")
        L.append(f"| {x['video']} | {name} | {x['bytes_per_frame'] / 1e3:.0f} kB | {x['ratio'] * 100:.1f} % | "
                 f"{db(x['psnr_mean'])} / {db(x['psnr_min'])} | {clean} | {x['x_realtime']:.1f}x |")
    L += ["", "Codecs the writer does not offer, measured with imagecodecs directly on "
          f"{res['candidates'][0]['frames'] if res['candidates'] else 0} frames of the same photo video "
          "(what a codec change would buy):", "",
          "| codec | % of raw RGB | PSNR dB | PSNR vs clean | encode ms / frame (one core) |",
          "| --- | --- | --- | --- | --- |"]
    L += [f"| {c['label']} | {c['ratio'] * 100:.1f} % | {c['psnr_mean']:.1f} | {c['psnr_clean']:.1f} | "
          f"{c['encode_ms']:.0f} |" for c in res["candidates"]]
    L += ["", "The photo video: scikit-image's bundled photographs (" + ", ".join(PHOTOS) + ") scaled to "
          f"{round(streams.camera.height * 16 / 15)} px high (x{min(res['photo_scales']):.1f} to "
          f"x{max(res['photo_scales']):.1f}) and laid side by side; four shots, one starting "
          "at each photo, in which the camera pans right at a tenth of the frame width per second, drifts "
          "vertically and zooms by up to 10 % (bicubic resampling); then Gaussian sensor noise, sigma "
          f"{NOISE_SIGMA:g}. The synthetic scene is htouch's own generator (flat wall and table with fine grain, "
          "a gripper and an object, noise sigma 2); it has no noise-free reference here.", ""]
    L += quality_verdict(q, res["candidates"])

    L += ["## 3. Random training-sample reads", "",
          f"Two episodes of {r['episode_s']:g} s (the photo video at JPEG {streams.camera.quality}). A sample is what "
          f"`Episode.sample` returns: {r['params'].n_frames} frames over {r['params'].frame_window_s:g} s, a "
          f"{r['params'].clip.window_s:g} s audio clip (channels averaged, normalised, resampled to "
          f"{r['params'].clip.rate_hz / 1000:g} kHz), and {r['params'].horizon} actions (htouch also returns "
          f"the state). {r['samples']} random sample times (the same list for every layout; the readers take "
          "turns on each sample).", "",
          "The paper authors' layout is generated from the same data: one JPEG file per frame (the same encoder "
          "and quality, so the same bytes), the audio as a text file with one line per sample (4 integers), the "
          "actions and frame times in CSV files. Its reader loads frame times and actions once per episode, then "
          "per sample reads and decodes the 4 JPEG files (imagecodecs, the decoder the Zarr store uses), gets the "
          "2 s of audio lines, parses them with `np.loadtxt` and processes the audio exactly as htouch does "
          "(channel mean, normalisation, the same resampler). The audio lines are reached in one of three ways: "
          "*line index*: the byte offset of every line computed once per episode, then per sample one seek, one "
          "read of the clip's lines and `np.loadtxt` on them (the fair best case for per-sample reads); "
          "*loadtxt skiprows*: `np.loadtxt(path, skiprows=first, max_rows=n)`, numpy skipping the lines before "
          "the clip; *audio.txt parsed once*: the whole file parsed when the episode is opened, then sliced. The "
          "last is compared with htouch's `Episode.preload_audio()` (all PCM decoded once), the mode for "
          "reading many samples of one episode. The first 5 samples are checked: frames and actions identical "
          f"in all readers, audio clips equal to within {r['audio_diff']:.1%} of the clip's norm.", "",
          "| reader | samples / s | ms / sample | frames ms | audio ms | actions ms | opening an episode ms |",
          "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, rate in r["rates"].items():
        parts = r["parts_ms"].get(name)
        cols = " | ".join("-" if parts is None or math.isnan(parts[k]) else f"{parts[k]:.1f}"
                          for k in ("frames", "audio", "actions"))
        L.append(f"| {name} | {rate:.0f} | {1e3 / rate:.1f} | {cols} | {r['setup_ms'][name]:.0f} |")
    L += ["", f"Per-sample reads: htouch / paper (line index) = **{ratio('htouch', 'paper, line index'):.2f}x**, "
          f"htouch / paper (skiprows) = **{ratio('htouch', 'paper, loadtxt skiprows'):.2f}x**. Audio in memory: "
          f"htouch / paper = **{ratio('htouch, preload_audio()', 'paper, audio.txt parsed once'):.2f}x**. The "
          "parts of htouch's samples were timed in a separate pass (the Zarr frame reads, `Episode.audio_clip`); "
          "the paper reader's parts are from the main pass. "
          f"On disk: htouch {mb(r['htouch_bytes'])} MB, paper layout {mb(r['paper_bytes'])} MB for the two episodes.",
          ""]

    L += training_section(r)
    L += ["## 4. Writer memory over a long episode", "",
          f"Each run writes one {mem[0]['minutes']:g}-minute episode in a fresh subprocess (pinned to the same core) "
          "from a pool of 30 pre-rendered frames. RSS from /proc/self/status (VmRSS now, VmHWM = peak so far), at "
          "recording-time marks. Both runs use `blocking=True`, so no row is dropped. *paced*: rows are fed at "
          f"{PACED_SPEED:g}x real time; the writer flushes once a second of wall time or after a queue's "
          "worth of rows, whichever comes first, an upper bound for a live (1x) recording. (The non-blocking mode is "
          f"not used here: paced at {PACED_SPEED:g}x, its queue of {res['queue_size']} rows covers only "
          f"{res['queue_size'] / res['rows_per_s'] / PACED_SPEED:.2f} s of rows, so any flush longer than that drops "
          f"rows and lowers the figure; at 1x it covers {res['queue_size'] / res['rows_per_s']:.2f} s.) *unpaced*: "
          "the producer feeds as fast as the writer accepts (an offline converter or generator).", "",
          "| mode | RSS before writing | " + " | ".join(f"RSS / peak at {m['minute']:g} min" for m in mem[0]["marks"])
          + " | peak (VmHWM) | wall s | rows dropped |",
          "| --- | --- | " + " | ".join("---" for _ in mem[0]["marks"]) + " | --- | --- | --- |"]
    for m in mem:
        L.append(f"| {m['mode']} | {m['before_mb']:.0f} MB | "
                 + " | ".join(f"{k['rss_mb']:.0f} / {k['peak_mb']:.0f} MB" for k in m["marks"])
                 + f" | {m['peak_mb']:.0f} MB | {m['wall_s']:.0f} | {m['dropped']} |")
    L += ["", *memory_notes(mem), ""]
    return goals, "\n".join(L)


def training_section(r: dict[str, Any]) -> list[str]:
    """Section 3b of the report: training inputs through each reader."""
    tr = r["train"]
    spec = tr["spec"]
    rates, cpu_rates = tr["rates"], tr["cpu_rates"]
    today = rates[TRAIN_READERS[0]]
    paper = rates[TRAIN_READERS[4]]
    scaled = tr["diff"][TRAIN_READERS[1]]
    L = ["### 3b. Training inputs (the paper preset)", "",
         f"What training reads per sample with the paper preset and the `ours` method: {spec.n_frames} frames "
         f"resized to {spec.image_size} px (uint8), the {spec.audio_kind} spectrogram of the clip, "
         f"{spec.horizon} normalised actions and their mask, delivered as batches of {TRAIN_BATCH} "
         f"(`training.data.collate`), from the same two episodes. {tr['batches']} batches of random samples (the "
         "same for every reader, which take turns on each batch). Un-augmented samples; the augmented half "
         f"reads {spec.load_size} px frames the same way (a second cache) and then pays for RandomCrop and "
         "ColorJitter, which no storage choice changes.", "",
         "- *today*: `PolicySamples` with nothing preloaded (a dataset larger than `--preload-mb`), one "
         "sample at a time as the DataLoader asks: 4 JPEG frames decoded from the store and resized "
         "(torchvision, antialiased), the spectrogram read from its `htouch spectrogram` cache. The cache is "
         "read in its new layout (uncompressed, memory-mapped); the older Blosc layout cost 1-2 ms more per "
         "sample, so the ratios to *today* below are lower bounds.",
         "- *scaled DCT decode*: the JPEG decoded at reduced size by libjpeg-turbo (PIL `Image.draft`, 320x240 "
         f"from 640x480), then resized to {spec.image_size} as training resizes.",
         f"- *frame cache*: `htouch frames` stored every frame already resized ({tr['frames']} frames in "
         f"{tr['cache_build_s']:.0f} s, {mb(tr['cache_bytes'])} MB at {spec.image_size} px, uncompressed; "
         f"the spectrogram caches: {mb(tr['spectrogram_bytes'])} MB); `PolicySamples` reads it through a memory "
         "map. *per sample*: `__getitem__` as before; *batched*: `__getitems__` (what torch's DataLoader "
         "calls with a batch's indices), by episode: its spectrograms in one read, its frames copied from the "
         "memory-mapped chunk files straight into each sample.",
         "- *paper layout*: section 3's reader (line index) with its frames resized the same way and the "
         "spectrogram computed from its clip, as a loader of that layout must.", "",
         "| reader | samples / s | ms / sample | samples per CPU-second | frames vs today: max / mean "
         "difference (0-255) |", "| --- | --- | --- | --- | --- |"]
    for name in TRAIN_READERS:
        d = tr["diff"].get(name)
        dcol = "(reference)" if d is None else f"{d['max']:.0f} / {d['mean']:.2f}"
        L.append(f"| {name} | {rates[name]:.0f} | {1e3 / rates[name]:.2f} | {cpu_rates[name]:.0f} | {dcol} |")
    new = rates[TRAIN_READERS[3]]
    L += ["", f"Frame cache, batched / today = **{new / today:.1f}x**; / paper layout = **{new / paper:.1f}x** "
          f"(/ section 3's paper reads, which neither resize nor make a spectrogram: "
          f"{new / r['rates']['paper, line index']:.1f}x). Per sample without batching: "
          f"{rates[TRAIN_READERS[2]] / today:.1f}x today. Scaled DCT decoding: "
          f"{rates[TRAIN_READERS[1]] / today:.1f}x today. Where the batched path's time goes (a separate pass): "
          f"frames {tr['parts_ms']['frames']:.2f} ms, spectrograms {tr['parts_ms']['spectrograms']:.2f} ms per "
          "sample; the rest is assembling and stacking the batch.", "",
          "Samples compared on the first batch: the frame cache gives the same bytes as today's path "
          "(checked: frames, spectrograms and actions identical), so training results do not change. "
          f"Scaled DCT decoding changes the frames by up to {scaled['max']:.0f} levels (mean {scaled['mean']:.2f}) "
          "at the same size: it would change what the policy sees in training and no longer match the policy "
          "runner's full-size resize, for a smaller gain. The paper-layout reader's spectrograms differ from "
          f"htouch's by at most {tr['diff'][TRAIN_READERS[4]]['spectrogram']:.2g} (values up to "
          f"{tr['diff'][TRAIN_READERS[4]]['spectrogram_scale']:.3g}; its clip is gathered its own way, section 3).", ""]
    return L


def quality_verdict(q: list[dict[str, Any]], cands: list[dict[str, Any]]) -> list[str]:
    """Facts for choosing the default: which settings meet both goals, and what each JPEG step costs."""
    meets = lambda x: x["ratio"] < 0.06 and x["psnr_mean"] >= 38  # noqa: E731
    photos = [x for x in q if x["video"] == "photos"]
    default = next(x for x in q if x["default"])
    jpeg = sorted((x for x in photos if x["codec"] == "jpeg"), key=lambda x: x["quality"])
    text = "**Verdict.** "
    ok = [x["label"] for x in photos if meets(x)]
    text += (f"Writer settings meeting both goals (< 6 % of raw RGB, PSNR >= 38 dB): {', '.join(ok)}. " if ok else
             "No writer setting meets both goals on the photo video (< 6 % of raw RGB at PSNR >= 38 dB). ")
    text += f"The default, {default['label']}, stores {default['ratio'] * 100:.1f} % at {default['psnr_mean']:.1f} dB. "
    steps = [f"{a['label']} -> {b['quality']}: x{b['ratio'] / a['ratio']:.2f} bytes for "
             f"{b['psnr_mean'] - a['psnr_mean']:+.1f} dB" for a, b in zip(jpeg, jpeg[1:], strict=False)]
    if steps:
        text += "Steps in JPEG quality: " + "; ".join(steps) + ". "
    if cands:
        ok_c = [c["label"] for c in cands if meets(c)]
        text += (f"Other still-image codecs meeting both: {', '.join(ok_c)}. " if ok_c else
                 "None of the other still-image codecs tried meets both either. ")
    text += ("Sensor noise is costly for any codec: keeping it costs bytes, dropping it caps the PSNR against the "
             f"noisy frame at about {20 * math.log10(255 / NOISE_SIGMA):.0f} dB. Inter-frame video coding is the "
             "known way to go lower in bytes (LeRobot reports AV1 at 5.6 % of PNG size at 39.8 dB), and a "
             "per-frame chunk layout cannot use it.")
    return [text, ""]


def memory_notes(mem: list[dict[str, Any]]) -> list[str]:
    notes = []
    for m in mem:
        verdict = "stays bounded" if memory_bounded(m) else "grows"
        notes.append(f"- {m['mode']}: the peak {verdict} ({m['marks'][0]['peak_mb']:.0f} MB after "
                     f"{m['marks'][0]['minute']:g} min, {m['peak_mb']:.0f} MB at the end; "
                     f"{m['peak_mb'] - m['before_mb']:.0f} MB above the RSS before writing).")
    fast = next((m for m in mem if m["mode"] == "unpaced"), None)
    paced = next((m for m in mem if m["mode"] == "paced"), None)
    if fast and paced and fast["peak_mb"] - fast["before_mb"] > 2 * (paced["peak_mb"] - paced["before_mb"]):
        notes.append("- Why unpaced is different (reading writer.py): the writer thread takes rows off the queue as "
                     "fast as the producer puts them there and buffers them until its next flush, which comes 1 s of "
                     "*wall* time later; a producer faster than real time fills that second with many seconds of "
                     "recording (a frame is only copied), and the flush copies the buffer once more (`np.asarray`) "
                     "before encoding it. So the queue size does not bound memory; the producer's speed and the "
                     "allocator's reuse of the freed buffers do. Flushing once the buffer holds one flush interval of "
                     "*recording* (or a byte cap) would bound it by the data rate, as in the paced run.")
    return notes


def print_report(goals: list[tuple[str, str, str, str]], res: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 130)
    t = Table(title="htouch storage benchmark", show_lines=False)
    for c in ("figure", "measured", "goal", "result"):
        t.add_column(c)
    for a, b, c, d in goals:
        colour = {"PASS": "green", "FAIL": "red"}.get(d, "blue")
        t.add_row(a, b, c, f"[bold {colour}]{d}[/]")
    console.print(t)
    qt = Table(title="image codecs (photo video unless noted)")
    for c in ("video", "codec", "% raw RGB", "PSNR dB", "PSNR vs clean", "write x RT"):
        qt.add_column(c)
    for x in res["quality"]:
        qt.add_row(x["video"], x["label"] + (" *" if x["default"] else ""), f"{x['ratio'] * 100:.1f}",
                   db(x["psnr_mean"]), db(x["psnr_clean"]),
                   f"{x['x_realtime']:.1f}")
    for c in res["candidates"]:
        qt.add_row("photos", c["label"] + " (not in writer)", f"{c['ratio'] * 100:.1f}", db(c["psnr_mean"]),
                   db(c["psnr_clean"]), f"{c['encode_ms']:.0f} ms/frame")
    console.print(qt)
    rt = Table(title="random sample reads")
    for c in ("reader", "samples/s", "ms/sample"):
        rt.add_column(c)
    for name, rate in res["reads"]["rates"].items():
        rt.add_row(name, f"{rate:.0f}", f"{1e3 / rate:.1f}")
    console.print(rt)
    tt = Table(title=f"training inputs, batches of {TRAIN_BATCH}")
    for c in ("reader", "samples/s", "ms/sample", "per CPU-s"):
        tt.add_column(c)
    tr = res["reads"]["train"]
    for name in TRAIN_READERS:
        tt.add_row(name, f"{tr['rates'][name]:.0f}", f"{1e3 / tr['rates'][name]:.2f}", f"{tr['cpu_rates'][name]:.0f}")
    console.print(tt)


# ------------------------------------------------------------------------------------------------ main


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"frame size must look like 640x480, got {text!r}") from None
    if w < 16 or h < 16:
        raise argparse.ArgumentTypeError("frame size must be at least 16x16")
    return w, h


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short smoke run (seconds of data, 1 min memory run)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md", help="markdown report path")
    ap.add_argument("--frame-size", type=parse_size, default=(640, 480), help="camera frame size, WxH")
    ap.add_argument("--memory-minutes", type=float, default=None, help="length of the memory-run episodes")
    ap.add_argument("--cpu", type=int, default=None, help="core to pin to (default: the last allowed one)")
    ap.add_argument("--memory-child", choices=("paced", "unpaced"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    cpu = chosen_cpu(ap, args.cpu)
    pin_to_cpu(cpu)
    width, height = args.frame_size
    sizes = QUICK if args.quick else FULL
    minutes = args.memory_minutes if args.memory_minutes is not None else sizes.memory_min
    if args.memory_child:
        memory_child(args.memory_child, minutes, width, height)
        return

    import torch  # the reader resamples audio with torchaudio: keep it to the one pinned core

    torch.set_num_threads(1)
    from rich.console import Console

    from htouch.dataset.schema import CameraSpec, StreamSpecs
    from htouch.dataset.synthetic import AUDIO_BLOCK
    from htouch.dataset.writer import EpisodeWriter

    console = Console(stderr=True, width=None if sys.stderr.isatty() else 120)
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        console.print(f"[dim]{time.perf_counter() - t_start:6.1f} s[/]  {msg}")

    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    streams = StreamSpecs(name="bench", camera=CameraSpec(width=width, height=height))
    log(f"pinned to CPU {cpu}; generating {sizes.pool_frames} photo-video frames and the synthetic scene")
    video = PhotoVideo(width, height)
    frames = video.pool(sizes.pool_frames)
    synth = synthetic_scene_pool(width, height, int(sizes.quality_s * streams.camera.rate_hz))
    audio = audio_pool(streams.audio.rate_hz, streams.audio.channels, 10.0 if not args.quick else 1.0)

    queue_size = inspect.signature(EpisodeWriter).parameters["queue_size"].default
    res: dict[str, Any] = {"streams": streams, "audio_block": AUDIO_BLOCK,
                           "pool_frames": len(frames), "queue_size": queue_size,
                           "photo_scales": video.scales,
                           "rows_per_s": sum(Recording(streams, 1, frames, audio).rate.values())}
    with tempfile.TemporaryDirectory(prefix="htouch-bench-") as tmpdir:
        tmp = Path(tmpdir)
        res["writer"] = bench_writer(tmp, streams, frames, audio, sizes, log)
        res["quality"] = bench_quality(tmp, streams, video, frames, synth, audio, sizes, log)
        res["candidates"] = bench_candidates(video, frames, sizes.candidate_frames, log)
        res["reads"] = bench_reads(tmp, streams, frames, audio, sizes, log)
    del frames, synth
    res["memory"] = bench_memory(width, height, minutes, cpu, log)

    res.update(machine=machine_info(cpu), elapsed_s=time.perf_counter() - t_start, load_start=load_start,
               load_end=" ".join(f"{x:.2f}" for x in os.getloadavg()),
               date=dt.datetime.now().astimezone().isoformat(timespec="seconds"),
               command=shlex.join([".venv/bin/python", "tools/bench_store.py",
                                   *(sys.argv[1:] if argv is None else argv)]))
    goals, markdown = build_report(res)
    print_report(goals, res)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown)
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
