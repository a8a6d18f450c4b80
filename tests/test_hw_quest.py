"""QuestTeleop end to end: the real pure-python-adb client against a stand-in adb server on 127.0.0.1
(tests/hw/adb_server.py) streaming logcat lines in oculus_reader's wire format."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from htouch.collector.config import TeleopConfig
from htouch.collector.devices import DeviceError, Teleop
from htouch.collector.hardware import quest
from htouch.collector.hardware.quest import QuestTeleop, parse_buttons, parse_payload, probe
from tests.conftest import wait_until
from tests.hw.adb_server import FakeAdbServer, hand_buttons, logcat_line, teleop_payload

SERIAL = "1WMHH815R10273"


def pose(x: float, y: float, z: float, rotvec=(0.0, 0.0, 0.0)) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = Rotation.from_rotvec(rotvec).as_matrix()
    m[:3, 3] = (x, y, z)
    return m


class StepClock:
    """A loop clock that advances 1 ms per reading, so time stamps are distinct and checkable."""

    def __init__(self):
        self.t = 1_000_000_000

    def now_ns(self) -> int:
        self.t += 1_000_000
        return self.t

    def sleep_until(self, t_ns: int) -> None:
        self.t = max(self.t, t_ns)


@pytest.fixture
def server():
    with FakeAdbServer() as s:
        yield s


def config_for(server: FakeAdbServer, **kw) -> TeleopConfig:
    return TeleopConfig(adb_host="127.0.0.1", adb_port=server.port, **kw)


# ------------------------------------------------------------------------------------------- parser


def test_parse_payload_matches_oculus_reader_semantics():
    right, left = pose(0.1, -0.2, 0.3, (0.1, 0.2, 0.3)), pose(-0.4, 0.5, 0.25)
    text = teleop_payload(right, left, hand_buttons("R", ("A", "RG"), (0.25, -0.5), 0.75, 1.0),
                          hand_buttons("L", ("X",), trigger=0.125))
    transforms, buttons = parse_payload(text)
    assert set(transforms) == {"r", "l"}
    np.testing.assert_allclose(transforms["r"], right, atol=1e-5)  # %g keeps 6 significant digits
    np.testing.assert_allclose(transforms["l"], left, atol=1e-5)
    assert buttons["A"] is True and buttons["RG"] is True and buttons["X"] is True
    assert buttons["B"] is False and buttons["RTr"] is False and buttons["LG"] is False
    assert buttons["rightJS"] == (0.25, -0.5)
    assert buttons["rightTrig"] == (0.75,) and buttons["rightGrip"] == (1.0,) and buttons["leftTrig"] == (0.125,)


def test_parse_buttons_without_left_hand_has_no_left_flags():
    buttons = parse_buttons("R,B,RTr,rightJS 0.000000 0.000000,rightTrig 1.000000,rightGrip 0.000000")
    assert buttons == {"A": False, "B": True, "RThU": False, "RJ": False, "RG": False, "RTr": True,
                       "rightJS": (0.0, 0.0), "rightTrig": (1.0,), "rightGrip": (0.0,)}
    assert parse_buttons("") == {}


@pytest.mark.parametrize("payload", [
    "r:1 0 0 0 0 1 0 0 0 0 1 0 0 0 0 1",  # no '&'
    "r:1 0 0 0 0 1 0 0 0 0 1 0 0 0 0 1&R&rightTrig 1",  # two '&'
    "r:1 0 0 0 0 1 x 0 0 0 1 0 0 0 0 1&R",  # not a number
    "r:1 0 0 0 0 1 0 0 0 0 1 0 0 0 0 nan&R",  # not finite
    "r:1 0 0 0 0 1 0 0 0 0 1 0 0 0 0 1 7&R",  # 17 values
    "1 0 0 0 0 1 0 0 0 0 1 0 0 0 0 1&R",  # no side
    "r:1 0 0 0 0 1 0 0 0 0 1 0 0 0 0 1&R,rightTrig 0.5x",  # bad analog value
])
def test_parse_payload_rejects_malformed_text(payload):
    with pytest.raises(quest.MalformedLine):
        parse_payload(payload)


def test_a_pose_with_fewer_than_16_values_is_an_absent_hand():
    transforms, buttons = parse_payload("r:1 0 0 0 0 1 0 0|l:" + " ".join(["1"] * 16) + "&L")
    assert set(transforms) == {"l"} and buttons["X"] is False


# ------------------------------------------------------------------------------------------- end to end


def test_stream_end_to_end_poses_buttons_malformed_missing_hand_and_disconnect(server):
    clock = StepClock()
    teleop = QuestTeleop(config_for(server), clock)
    assert isinstance(teleop, Teleop)
    assert teleop.read() is None and teleop.get_transformations_and_buttons() == ({}, {})
    teleop.start()
    assert (SERIAL, "am start -n com.rail.oculus.teleop/.MainActivity") in server.shell_commands
    wait_until(server.logcat_started.is_set)
    assert server.shell_commands[-1] == (SERIAL, "logcat -T 0")

    right1, left1 = pose(0.1, 0.2, -0.3, (0.0, 0.3, 0.0)), pose(-0.2, 0.1, -0.3)
    right2 = pose(0.15, 0.25, -0.35, (0.1, 0.0, 0.2))
    good1 = teleop_payload(right1, left1, hand_buttons("R", ("A", "RG"), (0.5, -0.25), 0.75, 1.0),
                           hand_buttons("L"))
    good2 = teleop_payload(right2, None, hand_buttons("R", ("RTr",), (0.0, 0.125), 1.0, 0.0))
    server.feed([
        logcat_line("FPS=72/72,Prd=33ms,Tear=0,Early=0,Stale=0", tag="VrApi"),  # another tag: ignored
        logcat_line(good1, n=1),
        logcat_line("r:1 0 0 0&R,rightTrig 0.5", n=2),  # 4 values: the right hand is absent, no reading
        logcat_line("r:" + " ".join(["0.5"] * 15) + " oops&R", n=3),  # malformed number
        logcat_line("garbage without separator", n=4),  # malformed
        b"01-15 12:00:00.999  4567  4590 I wE9ryARX: \xff\xfe broken utf-8\n",  # malformed
        logcat_line(good2, n=5, crlf=True),
    ])
    wait_until(lambda: teleop.lines == 6)
    assert teleop.malformed_lines == 3
    reading = teleop.read()
    np.testing.assert_allclose(reading.controller_pose, right2, atol=1e-5)
    assert reading.buttons == {"A": False, "B": False, "RThU": False, "RJ": False, "RG": False, "RTr": True}
    assert reading.analog == {"rightTrig": 1.0, "rightGrip": 0.0, "rightJS_x": 0.0, "rightJS_y": 0.125}
    transforms, buttons = teleop.get_transformations_and_buttons()
    assert set(transforms) == {"r"} and buttons["RTr"] is True

    # The right hand goes missing: oculus_reader's view updates, but no new reading is made.
    stamp = reading.timestamp_ns
    server.feed([logcat_line(teleop_payload(None, left1, "", hand_buttons("L", ("Y",))), n=6)])
    wait_until(lambda: teleop.lines == 7)
    assert teleop.read().timestamp_ns == stamp
    transforms, buttons = teleop.get_transformations_and_buttons()
    assert set(transforms) == {"l"} and buttons["Y"] is True and "A" not in buttons

    # It comes back: a new reading, stamped later on the host clock.
    server.feed([logcat_line(good1, n=7)])
    wait_until(lambda: teleop.lines == 8)
    reading = teleop.read()
    assert reading.timestamp_ns > stamp
    np.testing.assert_allclose(reading.controller_pose, right1, atol=1e-5)
    assert reading.buttons["A"] and reading.buttons["RG"] and not reading.buttons["B"]
    assert reading.analog == {"rightTrig": 0.75, "rightGrip": 1.0, "rightJS_x": 0.5, "rightJS_y": -0.25}
    assert teleop.connected and teleop.pop_events() == []

    # The stream stops: the thread ends, the last reading stays, the disconnection is reported once.
    server.end_stream()
    wait_until(lambda: not teleop.connected)
    assert "log stream ended" in teleop.error
    assert teleop.read() is reading
    events = teleop.pop_events()
    assert len(events) == 1 and events[0][1] == "teleop_lost" and SERIAL in events[0][2]["device"]
    assert teleop.pop_events() == []
    teleop.stop()


def test_stop_while_streaming_ends_the_reader_without_a_disconnect_event(server):
    teleop = QuestTeleop(config_for(server))
    teleop.start()
    wait_until(server.logcat_started.is_set)
    server.feed([logcat_line(teleop_payload(pose(0, 0, 0), None, hand_buttons("R")))])
    wait_until(lambda: teleop.read() is not None)
    thread = teleop._thread
    teleop.stop()
    assert not thread.is_alive()
    assert teleop.pop_events() == []


def test_device_chosen_by_serial_and_by_ip(server):
    server.devices["2G0YC1ZF8B0123"] = "device"
    server.reachable_ips = ("127.0.0.2",)
    # Two devices and no serial: refused with both named.
    with pytest.raises(DeviceError, match="several adb devices.*1WMHH815R10273.*2G0YC1ZF8B0123"):
        QuestTeleop(config_for(server)).start()
    teleop = QuestTeleop(config_for(server, serial="2G0YC1ZF8B0123"))
    teleop.start()
    assert server.shell_commands[-2:][0] == ("2G0YC1ZF8B0123", "am start -n com.rail.oculus.teleop/.MainActivity")
    teleop.stop()
    teleop = QuestTeleop(config_for(server, ip="127.0.0.2", port=5555))
    teleop.start()
    assert "host:connect:127.0.0.2:5555" in server.requests
    assert ("127.0.0.2:5555", "am start -n com.rail.oculus.teleop/.MainActivity") in server.shell_commands
    teleop.stop()
    with pytest.raises(DeviceError, match="could not connect to the Quest at 127.0.0.3:5555"):
        QuestTeleop(config_for(server, ip="127.0.0.3")).start()
    with pytest.raises(DeviceError, match="NOPE is not listed"):
        QuestTeleop(config_for(server, serial="NOPE")).start()


def test_unauthorized_headset_and_missing_app_are_clear_errors():
    with FakeAdbServer(devices={SERIAL: "unauthorized"}) as server:
        with pytest.raises(DeviceError, match="not ready.*allow USB debugging"):
            QuestTeleop(config_for(server)).start()
        ok, message = probe(config_for(server))
        assert not ok and "not ready" in message
    with FakeAdbServer(app_installed=False) as server:
        with pytest.raises(DeviceError, match="did not start.*does not exist.*adb install"):
            QuestTeleop(config_for(server)).start()
        ok, message = probe(config_for(server))
        assert not ok and "not installed" in message
    with FakeAdbServer(devices={}) as server:
        with pytest.raises(DeviceError, match="no Quest found"):
            QuestTeleop(config_for(server)).start()


def test_probe(server):
    ok, message = probe(config_for(server))
    assert ok and SERIAL in message and "com.rail.oculus.teleop" in message
    assert (SERIAL, "pm path com.rail.oculus.teleop") in server.shell_commands
    port = server.port
    server.close()
    started = time.monotonic()
    ok, message = probe(TeleopConfig(adb_port=port))
    assert not ok and f"no adb server 127.0.0.1:{port}" in message and "adb start-server" in message
    assert time.monotonic() - started < 5


def test_missing_ppadb_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ppadb.client", None)
    with pytest.raises(DeviceError, match=r"pure-python-adb is not installed.*pip install 'htouch\[hardware\]'"):
        QuestTeleop(TeleopConfig())
    ok, message = probe(TeleopConfig())
    assert not ok and "htouch[hardware]" in message
