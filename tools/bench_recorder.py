#!/usr/bin/env python
"""Recorder jitter in isolation: the real recording loop and episode writer on a rig that does not render.

docs/bench-collect.md measures the loop on the simulated rig, whose rendering shares the cores with the
loop. Here the devices are stand-ins at the real rig's rates and sizes (tools/standin_rig.py: 640x480 RGB at
30 Hz, 4 microphones at 32 kHz in 10 ms blocks, the Quest's readings at 72 Hz with the grip held, a robot
read at the control rate), in real time on the host clock, so what is measured is the recorder: its
control thread (htouch.collector.loop.Recorder through the clutch mapping and the safety filter), its reader
threads and its writer (a Zarr episode on disk, frames JPEG-encoded), for one episode of --seconds.

Printed and written to --out (markdown): tick period p50 / p95 / p99 / max on the wall clock, overruns,
work per tick; frames stored / expected, dropped (frame-number gaps and rows the writer could not queue) and
late (handed to the recorder more than one frame period after capture); the writer's queue depth (sampled
every 10 ms) and commit time; CPU per thread; the load average before, during and after (the machine may be
shared). The goal of htouch issue 13: tick period p99 <= 40 ms and no frame dropped over 2 minutes.

    .venv/bin/python tools/bench_recorder.py                       # 2 minutes, writes docs/bench-recorder.md
    .venv/bin/python tools/bench_recorder.py --seconds 5 --out /tmp/bench-recorder.md   # a short try
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
import platform
import shlex
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from bench_collect import ThreadCpu  # noqa: E402  (the same per-thread CPU accounting)
from standin_rig import stand_in_rig  # noqa: E402

from htouch.collector.config import ControlConfig, RigConfig  # noqa: E402
from htouch.collector.loop import Recorder  # noqa: E402
from htouch.dataset.store import Dataset  # noqa: E402

GOAL_P99_MS = 40.0
GOAL_DROPPED = 0


def run_delay_ns(tid: int) -> int:
    """Time the thread has spent runnable but waiting for a CPU (Linux schedstat), ns."""
    return int(Path(f"/proc/self/task/{tid}/schedstat").read_text().split()[1])


@dataclass
class GcPauses:
    """Every garbage collection while recording: generation, wall and CPU time (a collection holds the
    interpreter lock: every thread waits)."""

    rows: list[tuple[int, int, int]] = field(default_factory=list)
    _start: tuple[int, int] = (0, 0)

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = (time.perf_counter_ns(), time.thread_time_ns())
        else:
            self.rows.append((info["generation"], time.perf_counter_ns() - self._start[0],
                              time.thread_time_ns() - self._start[1]))


def thread_part(name: str | None, main_id: int, tid: int) -> str:
    """Which part of the recorder a thread is, by its Python name."""
    if tid == main_id:
        return "control thread"
    name = name or ""
    for prefix, part in (("reader-", "reader threads (camera, audio)"), ("writer-", "writer thread"),
                         ("standin-", "stand-in devices"), ("bench-", "benchmark probes")):
        if name.startswith(prefix):
            return part
    return "other threads (zarr codec and I/O pool, ...)"


@dataclass
class Probe:
    """Samples the writer's queue depth every 10 ms, the load average every second and thread CPU."""

    main_id: int
    writer: list = field(default_factory=list)  # the episode's writer, once it exists
    depths: list[int] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.cpu = ThreadCpu(lambda tid, names: thread_part(names.get(tid), self.main_id, tid))

    def sample_cpu(self) -> None:
        self.cpu.sample()

    def cpu_by_part(self, wall_s: float) -> dict[str, float]:
        return self.cpu.shares(wall_s)

    def run(self) -> None:
        k = 0
        while not self.stop.wait(0.01):
            k += 1
            if self.writer:
                self.depths.append(self.writer[0].queued)
            if k % 100 == 0:
                self.loads.append(os.getloadavg()[0])
                self.sample_cpu()


