"""A small test rig for the recording loop: devices that speak the collector's interfaces, with faults that a
test plans per episode (dropped and stalled frames, audio overflow, teleop silence, robot errors).

Like the simulated rig, it runs either on simulated time (robot.apply() advances the clock one control period
and the camera and microphones produce what falls in it, queued for their readers) or in real time (a
producer thread makes frames at 30 Hz and audio blocks every 10 ms on the monotonic clock). These devices are
the loop's inputs; the tests assert what the loop records from them and how it keeps its rate.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation

from htouch.collector.devices import Action, AudioBlock, DeviceError, Frame, MonotonicClock, RobotState, TeleopReading
from htouch.collector.rig import Rig
from htouch.dataset.schema import AudioSpec, CameraSpec, StateSpec, StreamSpecs, TeleopSpec

NS = 1_000_000_000
HOME = np.array([0.5, 0.0, 0.3, 0.0, 0.0, 0.0, 1.0])
CONTROL_HZ = 30.0
TEST_STREAMS = StreamSpecs(name="test-rig", camera=CameraSpec(width=64, height=48, rate_hz=30.0),
                    audio=AudioSpec(rate_hz=16000.0, channels=2, channel_names=["mic0", "mic1"]),
                    state=StateSpec(rate_hz=CONTROL_HZ), teleop=TeleopSpec(rate_hz=CONTROL_HZ))


@dataclass
class Plan:
    """What happens in one attempt, in seconds since the robot went home (the attempt's start)."""

    end_s: float = 3.0  # the operator presses end_button then
    end_button: str | None = "A"  # "A" success, "B" failure, "RJ" discard, None: never (time limit)
    grip_s: float = 0.1  # the operator holds the grip from then on
    drop_frames: dict[float, int] = field(default_factory=dict)  # at time s, lose n frames
    camera_stall: tuple[float, float] | None = None  # no frames in [a, b)
    camera_errors: tuple[float, float] | None = None  # camera.read raises DeviceError in [a, b)
    audio_overflow: tuple[float, ...] = ()  # blocks starting at these times carry the overflow flag
    teleop_silence: tuple[float, float] | None = None  # no new teleop reading in [a, b)
    robot_error: tuple[float, float] | None = None  # state.error from a; recover() clears it only after b
    apply_raises: tuple[float, ...] = ()  # apply() raises DeviceError at the first tick after each time
    interrupt_at: float | None = None  # apply() raises KeyboardInterrupt (Ctrl-C) then
    callback_at: tuple[float, object] | None = None  # call object() once then (from the control thread)


class SteppedClock:
    """Simulated time: sleep_until returns at once; the robot advances time by applying actions."""

    def __init__(self, start_ns: int = 1000 * NS):
        self._t = start_ns
        self._lock = threading.Lock()

    def now_ns(self) -> int:
        with self._lock:
            return self._t

    def sleep_until(self, t_ns: int) -> None:
        pass

    def advance(self, dt_ns: int) -> None:
        with self._lock:
            self._t += dt_ns


class _Queued:
    def __init__(self):
        self.queue: queue.Queue = queue.Queue()
        self.started = self.stopped = 0

    def start(self) -> None:
        self.started += 1

    def stop(self) -> None:
        self.stopped += 1


class PlannedCamera(_Queued):
    def __init__(self, world: PlannedWorld):
        super().__init__()
        self.world = world
        self.spec = TEST_STREAMS.camera

    def read(self, timeout_s: float) -> Frame | None:
        w = self.world
        if w.plan.camera_errors and w.in_window(w.plan.camera_errors, w.clock.now_ns()):
            raise DeviceError("USB transfer failed")
        try:
            return self.queue.get(timeout=timeout_s)
        except queue.Empty:
            return None


class PlannedMicrophones(_Queued):
    def __init__(self):
        super().__init__()
        self.spec = TEST_STREAMS.audio

    def read(self, timeout_s: float) -> AudioBlock | None:
        try:
            return self.queue.get(timeout=timeout_s)
        except queue.Empty:
            return None


class PlannedTeleop(_Queued):
    RATE_HZ = 72.0

    def __init__(self, world: PlannedWorld):
        super().__init__()
        self.world = world
        self.reading: TeleopReading | None = None

    def read(self) -> TeleopReading | None:
        w = self.world
        now = w.clock.now_ns()
        if w.plan.teleop_silence and w.in_window(w.plan.teleop_silence, now):
            return self.reading  # the last one, growing stale
        period = NS / self.RATE_HZ
        stamp = w.base_ns + int((now - w.base_ns) // period * period)
        if self.reading is None or stamp != self.reading.timestamp_ns:
            s = (stamp - w.base_ns) / NS
            pose = np.eye(4)
            # A slow circle in the controller's x-z plane (robot x-y with the default remap), a slight turn.
            pose[:3, 3] = [0.03 * np.sin(s), 0.0, 0.03 * (1 - np.cos(s))]
            pose[:3, :3] = Rotation.from_rotvec([0, 0.1 * np.sin(s), 0]).as_matrix()
            pressed = w.plan.end_button is not None and w.plan.end_s <= s < w.plan.end_s + 0.2
            buttons = {"RG": s >= w.plan.grip_s, **({w.plan.end_button: True} if pressed else {})}
            self.reading = TeleopReading(stamp, pose, buttons, {"rightTrig": min(s / 4, 1.0)})
        return self.reading


class PlannedRobot(_Queued):
    n_joints = 7

    def __init__(self, world: PlannedWorld):
        super().__init__()
        self.world = world
        self.pose = HOME.copy()
        self.gripper = 1.0
        self.applied: list[tuple[int, Action]] = []
        self.recovers = 0
        self.homes = 0
        self._error = False
        self._recovered = False  # the planned error was cleared (it does not come back this attempt)
        self._raised: set[float] = set()

    def state(self) -> RobotState:
        w = self.world
        now = w.clock.now_ns()
        if w.plan.robot_error and w.since(now) >= w.plan.robot_error[0] and not self._recovered:
            self._error = True
        return RobotState(now, self.pose.copy(), np.full(7, w.since(now)), 0.08 * self.gripper,
                          error="cartesian reflex" if self._error else None)

    def recover(self) -> None:
        self.recovers += 1
        w = self.world
        if self._error and w.since(w.clock.now_ns()) >= w.plan.robot_error[1]:
            self._error = False
            self._recovered = True

    def home(self) -> None:
        self.homes += 1
        self.pose = HOME.copy()
        self.gripper = 1.0
        self._error = False
        self._recovered = False
        self._raised = set()
        self.world.next_attempt()

    def apply(self, action: Action) -> None:
        w = self.world
        now = w.clock.now_ns()
        self.applied.append((now, action))
        if not self._error:
            self.pose[:3] += action.delta_ee[:3]
            rot = Rotation.from_rotvec(action.delta_ee[3:]) * Rotation.from_quat(self.pose[3:])
            self.pose[3:] = rot.as_quat()
            self.gripper = action.gripper
        if w.stepped:
            w.clock.advance(int(NS / CONTROL_HZ))
            w.produce(w.clock.now_ns())
        s = w.since(now)
        if w.plan.callback_at and s >= w.plan.callback_at[0] and not w.called_back:
            w.called_back = True
            w.plan.callback_at[1]()
        if w.plan.interrupt_at is not None and s >= w.plan.interrupt_at:
            raise KeyboardInterrupt
        for t in w.plan.apply_raises:
            if s >= t and t not in self._raised:
                self._raised.add(t)
                raise DeviceError("communication_constraints_violation")


class PlannedWorld:
    """The clock, the plans and the production of frames and audio blocks."""

    AUDIO_BLOCK = 160  # 10 ms at 16 kHz

    def __init__(self, plans: list[Plan], stepped: bool = True):
        self.plans = plans
        self.stepped = stepped
        self.clock = SteppedClock() if stepped else MonotonicClock()
        self.attempt = -1
        self.base_ns = self.clock.now_ns()
        self.called_back = False
        self.camera = PlannedCamera(self)
        self.microphones = PlannedMicrophones()
        self.teleop = PlannedTeleop(self)
        self.robot = PlannedRobot(self)
        self._lock = threading.Lock()
        self._frame_number = 0
        self._next_frame_ns = self.base_ns
        self._next_block_ns = self.base_ns
        self._rng = np.random.default_rng(0)
        self._dropped_at: set[float] = set()
        self._producer: threading.Thread | None = None
        self._quit = threading.Event()

    @property
    def plan(self) -> Plan:
        return self.plans[min(max(self.attempt, 0), len(self.plans) - 1)]

    def since(self, t_ns: int) -> float:
        return (t_ns - self.base_ns) / NS

    def in_window(self, window: tuple[float, float], t_ns: int) -> bool:
        return window[0] <= self.since(t_ns) < window[1]

    def next_attempt(self) -> None:
        with self._lock:
            self.attempt += 1
            self.base_ns = self.clock.now_ns()
            self._dropped_at = set()
            self.called_back = False
            self.teleop.reading = None

    def produce(self, until_ns: int) -> None:
        """Queue the frames and blocks captured up to until_ns."""
        with self._lock:
            plan = self.plan
            period = NS / TEST_STREAMS.camera.rate_hz
            while self._next_frame_ns <= until_ns:
                t = int(self._next_frame_ns)
                self._next_frame_ns += period
                s = self.since(t)
                if plan.camera_stall and self.in_window(plan.camera_stall, t):
                    continue
                self._frame_number += 1
                lost = [at for at in plan.drop_frames if at <= s and at not in self._dropped_at]
                if lost:
                    self._dropped_at.add(lost[0])
                    self._frame_number += plan.drop_frames[lost[0]]
                rgb = np.zeros((48, 64, 3), np.uint8)
                rgb[:, self._frame_number % 64] = 255  # a moving bar: no two neighbours are equal
                rgb[..., 1] = 60
                self.camera.queue.put(Frame(t, self._frame_number, rgb))
            block_ns = self.AUDIO_BLOCK * NS / TEST_STREAMS.audio.rate_hz
            while self._next_block_ns + block_ns <= until_ns:
                t = int(self._next_block_ns)
                self._next_block_ns += block_ns
                s = self.since(t)
                overflow = any(abs(s - at) < block_ns / (2 * NS) for at in plan.audio_overflow)
                pcm = (self._rng.normal(0, 300, (self.AUDIO_BLOCK, 2))).astype(np.int16)
                self.microphones.queue.put(AudioBlock(t, pcm, overflow))

    # ---------------------------------------------------------------- real-time mode

    def start_producer(self) -> None:
        if self.stepped or self._producer is not None:
            return
        self._next_frame_ns = self._next_block_ns = self.clock.now_ns()

        def run() -> None:
            while not self._quit.wait(0.002):
                self.produce(self.clock.now_ns())

        self._producer = threading.Thread(target=run, daemon=True)
        self._producer.start()

    def stop_producer(self) -> None:
        self._quit.set()
        if self._producer is not None:
            self._producer.join()

    def rig(self) -> Rig:
        self.start_producer()
        return Rig(camera=self.camera, microphones=self.microphones, teleop=self.teleop, robot=self.robot,
                   clock=self.clock, streams=TEST_STREAMS, kind="test", operator="scripted", realtime=not self.stepped,
                   description="test rig", info={"rig": "test"}, closers=[self.stop_producer])
