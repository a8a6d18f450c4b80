"""Smoke test of tools/bench_sim.py: the quick run goes end to end (recording loop, simulation alone, operator)
and writes its report. No timing is asserted: the benchmark measures performance, tests do not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_run_writes_the_report(tmp_path):
    out = tmp_path / "bench-sim.md"
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_sim.py"), "--quick", "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    text = out.read_text()
    for heading in ("## Machine", "## Goal", "## 1. Speed", "## 2. Where the CPU time goes", "## 3. Scripted operator"):
        assert heading in text, heading
    assert "python tools/bench_sim.py --quick" in text  # the command is recorded
    assert "| zip | 2/2 (100 %)" in text  # the operator's episodes (deterministic)
    goal_rows = [line for line in text.splitlines() if line.startswith("| simulation + recording at least real time")]
    assert len(goal_rows) == 1 and ("PASS" in goal_rows[0] or "FAIL" in goal_rows[0])


def test_unknown_task_is_a_usage_error(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_sim.py"), "--tasks", "knit", "--out",
                        str(tmp_path / "b.md")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and "tasks must be among" in r.stderr
    assert not (tmp_path / "b.md").exists()
