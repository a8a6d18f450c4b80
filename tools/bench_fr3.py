#!/usr/bin/env python
"""FR3 backend benchmark against franky-sim on 127.0.0.1 (the FR3's libfranka protocol, MuJoCo): the state-read
latency (a libfranka read_once, and the age of the state the 30 Hz loop gets), the command-to-motion latency
(apply() of a 2 cm step -> the measured end effector 0.5 mm on its way), and the 1 kHz torque thread's timing
(cycles, late cycles, controller packets missed, computation time) alone and while the recording loop runs at
30 Hz with its writer (stand-in camera and microphones, tests/loop_devices.py), on this machine.

    .venv/bin/python tools/bench_fr3.py            # writes docs/bench-fr3.md
    .venv/bin/python tools/bench_fr3.py --quick --out /tmp/bench-fr3.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from htouch.collector.config import ControlConfig, RobotConfig  # noqa: E402
from htouch.collector.devices import Action  # noqa: E402
from htouch.collector.hardware.fr3 import FR3Robot  # noqa: E402
from htouch.collector.loop import Recorder  # noqa: E402
from htouch.collector.rig import Rig  # noqa: E402
from htouch.dataset.store import Dataset  # noqa: E402
from tests.hw.fr3_sim import HOST, FrankySim, port_in_use  # noqa: E402
from tests.loop_devices import TEST_STREAMS, Plan, PlannedWorld  # noqa: E402


def bench_read_once(n: int) -> np.ndarray:
    """ms per libfranka read_once (no control running: a state packet every 1 ms)."""
    import pylibfranka as pf

    robot = pf.Robot(HOST, pf.RealtimeConfig.kIgnore)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        robot.read_once()
        times.append((time.perf_counter() - t) * 1e3)
    del robot
    return np.array(times)


def torque_window(robot: FR3Robot, seconds: float) -> dict[str, float]:
    """The torque thread's counters over `seconds` of wall time."""
    before, t0 = robot.timing(), time.monotonic()
    loop = robot._loop
    assert loop is not None
    loop.compute_s.clear()
    time.sleep(seconds)
    after, wall = robot.timing(), time.monotonic() - t0
    compute = np.array(loop.compute_s) * 1e3
    cycles = after["cycles"] - before["cycles"]
    missed = after["missed"] - before["missed"]
    return {"wall_s": wall, "cycles": cycles, "rate_hz": cycles / wall,
            "late": after["late_cycles"] - before["late_cycles"],
            "missed": missed, "robot_s": (cycles + missed) / 1000, "compute_p50_ms": float(np.median(compute)),
            "compute_p99_ms": float(np.percentile(compute, 99)), "compute_max_ms": float(compute.max())}


def bench_state_age(robot: FR3Robot, n: int) -> np.ndarray:
    """ms between the torque thread reading a packet and the loop's state() returning it, sampled at 30 Hz."""
    ages = []
    for _ in range(n):
        state = robot.state()
        ages.append((time.monotonic_ns() - state.timestamp_ns) / 1e6)
        time.sleep(1 / 30)
    return np.array(ages)


def bench_command_to_motion(robot: FR3Robot, n: int) -> np.ndarray:
    """ms from apply() of a 2 cm step in y (the safety filter's largest per-step move) to the measured end
    effector 0.5 mm along it (alternating sides)."""
    out = []
    for i in range(n):
        sign = 1.0 if i % 2 == 0 else -1.0
        time.sleep(1.0)  # settle
        start = robot.state().ee_pose[1]
        t = time.monotonic()
        robot.apply(Action(np.array([0.0, sign * 0.02, 0.0, 0.0, 0.0, 0.0]), 1.0))
        while sign * (robot.state().ee_pose[1] - start) < 0.0005:
            if time.monotonic() - t > 5:
                break
            time.sleep(0.0005)
        out.append((time.monotonic() - t) * 1e3)
    return np.array(out)


