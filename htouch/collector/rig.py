"""A rig: the devices the recording loop drives, on one clock, and what it knows of the task.

`htouch.rigs.build_rig` makes one from a rig file (the simulated rig or the real one); the loop only ever
sees this bundle of device interfaces, so it never knows which kind it drives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from htouch.collector.devices import Camera, Clock, Microphones, Robot, Teleop, TeleopReading
from htouch.dataset.schema import StreamSpecs

SIM_OPERATORS = ("scripted", "keyboard")
REAL_OPERATORS = ("quest", "keyboard")
NO_OPERATOR = "none"  # the simulated rig with nobody at the controls (a policy evaluated on its own)


@dataclass
class Rig:
    camera: Camera
    microphones: Microphones
    teleop: Teleop
    robot: Robot
    clock: Clock
    streams: StreamSpecs  # the stream specs stored in the dataset
    kind: str  # "sim" or "real"
    operator: str  # "scripted", "keyboard" or "quest"
    realtime: bool  # the clock paces to the wall clock (False: simulated time, as fast as it goes)
    description: str = ""  # one line for the user: what is driven by what
    event_emitters: list[Any] = field(default_factory=list)  # objects with pop_events() (sim contacts, ...)
    task_success: Callable[[], bool] | None = None  # ground truth of the task (simulated rig)
    task_failed: Callable[[], bool] | None = None  # the task can no longer succeed (a simulated part broke)
    task_progress: Callable[[], float] | None = None  # the task's reward in [0, 1] (simulated rig)
    info: dict[str, Any] = field(default_factory=dict)  # stored with every episode
    episode_info: Callable[[], dict[str, Any]] | None = None  # per-episode facts, asked after homing
    help: str = ""  # the operator's keys, shown in the panel
    resume: Callable[[Any], None] | None = None  # continue after what a resumed dataset already holds
    closers: list[Callable[[], None]] = field(default_factory=list)

    @property
    def human(self) -> bool:
        return self.operator not in ("scripted", NO_OPERATOR)

    def close(self) -> None:
        for close in reversed(self.closers):
            close()
        self.closers.clear()


class NoOperator:
    """The teleop of a simulated rig nobody operates: it never has a reading (the loop's source must not
    need one: a policy evaluated on its own)."""

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def read(self) -> TeleopReading | None:
        return None
