"""Contact microphones through a PortAudio input (sounddevice): 4 channels of int16 at 32 kHz by default.

The stream callback runs in PortAudio's audio thread, so it only copies the block and its time stamps
into a bounded queue; it never waits. A full queue (the loop fell behind) drops the block, counts it and
flags the next queued block as overflowed, exactly like input the device itself lost
(`status.input_overflow`). The loop turns flagged blocks into audio_overflow events.

Time stamps: PortAudio gives the capture time of a block's first sample (`inputBufferAdcTime`) on the
stream's clock, which is not always the host monotonic clock (JACK's starts at zero). The offset
`host now - stream currentTime`, read in every callback and median-filtered, maps it onto the loop clock.
A delay-locked loop over the sample count then follows that measured time (`BlockClock`), so
scheduling jitter does not leak into the stamps, the device's real sample rate (drift) still shows, and
lost input shows as a jump forward.
"""

from __future__ import annotations

import queue
from dataclasses import dataclass
from typing import Any

import numpy as np

from htouch.collector.config import MicrophoneConfig, RigConfig
from htouch.collector.devices import AudioBlock, Clock, DeviceError, MonotonicClock
from htouch.collector.hardware import import_device_library
from htouch.collector.hardware.clocksync import OffsetFilter


def import_sounddevice() -> Any:
    """The sounddevice module; DeviceError (one line, what to install) if it or PortAudio is missing."""
    return import_device_library("sounddevice", "sounddevice", native="libportaudio2 (PortAudio)")


@dataclass
class _Captured:
    pcm: np.ndarray  # (n, C) int16
    adc_time: float  # stream clock, s: capture of the first sample
    current_time: float  # stream clock, s: when the callback ran
    host_ns: int  # loop clock, read in the callback next to current_time
    overflow: bool  # input was lost before this block (by the device or by this queue)
    dropped_frames: int  # samples this backend discarded right before this block (queue full)


class BlockClock:
    """First-sample time of each block on the loop clock, from PortAudio's stream times.

    measured = inputBufferAdcTime + (host now - currentTime), the offset median-filtered over the last
    `offset_window` callbacks (a short window: under JACK the stream clock is the sample clock, so the
    offset drifts with the device). A delay-locked loop (bandwidth `bandwidth_hz`) then follows the
    measured times with the sample count: it learns the device's real sample period, so scheduling
    jitter is filtered out while real clock drift stays in the stamps. Each block's correction is
    limited (`max_error_ns`), so a late callback barely moves the stamps and they always increase. Input
    lost by the device (overflow), or a measured time more than `jump_ns` ahead, re-anchors on the
    measurement: the gap stays visible. The learnt period stays within `max_rate_error` of nominal.
    """

    def __init__(self, rate_hz: float, offset_window: int = 10, bandwidth_hz: float = 1.0,
                 max_error_ns: float = 2e6, jump_ns: float = 20e6, max_rate_error: float = 0.1):
        self.nominal_ns = 1e9 / rate_hz  # per sample
        self.ns_per_sample = self.nominal_ns  # learnt
        self.bandwidth_hz, self.max_error_ns, self.jump_ns = bandwidth_hz, max_error_ns, jump_ns
        self.max_rate_error = max_rate_error
        self.offsets = OffsetFilter(offset_window, "median")
        self._next_ns: float | None = None  # predicted time of the sample after the last block

    def measure(self, host_ns: int, current_s: float, adc_s: float, n: int) -> float:
        """The block's first-sample time on the loop clock, before smoothing."""
        if current_s <= 0:  # the host API gives no stream times: the block ended about now
            return host_ns - n * self.nominal_ns
        return adc_s * 1e9 + self.offsets.update(host_ns, round(current_s * 1e9))

    def stamp(self, measured_ns: float, n: int, dropped: int = 0, overflow: bool = False) -> int:
        if self._next_ns is None:
            t = float(measured_ns)
        else:
            predicted = self._next_ns + dropped * self.ns_per_sample
            error = measured_ns - predicted
            if error > self.jump_ns or (overflow and error > 0):
                t = float(measured_ns)
            else:
                error = min(max(error, -self.max_error_ns), self.max_error_ns)
                omega = 2 * np.pi * self.bandwidth_hz * n * self.nominal_ns / 1e9
                t = predicted + np.sqrt(2) * omega * error
                lo, hi = 1 - self.max_rate_error, 1 + self.max_rate_error
                self.ns_per_sample = min(max(self.ns_per_sample + omega**2 * error / n, lo * self.nominal_ns),
                                         hi * self.nominal_ns)
        self._next_ns = t + n * self.ns_per_sample
        return int(round(t))