def record(seconds: float, scratch: Path) -> dict:
    """One episode of `seconds` on the stand-in rig; the figures."""
    config = RigConfig(kind="real", name="stand-in", control=ControlConfig(max_episode_s=seconds))
    streams = config.stream_specs()
    rig = stand_in_rig(streams, operator=True)
    ds = Dataset.create(scratch / "data", "stand-in", streams)
    probe = Probe(threading.main_thread().native_id)

    # Hand-out delay of every frame: capture time to the moment the camera reader got it (both host clock).
    delays: list[int] = []
    camera_read = rig.camera.read

    def timed_read(timeout_s: float):
        frame = camera_read(timeout_s)
        if frame is not None:
            delays.append(time.monotonic_ns() - frame.timestamp_ns)
        return frame

    rig.camera.read = timed_read
    commit_s: list[float] = []
    new_episode = ds.new_episode

    def new_timed_episode(**kwargs):
        writer = new_episode(**kwargs)
        commit = writer.commit

        def timed_commit(*args, **kw):
            start = time.perf_counter()
            try:
                return commit(*args, **kw)
            finally:
                commit_s.append(time.perf_counter() - start)

        writer.commit = timed_commit
        probe.writer.append(writer)
        return writer

    ds.new_episode = new_timed_episode

    # Each tick's wake-up on the wall clock with the control thread's CPU wait (runqueue) so far: of a long
    # period, how much the OS gave the cores to others, and how much was the interpreter lock or work.
    wakes: list[tuple[int, int, int]] = []
    sleep_until = rig.clock.sleep_until
    control_tid = threading.get_native_id()

    def sampled_sleep(t_ns: int) -> None:
        sleep_until(t_ns)
        wakes.append((time.monotonic_ns(), run_delay_ns(control_tid), time.thread_time_ns()))

    rig.clock.sleep_until = sampled_sleep
    gc_pauses = GcPauses()
    rec = Recorder(rig, ds, config.control, config.mapping, config.safety)
    poller = threading.Thread(target=probe.run, daemon=True, name="bench-probe")
    probe.sample_cpu()
    poller.start()
    load0, wall0, cpu0 = os.getloadavg(), time.monotonic(), os.times()
    gc.callbacks.append(gc_pauses)
    try:
        result = rec.run(1)
    finally:
        gc.callbacks.remove(gc_pauses)
        probe.sample_cpu()
        load1, wall1, cpu1 = os.getloadavg(), time.monotonic(), os.times()
        probe.stop.set()
        poller.join()
        rig.close()
    if result.error or not result.committed:
        raise SystemExit(f"the recording failed: {result.error or 'nothing committed'}")
    ep = ds.episode(result.committed[0])
    times, numbers = ep.camera_times, ep.read("camera/frame_number")
    events = ep.events()
    outcome = result.outcomes[0]
    periods = np.array(rec.timing.wall_periods_ns) / 1e6
    work = np.array(rec.timing.work_ns) / 1e6
    frame_period_ms = 1e3 / streams.camera.rate_hz
    delay_ms = np.array(delays) / 1e6
    writer = probe.writer[0]
    wall = wall1 - wall0
    gaps = int(np.sum(np.clip(np.diff(numbers) - 1, 0, None))) if len(numbers) > 1 else 0
    writer_dropped = dict(ep.attrs.get("dropped_rows", {}))
    w = np.array(wakes[-(len(periods) + 1):], dtype=np.int64)  # the recording's ticks (the last wakes)
    excess = np.diff(w[:, 0]) / 1e6 - 1e3 / config.control.rate_hz
    cpu_wait = np.diff(w[:, 1]) / 1e6
    long = np.diff(w[:, 0]) / 1e6 > GOAL_P99_MS
    tick_cpu = np.diff(w[:, 2]) / 1e6
    gcs = np.array(gc_pauses.rows, dtype=np.int64).reshape(-1, 3)
    return {
        "recorded_s": outcome.duration_s, "wall_s": wall, "ticks": rec.timing.ticks,
        "period": [float(np.percentile(periods, q)) for q in (50, 95, 99)] + [float(periods.max())],
        "period_std": float(periods.std()), "over_goal": int(long.sum()),
        "long_excess_ms": float(excess[long].sum()),
        "long_cpu_wait_ms": float(np.minimum(cpu_wait, excess)[long].sum()),
        "overruns": rec.timing.overruns,
        "work": [float(np.percentile(work, q)) for q in (50, 99)] + [float(work.max())],
        "tick_cpu": [float(np.percentile(tick_cpu, q)) for q in (50, 99)] + [float(tick_cpu.max())],
        "frames": len(times), "frames_expected": int(round(outcome.duration_s * streams.camera.rate_hz)),
        "gaps": gaps, "camera_dropped": rig.camera.dropped, "writer_dropped": writer_dropped,
        "dropped": gaps + writer_dropped.get("camera", 0),
        "late": int((delay_ms > frame_period_ms).sum()), "frame_period_ms": frame_period_ms,
        "delay": [float(np.percentile(delay_ms, q)) for q in (50, 99)] + [float(delay_ms.max())],
        "audio_blocks_dropped": rig.microphones.dropped,
        "faults": {k: sum(1 for e in events if e["kind"] == k) for k in
                   ("frame_drop", "camera_stall", "audio_overflow", "teleop_lost", "robot_error",
                    "writer_queue_full")},
        "gc": {gen: (int((gcs[:, 0] == gen).sum()), float(gcs[gcs[:, 0] == gen, 1].max(initial=0) / 1e6),
                     float(gcs[gcs[:, 0] == gen, 2].max(initial=0) / 1e6)) for gen in range(3)},
        "queue": [float(np.percentile(probe.depths, q)) for q in (50, 99)] + [max(probe.depths)]
        if probe.depths else [0.0, 0.0, 0],
        "queue_capacity": writer.queue_size,
        "commit_s": commit_s[0] if commit_s else float("nan"),
        "bytes": sum(f.stat().st_size for f in ep.path.rglob("*") if f.is_file()),
        "process_cores": ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / wall,
        "cpu": probe.cpu_by_part(wall),
        "load": (load0[0], float(np.mean(probe.loads)) if probe.loads else load0[0],
                 max(probe.loads, default=load0[0]), load1[0]),
    }


