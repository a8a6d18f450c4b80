#!/usr/bin/env python
"""Recording-loop benchmark: loop rate and jitter, CPU use of the recorder, frames dropped and the
capture-to-disk latency, over a long recording on the simulated rig.

Two runs of the real recording loop (htouch.collector.loop.Recorder) on the simulated rig (task zip, the
scripted operator, camera at --width x --height):
  1. paced: the simulated rig paced to the wall clock, like a real rig, for --seconds of one episode (the
     operator's end buttons are withheld, so the episode runs until the time limit);
  2. fast: the simulated rig as fast as it goes (how recording throughput compares with real time).

Everything is measured from the outside: tick periods from the loop's own wall-clock record, CPU per thread
from /proc/self/task/*/stat, frames flushed to disk by polling the writer's .flushed.json every 10 ms, and
each frame's capture time on the wall clock from the simulated clock's mapping (sampled at every tick). The
machine may be shared: the load average is printed with the figures.

    .venv/bin/python tools/bench_collect.py                       # 2-minute paced run + 30 s fast, ~3.5 min
    .venv/bin/python tools/bench_collect.py --seconds 10 --fast-seconds 5 --out /tmp/bench.md   # smoke run
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from htouch.collector.config import CameraConfig, ControlConfig, RigConfig  # noqa: E402
from htouch.collector.loop import Recorder  # noqa: E402
from htouch.dataset.schema import INCOMING
from htouch.dataset.store import Dataset  # noqa: E402
from htouch.dataset.writer import FLUSHED_FILE  # noqa: E402
from htouch.rigs import build_rig  # noqa: E402

NS = 1_000_000_000
TICKS = os.sysconf("SC_CLK_TCK")
END_BUTTONS = ("A", "B", "RJ")


def thread_cpu_s(native_id: int | str) -> float | None:
    """user + system CPU seconds of one thread of this process (None once it has ended)."""
    try:
        fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14 and 15 of stat)


def all_threads_cpu() -> dict[int, float]:
    out = {}
    for task in Path("/proc/self/task").iterdir():
        cpu = thread_cpu_s(task.name)
        if cpu is not None:
            out[int(task.name)] = cpu
    return out


@dataclass
class ThreadCpu:
    """CPU seconds of every thread of this process between the first and the last `sample()`, summed by the
    group `group_of(tid, python_names)` names (a thread's group is decided when it is first seen)."""

    group_of: Callable[[int, dict[int, str]], str]
    first: dict[int, float] = field(default_factory=dict)
    last: dict[int, float] = field(default_factory=dict)
    groups: dict[int, str] = field(default_factory=dict)

    def sample(self) -> None:
        names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
        for tid, cpu in all_threads_cpu().items():
            self.first.setdefault(tid, cpu)
            self.last[tid] = cpu
            if tid not in self.groups:
                self.groups[tid] = self.group_of(tid, names)

    def shares(self, wall_s: float) -> dict[str, float]:
        """Cores used per group over wall_s seconds."""
        out: dict[str, float] = {}
        for tid, last in self.last.items():
            g = self.groups[tid]
            out[g] = out.get(g, 0.0) + (last - self.first[tid]) / wall_s
        return out


def thread_group(tid: int, python_names: dict[int, str], main_id: int) -> str:
    """Which part of the recorder a thread belongs to, by its Python name or its kernel name."""
    if tid == main_id:
        return "control thread (loop + simulation)"
    name = python_names.get(tid)
    if name is None:
        try:
            name = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
        except OSError:
            name = "?"
    if name.startswith("reader-"):
        return "reader threads (camera, audio)"
    if name.startswith("writer-"):
        return "writer thread"
    if name.startswith("llvmpipe"):
        return "Mesa render threads (simulation)"
    if name.startswith("bench-"):
        return "benchmark probes"
    return "other threads (zarr codec and I/O pool, ...)"


class NoEndButtons:
    """The scripted operator with its end buttons withheld: the episode runs to the time limit."""

    def __init__(self, teleop):
        self.teleop = teleop

    def start(self):
        self.teleop.start()

    def stop(self):
        self.teleop.stop()

    def read(self):
        r = self.teleop.read()
        if r is not None:
            r.buttons = {k: (v and k not in END_BUTTONS) for k, v in r.buttons.items()}
        return r


@dataclass
class Observer:
    """Polls the writer's flush progress and samples every thread's CPU while the recorder runs."""

    root: Path
    main_id: int
    flushes: list[tuple[int, int]] = field(default_factory=list)  # (wall ns, camera frames on disk)
    committed_wall: int | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.cpu = ThreadCpu(lambda tid, names: thread_group(tid, names, self.main_id))

    def sample_cpu(self) -> None:
        self.cpu.sample()

    def cpu_by_group(self, wall_s: float) -> dict[str, float]:
        return self.cpu.shares(wall_s)

    def run(self) -> None:
        last = -1
        k = 0
        while not self.stop.wait(0.01):
            k += 1
            if k % 5 == 0:
                self.sample_cpu()
            for flushed in (self.root / INCOMING).glob(f"episode_*/{FLUSHED_FILE}"):
                try:
                    n = json.loads(flushed.read_text())["lengths"]["camera/rgb"]
                except (OSError, ValueError, KeyError):
                    continue
                if n != last:
                    self.flushes.append((time.monotonic_ns(), n))
                    last = n
            if self.committed_wall is None and any(self.root.glob("episode_*")):
                self.committed_wall = time.monotonic_ns()


def run(seconds: float, width: int, height: int, realtime: bool, scratch: Path) -> dict:
    cfg = RigConfig(camera=CameraConfig(width=width, height=height),
                    control=ControlConfig(max_episode_s=seconds))
    rig = build_rig(cfg, "zip", "scripted", seed=0, realtime=realtime)
    rig.teleop = NoEndButtons(rig.teleop)
    root = scratch / ("paced" if realtime else "fast")
    ds = Dataset.create(root, "zip", rig.streams)
    # Wall time against simulated time at every tick: the map from a frame's time stamp to the wall clock.
    pairs: list[tuple[int, int]] = []
    sleep_until = rig.clock.sleep_until

    def sampled_sleep(t_ns: int) -> None:
        sleep_until(t_ns)
        pairs.append((time.monotonic_ns(), rig.clock.now_ns()))

    rig.clock.sleep_until = sampled_sleep
    rec = Recorder(rig, ds, cfg.control, cfg.mapping, cfg.safety)
    obs = Observer(root, threading.main_thread().native_id)
    poller = threading.Thread(target=obs.run, daemon=True, name="bench-poller")
    obs.sample_cpu()
    poller.start()
    cpu0, wall0, load0 = os.times(), time.monotonic(), os.getloadavg()
    render0, audio0 = rig_timing(rig)
    try:
        result = rec.run(1)
    finally:
        obs.sample_cpu()
        cpu1, wall1, load1 = os.times(), time.monotonic(), os.getloadavg()
        render1, audio1 = rig_timing(rig)
        time.sleep(0.2)
        obs.stop.set()
        poller.join()
        rig.close()
    ep = ds.episode(result.committed[0])
    times, numbers = ep.camera_times, ep.read("camera/frame_number")
    events = ep.events()
    wall = wall1 - wall0
    process_cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    t = rec.timing
    periods = np.array(t.wall_periods_ns) / 1e6

    # Capture-to-disk latency: a frame is on disk at the first poll whose flushed length covers it.
    offsets = np.array([w - s for w, s in pairs])
    offset = int(np.median(offsets[len(offsets) // 10:])) if len(offsets) else 0
    flush_wall = np.full(len(times), obs.committed_wall or 0, dtype=np.int64)
    for w, n in reversed(obs.flushes):
        flush_wall[:n] = w
    latency_ms = (flush_wall - (times + offset)) / 1e6

    sim_s = (int(times[-1]) - int(times[0])) / NS if len(times) > 1 else 0.0
    return {
        "mode": "paced (real time)" if realtime else "fast (as fast as it goes)",
        "recorded_s": sim_s,
        "wall_s": wall,
        "speed": sim_s / wall if wall > 0 else 0.0,
        "ticks": t.ticks,
        "period_p50_ms": float(np.percentile(periods, 50)),
        "period_p99_ms": float(np.percentile(periods, 99)),
        "period_max_ms": float(periods.max()),
        "period_std_ms": float(periods.std()),
        "overruns": t.overruns,
        "work_p50_ms": float(np.percentile(np.array(t.work_ns) / 1e6, 50)),
        "work_p99_ms": float(np.percentile(np.array(t.work_ns) / 1e6, 99)),
        "apply_p50_ms": float(np.percentile(np.array(t.apply_ns) / 1e6, 50)),
        "apply_share": float(np.sum(t.apply_ns) / np.sum(t.work_ns)) if t.work_ns else 0.0,
        "process_cores": process_cpu / wall,
        "cpu_groups": obs.cpu_by_group(wall),
        "render_s": (render1 - render0) / NS,
        "audio_s": (audio1 - audio0) / NS,
        "frames": len(times),
        "frames_expected": int(round(sim_s * rig.streams.camera.rate_hz)) + 1,
        "frame_number_gaps": int(np.sum(np.clip(np.diff(numbers) - 1, 0, None))) if len(numbers) > 1 else 0,
        "frame_drop_events": sum(e["detail"].get("count", 0) for e in events if e["kind"] == "frame_drop"),
        "writer_dropped": dict(ep.attrs.get("dropped_rows", {})),
        "fault_events": {k: sum(1 for e in events if e["kind"] == k) for k in
                         ("camera_stall", "audio_overflow", "teleop_lost", "robot_error", "writer_queue_full")},
        "latency_p50_ms": float(np.percentile(latency_ms, 50)),
        "latency_p99_ms": float(np.percentile(latency_ms, 99)),
        "latency_max_ms": float(latency_ms.max()),
        "load": (load0[0], load1[0]),
        "bytes": sum(f.stat().st_size for f in ep.path.rglob("*") if f.is_file()),
    }


def recorder_cores(r: dict) -> float:
    g = r["cpu_groups"]
    control = g.get("control thread (loop + simulation)", 0.0) * (1 - r["apply_share"])
    return control + sum(v for k, v in g.items() if k.startswith(("reader", "writer", "other")))


def rig_timing(rig) -> tuple[int, int]:
    sim = rig.closers[0].__self__ if rig.closers else None
    timing = getattr(sim, "timing", {})
    return int(timing.get("render", 0)), int(timing.get("audio", 0))


def report(results: list[dict], args, cmd: str) -> str:
    lines = [
        "# Recording loop benchmark",
        "",
        f"Written by `{cmd}` on {dt.datetime.now().isoformat(timespec='minutes')}.",
        "",
        "## Machine",
        "",
        f"- {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, Python "
        f"{platform.python_version()}; the machine is shared with other work: the 1-minute load average "
        "before and after each run is given.",
        f"- Simulated rig: task zip, scripted operator, camera {args.width}x{args.height} at 30 Hz (rendered "
        "offscreen with Mesa on the CPU), 4 microphones at 32 kHz (synthesized), control at 30 Hz.",
        "",
        "## Results",
        "",
        "| | " + " | ".join(r["mode"] for r in results) + " |",
        "| --- | " + " | ".join("---" for _ in results) + " |",
    ]

    def row(name: str, fmt) -> None:
        lines.append(f"| {name} | " + " | ".join(fmt(r) for r in results) + " |")

    row("recorded / wall time", lambda r: f"{r['recorded_s']:.1f} s / {r['wall_s']:.1f} s "
                                         f"({r['speed']:.2f}x real time)")
    row("loop ticks", lambda r: str(r["ticks"]))
    row("tick period p50 / p99 / max (wall)", lambda r: f"{r['period_p50_ms']:.2f} / {r['period_p99_ms']:.2f} / "
                                                          f"{r['period_max_ms']:.1f} ms")
    row("tick period std (jitter)", lambda r: f"{r['period_std_ms']:.2f} ms")
    row("overruns (tick > 1 period late)", lambda r: str(r["overruns"]))
    row("work per tick p50 / p99", lambda r: f"{r['work_p50_ms']:.1f} / {r['work_p99_ms']:.1f} ms")
    row("of which robot.apply() (the simulation)", lambda r: f"{100 * r['apply_share']:.0f} % "
                                                              f"(p50 {r['apply_p50_ms']:.1f} ms)")
    row("CPU, whole process", lambda r: f"{r['process_cores']:.2f} cores")
    for group in sorted({g for r in results for g in r["cpu_groups"]}):
        row(f"CPU, {group}", lambda r, g=group: f"{r['cpu_groups'].get(g, 0.0):.3f} cores")
    row("CPU, the recorder without the simulation", lambda r: f"{recorder_cores(r):.2f} cores")
    row("simulation render / audio synthesis", lambda r: f"{r['render_s']:.1f} s / {r['audio_s']:.1f} s")
    row("frames stored / expected", lambda r: f"{r['frames']} / {r['frames_expected']}")
    row("frames dropped (frame-number gaps)", lambda r: str(r["frame_number_gaps"]))
    row("rows the writer dropped", lambda r: str(sum(r["writer_dropped"].values())))
    row("fault events", lambda r: ", ".join(f"{k} {v}" for k, v in r["fault_events"].items() if v) or "none")
    row("capture-to-disk latency p50 / p99 / max", lambda r: f"{r['latency_p50_ms']:.0f} / {r['latency_p99_ms']:.0f}"
                                                               f" / {r['latency_max_ms']:.0f} ms")
    row("episode size on disk", lambda r: f"{r['bytes'] / 1e6:.1f} MB")
    row("load average before / after", lambda r: f"{r['load'][0]:.2f} / {r['load'][1]:.2f}")
    lines += [
        "",
        "## Reading the figures",
        "",
        "- Tick periods are host wall-clock times between loop wake-ups while recording (the loop's own record). "
        "Jitter is their spread; an overrun is a tick that woke more than one period late.",
        "- The simulation runs inside `robot.apply()` in the control thread (physics, offscreen rendering, "
        "audio synthesis, with Mesa's render threads): on a real rig that work is done by the devices. "
        "\"The recorder without the simulation\" is the control thread's time outside `robot.apply()` plus the "
        "reader, writer and zarr codec threads: what recording costs on top of the devices.",
        "- Capture-to-disk latency: from a frame's capture time (its time stamp mapped to the wall clock) to the "
        "first moment its row is counted in the writer's `.flushed.json` (polled every 10 ms), or the commit for "
        "the last second. The writer flushes about once a second, so most of the latency is that interval: "
        "a crash loses at most about a second. In the fast run the writer blocks instead of dropping (the "
        "simulation is an offline producer and waits for the disk), so its latency is queueing, not a "
        "real-rig figure.",
        "- Frames dropped: jumps in the stored frame numbers (the simulated camera drops the oldest frame when "
        "nobody reads it, as a real driver does) plus rows the writer could not queue.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=120.0, help="length of the paced recording")
    ap.add_argument("--fast-seconds", type=float, default=30.0, help="length of the fast recording (0: skip)")
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "bench-collect.md")
    args = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-collect-"))
    try:
        results = [run(args.seconds, args.width, args.height, True, scratch)]
        if args.fast_seconds > 0:
            results.append(run(args.fast_seconds, args.width, args.height, False, scratch))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    cmd = "python tools/bench_collect.py " + " ".join(sys.argv[1:])
    text = report(results, args, cmd.strip())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
