"""Check `htouch export` with the real libraries, not with htouch's own reader: LeRobot, and Diffusion Policy.

    .venv/bin/python tools/verify_lerobot_export.py [--venv DIR] [--dataset DIR] [--write-doc]
    .venv/bin/python tools/verify_lerobot_export.py --format dp --dp-repo CLONE [--maniwav-repo CLONE] [--write-doc]

--format lerobot (the default):
1. builds (once) a side virtual environment with the real `lerobot` package (pip resolves its own torch, torchvision
   and torchcodec: several GB the first time; nothing of it enters htouch's environment);
2. writes a small synthetic dataset (frame drops planted) or takes --dataset, and exports it with htouch, timing the
   export (frames/s on one core) and comparing its bytes with the htouch episodes;
3. writes the frames, states, actions and audio htouch expects in each row (from htouch's reader: the
   reference) to .npy files, then, in the side environment with HF_HUB_OFFLINE=1 (no network), loads the export with
   `lerobot.datasets.lerobot_dataset.LeRobotDataset(root=...)` and reads every item: every frame decoded by
   LeRobot's video decoder, its timestamp within LeRobot's tolerance, the PSNR against htouch's frame, the
   features, the episode boundaries and the split, plus one pass with `delta_timestamps` (frame and audio history)
   and one with LeRobot's PyAV decoder;
4. prints the figures and, with --write-doc, puts them in docs/interop.md between the markers.

--format dp: the same with Diffusion Policy's own `ReplayBuffer` and codec registration, copied from a clone of its
repository (DP is not on PyPI) into a side environment with DP's pinned zarr stack (Python 3.9 when present), and
with ManiWAV's `SequenceSampler` when --maniwav-repo is given.

Not run by the test suite (installing LeRobot takes minutes and GBs); tests/test_export.py checks the structure.
LeRobot decodes video with torchcodec, which loads the system's FFmpeg libraries; on Debian 12:
`apt-get install libavutil57 libavcodec59 libavformat59 libavdevice59 libavfilter8 libswscale6 libswresample4`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LEROBOT_VERSION = "0.4.4"  # the newest release on PyPI that installs on Python 3.11 here (2026-12)
DOC = ROOT / "docs" / "interop.md"
MARKER = "<!-- {marker}:{name}:{end} -->"  # the figures of one run, replaced by the next run of that name

# Runs inside the side environment: only lerobot, torch and numpy, never htouch.
CHECKER = r'''
import json, os, sys, time
import numpy as np
import torch
from lerobot.datasets.lerobot_dataset import LeRobotDataset
import lerobot, torchvision

root, ref = sys.argv[1], sys.argv[2]
expected = json.load(open(os.path.join(ref, "expected.json")))
frames = np.load(os.path.join(ref, "frames.npy"), mmap_mode="r")
state, action = np.load(os.path.join(ref, "state.npy")), np.load(os.path.join(ref, "action.npy"))
audio = np.load(os.path.join(ref, "audio.npy"), mmap_mode="r")
out = {"lerobot": getattr(lerobot, "__version__", "?"), "torch": torch.__version__,
       "torchvision": torchvision.__version__}
try:
    import torchcodec
    out["torchcodec"] = torchcodec.__version__
except ImportError:
    out["torchcodec"] = None

t = time.perf_counter()
ds = LeRobotDataset("htouch/export", root=root)
out["backend"] = ds.video_backend
out["tolerance_s"] = ds.tolerance_s
meta = ds.meta
out["codebase_version"] = meta.info["codebase_version"]
assert meta.info["codebase_version"] == "v3.0"
assert len(ds) == expected["rows"] == meta.total_frames, (len(ds), expected["rows"])
assert meta.total_episodes == len(expected["lengths"])
assert meta.fps == expected["fps"]
assert meta.video_keys == [expected["camera_key"]], meta.video_keys
assert set(meta.features) == set(expected["features"]), sorted(meta.features)
assert dict(meta.info["splits"]) == expected["splits"], meta.info["splits"]
assert list(meta.tasks.index) == [expected["task"]]
bounds = [(int(e["dataset_from_index"]), int(e["dataset_to_index"])) for e in meta.episodes]
at = 0
for (lo, hi), n in zip(bounds, expected["lengths"]):
    assert (lo, hi) == (at, at + n), (lo, hi, at, n)
    at = hi
for key, st in meta.stats.items():
    assert set(st) >= {"min", "max", "mean", "std", "count"}, key

psnr, ts_err, n_items = [], 0.0, 0
key = expected["camera_key"]
for i in range(len(ds)):
    item = ds[i]
    ep, fi = int(item["episode_index"]), int(item["frame_index"])
    lo = bounds[ep][0]
    assert lo + fi == i == int(item["index"])
    ts = float(item["timestamp"])
    ts_err = max(ts_err, abs(ts - fi / meta.fps))
    img = item[key]
    assert img.shape == (3, expected["height"], expected["width"]) and img.dtype == torch.float32
    got = (img.permute(1, 2, 0).numpy() * 255.0).round()
    mse = float(np.mean((got - frames[i].astype(np.float64)) ** 2))
    psnr.append(99.0 if mse == 0 else 10 * np.log10(255.0 ** 2 / mse))
    assert np.array_equal(item["observation.state"].numpy(), state[i]), i
    assert np.array_equal(item["action"].numpy(), action[i]), i
    assert np.array_equal(item["observation.audio"].numpy(), audio[i]), i
    assert item["task"] == expected["task"]
    assert bool(item["next.done"]) == (fi == expected["lengths"][ep] - 1)
    n_items += 1
out["items"] = n_items
out["seconds_all_items"] = time.perf_counter() - t
out["max_timestamp_error_s"] = ts_err
out["psnr_db"] = {"min": float(np.min(psnr)), "mean": float(np.mean(psnr)), "median": float(np.median(psnr))}
assert ts_err < ds.tolerance_s

# History as a policy asks for it: 2 frames and 3 audio windows back, padded at the episode start.
fps = meta.fps
hist = LeRobotDataset("htouch/export", root=root, delta_timestamps={
    key: [-1 / fps, 0.0], "observation.audio": [-2 / fps, -1 / fps, 0.0], "action": [0.0, 1 / fps]})
for i in (0, 1, bounds[-1][0] + 5, len(hist) - 1):
    item = hist[i]
    assert item[key].shape == (2, 3, expected["height"], expected["width"])
    assert item["observation.audio"].shape == (3, *expected["audio_shape"])
    pad = item["observation.audio_is_pad"].tolist()
    fi = int(item["frame_index"])
    assert pad == [fi - 2 < 0, fi - 1 < 0, False], (i, pad)
out["delta_timestamps"] = "ok"

# LeRobot's other decoder (PyAV through torchvision) on every 7th row: the same frames within the codec.
pyav = LeRobotDataset("htouch/export", root=root, video_backend="pyav")
diff = 0.0
for i in range(0, len(pyav), 7):
    diff = max(diff, float((pyav[i][key] - ds[i][key]).abs().max()))
out["pyav_max_abs_diff"] = diff
assert diff <= 2 / 255, diff
print("RESULT " + json.dumps(out))
'''


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, text=True, **kw)


def ensure_venv(venv: Path, version: str) -> Path:
    python = venv / "bin" / "python"
    if python.exists():
        probe = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('lerobot'))"],
                               capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return python
    print(f"building {venv} with lerobot=={version} (its own torch; minutes, GBs the first time)", flush=True)
    sh([sys.executable if sys.version_info[:2] == (3, 11) else "python3.11", "-m", "venv", "--clear", str(venv)])
    sh([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", f"lerobot=={version}"])
    return python


def make_dataset(path: Path, episodes: int, seconds: float):
    from htouch.dataset.schema import CameraSpec, StreamSpecs
    from htouch.dataset.split import split_dataset
    from htouch.dataset.synthetic import write_synthetic_dataset

    streams = StreamSpecs(name="synthetic", camera=CameraSpec(width=128, height=96))
    ds = write_synthetic_dataset(path, episodes, seconds=seconds, seed=0, streams=streams)
    split_dataset(ds, 0.34, 0)
    return ds


def expected_rows(ds, out: Path, ref: Path, report) -> dict:
    """What each exported row must hold, from htouch's reader (the reference), as .npy files."""
    import pyarrow.parquet as pq

    from htouch.interop.common import episode_rows, frame_grid
    from htouch.interop.lerobot import AUDIO_KEY, CAMERA_KEY, EPISODES_PATH, INFO_PATH

    info = json.loads((out / INFO_PATH).read_text())
    eps = pq.read_table(out / EPISODES_PATH.format(chunk_index=0, file_index=0)).to_pydict()
    frames, state, action, audio = [], [], [], []
    for name in eps["htouch/episode"]:
        ep = ds.episode(name)
        rows = episode_rows(ep, report.fps, report.audio_rate_hz)
        g = frame_grid(ep, report.fps)
        rgb = ep.read("camera/rgb")
        frames.append(rgb[g.frame])
        state.append(rows.state)
        action.append(rows.action)
        audio.append(rows.audio)
    np.save(ref / "frames.npy", np.concatenate(frames))
    np.save(ref / "state.npy", np.concatenate(state))
    np.save(ref / "action.npy", np.concatenate(action))
    np.save(ref / "audio.npy", np.concatenate(audio))
    f = info["features"]
    exp = {"rows": report.rows, "fps": report.fps, "lengths": eps["length"], "splits": info["splits"],
           "task": ds.task, "camera_key": CAMERA_KEY, "features": sorted(f), "height": f[CAMERA_KEY]["shape"][0],
           "width": f[CAMERA_KEY]["shape"][1], "audio_shape": f[AUDIO_KEY]["shape"]}
    (ref / "expected.json").write_text(json.dumps(exp))
    return exp


