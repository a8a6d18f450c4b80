"""The recording loop: a fixed-rate control loop, one reader thread per streaming device, and the episode
lifecycle (home -> ready -> recording -> save as success / failure, or discard and re-record).

The control loop runs in the calling thread (a simulated rig renders inside robot.apply(), and its GL
context belongs to that thread). Each tick it reads the newest teleop reading and the robot state, asks
the action source for a command (the operator's controller through the clutch when recording
demonstrations, a trained policy for rollouts: htouch.collector.sources), passes it through the one safety
filter, sends it and records state, teleop and action. The camera and the microphones are drained by their
own threads (htouch.collector.streams), which hand every frame and block to the episode writer (and to the
source: a policy observes them); the writer only queues (a slow disk never stalls control) and records a
full queue as an event. Faults (dropped or stalled frames, audio overflow, teleop silence, robot errors:
htouch.collector.faults) are shown, recorded as events in the episode, and the session goes on.

Timestamps all come from the rig's one clock. On a simulated rig that runs faster than real time the
clock is simulated time and the loop runs as fast as the simulation goes; it then waits for the readers
(and the writer waits for the disk) instead of dropping anything.
"""

from __future__ import annotations

import collections
import gc
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from htouch.collector.config import ControlConfig
from htouch.collector.devices import Action, AudioBlock, DeviceError, Frame, RobotState, TeleopReading
from htouch.collector.faults import FaultMonitor
from htouch.collector.mapping import MappingConfig
from htouch.collector.panel import LiveStatus
from htouch.collector.safety import SafetyFilter, SafetyLimits
from htouch.collector.sources import ActionSource, SourceCommand, TeleopSource
from htouch.collector.streams import (
    EXACT_READ_TIMEOUT_S,
    READ_TIMEOUT_S,
    AudioLevels,
    RateMeter,
    StreamReader,
    measure_levels,
)
from htouch.dataset.schema import NS
from htouch.dataset.store import Dataset
from htouch.errors import HtouchError, WriterError

if TYPE_CHECKING:
    from htouch.collector.rig import Rig
    from htouch.dataset.writer import EpisodeWriter

READY_TIMEOUT_S = 10.0  # camera and microphones must deliver within this after homing
FAST_LAG_S = 0.25  # on a simulated clock, how far (simulated time) a reader may fall behind the loop
EARLY_KEEP_S = 1.0  # items handed out while no episode records are kept this long (see Recorder._keep_early)
# Rows a live recording's writer may queue while it flushes (its thread does not drain the queue meanwhile) or
# waits for a busy machine's cores: a real rig makes about 220 a second (30 frames, 100 audio blocks, 30 each
# of state, action and teleop), so about 4.5 s before rows are dropped, instead of the writer's default 1.2 s
# (on a loaded machine a flush took more than a second: docs/bench-recorder.md). The memory it may hold is
# mostly frames: about 140, 130 MB at 640x480.
WRITER_QUEUE_ROWS = 1024
END_COMMANDS = ("success", "failure", "discard")
# Event kinds only the loop records (once per occurrence). A teleop device reporting its own loss (input
# ended, connection dropped) is shown, and its reason goes into the loop's teleop_lost event.
LOOP_EVENTS = frozenset({"start", "stop", "success", "failure", "teleop_lost"})


# ------------------------------------------------------------------------------------------- the session


@dataclass
class LoopTiming:
    """Tick periods while recording, for the panel and the benchmark: on the loop clock, and on the host's
    wall clock (the same thing on a real rig; on a simulated rig the loop clock is simulated time). Work
    per tick and the time robot.apply() took (the simulation itself, on a simulated rig), wall."""

    periods_ns: list[int] = field(default_factory=list)
    wall_periods_ns: list[int] = field(default_factory=list)
    work_ns: list[int] = field(default_factory=list)
    apply_ns: list[int] = field(default_factory=list)
    overruns: int = 0  # ticks that woke more than one period late
    ticks: int = 0

    def percentile_ms(self, which: str, q: float, last: int | None = None) -> float:
        values = getattr(self, which)[-last:] if last else getattr(self, which)
        return float(np.percentile(values, q)) / 1e6 if values else 0.0


