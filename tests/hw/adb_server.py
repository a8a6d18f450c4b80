"""A stand-in for the adb server: a real TCP server on 127.0.0.1 (an ephemeral port) speaking the adb
host protocol as pure-python-adb uses it, with a pretend Quest that runs oculus_reader's app.

Protocol: every request is 4 hex digits of length + the text. The server answers `OKAY` or
`FAIL<4 hex len><message>`. `host:version`, `host:devices`, `host:devices-l` and `host:connect:<ip>:<port>`
answer with a length-prefixed string. `host:transport:<serial>` switches the connection to that device;
the next request `shell:<command>` gets `OKAY` and then the command's raw output, and the connection
closes when the output ends. `shell:logcat ...` streams the lines handed to feed() until end_stream().

Every request and every shell command is recorded, so tests can check what the client asked for.
"""

from __future__ import annotations

import queue
import socket
import threading

import numpy as np

TAG = "wE9ryARX"
APP_PACKAGE = "com.rail.oculus.teleop"
_END = object()


# ------------------------------------------------------------------------------------------- wire format


def format_matrix(pose: np.ndarray) -> str:
    """Row-major, %g, space separated (OVR::Matrix4f::ToString in the app)."""
    return " ".join(f"{v:g}" for v in np.asarray(pose, dtype=float).reshape(-1))


def hand_buttons(side: str, pressed=(), joystick=(0.0, 0.0), trigger=0.0, grip=0.0) -> str:
    """One hand's part of the buttons text as the app's Buttons::current_to_string writes it: the marker,
    the pressed flags, then the analog values printed with std::to_string (%f)."""
    prefix = {"R": "right", "L": "left"}[side]
    items = [side, *pressed, f"{prefix}JS {joystick[0]:f} {joystick[1]:f}", f"{prefix}Trig {trigger:f}",
             f"{prefix}Grip {grip:f}"]
    return ",".join(items)


def teleop_payload(right: np.ndarray | None = None, left: np.ndarray | None = None, right_buttons: str = "",
                   left_buttons: str = "") -> str:
    """`r:<16>|l:<16>&<buttons>` with the hands that are present."""
    poses = [f"{side}:{format_matrix(pose)}" for side, pose in (("r", right), ("l", left)) if pose is not None]
    buttons = [b for b in (right_buttons, left_buttons) if b]
    return "|".join(poses) + "&" + ",".join(buttons)


def logcat_line(payload: str, tag: str = TAG, n: int = 0, crlf: bool = False) -> bytes:
    """A line of `logcat` in its default (threadtime) format."""
    ms = 123 + 14 * n
    line = f"01-15 12:00:{ms // 1000 % 60:02d}.{ms % 1000:03d}  4567  4590 I {tag}: {payload}"
    return (line + ("\r\n" if crlf else "\n")).encode()


# ------------------------------------------------------------------------------------------- server


