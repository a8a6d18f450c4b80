#!/usr/bin/env python
"""Does the paper-preset policy keep 30 Hz on this CPU? Rollouts of the real recording loop with the policy
planning in the control thread (synchronous, as before) and beside it (asynchronous), side by side.

Each mode records one rollout of --seconds through htouch.collector.loop.Recorder and PolicySource (readers,
writer, safety filter, everything a rollout runs) on a rig that does not render: a stand-in camera producing
640x480 frames at 30 Hz on the monotonic clock, 4 microphones at 32 kHz in 10 ms blocks, a robot that
integrates the commanded motion, nobody at a teleop. The policy is the paper preset of `ours` (random
weights: latency does not depend on them), one torch thread. Per mode:

- the time each tick spent in the policy (PolicySource.command): p50 / p99 / max, the control thread's own
  CPU time there (p99: what the tick computed, as against time it was not running), and the ticks that
  spent more than --wait-ms there (ticks that waited for the model, or for a CPU);
- the loop's overruns (ticks that woke more than one period late) and tick period p99;
- re-plans: wall p50 / p99 and CPU p50 / p99 (synchronous: the re-plan ticks' time in the policy;
  asynchronous: the worker's planning time), model calls, actions skipped because their tick passed while
  planning, ticks held with no action left;
- the process's CPU share and the load average (the machine may be shared: an experiment may be running).

A second section times one re-plan's encoders (1 new frame + the audio clip) in the layouts considered,
interleaved: eager (contiguous), channels-last, TorchScript (traced, frozen) in channels-last, channels-last with
bfloat16 weights under autocast (on a CPU with native bfloat16), and ONNX Runtime (htouch.training.onnx_encoders,
with the onnx extra installed).

    .venv/bin/python tools/bench_async_policy.py          # 2-minute rollouts, writes docs/bench-async-policy.md
    .venv/bin/python tools/bench_async_policy.py --seconds 5 --preset tiny --repeats 3 --out /tmp/b.md  # smoke run
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import os
import platform
import shlex
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import torch  # noqa: E402
from standin_rig import stand_in_rig  # noqa: E402  (the rig that does not render, shared with bench_recorder)

from htouch.collector.config import ControlConfig  # noqa: E402
from htouch.collector.loop import Recorder  # noqa: E402
from htouch.collector.safety import SafetyLimits  # noqa: E402
from htouch.dataset import audio  # noqa: E402
from htouch.dataset.schema import StreamSpecs  # noqa: E402
from htouch.dataset.store import Dataset  # noqa: E402
from htouch.training import onnx_encoders  # noqa: E402
from htouch.training.checkpoints import save_run_checkpoint  # noqa: E402
from htouch.training.data import DataSpec  # noqa: E402
from htouch.training.methods import policy_config  # noqa: E402
from htouch.training.model import ActionNormalization, build_policy, preprocess_frames  # noqa: E402
from htouch.training.policy_source import PolicySource  # noqa: E402
from htouch.training.runner import native_bfloat16  # noqa: E402

MODES = {  # name: PolicySource options
    "sync": dict(asynchronous=False, channels_last=False),
    "sync-channels-last": dict(asynchronous=False, channels_last=True),
    "async-channels-last": dict(asynchronous=True, channels_last=True),
    "sync-onnxruntime": dict(asynchronous=False, encoders="onnxruntime"),
    "async-onnxruntime": dict(asynchronous=True, encoders="onnxruntime"),
    "async-bfloat16": dict(asynchronous=True, channels_last=True, precision="bfloat16"),
}
BFLOAT16_DIFFERENCE: tuple[float, float] | None = None  # (frame, audio) embeddings, set by encoder_layouts
DEFAULT_MODES = ("sync", "async-channels-last", "async-onnxruntime", "async-bfloat16")


# ------------------------------------------------------------------------------------ one rollout


def make_run(preset: str, streams: StreamSpecs, where: Path) -> Path:
    torch.manual_seed(0)
    config = policy_config(preset, "ours")
    model = build_policy(config).eval()
    norm = ActionNormalization([0.0] * 6 + [0.5], [0.002] * 6 + [0.2])
    extra = {"action_normalization": norm.to_dict(), "data": DataSpec.from_policy(config).to_dict(),
             "rig": streams.to_dict(), "dataset": {"task": "stand-in"}}
    save_run_checkpoint(where / "run", model, config, extra)
    return where / "run"


def percentiles(values, *qs) -> list[float]:
    return [float(np.percentile(values, q)) if len(values) else float("nan") for q in qs]


def rollout(run: Path, streams: StreamSpecs, seconds: float, options: dict, wait_ms: float, where: Path) -> dict:
    rig = stand_in_rig(streams)
    limits = SafetyLimits()
    source = PolicySource.from_run(run, limits, streams.audio, 2, operator=False, **options)
    command_ns: list[int] = []
    command_cpu_ns: list[int] = []  # the control thread's own CPU time in the policy
    replan_tick: list[bool] = []
    command = source.command

    def timed(*args, **kwargs):
        calls = source.runner.counters.model_calls
        start, cpu = time.perf_counter_ns(), time.thread_time_ns()
        out = command(*args, **kwargs)
        command_ns.append(time.perf_counter_ns() - start)
        command_cpu_ns.append(time.thread_time_ns() - cpu)
        replan_tick.append(source.runner.counters.model_calls != calls)
        return out

    source.command = timed
    ds = Dataset.open_or_create(where / f"rollouts-{len(list(where.iterdir()))}", "stand-in", streams)
    control = ControlConfig(rate_hz=streams.action.rate_hz, max_episode_s=seconds)
    recorder = Recorder(rig, ds, control, safety=limits, source=source)
    load_before = os.getloadavg()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    try:
        result = recorder.run(1)
    finally:
        source.close()
        rig.close()
    cpu_share = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    if result.error or not result.committed:
        raise SystemExit(f"the rollout failed: {result.error or 'nothing committed'}")
    ms = np.array(command_ns) / 1e6
    runner = source.runner
    if runner.planner is not None:
        plans, plans_cpu = np.array(runner.planner.plan_seconds) * 1e3, np.array(runner.planner.plan_cpu_seconds) * 1e3
    else:
        replans = np.array(replan_tick, bool)
        plans, plans_cpu = ms[replans], (np.array(command_cpu_ns) / 1e6)[replans]
    timing = recorder.timing
    c = runner.counters
    return {
        "ticks": len(ms), "command": percentiles(ms, 50, 99) + [float(ms.max())],
        "command_cpu_p99": percentiles(np.array(command_cpu_ns) / 1e6, 99)[0],
        "computed": int((np.array(command_cpu_ns) / 1e6 > wait_ms).sum()),
        "waited": int((ms > wait_ms).sum()), "overruns": timing.overruns,
        "period_p99": timing.percentile_ms("wall_periods_ns", 99),
        "plans": len(plans), "plan": percentiles(plans, 50, 99), "plan_cpu": percentiles(plans_cpu, 50, 99),
        "frames_per_plan": c.frames_encoded / max(c.model_calls, 1),
        "skipped": c.actions_skipped, "held": c.ticks_held, "frames": result.outcomes[0].frames,
        "frames_dropped": result.outcomes[0].frames_dropped, "cpu_share": cpu_share,
        "load": (load_before, os.getloadavg()),
    }


# ------------------------------------------------------------------------------------ one re-plan's encoders


def encoder_layouts(preset: str, repeats: int) -> dict[str, tuple[float, float, float]]:
    """Wall p50, wall p99 and CPU p50 (ms) of encoding 1 frame and the audio clip, per layout, interleaved."""
    torch.manual_seed(0)
    config = policy_config(preset, "ours")
    eager = build_policy(config).eval()
    last = build_policy(config).eval()
    last.load_state_dict(eager.state_dict())
    last.to(memory_format=torch.channels_last)
    rgb = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    clip = np.random.default_rng(1).normal(0, 0.1, audio.DEFAULT_CLIP.n_samples).astype(np.float32)
    spectrogram = torch.from_numpy(audio.spectrogram(clip, audio.DEFAULT_CLIP.rate_hz,
                                                     audio.spectrogram_params(config.audio_kind)))[None]
    x = preprocess_frames(rgb[None], config.image_size)
    xl = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.compile / torch.export
        traced_image = torch.jit.freeze(torch.jit.trace(last.image_encoder, (xl,)))
        # what encode_audio feeds its encoder
        shape = spectrogram.unsqueeze(1).shape if spectrogram.ndim == 3 else spectrogram.shape
        audio_in = torch.randn(shape).contiguous(memory_format=torch.channels_last)
        traced_audio = torch.jit.freeze(torch.jit.trace(last.audio_encoder, (audio_in,)))

    def run_model(m, frames):
        return lambda: (m.encode_frames(frames), m.encode_audio(spectrogram))

    def run_traced():
        return (last.image_proj(traced_image((xl - last.image_mean) / last.image_std)),
                last.audio_proj(traced_audio(audio_in)))

    half = copy.deepcopy(last).to(torch.bfloat16)  # as PolicyRunner(precision="bfloat16") holds it

    def in_bfloat16(fn):
        def run():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return fn()
        return run

    layouts = {"eager (contiguous)": run_model(eager, x), "channels-last": run_model(last, xl),
               "TorchScript frozen, channels-last": run_traced}
    if native_bfloat16():
        layouts["channels-last, bfloat16 weights and autocast"] = in_bfloat16(run_model(half, xl))
    if onnx_encoders.available():
        ort = onnx_encoders.OnnxEncoders(eager, config.image_size, tuple(spectrogram.shape), torch.get_num_threads())
        layouts["ONNX Runtime"] = lambda: (ort.encode_frames(x), ort.encode_audio(spectrogram))
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in layouts}
    with torch.inference_mode():
        for fn in layouts.values():
            fn(), fn()
        for _ in range(repeats):
            for name, fn in layouts.items():
                start, cpu = time.perf_counter(), time.thread_time()
                fn()
                times[name].append(((time.perf_counter() - start) * 1e3, (time.thread_time() - cpu) * 1e3))
    if native_bfloat16():  # how far bfloat16 moves the embeddings (relative L2 distance)
        with torch.inference_mode():
            exact = run_model(last, xl)()
            rough = in_bfloat16(run_model(half, xl))()
        global BFLOAT16_DIFFERENCE
        BFLOAT16_DIFFERENCE = tuple(float((a - b.float()).norm() / a.norm()) for a, b in zip(exact, rough, strict=True))
    out = {}
    for name, ts in times.items():
        arr = np.array(ts)
        out[name] = (*percentiles(arr[:, 0], 50, 99), percentiles(arr[:, 1], 50)[0])
    return out


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=120.0, help="length of each rollout (default 120 s)")
    ap.add_argument("--preset", default="paper", choices=["paper", "tiny"])
    ap.add_argument("--modes", default=None, help=f"comma-separated, of: {', '.join(MODES)} (default: "
                    f"{', '.join(DEFAULT_MODES)}; the onnxruntime ones only with the onnx extra installed)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--wait-ms", type=float, default=10.0, help="a tick spending longer in the policy waited for it")
    ap.add_argument("--repeats", type=int, default=40, help="encoder timings per layout")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "bench-async-policy.md", help="markdown report")
    args = ap.parse_args(argv)
    modes = ([m.strip() for m in args.modes.split(",") if m.strip()] if args.modes else
             [m for m in DEFAULT_MODES if ("onnxruntime" not in m or onnx_encoders.available())
              and ("bfloat16" not in m or native_bfloat16())])
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise SystemExit(f"--modes: unknown {unknown}; choose from {list(MODES)}")
    torch.set_num_threads(args.threads)
    streams = StreamSpecs(name="stand-in")
    load = os.getloadavg()
    lines = ["# Planning beside the control loop (asynchronous policy runner)", "",
             f"Command: `{shlex.join(['.venv/bin/python', 'tools/bench_async_policy.py', *(argv or sys.argv[1:])])}`  ",
             f"Date: {dt.datetime.now().isoformat(timespec='seconds')}; {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}, "
             f"{args.threads} torch thread(s), onnxruntime "
             f"{_version('onnxruntime') if onnx_encoders.available() else 'not installed'}; load average before "
             f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}; this process's nice value {os.nice(0)}.", "",
             f"One {args.seconds:g} s rollout per mode of the {args.preset} preset (`ours`, h = 2 of H = 8) through "
             "the real recording loop on a stand-in rig that does not render (640x480 frames at 30 Hz, 4 x 32 kHz "
             "audio; every frame recorded as JPEG as in any rollout). See the script's docstring for the figures.",
             ""]
    rows = {}
    with tempfile.TemporaryDirectory(prefix="htouch-bench-async-") as tmp:
        run = make_run(args.preset, streams, Path(tmp))
        for mode in modes:
            print(f"rollout: {mode} ({args.seconds:g} s)", flush=True)
            rows[mode] = rollout(run, streams, args.seconds, MODES[mode], args.wait_ms, Path(tmp))
            r = rows[mode]
            print(f"  ticks {r['ticks']}, policy per tick p50/p99/max {r['command'][0]:.2f}/{r['command'][1]:.1f}/"
                  f"{r['command'][2]:.1f} ms, waited {r['waited']}, overruns {r['overruns']}, re-plan p50/p99 "
                  f"{r['plan'][0]:.1f}/{r['plan'][1]:.1f} ms, CPU share {r['cpu_share']:.0%}", flush=True)
    lines += [f"| mode | ticks | policy time per tick p50 / p99 / max (ms) | its CPU time p99 (ms) "
              f"| ticks > {args.wait_ms:g} ms in the policy "
              "| loop overruns | tick period p99 (ms) | re-plans | re-plan p50 / p99 (ms) | "
              "re-plan CPU p50 / p99 (ms) | frames encoded per re-plan | "
              "actions skipped | ticks held | frames (dropped) | process CPU share | load average before -> after |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for mode, r in rows.items():
        (lb, la) = r["load"]
        command = " / ".join(f"{v:.{2 if i == 0 else 1}f}" for i, v in enumerate(r["command"]))
        lines.append(f"| {mode} | {r['ticks']} | {command} | {r['command_cpu_p99']:.1f} | "
                     f"{r['waited']} | {r['overruns']} | {r['period_p99']:.1f} | {r['plans']} | "
                     f"{r['plan'][0]:.1f} / {r['plan'][1]:.1f} | {r['plan_cpu'][0]:.1f} / {r['plan_cpu'][1]:.1f} | "
                     f"{r['frames_per_plan']:.2f} | {r['skipped']} | "
                     f"{r['held']} | {r['frames']} ({r['frames_dropped']}) | {r['cpu_share']:.0%} | "
                     f"{lb[0]:.2f} -> {la[0]:.2f} |")
    for after in ("async-channels-last", "async-onnxruntime", "async-bfloat16"):
        if "sync" not in rows or after not in rows:
            continue
        b, a = rows["sync"], rows[after]
        lines += ["", f"Before / after (sync / {after}): re-plan wall p50 {b['plan'][0] / a['plan'][0]:.2f}x, "
                  f"p99 {b['plan'][1] / a['plan'][1]:.2f}x; policy time per tick p99 "
                  f"{b['command'][1] / a['command'][1]:.0f}x, max {b['command'][2] / a['command'][2]:.0f}x; "
                  f"ticks waiting {b['waited']} -> {a['waited']}; loop overruns {b['overruns']} -> {a['overruns']}; "
                  f"ticks per second {b['ticks'] / args.seconds:.1f} -> {a['ticks'] / args.seconds:.1f}."]
    period_ms = 1e3 / streams.action.rate_hz
    lines += ["", "## Goals", "", "| mode | no tick computes policy work over "
              f"{args.wait_ms:g} ms (CPU) | no tick over {args.wait_ms:g} ms in the policy (wall) | re-plan wall p99 "
              f"<= {2 * period_ms:.1f} ms | re-plan CPU p99 <= {2 * period_ms:.1f} ms |", "|---|---|---|---|---|"]
    for mode, r in rows.items():
        cpu99 = r["plan_cpu"][1]
        lines.append(f"| {mode} | {'PASS' if r['computed'] == 0 else 'FAIL'} ({r['computed']}) | "
                     f"{'PASS' if r['waited'] == 0 else 'FAIL'} ({r['waited']}) | "
                     f"{'PASS' if r['plan'][1] <= 2 * period_ms else 'FAIL'} ({r['plan'][1]:.0f}) | "
                     + f"{'PASS' if cpu99 <= 2 * period_ms else 'FAIL'} ({cpu99:.0f}) |")
    lines += ["", "A tick's CPU time in the policy is what it computed there; wall time over that is time the "
              "thread was not running (other processes on the shared cores, or the interpreter lock held by "
              "another thread of the process).", ""]
    lines += ["Frames encoded per re-plan: with re-plans every h = 2 ticks each re-plan's older frames (2/3 s = 20 "
              "ticks apart) were the newest of earlier re-plans and come from the cache, so one frame is encoded; "
              "when re-plans come further apart than the encoders take (a loaded machine), older frames were "
              "never the newest of a re-plan and up to all n frames are encoded, which makes each re-plan dearer "
              "still.", "",
              "On a shared machine the figures depend on the priority the process runs at (its nice value, in "
              "the header): under Linux's scheduler a process at nice 15 gets about 1/28 of the CPU a nice-0 "
              "process gets when they compete for a core.", ""]
    lines += ["Synchronous re-plan figures are the re-plan ticks' time in the policy (observation, encoders, "
              "head); asynchronous ones the worker's planning time, during which the loop goes on. CPU p50 is the "
              "planning thread's own CPU time (load-independent); the wall figures include what the shared "
              "machine gave to other processes.", ""]
    lines += ["## One re-plan's encoders by layout (1 new frame + the audio clip)", "",
              f"Interleaved, {args.repeats} each, {args.preset} preset, {args.threads} torch thread(s).", "",
              "| layout | wall p50 (ms) | wall p99 (ms) | CPU p50 (ms) |", "|---|---:|---:|---:|"]
    layouts = encoder_layouts(args.preset, args.repeats)
    for name, (p50, p99, cpu) in layouts.items():
        lines.append(f"| {name} | {p50:.1f} | {p99:.1f} | {cpu:.1f} |")
        print(f"  {name}: wall p50 {p50:.1f} p99 {p99:.1f} CPU p50 {cpu:.1f} ms", flush=True)
    base = layouts["eager (contiguous)"][2]
    lines += ["", "CPU-time ratio to eager: " + ", ".join(f"{n} {base / v[2]:.2f}x" for n, v in layouts.items()) +
              ".", ""]
    if BFLOAT16_DIFFERENCE is not None:
        lines += [f"bfloat16 moves the embeddings by {BFLOAT16_DIFFERENCE[0]:.2%} (frame) and "
                  f"{BFLOAT16_DIFFERENCE[1]:.2%} (audio) of their length (relative L2 distance to float32, random "
                  "weights); tests/test_runner.py checks that a policy's actions move by less than 5 % of the "
                  "action normalization's spread.", ""]
    lines += [f"Load average after: {'/'.join(f'{x:.2f}' for x in os.getloadavg())}.", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_name(args.out.name + ".tmp")
    tmp_out.write_text("\n".join(lines) + "\n")
    tmp_out.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
