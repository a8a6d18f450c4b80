#!/usr/bin/env python
"""Time stamp quality of the camera and microphone backends, without the devices.

1. Microphones: SoundDeviceMicrophones records from a JACK dummy server (real PortAudio, real-time
   pacing, a stream clock that starts at zero). For every block it compares the stamp the backend gives
   with the stream's own ADC time mapped by the median offset, and with an ideal clock (a straight line
   through the stamps against the sample count): jitter, read latency, offset spread.
2. Camera clock mapping: RealSenseCamera's sliding-minimum offset filter on a simulated live camera
   (30 Hz, clock 80 ppm fast, arrival 2 ms after capture + exponential jitter and USB bursts), against a
   median filter and against stamping each frame with its arrival time.

    .venv/bin/python tools/bench_hw_timestamps.py                    # ~15 s, writes docs/bench-hw-timestamps.md
    .venv/bin/python tools/bench_hw_timestamps.py --seconds 3 --out /tmp/bench.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RATE, BLOCK = 48000, 480


def jack_child(seconds: float) -> dict:
    """Runs inside the JACK environment: capture and return per-block figures."""
    from htouch.collector.config import MicrophoneConfig
    from htouch.collector.hardware.microphones import SoundDeviceMicrophones

    mics = SoundDeviceMicrophones(MicrophoneConfig(device="system", channels=4, rate_hz=RATE, blocksize=BLOCK))
    measured, raw_offsets = [], []
    mics.start()
    stamp, update = mics._block_clock.stamp, mics._block_clock.offsets.update

    def record_stamp(m, n, dropped=0, overflow=False):
        measured.append(m)
        return stamp(m, n, dropped, overflow)

    def record_offset(host_ns, device_ns):
        raw_offsets.append(host_ns - device_ns)
        return update(host_ns, device_ns)

    mics._block_clock.stamp, mics._block_clock.offsets.update = record_stamp, record_offset
    stamps, returned, overflow = [], [], []
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        block = mics.read(timeout_s=1.0)
        if block is None:
            break
        stamps.append(block.timestamp_ns)
        returned.append(time.monotonic_ns())
        overflow.append(block.overflow)
    mics.stop()
    return dict(stamps=stamps, measured=measured, returned=returned, raw_offsets=raw_offsets,
                overflow=overflow, dropped=mics.dropped_blocks, overflows=mics.overflows,
                learnt_rate=1e9 / mics._block_clock.ns_per_sample)


def line_residual_us(t: np.ndarray, segment: np.ndarray) -> np.ndarray:
    """Distance of each stamp from a straight line through its segment (input lost starts a new one)."""
    out = []
    for s in np.unique(segment):
        tt = t[segment == s].astype(np.float64)
        if len(tt) < 10:
            continue
        k = np.arange(len(tt), dtype=np.float64)
        out.append((tt - np.polyval(np.polyfit(k, tt, 1), k)) / 1e3)
    return np.concatenate(out)


def bench_jack(seconds: float) -> list[str]:
    jackd, jack_wait = shutil.which("jackd"), shutil.which("jack_wait")
    if not jackd or not jack_wait:
        return ["JACK is not installed (Debian package jackd2): microphone figures skipped."]
    name = f"htouch-bench-{os.getpid()}"
    env = {**os.environ, "JACK_NO_AUDIO_RESERVATION": "1", "JACK_NO_START_SERVER": "1",
           "JACK_DEFAULT_SERVER": name}
    server = subprocess.Popen([jackd, "-n", name, "--no-realtime", "-d", "dummy", "-r", str(RATE), "-p",
                               str(BLOCK), "-C", "4", "-P", "2"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        subprocess.run([jack_wait, "-s", name, "-w", "-t", "10"], env=env, capture_output=True, check=True)
        out = subprocess.run([sys.executable, __file__, "--jack-child", str(seconds)], env=env,
                             capture_output=True, text=True, timeout=seconds + 60)
        if out.returncode != 0:
            raise SystemExit(f"capture failed: {out.stderr[-2000:]}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        server.terminate()
        server.wait(timeout=10)
    stamps, measured = np.array(r["stamps"], np.int64), np.array(r["measured"], np.float64)
    returned, offsets = np.array(r["returned"], np.int64), np.array(r["raw_offsets"], np.int64)
    nominal = BLOCK * 1e9 / RATE
    lost = np.array(r["overflow"], bool)
    segment = np.cumsum(lost)
    steady = ~lost[1:]  # spacing to a block after lost input is a gap, not jitter
    jit_stamp = (np.diff(stamps) - nominal)[steady]
    jit_meas = (np.diff(measured) - nominal)[steady]
    latency = (returned - stamps) / 1e6
    res_stamp, res_meas = line_residual_us(stamps, segment), line_residual_us(measured, segment)
    rows = [
        f"JACK dummy server, {RATE} Hz, {BLOCK}-sample blocks, {len(stamps)} blocks "
        f"({len(stamps) * BLOCK / RATE:.1f} s), overflow flags {sum(r['overflow'])}, dropped {r['dropped']}",
        "",
        "| figure | backend stamps | ADC time + median offset (raw) |",
        "|---|---|---|",
        f"| block spacing - 10 ms: std / max, us | {jit_stamp.std() / 1e3:.1f} / {np.abs(jit_stamp).max() / 1e3:.1f} "
        f"| {jit_meas.std() / 1e3:.1f} / {np.abs(jit_meas).max() / 1e3:.1f} |",
        f"| distance from a straight line per segment: std / max, us | {res_stamp.std():.1f} / "
        f"{np.abs(res_stamp).max():.1f} | {res_meas.std():.1f} / {np.abs(res_meas).max():.1f} |",
        "",
        f"- read() returns a block {np.median(latency):.2f} ms (median; p99 {np.percentile(latency, 99):.2f}, "
        f"max {latency.max():.2f}) after its first sample's stamp (one block is {nominal / 1e6:.0f} ms).",
        f"- Sample rate the backend's delay-locked loop learnt: {r['learnt_rate']:.1f} Hz (nominal {RATE}; the "
        "dummy driver sleeps per period without realtime scheduling, so it runs slow on a busy machine).",
        f"- Per-callback offset (host monotonic - stream currentTime): {offsets.mean() / 1e9:+.3f} s, spread "
        f"std {offsets.std() / 1e3:.1f} us, max - min {(offsets.max() - offsets.min()) / 1e3:.1f} us.",
    ]
    return rows


def bench_camera_mapping(minutes: float = 5.0, seed: int = 0) -> list[str]:
    from htouch.collector.hardware.clocksync import OffsetFilter

    rng = np.random.default_rng(seed)
    n = int(30 * 60 * minutes)
    period = 1e9 / 30
    capture = 10**12 + (np.arange(n) * period).astype(np.int64)
    device = 5_000_000_000 + ((capture - capture[0]) * (1 + 80e-6)).astype(np.int64)
    delay = 2e6 + rng.exponential(3e6, n)
    burst = rng.random(n) < 0.02  # USB bursts: a frame held back up to 30 ms
    delay[burst] += rng.uniform(0, 30e6, burst.sum())
    arrival = capture + delay.astype(np.int64)
    truth = capture + 2_000_000  # the fixed 2 ms is what latency_ms calibrates
    rows = ["| mapping | error mean / std / max, ms |", "|---|---|"]
    for label, stat, window in (("sliding minimum, 90 frames (RealSenseCamera)", "min", 90),
                                ("sliding median, 90 frames", "median", 90)):
        f = OffsetFilter(window, stat)
        mapped = np.array([d + f.update(a, d) for a, d in zip(arrival, device, strict=True)])
        e = (mapped - truth)[window:] / 1e6
        rows.append(f"| {label} | {e.mean():+.3f} / {e.std():.3f} / {np.abs(e).max():.3f} |")
    e = (arrival - truth) / 1e6
    rows.append(f"| arrival time, no device clock | {e.mean():+.3f} / {e.std():.3f} / {np.abs(e).max():.3f} |")
    return [f"{n} frames ({minutes:.0f} min at 30 Hz), camera clock +80 ppm, arrival = capture + 2 ms + "
            "exponential jitter (mean 3 ms) + 2 % of frames held up to 30 ms.", ""] + rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="JACK capture length")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "bench-hw-timestamps.md")
    ap.add_argument("--jack-child", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.jack_child is not None:
        print(json.dumps(jack_child(args.jack_child)))
        return
    load = os.getloadavg()[0]
    sections = [
        "# Hardware time stamps (bench)",
        "",
        f"`.venv/bin/python tools/bench_hw_timestamps.py --seconds {args.seconds:g}` on "
        f"{dt.date.today().isoformat()}, {os.cpu_count()} cores, load average {load:.2f} at start.",
        "",
        "## Microphones (SoundDeviceMicrophones on a JACK dummy server)",
        "",
        *bench_jack(args.seconds),
        "",
        "## Camera clock mapping (RealSenseCamera's offset filter, simulated live camera)",
        "",
        *bench_camera_mapping(),
        "",
        "## How the backend tests run without the devices",
        "",
        "- `tests/test_hw_realsense.py`: a recording made with librealsense's software device and recorder "
        "(known pixels, hardware-clock stamps, skipped frame numbers) plays through the real pyrealsense2 "
        "pipeline into RealSenseCamera.",
        "- `tests/test_hw_microphones.py`: PortAudio records from the ALSA `file` plugin (a known 4-channel "
        "signal, not paced) and from a JACK dummy server (real-time pacing, real input_overflow flags), each in "
        "a fresh process (`tests/hw/mic_capture.py`) because PortAudio reads its setup when it initializes.",
        "",
    ]
    text = "\n".join(sections)
    print(text)
    args.out.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