@dataclass
class Recording:
    """The episode being recorded: what the readers route into it and what the panel shows about it."""

    writer: EpisodeWriter
    index: int
    start_ns: int
    stop_ns: int | None = None
    frames: int = 0
    frames_dropped: int = 0
    audio_overflows: int = 0
    camera_stalls: int = 0
    teleop_losses: int = 0
    robot_errors: int = 0
    safety_clips: collections.Counter = field(default_factory=collections.Counter)
    info: dict[str, Any] = field(default_factory=dict)  # stored when the episode started

    def accepts(self, t_ns: int) -> bool:
        """Items captured from the start tick up to and including the stop tick. Inclusive at the stop: an
        item stamped exactly then already exists when the loop decides to stop (a simulated camera renders it
        in the previous apply()), so it is taken whether its reader hands it out before or after the decision."""
        return t_ns >= self.start_ns and (self.stop_ns is None or t_ns <= self.stop_ns)


@dataclass
class EpisodeOutcome:
    index: int
    result: str  # "success", "failure", "unlabelled" (time limit / robot gave up), "discarded"
    duration_s: float
    frames: int
    frames_dropped: int
    events: dict[str, int]
    info: dict[str, Any] = field(default_factory=dict)  # the committed episode's info (start and end; discarded: {})


@dataclass
class SessionResult:
    committed: list[int] = field(default_factory=list)
    discarded: list[int] = field(default_factory=list)
    outcomes: list[EpisodeOutcome] = field(default_factory=list)
    interrupted: bool = False
    interrupted_index: int | None = None  # the episode thrown away by the interrupt, if one was recording
    error: str | None = None  # why the session ended early (a device that cannot go on)


