"""Measure `htouch import lerobot` and the round trip htouch -> LeRobot v3.0 -> htouch.

    .venv/bin/python tools/bench_lerobot_import.py [--dataset DIR] [--vcodec libsvtav1|libx264] [--write-doc]

1. writes the synthetic dataset tools/verify_lerobot_export.py uses (frame drops planted; or takes --dataset) and
   exports it with `htouch export --format lerobot` (AV1 by default, as LeRobot records);
2. imports the export with `htouch.interop.lerobot_import.import_lerobot`, pinned to one CPU (its writer thread and
   the decoder's threads too): frames/s on one core;
3. compares the result with the original: frames (PSNR of the round trip, which holds the video codec and the rig's
   image codec applied to the decoded frame, and of the video alone), states, actions, audio, events, labels,
   split, and validates it (`htouch validate`, checksums included);
4. prints the figures and, with --write-doc, puts them in docs/interop.md between the markers.

No side environment: the import reads LeRobot's files with pyarrow and PyAV.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from verify_lerobot_export import describe, on_one_core, write_doc  # noqa: E402


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255 ** 2 / mse))


def video_frames(lr: Path, key: str) -> list[np.ndarray]:
    """Every frame of the export's video files, in order (the rows one after another)."""
    import av

    out = []
    for path in sorted((lr / "videos" / key).glob("chunk-*/file-*.mp4")):
        with av.open(str(path)) as c:
            out += [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    return out


def compare(ds, back, lr: Path, fps: int) -> dict:
    """The round trip, episode by episode (the same index on both sides)."""
    import pyarrow.parquet as pq

    from htouch.interop.common import frame_grid
    from htouch.interop.lerobot import CAMERA_KEY, EPISODES_PATH

    eps = pq.read_table(lr / EPISODES_PATH.format(chunk_index=0, file_index=0)).to_pydict()
    video = video_frames(lr, CAMERA_KEY)
    trip, codec = [], []
    exact = {"state": True, "action": True, "audio": True, "events": True, "labels": True}
    for e, name in enumerate(eps["htouch/episode"]):
        a = ds.episode(name)
        b = back.episode(a.index)
        g = frame_grid(a, fps)
        shown = np.flatnonzero(~g.repeated)
        want = a.read("camera/rgb")
        got = b.read("camera/rgb")
        trip += [psnr(x, want[g.frame[k]]) for x, k in zip(got, shown, strict=True)]
        lo = eps["dataset_from_index"][e]
        codec += [psnr(video[lo + k], want[g.frame[k]]) for k in range(len(g))]
        exact["state"] &= bool(np.array_equal(b._state, a._state[g.state].astype(np.float32)))
        exact["action"] &= bool(np.array_equal(b._actions, a._actions[g.action].astype(np.float32)))
        for path in ("audio/pcm", "audio/block_offset", "audio/block_timestamp_ns", "audio/block_overflow"):
            exact["audio"] &= bool(np.array_equal(a.read(path), b.read(path)))
        exact["events"] &= a.events() == b.events()
        exact["labels"] &= (a.success, a.variation) == (b.success, b.variation)
    split = all(ds.metadata.get("split", {}).get(k) == back.metadata.get("split", {}).get(k) for k in ("train", "val"))
    return {"trip": np.array(trip), "codec": np.array(codec), "exact": exact, "split": split}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", type=Path, help="round-trip this htouch dataset (default: a new synthetic one)")
    ap.add_argument("--episodes", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--vcodec", default=None, help="video encoder of the export (default: htouch's, AV1)")
    ap.add_argument("--write-doc", action="store_true", help="put the figures into docs/interop.md")
    args = ap.parse_args()

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from htouch.dataset.store import Dataset
    from htouch.dataset.validate import ERROR, WARNING, validate_dataset
    from htouch.interop.lerobot import export_lerobot
    from htouch.interop.lerobot_import import import_lerobot

    work = Path(tempfile.mkdtemp(prefix="htouch-import-"))
    try:
        ds, dataset_text = describe(args, work)
        exported = export_lerobot(ds, work / "lr", vcodec=args.vcodec)
        report, seconds = on_one_core(import_lerobot, work / "lr", work / "back")
        back = Dataset(work / "back")
        r = compare(ds, back, work / "lr", exported.fps)
        findings = validate_dataset(back).findings
        errors = sum(f.severity == ERROR for f in findings)
        warnings = sorted({f.check for f in findings if f.severity == WARNING})
        trip, codec = r["trip"], r["codec"]
        same = [k for k, v in r["exact"].items() if v]
        differ = [k for k, v in r["exact"].items() if not v]
        cam = ds.streams.camera
        text = "\n".join([
            f"- dataset: {dataset_text}; exported with {exported.video_codec} (crf 30), {exported.rows} rows",
            f"- import speed: {report.rows / seconds:.0f} frames/s on one core ({report.rows} rows, {report.frames} "
            f"frames written, {report.episodes} episodes in {seconds:.1f} s: video decoded with PyAV, frames "
            f"re-encoded with the rig's {cam.codec}{f' q{cam.quality}' if cam.codec == 'jpeg' else ''}, checksums "
            "written)",
            f"- frames, round trip against the recorded frames (PSNR): min {trip.min():.1f} dB, median "
            f"{np.median(trip):.1f} dB, mean {trip.mean():.1f} dB; the video alone: min {codec.min():.1f} dB, "
            f"median {np.median(codec):.1f} dB",
            (f"- equal to the original: {', '.join(same) or 'nothing'} (state and actions as LeRobot holds them, "
             "float32; audio: PCM, block offsets, time stamps and overflow flags from the sidecar)"
             + (f"; differ: {', '.join(differ)}" if differ else "")
             + f"; split {'kept' if r['split'] else 'differs'}"),
            f"- `htouch validate` of the import: {errors} error(s); warnings: {', '.join(warnings) or 'none'}",
            f"- bytes: {report.bytes_in / 1e6:.1f} MB LeRobot dataset -> {report.bytes_out / 1e6:.1f} MB htouch "
            "dataset",
        ])
        print(text)
        if args.write_doc:
            flags = " ".join(f for f in (f"--dataset {args.dataset}" if args.dataset else "",
                                         f"--vcodec {args.vcodec}" if args.vcodec else "") if f)
            command = f"    .venv/bin/python tools/bench_lerobot_import.py --write-doc {flags}".rstrip()
            write_doc("import-lerobot", "synthetic" if args.dataset is None else args.dataset.name,
                      f"Measured {time.strftime('%Y-%m-%d')} with:\n\n{command}\n\n{text}\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