class SoundDeviceMicrophones:
    """A Microphones (htouch.collector.devices) reading a PortAudio input stream."""

    QUEUE_S = 2.0  # audio held while the loop is busy; past this, blocks are dropped and flagged
    OFFSET_WINDOW_S = 0.1  # the offset median spans this many seconds of callbacks

    def __init__(self, config: MicrophoneConfig, clock: Clock | None = None):
        self.config = config
        self.clock = clock or MonotonicClock()
        self.spec = RigConfig(microphones=config).stream_specs().audio
        self._sd = import_sounddevice()
        self.overflows = 0  # callbacks PortAudio flagged with input_overflow
        self.dropped_blocks = 0  # blocks discarded because read() fell behind
        self.description = ""  # the input start() opened
        self.error: str | None = None  # set if the stream ended without stop() (device gone)
        self._stream: Any = None
        self._reset_capture_state()

    def _reset_capture_state(self) -> None:
        blocks_per_s = self.config.rate_hz / self.config.blocksize
        self._queue: queue.Queue[_Captured] = queue.Queue(maxsize=max(4, int(self.QUEUE_S * blocks_per_s)))
        self._block_clock = BlockClock(self.config.rate_hz,
                                       offset_window=max(5, int(self.OFFSET_WINDOW_S * blocks_per_s)))
        self._pending_drop = 0
        self._pending_overflow = False

    # ------------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        if self._stream is not None:
            return
        sd, c = self._sd, self.config
        index, info = find_input(sd, c.device)
        check_input(sd, index, info, c)
        self._reset_capture_state()
        try:
            stream = sd.InputStream(device=index, channels=c.channels, samplerate=c.rate_hz, dtype="int16",
                                    blocksize=c.blocksize, callback=self._callback,
                                    finished_callback=self._finished)
            self.description, self.error = describe_input(sd, index, info), None
            self._stream = stream
            stream.start()
        except sd.PortAudioError as e:
            self._stream = None
            raise DeviceError(f"audio input {describe_input(sd, index, info)} failed to start: {e}") from None

    def stop(self) -> None:
        """Stops capturing; blocks already captured can still be read."""
        if self._stream is None:
            return
        stream, self._stream = self._stream, None
        try:
            stream.stop()
        finally:
            stream.close()

    # ------------------------------------------------------------------------------- capture

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        """PortAudio's audio thread: copy and queue, never wait."""
        host_ns = self.clock.now_ns()
        lost = bool(status.input_overflow)
        if lost:
            self.overflows += 1
        item = _Captured(indata.copy(), time_info.inputBufferAdcTime, time_info.currentTime, host_ns,
                         lost or self._pending_overflow, self._pending_drop)
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped_blocks += 1
            self._pending_drop += frames
            self._pending_overflow = True
        else:
            self._pending_drop, self._pending_overflow = 0, False

    def _finished(self) -> None:
        if self._stream is not None:  # not stop(): PortAudio ended the stream; reads stall from now on
            self.error = f"audio input {self.description} stopped streaming"

    def read(self, timeout_s: float) -> AudioBlock | None:
        try:
            item = self._queue.get(timeout=max(0.0, timeout_s))
        except queue.Empty:
            return None
        n = len(item.pcm)
        measured = self._block_clock.measure(item.host_ns, item.current_time, item.adc_time, n)
        t = self._block_clock.stamp(measured, n, item.dropped_frames, item.overflow) - self.spec.latency_ns
        return AudioBlock(timestamp_ns=t, pcm=item.pcm, overflow=item.overflow)


# ----------------------------------------------------------------------------------- devices


def describe_input(sd: Any, index: int, info: dict) -> str:
    """A PortAudio input as the user is told about it: index, name, host API, input channels."""
    hostapi = sd.query_hostapis(info["hostapi"])["name"]
    return f"#{index} {info['name']!r} ({hostapi}, {info['max_input_channels']} inputs)"


def find_input(sd: Any, device: str) -> tuple[int, dict]:
    """The PortAudio input named by `device`: an index, a (case-insensitive) part of the name, or the
    default input when empty."""
    devices = list(sd.query_devices())
    inputs = [(i, d) for i, d in enumerate(devices) if d["max_input_channels"] > 0]
    listing = "; ".join(describe_input(sd, i, d) for i, d in inputs) or "none"
    device = device.strip()
    if not device:
        index = sd.default.device[0]
        if index is None or index < 0 or index >= len(devices) or devices[index]["max_input_channels"] <= 0:
            raise DeviceError(f"no default audio input; set [microphones] device to one of: {listing}")
        return index, devices[index]
    if device.isdigit():
        index = int(device)
        if index >= len(devices) or devices[index]["max_input_channels"] <= 0:
            raise DeviceError(f"audio device #{index} is not an input (inputs: {listing})")
        return index, devices[index]
    exact = [(i, d) for i, d in inputs if d["name"] == device]
    matches = exact or [(i, d) for i, d in inputs if device.lower() in d["name"].lower()]
    if not matches:
        raise DeviceError(f"no audio input matching {device!r} (inputs: {listing})")
    if len(matches) > 1:
        names = "; ".join(describe_input(sd, i, d) for i, d in matches)
        raise DeviceError(f"{len(matches)} audio inputs match {device!r} ({names}): use a longer name or the index")
    return matches[0]


def check_input(sd: Any, index: int, info: dict, config: MicrophoneConfig) -> None:
    """DeviceError naming the input unless it takes the configured channels, int16 and rate."""
    if info["max_input_channels"] < config.channels:
        raise DeviceError(f"audio input {describe_input(sd, index, info)} has fewer than the "
                          f"{config.channels} channels [microphones] asks for")
    try:
        sd.check_input_settings(device=index, channels=config.channels, dtype="int16",
                                samplerate=config.rate_hz)
    except sd.PortAudioError as e:
        raise DeviceError(f"audio input {describe_input(sd, index, info)} cannot record {config.channels} "
                          f"channels of int16 at {config.rate_hz} Hz: {e}") from None


def probe(config: MicrophoneConfig) -> tuple[bool, str]:
    """Whether the input the config names exists and records what it asks for. Never raises."""
    try:
        sd = import_sounddevice()
        index, info = find_input(sd, config.device)
        check_input(sd, index, info, config)
        return True, (f"audio input {describe_input(sd, index, info)}: {config.channels} channels of int16 "
                      f"at {config.rate_hz} Hz")
    except DeviceError as e:
        return False, str(e)
    except Exception as e:  # a driver error must not crash the check
        return False, f"audio input probe failed: {type(e).__name__}: {e}"
