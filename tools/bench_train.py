#!/usr/bin/env python
"""Training throughput on the CPU: samples/s of `htouch train` for the `paper` and `tiny` presets, end to end
(encoders fine-tuned, images augmented) and with frozen encoders (embeddings cached once, head trained).

Each configuration is set up exactly as `htouch train` sets it up (training.train.Session: split, stats, samples
preloaded, the policy `ours` with random encoders), then one warm-up step runs and a short window of steps is
timed (wall clock and this process's CPU time). The setup phases (loading samples, encoding once) are timed
too, since frozen mode pays its encoding up front. The dataset is synthetic at the paper camera's 640x480.

The machine may be shared: the process is pinned to ONE core with one torch thread, and the CPU share it got
(CPU seconds / wall seconds) is printed beside each figure; samples per CPU-second is the load-independent one.

    .venv/bin/python tools/bench_train.py                     # writes docs/bench-train.md (~10 min)
    .venv/bin/python tools/bench_train.py --quick --out /tmp/bench-train.md
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from bench_store import chosen_cpu, elapsed_logger, load_average, machine_info, pin_to_cpu  # noqa: E402

# A paper-sized dataset for the epoch-time estimate: 50 demonstrations (the paper: 40-60) of 20 s, 4/5 training.
PAPER_DEMOS, PAPER_DEMO_S, CAMERA_HZ, HORIZON = 50, 20.0, 30.0, 8


@dataclass(frozen=True)
class Plan:
    episodes: int
    seconds: float
    steps: dict[str, int]  # steps per timed round, per preset
    batch: dict[str, int]  # batch size per preset
    min_seconds: float  # rounds repeat until this much wall time is timed


# paper end to end at batch 32, not the paper's 64: the same per-sample cost, half the activation memory (~3 GB)
FULL = Plan(episodes=5, seconds=6.0, steps={"tiny": 20, "paper": 3}, batch={"tiny": 64, "paper": 32}, min_seconds=5.0)
QUICK = Plan(episodes=3, seconds=4.0, steps={"tiny": 2, "paper": 1}, batch={"tiny": 16, "paper": 4}, min_seconds=0.5)


@dataclass
class Result:
    preset: str
    mode: str
    batch: int
    steps: int
    samples: int
    wall_s: float
    cpu_s: float
    phases: dict[str, float] = field(default_factory=dict)  # setup phase -> seconds
    setup_s: float = 0.0
    n_train: int = 0
    n_val: int = 0
    frames_used: int = 0
    parameters: int = 0
    trained: int = 0

    @property
    def rate(self) -> float:
        return self.samples / self.wall_s

    @property
    def rate_cpu(self) -> float:
        return self.samples / self.cpu_s

    @property
    def share(self) -> float:
        return self.cpu_s / self.wall_s


def cpu_seconds() -> float:
    return time.process_time()


class PhaseTimer:
    """A training Reporter that times the setup phases (loading samples, encoding once)."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}

    def note(self, text: str) -> None:
        pass

    def start(self, session) -> None:
        pass

    @contextlib.contextmanager
    def phase(self, description: str, total: int) -> Iterator:
        t = time.perf_counter()
        yield lambda n=1: None
        self.phases[description] = self.phases.get(description, 0.0) + time.perf_counter() - t

    def epoch_start(self, *a) -> None:
        pass

    def batch(self, *a) -> None:
        pass

    def epoch_end(self, *a) -> None:
        pass


