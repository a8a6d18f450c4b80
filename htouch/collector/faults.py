"""The faults the recording loop notices while an episode records: a camera that stalls, a teleop device that
falls silent, a robot in error. Each is recorded once per occurrence as an event in the episode and counted
with it; the session goes on. This module owns when a fault begins and when it is over; the loop owns what
is done about it (holding the robot still, calling recover()).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from htouch.collector.config import ControlConfig
from htouch.collector.devices import TeleopReading

if TYPE_CHECKING:
    from htouch.collector.loop import Recording

ROBOT_GIVE_UP_S = 2.0  # a robot error that recover() cannot clear for this long ends the episode


class FaultMonitor:
    """Per-episode fault state. `event(rec, t_ns, kind, **detail)` records an event in the episode, `say`
    tells the operator, `resume` is called when control comes back after a fault (the action source
    re-anchors or re-plans). All times are on the loop clock (ns)."""

    def __init__(self, control: ControlConfig, event: Callable[..., None], say: Callable[[str], None],
                 resume: Callable[[], None]):
        self.control = control
        self._event, self._say, self._resume = event, say, resume
        self.camera_stalled = False
        self._stall_frame_ts = -1  # the newest frame when the current stall began
        self._camera_ref_ns = 0  # loop time from which camera silence is measured
        self.teleop_lost = False
        self.teleop_lost_reason = ""  # what the teleop device itself said about its loss, if anything
        self._teleop_ref_ns = 0  # loop time from which teleop silence is measured
        self._robot_error_since: int | None = None  # loop time the current robot error began
        self._robot_error_ticks = 0  # ticks in the current robot error (counted, so a stopped clock ends it too)

    def begin(self, start_ns: int) -> None:
        """A new episode starts at start_ns: each episode records its own faults."""
        self._camera_ref_ns = self._teleop_ref_ns = start_ns
        self.camera_stalled = self.teleop_lost = False
        self._robot_error_since, self._robot_error_ticks = None, 0

    def check_camera(self, rec: Recording, now: int, newest_ts: int | None, caught_up: Callable[[], bool],
                     device_error: str | None) -> None:
        """A stall: no frame for camera_stall_ms while the camera's reader has nothing queued (`caught_up`);
        once per stall, over when a newer frame arrives."""
        newest = newest_ts if newest_ts is not None else -1
        if self.camera_stalled:
            self.camera_stalled = newest <= self._stall_frame_ts
            return
        last_frame = max(newest, self._camera_ref_ns)
        if now - last_frame > self.control.camera_stall_ms * 1e6 and caught_up():
            self.camera_stalled = True
            self._stall_frame_ts = newest
            rec.camera_stalls += 1
            detail: dict[str, Any] = {"since_ms": round((now - last_frame) / 1e6, 1)}
            if device_error:
                detail["error"] = device_error[:120]
            self._event(rec, now, "camera_stall", **detail)

    def check_teleop(self, rec: Recording, now: int, reading: TeleopReading | None, watched: bool) -> bool:
        """Whether `reading` is fresh enough to act on (silence over teleop_timeout_ms is not). While
        `watched` (someone operates), losing it is recorded once and regaining it resumes control."""
        if reading is not None:
            self._teleop_ref_ns = max(self._teleop_ref_ns, reading.timestamp_ns)
        silent_ns = now - self._teleop_ref_ns
        fresh = reading is not None and silent_ns <= self.control.teleop_timeout_ms * 1e6
        if not watched:
            return fresh  # nobody operates (a policy on the simulated rig): silence is no fault
        if not fresh and not self.teleop_lost:
            self.teleop_lost = True
            rec.teleop_losses += 1
            detail: dict[str, Any] = {"silent_ms": round(silent_ns / 1e6, 1)}
            if self.teleop_lost_reason:
                detail["reason"] = self.teleop_lost_reason
            self._event(rec, now, "teleop_lost", **detail)
        elif fresh and self.teleop_lost:
            self.teleop_lost = False
            self.teleop_lost_reason = ""
            self._resume()
        return fresh

    def robot_error(self, rec: Recording | None, now: int, error: str) -> None:
        """The robot reported `error` this tick (rec None: no episode records yet)."""
        self._robot_error_ticks += 1
        if self._robot_error_since is None:
            self._robot_error_since = now
            self._say(f"robot error: {error}; recovering")
            if rec is not None:
                rec.robot_errors += 1
                self._event(rec, now, "robot_error", error=error[:160])
        self._resume()  # re-anchor (re-plan) once it moves again

    def robot_ok(self) -> None:
        """A tick with a good state and a command taken: the robot error, if any, is over."""
        self._robot_error_since = None
        self._robot_error_ticks = 0

    def robot_gave_up(self) -> bool:
        """The robot has stayed in error for ROBOT_GIVE_UP_S worth of ticks."""
        return self._robot_error_ticks > ROBOT_GIVE_UP_S * self.control.rate_hz
