"""A scripted expert that teleoperates the simulated rig through the Teleop interface, like a person.

It never writes actions. Each control tick it moves a virtual Quest controller (a pose in the headset
frame), holds or releases the grip (the clutch), pulls the trigger (the gripper) and presses A (success)
or B (failure); the recording loop maps that with the same ClutchMapping and SafetyFilter as a human's
controller. To plan it reads the simulation's privileged state (where the objects are), and it reacts
to contacts when the microphones hear them (the physics' heard contacts), after a human reaction time.

Human-likeness, all drawn from the seed: minimum-jerk reaches at a speed drawn per reach, hand tremor
and slow drift, pauses between phases, reaches that first land off target and are corrected, clutch
re-grabs during long reaches (release, move the hand back, grab again), noisy estimates of where things
are, and retries when an attempt fails (a lost grasp, a pancake that did not turn over).

A deaf operator (`deaf=True`) is the same person without contact information: where the hearing one
moves until it hears the decisive contact (the end stop, the table, the container's floor), the deaf one
moves to where that contact is in the average episode (the task's mean layout) and stops there. It never
asks the world what was heard. The gap between the two success rates is what hearing is worth in a task
(`htouch.sim.hearing`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

from htouch.collector.devices import Action, TeleopReading
from htouch.collector.mapping import ClutchMapping, axis_remap_matrix
from htouch.collector.safety import SafetyFilter
from htouch.dataset.schema import NS
from htouch.sim.scene import HOME_ROT
from htouch.sim.tasks import FlipTask, ScoopTask, ZipTask

Script = Iterator[None]  # a generator: each `yield` is one control tick


@dataclass
class OperatorStyle:
    """How the simulated person moves. Ranges are drawn uniformly per use."""

    reach_speed_m_s: tuple[float, float] = (0.08, 0.14)  # peak speed of a free reach
    approach_speed_m_s: tuple[float, float] = (0.012, 0.025)  # feeling for a contact
    work_speed_m_s: tuple[float, float] = (0.035, 0.06)  # pulling, sliding, dragging in contact
    lift_speed_m_s: tuple[float, float] = (0.05, 0.09)  # lifting away after the work
    reaction_s: tuple[float, float] = (0.12, 0.25)  # from hearing a contact to acting on it
    tremor_m: float = 0.0006  # RMS of the fast hand tremor ...
    tremor_tau_s: float = 0.05  # ... correlated over this long
    drift_m: float = 0.0015  # RMS of the slow hand drift
    drift_tau_s: float = 0.8
    tremor_rad: float = 0.002
    pause_p: float = 0.35  # chance of a pause between phases
    pause_s: tuple[float, float] = (0.1, 0.6)
    correction_p: float = 0.3  # chance that a reach lands off target first and is corrected
    correction_m: tuple[float, float] = (0.008, 0.02)
    regrab_p: float = 0.2  # chance of a clutch re-grab during a long reach
    estimate_m: float = 0.003  # RMS error of the person's idea of where an object is
    max_attempts: int = 3


class ScriptedOperator:
    """A Teleop for the simulated rig: ScriptedOperator(rig, seed=0). See the module docstring."""

    def __init__(self, rig, seed: int = 0, style: OperatorStyle | None = None, deaf: bool = False):
        self.rig = rig
        self.deaf = bool(deaf)
        self.task = rig.task
        self.world = rig.world
        self.style = style or OperatorStyle()
        self.seed = int(seed)
        mapping = rig.config.mapping
        self.remap = axis_remap_matrix(mapping.axis_remap)
        self.scale = float(mapping.motion_scale) or 1.0
        self.button_names = ("A", "B", "RThU", "RJ", "RG", "RTr")
        self.outcome: str | None = None  # "success" or "failure" once the episode's button is pressed
        self.attempts = 0
        self._episode: int | None = None
        self._reading: TeleopReading | None = None
        self._script: Script | None = None
        self._t0 = 0
        self.t = 0.0  # seconds since the episode's script started

    # -------------------------------------------------------------- Teleop

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def read(self) -> TeleopReading:
        """The controller's state now. The script advances one step per new clock time."""
        now = self.rig.clock.now_ns()
        if self._reading is not None and self._reading.timestamp_ns == now:
            return self._reading
        if self.rig.episode_index != self._episode:
            self._begin(self.rig.episode_index, now)
        self.t = (now - self._t0) / NS
        if self._script is not None:
            try:
                next(self._script)
            except StopIteration:
                self._script = None
        self._update_hand()
        self._reading = self._compose(now)
        return self._reading

    # -------------------------------------------------------------- state

    def _begin(self, episode: int, now: int) -> None:
        self._episode = episode
        self._t0 = now
        self.t = 0.0
        self.rng = np.random.default_rng([self.seed, episode, 7])
        self.outcome = None
        self.attempts = 0
        self.grip = False
        self.trigger = 1.0 - self.task.home_opening
        self.buttons: set[str] = set()
        # The person's hand, in robot-frame axes (the mapping's remap applied), and their intent for the EE.
        self.hand_pos = self.remap @ np.array([0.15, -0.35, -0.35])
        self.hand_rot = Rotation.identity()
        self.want_pos = self.world.tcp_position
        self.want_rot = self.world.tcp_rotation
        self._anchor: tuple[np.ndarray, Rotation, np.ndarray, Rotation] | None = None
        self._drift = np.zeros(3)
        self._tremor = np.zeros(3)
        self._wobble = np.zeros(3)
        scripts = {ZipTask: zip_script, FlipTask: flip_script, ScoopTask: scoop_script}
        self._script = scripts[type(self.task)](self)

    def _update_hand(self) -> None:
        """Move the hand so that the mapped target is the intent, plus tremor and drift."""
        s, rng = self.style, self.rng
        dt = 1.0 / self.rig.config.control.rate_hz
        self._drift = _ar1(self._drift, dt / s.drift_tau_s, s.drift_m, rng)
        self._tremor = _ar1(self._tremor, dt / s.tremor_tau_s, s.tremor_m, rng)
        self._wobble = _ar1(self._wobble, dt / s.tremor_tau_s, s.tremor_rad, rng)
        shake = self._tremor + self._drift
        turn = Rotation.from_rotvec(self._wobble)
        if self.grip and self._anchor is not None:
            hand0, hand_rot0, robot0, robot_rot0 = self._anchor
            self.hand_pos = hand0 + (self.want_pos - robot0) / self.scale
            self.hand_rot = self.want_rot * robot_rot0.inv() * hand_rot0
        self._shown_pos = self.hand_pos + shake
        self._shown_rot = turn * self.hand_rot

    def _compose(self, now: int) -> TeleopReading:
        m = self.remap
        pose = np.eye(4)
        pose[:3, :3] = m.T @ self._shown_rot.as_matrix() @ m  # back to the headset frame
        pose[:3, 3] = m.T @ self._shown_pos
        buttons = {name: name in self.buttons for name in self.button_names}
        buttons["RG"] = self.grip
        buttons["RTr"] = self.trigger > 0.5
        analog = {"rightTrig": float(self.trigger), "rightGrip": 1.0 if self.grip else 0.0,
                  "rightJS_x": 0.0, "rightJS_y": 0.0}
        return TeleopReading(now, pose, buttons, analog)

    # -------------------------------------------------------------- building blocks (generators)

    def uniform(self, lo_hi: tuple[float, float]) -> float:
        return float(self.rng.uniform(*lo_hi))

    def robot_pos(self) -> np.ndarray:
        return self.world.tcp_position

    def robot_rot(self) -> Rotation:
        return self.world.tcp_rotation

    def wait(self, seconds: float) -> Script:
        end = self.t + seconds
        while self.t < end:
            yield

    def maybe_pause(self) -> Script:
        if self.rng.random() < self.style.pause_p:
            yield from self.wait(self.uniform(self.style.pause_s))

    def clutch(self, on: bool) -> Script:
        """Press or release the grip. A press anchors the hand and the robot where they are."""
        if on and not self.grip:
            self._anchor = (self.hand_pos.copy(), self.hand_rot, self.robot_pos(), self.robot_rot())
            self.want_pos, self.want_rot = self.robot_pos(), self.robot_rot()
        self.grip = on
        yield

    def squeeze(self, value: float, seconds: float = 0.25) -> Script:
        """Move the trigger to `value` (1 = pulled = gripper closed) over `seconds`."""
        start, t0 = self.trigger, self.t
        while self.t < t0 + seconds:
            self.trigger = start + (value - start) * min(1.0, (self.t - t0) / seconds)
            yield
        self.trigger = value

    def press(self, button: str) -> Script:
        self.buttons.add(button)
        yield from self.wait(0.2)
        self.buttons.discard(button)
        yield

    def reach(self, pos: np.ndarray, rot: Rotation | None = None, speed: tuple[float, float] | None = None,
              correct: bool = True, tol_m: float = 0.006, regrab: bool = True) -> Script:
        """A minimum-jerk reach of the intent to pos/rot; maybe first off target and corrected, maybe with
        a clutch re-grab halfway; then wait (briefly) for the robot to get there."""
        s = self.style
        rot = self.want_rot if rot is None else rot
        pos = np.asarray(pos, float)
        if correct and self.rng.random() < s.correction_p:
            miss = self.rng.standard_normal(3)
            miss[2] = abs(miss[2])  # people miss high rather than into the table
            miss *= self.uniform(s.correction_m) / np.linalg.norm(miss)
            yield from self._min_jerk(pos + miss, rot, speed or s.reach_speed_m_s, regrab)
            yield from self.wait(self.uniform((0.15, 0.4)))  # sees the miss
        yield from self._min_jerk(pos, rot, speed or s.reach_speed_m_s, regrab)
        end = self.t + 1.0
        while self.t < end and np.linalg.norm(self.robot_pos() - pos) > tol_m:
            yield

    def _min_jerk(self, pos: np.ndarray, rot: Rotation, speed: tuple[float, float], regrab: bool) -> Script:
        p0, r0 = self.want_pos.copy(), self.want_rot
        dist = float(np.linalg.norm(pos - p0))
        angle = float((rot * r0.inv()).magnitude())
        peak = self.uniform(speed)
        duration = max(1.875 * dist / peak, angle / 1.2, 0.2)  # min-jerk peak speed = 1.875 x mean speed
        slerp = Slerp([0.0, 1.0], Rotation.concatenate([r0, rot]))
        regrab_at = self.uniform((0.35, 0.65)) if regrab and dist > 0.12 and self.rng.random() < self.style.regrab_p \
            else None
        t0 = self.t
        while True:
            u = min(1.0, (self.t - t0) / duration)
            if regrab_at is not None and u >= regrab_at:
                regrab_at = None
                yield from self._regrab()
                p0, r0 = self.want_pos.copy(), self.want_rot  # continue from where the robot was left
                dist = float(np.linalg.norm(pos - p0))
                slerp = Slerp([0.0, 1.0], Rotation.concatenate([r0, rot]))
                duration, t0 = max(1.875 * dist / peak, 0.2), self.t
                continue
            k = min(1.0, u ** 3 * (10 - 15 * u + 6 * u * u))
            self.want_pos = p0 + (pos - p0) * k
            self.want_rot = slerp(k)
            if u >= 1.0:
                return
            yield

    def _regrab(self) -> Script:
        """Release the clutch, bring the hand back toward the body, grab again (the robot holds meanwhile)."""
        yield from self.clutch(False)
        start, back = self.hand_pos.copy(), self.hand_pos + np.array([-0.06, 0.0, 0.02])
        t0, duration = self.t, self.uniform((0.25, 0.5))
        while self.t < t0 + duration:
            self.hand_pos = start + (back - start) * (self.t - t0) / duration
            yield
        yield from self.clutch(True)

    def move_until(self, direction: np.ndarray, speed: tuple[float, float], max_dist: float,
                   cue: Callable[[], bool], react: bool = True) -> Script:
        """Move the intent along `direction` at a steady speed until `cue()` is true (then, if `react`, keep
        going for a reaction time) or max_dist is covered. Returns whether the cue came."""
        direction = np.asarray(direction, float) / np.linalg.norm(direction)
        v = self.uniform(speed)
        p0, t0 = self.want_pos.copy(), self.t
        cued_at = None
        while True:
            yield
            travelled = v * (self.t - t0)
            if travelled >= max_dist:
                return cued_at is not None
            self.want_pos = p0 + direction * travelled
            if cued_at is None and cue():
                cued_at = self.t + (self.uniform(self.style.reaction_s) if react else 0.0)
            if cued_at is not None and self.t >= cued_at:
                return True

    def move_to_contact(self, direction: np.ndarray, speed: tuple[float, float], max_dist: float, touched: str,
                        expected: Callable[[], bool]) -> Script:
        """Move toward the decisive contact with `touched`: until it is heard (after a reaction time) or, for
        a deaf operator, until `expected()` says the intent is where that contact is in the average episode.
        Returns whether the move ended on its cue rather than at max_dist."""
        if self.deaf:
            return (yield from self.move_until(direction, speed, max_dist, expected, react=False))
        return (yield from self.move_until(direction, speed, max_dist, self.heard(touched)))

    def contact_point(self) -> np.ndarray:
        """Where the operator believes its move to contact met the surface: where the robot stopped (it heard
        the contact there) or, deaf, where its own move ended (the surface of the average episode)."""
        return self.want_pos.copy() if self.deaf else self.robot_pos()

    def hold_here(self, press_m: np.ndarray | None = None) -> None:
        """Stop the intent where the robot is (optionally pressed by press_m further)."""
        self.want_pos = self.robot_pos() + (0 if press_m is None else np.asarray(press_m))

    def heard(self, touched: str) -> Callable[[], bool]:
        """Did the microphones hear a contact with `touched` during the last tick?"""
        steps = int(round(self.rig.period_ns / self.rig.dt_ns)) + 1
        return lambda: self.world.heard_within(touched, steps)

    def guess(self, point: np.ndarray, horizontal_only: bool = True) -> np.ndarray:
        """A person's estimate of a seen point: off by a few millimetres."""
        err = self.style.estimate_m * self.rng.standard_normal(3)
        if horizontal_only:
            err[2] = 0.0
        return np.asarray(point, float) + err

    def tcp_for(self, tool_point_home: np.ndarray, world_point: np.ndarray, rot: Rotation) -> np.ndarray:
        """Where the TCP must be for a tool point (given in the home frame) to be at world_point."""
        return np.asarray(world_point) - (rot * HOME_ROT.inv()).apply(tool_point_home)

    def finish(self, success: bool) -> Script:
        self.outcome = "success" if success else "failure"
        yield from self.press("A" if success else "B")
        while True:  # done: wait for the next episode
            yield

    def start_episode(self) -> Script:
        yield from self.wait(self.uniform((0.2, 0.6)))
        yield from self.clutch(True)
        yield from self.wait(self.uniform((0.1, 0.3)))

    def out_of_time(self) -> bool:
        return self.t > self.task.max_seconds


