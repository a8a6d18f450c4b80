"""The simulated rig: camera, microphones, robot and clock over one MuJoCo world, behind the device interfaces.

The recording loop drives it exactly as a real rig. `robot.apply(action)` advances physics by one control
period (1/rate s, 16 or 17 steps of 2 ms at 30 Hz) under the hand's impedance controller; during that
period it renders every camera frame that falls due (at the physics step it falls in) and synthesizes the
microphones' audio from the contacts of every step. Frames and audio blocks are queued and handed out by
`camera.read()` and `microphones.read()`, which other threads call. Nothing is produced while a device is
stopped, as with real devices; a queue that nobody reads drops its oldest items (a jump in frame numbers,
an overflow flag on the next audio block), as a real driver does.

Time is simulated: integer nanoseconds from a fixed base plus the physics time. With `realtime=False` the
clock's `sleep_until` returns at once, so the rig runs as fast as the CPU allows; with `realtime=True` it
paces simulated time to the wall clock (for a person at the keyboard).

`robot.home()` starts the next episode: a new layout and new looks drawn from the seed and the episode's
number, so the same seed always gives the same sequence of episodes, frames and audio.
"""

from __future__ import annotations

import collections
import math
import os
import threading
import time
from typing import Any

import mujoco
import numpy as np
from scipy.spatial.transform import Rotation

from htouch.collector.config import RigConfig
from htouch.collector.devices import Action, AudioBlock, DeviceError, Frame, RobotState
from htouch.dataset.schema import NS, StreamSpecs
from htouch.sim.audio import ContactAudioConfig, ContactAudioSynth, ContactSample
from htouch.sim.scene import FINGER_MAX, PAD_DEPTH, VARIATIONS, OffscreenCamera, randomize_looks
from htouch.sim.tasks import TASKS, Task, build

BASE_NS = 1_000 * NS  # the clock's value when the world is built
SETTLE_S = 0.3  # homing: the hand is placed at home and the scene settles for this long
REFLEX_FORCE_N = 60.0  # a contact force over this (mean over a control period) stops the robot, as a Panda
# reflex does; the mean stands in for the robot's filtered external-force estimate
CAMERA_QUEUE_S = 3.0  # frames nobody reads are dropped beyond this much
AUDIO_QUEUE_S = 10.0
FLICKER = 0.01  # relative frame-to-frame change of the key light (mains flicker): no two frames are equal
MOTOR_SPEED_M_S = 0.25  # TCP speed that counts as the arm's motors at full speed (for the hum)
MOTOR_SPEED_RAD_S = 2.0


class SimClock:
    """Simulated time; optionally paced to the wall clock."""

    def __init__(self, rig: SimRig, realtime: bool):
        self._rig = rig
        self.realtime = realtime
        self._anchor: tuple[int, int] | None = None  # (wall ns, sim ns)

    def now_ns(self) -> int:
        return self._rig.time_ns()

    def sleep_until(self, t_ns: int) -> None:
        if not self.realtime:
            return
        wall, sim = time.monotonic_ns(), self.now_ns()
        if self._anchor is None or wall - (self._anchor[0] + sim - self._anchor[1]) > NS // 2:
            self._anchor = (wall, sim)  # first call, or fell behind by half a second: do not try to catch up
        delay = self._anchor[0] + (t_ns - self._anchor[1]) - wall
        if delay > 0:
            time.sleep(delay / NS)


class _Queue:
    """A bounded FIFO between the control thread (producer) and a reader thread."""

    def __init__(self, maxlen: int):
        self._items: collections.deque = collections.deque()
        self._maxlen = maxlen
        self._cond = threading.Condition()
        self.dropped = 0  # items dropped since the last get()

    def put(self, item: Any) -> None:
        with self._cond:
            if len(self._items) >= self._maxlen:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self._cond.notify_all()

    def get(self, timeout_s: float) -> tuple[Any, int] | None:
        with self._cond:
            if not self._items:
                self._cond.wait(timeout=max(timeout_s, 0.0))
            if not self._items:
                return None
            dropped, self.dropped = self.dropped, 0
            return self._items.popleft(), dropped

    def clear(self) -> None:
        with self._cond:
            self._items.clear()
            self.dropped = 0


class SimCamera:
    """The fixed third-person camera, rendered offscreen inside robot.apply()."""

    def __init__(self, rig: SimRig, spec):
        self._rig = rig
        self.spec = spec
        self.streaming = False
        self._queue = _Queue(max(1, int(CAMERA_QUEUE_S * spec.rate_hz)))

    def start(self) -> None:
        self._rig._start_camera()

    def stop(self) -> None:
        self.streaming = False
        self._queue.clear()

    def read(self, timeout_s: float) -> Frame | None:
        got = self._queue.get(timeout_s)
        return None if got is None else got[0]

    def _put(self, frame: Frame) -> None:
        self._queue.put(frame)