class Recorder:
    """Records episodes from a rig into a dataset until `episodes` are committed (or an interrupt).

    The commands come from `source`; by default the rig's teleop through the clutch mapping (`mapping`,
    `start_on_clutch`: an episode starts when the operator holds the grip)."""

    def __init__(self, rig: Rig, dataset: Dataset, control: ControlConfig | None = None,
                 mapping: MappingConfig | None = None, safety: SafetyLimits | None = None, *,
                 variation: str = "train", start_on_clutch: bool = False,
                 on_message: Callable[[str], None] | None = None, writer_options: dict[str, Any] | None = None,
                 source: ActionSource | None = None):
        self.rig = rig
        self.dataset = dataset
        self.control = control or ControlConfig()
        self.source: ActionSource = source or TeleopSource(mapping, start_on_clutch)
        self.safety = SafetyFilter(safety)
        self.variation = variation
        self.on_message = on_message or (lambda _msg: None)
        self.on_outcome: Callable[[EpisodeOutcome], None] = lambda _outcome: None  # after each episode ends
        self.writer_options = dict(writer_options or {})
        self.writer_options.setdefault("blocking", not rig.realtime)
        if not self.writer_options["blocking"]:  # (a blocking writer makes the loop wait instead)
            self.writer_options.setdefault("queue_size", WRITER_QUEUE_ROWS)

        self.clock = rig.clock
        self.period_ns = int(round(NS / self.control.rate_hz))
        self.timing = LoopTiming()
        self.rates = {name: RateMeter() for name in ("camera", "audio", "state", "action", "teleop")}
        self.audio_levels = AudioLevels()
        self.phase = "starting"
        self.message = ""
        self.target = 0
        self.attempt = 0
        self.result = SessionResult()
        self.recent_events: collections.deque[tuple[int, str]] = collections.deque(maxlen=6)

        self._route_lock = threading.Lock()
        self._early: collections.deque[tuple[int, Callable[..., None], tuple]] = collections.deque()
        self._recording: Recording | None = None
        self._stop_requested = False
        self._prev_frame_number: int | None = None
        self.faults = FaultMonitor(self.control, event=self._event, say=self._say, resume=self.source.interrupted)
        self._last_teleop_ts: int | None = None
        self._last_state_ts: int | None = None
        self._last_action_ts: int | None = None
        self._gripper = self.safety.limits.gripper_max
        self._applied_wall_ns = 0  # host time the last command returned from robot.apply()
        self._last_wake_wall: int | None = None  # host time the last tick woke
        # A source that must see every item up to a tick waits for the readers to run dry at such ticks on a
        # simulated clock; short reads keep that wait short.
        self._exact = self.source.exact_observation and not rig.realtime
        timeout = EXACT_READ_TIMEOUT_S if self._exact else READ_TIMEOUT_S
        self._readers = [StreamReader("camera", rig.camera.read, self._on_frame, timeout),
                         StreamReader("audio", rig.microphones.read, self._on_audio, timeout)]

    # ---------------------------------------------------------------- control from outside

    def request_stop(self) -> None:
        """Ctrl-C: throw away the episode being recorded (nothing half-done is saved) and end the session."""
        self._stop_requested = True

    # ---------------------------------------------------------------- reader side (reader threads)

    def _on_frame(self, frame: Frame) -> None:
        t = int(frame.timestamp_ns)
        gap = 0
        if self._prev_frame_number is not None:
            gap = max(int(frame.frame_number) - self._prev_frame_number - 1, 0)
        self._prev_frame_number = int(frame.frame_number)
        self.rates["camera"].add(t)
        with self._route_lock:
            if self._recording is None:
                self._keep_early(t, self._route_frame, frame, gap)
            else:
                self._route_frame(self._recording, frame, gap)

    def _route_frame(self, rec: Recording, frame: Frame, gap: int) -> None:
        """Into the episode (and to the action source) if the recording takes it; under the route lock."""
        t = int(frame.timestamp_ns)
        if not rec.accepts(t):
            return
        rec.writer.camera(t, int(frame.frame_number), frame.rgb)
        rec.frames += 1
        if gap:
            rec.frames_dropped += gap
            self._event(rec, t, "frame_drop", count=gap, frame_number=int(frame.frame_number))
        self.source.observe_frame(frame)

    def _on_audio(self, block: AudioBlock) -> None:
        t = int(block.timestamp_ns)
        pcm = np.asarray(block.pcm)
        self.rates["audio"].add(t, len(pcm))
        if len(pcm):
            self.audio_levels = measure_levels(pcm, t, self.audio_levels)
        with self._route_lock:
            if self._recording is None:
                self._keep_early(t, self._route_audio, block)
            else:
                self._route_audio(self._recording, block)

    def _route_audio(self, rec: Recording, block: AudioBlock) -> None:
        t = int(block.timestamp_ns)
        if not rec.accepts(t):
            return
        pcm = np.asarray(block.pcm)
        rec.writer.audio(t, pcm, bool(block.overflow))
        if block.overflow:
            rec.audio_overflows += 1
            self._event(rec, t, "audio_overflow", samples_after=int(len(pcm)))
        self.source.observe_audio(block)

    def _keep_early(self, t_ns: int, route: Callable[..., None], *args: Any) -> None:
        """While no episode records: keep the last EARLY_KEEP_S of items. The recording starts at the tick the
        loop chose, and the readers may hand out items captured at or after it before the episode exists."""
        self._early.append((t_ns, route, args))
        while self._early and self._early[0][0] < t_ns - EARLY_KEEP_S * NS:
            self._early.popleft()

    def _event(self, rec: Recording, t_ns: int, kind: str, **detail: Any) -> None:
        rec.writer.event(t_ns, kind, **detail)
        self.recent_events.append((t_ns - rec.start_ns, kind))

    # ---------------------------------------------------------------- the session

    def run(self, episodes: int) -> SessionResult:
        """Record until `episodes` episodes are committed, an interrupt, or a device that cannot go on
        (then `error` says why). A Recorder runs one session."""
        self.target = episodes
        rig = self.rig
        started = []
        first_freeze = gc.get_freeze_count() == 0
        try:
            for device in (rig.robot, rig.camera, rig.microphones, rig.teleop):
                device.start()
                started.append(device)
            for reader in self._readers:
                reader.start()
            # A full garbage collection walks every object of the process (tens of thousands after the imports:
            # about 15-30 ms of CPU, more wall on a busy machine) holding the interpreter lock, so every thread
            # stops, the control thread too. Objects that exist now live as long as the session: leave them out
            # of collections (docs/bench-recorder.md).
            gc.freeze()
            while len(self.result.committed) < episodes and not self._stop_requested and not self.result.error:
                self._episode()
        except KeyboardInterrupt:
            self._interrupt()
        finally:
            if first_freeze:
                gc.unfreeze()
            self.phase = "stopped"
            for reader in self._readers:
                reader.stop()
            for reader in self._readers:
                if reader.is_alive():
                    reader.join(timeout=2 * READ_TIMEOUT_S + 1.0)
            for device in reversed(started):
                try:
                    device.stop()
                except DeviceError as e:
                    self.on_message(f"stopping {type(device).__name__}: {e}")
        if self._stop_requested and not self.result.interrupted:
            self.result.interrupted = True
        return self.result

    def _interrupt(self) -> None:
        """Throw away the episode in progress (its index is never reused); committed ones stay."""
        self.result.interrupted = True
        with self._route_lock:
            rec, self._recording = self._recording, None
        if rec is not None:
            rec.writer.discard()
            self.result.interrupted_index = rec.index
            self.result.discarded.append(rec.index)

    def _say(self, message: str) -> None:
        self.message = message
        self.on_message(message)

    # ---------------------------------------------------------------- one episode

    def _episode(self) -> None:
        self.attempt += 1
        self.phase = "homing"
        self._say(f"attempt {self.attempt}: moving home")
        self._home()
        self.source.reset()
        self._drain_emitters()
        self.phase = "ready"
        self._say("ready: " + self.source.ready_hint)
        tick = self._ready()
        if tick is None:  # interrupted while waiting
            return
        start_info = self._episode_info()
        writer = self.dataset.new_episode(variation=self.variation, info=start_info, **self.writer_options)
        # Creating the episode's arrays may take seconds on a loaded machine or disk: the episode starts at
        # the first tick after it (from the ready tick, its time limit could pass before its first tick).
        tick = start_ns = self._tick_from_now(tick)
        rec = Recording(writer, writer.index, start_ns, info=start_info)
        writer.event(start_ns, "start", attempt=self.attempt)
        self.faults.begin(start_ns)
        self.source.begin(start_ns)
        with self._route_lock:
            self._recording = rec
            early, self._early = self._early, collections.deque()
            for _t, route, args in early:  # what was captured from the start on, handed out just before it
                route(rec, *args)
        self.phase = "recording"
        self._say(f"recording episode {rec.index}")
        try:
            end, stop_ns = self._record(rec, tick)
            if end == "interrupted":
                self._interrupt()
                return
            self._finish(rec, end, stop_ns)
        except KeyboardInterrupt:
            raise  # run() discards the episode
        except BaseException:
            with self._route_lock:
                self._recording = None
            writer.abort()  # what was flushed stays in .incoming for `htouch validate --repair`
            raise

    def _home(self) -> None:
        robot = self.rig.robot
        try:
            robot.home()
        except DeviceError as e:
            self._say(f"robot could not move home ({e}); recovering and trying again")
            try:
                robot.recover()
                robot.home()
            except DeviceError as e2:
                raise HtouchError(f"the robot cannot move home: {e2}") from None

    def _episode_info(self) -> dict[str, Any]:
        extra = self.rig.episode_info() if self.rig.episode_info is not None else {}
        return {**self.rig.info, **extra, "operator": self.rig.operator, "attempt": self.attempt,
                "control_rate_hz": self.control.rate_hz, **self.source.episode_info()}

    def _drain_emitters(self) -> None:
        for emitter in self.rig.event_emitters:
            emitter.pop_events()

    def _ready(self) -> int | None:
        """Tick (holding still) until teleop, camera and microphones all deliver; the tick to start at."""
        counts = [reader.items for reader in self._readers]
        t0 = self.clock.now_ns()
        next_t = t0
        waiting_since_ns = t0
        while True:
            if self._stop_requested:
                return None
            next_t = self._sleep_to(next_t)
            now = self.clock.now_ns()
            reading = self.rig.teleop.read()
            fresh = reading is not None and now - reading.timestamp_ns <= self.control.teleop_timeout_ms * 1e6
            state = self._robot_state(None)
            source_ready = state is not None and self.source.ready(reading if fresh else None, state)
            if not self.rig.realtime:  # simulated time: give the readers the data produced so far
                for r, c in zip(self._readers, counts, strict=True):
                    r.wait_for(lambda r=r, c=c: r.items > c or self._caught_up(r), 1.0)
            streams_ok = all(r.items > c for r, c in zip(self._readers, counts, strict=True))
            if streams_ok and source_ready:
                return next_t
            if not streams_ok and now - waiting_since_ns > READY_TIMEOUT_S * NS:
                silent = [r.stream for r, c in zip(self._readers, counts, strict=True) if r.items <= c]
                detail = "; ".join(f"{r.stream}: {r.device_error}" for r in self._readers if r.device_error)
                raise HtouchError(f"no data from the {' and '.join(silent)} for {READY_TIMEOUT_S:.0f} s "
                                  f"after homing{': ' + detail if detail else ''}")
            self._send(Action.hold(self._gripper), state, None, now)
            self._drain_emitters()
            next_t += self.period_ns

    def _tick_from_now(self, tick: int) -> int:
        """`tick`, or the first tick on its grid from now on if more than a period has passed since it."""
        late_ns = self.clock.now_ns() - tick
        if late_ns <= self.period_ns:
            return tick
        return tick + -(-late_ns // self.period_ns) * self.period_ns

    def _sleep_to(self, t_ns: int) -> int:
        """Sleep until the tick t_ns; returns the scheduled time of this tick (re-aligned after an overrun).
        An overrun is a tick that woke more than one period late: on the loop clock, or (a paced rig) on
        the wall clock since the previous tick."""
        self.clock.sleep_until(t_ns)
        now = self.clock.now_ns()
        wall = time.monotonic_ns()
        late_wall = (self.rig.realtime and self._last_wake_wall is not None
                     and wall - self._last_wake_wall > 2 * self.period_ns)
        self._last_wake_wall = wall
        if now - t_ns > self.period_ns:
            self.timing.overruns += 1
            return now
        if late_wall:
            self.timing.overruns += 1
        return t_ns

    def _record(self, rec: Recording, tick: int) -> tuple[str, int]:
        """The control loop of one episode; returns how it ended and the stop time."""
        max_ns = int(self.control.max_episode_s * NS)
        last_wake: int | None = None
        last_wall: int | None = None
        while True:
            if self._stop_requested:
                return "interrupted", self.clock.now_ns()
            self._check_fatal()
            tick = self._sleep_to(tick)
            wake = self.clock.now_ns()
            wall = self._last_wake_wall
            work_start = time.perf_counter_ns()
            if last_wake is not None:
                self.timing.periods_ns.append(wake - last_wake)
                self.timing.wall_periods_ns.append(wall - last_wall)
            last_wake, last_wall = wake, wall
            if wake - rec.start_ns >= max_ns - self.period_ns // 2:
                return "time limit", wake
            self.timing.ticks += 1
            if self._exact and self.source.wants_observation():
                self._wait_until_drained()
            elif not self.rig.realtime:
                self._wait_for_readers(wake)
            end = self._step(rec, wake)
            self.timing.work_ns.append(time.perf_counter_ns() - work_start)
            if end is not None:
                return end, self.clock.now_ns()
            tick += self.period_ns

    def _caught_up(self, reader: StreamReader) -> bool:
        """The reader has handled everything its device had. On a simulated clock, the device produces
        inside robot.apply(), so only an empty read that ended after the last apply() says so."""
        return reader.idle_since(self._applied_wall_ns) if not self.rig.realtime else reader.idle

    def _wait_for_readers(self, now: int) -> None:
        """On a simulated clock, let the readers catch up so that the loop never outruns them."""
        lag = max(min(int(FAST_LAG_S * NS), int(self.control.camera_stall_ms * 1e6 / 2)), 2 * self.period_ns)
        for reader in self._readers:
            reader.wait_for(lambda r=reader: (r.last_ts is not None and r.last_ts >= now - lag)
                            or self._caught_up(r), 1.0)

    def _wait_until_drained(self) -> None:
        """On a simulated clock, before a source looks at the observation: every frame and block captured up
        to now (inside the last robot.apply()) has been handed out, so what it sees never depends on thread
        timing."""
        for reader in self._readers:
            reader.drained(1.0)

    def _check_fatal(self) -> None:
        for reader in self._readers:
            if reader.fatal is not None:
                e = reader.fatal
                if isinstance(e, WriterError):
                    raise e
                raise HtouchError(f"the {reader.stream} reader failed: {type(e).__name__}: {e}") from e

    def _step(self, rec: Recording, now: int) -> str | None:
        """One control tick while recording. Returns an end reason, or None to go on."""
        writer = rec.writer
        camera = self._readers[0]
        self.faults.check_camera(rec, now, camera.last_ts, lambda: self._caught_up(camera), camera.device_error)
        # Teleop: the newest reading, recorded when it is new; silence over the timeout holds the robot.
        reading = self.rig.teleop.read()
        if reading is not None and reading.timestamp_ns != self._last_teleop_ts:
            self._last_teleop_ts = reading.timestamp_ns
            if reading.timestamp_ns >= rec.start_ns:
                self._record_teleop(writer, reading)
        fresh = self.faults.check_teleop(rec, now, reading, watched=self.source.needs_teleop)

        state = self._robot_state(rec)
        command: SourceCommand | None = None
        if state is not None:
            if state.timestamp_ns != self._last_state_ts and state.timestamp_ns >= rec.start_ns:
                self._last_state_ts = state.timestamp_ns
                writer.state(state.timestamp_ns, state.ee_pose, state.joints, state.gripper_width)
                self.rates["state"].add(state.timestamp_ns)
            if fresh or not self.source.needs_teleop:
                command = self.source.command(reading if fresh else None, state, now)
        action = command.action if command is not None and command.action is not None else None
        self._send(action if action is not None else Action.hold(self._gripper), state, rec, now,
                   command.clipped if command is not None else ())

        for emitter in self.rig.event_emitters:
            for t, kind, detail in emitter.pop_events():
                if kind in LOOP_EVENTS:
                    self._say(f"{kind}: {', '.join(f'{k} {v}' for k, v in detail.items())}")
                    if kind == "teleop_lost":
                        self.faults.teleop_lost_reason = str(detail.get("reason", detail.get("message", "")))[:80]
                elif rec.accepts(int(t)):
                    self._event(rec, int(t), kind, **detail)

        if command is not None and command.command in END_COMMANDS:
            return command.command
        if self.faults.robot_gave_up():
            return "robot error"
        return None

    def _record_teleop(self, writer: EpisodeWriter, reading: TeleopReading) -> None:
        names = self.rig.streams.teleop
        writer.teleop(reading.timestamp_ns, np.asarray(reading.controller_pose, dtype=float),
                      [bool(reading.buttons.get(n, False)) for n in names.button_names],
                      [float(reading.analog.get(n, 0.0)) for n in names.analog_names])
        self.rates["teleop"].add(reading.timestamp_ns)

    def _robot_state(self, rec: Recording | None) -> RobotState | None:
        """The robot state, or None while the robot is in error (recorded once, recover() tried)."""
        try:
            state = self.rig.robot.state()
            error = state.error
        except DeviceError as e:
            state, error = None, str(e)
        if error is None:
            return state
        self._robot_fault(rec, error)
        return None

    def _robot_fault(self, rec: Recording | None, error: str) -> None:
        self.faults.robot_error(rec, self.clock.now_ns(), error)
        try:
            self.rig.robot.recover()
        except DeviceError as e:
            self.message = f"robot error: {error}; recover failed: {e}"

    def _send(self, action: Action, state: RobotState | None, rec: Recording | None, now: int,
              clipped: tuple[str, ...] = ()) -> None:
        """Every command goes through the safety filter; a robot in error (no state) holds still. `clipped`:
        what a filter with the same limits inside the source changed already (this pass then changes nothing
        more: the filter is idempotent), counted with the episode's safety clips."""
        if state is None:
            filtered = self.safety(Action.hold(self._gripper), np.full(3, np.nan))
        else:
            filtered = self.safety(action, state.ee_pose[:3])
        command = filtered.action
        self._gripper = command.gripper
        t = self.clock.now_ns()
        if rec is not None and (self._last_action_ts is None or t > self._last_action_ts) and t >= rec.start_ns:
            self._last_action_ts = t
            rec.writer.action(t, command.delta_ee, command.gripper)
            rec.safety_clips.update(set(filtered.reasons) | set(clipped))
            self.rates["action"].add(t)
        t_apply = time.perf_counter_ns()
        try:
            self.rig.robot.apply(command)
        except DeviceError as e:
            self._robot_fault(rec, str(e))
            return
        finally:
            self._applied_wall_ns = time.monotonic_ns()
            if rec is not None:
                self.timing.apply_ns.append(time.perf_counter_ns() - t_apply)
        if state is not None:  # a tick with a good state and a command taken: the error is over
            self.faults.robot_ok()

    # ---------------------------------------------------------------- ending an episode

    def _finish(self, rec: Recording, end: str, stop_ns: int) -> None:
        self.phase = "saving"
        with self._route_lock:
            rec.stop_ns = stop_ns
        # Everything captured before the stop goes in: wait for each reader to pass the stop time or run dry.
        drain_s = max(self.control.camera_stall_ms / 1e3, 2 * READ_TIMEOUT_S) + 0.25
        for reader in self._readers:
            reader.drained_past(stop_ns, drain_s)
        with self._route_lock:
            self._recording = None
        self._check_fatal()
        writer = rec.writer
        outcome = self.source.outcome(end) if end != "discard" else None
        if outcome is not None and outcome.success is not None:
            detail = {} if outcome.by == "operator" else {"by": outcome.by}
            writer.event(stop_ns, "success" if outcome.success else "failure", **detail)
        writer.event(stop_ns, "stop", reason=end)
        duration = (stop_ns - rec.start_ns) / NS
        counts = {"frame_drop": rec.frames_dropped, "camera_stall": rec.camera_stalls,
                  "audio_overflow": rec.audio_overflows, "teleop_lost": rec.teleop_losses,
                  "robot_error": rec.robot_errors}
        info: dict[str, Any] = {}
        if outcome is None:
            writer.discard()
            self.result.discarded.append(rec.index)
            result = "discarded"
            self._say(f"episode {rec.index} discarded ({duration:.1f} s); recording it again")
        else:
            info = {"end": end, "duration_s": round(duration, 3), "frames_dropped": rec.frames_dropped,
                    "safety_clips": dict(rec.safety_clips), "loop_overruns": self.timing.overruns}
            if self.rig.task_success is not None:
                info["task_success"] = bool(self.rig.task_success())
            info.update(outcome.info)
            writer.commit(outcome.success, **info)
            self.result.committed.append(rec.index)
            result = {True: "success", False: "failure", None: "unlabelled"}[outcome.success]
            self._say(f"episode {rec.index} saved as {result} ({duration:.1f} s, {rec.frames} frames, "
                      f"{rec.frames_dropped} dropped, {len(self.result.committed)}/{self.target} committed)")
        self.result.outcomes.append(EpisodeOutcome(rec.index, result, duration, rec.frames, rec.frames_dropped,
                                                   {k: v for k, v in counts.items() if v},
                                                   {**rec.info, **info} if info else {}))
        self.on_outcome(self.result.outcomes[-1])
        if end == "robot error":
            self.result.error = f"the robot stayed in error; the episode was saved {result}"

    # ---------------------------------------------------------------- for the panel

    def status(self) -> LiveStatus:
        rec = self._recording
        now = self.clock.now_ns()
        streams = self.rig.streams
        nominal = {"camera": streams.camera.rate_hz, "audio": streams.audio.rate_hz, "state": self.control.rate_hz,
                   "action": self.control.rate_hz, "teleop": streams.teleop.rate_hz}
        last = self._last_teleop_ts
        return LiveStatus(
            phase=self.phase, message=self.message, episode_index=rec.index if rec else None,
            attempt=self.attempt, committed=len(self.result.committed), target=self.target,
            elapsed_s=(now - rec.start_ns) / NS if rec else 0.0,
            rates={k: (m.rate(), nominal[k]) for k, m in self.rates.items()},
            audio=self.audio_levels, audio_channel_names=list(streams.audio.channel_names),
            frames_dropped=rec.frames_dropped if rec else 0, camera_stalls=rec.camera_stalls if rec else 0,
            audio_overflows=rec.audio_overflows if rec else 0, teleop_losses=rec.teleop_losses if rec else 0,
            robot_errors=rec.robot_errors if rec else 0,
            writer_dropped=rec.writer.dropped if rec else {},
            clutch=bool(self.source.engaged), gripper=self._gripper,
            teleop_age_ms=(now - last) / 1e6 if last is not None else None, teleop_lost=self.faults.teleop_lost,
            loop_p50_ms=self.timing.percentile_ms("wall_periods_ns", 50, last=300),
            loop_p99_ms=self.timing.percentile_ms("wall_periods_ns", 99, last=300),
            work_p99_ms=self.timing.percentile_ms("work_ns", 99, last=300),
            overruns=self.timing.overruns, nominal_period_ms=self.period_ns / 1e6,
            recent_events=[(t / NS, k) for t, k in list(self.recent_events)],
            dataset_root=str(self.dataset.root), now_ns=now)