def with_recording(robot: FR3Robot, seconds: float) -> tuple[dict[str, float], dict]:
    """The torque thread's counters while a Recorder records one episode of `seconds` (30 Hz loop, writer)."""
    world = PlannedWorld([Plan(end_button=None)], stepped=False)
    world.start_producer()
    rig = Rig(camera=world.camera, microphones=world.microphones, teleop=world.teleop, robot=robot,
              clock=world.clock, streams=TEST_STREAMS, kind="real", operator="scripted", realtime=True,
              description="bench", closers=[world.stop_producer])
    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        ds = Dataset.create(Path(tmp) / "ds", "zip", TEST_STREAMS)
        recorder = Recorder(rig, ds, ControlConfig(max_episode_s=seconds))
        import threading

        box: dict = {}
        thread = threading.Thread(target=lambda: box.update(result=recorder.run(1)), daemon=True)
        thread.start()
        while recorder.phase != "recording" and thread.is_alive():
            time.sleep(0.01)
        timing = torque_window(robot, seconds * 0.8)
        thread.join(60)
        rig.close()
        session = box.get("result")
        if session is not None:
            result = {"committed": len(session.committed), "overruns": recorder.timing.overruns}
    return timing, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer samples (a smoke run)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench-fr3.md")
    args = parser.parse_args()
    n_read, n_age, n_step, window = (200, 30, 4, 2.0) if args.quick else (2000, 150, 20, 5.0)
    if port_in_use():
        sys.exit(f"error: {HOST}:1337 is taken (another franky-sim or controller); stop it first")
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        sim = FrankySim(Path(tmp) / "franky-sim.log")
        try:
            sim.wait_ready()
            read_ms = bench_read_once(n_read)
            robot = FR3Robot(RobotConfig(kind="fr3", host=HOST))
            try:
                robot.start()
                robot.home()
                alone = torque_window(robot, window)
                age_ms = bench_state_age(robot, n_age)
                step_ms = bench_command_to_motion(robot, n_step)
                loaded, session = with_recording(robot, window + 1.5)
            finally:
                robot.stop()
        finally:
            sim.stop()

    def timing_row(name: str, t: dict[str, float]) -> str:
        return (f"| {name} | {t['rate_hz']:.0f} | {t['robot_s'] / t['wall_s']:.2f} | {t['late']} | {t['missed']} "
                f"({100 * t['missed'] / max(t['cycles'] + t['missed'], 1):.1f} %) | {t['compute_p50_ms']:.2f} / "
                f"{t['compute_p99_ms']:.2f} / {t['compute_max_ms']:.1f} |")

    def stats(a: np.ndarray) -> str:
        return f"{np.median(a):.2f} / {np.percentile(a, 99):.2f} / {a.max():.2f}"

    command = "tools/bench_fr3.py" + (" --quick" if args.quick else "")
    text = "\n".join([
        "# FR3 backend against franky-sim (bench)",
        "",
        f"`.venv/bin/python {command}` on {dt.date.today()}, {os.cpu_count()} cores, load average {load:.2f} at "
        "start. The controller is franky-sim (MuJoCo, Python) on 127.0.0.1, on the same cores as the torque "
        "thread: when it cannot keep 1 kHz, robot time runs slower than the wall clock (the 'robot time / wall' "
        "column) and the latencies below include that. A real FR3 runs its 1 kHz loop on its own computer.",
        "",
        "| state read | ms: median / p99 / max |",
        "|---|---|",
        f"| libfranka `read_once()` (no control running), {n_read} calls | {stats(read_ms)} |",
        f"| age of the state `state()` returns at 30 Hz (torque thread running), {n_age} reads | {stats(age_ms)} |",
        f"| command to motion: `apply()` of a 2 cm step -> measured 0.5 mm along it, {n_step} steps | "
        f"{stats(step_ms)} |",
        "",
        "Small errors move slowly: franky-sim's FR3 model has realistic joint friction (frictionloss 0.25-1.1 "
        "Nm), and at 600 N/m a few millimetres of error give a force of the same order at the arm's lever, so "
        "a 5 mm step took about 0.75 s to cover its first millimetre (measured while writing this). Teleoperation "
        "leads the arm by more (up to the 3 cm lead limit: 18 N) and moves it promptly.",
        "",
        "The 1 kHz torque thread (`readOnce`, impedance law, `writeOnce`); missed = controller packets that came "
        "while the thread was busy (libfranka's period > 1 ms); computation = readOnce return to writeOnce call.",
        "",
        "| torque thread | cycles/s | robot time / wall | late cycles | packets missed | computation ms: "
        "median / p99 / max |",
        "|---|---|---|---|---|---|",
        timing_row(f"alone ({window:g} s)", alone),
        timing_row(f"while recording at 30 Hz with the writer ({session.get('committed', 0)} episode committed, "
                   f"{session.get('overruns', '?')} loop overruns)", loaded),
        "",
        "The impedance law is numpy and scipy in a Python thread: its computation is a sizeable part of the 1 ms "
        "budget, and the recording loop and writer in the same process compete for the GIL (and, here, for two "
        "cores with the simulator), which is what makes cycles late while recording. libfranka on a real FR3 "
        "tolerates occasional late commands (it reports `control_command_success_rate`); a loop that needs "
        "every cycle would move the law out of Python (a C++ controller, or a process of its own).",
        "",
    ])
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
