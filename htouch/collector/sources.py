"""Where the recording loop's commands come from: the operator's controller, or a trained policy.

The loop (htouch.collector.loop.Recorder) owns timing, streams, recording, faults and the safety filter;
an `ActionSource` only decides, tick by tick, what the robot should do and when an episode is over. The
operator's controller through the clutch mapping (`TeleopSource`) records demonstrations; a policy
(`htouch.training.policy_source.PolicySource`) records rollouts through the very same loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from htouch.collector.devices import Action, AudioBlock, Frame, RobotState, TeleopReading
from htouch.collector.mapping import ClutchMapping, MappingConfig


@dataclass
class SourceCommand:
    action: Action | None  # None: hold still
    command: str | None = None  # "success", "failure" or "discard" ends the episode
    clipped: tuple[str, ...] = ()  # what a safety filter inside the source already changed (counted as clips)


@dataclass
class Outcome:
    """How an ended episode is labelled and what the source adds to its info."""

    success: bool | None  # None: unlabelled
    by: str = "operator"  # who labelled it ("operator", or "task" for a simulated rig's ground truth)
    info: dict[str, Any] = field(default_factory=dict)


class ActionSource(Protocol):
    kind: str  # "teleop" or "policy", recorded in every episode's info
    needs_teleop: bool  # teleop silence holds the robot (and is recorded); False: no operator is needed
    exact_observation: bool  # on a simulated clock, see every frame and block captured up to the tick
    ready_hint: str  # what the operator is told while the loop waits to start an episode
    engaged: bool  # the source is driving (teleop: the clutch is held); shown in the panel

    def observe_frame(self, frame: Frame) -> None:
        """Every camera frame the readers hand out (called from a reader thread)."""

    def observe_audio(self, block: AudioBlock) -> None:
        """Every audio block the readers hand out (called from a reader thread)."""

    def reset(self) -> None:
        """A new attempt: the robot is home."""

    def ready(self, reading: TeleopReading | None, state: RobotState) -> bool:
        """May the episode start? `reading` is the fresh teleop reading, None without one."""

    def begin(self, start_ns: int) -> None:
        """Recording starts at start_ns."""

    def wants_observation(self) -> bool:
        """The next command needs the newest observation (a policy about to re-plan)."""

    def command(self, reading: TeleopReading | None, state: RobotState, now_ns: int) -> SourceCommand:
        """This tick's command (the loop filters it); `reading` is None when no fresh reading is there."""

    def interrupted(self) -> None:
        """Motion stopped outside the source's control (teleop silence, a robot error): no jump on resuming."""

    def outcome(self, end: str) -> Outcome:
        """The label and info of an episode that ended with `end` (a command, "time limit", "robot error")."""

    def episode_info(self) -> dict[str, Any]:
        """Facts stored with every episode when it starts."""


def end_label(end: str) -> bool | None:
    """The success label an episode end gives: True for success, False for failure, None otherwise."""
    return {"success": True, "failure": False}.get(end)


class TeleopSource:
    """The operator's controller mapped through the clutch (DROID-style); buttons label and end episodes."""

    kind = "teleop"
    needs_teleop = True
    exact_observation = False

    def __init__(self, mapping: MappingConfig | None = None, start_on_clutch: bool = False):
        self.mapping = ClutchMapping(mapping)
        self.start_on_clutch = start_on_clutch
        self.ready_hint = "hold the grip to start recording" if start_on_clutch else "waiting for the streams"

    @property
    def engaged(self) -> bool:
        return self.mapping.engaged

    def observe_frame(self, frame: Frame) -> None:
        pass

    def observe_audio(self, block: AudioBlock) -> None:
        pass

    def reset(self) -> None:
        self.mapping.reset()

    def ready(self, reading: TeleopReading | None, state: RobotState) -> bool:
        if reading is None:
            return False
        return self.mapping(reading, state).engaged or not self.start_on_clutch

    def begin(self, start_ns: int) -> None:
        pass

    def wants_observation(self) -> bool:
        return False

    def command(self, reading: TeleopReading | None, state: RobotState, now_ns: int) -> SourceCommand:
        if reading is None:
            return SourceCommand(None)
        mapped = self.mapping(reading, state)
        return SourceCommand(mapped.action, mapped.command)

    def interrupted(self) -> None:
        self.mapping.engaged = False  # the next reading with the grip held re-anchors: no jump

    def outcome(self, end: str) -> Outcome:
        return Outcome(end_label(end))

    def episode_info(self) -> dict[str, Any]:
        return {"action_source": self.kind}
