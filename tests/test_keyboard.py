"""KeyboardTeleop: keys typed into a pipe or a pseudo-terminal, read back as readings and through the
ClutchMapping as robot motions."""

from __future__ import annotations

import io
import os
import termios

import numpy as np
import pytest

from htouch.collector.devices import DeviceError, RobotState, Teleop
from htouch.collector.keyboard import KEY_HELP, KeyboardTeleop
from htouch.collector.mapping import ClutchMapping, MappingConfig
from tests.conftest import wait_until

STEP = 0.005


class Typist:
    """Types into the teleop's input and waits until it handled the keys."""

    def __init__(self, teleop: KeyboardTeleop, fd: int):
        self.teleop, self.fd = teleop, fd

    def __call__(self, keys: bytes, handled: int | None = None) -> None:
        target = self.teleop.keys_handled + (len(keys) if handled is None else handled)
        os.write(self.fd, keys)
        wait_until(lambda: self.teleop.keys_handled >= target)


@pytest.fixture
def piped():
    read_fd, write_fd = os.pipe()
    stream = os.fdopen(read_fd, "rb", buffering=0)
    teleop = KeyboardTeleop(stream=stream)
    teleop.start()
    yield teleop, Typist(teleop, write_fd), write_fd
    teleop.stop()
    stream.close()
    try:
        os.close(write_fd)
    except OSError:
        pass


ROBOT = RobotState(0, np.array([0.4, 0.0, 0.3, 1.0, 0.0, 0.0, 0.0]), np.zeros(7), 0.08)  # gripper down


def test_keys_drive_the_virtual_controller(piped):
    teleop, type_, _ = piped
    assert isinstance(teleop, Teleop)
    first = teleop.read()
    np.testing.assert_allclose(first.controller_pose, np.eye(4))
    assert not any(first.buttons.values()) and first.analog["rightGrip"] == 0.0
    type_(b"ww")  # forward twice: robot +x is headset -z with the default remap
    np.testing.assert_allclose(teleop.read().controller_pose[:3, 3], [0, 0, -2 * STEP])
    type_(b"ad")  # left then right: back where it was
    np.testing.assert_allclose(teleop.read().controller_pose[:3, 3], [0, 0, -2 * STEP], atol=1e-12)
    type_(b"r")  # up: robot +z is headset +y
    np.testing.assert_allclose(teleop.read().controller_pose[:3, 3], [0, STEP, -2 * STEP])
    type_(b" g")
    reading = teleop.read()
    assert reading.buttons["RG"] and reading.buttons["RTr"]
    assert reading.analog["rightGrip"] == 1.0 and reading.analog["rightTrig"] == 1.0
    type_(b"?#", handled=0)  # unknown keys do nothing
    type_(b"\n", handled=1)
    assert teleop.read().buttons["A"] is True
    assert teleop.read().buttons["A"] is False  # a press shows in one reading
    type_(b"\x7f", handled=1)
    assert teleop.read().buttons["B"]
    type_(b"\x1b[3", handled=0)  # Delete, cut in two writes
    type_(b"~", handled=1)
    buttons = teleop.read().buttons
    assert buttons["RJ"] and not buttons["A"] and not buttons["B"]


