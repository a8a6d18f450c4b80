"""Write a RealSense recording without a camera: a librealsense software device wrapped by its recorder.

The recording holds frames with chosen pixels, hardware-clock time stamps and frame numbers (skip some to
simulate drops); pyrealsense2 plays it back through the normal pipeline, so the backend's real code path
runs. pyrealsense2 2.59 writes ROS 2 bags (.db3) only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyrealsense2 as rs


def frame_pixels(number: int, width: int, height: int) -> np.ndarray:
    """Pixels that identify a frame: red = number, green = row, blue = column (mod 256)."""
    rgb = np.empty((height, width, 3), np.uint8)
    rgb[..., 0] = number % 256
    rgb[..., 1] = (np.arange(height) % 256)[:, None]
    rgb[..., 2] = (np.arange(width) % 256)[None, :]
    return rgb


def write_recording(path: Path, frame_numbers: list[int], width: int = 64, height: int = 48, fps: int = 30,
                    first_ms: float = 5000.0, pixels=frame_pixels) -> list[float]:
    """Record one colour frame per frame number, time-stamped on the hardware clock at first_ms +
    number * 1000 / fps (so a skipped number leaves a time gap too). Returns the time stamps (ms)."""
    dev = rs.software_device()
    sensor = dev.add_sensor("Color")
    stream = rs.video_stream()
    stream.type, stream.index, stream.uid = rs.stream.color, 0, 0
    stream.width, stream.height, stream.fps, stream.bpp, stream.fmt = width, height, fps, 3, rs.format.rgb8
    intrinsics = rs.intrinsics()
    intrinsics.width, intrinsics.height = width, height
    intrinsics.fx = intrinsics.fy = float(width)
    intrinsics.ppx, intrinsics.ppy = width / 2, height / 2
    stream.intrinsics = intrinsics
    profile = sensor.add_video_stream(stream).as_video_stream_profile()
    recorder = rs.recorder(str(path), dev)
    sensor.open(profile)
    sink = rs.frame_queue(len(frame_numbers) + 1)
    sensor.start(sink)
    stamps = []
    for number in frame_numbers:
        frame = rs.software_video_frame()
        frame.pixels = pixels(number, width, height).tobytes()
        frame.bpp, frame.stride = 3, width * 3
        frame.timestamp = first_ms + number * 1000.0 / fps
        frame.domain = rs.timestamp_domain.hardware_clock
        frame.frame_number = number
        frame.profile = profile
        sensor.on_video_frame(frame)
        stamps.append(frame.timestamp)
    sensor.stop()
    sensor.close()
    del recorder  # closes the file
    return stamps
