"""Keyboard teleoperation: a virtual Quest controller driven from a terminal, for the simulated rig
(`htouch collect --operator keyboard`) or a real rig without a headset.

Each key press moves or turns the virtual controller by a fixed step. The controller pose lives in the
headset frame like a Quest's, and the keys are laid out in the robot base frame through the same axis
remap the ClutchMapping applies (default ["-z", "-x", "y"]), so `w` always moves the gripper forward
(+x), `a` left (+y), `r` up (+z), whatever the remap. The other keys stand for the controller's buttons:
the space bar toggles the grip (the clutch: motion only counts while it is on), `g` toggles the trigger
(the gripper), Enter is A (success), Backspace or `x` is B (failure), Delete or `z` is the joystick
press (discard and re-record). A button press shows in exactly one reading, so the mapping sees it go
down once.

The terminal is put in cbreak mode (keys arrive at once, not echoed; Ctrl-C still works) only if the
stream is a tty, and restored by stop(). A pipe works too (tests, scripted input). The pose is sampled
when read() is called, so readings are stamped with the clock then; if the input ends, the reading keeps
the time of the end so that the loop sees it go stale, and pop_events() reports teleop_lost.
"""

from __future__ import annotations

import io
import os
import select
import sys
import threading
from typing import Any, TextIO

import numpy as np
from scipy.spatial.transform import Rotation

from htouch.collector.devices import Clock, DeviceError, MonotonicClock, TeleopReading
from htouch.collector.mapping import MappingConfig, axis_remap_matrix

KEY_HELP = (
    "w/s forward/back   a/d left/right   r/f up/down   q/e yaw   i/k pitch   j/l roll\n"
    "space clutch on/off (move only while on)   g gripper close/open\n"
    "Enter success   Backspace or x failure   Delete or z discard"
)

# Keys as motions in the robot base frame: unit direction of a step.
MOVE_KEYS = {"w": (1, 0, 0), "s": (-1, 0, 0), "a": (0, 1, 0), "d": (0, -1, 0), "r": (0, 0, 1), "f": (0, 0, -1),
             "up": (1, 0, 0), "down": (-1, 0, 0), "left": (0, 1, 0), "right": (0, -1, 0)}
TURN_KEYS = {"q": (0, 0, 1), "e": (0, 0, -1), "i": (0, 1, 0), "k": (0, -1, 0), "j": (1, 0, 0), "l": (-1, 0, 0)}
BUTTON_KEYS = {"\n": "A", "\r": "A", "\x7f": "B", "\x08": "B", "x": "B", "delete": "RJ", "z": "RJ"}
ESCAPES = {"\x1b[3~": "delete", "\x1b[A": "up", "\x1b[B": "down", "\x1b[C": "right", "\x1b[D": "left"}
POLL_S = 0.1  # the reader thread checks for stop() this often