def _ar1(x: np.ndarray, rate: float, rms: float, rng: np.random.Generator) -> np.ndarray:
    """One step of a first-order autoregressive (Ornstein-Uhlenbeck) process with stationary RMS `rms`."""
    a = math.exp(-rate)
    return a * x + math.sqrt(1 - a * a) * rms * rng.standard_normal(3)


# ------------------------------------------------------------------------------------------- scripts


def zip_script(op: ScriptedOperator) -> Script:
    """The scripted zip: grasp the slider, pull it along the track until the end stop is heard (deaf: to
    where the end stop is on average), release and lift; grasp again if the slider slipped or stuck."""
    task: ZipTask = op.task
    yield from op.start_episode()
    rot = task.home_rotation
    while op.attempts < op.style.max_attempts and not op.out_of_time() and task.damage is None:
        op.attempts += 1
        tab = op.guess(task.tab_position())
        yield from op.squeeze(0.0, 0.2)  # open
        yield from op.reach(tab + [0, 0, op.uniform((0.05, 0.08))], rot)
        yield from op.maybe_pause()
        yield from op.reach(tab + [0, 0, op.uniform((-0.001, 0.003))], rot,
                            speed=tuple(2 * v for v in op.style.approach_speed_m_s), correct=False, tol_m=0.003)
        yield from op.squeeze(1.0, op.uniform((0.2, 0.4)))
        yield from op.wait(op.uniform((0.2, 0.4)))
        # Pull along the track to where the end stop could first be, then slowly on until the end stop is
        # heard (through the slider and the fingers). The track is seen; where its end stop is, is not.
        along, track_y = np.array([0, 1.0, 0]), task.track_origin()[1]
        nearest = track_y + task.END_FACE_Y[0] - task.SLIDER_FRONT - 0.01
        yield from op.move_until(along, op.style.work_speed_m_s, max(nearest - op.want_pos[1], 0.0),
                                 lambda: False)
        remaining = track_y + task.END_FACE_Y[1] - task.SLIDER_FRONT + 0.02 - op.want_pos[1]
        yield from op.move_to_contact(along, op.style.approach_speed_m_s, max(remaining, 0.02), "end_stop",
                                      lambda track_y=track_y: op.want_pos[1] >= track_y + task.mean_end_y())
        op.want_pos = op.contact_point()
        yield from op.wait(op.uniform((0.1, 0.3)))
        yield from op.squeeze(0.0, op.uniform((0.2, 0.35)))
        yield from op.reach(op.robot_pos() + [0, 0, op.uniform((0.05, 0.08))], rot, speed=op.style.lift_speed_m_s,
                            correct=False)
        if task.success():
            yield from op.maybe_pause()
            yield from op.finish(True)
        # The slider slipped out of the fingers or stuck: go back and grasp it again.
    yield from op.finish(task.success())


