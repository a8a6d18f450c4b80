"""Export an htouch dataset as a Diffusion Policy / ManiWAV replay buffer: one `.zarr.zip` that DP's `ReplayBuffer`
(diffusion_policy/common/replay_buffer.py) and ManiWAV's `UmiManiWAVDataset` open with `zarr.ZipStore(path, 'r')`.

    OUT.zarr.zip  (a Zarr format-2 group in a ZIP, entries stored uncompressed as zarr 2's ZipStore writes them)
      data/camera0_rgb                 uint8 (T, H, W, 3), one JPEG chunk per frame (codec id imagecodecs_jpeg,
                                       configured with only the keys DP's own Jpeg codec class accepts)
      data/robot0_eef_pos              float32 (T, 3)   m, robot base frame
      data/robot0_eef_rot_axis_angle   float32 (T, 3)   rad, rotation vector of the end-effector orientation
      data/robot0_gripper_width        float32 (T, 1)   m
      data/robot0_joint_pos            float32 (T, n_joints) htouch's state/joints (rad for an arm's joints)
      data/mic_0 .. mic_{C-1}          float32 (T, samples per frame) the audio window (t_k - 1/fps, t_k] of each
                                       microphone, normalised, at 48 kHz (ManiWAV's rate: 1600 samples a frame at
                                       30 fps), as ManiWAV keeps one array per microphone
      data/action                      float32 (T, 7)   htouch's command: dx dy dz (m) and rotation vector
                                       rx ry rz (rad) for one control step, gripper opening 0..1
      data/timestamp                   float64 (T,)     t_k on the recording's clock, s
      data/frame_repeated              bool (T,)        the row's own frame was dropped: it repeats the previous one
      meta/episode_ends                int64 (E,)       end (exclusive) of each episode's rows
      attrs["htouch"]                  the export report, the episodes (names, labels, split), the rig

Rows are the frame grid of `htouch.interop.common.frame_grid` (the same rows as the LeRobot export). ManiWAV reads
`action` as absolute poses (pos, axis-angle, gripper) when the array exists and builds that from robot0_* when it
does not; htouch records commands, so `action` holds the command as recorded: for ManiWAV's pose actions, delete
`data/action` after loading (`del replay_buffer.data['action']` before sampling) and its sampler derives them.
"""

from __future__ import annotations

import os
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import imagecodecs.numcodecs
import numcodecs
import numpy as np
import zarr
from scipy.spatial.transform import Rotation

from htouch.dataset.store import Dataset
from htouch.errors import HtouchError
from htouch.interop.common import (
    ExportReport,
    audio_rate_for,
    check_exportable,
    check_uniform,
    episode_rows,
    export_fps,
    frame_grid,
    grid_frames,
    staged_output,
)

FRAME_BATCH = 32
MANIWAV_AUDIO_RATE = 48000  # ManiWAV resamples mic_* from 48 kHz (umi_maniwav_dataset.py): its audio rate
# The constructor arguments of Diffusion Policy's Jpeg codec (diffusion_policy/codecs/imagecodecs_numcodecs.py):
# its `from_config` passes the stored configuration to it, so no other key may be stored.
DP_JPEG_KEYS = ("id", "level", "tables", "header", "bitspersample", "colorspace_data", "colorspace_jpeg",
                "subsampling", "optimize", "smoothing")


class DPJpeg(imagecodecs.numcodecs.Jpeg):
    """imagecodecs' JPEG codec, stored with the configuration Diffusion Policy's own Jpeg class accepts."""

    def get_config(self) -> dict:
        config = super().get_config()
        return {k: config[k] for k in DP_JPEG_KEYS if k in config}


def _array(group: zarr.Group, name: str, shape: tuple[int, ...], dtype: str, chunk_rows: int = 4096) -> zarr.Array:
    """A low-dimensional array chunked along time only (as DP's ReplayBuffer assumes), Blosc-compressed, every chunk
    written (an all-zero chunk too, so a missing chunk file is always damage)."""
    return group.create_array(name, shape=shape, dtype=dtype, chunks=(max(1, min(shape[0], chunk_rows)),) + shape[1:],
                              compressors=numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.SHUFFLE),
                              config={"write_empty_chunks": True})


def _zip_dir(src: Path, dst: Path) -> None:
    """Every file below `src` as an uncompressed ZIP entry named by its relative path (what zarr's ZipStore reads)."""
    with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
        for path in sorted(p for p in src.rglob("*") if p.is_file()):
            z.write(path, path.relative_to(src).as_posix())


