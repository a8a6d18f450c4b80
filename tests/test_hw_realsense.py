"""RealSenseCamera through the real pyrealsense2 pipeline, fed by a recording made with a software device."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest

from htouch.collector.config import CameraConfig, RigConfig
from htouch.collector.devices import Camera, DeviceError
from htouch.collector.hardware import realsense
from htouch.collector.hardware.clocksync import OffsetFilter
from htouch.collector.hardware.realsense import RealSenseCamera
from tests.hw.realsense_recording import frame_pixels, write_recording

# Frames 10, 11 and 12 never reach the recording: the camera dropped them.
NUMBERS = list(range(10)) + list(range(13, 23))
PERIOD_NS = 1e9 / 30


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    path = tmp_path_factory.mktemp("realsense") / "color.db3"
    stamps = write_recording(path, NUMBERS, width=64, height=48, fps=30)
    return path, stamps


def play(camera: RealSenseCamera, limit: int = 100) -> list[tuple[object, int]]:
    """Every frame until the end of the recording, with the loop clock when read() returned."""
    out = []
    camera.start()
    try:
        while len(out) < limit:
            frame = camera.read(timeout_s=0.5 if out else 3.0)  # frames are due every 33 ms
            if frame is None:
                break
            out.append((frame, time.monotonic_ns()))
    finally:
        camera.stop()
    return out


def test_playback_gives_every_frame_with_pixels_numbers_and_paced_time_stamps(recording):
    path, stamps = recording
    config = CameraConfig(file=str(path), width=64, height=48, fps=30, latency_ms=4.0)
    camera = RealSenseCamera(config)
    assert isinstance(camera, Camera)
    assert camera.spec == RigConfig(camera=config).stream_specs().camera
    t_start = time.monotonic_ns()
    frames = play(camera)

    assert [f.frame_number for f, _ in frames] == NUMBERS  # the gap is intact, nothing else lost
    for frame, _ in frames:
        assert frame.rgb.shape == (48, 64, 3) and frame.rgb.dtype == np.uint8
        np.testing.assert_array_equal(frame.rgb, frame_pixels(frame.frame_number, 64, 48))
    assert camera.timestamp_domain == "hardware_clock"

    # The hardware clock's spacing survives the mapping exactly (33.3 ms, four periods over the gap).
    t = np.array([f.timestamp_ns for f, _ in frames], dtype=np.int64)
    np.testing.assert_allclose(np.diff(t), np.diff(stamps) * 1e6, atol=2)
    assert round((t[10] - t[9]) / PERIOD_NS) == 4
    # On the monotonic clock: each frame is handed out once it is due, never stamped in the future;
    # the configured latency is subtracted from the time stamps.
    returned = np.array([r for _, r in frames])
    assert t_start - 4_000_000 <= t[0] <= returned[0]
    lag = returned - t
    assert (lag >= 4_000_000).all(), lag.min()
    assert np.median(lag) < 100e6, lag  # paced: a frame is released when due, not in a burst at the end


def test_end_of_recording_is_a_stall_and_restart_plays_again(recording):
    path, _ = recording
    camera = RealSenseCamera(CameraConfig(file=str(path), width=64, height=48, fps=30))
    assert len(play(camera)) == len(NUMBERS)
    camera.start()
    try:
        first = camera.read(timeout_s=2.0)
        assert first is not None and first.frame_number == 0
        # The next frame is due 33 ms later: a shorter timeout is a stall, not an error.
        assert camera.read(timeout_s=0.001) is None
        assert camera.read(timeout_s=2.0).frame_number == 1
        while camera.read(timeout_s=0.5) is not None:
            pass
        t0 = time.monotonic()
        assert camera.read(timeout_s=0.3) is None  # ended: a stall, waited out like a live one
        assert 0.25 < time.monotonic() - t0 < 2.0
        assert camera.error is None
    finally:
        camera.stop()
        camera.stop()  # idempotent


def test_missing_file_wrong_resolution_and_non_recording_are_one_line_errors(recording, tmp_path):
    path, _ = recording
    missing = tmp_path / "nope.db3"
    with pytest.raises(DeviceError, match=f"camera recording {missing} does not exist"):
        RealSenseCamera(CameraConfig(file=str(missing))).start()
    with pytest.raises(DeviceError) as err:
        RealSenseCamera(CameraConfig(file=str(path), width=640, height=480, fps=30)).start()
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert "640x480 rgb8 at 30 Hz" in message and "it has 64x48 rgb8 at 30 Hz" in message
    empty = tmp_path / "empty.db3"
    write_recording(empty, [])
    with pytest.raises(DeviceError, match=f"camera recording {empty} has no colour stream$"):
        RealSenseCamera(CameraConfig(file=str(empty), width=64, height=48)).start()
    text = tmp_path / "notes.db3"
    text.write_text("not a bag\n")
    with pytest.raises(DeviceError, match="not a readable RealSense recording"):
        RealSenseCamera(CameraConfig(file=str(text))).start()


def test_probe_reports_missing_camera_and_checks_recordings(recording, tmp_path):
    path, _ = recording
    assert realsense.probe(CameraConfig()) == (False, "no RealSense camera found (is it plugged in?)")
    assert realsense.probe(CameraConfig(serial="123456")) == (False, realsense.NO_CAMERA)
    with pytest.raises(DeviceError, match="no RealSense camera found"):
        RealSenseCamera(CameraConfig()).start()
    ok, message = realsense.probe(CameraConfig(file=str(path), width=64, height=48, fps=30))
    assert ok and message == f"camera recording {path}: 64x48 rgb8 at 30 Hz"
    ok, message = realsense.probe(CameraConfig(file=str(path), width=64, height=48, fps=15))
    assert not ok and "64x48 rgb8 at 15 Hz" in message
    ok, message = realsense.probe(CameraConfig(file=str(tmp_path / "x.db3")))
    assert not ok and "does not exist" in message


def test_without_pyrealsense2_the_error_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyrealsense2", None)  # import fails as if not installed
    with pytest.raises(DeviceError, match=r"pip install 'htouch\[hardware\]'"):
        RealSenseCamera(CameraConfig())
    ok, message = realsense.probe(CameraConfig())
    assert not ok and "htouch[hardware]" in message


def test_minimum_filter_maps_a_drifting_jittery_camera_clock_within_a_fraction_of_a_millisecond():
    """Live-camera mapping: arrival = capture + 2 ms transfer + exponential jitter (mean 3 ms, bursts);
    the camera clock runs 80 ppm fast and starts at an arbitrary value."""
    rng = np.random.default_rng(0)
    n = 30 * 60  # one minute at 30 Hz
    capture = 10**12 + np.arange(n) * int(PERIOD_NS)  # host time of each exposure
    device = 5_000_000_000 + ((capture - capture[0]) * (1 + 80e-6)).astype(np.int64)
    arrival = capture + 2_000_000 + rng.exponential(3e6, n).astype(np.int64)
    f = OffsetFilter(window=90, statistic="min")
    mapped = np.array([d + f.update(a, d) for a, d in zip(arrival, device, strict=True)])
    error = mapped[90:] - (capture[90:] + 2_000_000)  # after the first window; 2 ms = latency_ms
    assert np.abs(error).max() < 0.5e6, np.abs(error).max()
    # A camera clock that jumps (restart, wrap-around) starts the window over instead of holding on.
    f.update(arrival[-1] + 10**9, 0)
    assert f.resets == 1 and abs(f.estimate_ns - (arrival[-1] + 10**9)) == 0
