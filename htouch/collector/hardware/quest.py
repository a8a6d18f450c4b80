"""Oculus/Meta Quest teleoperation over adb, speaking rail-berkeley/oculus_reader's protocol.

The headset runs oculus_reader's app (com.rail.oculus.teleop), which logs one line per rendered frame
(about 72 Hz) to logcat under the tag `wE9ryARX`:

    <logcat prefix> wE9ryARX: r:<16 numbers>|l:<16 numbers>&R,A,RG,rightJS 0.1 -0.2,rightTrig 0.5,rightGrip 1.0,L,...

Each matrix is a controller pose in the headset frame, row-major, metres; a hand whose matrix does not
have 16 values is absent. The part after `&` lists, per hand, a marker (`R`/`L`), the names of the pressed
flags (right `A B RThU RJ RG RTr`, left `X Y LThU LJ LG LTr`) and analog values as `name v...`
(`rightJS x y`, `rightTrig v`, `rightGrip v`).

QuestTeleop talks to the local adb server through pure-python-adb (ppadb) exactly as oculus_reader does:
it picks the device, runs `am start` for the app, then reads `logcat -T 0` line by line in a thread.

Time stamps: the wire format carries no device time, so a reading is stamped with the host clock when
its line arrives (adb adds a few ms of latency; lines arriving in one burst get nearly equal stamps).

Robustness (where this differs from oculus_reader, which lets a bad line kill its thread): malformed
lines are counted in `malformed_lines` and skipped; when the stream ends (cable pulled, headset asleep,
adb server killed) the thread stops, `connected` turns False, `error` says why, pop_events() reports a
`teleop_lost` event, and read() keeps returning the last reading so the loop sees it go stale.
"""

from __future__ import annotations

import math
import socket
import threading
from typing import Any

import numpy as np

from htouch.collector.config import TeleopConfig
from htouch.collector.devices import Clock, DeviceError, MonotonicClock, TeleopReading
from htouch.collector.hardware import import_device_library

TAG = "wE9ryARX"
APP_PACKAGE = "com.rail.oculus.teleop"
APP_ACTIVITY = f"{APP_PACKAGE}/.MainActivity"
START_APP = f"am start -n {APP_ACTIVITY}"
LOGCAT = "logcat -T 0"
RIGHT_FLAGS = ("A", "B", "RThU", "RJ", "RG", "RTr")
LEFT_FLAGS = ("X", "Y", "LThU", "LJ", "LG", "LTr")
ANALOG_NAMES = ("rightTrig", "rightGrip", "rightJS_x", "rightJS_y")
COMMAND_TIMEOUT_S = 5.0  # adb server requests other than the log stream


class MalformedLine(ValueError):
    """A tagged logcat line whose payload does not follow the oculus_reader format."""


# ------------------------------------------------------------------------------------------- parsing


def extract_payload(line: str) -> str | None:
    """The text after `wE9ryARX: ` in a logcat line, or None for lines of other tags."""
    marker = TAG + ": "
    at = line.find(marker)
    return None if at < 0 else line[at + len(marker):].strip()