def measure(ds_root: Path, run_root: Path, preset: str, frozen: bool, batch: int, steps: int, min_seconds: float,
            log) -> Result:
    from htouch.training.train import Session, TrainConfig

    mode = "frozen encoders" if frozen else "end to end"
    config = TrainConfig(dataset=ds_root, run_dir=run_root / f"{preset}-{'frozen' if frozen else 'e2e'}",
                         method="ours", preset=preset, epochs=1, batch_size=batch, allow_random_init=True,
                         frozen_encoders=frozen, device="cpu", num_workers=0, seed=0)
    timer = PhaseTimer()
    t0 = time.perf_counter()
    session = Session(config, timer)
    setup = time.perf_counter() - t0
    log(f"{preset} / {mode}: set up in {setup:.1f} s; warm-up step")
    session.train_epoch(0, max_batches=1)
    samples, wall, cpu, taken, epoch = 0, 0.0, 0.0, 0, 1
    while wall < min_seconds or taken == 0:
        c0 = cpu_seconds()
        n_batches, _ = session.feed.train_batches(epoch)
        _, n, seconds = session.train_epoch(epoch, max_batches=steps)
        cpu += cpu_seconds() - c0
        samples, wall, taken, epoch = samples + n, wall + seconds, taken + min(steps, n_batches), epoch + 1
    n = sum(p.numel() for p in session.model.parameters())
    trained = sum(p.numel() for p in session.model.parameters() if p.requires_grad)
    r = Result(preset, mode, batch, taken, samples, wall, cpu, timer.phases, setup, len(session.train_set),
               len(session.val_set), session.train_set.n_frames_used() + session.val_set.n_frames_used(), n, trained)
    log(f"{preset} / {mode}: {r.rate:.2f} samples/s ({r.rate_cpu:.2f} per CPU-second, CPU share {r.share:.0%})")
    return r


def encoding_time(r: Result, frames: int, windows: int) -> float | None:
    """The one-off encoding (frozen mode) of this many frames and audio windows, scaled from the measured
    phase by the frames plus windows it encoded (at the paper preset one costs the same order as the other)."""
    enc = sum(v for k, v in r.phases.items() if k.startswith("encoding"))
    return enc * (frames + windows) / (r.frames_used + r.n_train + r.n_val) if enc else None