class FakeAdbServer:
    """Serve adb host requests on 127.0.0.1:<ephemeral>; `devices` maps serial -> state ("device",
    "unauthorized", "offline"). Use as a context manager, or start()/close()."""

    def __init__(self, devices: dict[str, str] | None = None, app_installed: bool = True,
                 reachable_ips: tuple[str, ...] = ()):
        self.devices = dict({"1WMHH815R10273": "device"} if devices is None else devices)
        self.app_installed = app_installed
        self.reachable_ips = reachable_ips  # `adb connect` succeeds for these (no traffic leaves the host)
        self.requests: list[str] = []
        self.shell_commands: list[tuple[str, str]] = []  # (serial, command)
        self.logcat_started = threading.Event()
        self._lines: queue.Queue = queue.Queue()
        self._sock: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False

    # --- control from the test

    def feed(self, lines) -> None:
        """Queue logcat lines (bytes) for the log stream."""
        for line in lines:
            self._lines.put(line)

    def end_stream(self) -> None:
        """Close the log stream after the lines queued so far (the headset went away)."""
        self._lines.put(_END)

    @property
    def port(self) -> int:
        assert self._sock is not None
        return self._sock.getsockname()[1]

    def start(self) -> FakeAdbServer:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.05)  # accept() polls, so close() ends the thread at once
        self._spawn(self._accept)
        return self

    def close(self) -> None:
        self._closed = True
        self._lines.put(_END)
        if self._sock is not None:
            self._sock.close()
        with self._lock:
            for conn in self._conns:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                conn.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> FakeAdbServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # --- protocol

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            with self._lock:
                self._conns.append(conn)
            self._spawn(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        try:
            serial = None
            while True:
                request = self._request(conn)
                if request is None:
                    return
                self.requests.append(request)
                if request.startswith("host:transport:"):
                    wanted = request[len("host:transport:"):]
                    state = self.devices.get(wanted)
                    if state is None:
                        return self._fail(conn, f"device '{wanted}' not found")
                    if state != "device":
                        return self._fail(conn, f"device {state}")
                    conn.sendall(b"OKAY")
                    serial = wanted
                elif request.startswith("shell:"):
                    if serial is None:
                        return self._fail(conn, "no device selected")
                    return self._shell(conn, serial, request[len("shell:"):])
                else:
                    return self._host(conn, request)
        except OSError:
            pass
        finally:
            conn.close()

    def _host(self, conn: socket.socket, request: str) -> None:
        if request == "host:version":
            self._okay(conn, f"{41:04x}")
        elif request in ("host:devices", "host:devices-l"):
            extra = " product:hollywood model:Quest_2 device:hollywood" if request.endswith("-l") else ""
            self._okay(conn, "".join(f"{s}\t{state}{extra}\n" for s, state in self.devices.items()))
        elif request.startswith("host:connect:"):
            address = request[len("host:connect:"):]
            ip = address.rsplit(":", 1)[0]
            if ip in self.reachable_ips:
                self.devices[address] = "device"
                self._okay(conn, f"connected to {address}")
            else:
                self._okay(conn, f"failed to connect to '{address}': Connection refused")
        else:
            self._fail(conn, f"unknown host service '{request}'")

    def _shell(self, conn: socket.socket, serial: str, command: str) -> None:
        self.shell_commands.append((serial, command))
        conn.sendall(b"OKAY")
        if command.startswith("logcat"):
            self.logcat_started.set()
            while not self._closed:
                try:
                    line = self._lines.get(timeout=0.05)
                except queue.Empty:
                    continue
                if line is _END:
                    return
                conn.sendall(line)
            return
        if command.startswith("am start"):
            activity = f"{APP_PACKAGE}/.MainActivity"
            out = f"Starting: Intent {{ cmp={activity} }}\n"
            if not self.app_installed:
                out += (f"Error type 3\nError: Activity class {{{APP_PACKAGE}/{APP_PACKAGE}.MainActivity}} "
                        "does not exist.\n")
        elif command == f"pm path {APP_PACKAGE}":
            out = f"package:/data/app/{APP_PACKAGE}-1/base.apk\n" if self.app_installed else ""
        else:
            out = f"/system/bin/sh: {command.split()[0]}: inaccessible or not found\n"
        conn.sendall(out.encode())

    @staticmethod
    def _request(conn: socket.socket) -> str | None:
        header = _recv_exact(conn, 4)
        if header is None:
            return None
        body = _recv_exact(conn, int(header, 16))
        return None if body is None else body.decode()

    @staticmethod
    def _okay(conn: socket.socket, text: str) -> None:
        data = text.encode()
        conn.sendall(b"OKAY" + f"{len(data):04x}".encode() + data)

    @staticmethod
    def _fail(conn: socket.socket, message: str) -> None:
        data = message.encode()
        conn.sendall(b"FAIL" + f"{len(data):04x}".encode() + data)


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data
