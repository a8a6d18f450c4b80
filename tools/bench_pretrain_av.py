#!/usr/bin/env python
"""Cost of `htouch pretrain av` on the CPU: samples (moments) per second of the audio-visual pretraining, for the
`tiny` preset (and `paper` with --paper), on a synthetic dataset at 64x48.

The pretraining runs exactly as the command runs it (training.av_pretrain.pretrain_av: stats, moments preloaded,
images augmented with p = 0.5, both encoders and both heads trained); the steps after the first one are timed
(wall clock and this process's CPU time, from the step callback), so setup, the warm-up step and the retrieval
checks are left out and reported apart. The process is pinned to ONE core with one torch thread; on a shared
machine the CPU share it got is printed beside each figure, and samples per CPU-second is the load-independent one.

    .venv/bin/python tools/bench_pretrain_av.py                  # writes docs/bench-pretrain-av.md (~2 min)
    .venv/bin/python tools/bench_pretrain_av.py --paper --out /tmp/bench-pretrain-av.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from bench_store import chosen_cpu, elapsed_logger, load_average, machine_info, pin_to_cpu  # noqa: E402
from bench_train import fmt_duration  # noqa: E402

# A play dataset the experiment might record: 20 episodes of 20 s at 30 fps, all of them for pretraining.
PLAY_EPISODES, PLAY_S, CAMERA_HZ = 20, 20.0, 30.0
EPISODES, SECONDS = 6, 8.0  # the benchmark's synthetic dataset
# per preset: batch, stride (the paper preset's steps are long: fewer moments)
PLANS = {"tiny": (32, 1), "paper": (16, 8)}


@dataclass
class Result:
    preset: str
    batch: int
    moments: int
    steps: int  # timed
    wall_s: float
    cpu_s: float
    setup_s: float  # start to the end of the first step
    total_s: float
    final_loss: float
    chance_loss: float

    @property
    def rate(self) -> float:
        return self.steps * self.batch / self.wall_s

    @property
    def rate_cpu(self) -> float:
        return self.steps * self.batch / self.cpu_s

    @property
    def share(self) -> float:
        return self.cpu_s / self.wall_s


def measure(ds_root: Path, out: Path, preset: str, log) -> Result:
    from htouch.training.av_pretrain import AvConfig, pretrain_av

    batch, stride = PLANS[preset]
    marks: list[tuple[float, float]] = []
    start = time.perf_counter()
    result = pretrain_av(AvConfig(dataset=ds_root, out=out, preset=preset, epochs=1, batch_size=batch, stride=stride,
                                  seed=0, device="cpu", eval_batches=1),
                         on_step=lambda i, n, loss: marks.append((time.perf_counter(), time.process_time())))
    total = time.perf_counter() - start
    if len(marks) < 2:
        raise SystemExit(f"{preset}: only {len(marks)} step(s); the benchmark dataset is too small")
    (w0, c0), (w1, c1) = marks[0], marks[-1]
    r = Result(preset, batch, result.record["moments"], len(marks) - 1, w1 - w0, c1 - c0, w0 - start, total,
               result.losses[-1], result.record["chance_loss"])
    log(f"{preset}: {r.rate:.1f} samples/s ({r.rate_cpu:.1f} per CPU-second, CPU share {r.share:.0%})")
    return r


def build_report(results: list[Result], meta: dict) -> str:
    play = int(PLAY_EPISODES * PLAY_S * CAMERA_HZ)
    lines = ["# Cost of `htouch pretrain av` on the CPU", "",
             f"Command: `{meta['command']}`  ",
             f"Date: {meta['date']}; torch {meta['torch']}, 1 torch thread; pinned to one core; load average "
             f"{meta['load_start']} before, {meta['load_end']} after, on {os.cpu_count()} cores (the machine is "
             "shared: see the CPU share).", "",
             f"Dataset: {EPISODES} synthetic episodes of {SECONDS:g} s at 64x48 / 30 fps, 4-channel 32 kHz audio, "
             "split 1 in 3 for validation; the pretraining's own training episodes, one epoch; every step after "
             "the first timed (a step: k frames through the ResNet18 and the 2 s AVID spectrogram through the "
             "audio network, both heads, forward and backward, for every moment of the batch, plus assembling "
             "the batch from memory).", "",
             "| preset | batch | moments | steps timed | samples/s (wall) | samples per CPU-second | CPU share | "
             "setup to the first step | whole run |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r.preset} | {r.batch} | {r.moments} | {r.steps} | {r.rate:.1f} | {r.rate_cpu:.1f} | "
                     f"{r.share:.0%} | {r.setup_s:.1f} s | {r.total_s:.1f} s |")
    lines += ["", f"For a play dataset of {PLAY_EPISODES} episodes of {PLAY_S:g} s ({play:,} moments at every camera "
              "frame), per epoch on one core, from the samples per CPU-second:", "",
              "| preset | one epoch | 20 epochs | 20 epochs at every 3rd frame |", "|---|---:|---:|---:|"]
    for r in results:
        epoch = play / r.rate_cpu
        lines.append(f"| {r.preset} | {fmt_duration(epoch)} | {fmt_duration(20 * epoch)} | "
                     f"{fmt_duration(20 * epoch / 3)} |")
    lines += ["", "Notes:",
              "- A moment's audio input (the AVID spectrogram of a 2 s clip, 200 x 257 = 51,400 values) is as large "
              "as its four 64 px frames (49,152 values): at the tiny preset the audio network is not the small part.",
              "- This is the cost, not the benefit: whether these encoders help a policy is the experiment's "
              "question (docs/experiment.md).", ""]
    lines += ["## Machine", "", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in meta["machine"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "bench-pretrain-av.md", help="markdown report path")
    ap.add_argument("--cpu", type=int, default=None, help="core to pin to (default: the last allowed one)")
    ap.add_argument("--paper", action="store_true", help="also measure the paper preset (~6 min more)")
    args = ap.parse_args(argv)
    cpu = chosen_cpu(ap, args.cpu)
    presets = ["tiny", "paper"] if args.paper else ["tiny"]
    pin_to_cpu(cpu)
    import torch

    torch.set_num_threads(1)
    from rich.console import Console

    from htouch.dataset.schema import CameraSpec, StreamSpecs
    from htouch.dataset.split import split_dataset
    from htouch.dataset.synthetic import write_synthetic_dataset

    log = elapsed_logger(Console(stderr=True))
    load_start = load_average()
    results = []
    with tempfile.TemporaryDirectory(prefix="htouch-bench-pretrain-av-") as tmp:
        tmp = Path(tmp)
        log(f"writing {EPISODES} synthetic 64x48 episodes of {SECONDS:g} s")
        ds = write_synthetic_dataset(tmp / "ds", EPISODES, seconds=SECONDS,
                                     streams=StreamSpecs(name="synthetic", camera=CameraSpec(width=64, height=48)))
        split_dataset(ds, 0.34, seed=0)
        for preset in presets:
            results.append(measure(ds.root, tmp / f"out-{preset}", preset, log))
    meta = {"command": shlex.join([".venv/bin/python", "tools/bench_pretrain_av.py",
                                   *(sys.argv[1:] if argv is None else argv)]),
            "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"), "torch": torch.__version__,
            "load_start": load_start, "load_end": load_average(),
            "machine": machine_info(cpu)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(build_report(results, meta))
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