def htouch_bytes(ds) -> int:
    from htouch.interop.common import tree_bytes

    return sum(tree_bytes(ds.episode_path(i)) for i in ds.episode_indices())


def describe(args, work: Path):
    """The dataset to export (--dataset, or a new synthetic one) and a line saying what it is."""
    from htouch.dataset.store import Dataset

    if args.dataset is not None:
        ds = Dataset(args.dataset)
        cam, mic = ds.streams.camera, ds.streams.audio
        return ds, (f"`{args.dataset}` ({len(ds.episode_indices())} episodes of task {ds.task}, rig {ds.streams.name}: "
                    f"{cam.width}x{cam.height} at {cam.rate_hz:g} fps, {mic.channels} channels at {mic.rate_hz:g} Hz)")
    ds = make_dataset(work / "ds", args.episodes, args.seconds)
    return ds, (f"synthetic: {args.episodes} episodes x {args.seconds:g} s, 128x96 at 30 fps, 4 channels at 32 kHz, "
                "frames dropped at 2 s and 5 s, split 0.34")


def run_checker(python: Path, code: str, argv: list[str], work: Path, what: str) -> dict:
    """Run `code` in the side environment (no htouch on its path, no network), return its RESULT line."""
    checker = work / "checker.py"
    checker.write_text(code)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(work / "hf"),
           "HF_LEROBOT_HOME": str(work / "hf" / "lerobot"), "PYTHONPATH": "", "WANDB_MODE": "disabled"}
    proc = subprocess.run([str(python), str(checker), *argv], env=env, capture_output=True, text=True, cwd=work)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-6000:])
        hint = (" (torchcodec found no FFmpeg libraries: see this script's docstring)"
                if "libtorchcodec" in proc.stderr else "")
        raise SystemExit(f"{what} could not load the export (above){hint}")
    return json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])


