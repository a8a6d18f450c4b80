#!/usr/bin/env python
"""Benchmark of the simulated contact microphones: time to render one control step (1/30 s, 4 channels, 32 kHz).

The simulated rig renders one block per control step in its control thread, so this time is spent 30 times per
simulated second. Scenarios go from silence to a busy grasp; every block gets freshly built contacts (as the scene
does), and the median and 90th percentile over many blocks are reported. The machine may be shared: the load
average is printed with the figures.

    .venv/bin/python tools/bench_sim_audio.py                    # writes docs/bench-sim-audio.md
    .venv/bin/python tools/bench_sim_audio.py --quick --out /tmp/b.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from htouch.sim.audio import ContactAudioConfig, ContactAudioSynth, ContactSample  # noqa: E402

RATE = 32000
BLOCK = 1067  # samples in one 1/30 s control step
SUBSTEP = 64  # samples in one 2 ms physics substep
GOAL_MS = 2.0
MICS = np.array([[0.0, 0.04, 0.0], [0.0, -0.04, 0.0], [0.0, 0.0, 0.06], [0.0, 0.0, 0.16]])


def spans(material, position, force, slip, impulse_first=0.0, every=1):
    """One contact per `every` substeps over the block, an impact on the first one."""
    out = []
    for i, s in enumerate(range(0, BLOCK, SUBSTEP * every)):
        out.append(ContactSample(s, min(SUBSTEP * every, BLOCK - s), np.asarray(position, float), force, slip,
                                 impulse_first if i == 0 else 0.0, material))
    return out


def scenarios(block_index: int) -> dict[str, tuple[list[ContactSample], float]]:
    """(contacts, motor_speed) of one block per scenario; positions drift a little from block to block."""
    drift = 0.001 * (block_index % 50)
    finger_a, finger_b = [0.0, 0.035 + drift, -0.01], [0.0, -0.035, -0.01 - drift]
    table = [0.02, 0.0, -0.12 - drift]
    hit = 0.05 if block_index % 15 == 0 else 0.0
    return {
        "silence": ([], 0.0),
        "free motion (hum)": ([], 0.8),
        "~10 spans: one rub": (spans("plastic", finger_a, 4.0, 0.03, hit, every=2)[:10], 0.5),
        "grasp + drag (3 contacts x 16 substeps)": (
            spans("plastic", finger_a, 6.0, 0.02, hit) + spans("plastic", finger_b, 6.0, 0.02)
            + spans("wood", table, 3.0, 0.1), 0.8),
        "all six materials ringing": (
            [c for m in ("metal", "ceramic", "plastic", "wood", "rubber", "fabric")
             for c in spans(m, table, 2.0, 0.05, 0.05, every=4)], 1.0),
    }


def measure(blocks: int) -> dict[str, np.ndarray]:
    names = list(scenarios(0))
    times = {}
    for name in names:
        synth = ContactAudioSynth(ContactAudioConfig(seed=1))
        t = np.empty(blocks)
        for b in range(blocks):
            contacts, speed = scenarios(b)[name]
            t0 = time.perf_counter()
            synth.render(BLOCK, contacts, MICS, speed)
            t[b] = time.perf_counter() - t0
        times[name] = t[blocks // 10:] * 1e3  # skip the warm-up
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=600, help="blocks rendered per scenario (600 = 20 s of audio)")
    ap.add_argument("--quick", action="store_true", help="60 blocks per scenario (a smoke run)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "bench-sim-audio.md")
    args = ap.parse_args(argv)
    blocks = 60 if args.quick else args.blocks
    if blocks < 20:
        print("--blocks must be at least 20", file=sys.stderr)
        return 2
    load = os.getloadavg()
    times = measure(blocks)

    table = Table(title="htouch simulated contact audio: render time per 1/30 s block (1067 samples x 4 ch)")
    for col in ("scenario", "contact spans", "median ms", "p90 ms", "x real time", f"< {GOAL_MS} ms"):
        table.add_column(col)
    rows = []
    for name, t in times.items():
        n_spans = len(scenarios(1)[name][0])
        med, p90 = float(np.median(t)), float(np.percentile(t, 90))
        row = (name, str(n_spans), f"{med:.3f}", f"{p90:.3f}", f"{1000 / 30 / med:.0f}",
               "PASS" if p90 < GOAL_MS else "FAIL")
        rows.append(row)
        table.add_row(*row)
    Console().print(table)
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")

    cmd = "python tools/bench_sim_audio.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    lines = [
        "# Simulated contact audio: render time",
        "",
        f"Command: `{cmd.strip()}` ({dt.date.today()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores shared, load average {load[0]:.2f}; {blocks} blocks per scenario, first 10% "
        "skipped).",
        "",
        "`ContactAudioSynth.render` for one control step (1/30 s = 1067 samples, 4 channels, 32 kHz), contacts "
        f"reported per 2 ms substep. Goal: p90 < {GOAL_MS} ms per block (the control period is 33 ms).",
        "",
        "| Scenario | Contact spans | Median ms | p90 ms | x real time | Goal |",
        "|---|---|---|---|---|---|",
        *[f"| {' | '.join(r)} |" for r in rows],
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
