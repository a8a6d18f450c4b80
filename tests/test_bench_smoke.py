"""Smoke test of tools/bench_store.py: the whole benchmark runs end to end on tiny frames and writes its report.

No timing is asserted (performance is measured by the benchmark itself, not by tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "bench_store.py"


def run_bench(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TMPDIR": str(tmp)}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=120)


def test_quick_run_writes_report_and_cleans_up(tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    out = tmp_path / "docs" / "bench.md"
    r = run_bench("--quick", "--frame-size", "64x48", "--memory-minutes", "0.1", "--out", str(out), tmp=scratch)
    assert r.returncode == 0, r.stderr[-3000:]
    text = out.read_text()
    for heading in ("## Machine", "## Goals", "## 1. Writer throughput", "## 2. Bytes and image quality",
                    "## 3. Random training-sample reads", "## 4. Writer memory"):
        assert heading in text, heading
    assert "--quick --frame-size 64x48" in text  # the exact command is recorded
    goal_rows = [line for line in text.splitlines() if line.startswith("| Writer throughput (one core)")]
    assert len(goal_rows) == 1 and ("PASS" in goal_rows[0] or "FAIL" in goal_rows[0])
    for reader in ("| htouch |", "| paper, line index |", "| paper, loadtxt skiprows |"):
        assert reader in text
    assert "htouch storage benchmark" in r.stdout  # the rich table
    assert list(scratch.iterdir()) == []  # the benchmark's data is gone


def test_bad_frame_size_is_a_usage_error(tmp_path):
    r = run_bench("--quick", "--frame-size", "big", "--out", str(tmp_path / "b.md"), tmp=tmp_path)
    assert r.returncode == 2
    assert "frame size must look like 640x480" in r.stderr
    assert not (tmp_path / "b.md").exists()


def test_checksum_bench_runs_and_writes_its_report(tmp_path):
    out = tmp_path / "bench-checksums.md"
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_checksums.py"), "--quick", "--seconds", "1",
                        "--frame-size", "64x48", "--out", str(out)], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "TMPDIR": str(tmp_path)}, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    text = out.read_text()
    assert "| commit() per minute of recording |" in text and "| validate per minute of recording |" in text
    assert "--quick --seconds 1 --frame-size 64x48" in text
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # the benchmark's data is gone


def test_pack_bench_runs_and_writes_its_report(tmp_path):
    out = tmp_path / "bench-pack.md"
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_pack.py"), "--quick", "--samples", "5",
                        "--frame-size", "64x48", "--out", str(out)], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "TMPDIR": str(tmp_path)}, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    text = out.read_text()
    for store in ("| unpacked |", "| zip, htouch |", "| zip, zarr ZipStore |", "| v3 sharded |"):
        assert store in text, store
    assert "## Choice" in text and "--quick --samples 5 --frame-size 64x48" in text
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # the benchmark's data is gone


def test_recorder_bench_records_on_the_stand_in_rig_and_writes_its_report(tmp_path):
    """tools/bench_recorder.py: 2 s of the real loop and writer on the stand-in rig; the page is well-formed."""
    out = tmp_path / "bench-recorder.md"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_recorder.py"), "--seconds", "2", "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT, env={**os.environ, "TMPDIR": str(scratch)},
                       timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    text = out.read_text()
    assert "`python tools/bench_recorder.py --seconds 2 --out " in text  # the exact command is recorded
    assert "## Goals (htouch issue 13)" in text and "load average before / mean while measuring" in text
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in text.splitlines()
            if line.startswith("| ") and line.count("|") >= 3}
    p50, p95, p99, worst = (float(v) for v in rows["tick period p50 / p95 / p99 / max (wall)"][:-3].split(" / "))
    assert 0 < p50 <= p95 <= p99 <= worst
    ticks = int(rows["loop ticks"])
    assert 40 <= ticks <= 70  # 2 s at 30 Hz
    stored = int(rows["frames stored (recorded time x 30 Hz)"].split()[0])
    assert 40 <= stored <= 70
    assert rows["rows the writer dropped"] == "0"
    assert rows["commit time"].endswith(" s") and float(rows["commit time"][:-2]) > 0
    goals = [line for line in text.splitlines()
             if line.startswith(("| tick period p99 <= 40 ms", "| 0 frames dropped"))]
    assert len(goals) == 2 and all(line.rstrip(" |").endswith(("PASS", "FAIL")) for line in goals)
    assert r.stdout.startswith("# Recorder jitter in isolation")
    assert list(scratch.iterdir()) == []  # the recorded episode is gone


def test_recorder_bench_refuses_a_bad_length_in_one_line(tmp_path):
    out = tmp_path / "b.md"
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_recorder.py"), "--seconds", "0", "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 2 and "--seconds must be more than 0, got 0" in r.stderr
    assert "Traceback" not in r.stderr and not out.exists()