def on_one_core(export, *a, **kw):
    """Run the export pinned to one CPU (every thread it starts, the video encoder's too): "frames/s on one core"."""
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})
    try:
        t = time.perf_counter()
        report = export(*a, **kw)
        return report, time.perf_counter() - t
    finally:
        os.sched_setaffinity(0, cpus)


def verify_lerobot(args, work: Path) -> tuple[str, str]:
    from htouch.interop.lerobot import export_lerobot

    python = ensure_venv(args.venv, args.lerobot)
    ds, dataset_text = describe(args, work)
    out = work / "lerobot"
    t = time.perf_counter()
    sizes = {} if args.file_mb is None else {"data_file_mb": args.file_mb, "video_file_mb": args.file_mb}
    report = export_lerobot(ds, out, vcodec=args.vcodec, **sizes)
    wall = time.perf_counter() - t
    ref = work / "ref"
    ref.mkdir()
    expected_rows(ds, out, ref, report)
    result = run_checker(python, CHECKER, [str(out), str(ref)], work, "LeRobot")
    src_bytes = htouch_bytes(ds)
    audio_mb = sum(p.stat().st_size for p in (out / "htouch").rglob("*.npz")) / 1e6
    data_mb = sum(p.stat().st_size for p in (out / "data").rglob("*.parquet")) / 1e6
    video_mb = sum(p.stat().st_size for p in (out / "videos").rglob("*.mp4")) / 1e6
    n_files = len(list((out / "data").rglob("*.parquet"))), len(list((out / "videos").rglob("*.mp4")))
    lines = [
        f"- dataset: {dataset_text}; {n_files[0]} data file(s), {n_files[1]} video file(s)",
        f"- LeRobot {result['lerobot']} (torch {result['torch']}, torchvision {result['torchvision']}, "
        f"torchcodec {result['torchcodec']}; decoder `{result['backend']}`), HF_HUB_OFFLINE=1",
        f"- loaded every item ({result['items']} of {report.rows} rows, {report.episodes} episodes) through "
        f"`LeRobotDataset(root=...)` in {result['seconds_all_items']:.1f} s: codebase_version "
        f"{result['codebase_version']}, features, episode boundaries, split {json.dumps(_splits(out))}, task, "
        "states, actions and audio windows equal to htouch's, `next.done` on each episode's last row",
        f"- timestamps: largest |timestamp - frame_index / fps| {result['max_timestamp_error_s']:.2e} s "
        f"(LeRobot's tolerance {result['tolerance_s']:g} s); every frame decoded within it",
        f"- frames against htouch's (PSNR, {report.video_codec}, crf 30): min {result['psnr_db']['min']:.1f} dB, "
        f"median {result['psnr_db']['median']:.1f} dB, mean {result['psnr_db']['mean']:.1f} dB",
        f"- dropped frames: {report.repeated_frames} row(s) repeat the previous frame; skipped "
        f"{report.skipped_frames}, trimmed {report.trimmed_rows}",
        f"- `delta_timestamps` (2 frames, 3 audio windows, 2 actions): {result['delta_timestamps']}, padding "
        "flags as expected at episode starts",
        f"- LeRobot's PyAV decoder (`video_backend=\"pyav\"`) on every 7th row: largest difference from "
        f"torchcodec's frames {result['pyav_max_abs_diff'] * 255:.0f}/255",
        f"- export speed: {report.rows / wall:.0f} frames/s on one core ({report.rows} frames in {wall:.1f} s, "
        "validation with checksums included)",
        f"- bytes: {report.bytes_out / 1e6:.1f} MB exported (data parquet {data_mb:.1f} MB, video {video_mb:.1f} "
        f"MB, audio sidecar {audio_mb:.1f} MB) against {src_bytes / 1e6:.1f} MB of htouch episodes "
        f"({report.bytes_out / src_bytes:.2f}x)",
    ]
    return "verify-lerobot", "\n".join(lines)