def flip_script(op: ScriptedOperator) -> Script:
    """The scripted flip: lower the spatula until it is heard touching the table, slide it under the
    pancake, turn the pancake over about its far edge and back off; try again if it did not turn."""
    task: FlipTask = op.task
    yield from op.start_episode()
    home = task.home_rotation
    tip = task.blade_tip()
    while op.attempts < op.style.max_attempts and not op.out_of_time() and task.damage is None:
        op.attempts += 1
        cake = op.guess(task.cake_position())
        near = cake[0] - task.HALF - task.RIM
        above = task.TABLE_Z[1] + 0.02  # above the highest table
        start = np.array([near - op.uniform((0.025, 0.04)), cake[1], above])
        yield from op.reach(op.tcp_for(tip, start, home), home)
        yield from op.maybe_pause()
        # Lower the blade until it is heard touching the table, then press lightly.
        touched = yield from op.move_to_contact(
            np.array([0, 0, -1.0]), op.style.approach_speed_m_s, above - task.TABLE_Z[0] + 0.02, "table_top",
            lambda: (op.want_pos + (home * HOME_ROT.inv()).apply(tip))[2] <= task.mean_table_z())
        if not touched:
            continue
        down = home * HOME_ROT.inv()
        table_z = op.contact_point()[2] + down.apply(tip)[2]
        op.want_pos = op.contact_point() + [0, 0, -op.uniform((0.003, 0.006))]
        yield from op.wait(op.uniform((0.15, 0.3)))
        # Slide along the table under the pancake, watching it, until the tip is past its middle.
        past = op.uniform((0.0, 0.012))
        yield from op.move_until(np.array([1.0, 0, 0]), op.style.work_speed_m_s, 0.15,
                                 lambda down=down, past=past:
                                 (op.robot_pos() + down.apply(tip))[0] > task.cake_position()[0] + past)
        op.hold_here([0, 0, op.want_pos[2] - op.robot_pos()[2]])
        yield from op.maybe_pause()
        # Turn it over about its far edge: the tool swings up and over that edge.
        cake = op.guess(task.cake_position())
        pivot = np.array([cake[0] + task.HALF + task.RIM, op.robot_pos()[1], table_z])
        tcp0, rot0 = op.want_pos.copy(), op.want_rot
        duration, t0 = op.uniform((3.5, 4.5)), op.t
        turn = op.uniform((105.0, 115.0))
        while op.t < t0 + duration:
            u = (op.t - t0) / duration
            r = Rotation.from_euler("y", turn * u * u * (3 - 2 * u), degrees=True)
            op.want_pos, op.want_rot = pivot + r.apply(tcp0 - pivot), r * rot0
            yield
        yield from op.wait(op.uniform((0.4, 0.7)))
        # Back off, up and away, to the home orientation.
        yield from op.reach(op.want_pos + [-0.06, 0, 0.06], speed=op.style.lift_speed_m_s, correct=False)
        yield from op.reach(task.home_position + [0, 0, -0.03], home, correct=False)
        yield from op.wait(op.uniform((0.2, 0.4)))
        if task.success():
            yield from op.finish(True)
    yield from op.finish(task.success())