def fmt_duration(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def build_report(results: list[Result], meta: dict) -> str:
    paper_samples = int(PAPER_DEMOS * 0.8 * (PAPER_DEMO_S * CAMERA_HZ - HORIZON))
    paper_frames = paper_windows = int(PAPER_DEMOS * PAPER_DEMO_S * CAMERA_HZ)
    lines = ["# Training throughput on the CPU", "",
             f"Command: `{meta['command']}`  ",
             f"Date: {meta['date']}; torch {meta['torch']}, {meta['threads']} torch thread; pinned to one core; "
             f"load average {meta['load_start']} before, {meta['load_end']} after, on {os.cpu_count()} cores "
             "(the machine is shared: see the CPU share).", "",
             f"Dataset: {meta['episodes']} synthetic episodes of {meta['seconds']:g} s at 640x480 / 30 fps, 4-channel "
             "32 kHz audio; `htouch split --val 0.34`; method `ours` (R3M-shaped ResNet18 + AVID Conv2D, "
             "random weights), AVID "
             "spectrograms; one warm-up step, then steps timed in rounds until at least "
             f"{meta['min_seconds']:g} s of training were timed (the CPU time covers the same rounds).", "",
             "| preset | mode | batch | steps timed | samples/s (wall) | samples per CPU-second | CPU share | "
             "parameters (trained) | setup: load samples | setup: encode once |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        load = sum(v for k, v in r.phases.items() if k.startswith("loading"))
        enc = sum(v for k, v in r.phases.items() if k.startswith("encoding"))
        lines.append(f"| {r.preset} | {r.mode} | {r.batch} | {r.steps} | {r.rate:.2f} | {r.rate_cpu:.2f} | "
                     f"{r.share:.0%} | {r.parameters / 1e6:.2f}M ({r.trained / 1e6:.2f}M) | {load:.1f} s | "
                     f"{f'{enc:.1f} s' if enc else '-'} |")
    lines += ["", "## What it means for a paper-sized dataset", "",
              f"{PAPER_DEMOS} demonstrations of {PAPER_DEMO_S:g} s, 4/5 for training, a sample at every camera frame "
              f"with {HORIZON} actions ahead: {paper_samples:,} training samples per epoch. Per epoch on one "
              f"core, from the "
              "samples per CPU-second above; frozen mode first encodes every frame and audio window once "
              f"({paper_frames:,} + {paper_windows:,}, time scaled from the measured phase):", "",
              "| preset | mode | one epoch | 100 epochs | one-off encoding (wall clock, scaled) |",
              "|---|---|---:|---:|---:|"]
    by = {(r.preset, r.mode): r for r in results}
    for r in results:
        epoch = paper_samples / r.rate_cpu
        enc_s = encoding_time(r, paper_frames, paper_windows)
        enc = fmt_duration(enc_s) if enc_s else "-"
        lines.append(f"| {r.preset} | {r.mode} | {fmt_duration(epoch)} | {fmt_duration(100 * epoch)} | {enc} |")
    lines.append("")
    for preset in ("paper", "tiny"):
        e2e, frz = by.get((preset, "end to end")), by.get((preset, "frozen encoders"))
        if e2e and frz:
            lines += [f"- {preset}: frozen encoders train {frz.rate_cpu / e2e.rate_cpu:.0f}x more samples per "
                          f"CPU-second than end to end (measured in this run)."]
    lines += ["", "Notes:",
              "- End to end is the paper's recipe (encoders fine-tuned, images augmented with p = 0.5); its cost is "
              "the ResNet18 over 4 frames and the audio network, forward and backward, for every sample.",
              "- Frozen encoders encode each frame and audio window once (the setup column), then train only the "
              "positional embeddings, transformer block and MLP on cached embeddings, without image augmentation. "
              "This is what makes the paper preset trainable on a CPU.",
              "- One core and one thread; more threads or cores scale the compute-bound end-to-end figures, "
              "torchrun spreads an epoch over processes (DistributedDataParallel).", ""]
    lines += ["## Machine", "", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in meta["machine"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smoke run: small dataset, tiny batches, one step")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "bench-train.md", help="markdown report path")
    ap.add_argument("--cpu", type=int, default=None, help="core to pin to (default: the last allowed one)")
    ap.add_argument("--presets", default="tiny,paper", help="comma-separated presets to measure")
    args = ap.parse_args(argv)
    cpu = chosen_cpu(ap, args.cpu)
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    pin_to_cpu(cpu)
    import torch

    torch.set_num_threads(1)
    from rich.console import Console
    from rich.table import Table

    from htouch.dataset.split import split_dataset
    from htouch.dataset.synthetic import write_synthetic_dataset
    from htouch.training.methods import PRESETS

    bad = [p for p in presets if p not in PRESETS]
    if bad:
        ap.error(f"unknown preset(s) {', '.join(bad)}; use {', '.join(PRESETS)}")
    plan = QUICK if args.quick else FULL
    log = elapsed_logger(Console(stderr=True))
    load_start = load_average()
    results = []
    with tempfile.TemporaryDirectory(prefix="htouch-bench-train-") as tmp:
        tmp = Path(tmp)
        log(f"writing {plan.episodes} synthetic 640x480 episodes of {plan.seconds:g} s")
        ds = write_synthetic_dataset(tmp / "ds", plan.episodes, seconds=plan.seconds)
        split_dataset(ds, 0.34, seed=0)  # at least one validation episode from the larger strata
        for preset in presets:
            for frozen in (False, True):
                results.append(measure(ds.root, tmp / "runs", preset, frozen, plan.batch[preset],
                                       plan.steps[preset], plan.min_seconds, log))
    meta = {"command": shlex.join([".venv/bin/python", "tools/bench_train.py", *(sys.argv[1:] if argv is None
                                                                                 else argv)]),
            "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "load_start": load_start,
            "load_end": load_average(), "episodes": plan.episodes,
            "seconds": plan.seconds, "min_seconds": plan.min_seconds, "machine": machine_info(cpu)}
    table = Table(title="htouch training throughput (one core)")
    for c in ("preset", "mode", "batch", "samples/s", "per CPU-s", "CPU share"):
        table.add_column(c)
    for r in results:
        table.add_row(r.preset, r.mode, str(r.batch), f"{r.rate:.2f}", f"{r.rate_cpu:.2f}", f"{r.share:.0%}")
    Console().print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(build_report(results, meta))
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
