"""Mapping a device clock onto the loop clock from paired readings.

A device stamps its readings on its own clock (a camera's hardware counter, a sound card's stream
clock); the host sees each reading at some later time. `offset = host time - device time` is the
mapping, but every single pair carries the transport and scheduling delay of that reading. A sliding
window filter removes that jitter and still follows slow drift between the two clocks.
"""

from __future__ import annotations

import statistics
from collections import deque


class OffsetFilter:
    """Offset of the loop clock relative to a device clock, filtered over the last `window` pairs.

    statistic "min": the delay between capture and host arrival is never negative, so the smallest
    offset in the window is the one with the least delay (USB frames, which arrive in bursts).
    statistic "median": robust to outliers both ways (a stream clock read next to the host clock).
    A pair that differs from the estimate by more than `reset_ns` means the device clock jumped
    (restart, wrap-around): the window starts over instead of holding a stale offset.
    """

    def __init__(self, window: int, statistic: str = "median", reset_ns: int = 1_000_000_000):
        if statistic not in ("min", "median"):
            raise ValueError(f"statistic must be 'min' or 'median', not {statistic!r}")
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self.statistic = statistic
        self.reset_ns = reset_ns
        self._values: deque[int] = deque(maxlen=window)
        self.estimate_ns: int | None = None
        self.resets = 0

    def update(self, host_ns: int, device_ns: int) -> int:
        """Add one pair (the same instant on both clocks, up to delay) and return the offset estimate."""
        offset = int(host_ns) - int(device_ns)
        if self.estimate_ns is not None and abs(offset - self.estimate_ns) > self.reset_ns:
            self._values.clear()
            self.resets += 1
        self._values.append(offset)
        if self.statistic == "min":
            self.estimate_ns = min(self._values)
        else:
            self.estimate_ns = int(statistics.median_low(self._values))
        return self.estimate_ns