def scoop_script(op: ScriptedOperator) -> Script:
    """The scripted scoop: push the spoon down until it is heard touching the container's floor, drag it
    toward the far wall, tilt it level and lift it out; tip the beans back and try again if too few."""
    task: ScoopTask = op.task
    yield from op.start_episode()
    home = task.home_rotation
    tip = task.spoon_tip()
    while op.attempts < op.style.max_attempts and not op.out_of_time() and task.damage is None:
        op.attempts += 1
        pot = op.guess(task.pot_position())
        rim = task.rim_z()
        start = np.array([pot[0] + op.uniform((-0.006, 0.004)), pot[1], rim + op.uniform((0.02, 0.04))])
        yield from op.reach(op.tcp_for(tip, start, home), home)
        yield from op.maybe_pause()
        # Push the spoon down until it is heard touching the floor of the container, then press lightly.
        touched = yield from op.move_to_contact(
            np.array([0, 0, -1.0]), op.style.approach_speed_m_s, 0.14, "pot_floor",
            lambda: (op.want_pos + (home * HOME_ROT.inv()).apply(tip))[2] <= task.mean_floor_z())
        if not touched:
            yield from op.reach(op.want_pos + [0, 0, 0.1], home, correct=False)
            continue
        op.want_pos = op.contact_point() + [0, 0, -op.uniform((0.002, 0.004))]
        yield from op.wait(op.uniform((0.15, 0.3)))
        # Drag forward along the floor toward the far wall: the beans pile onto the spoon.
        tip_now = op.robot_pos() + (home * HOME_ROT.inv()).apply(tip)
        drag = pot[0] + task.INNER[0] - op.uniform((0.01, 0.016)) - tip_now[0]
        yield from op.reach(op.want_pos + [drag, 0, 0], home, speed=op.style.work_speed_m_s, correct=False,
                            regrab=False)
        # Tilt the bowl level about its centre while lifting it, then lift it out of the container.
        centre_home, _ = task.bowl_frame()
        centre = op.robot_pos() + (home * HOME_ROT.inv()).apply(centre_home)
        tcp0, rot0 = op.want_pos.copy(), op.want_rot
        tilt, rise = op.uniform((35.0, 45.0)), op.uniform((0.04, 0.06))
        duration, t0 = op.uniform((1.8, 2.4)), op.t
        while op.t < t0 + duration:
            u = (op.t - t0) / duration
            k = u * u * (3 - 2 * u)
            r = Rotation.from_euler("y", -tilt * k, degrees=True)
            op.want_pos, op.want_rot = centre + r.apply(tcp0 - centre) + [0, 0, rise * k], r * rot0
            yield
        tip_now = op.robot_pos() + (op.want_rot * HOME_ROT.inv()).apply(tip)
        lift = max(rim + op.uniform((0.05, 0.08)) - tip_now[2], 0.0)
        yield from op.reach(op.want_pos + [-0.01, 0, lift], speed=op.style.work_speed_m_s, correct=False,
                            regrab=False)
        yield from op.wait(op.uniform((0.4, 0.7)))
        if task.success():
            yield from op.finish(True)
        # Nothing (or too little) on the spoon: tip it back over the container and try again.
        yield from op.reach(op.want_pos, home, correct=False)
    yield from op.finish(task.success())