class SimMicrophones:
    """Four contact microphones on the gripper; audio synthesized from the contacts of every physics step."""

    def __init__(self, rig: SimRig, spec):
        self._rig = rig
        self.spec = spec
        self.streaming = False
        blocks_per_s = spec.rate_hz / rig.config.microphones.blocksize
        self._queue = _Queue(max(1, int(AUDIO_QUEUE_S * blocks_per_s)))

    def start(self) -> None:
        self._rig._start_microphones()

    def stop(self) -> None:
        self.streaming = False
        self._queue.clear()

    def read(self, timeout_s: float) -> AudioBlock | None:
        got = self._queue.get(timeout_s)
        if got is None:
            return None
        block, dropped = got
        if dropped:  # the queue lost blocks before this one: the device "lost input"
            block = AudioBlock(block.timestamp_ns, block.pcm, True)
        return block

    def _put(self, block: AudioBlock) -> None:
        self._queue.put(block)


class SimRobot:
    """The floating hand. apply() advances the simulation by one control period."""

    def __init__(self, rig: SimRig):
        self._rig = rig
        self.n_joints = 2  # the two finger joints

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def state(self) -> RobotState:
        return self._rig._robot_state()

    def home(self) -> None:
        self._rig._home()

    def apply(self, action: Action) -> None:
        self._rig._apply(action)

    def recover(self) -> None:
        self._rig.error = None


