#!/usr/bin/env python
"""Quest teleop benchmark: the cost of parsing one oculus_reader line, the line throughput of the whole
path (the stand-in adb server on 127.0.0.1 -> pure-python-adb -> QuestTeleop's reader thread), and the
latency from a line written by the server to the reading that read() returns. The headset sends about
72 lines/s; the loop reads at 30 Hz and calls a reading stale after 250 ms.

    .venv/bin/python tools/bench_quest.py                 # writes docs/bench-quest.md
    .venv/bin/python tools/bench_quest.py --quick --out /tmp/bench-quest.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from htouch.collector.config import TeleopConfig  # noqa: E402
from htouch.collector.hardware.quest import QuestTeleop, extract_payload, parse_payload, reading_from  # noqa: E402
from tests.hw.adb_server import FakeAdbServer, hand_buttons, logcat_line, teleop_payload  # noqa: E402


def sample_line(i: int) -> bytes:
    rng = np.random.default_rng(i)
    right, left = np.eye(4), np.eye(4)
    right[:3, 3], left[:3, 3] = rng.normal(size=3), rng.normal(size=3)
    payload = teleop_payload(right, left, hand_buttons("R", ("RG",), (0.1, -0.2), 0.5, 1.0), hand_buttons("L"))
    return logcat_line(payload, n=i)


def bench_parse(n: int) -> float:
    lines = [sample_line(i).decode() for i in range(200)]
    started = time.perf_counter()
    for i in range(n):
        transforms, buttons = parse_payload(extract_payload(lines[i % 200]))
        reading_from(transforms, buttons, i)
    return (time.perf_counter() - started) / n * 1e6


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError
        time.sleep(0.0002)


def bench_stream(n_burst: int, n_latency: int) -> tuple[float, np.ndarray]:
    with FakeAdbServer() as server:
        teleop = QuestTeleop(TeleopConfig(adb_port=server.port))
        teleop.start()
        wait_for(server.logcat_started.is_set)
        burst = [sample_line(i) for i in range(n_burst)]
        started = time.perf_counter()
        server.feed(burst)
        wait_for(lambda: teleop.lines == n_burst)
        throughput = n_burst / (time.perf_counter() - started)
        latencies = []
        for i in range(n_latency):
            before = teleop.lines
            sent = time.monotonic_ns()
            server.feed([sample_line(i)])
            wait_for(lambda before=before: teleop.lines > before)
            latencies.append((teleop.read().timestamp_ns - sent) / 1e6)
            time.sleep(1 / 72)  # the headset's pace
        teleop.stop()
    return throughput, np.array(latencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer lines (a smoke run)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench-quest.md")
    args = parser.parse_args()
    n_parse, n_burst, n_latency = (2000, 2000, 50) if args.quick else (50000, 20000, 500)

    load = os.getloadavg()[0]
    parse_us = bench_parse(n_parse)
    throughput, latency = bench_stream(n_burst, n_latency)
    command = "tools/bench_quest.py" + (" --quick" if args.quick else "")
    text = "\n".join([
        "# Quest teleop (bench)",
        "",
        f"`.venv/bin/python {command}` on {dt.date.today()}, {os.cpu_count()} cores, load average "
        f"{load:.2f} at start. The adb server is the test stand-in on 127.0.0.1; a real headset adds USB or "
        "Wi-Fi latency on top.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| parse one line (extract, poses, buttons, reading), us | {parse_us:.1f} |",
        f"| lines/s through adb + ppadb + reader thread ({n_burst} lines in a burst) | {throughput:,.0f} "
        f"({throughput / 72:.0f}x the headset's 72/s) |",
        f"| line written -> reading stamped, ms: median / p99 / max ({n_latency} lines at 72/s) | "
        f"{np.median(latency):.2f} / {np.percentile(latency, 99):.2f} / {latency.max():.2f} |",
        "",
    ])
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