# Diffusion Policy's pins (its conda_environment.yaml: python 3.9, zarr 2.12.0, numcodecs 0.10.2, imagecodecs
# 2022.9.26); numcodecs 0.10.2 does not build on Python 3.11, so the side environment uses Python 3.9 when present.
DP_PINS = ["numpy==1.23.5", "zarr==2.12.0", "numcodecs==0.10.2", "imagecodecs==2022.9.26", "scipy<1.12"]
DP_FILES = {  # file in the DP (or ManiWAV) repository -> module in the side environment
    "diffusion_policy/common/replay_buffer.py": "diffusion_policy/common/replay_buffer.py",
    "diffusion_policy/codecs/imagecodecs_numcodecs.py": "diffusion_policy/codecs/imagecodecs_numcodecs.py",
}
MANIWAV_FILES = {"diffusion_policy/common/sampler.py": "diffusion_policy/common/maniwav_sampler.py"}

# Runs inside the DP side environment (Python 3.9): DP's own ReplayBuffer and codecs, never htouch.
DP_CHECKER = r"""
import json, os, sys, time
import numpy as np
import zarr
from scipy.spatial.transform import Rotation
sys.path.insert(0, sys.argv[3])
from diffusion_policy.codecs.imagecodecs_numcodecs import register_codecs
register_codecs()
from diffusion_policy.common.replay_buffer import ReplayBuffer
import numcodecs, imagecodecs

path, ref = sys.argv[1], sys.argv[2]
expected = json.load(open(os.path.join(ref, "expected.json")))
frames = np.load(os.path.join(ref, "frames.npy"), mmap_mode="r")
state, action = np.load(os.path.join(ref, "state.npy")), np.load(os.path.join(ref, "action.npy"))
audio = np.load(os.path.join(ref, "audio.npy"), mmap_mode="r")
out = {"zarr": zarr.__version__, "numcodecs": numcodecs.__version__, "imagecodecs": imagecodecs.__version__,
       "python": sys.version.split()[0]}
lengths = expected["lengths"]
t = time.perf_counter()
with zarr.ZipStore(path, mode="r") as zip_store:  # as UmiManiWAVDataset loads it
    rb = ReplayBuffer.copy_from_store(src_store=zip_store, store=zarr.MemoryStore())
    numpy_rb = ReplayBuffer.copy_from_store(src_store=zip_store)  # DP's numpy backend: every chunk decoded
out["seconds_load"] = time.perf_counter() - t
for buf in (rb, numpy_rb):
    assert buf.n_episodes == len(lengths)
    assert np.array_equal(np.asarray(buf.episode_ends[:]), np.cumsum(lengths))
    assert set(buf.keys()) == set(expected["keys"]), sorted(buf.keys())
    for key in buf.keys():
        assert buf[key].shape[0] == sum(lengths), key
rgb = numpy_rb["camera0_rgb"]
assert rgb.shape == frames.shape and rgb.dtype == np.uint8, (rgb.shape, frames.shape)
mse = ((rgb.astype(np.float64) - frames.astype(np.float64)) ** 2).reshape(len(rgb), -1).mean(axis=1)
psnr = 10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-12))
out["psnr_db"] = {"min": float(psnr.min()), "mean": float(psnr.mean()), "median": float(np.median(psnr))}
assert np.array_equal(numpy_rb["robot0_eef_pos"], state[:, :3])
assert np.array_equal(numpy_rb["robot0_gripper_width"], state[:, -1:])
quat = Rotation.from_rotvec(numpy_rb["robot0_eef_rot_axis_angle"].astype(np.float64)).as_quat()
ref_quat = state[:, 3:7].astype(np.float64)
ref_quat /= np.linalg.norm(ref_quat, axis=1, keepdims=True)
out["max_quat_error"] = float(np.max(np.minimum(np.abs(quat - ref_quat), np.abs(quat + ref_quat))))
assert out["max_quat_error"] < 1e-5
assert np.array_equal(numpy_rb["action"], action)
for c in range(audio.shape[2]):
    assert np.array_equal(numpy_rb["mic_%d" % c], audio[:, :, c]), c
for i, n in enumerate(lengths):
    assert len(rb.get_episode(i)["action"]) == n
# The compressed in-memory buffer decodes frames lazily, as the training loop reads them.
assert np.array_equal(rb["camera0_rgb"][7], rgb[7])
if os.path.exists(os.path.join(sys.argv[3], "diffusion_policy/common/maniwav_sampler.py")):
    from diffusion_policy.common.maniwav_sampler import SequenceSampler
    H, W = rgb.shape[1:3]
    low = {"type": "low_dim", "horizon": 2, "latency_steps": 0, "down_sample_steps": 3}
    shape_meta = {"obs": {"camera0_rgb": {"shape": [3, H, W], "type": "rgb", "horizon": 2, "latency_steps": 0,
                                          "down_sample_steps": 3},
                          "mic_0": {"shape": [audio.shape[1]], "type": "audio", "horizon": 30, "latency_steps": 0,
                                    "down_sample_steps": 1},
                          "robot0_eef_pos": dict(low, shape=[3]),
                          "robot0_eef_rot_axis_angle": dict(low, shape=[3]),
                          "robot0_gripper_width": dict(low, shape=[1])},
                  "action": {"shape": [7], "horizon": 16, "latency_steps": 0, "down_sample_steps": 3}}
    keys = list(shape_meta["obs"]) + ["action"]
    sampler = SequenceSampler(
        shape_meta=shape_meta, replay_buffer=rb, rgb_keys=["camera0_rgb"], audio_keys=["mic_0"],
        lowdim_keys=["robot0_eef_pos", "robot0_eef_rot_axis_angle", "robot0_gripper_width"],
        key_horizon={k: (shape_meta["obs"][k] if k != "action" else shape_meta["action"])["horizon"] for k in keys},
        key_latency_steps={k: 0 for k in keys},
        key_down_sample_steps={k: (shape_meta["obs"][k] if k != "action" else shape_meta["action"])["down_sample_steps"]
                               for k in keys})
    for i in (0, len(sampler) // 2, len(sampler) - 1):
        s = sampler.sample_sequence(i)
        assert s["camera0_rgb"].shape == (2, H, W, 3) and s["mic_0"].shape == (30, audio.shape[1])
        assert s["robot0_eef_pos"].shape == (2, 3) and s["action"].shape == (16, 7)
    out["maniwav_sampler"] = len(sampler)
print("RESULT " + json.dumps(out))
"""