def parse_payload(payload: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """`r:...|l:...&buttons` -> ({'r': 4x4, 'l': 4x4}, buttons) with oculus_reader's semantics;
    MalformedLine for text that is not in that format (values that are not finite numbers, a pose
    with more than 16 values, a missing `&`)."""
    if payload.count("&") != 1:
        raise MalformedLine("expected one '&' between the poses and the buttons")
    poses_text, buttons_text = payload.split("&")
    transforms: dict[str, np.ndarray] = {}
    for part in poses_text.split("|"):
        if not part:
            continue
        side, sep, values_text = part.partition(":")
        if not sep or not side:
            raise MalformedLine(f"pose {part[:20]!r} is not 'side:values'")
        values = [_number(v) for v in values_text.split(" ") if v]
        if len(values) > 16:
            raise MalformedLine(f"pose {side!r} has {len(values)} values, more than 16")
        if len(values) == 16:  # fewer: that hand is absent, as oculus_reader reads it
            transforms[side] = np.array(values, dtype=float).reshape(4, 4)
    return transforms, parse_buttons(buttons_text)


def parse_buttons(text: str) -> dict[str, Any]:
    """oculus_reader's button dict: flags of each present hand -> bool, analog `name v...` -> tuple."""
    items = [item for item in text.split(",") if item]
    buttons: dict[str, Any] = {}
    if "R" in items:
        items.remove("R")
        buttons.update(dict.fromkeys(RIGHT_FLAGS, False))
    if "L" in items:
        items.remove("L")
        buttons.update(dict.fromkeys(LEFT_FLAGS, False))
    for flag in list(buttons):
        if flag in items:
            buttons[flag] = True
            items.remove(flag)
    for item in items:
        name, *values = item.split(" ")
        buttons[name] = tuple(_number(v) for v in values if v)
    return buttons


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise MalformedLine(f"{text[:20]!r} is not a number") from None
    if not math.isfinite(value):
        raise MalformedLine(f"{text!r} is not a finite number")
    return value


def reading_from(transforms: dict[str, np.ndarray], buttons: dict[str, Any], timestamp_ns: int
                 ) -> TeleopReading | None:
    """The right controller as a TeleopReading; None when the right hand is absent from the line."""
    pose = transforms.get("r")
    if pose is None:
        return None
    joystick = tuple(buttons.get("rightJS", ())) + (0.0, 0.0)
    analog = {"rightTrig": _first(buttons.get("rightTrig")), "rightGrip": _first(buttons.get("rightGrip")),
              "rightJS_x": float(joystick[0]), "rightJS_y": float(joystick[1])}
    flags = {name: buttons.get(name) is True for name in RIGHT_FLAGS}
    return TeleopReading(timestamp_ns, pose.copy(), flags, analog)


def _first(value: Any) -> float:
    return float(value[0]) if isinstance(value, tuple) and value else 0.0


# ------------------------------------------------------------------------------------------- adb


def _adb_client(config: TeleopConfig) -> Any:
    """A ppadb Client whose short requests time out instead of hanging on an unreachable server."""
    client_module = import_device_library("ppadb.client", "pure-python-adb")

    class TimeoutClient(client_module.Client):
        def create_connection(self, timeout=None):
            return super().create_connection(timeout=timeout or COMMAND_TIMEOUT_S)

    return TimeoutClient(host=config.adb_host, port=config.adb_port)


def _adb_message(error: Exception) -> str:
    """ppadb's "ERROR: 'FAIL' 0012device offline" -> "device offline"."""
    text = str(error).strip()
    if text.startswith("ERROR: 'FAIL' "):
        text = text[len("ERROR: 'FAIL' "):]
        text = text[4:] if len(text) > 4 and all(c in "0123456789abcdefABCDEF" for c in text[:4]) else text
    return text.splitlines()[0] if text else repr(error)


def _find_device(client: Any, config: TeleopConfig) -> tuple[Any, str]:
    """(ppadb Device, how it was found) for config.serial, config.ip or the only device; DeviceError
    naming what to do otherwise."""
    where = f"adb server {config.adb_host}:{config.adb_port}"
    try:
        if config.ip:
            address = f"{config.ip}:{config.port}"
            if not client.remote_connect(config.ip, config.port):
                raise DeviceError(f"adb could not connect to the Quest at {address} (is adb over Wi-Fi "
                                  f"enabled on it: `adb tcpip {config.port}` over USB?)")
            wanted = address
        else:
            wanted = config.serial
        everything = [d.serial for d in client.devices()]
        ready = [d.serial for d in client.devices(state="device")]
    except RuntimeError as e:
        raise DeviceError(f"no {where} ({_adb_message(e)}); start it with `adb start-server`") from None
    if wanted:
        if wanted not in everything:
            listed = ", ".join(everything) or "none"
            raise DeviceError(f"the Quest {wanted} is not listed by the {where} (devices: {listed})")
        serial = wanted
    else:
        if not everything:
            raise DeviceError(f"no Quest found by the {where} (plug it in by USB and allow USB debugging "
                              "in the headset, or set [teleop] ip)")
        if len(everything) > 1:
            raise DeviceError(f"several adb devices ({', '.join(everything)}): set [teleop] serial or ip")
        serial = everything[0]
    if serial not in ready:
        raise DeviceError(f"the Quest {serial} is not ready (unauthorized or offline): put on the headset "
                          "and allow USB debugging")
    return client.device(serial), f"{'Wi-Fi' if config.ip else 'USB'} {serial}"


def probe(config: TeleopConfig) -> tuple[bool, str]:
    """(found, one line) for `htouch rig check`: the adb server, the Quest, and the teleop app on it."""
    try:
        client = _adb_client(config)
        device, how = _find_device(client, config)
        installed = "package:" in device.shell(f"pm path {APP_PACKAGE}")
    except DeviceError as e:
        return False, str(e)
    except (RuntimeError, OSError) as e:
        return False, f"the Quest did not answer through adb: {_adb_message(e)}"
    if not installed:
        return False, (f"Quest {how} found, but the teleop app {APP_PACKAGE} is not installed "
                       "(install oculus_reader's APK with `adb install -r teleop-debug.apk`)")
    return True, f"Quest {how} with {APP_PACKAGE} (adb {config.adb_host}:{config.adb_port})"


# ------------------------------------------------------------------------------------------- teleop


class QuestTeleop:
    """A Teleop (htouch.collector.devices) reading the Quest's right controller over adb."""

    def __init__(self, config: TeleopConfig, clock: Clock | None = None):
        self.config = config
        self.clock = clock or MonotonicClock()
        self._client = _adb_client(config)  # raises DeviceError when ppadb is missing
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._connection: Any = None
        self._running = False
        self._events: list[tuple[int, str, dict]] = []
        self._last_transforms: dict[str, np.ndarray] = {}
        self._last_buttons: dict[str, Any] = {}
        self._reading: TeleopReading | None = None
        self.device_name = ""
        self.connected = False
        self.error: str | None = None
        self.lines = 0  # tagged lines received
        self.malformed_lines = 0
        self.last_malformed = ""  # the last malformed payload and why, for diagnosis

    # --- the Teleop interface

    def start(self) -> None:
        """Find the headset, start the teleop app and the log reader; DeviceError if any step fails."""
        if self._thread is not None and self._thread.is_alive():
            return
        device, self.device_name = _find_device(self._client, self.config)
        try:
            output = device.shell(START_APP)
        except (RuntimeError, OSError) as e:
            raise DeviceError(f"could not start the teleop app on the Quest {self.device_name}: "
                              f"{_adb_message(e)}") from None
        if "Error" in output:
            error = [line.strip() for line in output.splitlines() if "Error" in line][-1]
            raise DeviceError(f"the teleop app {APP_PACKAGE} did not start on the Quest ({error}); "
                              "install oculus_reader's APK with `adb install -r teleop-debug.apk`")
        self._running = True
        self.error = None
        self.connected = True
        self._thread = threading.Thread(target=self._stream, args=(device,), name="quest-logcat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._running = False
        connection = self._connection
        if connection is not None and connection.socket is not None:
            try:
                connection.socket.shutdown(socket.SHUT_RDWR)  # wakes the reader blocked in readline
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        self.connected = False

    def read(self) -> TeleopReading | None:
        """The newest reading of the right controller (None before the first); never waits."""
        with self._lock:
            return self._reading

    def get_transformations_and_buttons(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """oculus_reader's API: the last line's ({'r': 4x4, 'l': 4x4}, buttons); empty dicts before it."""
        with self._lock:
            return self._last_transforms, self._last_buttons

    def pop_events(self) -> list[tuple[int, str, dict]]:
        with self._lock:
            events, self._events = self._events, []
        return events

    # --- the reader thread

    def _stream(self, device: Any) -> None:
        try:
            device.shell(LOGCAT, handler=self._read_lines)
            reason = "the Quest's log stream ended (headset disconnected, asleep, or adb restarted)"
        except (RuntimeError, OSError) as e:
            reason = f"the Quest's log stream failed: {_adb_message(e)}"
        if self._running:  # not a stop() we asked for
            self._disconnected(reason)

    def _read_lines(self, connection: Any) -> None:
        self._connection = connection
        if not self._running:  # stop() came before the stream opened
            connection.close()
            return
        connection.socket.settimeout(None)  # the stream may be quiet for long; stop() shuts it down
        with connection.socket.makefile("rb") as stream:
            while self._running:
                raw = stream.readline()
                if not raw:
                    break
                self._line(raw)
        connection.close()

    def _line(self, raw: bytes) -> None:
        received_ns = self.clock.now_ns()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            if TAG.encode() in raw:
                self._malformed(raw[:80].decode("utf-8", "replace"), "not UTF-8")
            return
        payload = extract_payload(text)
        if payload is None:
            return
        try:
            transforms, buttons = parse_payload(payload)
        except MalformedLine as e:
            self._malformed(payload, str(e))
            return
        reading = reading_from(transforms, buttons, received_ns)
        with self._lock:
            self.lines += 1
            self._last_transforms, self._last_buttons = transforms, buttons
            if reading is not None:
                self._reading = reading

    def _malformed(self, payload: str, why: str) -> None:
        with self._lock:
            self.lines += 1
            self.malformed_lines += 1
            self.last_malformed = f"{payload[:80]!r}: {why}"

    def _disconnected(self, reason: str) -> None:
        with self._lock:
            self.connected = False
            self.error = reason
            self._events.append((self.clock.now_ns(), "teleop_lost",
                                 {"device": f"Quest {self.device_name}", "reason": reason}))
