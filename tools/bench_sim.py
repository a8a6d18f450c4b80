#!/usr/bin/env python
"""Simulated-rig benchmark: simulation speed as a multiple of real time, where the time goes (physics,
contact extraction, offscreen rendering, audio synthesis, writing), and the scripted operator's success rate.

Three measurements, all at the control rate of 30 Hz with the camera at --width x --height (640x480 by default)
and four synthesized 32 kHz microphones:
  1. recording: the real recording loop (htouch.collector.loop.Recorder) records --episodes episodes per task
     into a temporary dataset as fast as it goes; simulated seconds over wall seconds is the speed a user of
     `htouch collect` gets. CPU time is split by thread (/proc/self/task/*/stat, sampled every 50 ms so that
     the per-episode writer threads are counted) and, inside the control thread, by the simulation's own
     timers (physics, contacts, render submission, audio).
  2. simulation alone: the same episodes driven through the clutch mapping and the safety filter without a
     writer (htouch.sim.operator.drive), frames and audio drained and dropped.
  3. operator: --success-episodes episodes per task with the camera off, success = the operator pressed A
     and the task's own predicate holds.

The machine may be shared: the load average before and after is printed with the figures; ratios within one
run compare. The dataset goes to a temporary directory that is removed at the end.

    .venv/bin/python tools/bench_sim.py                        # ~5 min, writes docs/bench-sim.md
    .venv/bin/python tools/bench_sim.py --quick --out /tmp/bench-sim.md   # smoke run (64x48, zip only)
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from bench_collect import all_threads_cpu, thread_group  # noqa: E402  (the same thread accounting)

from htouch.collector.config import RigConfig  # noqa: E402
from htouch.collector.loop import Recorder  # noqa: E402
from htouch.dataset.store import Dataset  # noqa: E402
from htouch.rigs import build_rig  # noqa: E402
from htouch.sim.operator import ScriptedOperator, drive  # noqa: E402
from htouch.sim.rig import SimRig  # noqa: E402
from htouch.sim.tasks import TASKS  # noqa: E402

NS = 1_000_000_000
PARTS = ("physics", "contacts", "render", "audio", "writing", "other")


@dataclass
class Speed:
    sim_s: float = 0.0
    wall_s: float = 0.0
    cpu: dict[str, float] = field(default_factory=lambda: defaultdict(float))  # CPU seconds by part
    timers: dict[str, float] = field(default_factory=lambda: defaultdict(float))  # control-thread seconds
    frames: int = 0
    render_wall_s: float = 0.0
    episodes: int = 0
    successes: int = 0

    @property
    def factor(self) -> float:
        return self.sim_s / self.wall_s if self.wall_s else 0.0

    def add(self, other: Speed) -> None:
        self.sim_s += other.sim_s
        self.wall_s += other.wall_s
        self.frames += other.frames
        self.episodes += other.episodes
        self.successes += other.successes
        for k, v in other.cpu.items():
            self.cpu[k] += v
        for k, v in other.timers.items():
            self.timers[k] += v


class ThreadSampler(threading.Thread):
    """Samples every thread's CPU time every 50 ms and keeps the last value seen (threads come and go)."""

    def __init__(self):
        super().__init__(name="bench-sampler", daemon=True)
        self.last: dict[int, float] = {}
        self.group: dict[int, str] = {}
        self.first: dict[int, float] = all_threads_cpu()
        self._stop_event = threading.Event()
        self.main_id = threading.main_thread().native_id

    def sample(self) -> None:
        names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
        for tid, cpu in all_threads_cpu().items():
            self.last[tid] = cpu
            if tid not in self.group:
                self.group[tid] = thread_group(tid, names, self.main_id)

    def run(self) -> None:
        while not self._stop_event.wait(0.05):
            self.sample()

    def stop(self) -> dict[str, float]:
        """CPU seconds per thread group since the sampler was made."""
        self._stop_event.set()
        self.join()
        self.sample()
        out: dict[str, float] = defaultdict(float)
        for tid, cpu in self.last.items():
            out[self.group[tid]] += cpu - self.first.get(tid, 0.0)
        return out


def rig_config(width: int, height: int) -> RigConfig:
    config = RigConfig()
    config.camera.width, config.camera.height = width, height
    return config


