"""What the recording loop knows of each streaming device (camera, microphones): a reader thread that drains
it, and the meters the live panel shows (measured rate, audio levels).

The readers hand every item to the loop's routing (into the episode being written, and to the action
source); their `idle` / `last_ts` bookkeeping lets the control thread judge stalls and, on a simulated
clock, wait for them instead of outrunning them.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from htouch.collector.devices import DeviceError
from htouch.dataset.schema import NS

READ_TIMEOUT_S = 0.02  # a reader's longest wait for one frame or block (wall time)
EXACT_READ_TIMEOUT_S = 0.002  # the same on a simulated clock when the source must see every item up to a tick


class RateMeter:
    """The measured rate of a stream over the last few seconds of its own time stamps."""

    def __init__(self, window_s: float = 2.0):
        self._window_ns = int(window_s * NS)
        self._items: collections.deque[tuple[int, int]] = collections.deque()
        self._lock = threading.Lock()

    def add(self, t_ns: int, units: int = 1) -> None:
        with self._lock:
            self._items.append((t_ns, units))
            while self._items and self._items[0][0] < t_ns - self._window_ns:
                self._items.popleft()

    def rate(self) -> float:
        """Units per second between the first and the last item in the window (0 with fewer than 2)."""
        with self._lock:
            if len(self._items) < 2:
                return 0.0
            span = self._items[-1][0] - self._items[0][0]
            units = sum(u for _, u in self._items) - self._items[-1][1]
        return units * NS / span if span > 0 else 0.0


@dataclass
class AudioLevels:
    """Per-channel level of the latest block (dBFS) and when each channel last clipped."""

    rms_dbfs: list[float] = field(default_factory=list)
    peak_dbfs: list[float] = field(default_factory=list)
    clipped_at_ns: list[int | None] = field(default_factory=list)


def dbfs(x: np.ndarray) -> np.ndarray:
    """Amplitudes of int16 samples in dB relative to full scale (floored at 1e-9, so silence is about -210)."""
    return 20 * np.log10(np.maximum(x, 1e-9) / 32768.0)


def measure_levels(pcm: np.ndarray, t_ns: int, previous: AudioLevels) -> AudioLevels:
    """The levels of one block (samples x channels, int16 values), keeping each channel's last clip time
    from `previous` unless this block clips it again."""
    x = pcm.astype(np.float32)
    clipped = (pcm.max(axis=0) >= 32767) | (pcm.min(axis=0) <= -32768)
    before = previous.clipped_at_ns if len(previous.clipped_at_ns) == pcm.shape[1] else [None] * pcm.shape[1]
    return AudioLevels(rms_dbfs=dbfs(np.sqrt(np.mean(x * x, axis=0))).tolist(),
                       peak_dbfs=dbfs(np.max(np.abs(x), axis=0)).tolist(),
                       clipped_at_ns=[t_ns if c else p for c, p in zip(clipped, before, strict=True)])


class StreamReader(threading.Thread):
    """Drains one device (camera or microphones) in its own thread and hands each item to `handle`.

    `idle` says the last read came back empty (the device had nothing queued while it waited), and
    `idle_wall_ns` when that read ended (host monotonic clock); `last_ts` is the time stamp of the newest
    item handled. The control thread uses them to judge stalls and, on a simulated clock, to wait for the
    reader instead of outrunning it.
    """

    def __init__(self, name: str, read: Callable[[float], Any], handle: Callable[[Any], None],
                 timeout_s: float = READ_TIMEOUT_S):
        super().__init__(name=f"reader-{name}", daemon=True)
        self.stream = name
        self._read = read
        self._handle = handle
        self._timeout_s = timeout_s
        self._quit = threading.Event()
        self.cond = threading.Condition()
        self.idle = False
        self.idle_wall_ns = 0
        self.empty_reads = 0
        self.items = 0
        self.last_ts: int | None = None
        self.device_error: str | None = None  # the device's last read error (shown, recorded by the loop)
        self.device_errors = 0
        self.fatal: BaseException | None = None  # a bug or a writer failure: ends the session

    def run(self) -> None:
        while not self._quit.is_set():
            try:
                item = self._read(self._timeout_s)
            except DeviceError as e:
                with self.cond:
                    self.device_error, self.device_errors = str(e), self.device_errors + 1
                    self.idle, self.idle_wall_ns = True, time.monotonic_ns()
                    self.empty_reads += 1
                    self.cond.notify_all()
                self._quit.wait(self._timeout_s)
                continue
            except BaseException as e:  # noqa: BLE001 - reported by the control thread
                self.fatal = e
                return
            if item is None:
                with self.cond:
                    self.idle = True
                    self.idle_wall_ns = time.monotonic_ns()
                    self.empty_reads += 1
                    self.cond.notify_all()
                continue
            try:
                self._handle(item)
            except BaseException as e:  # noqa: BLE001
                self.fatal = e
                return
            with self.cond:
                self.idle = False
                self.device_error = None
                self.items += 1
                self.last_ts = int(item.timestamp_ns)
                self.cond.notify_all()

    def idle_since(self, wall_ns: int) -> bool:
        """The device had nothing more to give after wall_ns (a read that ended later came back empty)."""
        return self.idle and self.idle_wall_ns > wall_ns

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: predicate() or self.fatal is not None or not self.is_alive(),
                                      timeout=timeout_s)

    def drained(self, timeout_s: float) -> bool:
        """Wait until everything the device had queued when called has been handled: two empty reads after
        the call (the first may have found the queue empty just before the call)."""
        with self.cond:
            empties = self.empty_reads
        return self.wait_for(lambda: self.empty_reads >= empties + 2, timeout_s)

    def drained_past(self, t_ns: int, timeout_s: float) -> bool:
        """Wait until everything this device captured before t_ns has been handled: an item at or after
        t_ns came through, or a read after the call came back empty (nothing more is queued)."""
        with self.cond:
            empties = self.empty_reads
        return self.wait_for(lambda: (self.last_ts is not None and self.last_ts >= t_ns)
                             or self.empty_reads > empties, timeout_s)

    def stop(self) -> None:
        self._quit.set()
