#!/usr/bin/env python
"""What the checksum manifest costs: commit time and validate time per minute of recording, with and without.

One run records the same minute (640x480 photo-video frames with sensor noise, 4 channels of contact-like audio
at 32 kHz, state, actions and teleop; the data of tools/bench_store.py) several times through `EpisodeWriter`,
alternating writers with and without checksums, and times `commit()` (its manifest step separately, from the
commit's crash-point marks); then it times `validate` of the checksummed episode in full and with `--quick` (no
hashing), and the hashing alone. Files are read from the page cache, as right after a recording: a cold disk
adds the episode's bytes at the disk's read speed. Pinned to one core; the load average is printed with the
figures (the machine may be shared). All data goes into a temporary directory that is removed at the end.

    .venv/bin/python tools/bench_checksums.py                 # 1 min x 2 repeats, writes docs/bench-checksums.md
    .venv/bin/python tools/bench_checksums.py --quick --out /tmp/b.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from bench_store import (  # noqa: E402
    PhotoVideo,
    Recording,
    audio_pool,
    machine_info,
    parse_size,
    pin_to_cpu,
    tree_bytes,
)


def record(ds: Any, rec: Recording, checksums: bool) -> dict[str, float]:
    """Write the recording, commit it and time the commit and its manifest step (s)."""
    from htouch.dataset import crashpoints

    marks: dict[str, float] = {}
    crashpoints.hook = lambda name: marks.__setitem__(name, time.perf_counter())
    try:
        writer = ds.new_episode(blocking=True, checksums=checksums, info={"generator": "bench_checksums"})
        rec.write(writer)
        t0 = time.perf_counter()
        path = writer.commit(success=True)
        commit_s = time.perf_counter() - t0
    finally:
        crashpoints.hook = None
    manifest_s = marks["commit.manifest"] - marks["commit.progress_removed"] if checksums else 0.0
    return {"path": path, "commit_s": commit_s, "manifest_s": manifest_s,
            "final_flush_s": marks["commit.flushed"] - marks["commit.labelled"]}


def timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(seconds: float, repeats: int, width: int, height: int, tmp: Path, log: Any) -> dict[str, Any]:
    from htouch.dataset.manifest import read_manifest, verify_files
    from htouch.dataset.schema import CameraSpec, StreamSpecs
    from htouch.dataset.store import Dataset
    from htouch.dataset.validate import ChecksumOptions, validate_episode

    streams = StreamSpecs(name="bench", camera=CameraSpec(width=width, height=height))
    log(f"generating {min(300, int(seconds * 30))} photo-video frames at {width}x{height}")
    frames = PhotoVideo(width, height).pool(min(300, int(seconds * streams.camera.rate_hz)))
    rec = Recording(streams, seconds, frames, audio_pool(streams.audio.rate_hz, streams.audio.channels, 10.0))
    ds = Dataset.create(tmp / "ds", "bench", streams)
    commits: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
    for r in range(repeats):
        for checksums in (True, False):
            log(f"repeat {r + 1}/{repeats}: recording {seconds:g} s, commit {'with' if checksums else 'without'} "
                "checksums")
            commits[checksums].append(record(ds, rec, checksums))
    path = commits[True][-1]["path"]
    manifest = read_manifest(path)
    validate: dict[str, list[float]] = {"full": [], "quick": [], "hash": []}
    for r in range(repeats):
        log(f"repeat {r + 1}/{repeats}: validate in full, --quick, and the hashing alone")
        validate["full"].append(timed(lambda: validate_episode(path, streams, checksums=ChecksumOptions())))
        validate["quick"].append(timed(lambda: validate_episode(path, streams, checksums=ChecksumOptions(False))))
        validate["hash"].append(timed(lambda: verify_files(path, manifest)))
    findings = [f.check for f in validate_episode(path, streams) if f.check.startswith("checksum.")]
    assert not findings, findings  # the benchmark measures a clean episode
    return {"seconds": seconds, "repeats": repeats, "width": width, "height": height,
            "files": len(manifest["files"]), "bytes": tree_bytes(path), "commits": commits, "validate": validate}


def per_minute(x: float, seconds: float) -> float:
    return x * 60.0 / seconds


def build_report(res: dict[str, Any]) -> tuple[list[tuple[str, str, str]], str]:
    """The table rows (what, without checksums, with checksums) and the markdown report."""
    s = res["seconds"]
    med = statistics.median
    c_with = med(c["commit_s"] for c in res["commits"][True])
    c_without = med(c["commit_s"] for c in res["commits"][False])
    manifest = med(c["manifest_s"] for c in res["commits"][True])
    flush = med(c["final_flush_s"] for c in res["commits"][True] + res["commits"][False])
    v_full, v_quick, v_hash = (med(res["validate"][k]) for k in ("full", "quick", "hash"))
    rate = res["bytes"] / v_hash / 1e6
    rows = [
        ("commit() per minute of recording", f"{per_minute(c_without, s):.2f} s", f"{per_minute(c_with, s):.2f} s"),
        ("  of which writing the manifest", "-", f"{per_minute(manifest, s):.2f} s"),
        ("validate per minute of recording", f"{per_minute(v_quick, s):.2f} s (--quick)",
         f"{per_minute(v_full, s):.2f} s"),
        ("  of which hashing the files", "-", f"{per_minute(v_hash, s):.2f} s ({rate:.0f} MB/s)"),
    ]
    m = res["machine"]
    lines = [
        "# Checksum cost",
        "",
        f"Measured {res['date']} by `{res['command']}` ({res['elapsed_s']:.0f} s; load average {res['load_start']} "
        f"at the start, {res['load_end']} at the end, on a machine shared with other work).",
        "",
        f"A {s:g} s recording at {res['width']}x{res['height']} (photo-video frames with sensor noise, JPEG q90; "
        f"4 channels at 32 kHz; state, actions, teleop) is {res['bytes'] / 1e6:.1f} MB in {res['files']} files. "
        f"It was recorded {res['repeats']} times with and {res['repeats']} times without checksums (alternating) "
        "through `EpisodeWriter`; figures are medians, scaled to one minute of recording. Files are read from "
        "the page cache, as right after a recording; from a cold disk, add the episode's bytes at the disk's "
        "read speed.",
        "",
        "| per minute of recording | without checksums | with checksums |",
        "| --- | --- | --- |",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
        "",
        f"`commit()` includes the final flush of the rows still queued ({flush:.2f} s, median, whatever the "
        "length of the recording; the same with or without checksums). The manifest step hashes every file of "
        "the episode (XXH3-128) and "
        "writes `manifest.json` (fsynced). `validate` without checksums is `--quick` (files present with their "
        "sizes, no hashing); the rest of validate (decoding every frame, all other checks) is the same in both. "
        "The hashing throughput is that of reading the files and hashing them on one core.",
        "",
        "## Machine",
        "",
        *[f"- {k}: {v}" for k, v in m.items()],
        "",
    ]
    return rows, "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short smoke run (3 s of recording, 1 repeat)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "bench-checksums.md", help="markdown report path")
    ap.add_argument("--seconds", type=float, default=None, help="length of the recording (default 60)")
    ap.add_argument("--repeats", type=int, default=None, help="recordings with and without checksums (default 2)")
    ap.add_argument("--frame-size", type=parse_size, default=(640, 480), help="camera frame size, WxH")
    args = ap.parse_args(argv)
    seconds = args.seconds or (3.0 if args.quick else 60.0)
    repeats = args.repeats or (1 if args.quick else 2)
    if seconds <= 0 or repeats < 1:
        ap.error("--seconds must be positive and --repeats at least 1")
    cpu = max(os.sched_getaffinity(0))
    pin_to_cpu(cpu)

    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        console.print(f"[dim]{time.perf_counter() - t_start:6.1f} s[/]  {msg}")

    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="htouch-bench-") as tmpdir:
        res = run(seconds, repeats, *args.frame_size, Path(tmpdir), log)
    res.update(machine=machine_info(cpu), elapsed_s=time.perf_counter() - t_start, load_start=load_start,
               load_end=" ".join(f"{x:.2f}" for x in os.getloadavg()),
               date=dt.datetime.now().astimezone().isoformat(timespec="seconds"),
               command=shlex.join([".venv/bin/python", "tools/bench_checksums.py",
                                   *(sys.argv[1:] if argv is None else argv)]))
    rows, markdown = build_report(res)
    table = Table(title=f"checksum cost per minute of recording ({res['bytes'] / 1e6 * 60 / seconds:.0f} MB/min)")
    for col in ("", "without checksums", "with checksums"):
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    Console().print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown)
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