# ------------------------------------------------------------------------------------------- driving


@dataclass
class Outcome:
    command: str | None  # "success", "failure" or "discard" from the operator's buttons; None at the time limit
    success: bool  # the task's own predicate at the end
    progress: float
    seconds: float  # simulated
    ticks: int
    robot_errors: list[str]


def drive(rig, teleop, max_seconds: float = 60.0) -> Outcome:
    """Run one episode without recording, as the recording loop drives a rig: home, then per tick the
    teleop reading through ClutchMapping and the SafetyFilter into robot.apply(), until a button ends it."""
    mapping = ClutchMapping(rig.config.mapping)
    safety = SafetyFilter(rig.config.safety)
    rig.robot.home()
    gripper = rig.task.home_opening
    t0 = rig.clock.now_ns()
    ticks = 0
    command = None
    errors: list[str] = []
    while rig.clock.now_ns() - t0 < max_seconds * NS:
        reading = teleop.read()
        state = rig.robot.state()
        if state.error is not None:  # as the loop does: note it, recover, and re-anchor the clutch
            errors.append(state.error)
            rig.robot.recover()
            mapping.engaged = False
        mapped = mapping(reading, state)
        action = mapped.action if mapped is not None else Action.hold(gripper)
        filtered = safety(action, state.ee_pose[:3]).action
        gripper = filtered.gripper
        rig.robot.apply(filtered)
        ticks += 1
        if mapped.command is not None:
            command = mapped.command
            break
    return Outcome(command, bool(rig.task.success()), float(rig.task.progress()),
                   (rig.clock.now_ns() - t0) / NS, ticks, errors)
