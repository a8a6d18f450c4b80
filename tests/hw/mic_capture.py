"""Capture through SoundDeviceMicrophones in a fresh process and save what read() returned.

PortAudio reads the ALSA configuration and finds the JACK server when it initializes (when sounddevice is
imported), so each audio setup gets its own process with its environment (HOME with an .asoundrc,
JACK_DEFAULT_SERVER). Usage: python -m tests.hw.mic_capture '<json options>' out.npz
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from htouch.collector.config import MicrophoneConfig
from htouch.collector.hardware.microphones import SoundDeviceMicrophones, probe


class StallingMicrophones(SoundDeviceMicrophones):
    """Test-only: the callback sleeps once, as on an overloaded machine, so PortAudio really loses input."""

    def __init__(self, config: MicrophoneConfig, stall_at: int, stall_s: float):
        super().__init__(config)
        self.stall_at, self.stall_s, self.calls = stall_at, stall_s, 0

    def _callback(self, indata, frames, time_info, status) -> None:
        super()._callback(indata, frames, time_info, status)
        self.calls += 1
        if self.calls == self.stall_at:
            time.sleep(self.stall_s)


def capture(options: dict) -> dict:
    config = MicrophoneConfig(**options["config"])
    probes = [probe(MicrophoneConfig(**{**options["config"], "device": d})) for d in options.get("probe", [])]
    if options.get("stall_at"):
        mics = StallingMicrophones(config, options["stall_at"], options["stall_s"])
    else:
        mics = SoundDeviceMicrophones(config)
    blocks, returned = [], []
    start_ns = time.monotonic_ns()
    mics.start()
    try:
        while len(blocks) < options["blocks"]:
            block = mics.read(timeout_s=2.0)
            if block is None:
                break
            blocks.append(block)
            returned.append(time.monotonic_ns())
            if len(blocks) == options.get("pause_after"):
                time.sleep(options["pause_s"])  # the consumer stalls: the queue fills up
    finally:
        mics.stop()
    return dict(
        t=np.array([b.timestamp_ns for b in blocks], np.int64),
        n=np.array([len(b.pcm) for b in blocks], np.int64),
        overflow=np.array([b.overflow for b in blocks], bool),
        pcm=np.concatenate([b.pcm for b in blocks]) if blocks else np.zeros((0, config.channels), np.int16),
        returned_ns=np.array(returned, np.int64),
        start_ns=np.int64(start_ns),
        info=json.dumps(dict(overflows=mics.overflows, dropped_blocks=mics.dropped_blocks,
                             description=mics.description, probes=probes, error=mics.error)),
    )


if __name__ == "__main__":
    np.savez(sys.argv[2], **capture(json.loads(sys.argv[1])))
