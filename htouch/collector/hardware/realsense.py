"""Intel RealSense colour camera through pyrealsense2: a live camera chosen by serial, or a recording.

A read thread waits on the pipeline and keeps the newest frames with their host arrival time. read()
maps the camera's own time stamp (the hardware clock on a D435) onto the loop clock: offset = arrival -
device time, filtered with a sliding-window minimum (arrival delay is never negative, so the smallest
offset is the least-delayed frame), minus the configured latency. Frame numbers are passed through
untouched: a jump means frames were lost (by the camera, USB, or this queue when the loop falls behind),
and the loop turns it into a frame_drop event.

A recording (CameraConfig.file, .db3 or .bag) plays through the same pipeline with every frame delivered
(non-real-time playback); read() releases each frame at its recorded pace on the loop clock, anchored at
the first frame handed out, so time stamps never lie in the future. After the end of the recording every read
is a stall: read() waits out its timeout and returns None.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from htouch.collector.config import CameraConfig, RigConfig
from htouch.collector.devices import Clock, DeviceError, Frame, MonotonicClock
from htouch.collector.hardware import import_device_library
from htouch.collector.hardware.clocksync import OffsetFilter

NO_CAMERA = "no RealSense camera found (is it plugged in?)"


def import_pyrealsense2() -> Any:
    """The pyrealsense2 module; DeviceError (one line, what to install) if it is missing."""
    return import_device_library("pyrealsense2", "pyrealsense2", native="libusb-1.0-0")


@dataclass
class _Raw:
    arrival_ns: int  # loop clock when the read thread got the frame
    number: int
    device_ns: int  # the camera's time stamp
    domain: str
    rgb: np.ndarray


class RealSenseCamera:
    """A Camera (htouch.collector.devices) streaming RGB at config.width x height, config.fps."""

    QUEUE_FRAMES = 8  # frames held while the loop is busy; a live camera drops the oldest past this
    OFFSET_WINDOW_S = 3.0  # the minimum filter follows clock drift over this many seconds
    POLL_MS = 100  # how often the read thread checks for stop / end of recording
    FIRST_FRAME_S = 5.0  # start() waits this long for the first frame

    def __init__(self, config: CameraConfig, clock: Clock | None = None):
        self.config = config
        self.clock = clock or MonotonicClock()
        self.spec = RigConfig(camera=config).stream_specs().camera
        self._rs = import_pyrealsense2()
        self.dropped = 0  # frames discarded because read() fell behind (live camera only)
        self.timestamp_domain = ""  # of the last frame: "hardware_clock" on a D435 with metadata
        self.description = ""  # what start() opened
        self.error: str | None = None  # why streaming stopped, if the driver failed (camera unplugged)
        self._pipe: Any = None
        self._playback: Any = None
        self._thread: threading.Thread | None = None
        self._reset_stream_state()

    def _reset_stream_state(self) -> None:
        self._cond = threading.Condition()
        self._queue: deque[_Raw] = deque()
        self._stopping = False
        self._offsets = self._new_offset_filter()
        self._file_offset_ns: int | None = None

    def _new_offset_filter(self) -> OffsetFilter:
        return OffsetFilter(max(1, int(self.OFFSET_WINDOW_S * self.config.fps)), "min")

    @property
    def is_file(self) -> bool:
        return bool(self.config.file)

    # ------------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        if self._thread is not None:
            return
        rs, c = self._rs, self.config
        self._reset_stream_state()
        cfg = rs.config()
        if self.is_file:
            device = load_recording(rs, c.file)
            where = f"camera recording {c.file}"
            cfg.enable_device_from_file(str(c.file), repeat_playback=False)
        else:
            device = find_camera(rs, c.serial)
            where = describe_camera(rs, device)
            cfg.enable_device(_info(rs, device, "serial_number"))
        check_color_profile(rs, device, c, where)
        cfg.enable_stream(rs.stream.color, c.width, c.height, rs.format.rgb8, c.fps)
        pipe, playback = rs.pipeline(), None
        try:
            resolved = cfg.resolve(rs.pipeline_wrapper(pipe))
            if self.is_file:
                # Before start: real-time playback would skip frames the consumer has not taken yet.
                playback = resolved.get_device().as_playback()
                playback.set_real_time(False)
            pipe.start(cfg)
        except RuntimeError as e:
            raise DeviceError(f"{where} could not start streaming: {e}") from None
        self._pipe, self._playback, self.description, self.error = pipe, playback, where, None
        self._thread = threading.Thread(target=self._run, name="realsense-read", daemon=True)
        self._thread.start()
        self._wait_for_first_frame(where)

    def _wait_for_first_frame(self, where: str) -> None:
        """A camera takes a moment to stream; one that never does is an error now, not stalls later."""
        deadline = time.monotonic() + self.FIRST_FRAME_S
        with self._cond:
            while not self._queue and self._thread.is_alive() and time.monotonic() < deadline:
                self._cond.wait(0.05)
            streaming = bool(self._queue)
        if not streaming:
            error = self.error
            self.stop()
            raise DeviceError(f"{where} sent no frame within {self.FIRST_FRAME_S:g} s"
                              + (f": {error}" if error else ""))

    def stop(self) -> None:
        if self._thread is None:
            return
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=5.0)
        self._thread = None
        try:
            self._pipe.stop()
        except RuntimeError:
            pass  # already stopped (a recording that ended, a camera unplugged)
        self._pipe = self._playback = None

    # ------------------------------------------------------------------------------- reading

    def read(self, timeout_s: float) -> Frame | None:
        deadline = self.clock.now_ns() + int(timeout_s * 1e9)
        with self._cond:
            while not self._queue:  # after the end of a recording, every read is a stall
                remaining = (deadline - self.clock.now_ns()) / 1e9
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
            raw = self._queue[0]
        if self.is_file:
            if self._file_offset_ns is None:
                self._file_offset_ns = self.clock.now_ns() - raw.device_ns
            release = raw.device_ns + self._file_offset_ns
            if release > deadline:
                self.clock.sleep_until(deadline)
                return None
            self.clock.sleep_until(release)
        with self._cond:
            self._queue.popleft()
            self._cond.notify_all()
        return self._stamp(raw)

    def _stamp(self, raw: _Raw) -> Frame:
        if raw.domain != self.timestamp_domain:
            self._offsets = self._new_offset_filter()  # another clock: start over
            self.timestamp_domain = raw.domain
        if self.is_file:
            offset = self._file_offset_ns
        else:
            offset = self._offsets.update(raw.arrival_ns, raw.device_ns)
        t = raw.device_ns + offset - self.spec.latency_ns
        return Frame(timestamp_ns=int(t), frame_number=raw.number, rgb=raw.rgb)

    def _run(self) -> None:
        rs = self._rs
        while not self._stopping:
            try:
                ok, frames = self._pipe.try_wait_for_frames(self.POLL_MS)
                if not ok:
                    if self._playback is not None and \
                            self._playback.current_status() == rs.playback_status.stopped:
                        return  # every frame of the recording was delivered
                    continue
                arrival = self.clock.now_ns()
                color = frames.get_color_frame()
                if not color:
                    continue
                raw = _Raw(arrival, int(color.get_frame_number()), int(round(color.get_timestamp() * 1e6)),
                           str(color.get_frame_timestamp_domain()).rsplit(".", 1)[-1],
                           np.asanyarray(color.get_data()).copy())
            except RuntimeError as e:  # the driver gave up: reads stall, the loop reports it
                self.error = f"{self.description}: {e}"
                return
            with self._cond:
                if self.is_file:  # every frame: wait for the reader
                    while len(self._queue) >= self.QUEUE_FRAMES and not self._stopping:
                        self._cond.wait(0.1)
                elif len(self._queue) >= self.QUEUE_FRAMES:
                    self._queue.popleft()  # the loop fell behind: the frame number gap shows it
                    self.dropped += 1
                self._queue.append(raw)
                self._cond.notify_all()


# ----------------------------------------------------------------------------------- helpers


def _info(rs: Any, device: Any, field: str) -> str:
    key = getattr(rs.camera_info, field)
    return device.get_info(key) if device.supports(key) else ""


def describe_camera(rs: Any, device: Any) -> str:
    """A camera as the user is told about it: model, serial and USB type."""
    name = _info(rs, device, "name").removeprefix("Intel RealSense ") or "RealSense camera"
    usb = _info(rs, device, "usb_type_descriptor")
    return f"RealSense {name} serial {_info(rs, device, 'serial_number')}" + (f" (USB {usb})" if usb else "")


def find_camera(rs: Any, serial: str) -> Any:
    """The connected camera with this serial, or the only one connected if serial is empty."""
    devices = list(rs.context().query_devices())
    if not devices:
        raise DeviceError(NO_CAMERA)
    serials = [_info(rs, d, "serial_number") for d in devices]
    if serial:
        if serial not in serials:
            raise DeviceError(f"RealSense camera serial {serial} not found (connected: {', '.join(serials)})")
        return devices[serials.index(serial)]
    if len(devices) > 1:
        raise DeviceError(f"{len(devices)} RealSense cameras connected ({', '.join(serials)}): "
                          "choose one with [camera] serial")
    return devices[0]


def load_recording(rs: Any, path: str | Path) -> Any:
    """A playback device for a RealSense recording (.db3/.bag); DeviceError if missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise DeviceError(f"camera recording {path} does not exist")
    try:
        return rs.context().load_device(str(path))
    except RuntimeError as e:
        raise DeviceError(f"camera recording {path} is not a readable RealSense recording (.db3/.bag): "
                          f"{e}") from None