def sim_timers(sim: SimRig) -> dict[str, float]:
    w, r = sim.world.timing, sim.timing
    return {"physics": w["physics"] / NS, "contacts": w["contacts"] / NS, "render": r["render"] / NS,
            "audio": r["audio"] / NS}


def split_cpu(groups: dict[str, float], timers: dict[str, float]) -> dict[str, float]:
    """CPU seconds by part: the control thread split by the simulation's timers, the other threads by role."""
    control = groups.get("control thread (loop + simulation)", 0.0)
    cpu = {part: timers.get(part, 0.0) for part in ("physics", "contacts", "audio")}
    cpu["render"] = timers.get("render", 0.0) + groups.get("Mesa render threads (simulation)", 0.0)
    cpu["writing"] = groups.get("writer thread", 0.0) + groups.get("other threads (zarr codec and I/O pool, ...)", 0.0)
    cpu["other"] = (max(control - sum(timers.values()), 0.0) + groups.get("reader threads (camera, audio)", 0.0))
    return cpu


def measure_recording(task: str, episodes: int, width: int, height: int, seed: int) -> Speed:
    """The real recording loop, as fast as it goes, into a temporary dataset."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-sim-"))
    config = rig_config(width, height)
    rig = build_rig(config, task, "scripted", seed=seed)
    sim = next(e for e in rig.event_emitters if isinstance(e, SimRig))
    try:
        dataset = Dataset.open_or_create(tmp / "ds", task, rig.streams)
        recorder = Recorder(rig, dataset, config.control, config.mapping, config.safety)
        sampler = ThreadSampler()
        sampler.start()
        t_sim, t_wall = sim.clock.now_ns(), time.perf_counter()
        result = recorder.run(episodes)
        wall = time.perf_counter() - t_wall
        groups = sampler.stop()
        speed = Speed(sim_s=(sim.clock.now_ns() - t_sim) / NS, wall_s=wall, frames=sim.timing["frames"],
                      render_wall_s=sim.timing["render_wall"] / NS, episodes=len(result.committed))
        speed.timers.update(sim_timers(sim))
        speed.cpu.update(split_cpu(groups, speed.timers))
        speed.successes = sum(bool(dataset.episode(i).success) for i in result.committed)
        return speed
    finally:
        for close in rig.closers:
            close()
        shutil.rmtree(tmp, ignore_errors=True)


def measure_simulation(task: str, episodes: int, width: int, height: int, seed: int) -> Speed:
    """The simulation alone: mapping, safety filter and robot.apply(); frames and audio drained and dropped."""
    sim = SimRig(task, seed=seed, config=rig_config(width, height))
    op = ScriptedOperator(sim, seed=seed)
    sim.camera.start()
    sim.microphones.start()
    apply = sim.robot.apply

    def apply_and_drain(action):
        apply(action)
        while sim.camera.read(0) is not None:
            pass
        while sim.microphones.read(0) is not None:
            pass

    sim.robot.apply = apply_and_drain
    speed = Speed()
    try:
        sampler = ThreadSampler()
        sampler.start()
        t_sim, t_wall = sim.clock.now_ns(), time.perf_counter()
        for _ in range(episodes):
            outcome = drive(sim, op, max_seconds=60)
            speed.episodes += 1
            speed.successes += outcome.command == "success" and outcome.success
        speed.wall_s = time.perf_counter() - t_wall
        groups = sampler.stop()
        speed.sim_s = (sim.clock.now_ns() - t_sim) / NS
        speed.frames = sim.timing["frames"]
        speed.timers.update(sim_timers(sim))
        speed.cpu.update(split_cpu(groups, speed.timers))
    finally:
        sim.close()
    return speed


@dataclass
class Success:
    task: str
    episodes: int = 0
    successes: int = 0
    retried: int = 0
    seconds: list[float] = field(default_factory=list)
    robot_errors: int = 0
    failures: list[str] = field(default_factory=list)


def measure_success(task: str, episodes: int, seed0: int) -> Success:
    """One episode per seed, the camera off (the operator plans from the simulation's state)."""
    out = Success(task)
    for seed in range(seed0, seed0 + episodes):
        with SimRig(task, seed=seed, config=rig_config(64, 48)) as sim:
            op = ScriptedOperator(sim, seed=seed)
            outcome = drive(sim, op, max_seconds=90)
        ok = outcome.command == "success" and outcome.success
        out.episodes += 1
        out.successes += ok
        out.retried += op.attempts > 1
        out.seconds.append(outcome.seconds)
        out.robot_errors += len(outcome.robot_errors)
        if not ok:
            out.failures.append(f"seed {seed}: {outcome.command or 'time limit'}, progress {outcome.progress:.2f}")
    return out


def shares(cpu: dict[str, float]) -> dict[str, float]:
    total = sum(cpu.get(p, 0.0) for p in PARTS) or 1.0
    return {p: cpu.get(p, 0.0) / total for p in PARTS}


def cpu_per_s(s: Speed) -> float:
    return sum(s.cpu.get(p, 0.0) for p in PARTS) / max(s.sim_s, 1e-9)


def cpu_row(label: str, s: Speed) -> str:
    sh = shares(s.cpu)
    per = {p: s.cpu.get(p, 0.0) / max(s.sim_s, 1e-9) for p in PARTS}
    cells = " | ".join(f"{per[p] * 1e3:.0f} ms ({sh[p] * 100:.0f} %)" for p in PARTS)
    return f"| {label} | {cells} | {sum(per.values()) * 1e3:.0f} ms |"


def report(args, recording: dict[str, Speed], alone: dict[str, Speed], success: dict[str, Success],
           render_ms: float, loads: tuple[float, float], command: str) -> str:
    total_rec, total_alone = Speed(), Speed()
    for s in recording.values():
        total_rec.add(s)
    for s in alone.values():
        total_alone.add(s)
    goal = total_rec.factor >= 1.0
    lines = [
        "# Simulated rig benchmark", "",
        f"Written by `{command}` on {dt.datetime.now().isoformat(timespec='minutes')}.", "",
        "## Machine", "",
        f"- {platform.machine()}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}, "
        f"MuJoCo offscreen rendering with MUJOCO_GL={os.environ.get('MUJOCO_GL', '')} (Mesa on the CPU).",
        f"- The machine is shared with other work: 1-minute load average {loads[0]:.2f} before, {loads[1]:.2f} "
        "after. Figures are wall-clock for speed and CPU time for shares.",
        f"- Camera {args.width}x{args.height} at 30 Hz, 4 microphones at 32 kHz (synthesized), physics steps of "
        "2 ms, control at 30 Hz; shadows off (the default; they cost about 2.5x the render time).", "",
        "## Goal", "",
        "| goal | measured | |", "| --- | --- | --- |",
        f"| simulation + recording at least real time ({args.width}x{args.height}, audio, writing) | "
        f"{total_rec.factor:.2f}x real time | {'PASS' if goal else 'FAIL'} |",
        "| scripted operator succeeds on at least 90 % of episodes of each task | "
        + ", ".join(f"{t} {s.successes}/{s.episodes}" for t, s in success.items()) + " | "
        + ("PASS" if all(s.successes >= 0.9 * s.episodes for s in success.values()) else "FAIL") + " |", "",
        "## 1. Speed", "",
        "| task | recorded with `htouch collect`'s loop | CPU per simulated s | simulation alone (no writer) "
        "| CPU per simulated s | episodes |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for task in recording:
        r, a = recording[task], alone[task]
        lines.append(f"| {task} | {r.sim_s:.1f} s in {r.wall_s:.1f} s: **{r.factor:.2f}x** real time | "
                     f"{cpu_per_s(r):.2f} s | {a.sim_s:.1f} s in {a.wall_s:.1f} s: **{a.factor:.2f}x** | "
                     f"{cpu_per_s(a):.2f} s | {r.episodes} + {a.episodes} |")
    lines += [f"| all | **{total_rec.factor:.2f}x** | {cpu_per_s(total_rec):.2f} s | **{total_alone.factor:.2f}x** | "
              f"{cpu_per_s(total_alone):.2f} s | |", "",
              "Wall-clock speed depends on what else runs on the machine; CPU seconds per simulated second do not "
              "(with 2 cores, anything under 2 s can in principle keep up with real time).", "",
              f"One {args.width}x{args.height} frame costs {render_ms:.1f} ms of wall time to render in the control "
              "thread (median over the recording runs).", "",
              "## 2. Where the CPU time goes (per simulated second, and share)", "",
              "| run | physics | contacts | render | audio | writing | other | total |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for task in recording:
        lines.append(cpu_row(f"{task}, recording", recording[task]))
    lines.append(cpu_row("all, recording", total_rec))
    lines.append(cpu_row("all, simulation alone", total_alone))
    lines += ["",
              "- physics: the impedance controller and `mj_step`; contacts: extracting what the microphones hear "
              "(forces, slip, impulses, materials) from MuJoCo's contacts, in Python; render: the control thread's "
              "draw calls and read-back plus Mesa's llvmpipe threads; audio: `ContactAudioSynth.render`; writing: "
              "the episode writer thread and zarr's codec and I/O threads (JPEG encoding, compression, files); "
              "other: the rest of the control thread (recording loop, clutch mapping, safety filter, scripted "
              "operator, Python) and the stream reader threads.",
              "- A total over 1000 ms per simulated second means more than one core was busy: with 2 cores the "
              "simulation (control thread) and the writer run side by side.", "",
              "## 3. Scripted operator", "",
              "| task | success | retried (2nd attempt) | episode length min / mean / max | robot errors |",
              "| --- | --- | --- | --- | --- |"]
    for task, s in success.items():
        sec = np.array(s.seconds)
        lines.append(f"| {task} | {s.successes}/{s.episodes} ({100 * s.successes / max(s.episodes, 1):.0f} %) | "
                     f"{s.retried} | {sec.min():.1f} / {sec.mean():.1f} / {sec.max():.1f} s | {s.robot_errors} |")
    failures = [f"{t}: {f}" for t, s in success.items() for f in s.failures]
    lines += ["", "Failures: " + ("; ".join(failures) if failures else "none") + ".", "",
              f"Seeds {args.seed} to {args.seed + args.success_episodes - 1}, one episode each, driven through "
              "ClutchMapping and SafetyFilter with the default configuration (the camera off: the operator plans "
              "from the simulation's state and reacts to the contacts the microphones hear).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=2, help="recorded and simulated episodes per task")
    parser.add_argument("--success-episodes", type=int, default=10, help="operator episodes per task")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated tasks")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="smoke run: 64x48, zip, 1 episode, 2 operator runs")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench-sim.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.width, args.height, args.episodes, args.success_episodes, args.tasks = 64, 48, 1, 2, "zip"
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or args.episodes < 1 or args.success_episodes < 1 or args.width < 1 or args.height < 1:
        parser.error(f"tasks must be among {', '.join(TASKS)} (got {', '.join(unknown) or 'ok'}); "
                     "episode counts and sizes must be positive")
    command = "python tools/bench_sim.py" + "".join(f" {shlex.quote(a)}" for a in (argv or sys.argv[1:]))

    from rich.console import Console
    from rich.table import Table

    console = Console()
    load_before = os.getloadavg()[0]
    recording, alone, success = {}, {}, {}
    render_ms = []
    for task in tasks:
        console.print(f"[bold]{task}[/]: recording {args.episodes} episode(s) at {args.width}x{args.height} ...")
        recording[task] = measure_recording(task, args.episodes, args.width, args.height, args.seed)
        r = recording[task]
        render_ms.append(r.render_wall_s / max(r.frames, 1) * 1e3)
        console.print(f"  {r.sim_s:.1f} s simulated in {r.wall_s:.1f} s ({r.factor:.2f}x real time)")
        console.print(f"[bold]{task}[/]: simulation alone ...")
        alone[task] = measure_simulation(task, args.episodes, args.width, args.height, args.seed)
        console.print(f"  {alone[task].factor:.2f}x real time")
        console.print(f"[bold]{task}[/]: operator over {args.success_episodes} seeds ...")
        success[task] = measure_success(task, args.success_episodes, args.seed)
        console.print(f"  {success[task].successes}/{success[task].episodes} succeeded")
    loads = (load_before, os.getloadavg()[0])

    table = Table(title="htouch simulated rig benchmark")
    for col in ("task", "recording x real time", "alone x real time", "operator success",
                *(f"{p} %" for p in PARTS)):
        table.add_column(col, justify="right")
    for task in tasks:
        sh = shares(recording[task].cpu)
        table.add_row(task, f"{recording[task].factor:.2f}", f"{alone[task].factor:.2f}",
                      f"{success[task].successes}/{success[task].episodes}", *(f"{sh[p] * 100:.0f}" for p in PARTS))
    console.print(table)
    text = report(args, recording, alone, success, float(np.median(render_ms)), loads, command)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