def export_dp(ds: Dataset, out: str | os.PathLike[str], *, quality: int = 90,
              progress: Callable[[], None] | None = None) -> ExportReport:
    """Write `ds` as a Diffusion Policy / ManiWAV replay buffer at `out` (a new `.zarr.zip` file, complete or
    absent). quality: JPEG quality of the frames. progress() is called after each episode. Raises DatasetError if
    the dataset fails validation, HtouchError for an unusable OUT."""
    start = time.perf_counter()
    out = Path(out)
    if not out.name.endswith(".zarr.zip"):
        raise HtouchError(f"{out}: a replay buffer is a .zarr.zip file; name it NAME.zarr.zip")
    check_exportable(ds)
    fps = export_fps(ds)
    # ManiWAV's rate when a frame holds a whole number of its samples; else the LeRobot export's rule (and a note).
    if MANIWAV_AUDIO_RATE % fps == 0:
        audio_rate = MANIWAV_AUDIO_RATE
    else:
        audio_rate = audio_rate_for(ds.streams.audio.rate_hz, fps)
    split = ds.metadata.get("split") if isinstance(ds.metadata.get("split"), dict) else {}
    split_of = {i: name for name in ("train", "val") for i in split.get(name, [])}
    episodes = [ds.episode(i) for i in ds.episode_indices()]
    for ep in episodes:
        check_uniform(ep, ds)
    total = sum(len(frame_grid(ep, fps)) for ep in episodes)  # time stamps only: cheap
    _, height, width, _ = episodes[0].array("camera/rgb").shape
    channels = ds.streams.audio.channels
    m = audio_rate // fps
    report = ExportReport(format="dp", out=str(out), fps=fps, video_codec=f"jpeg q{quality}",
                          audio_rate_hz=audio_rate, audio_samples_per_frame=m)
    if audio_rate != MANIWAV_AUDIO_RATE:
        report.notes.append(f"mic_* at {audio_rate} Hz: {fps} fps does not divide ManiWAV's 48 kHz into whole frames; "
                            "ManiWAV's dataset assumes 48 kHz")

    with staged_output(out, directory=False) as tmp_zip, \
            tempfile.TemporaryDirectory(prefix=f".{out.name}.build-", dir=out.parent) as build:
        root = zarr.open_group(zarr.storage.LocalStore(build), mode="w", zarr_format=2)
        data, meta = root.create_group("data"), root.create_group("meta")
        frames = data.create_array("camera0_rgb", shape=(total, height, width, 3), dtype="uint8",
                                   chunks=(1, height, width, 3), compressors=DPJpeg(level=quality),
                                   config={"write_empty_chunks": True})
        shapes = {"robot0_eef_pos": (3,), "robot0_eef_rot_axis_angle": (3,), "robot0_gripper_width": (1,),
                  "robot0_joint_pos": (ds.streams.state.n_joints,), "action": (7,)}
        arrays = {k: _array(data, k, (total, *shape), "float32") for k, shape in shapes.items()}
        arrays["timestamp"] = _array(data, "timestamp", (total,), "float64")
        arrays["frame_repeated"] = _array(data, "frame_repeated", (total,), "bool")
        for c in range(channels):  # about 1 MB a chunk
            arrays[f"mic_{c}"] = _array(data, f"mic_{c}", (total, m), "float32", chunk_rows=max(1, 2 ** 18 // m))
        ends, at = [], 0
        for ep in episodes:
            rows = episode_rows(ep, fps, audio_rate)
            g, n = rows.grid, len(rows.grid)
            for b, images in grid_frames(ep, g, FRAME_BATCH):
                frames[at + b: at + b + len(images)] = images
            quat = rows.state[:, 3:7].astype(np.float64)
            values = {"robot0_eef_pos": rows.state[:, :3],
                      "robot0_eef_rot_axis_angle": Rotation.from_quat(quat).as_rotvec().astype(np.float32),
                      "robot0_gripper_width": rows.state[:, -1:], "robot0_joint_pos": rows.state[:, 7:-1],
                      "action": rows.action, "timestamp": g.times_ns / 1e9, "frame_repeated": g.repeated,
                      **{f"mic_{c}": rows.audio[:, :, c] for c in range(channels)}}
            for key, value in values.items():
                arrays[key][at:at + n] = value
            at += n
            ends.append(at)
            report.add_episode(ep, g, split=split_of.get(ep.index, ""))
            if progress is not None:
                progress()
        episode_ends = _array(meta, "episode_ends", (len(ends),), "int64")
        episode_ends[:] = np.array(ends, dtype=np.int64)
        root.attrs["htouch"] = {
            "format": "htouch-dp-export", "version": 1, "source": str(ds.root.resolve()), "task": ds.task,
            "fps": fps, "rig": ds.streams.to_dict(), "episodes": report.episode_map,
            "audio": {"rate_hz": audio_rate, "samples_per_frame": m, "window": "(t_k - 1/fps, t_k]",
                      "normalised": "(x - center) / scale of rig.audio",
                      "channels": list(ds.streams.audio.channel_names)},
            "action": "htouch's action/delta_ee (dx dy dz in m, rotation vector rx ry rz in rad, per control step, "
                      "base frame) and action/gripper (opening 0..1)",
        }
        _zip_dir(Path(build), tmp_zip)
        report.seconds = time.perf_counter() - start
        report.bytes_out = tmp_zip.stat().st_size
    return report