def _repo_file(repo: Path, path: str) -> str:
    """A file of a repository clone: its work tree, else its git objects (a bare or mirrored clone)."""
    if (repo / path).is_file():
        return (repo / path).read_text()
    git_dir = repo / ".git" if (repo / ".git").exists() else repo
    proc = subprocess.run(["git", "--git-dir", str(git_dir), "show", f"HEAD:{path}"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{repo}: no {path} ({proc.stderr.strip()})")
    return proc.stdout


def _commit(repo: Path) -> str:
    git_dir = repo / ".git" if (repo / ".git").exists() else repo
    proc = subprocess.run(["git", "--git-dir", str(git_dir), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                          text=True)
    return proc.stdout.strip() or "unknown commit"


def ensure_dp_venv(venv: Path, dp_repo: Path, maniwav_repo: Path | None) -> tuple[Path, Path]:
    """The DP side environment with DP's pinned zarr stack, and a folder holding DP's replay buffer and codec
    modules (and ManiWAV's sampler) as the package `diffusion_policy`."""
    python = venv / "bin" / "python"
    if not python.exists():
        base = shutil.which("python3.9") or next(
            (str(p) for p in Path.home().glob(".pyenv/versions/3.9*/bin/python3.9")), sys.executable)
        print(f"building {venv} with {base} and {' '.join(DP_PINS)}", flush=True)
        sh([base, "-m", "venv", str(venv)])
        sh([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *DP_PINS])
    src = venv / "dp-src"
    shutil.rmtree(src, ignore_errors=True)
    files = [(dp_repo, DP_FILES), *([(maniwav_repo, MANIWAV_FILES)] if maniwav_repo else [])]
    for repo, mapping in files:
        for path, module in mapping.items():
            dst = src / module
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text(_repo_file(repo, path))
    for init in ("diffusion_policy", "diffusion_policy/common", "diffusion_policy/codecs"):
        (src / init / "__init__.py").touch()
    return python, src


def verify_dp(args, work: Path) -> tuple[str, str]:
    import zarr as htouch_zarr

    from htouch.interop.common import episode_rows, frame_grid
    from htouch.interop.dp import export_dp

    python, src = ensure_dp_venv(args.venv, args.dp_repo, args.maniwav_repo)
    ds, dataset_text = describe(args, work)
    out = work / "replay.zarr.zip"
    report, wall = on_one_core(export_dp, ds, out)
    ref = work / "ref"
    ref.mkdir()
    names = [e["htouch_episode"] for e in report.episode_map]
    frames, state, action, audio = [], [], [], []
    for name in names:
        ep = ds.episode(name)
        rows = episode_rows(ep, report.fps, report.audio_rate_hz)
        frames.append(ep.read("camera/rgb")[frame_grid(ep, report.fps).frame])
        state.append(rows.state)
        action.append(rows.action)
        audio.append(rows.audio)
    for key, parts in (("frames", frames), ("state", state), ("action", action), ("audio", audio)):
        np.save(ref / f"{key}.npy", np.concatenate(parts))
    with htouch_zarr.storage.ZipStore(out, mode="r") as store:
        keys = sorted(htouch_zarr.open_group(store, mode="r", zarr_format=2)["data"].keys())
    (ref / "expected.json").write_text(json.dumps({"lengths": [e["rows"] for e in report.episode_map],
                                                   "keys": keys}))
    result = run_checker(python, DP_CHECKER, [str(out), str(ref), str(src)], work, "Diffusion Policy's ReplayBuffer")
    src_bytes = htouch_bytes(ds)
    maniwav = (f"; ManiWAV's `SequenceSampler` ({result['maniwav_sampler']} samples: 2 frames, 30 audio windows of "
               f"mic_0, 16 actions) draws samples of the expected shapes" if "maniwav_sampler" in result else "")
    clones = f"DP_CLONE: real-stanford/diffusion_policy at {_commit(args.dp_repo)}" + (
        f", MANIWAV_CLONE: real-stanford/maniwav at {_commit(args.maniwav_repo)}" if args.maniwav_repo else "")
    lines = [
        f"- dataset: {dataset_text}",
        f"- {clones} (clones of the GitHub repositories)",
        f"- Diffusion Policy's `ReplayBuffer` and `register_codecs()` (its own files, Python {result['python']}, "
        f"zarr {result['zarr']}, numcodecs {result['numcodecs']}, imagecodecs {result['imagecodecs']}: DP's pins)",
        f"- loaded with `zarr.ZipStore(path, mode='r')` into a `MemoryStore` (as ManiWAV's dataset does) and into "
        f"numpy in {result['seconds_load']:.1f} s: {report.episodes} episodes, `meta/episode_ends`, "
        f"keys {', '.join(keys)}; "
        f"eef position, gripper width, audio windows (mic_*) and actions equal to htouch's, the axis-angle rotation "
        f"equal to htouch's quaternion within {result['max_quat_error']:.1e}{maniwav}",
        f"- frames against htouch's (PSNR, JPEG q90 re-encoded from the recorded frames): min "
        f"{result['psnr_db']['min']:.1f} dB, median {result['psnr_db']['median']:.1f} dB",
        f"- dropped frames: {report.repeated_frames} row(s) repeat the previous frame",
        f"- export speed: {report.rows / wall:.0f} frames/s on one core ({report.rows} frames in {wall:.1f} s, "
        "validation with checksums included)",
        f"- bytes: {report.bytes_out / 1e6:.1f} MB against {src_bytes / 1e6:.1f} MB of htouch episodes "
        f"({report.bytes_out / src_bytes:.2f}x)",
    ]
    return "verify-dp", "\n".join(lines)



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--format", choices=("lerobot", "dp"), default="lerobot", help="which export to check")
    ap.add_argument("--venv", type=Path, default=None, help="the side environment (default: "
                    "$TMPDIR/htouch-lerobot-venv or $TMPDIR/htouch-dp-venv)")
    ap.add_argument("--lerobot", default=LEROBOT_VERSION, help="lerobot version to install in the side venv")
    ap.add_argument("--dp-repo", type=Path, help="dp: a clone of real-stanford/diffusion_policy (a work tree or a "
                    "bare git directory): DP is not on PyPI; its replay_buffer.py and codecs are copied into the venv")
    ap.add_argument("--maniwav-repo", type=Path, help="dp: a clone of real-stanford/maniwav, to sample the export "
                    "with ManiWAV's SequenceSampler too")
    ap.add_argument("--dataset", type=Path, help="export this htouch dataset (default: a new synthetic one)")
    ap.add_argument("--episodes", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--vcodec", default=None, help="lerobot: video encoder of the export (default: htouch's)")
    ap.add_argument("--file-mb", type=int, help="lerobot: start new data and video files past this size (0: one "
                    "file per episode, to check that LeRobot follows an episode into its own files)")
    ap.add_argument("--write-doc", action="store_true", help=f"put the figures into {DOC.relative_to(ROOT)}")
    args = ap.parse_args()
    if args.venv is None:
        args.venv = Path(tempfile.gettempdir()) / f"htouch-{args.format}-venv"
    if args.format == "dp" and args.dp_repo is None:
        ap.error("--format dp needs --dp-repo (a clone of real-stanford/diffusion_policy)")

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)  # the audio resampler; the export itself is pinned to one CPU (on_one_core)
    work = Path(tempfile.mkdtemp(prefix=f"htouch-verify-{args.format}-"))
    try:
        marker, text = verify_lerobot(args, work) if args.format == "lerobot" else verify_dp(args, work)
        print(text)
        if args.write_doc:
            flags = " ".join(f for f in (
                "--format dp" if args.format == "dp" else "", "--dp-repo DP_CLONE" if args.dp_repo else "",
                "--maniwav-repo MANIWAV_CLONE" if args.maniwav_repo else "",
                f"--dataset {args.dataset}" if args.dataset else "",
                f"--file-mb {args.file_mb}" if args.file_mb is not None else "") if f)
            command = f"    .venv/bin/python tools/verify_lerobot_export.py --write-doc {flags}".rstrip()
            write_doc(marker, ("synthetic" if args.dataset is None else args.dataset.name) + (
                f"-files-{args.file_mb}mb" if args.file_mb is not None else ""),
                      f"Measured {time.strftime('%Y-%m-%d')} with:\n\n{command}\n\n{text}\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _splits(out: Path) -> dict:
    return json.loads((out / "meta" / "info.json").read_text())["splits"]


def write_doc(marker: str, name: str, section: str) -> None:
    doc = DOC.read_text() if DOC.exists() else "# Interoperability\n"
    BEGIN = MARKER.format(marker=marker, name=name, end="begin")
    END = MARKER.format(marker=marker, name=name, end="end")
    block = f"{BEGIN}\n{section}{END}"
    if BEGIN in doc and END in doc:
        doc = doc[:doc.index(BEGIN)] + block + doc[doc.index(END) + len(END):]
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
    DOC.write_text(doc)
    print(f"wrote {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