def test_keys_move_the_robot_intuitively_through_the_clutch_mapping(piped):
    teleop, type_, _ = piped
    mapping = ClutchMapping(MappingConfig())

    def step() -> tuple[np.ndarray, float, str | None]:
        command = mapping(teleop.read(), ROBOT)
        return command.action.delta_ee, command.action.gripper, command.command

    type_(b"w")
    delta, gripper, _ = step()
    assert np.all(delta == 0) and gripper == 1.0  # clutch off: no motion, gripper open
    type_(b" ")
    step()  # the press anchors
    expectations = {b"w": [STEP, 0, 0], b"s": [-STEP, 0, 0], b"a": [0, STEP, 0], b"d": [0, -STEP, 0],
                    b"r": [0, 0, STEP], b"f": [0, 0, -STEP], b"\x1b[A": [STEP, 0, 0]}
    for key, move in expectations.items():
        type_(key, handled=1)
        delta, _, _ = step()
        np.testing.assert_allclose(delta[:3], move, atol=1e-12, err_msg=repr(key))
        np.testing.assert_allclose(delta[3:], 0, atol=1e-12)
        type_({b"w": b"s", b"s": b"w", b"a": b"d", b"d": b"a", b"r": b"f", b"f": b"r", b"\x1b[A": b"s"}[key])
        step()
    for key, axis in ((b"q", [0, 0, 1]), (b"e", [0, 0, -1]), (b"i", [0, 1, 0]), (b"k", [0, -1, 0]),
                      (b"j", [1, 0, 0]), (b"l", [-1, 0, 0])):
        type_(key)
        delta, _, _ = step()
        np.testing.assert_allclose(delta[:3], 0, atol=1e-12)
        np.testing.assert_allclose(delta[3:], 0.05 * np.array(axis), atol=1e-9, err_msg=repr(key))
        type_({b"q": b"e", b"e": b"q", b"i": b"k", b"k": b"i", b"j": b"l", b"l": b"j"}[key])
        step()
    type_(b"g")
    assert step()[1] == 0.0  # gripper closed
    type_(b"g")
    assert step()[1] == 1.0
    for key, command in ((b"\n", "success"), (b"x", "failure"), (b"z", "discard"), (b"\x1b[3~", "discard")):
        type_(key, handled=1)
        assert step()[2] == command
        assert step()[2] is None  # once per press
    type_(b" ")
    type_(b"w")
    assert np.all(step()[0] == 0)  # clutch released: no motion


def test_turn_keys_follow_a_different_remap():
    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd, "rb", buffering=0) as stream:
        config = MappingConfig(axis_remap=["x", "z", "-y"])
        teleop = KeyboardTeleop(stream=stream, axis_remap=config.axis_remap)
        teleop.start()
        type_ = Typist(teleop, write_fd)
        mapping = ClutchMapping(config)
        type_(b" ")
        mapping(teleop.read(), ROBOT)
        type_(b"wq")
        delta = mapping(teleop.read(), ROBOT).action.delta_ee
        np.testing.assert_allclose(delta[:3], [STEP, 0, 0], atol=1e-12)
        np.testing.assert_allclose(delta[3:], [0, 0, 0.05], atol=1e-9)
        teleop.stop()
    os.close(write_fd)


def test_end_of_input_goes_stale_and_is_reported(piped):
    teleop, type_, write_fd = piped
    type_(b"w")
    os.close(write_fd)
    wait_until(lambda: not teleop.connected)
    first, second = teleop.read(), teleop.read()
    assert first.timestamp_ns == second.timestamp_ns  # stamped at the end: the loop sees it age
    (t, kind, detail), = teleop.pop_events()
    assert kind == "teleop_lost" and detail["device"] == "keyboard" and t == first.timestamp_ns
    np.testing.assert_allclose(first.controller_pose[:3, 3], [0, 0, -STEP])


def test_terminal_goes_to_cbreak_and_is_restored():
    master, slave = os.openpty()
    try:
        with os.fdopen(slave, "rb", buffering=0, closefd=False) as stream:
            before = termios.tcgetattr(slave)
            assert before[3] & termios.ICANON
            teleop = KeyboardTeleop(stream=stream)
            teleop.start()
            during = termios.tcgetattr(slave)
            assert not during[3] & termios.ICANON and not during[3] & termios.ECHO
            assert during[3] & termios.ISIG  # Ctrl-C still interrupts
            Typist(teleop, master)(b"w")  # no Enter needed in cbreak mode
            np.testing.assert_allclose(teleop.read().controller_pose[:3, 3], [0, 0, -STEP])
            teleop.stop()
            assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)


def test_not_a_file_is_a_clear_error_and_help_lists_the_keys():
    with pytest.raises(DeviceError, match="terminal or a pipe"):
        KeyboardTeleop(stream=io.StringIO("w")).start()
    assert KeyboardTeleop(stream=io.StringIO()).read() is None  # before start
    for word in ("w/s", "space", "clutch", "Enter", "success", "Backspace", "Delete", "discard", "gripper"):
        assert word in KEY_HELP