class SimRig:
    """A simulated rig for one task and variation. See the module docstring."""

    def __init__(self, task: str = "zip", variation: str = "train", seed: int = 0, config: RigConfig | None = None,
                 realtime: bool = False, shadows: bool = False):
        """shadows: render the key light's shadows (about 2.5x the CPU time of a frame with Mesa)."""
        if task not in TASKS:
            raise DeviceError(f"unknown simulated task {task!r} (tasks: {', '.join(TASKS)})")
        if variation not in VARIATIONS:
            raise DeviceError(f"unknown variation {variation!r} (variations: {', '.join(VARIATIONS)})")
        self.config = config or RigConfig()
        cam, mic, robot = self.config.camera, self.config.microphones, self.config.robot
        if not 1 <= mic.channels <= 4:
            raise DeviceError(f"the simulated gripper has 4 contact microphones; {mic.channels} channels asked for")
        if cam.width < 1 or cam.height < 1 or cam.fps <= 0 or mic.rate_hz <= 0 or mic.blocksize < 1:
            raise DeviceError("camera size and rate, audio rate and block size must be positive")
        self.variation = variation
        self.seed = int(seed)
        self.task: Task
        self.task, self.world = build(
            task, variation, width=cam.width, height=cam.height, shadows=shadows,
            stiffness=(robot.translational_stiffness, robot.rotational_stiffness),
            gripper_force=robot.gripper_force, gripper_speed=robot.gripper_speed)
        self.style = VARIATIONS[variation]
        self._streams = self.config.stream_specs(n_joints=2, joint_unit="m")  # the finger joints slide
        self.dt_ns = int(round(self.world.model.opt.timestep * NS))
        self.period_ns = NS / self.config.control.rate_hz
        self.frame_period_ns = NS / cam.fps
        self.rate_hz = int(mic.rate_hz)
        self.channels = mic.channels
        self.blocksize = mic.blocksize
        self.gripper_max_width = robot.gripper_max_width

        self.clock = SimClock(self, realtime)
        self.camera = SimCamera(self, self._streams.camera)
        self.microphones = SimMicrophones(self, self._streams.audio)
        self.robot = SimRobot(self)
        self.error: str | None = None
        self.last_force = 0.0  # mean contact force on the gripper over the last control period, N
        # For the benchmark: CPU ns of the control thread (render_wall: wall ns, including Mesa's threads), counts
        self.timing = {"render": 0, "render_wall": 0, "audio": 0, "frames": 0, "ticks": 0}

        self._lock = threading.RLock()
        self._renderer: OffscreenCamera | None = None
        self._renderer_thread: int | None = None
        self._closed = False
        self._events: list[tuple[int, str, dict]] = []
        self._ideal_ns = 0.0  # the ideal (unrounded) end of the last control period, ns since BASE_NS
        self._next_frame_ns = 0.0
        self._frame_number = 0
        self._pending: list[np.ndarray] = []  # audio samples not yet cut into blocks
        self._pending_start = 0  # sample index of the first pending sample
        self._pending_len = 0
        self._synth: ContactAudioSynth | None = None
        self.episode_index = -1  # the scene's current episode (home() moves to the next)
        self._reset(0)

    # -------------------------------------------------------------- facts

    def stream_specs(self) -> StreamSpecs:
        return self._streams

    def time_ns(self) -> int:
        return BASE_NS + self.world.step_index * self.dt_ns

    def _sample_at(self, rel_ns: int) -> int:
        """Index of the first audio sample at or after rel_ns (ns since BASE_NS)."""
        return -(-rel_ns * self.rate_hz // NS)

    def _sample_time(self, sample: int) -> int:
        return BASE_NS + (sample * NS + self.rate_hz // 2) // self.rate_hz

    # -------------------------------------------------------------- episodes

    def _home(self) -> None:
        with self._lock:
            self._check_open()
            self._reset(self.episode_index + 1)

    def _reset(self, episode: int) -> None:
        """Draw episode `episode`'s layout and looks, put the hand home and let the scene settle."""
        w = self.world
        rng = np.random.default_rng([self.seed, episode])
        mujoco.mj_resetData(w.model, w.data)
        self.task.new_episode(rng)
        randomize_looks(w, self.style, rng, self.task.camera)
        w.place_hand(self.task.home_position, self.task.home_rotation, self.task.home_opening)
        mujoco.mj_forward(w.model, w.data)
        settle = int(round(SETTLE_S * NS / self.dt_ns))
        w.step_index += settle  # homing takes time; nothing is captured meanwhile
        w.settle(settle)
        self.episode_index = episode
        self.error = None
        self._flicker_rng = np.random.default_rng([self.seed, episode, 1])
        audio_seed = int(np.random.SeedSequence([self.seed, episode, 2]).generate_state(1)[0])
        self._synth = ContactAudioSynth(ContactAudioConfig(rate_hz=self.rate_hz, channels=self.channels,
                                                           seed=audio_seed))
        now = self.time_ns() - BASE_NS
        self._ideal_ns = float(now)
        self._next_frame_ns = float(now)
        self._pending, self._pending_len = [], 0
        self._pending_start = self._sample_at(now)
        self._events.clear()

    def pop_events(self) -> list[tuple[int, str, dict]]:
        """Ground truth since the last call: contact onsets (time ns, "contact", detail) and the moment the
        task's fragile part broke (time ns, "damage", detail)."""
        with self._lock:
            for onset in self.world.onsets:
                detail: dict[str, Any] = {"with": onset.touched, "material": onset.material,
                                          "impulse": round(float(onset.impulse), 5)}
                if onset.via:
                    detail["via"] = onset.via
                self._events.append((BASE_NS + onset.step * self.dt_ns, "contact", detail))
            self.world.onsets.clear()
            events, self._events = sorted(self._events, key=lambda e: e[0]), []
            return events

    # -------------------------------------------------------------- devices

    def _start_camera(self) -> None:
        with self._lock:
            self._check_open()
            if not self.camera.streaming:
                self._next_frame_ns = float(self.time_ns() - BASE_NS)
                self.camera.streaming = True

    def _start_microphones(self) -> None:
        with self._lock:
            self._check_open()
            if not self.microphones.streaming:
                self._pending, self._pending_len = [], 0
                self._pending_start = self._sample_at(self.time_ns() - BASE_NS)
                self.microphones.streaming = True

    def _robot_state(self) -> RobotState:
        with self._lock:
            w = self.world
            qx, qy, qz, qw = w.tcp_rotation.as_quat()
            fingers = w.finger_opening
            width = float(np.clip(fingers.sum() - 2 * PAD_DEPTH, 0.0, self.gripper_max_width))
            return RobotState(self.time_ns(), np.concatenate([w.tcp_position, [qx, qy, qz, qw]]), fingers, width,
                              self.error)

    def _apply(self, action: Action) -> None:
        with self._lock:
            self._check_open()
            w = self.world
            delta = np.asarray(action.delta_ee, dtype=float).reshape(-1)
            gripper = float(action.gripper)
            if delta.shape != (6,) or not np.all(np.isfinite(delta)) or not math.isfinite(gripper):
                raise DeviceError(f"the simulated robot got a non-finite or malformed action {action!r}")
            if self.error is not None:
                delta = np.zeros(6)  # a robot in a reflex holds still until recover()
            # The command moves the impedance controller's target from where the hand is now.
            w.set_target(w.tcp_position + delta[:3], Rotation.from_rotvec(delta[3:]) * w.tcp_rotation,
                         min(max(gripper, 0.0), 1.0))
            now = self.time_ns() - BASE_NS
            ideal = self._ideal_ns + self.period_ns
            if ideal < now:
                ideal = now + self.period_ns
            self._ideal_ns = ideal
            n_steps = max(1, int(round((ideal - now) / self.dt_ns)))
            self._advance(n_steps)

    def _advance(self, n_steps: int) -> None:
        w = self.world
        listen = self.microphones.streaming
        start_rel = self.time_ns() - BASE_NS
        first_sample = self._sample_at(start_rel)
        contacts: list[ContactSample] = []
        lin = ang = 0.0
        force_sum = fragile_sum = 0.0
        for _ in range(n_steps):
            step_rel = self.time_ns() - BASE_NS
            heard = w.step()
            if listen and heard:
                a = self._sample_at(step_rel) - first_sample
                b = self._sample_at(step_rel + self.dt_ns) - first_sample
                for h in heard:
                    contacts.append(ContactSample(a, b - a, h.position, h.normal_force, h.slip_speed, h.impulse,
                                                  h.material))
            force_sum += sum(h.normal_force for h in heard if not h.via)
            fragile_sum += self.task.fragile_force()
            v, omega = w.tcp_speed()
            lin += v
            ang += omega
            if self.camera.streaming and self.time_ns() - BASE_NS >= self._next_frame_ns:
                self._capture()
                self._next_frame_ns += self.frame_period_ns
        self.timing["ticks"] += 1
        self.last_force = force_sum / n_steps
        broke = self.task.check_damage(fragile_sum / n_steps)
        if broke is not None:
            self._events.append((self.time_ns(), "damage", {"what": broke}))
        if self.last_force > REFLEX_FORCE_N and self.error is None:
            self.error = f"cartesian reflex: contact force {self.last_force:.0f} N over {REFLEX_FORCE_N:.0f} N"
            w.set_target(w.tcp_position, w.tcp_rotation, w.target.finger / FINGER_MAX)
        if listen:
            t0 = time.thread_time_ns()
            n = self._sample_at(self.time_ns() - BASE_NS) - first_sample
            motor = (lin / MOTOR_SPEED_M_S + ang / MOTOR_SPEED_RAD_S) / n_steps
            pcm = self._synth.render(n, contacts, w.mic_positions()[: self.channels], motor_speed=motor)
            self._queue_audio(first_sample, pcm)
            self.timing["audio"] += time.thread_time_ns() - t0

    def _queue_audio(self, first_sample: int, pcm: np.ndarray) -> None:
        if first_sample != self._pending_start + self._pending_len:  # a gap (a reset): start over
            self._pending, self._pending_len, self._pending_start = [], 0, first_sample
        self._pending.append(pcm)
        self._pending_len += len(pcm)
        if self._pending_len < self.blocksize:
            return
        data = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        n_blocks = len(data) // self.blocksize
        for i in range(n_blocks):
            block = data[i * self.blocksize: (i + 1) * self.blocksize]
            start = self._pending_start + i * self.blocksize
            self.microphones._put(AudioBlock(self._sample_time(start), np.ascontiguousarray(block)))
        rest = data[n_blocks * self.blocksize:]
        self._pending = [rest] if len(rest) else []
        self._pending_len = len(rest)
        self._pending_start += n_blocks * self.blocksize

    def _capture(self) -> None:
        t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
        w = self.world
        if self._renderer is None:
            self._renderer = self._make_renderer()
        w.model.light_diffuse[w.key_light] = w.light_diffuse * (1.0 + FLICKER * self._flicker_rng.standard_normal())
        rgb = self._renderer.render(w.data)
        self._frame_number += 1
        self.camera._put(Frame(self.time_ns(), self._frame_number, rgb))
        self.timing["render"] += time.thread_time_ns() - c0
        self.timing["render_wall"] += time.perf_counter_ns() - t0
        self.timing["frames"] += 1

    def _make_renderer(self) -> OffscreenCamera:
        """The GL context lives in the thread that renders (the control thread)."""
        cam = self.config.camera
        try:
            renderer = OffscreenCamera(self.world.model, cam.width, cam.height, self.world.camera_id)
        except Exception as e:  # noqa: BLE001 - GL back ends fail in many ways; all mean "cannot render"
            raise DeviceError(f"offscreen rendering failed (MUJOCO_GL={os.environ.get('MUJOCO_GL', '')!r}): "
                              f"{type(e).__name__}: {e}; try MUJOCO_GL=osmesa or MUJOCO_GL=egl") from None
        self._renderer_thread = threading.get_ident()
        return renderer

    # -------------------------------------------------------------- lifetime

    def _check_open(self) -> None:
        if self._closed:
            raise DeviceError("the simulated rig is closed")

    def close(self) -> None:
        """Free the renderer. Call it from the thread that drove the rig, where the GL context lives."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self.camera.streaming = self.microphones.streaming = False
            renderer, self._renderer = self._renderer, None
        if renderer is not None and threading.get_ident() == self._renderer_thread:
            renderer.close()
        # From another thread the GL context cannot be made current; the process frees it at exit.

    def __enter__(self) -> SimRig:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
