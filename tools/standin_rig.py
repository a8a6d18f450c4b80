"""A rig that does not render: stand-in devices at a real rig's rates and sizes, in real time on the host
monotonic clock, for benchmarks of the recording loop (tools/bench_recorder.py, tools/bench_async_policy.py).

Each device delivers the way its real backend does, so the recorder's readers, writer and control loop do
the work they do on the real rig, without a simulator sharing the cores:

- camera (RealSense): streams.camera's size at its rate from a producer thread; the frames are copies of a
  precomputed second of varied images (a smooth scene with sensor noise and a moving object, so JPEG
  costs what it costs on camera images, unlike pure noise). A bounded queue of QUEUE_FRAMES drops the
  oldest frame when the reader falls behind; frame numbers count every frame made, so a gap is a drop.
- microphones (sounddevice): streams.audio's channels at its rate in blocks of `blocksize` samples (the
  backend's default callback, 10 ms at 32 kHz); a bounded queue of QUEUE_S seconds drops blocks when full
  and flags the next one overflowed.
- teleop (Quest): a reading about every 1/72 s from its own thread (oculus_reader's rate), stamped with the
  host clock; the grip is held and the controller moves on a slow circle, with no end button (the episode
  runs to its time limit). Or nobody at the controls (NoOperator), for a policy.
- robot (Panda): integrates the commanded motion; its state is read on demand, stamped then, at the
  control rate.

A producer that wakes late (a busy machine) makes the frames and blocks it missed at once, stamped with
their capture times, as a device's driver delivers what it captured while the host was busy.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from htouch.collector.config import MicrophoneConfig
from htouch.collector.devices import Action, AudioBlock, Frame, MonotonicClock, RobotState, TeleopReading
from htouch.collector.hardware.microphones import SoundDeviceMicrophones
from htouch.collector.hardware.realsense import RealSenseCamera
from htouch.collector.rig import NoOperator, Rig
from htouch.dataset.schema import NS, StreamSpecs

HOME = np.array([0.5, 0.0, 0.3, 0.0, 0.0, 0.0, 1.0])
QUEST_RATE_HZ = 72.0
POOL_FRAMES = 30  # distinct images, one second of video at 30 Hz


class _Worker:
    """A named daemon thread running `_run` until stopped (start and stop are idempotent)."""

    def __init__(self, name: str):
        self.name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"standin-{self.name}")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
            self._thread = None

    def _run(self) -> None:
        raise NotImplementedError


class _Producer(_Worker):
    """A thread that makes item n at t0 + n * period on the monotonic clock into a bounded queue. A full queue
    drops the oldest item (`drop_oldest`, a camera driver) or the new one (an audio callback), counting it
    in `dropped`; `make(n, t_ns, dropped_before)` builds an item."""

    def __init__(self, name: str, period_ns: int, capacity: int, drop_oldest: bool,
                 make: Callable[[int, int, int], Any]):
        super().__init__(name)
        self.period_ns, self.make = period_ns, make
        self.capacity, self.drop_oldest = capacity, drop_oldest
        self.dropped = 0
        self._queue: collections.deque = collections.deque()
        self._cond = threading.Condition()

    def read(self, timeout_s: float) -> Any:
        """The oldest queued item, or None if none came within timeout_s."""
        with self._cond:
            if not self._queue and not self._cond.wait_for(lambda: bool(self._queue), timeout_s):
                return None
            return self._queue.popleft()

    def _run(self) -> None:
        n, t0 = 0, time.monotonic_ns()
        lost = 0  # items dropped since the last one queued
        while not self._stop.is_set():
            due = t0 + n * self.period_ns
            delay = (due - time.monotonic_ns()) / NS
            if delay > 0:
                self._stop.wait(delay)
                continue
            item = self.make(n, due, lost)
            with self._cond:
                if len(self._queue) >= self.capacity:
                    self.dropped += 1
                    if self.drop_oldest:
                        self._queue.popleft()
                    else:
                        lost += 1
                        n += 1
                        continue
                lost = 0
                self._queue.append(item)
                self._cond.notify()
            n += 1


def camera_frames(height: int, width: int, n: int = POOL_FRAMES, seed: int = 0) -> list[np.ndarray]:
    """n varied (height, width, 3) uint8 images: a smooth lit scene, a bright object moving across it and
    a little sensor noise, so that each compresses like a camera image."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    scene = np.stack([90 + 60 * x + 20 * np.sin(6 * y), 80 + 50 * y + 10 * np.cos(9 * x),
                      70 + 40 * (1 - x) * y], axis=-1)
    out = []
    for i in range(n):
        img = scene.copy()
        cx, cy = int(width * (0.2 + 0.6 * i / n)), int(height * (0.5 + 0.2 * np.sin(2 * np.pi * i / n)))
        r = max(height // 10, 1)
        img[max(cy - r, 0):cy + r, max(cx - r, 0):cx + r] = (200, 60, 40)
        img += rng.integers(-4, 5, img.shape[:2], dtype=np.int8)[..., None]
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


class StandInCamera(_Producer):
    def __init__(self, streams: StreamSpecs):
        self.spec = streams.camera
        pool = camera_frames(streams.camera.height, streams.camera.width)
        super().__init__("camera", int(round(NS / streams.camera.rate_hz)), RealSenseCamera.QUEUE_FRAMES, True,
                         lambda n, t, _lost: Frame(t, n, pool[n % len(pool)].copy()))


class StandInMicrophones(_Producer):
    def __init__(self, streams: StreamSpecs, blocksize: int = MicrophoneConfig.blocksize):
        self.spec = streams.audio
        channels = max(streams.audio.channels, 1)
        blocks = 100
        pcm = np.random.default_rng(1).normal(0, 300, (blocks * blocksize, channels)).astype(np.int16)
        period_ns = int(round(blocksize * NS / streams.audio.rate_hz))
        capacity = max(4, int(SoundDeviceMicrophones.QUEUE_S * NS / period_ns))

        def make(n: int, t: int, lost: int) -> AudioBlock:
            k = n % blocks
            return AudioBlock(t, pcm[k * blocksize:(k + 1) * blocksize].copy(), overflow=lost > 0)

        super().__init__("microphones", period_ns, capacity, False, make)


class StandInTeleop(_Worker):
    """The Quest's newest reading, made about QUEST_RATE_HZ times a second by its own thread."""

    def __init__(self, rate_hz: float = QUEST_RATE_HZ):
        super().__init__("teleop")
        self.period_s = 1.0 / rate_hz
        self.readings = 0
        self._reading: TeleopReading | None = None

    def read(self) -> TeleopReading | None:
        return self._reading

    def _run(self) -> None:
        t0 = time.monotonic_ns()
        while not self._stop.wait(self.period_s):
            t = time.monotonic_ns()
            s = (t - t0) / NS
            pose = np.eye(4)
            pose[:3, 3] = [0.03 * np.sin(s), 0.0, 0.03 * (1 - np.cos(s))]  # a slow circle
            self._reading = TeleopReading(t, pose, {"RG": True}, {"rightGrip": 1.0, "rightTrig": 0.0})
            self.readings += 1


class StandInRobot:
    """Integrates the commanded motion (position only) and renders nothing."""

    n_joints = 7

    def __init__(self):
        self.pose = HOME.copy()
        self.gripper = 0.04

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def state(self) -> RobotState:
        return RobotState(time.monotonic_ns(), self.pose.copy(), np.zeros(7), self.gripper)

    def home(self) -> None:
        self.pose = HOME.copy()

    def apply(self, action: Action) -> None:
        self.pose[:3] = np.clip(self.pose[:3] + action.delta_ee[:3], [0.3, -0.3, 0.05], [0.7, 0.3, 0.5])
        self.gripper = 0.08 * float(action.gripper)

    def recover(self) -> None:
        pass


def stand_in_rig(streams: StreamSpecs, operator: bool = False) -> Rig:
    """A real-time rig of stand-in devices recording `streams`; operator=True: the Quest stand-in holds
    the grip (demonstrations through the clutch), False: nobody at the controls (a policy drives)."""
    camera, microphones = StandInCamera(streams), StandInMicrophones(streams)
    teleop = StandInTeleop() if operator else NoOperator()
    return Rig(camera=camera, microphones=microphones, teleop=teleop, robot=StandInRobot(), clock=MonotonicClock(),
               streams=streams, kind="real", operator="quest" if operator else "none", realtime=True,
               description="stand-in rig (no rendering)", info={"rig": "stand-in"},
               closers=[camera.stop, microphones.stop, teleop.stop])
