"""Check `htouch export --format lerobot` with the real LeRobot library, not with htouch's own reader.

    .venv/bin/python tools/verify_lerobot_export.py [--venv /tmp/htouch-lerobot-venv] [--dataset DIR] [--write-doc]

1. builds (once) a side virtual environment with the real `lerobot` package (pip resolves its own torch, torchvision
   and torchcodec: several GB the first time; nothing of it enters htouch's environment);
2. writes a small synthetic dataset (frame drops planted) or takes --dataset, and exports it with htouch, timing the
   export (frames/s on one core) and comparing its bytes with the htouch episodes;
3. writes the frames, states, actions and audio htouch expects in each row (from htouch's reader: the source of
   truth) to .npy files, then, in the side environment with HF_HUB_OFFLINE=1 (no network), loads the export with
   `lerobot.datasets.lerobot_dataset.LeRobotDataset(root=...)` and reads every item: every frame decoded by
   LeRobot's video decoder, its timestamp within LeRobot's tolerance, the PSNR against htouch's frame, the
   features, the episode boundaries and the split, plus one pass with `delta_timestamps` (frame and audio history);
4. prints the figures and, with --write-doc, puts them in docs/interop.md between the markers.

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
MARKER = "<!-- verify-lerobot:{name}:{end} -->"  # the figures of one run, replaced by the next run of that name

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
    if i % 97 == 0:
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
    from htouch.dataset.schema import CameraSpec, RigSpec
    from htouch.dataset.split import split_dataset
    from htouch.dataset.synthetic import write_synthetic_dataset

    rig = RigSpec(name="synthetic", camera=CameraSpec(width=128, height=96))
    ds = write_synthetic_dataset(path, episodes, seconds=seconds, seed=0, rig=rig)
    split_dataset(ds, 0.34, 0)
    return ds


def expected_rows(ds, out: Path, ref: Path, report) -> dict:
    """What each exported row must hold, from htouch's reader (the source of truth), as .npy files."""
    import pyarrow.parquet as pq

    from htouch.interop.common import frame_grid
    from htouch.interop.lerobot import AUDIO_KEY, CAMERA_KEY, EPISODES_PATH, INFO_PATH, _episode_rows

    info = json.loads((out / INFO_PATH).read_text())
    eps = pq.read_table(out / EPISODES_PATH.format(chunk_index=0, file_index=0)).to_pydict()
    frames, state, action, audio = [], [], [], []
    for name in eps["htouch/episode"]:
        ep = ds.episode(name)
        rows = _episode_rows(ep, report.fps, report.audio_rate_hz)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--venv", type=Path, default=Path(tempfile.gettempdir()) / "htouch-lerobot-venv")
    ap.add_argument("--lerobot", default=LEROBOT_VERSION, help="lerobot version to install in the side venv")
    ap.add_argument("--dataset", type=Path, help="export this htouch dataset (default: a new synthetic one)")
    ap.add_argument("--episodes", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--vcodec", default=None, help="video encoder of the export (default: htouch's default)")
    ap.add_argument("--write-doc", action="store_true", help=f"put the figures into {DOC.relative_to(ROOT)}")
    args = ap.parse_args()

    python = ensure_venv(args.venv, args.lerobot)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)  # "frames/s on one core"

    from htouch.dataset.store import Dataset
    from htouch.interop.lerobot import export_lerobot

    work = Path(tempfile.mkdtemp(prefix="htouch-verify-lerobot-"))
    try:
        if args.dataset is not None:
            ds = Dataset(args.dataset)
            cam, mic = ds.rig.camera, ds.rig.audio
            source = (f"`{args.dataset}` ({len(ds.episode_indices())} episodes of task {ds.task}, rig "
                      f"{ds.rig.name}: {cam.width}x{cam.height} at {cam.rate_hz:g} fps, {mic.channels} channels at "
                      f"{mic.rate_hz:g} Hz)")
        else:
            ds = make_dataset(work / "ds", args.episodes, args.seconds)
            source = (f"synthetic: {args.episodes} episodes x {args.seconds:g} s, 128x96 at 30 fps, 4 channels at "
                      "32 kHz, frames dropped at 2 s and 5 s, split 0.34")
        out = work / "lerobot"
        t = time.perf_counter()
        report = export_lerobot(ds, out, vcodec=args.vcodec)
        wall = time.perf_counter() - t
        ref = work / "ref"
        ref.mkdir()
        expected_rows(ds, out, ref, report)
        checker = work / "check_lerobot.py"
        checker.write_text(CHECKER)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(work / "hf"),
               "HF_LEROBOT_HOME": str(work / "hf" / "lerobot"), "PYTHONPATH": "", "WANDB_MODE": "disabled"}
        proc = subprocess.run([str(python), str(checker), str(out), str(ref)], env=env, capture_output=True,
                              text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-6000:])
            hint = (" (torchcodec found no FFmpeg libraries: see this script's docstring)"
                    if "libtorchcodec" in proc.stderr else "")
            raise SystemExit(f"LeRobot could not load the export (above){hint}")
        result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
        src_bytes = htouch_bytes(ds)
        audio_mb = sum(p.stat().st_size for p in (out / "htouch").rglob("*.npz")) / 1e6
        data_mb = sum(p.stat().st_size for p in (out / "data").rglob("*.parquet")) / 1e6
        video_mb = sum(p.stat().st_size for p in (out / "videos").rglob("*.mp4")) / 1e6
        lines = [
            f"- source: {source}",
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
        text = "\n".join(lines)
        print(text)
        if args.write_doc:
            command = "    .venv/bin/python tools/verify_lerobot_export.py --write-doc" + (
                f" --dataset {args.dataset}" if args.dataset else "")
            write_doc("synthetic" if args.dataset is None else args.dataset.name,
                      f"Measured {time.strftime('%Y-%m-%d')} with:\n\n{command}\n\n{text}\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _splits(out: Path) -> dict:
    return json.loads((out / "meta" / "info.json").read_text())["splits"]


def write_doc(name: str, section: str) -> None:
    doc = DOC.read_text() if DOC.exists() else "# Interoperability\n"
    BEGIN, END = MARKER.format(name=name, end="begin"), MARKER.format(name=name, end="end")
    block = f"{BEGIN}\n{section}{END}"
    if BEGIN in doc and END in doc:
        doc = doc[:doc.index(BEGIN)] + block + doc[doc.index(END) + len(END):]
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
    DOC.write_text(doc)
    print(f"wrote {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
