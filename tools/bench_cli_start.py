#!/usr/bin/env python
"""How long the command line takes to answer: `htouch --help`, `ls`, `inspect` and `validate --quick` on a
small synthetic dataset, timed as a user runs them (a fresh `python -m htouch` process each time, wall clock and
the CPU time of the process), and which packages the imports of `htouch ls` spend their time in.

With `--against REV` the same commands run from a checkout of an earlier revision (a temporary git worktree)
as well, alternating with this tree's on every repetition, so both see the same machine load; the table gives
the median of each and their ratio. The load average is printed with the figures (the machine may be shared).

    .venv/bin/python tools/bench_cli_start.py --against d590a91      # writes docs/bench-cli.md
    .venv/bin/python tools/bench_cli_start.py --repeats 3 --out /tmp/cli.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = {  # name -> arguments after `python -m htouch`; DATASET is replaced by the dataset's path
    "htouch --help": ["--help"],
    "shell completion (TAB after `htouch l`)": ["COMPLETE"],
    "htouch ls": ["ls", "DATASET"],
    "htouch inspect": ["inspect", "0", "--dataset", "DATASET"],
    "htouch validate --quick": ["validate", "DATASET", "--quick"],
}


def run(tree: Path, args: list[str], dataset: Path) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one `python -m htouch ARGS` from `tree` (the command must succeed).
    The CPU time is what the process itself spent, which other load on the machine changes far less than the
    wall time (waiting for a core). Python may write its
    bytecode caches (an installed htouch has them): with PYTHONDONTWRITEBYTECODE set, a fresh checkout would
    compile every module on every run and the figures would time the compiler."""
    env = {**os.environ, "PYTHONPATH": str(tree), "COLUMNS": "120"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if args == ["COMPLETE"]:  # what bash runs on a TAB (click's completion protocol)
        env.update(_HTOUCH_COMPLETE="complete_bash", COMP_WORDS="htouch l", COMP_CWORD="1")
        args = []
    argv = [sys.executable, "-m", "htouch", *[str(dataset) if a == "DATASET" else a for a in args]]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    r = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the child is reaped: its times are counted now
    if r.returncode != 0:
        raise SystemExit(f"{shlex.join(argv)} in {tree} exited {r.returncode}: {r.stderr.strip()[-300:]}")
    return seconds, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def import_shares(tree: Path, args: list[str], dataset: Path, top: int = 12) -> list[tuple[str, float]]:
    """Milliseconds of import time of one `python -m htouch ARGS` from `tree` by top-level package (the self
    times `python -X importtime` reports, which it inflates somewhat), the `top` largest and the rest as
    "other"; the last entry is the total."""
    env = {**os.environ, "PYTHONPATH": str(tree), "COLUMNS": "120"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    argv = [sys.executable, "-X", "importtime", "-m", "htouch", *[str(dataset) if a == "DATASET" else a for a in args]]
    r = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True, timeout=300)
    per: dict[str, float] = {}
    for line in r.stderr.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if not line.startswith("import time:") or len(parts) != 3 or not parts[0].strip().isdigit():
            continue  # the header line, or the command's own output
        package = parts[2].strip().split(".")[0]
        per[package] = per.get(package, 0.0) + int(parts[0]) / 1000
    ranked = sorted(per.items(), key=lambda kv: -kv[1])
    rest = sum(ms for _, ms in ranked[top:])
    return ranked[:top] + [("other", rest), ("all imports", sum(per.values()))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--against", help="an earlier revision to time side by side (git worktree, removed after)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "bench-cli.md")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="htouch-bench-cli-") as tmp:
        dataset = Path(tmp) / "ds"
        subprocess.run([sys.executable, "-m", "htouch", "synth", str(dataset), "--episodes", "3",
                        "--seconds", "2"], cwd=ROOT, check=True, capture_output=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
        trees = {"this tree": ROOT}
        if args.against:
            old = Path(tmp) / "old"
            subprocess.run(["git", "worktree", "add", "--detach", str(old), args.against], cwd=ROOT, check=True,
                           capture_output=True)
            trees[args.against] = old
        try:
            times: dict[tuple[str, str], list[tuple[float, float]]] = {}  # (wall, CPU) seconds of each run
            for cmd in COMMANDS.values():  # one untimed run each: the page cache holds the files after it, and
                #                            the bytecode caches are written
                for tree in trees.values():
                    run(tree, cmd, dataset)
            for i in range(args.repeats):
                for name, cmd in COMMANDS.items():
                    for label, tree in trees.items():
                        times.setdefault((name, label), []).append(run(tree, cmd, dataset))
                print(f"repeat {i + 1}/{args.repeats} done", file=sys.stderr)
            shares = import_shares(ROOT, COMMANDS["htouch ls"], dataset)
        finally:
            if args.against:
                subprocess.run(["git", "worktree", "remove", "--force", str(trees[args.against])], cwd=ROOT,
                               capture_output=True)

    load = os.getloadavg()
    labels = list(trees)
    pair = len(labels) == 2
    head = "| command | " + " | ".join(f"{label}: wall s" for label in labels) + (" | ratio |" if pair else " |")
    head += " ".join(f" {label}: CPU s |" for label in labels) + (" ratio |" if pair else "")
    lines = ["# Command-line start time", "",
             f"Command: `{shlex.join(['.venv/bin/python', 'tools/bench_cli_start.py', *sys.argv[1:]])}`", "",
             f"Date: {dt.datetime.now().isoformat(timespec='seconds')}; {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} cores, Python {platform.python_version()}; load average while measuring "
             f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min).", "",
             f"Wall time and CPU time (user + system) of a fresh `python -m htouch ...` process on a 3-episode "
             f"synthetic dataset, median of {args.repeats} runs"
             + (", the two trees alternating on every run; ratio: the other tree's median over this tree's." if pair
                else "."), "",
             head, "|---|" + "---:|" * 2 * (len(labels) + pair)]
    for name in COMMANDS:
        row = f"| `{name}` |"
        for k in (0, 1):  # wall, then CPU
            medians = [statistics.median(t[k] for t in times[(name, label)]) for label in labels]
            row += " " + " | ".join(f"{m:.2f}" for m in medians) + " |"
            row += f" {medians[1] / medians[0]:.2f}x |" if pair else ""
        lines.append(row)
    lines += ["", "Where the imports of `htouch ls` go in this tree: milliseconds of `python -X importtime` self time "
              "by top-level package, one run (importtime inflates them somewhat; the shares are what counts).", "",
              "| package | ms | share |", "|---|---:|---:|"]
    total = shares[-1][1]
    lines += [f"| {name} | {ms:.0f} | {100 * ms / total:.0f} % |" for name, ms in shares]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.write_text(text)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