class KeyboardTeleop:
    """A Teleop (htouch.collector.devices) from key presses on `stream` (a terminal or a pipe)."""

    def __init__(self, clock: Clock | None = None, stream: TextIO | Any = None,
                 axis_remap: list[str] | None = None, step_m: float = 0.005, step_rad: float = 0.05):
        self.clock = clock or MonotonicClock()
        self.stream = sys.stdin if stream is None else stream  # sys.stdin as it is now, not at import
        self.remap = axis_remap_matrix(axis_remap or MappingConfig().axis_remap)  # robot = remap @ controller
        self.step_m = step_m
        self.step_rad = step_rad
        self._lock = threading.Lock()
        self._pose = np.eye(4)  # the virtual controller in the headset frame
        self._clutch = False
        self._gripper_closed = False
        self._presses: set[str] = set()
        self._pending = ""  # an escape sequence cut between two reads
        self._fd: int | None = None
        self._saved_tty: list | None = None
        self._thread: threading.Thread | None = None
        self._running = False
        self._started = False
        self._ended_ns: int | None = None
        self._events: list[tuple[int, str, dict]] = []
        self.keys_handled = 0
        self.connected = False

    # --- the Teleop interface

    def start(self) -> None:
        if self._running:
            return
        try:
            fd = self.stream.fileno()
        except (AttributeError, io.UnsupportedOperation):
            raise DeviceError(f"keyboard teleop reads a terminal or a pipe, not {type(self.stream).__name__}") from None
        if os.isatty(fd):
            import termios
            import tty

            self._saved_tty = termios.tcgetattr(fd)
            tty.setcbreak(fd)
        self._fd = fd
        self._running = self._started = self.connected = True
        self._ended_ns = None
        self._thread = threading.Thread(target=self._read_keys, name="keyboard", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._running = False
        if self._thread is not None:
            self._thread.join(timeout=2 * POLL_S + 1.0)
            self._thread = None
        if self._saved_tty is not None:
            import termios

            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved_tty)
            self._saved_tty = None
        self.connected = False

    def read(self) -> TeleopReading | None:
        """The virtual controller now (None before start()); a button press shows in one reading only."""
        with self._lock:
            if not self._started:
                return None
            presses, self._presses = self._presses, set()
            closed, clutch = self._gripper_closed, self._clutch
            stamp = self._ended_ns if self._ended_ns is not None else self.clock.now_ns()
            pose = self._pose.copy()
        buttons = {"A": "A" in presses, "B": "B" in presses, "RThU": False, "RJ": "RJ" in presses,
                   "RG": clutch, "RTr": closed}
        analog = {"rightTrig": float(closed), "rightGrip": float(clutch), "rightJS_x": 0.0, "rightJS_y": 0.0}
        return TeleopReading(stamp, pose, buttons, analog)

    def pop_events(self) -> list[tuple[int, str, dict]]:
        with self._lock:
            events, self._events = self._events, []
        return events

    # --- keys

    def press(self, key: str) -> None:
        """Act on one key (a character, or a name from ESCAPES such as "delete")."""
        with self._lock:
            if key in MOVE_KEYS:
                step = self.remap.T @ (np.array(MOVE_KEYS[key], dtype=float) * self.step_m)
                self._pose[:3, 3] += step
            elif key in TURN_KEYS:
                turn = Rotation.from_rotvec(np.array(TURN_KEYS[key], dtype=float) * self.step_rad).as_matrix()
                # A turn about a base-frame axis, expressed in the headset frame (remap is orthogonal).
                self._pose[:3, :3] = self.remap.T @ turn @ self.remap @ self._pose[:3, :3]
            elif key == " ":
                self._clutch = not self._clutch
            elif key == "g":
                self._gripper_closed = not self._gripper_closed
            elif key in BUTTON_KEYS:
                self._presses.add(BUTTON_KEYS[key])
            else:
                return
            self.keys_handled += 1

    def _keys(self, text: str) -> list[str]:
        """Split typed text into keys, joining escape sequences (kept across reads when cut)."""
        text = self._pending + text
        self._pending = ""
        keys = []
        i = 0
        while i < len(text):
            if text[i] == "\x1b":
                rest = text[i:]
                whole = next((seq for seq in ESCAPES if rest.startswith(seq)), None)
                if whole is not None:
                    keys.append(ESCAPES[whole])
                    i += len(whole)
                    continue
                if any(seq.startswith(rest) for seq in ESCAPES):
                    self._pending = rest  # the rest of the sequence comes with the next read
                    break
                i += 1  # a lone Escape or an unknown sequence's first byte: ignored
                continue
            keys.append(text[i])
            i += 1
        return keys

    def _read_keys(self) -> None:
        while self._running:
            ready, _, _ = select.select([self._fd], [], [], POLL_S)
            if not ready:
                continue
            try:
                data = os.read(self._fd, 64)
            except OSError:
                data = b""
            if not data:
                self._input_ended()
                return
            for key in self._keys(data.decode("utf-8", "replace")):
                self.press(key)

    def _input_ended(self) -> None:
        with self._lock:
            self._ended_ns = self.clock.now_ns()
            self.connected = False
            self._events.append((self._ended_ns, "teleop_lost", {"device": "keyboard", "reason": "input ended"}))