def color_profiles(rs: Any, device: Any) -> list[tuple[int, int, str, int]]:
    """(width, height, format, fps) of every colour stream the device or recording offers."""
    found = set()
    for sensor in device.query_sensors():
        for p in sensor.get_stream_profiles():
            if p.stream_type() == rs.stream.color and p.is_video_stream_profile():
                v = p.as_video_stream_profile()
                found.add((v.width(), v.height(), str(p.format()).rsplit(".", 1)[-1], p.fps()))
    return sorted(found, reverse=True)


def check_color_profile(rs: Any, device: Any, config: CameraConfig, where: str) -> None:
    """DeviceError listing what is offered unless the device (`where`, for the message) streams RGB at the
    configured size and rate."""
    want = (config.width, config.height, "rgb8", config.fps)
    offered = color_profiles(rs, device)
    if want in offered:
        return
    if not offered:
        raise DeviceError(f"{where} has no colour stream")
    listing = ", ".join(f"{w}x{h} {f} at {r} Hz" for w, h, f, r in offered[:8])
    more = f" and {len(offered) - 8} more" if len(offered) > 8 else ""
    raise DeviceError(f"{where} has no colour stream {config.width}x{config.height} rgb8 at {config.fps} Hz "
                      f"(it has {listing}{more}); set [camera] width/height/fps to one of these")


def probe(config: CameraConfig) -> tuple[bool, str]:
    """Whether the camera (or recording) the config asks for is there and streams what it asks for.
    Never raises: `htouch rig check` prints the message."""
    try:
        rs = import_pyrealsense2()
        if config.file:
            device = load_recording(rs, config.file)
            where = f"camera recording {config.file}"
        else:
            device = find_camera(rs, config.serial)
            where = describe_camera(rs, device)
        check_color_profile(rs, device, config, where)
        return True, f"{where}: {config.width}x{config.height} rgb8 at {config.fps} Hz"
    except DeviceError as e:
        return False, str(e)
    except Exception as e:  # a driver error must not crash the check
        return False, f"RealSense probe failed: {type(e).__name__}: {e}"