def report(r: dict, command: str, nice: int, note: str = "") -> str:
    p, w, c, d, q = r["period"], r["work"], r["tick_cpu"], r["delay"], r["queue"]
    period_ok = p[2] <= GOAL_P99_MS
    dropped_ok = r["dropped"] <= GOAL_DROPPED
    lines = [
        "# Recorder jitter in isolation (a rig that does not render)",
        "",
        f"Written by `{command}` on {dt.datetime.now().isoformat(timespec='minutes')} (do not edit by hand; "
        "rerun it).",
        "",
        "## Machine",
        "",
        f"- {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, Python "
        f"{platform.python_version()}, this process at nice {nice}.",
        f"- {note + ' ' if note else ''}1-minute load average before / mean while measuring / max / after: "
        f"{r['load'][0]:.2f} / {r['load'][1]:.2f} / {r['load'][2]:.2f} / {r['load'][3]:.2f} "
        f"(on {os.cpu_count()} CPUs).",
        "- Stand-in rig (tools/standin_rig.py): camera 640x480 RGB at 30 Hz (a precomputed second of varied "
        "images, stored as JPEG by the writer), 4 microphones at 32 kHz in 10 ms blocks, the Quest's readings "
        "at 72 Hz with the grip held, robot state read at the control rate (30 Hz); real time on the host "
        "clock. The real Recorder (clutch mapping, safety filter) and EpisodeWriter (Zarr on disk).",
        "",
        "## Goals (htouch issue 13)",
        "",
        "| goal | figure | |",
        "| --- | --- | --- |",
        f"| tick period p99 <= {GOAL_P99_MS:.0f} ms | {p[2]:.2f} ms | {'PASS' if period_ok else 'FAIL'} |",
        f"| {GOAL_DROPPED} frames dropped | {r['dropped']} | {'PASS' if dropped_ok else 'FAIL'} |",
        "",
        "## Results",
        "",
        "| | |",
        "| --- | --- |",
        f"| recorded / wall time | {r['recorded_s']:.1f} s / {r['wall_s']:.1f} s |",
        f"| loop ticks | {r['ticks']} |",
        f"| tick period p50 / p95 / p99 / max (wall) | {p[0]:.2f} / {p[1]:.2f} / {p[2]:.2f} / {p[3]:.1f} ms |",
        f"| tick period std (jitter) | {r['period_std']:.2f} ms |",
        f"| ticks over {GOAL_P99_MS:.0f} ms | {r['over_goal']} |",
        f"| their time over the period, of it waiting for a CPU (runqueue) | {r['long_excess_ms']:.0f} ms, "
        f"{r['long_cpu_wait_ms']:.0f} ms ({100 * r['long_cpu_wait_ms'] / max(r['long_excess_ms'], 1e-9):.0f} %) |",
        f"| overruns (tick > 1 period late) | {r['overruns']} |",
        f"| work per tick p50 / p99 / max (wall) | {w[0]:.2f} / {w[1]:.2f} / {w[2]:.1f} ms |",
        f"| control thread CPU per tick p50 / p99 / max | {c[0]:.2f} / {c[1]:.2f} / {c[2]:.1f} ms |",
        f"| frames stored (recorded time x 30 Hz) | {r['frames']} ({r['frames_expected']}) |",
        f"| frames dropped (frame-number gaps + rows the writer dropped) | {r['dropped']} |",
        f"| frames late (handed out > {r['frame_period_ms']:.1f} ms after capture) | {r['late']} |",
        f"| frame hand-out delay p50 / p99 / max | {d[0]:.1f} / {d[1]:.1f} / {d[2]:.1f} ms |",
        f"| audio blocks dropped by the device queue | {r['audio_blocks_dropped']} |",
        "| rows the writer dropped | " + (", ".join(f"{k} {v}" for k, v in r["writer_dropped"].items() if v)
                                        or "0") + " |",
        "| fault events | " + (", ".join(f"{k} {v}" for k, v in r["faults"].items() if v) or "none") + " |",
        f"| writer queue depth p50 / p99 / max (of {r['queue_capacity']}) | {q[0]:.0f} / {q[1]:.0f} / {q[2]} |",
        f"| commit time | {r['commit_s']:.2f} s |",
        "| garbage collections (generation: count, longest wall / CPU) | "
        + "; ".join(f"{g}: {n}, {w:.1f} / {c:.1f} ms" for g, (n, w, c) in r["gc"].items()) + " |",
        f"| episode size on disk | {r['bytes'] / 1e6:.1f} MB |",
        f"| CPU, whole process | {r['process_cores']:.2f} cores |",
    ]
    for part in sorted(r["cpu"]):
        lines.append(f"| CPU, {part} | {r['cpu'][part]:.3f} cores |")
    lines += [
        "",
        "## Reading the figures",
        "",
        "- Tick periods are host wall-clock times between the loop's wake-ups while recording (the loop's own "
        "record); an overrun is a tick that woke more than one period late.",
        "- Time over the period of the ticks over the goal, and of it waiting for a CPU: from the control "
        "thread's run delay in /proc (schedstat), the time it was ready to run while the OS ran other tasks "
        "(other processes on the shared cores, or this process's other threads). The rest is waiting for the "
        "interpreter lock held by another thread of this process (a garbage collection, the writer, zarr) or "
        "the tick's own work, whose CPU time is given per tick.",
        "- Frames dropped: jumps in the stored frame numbers (the stand-in camera, like the RealSense backend, "
        "drops the oldest of 8 queued frames when the reader falls behind) plus camera rows the writer could "
        "not queue. A late frame reached the camera reader more than one frame period after its capture.",
        "- Writer queue depth: rows waiting for the writer thread, sampled every 10 ms; past its capacity "
        "rows are dropped (and recorded as writer_queue_full events). Commit time: `EpisodeWriter.commit()` "
        "(the last flush, the checksum manifest, the rename), after the last tick.",
        "- The figures depend on what else the shared machine runs (the load average above) and on this "
        "process's nice value.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=120.0, help="length of the recording (default 120 s)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "bench-recorder.md", help="markdown report")
    ap.add_argument("--note", default="", help="what else ran on the machine, for the report")
    args = ap.parse_args(argv)
    if not args.seconds > 0:
        ap.error(f"--seconds must be more than 0, got {args.seconds:g}")
    if not args.out.parent.is_dir():
        ap.error(f"--out: the directory {args.out.parent} does not exist")
    scratch = Path(tempfile.mkdtemp(prefix="bench-recorder-"))
    try:
        r = record(args.seconds, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    command = shlex.join(["python", "tools/bench_recorder.py", *(sys.argv[1:] if argv is None else argv)])
    text = report(r, command, os.nice(0), args.note.strip())
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(args.out)
    print(text)


if __name__ == "__main__":
    main()
