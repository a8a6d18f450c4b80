"""franky-sim (a simulator of the FR3's libfranka protocol, MuJoCo backend) started and stopped by the tests,
on 127.0.0.1 only (it binds the FR3's fixed ports 1337 and 1338, on the address it is given and no other).
With `reflex_force_n` it runs franky-sim's server with a contact reflex added (tests/hw/fr3_reflex_server.py);
otherwise the `franky-sim` command itself.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
PORT = 1337
READY_LINE = "Connect to the server using"
START_TIMEOUT_S = 90.0  # about 10 s on an idle machine; much more on a loaded one


def port_in_use(host: str = HOST, port: int = PORT) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


class FrankySim:
    """One franky-sim process in its own process group; `stop()` (or `kill()`) ends the whole group."""

    def __init__(self, log: Path, reflex_force_n: float | None = None):
        if reflex_force_n is not None:
            command = [sys.executable, "-m", "tests.hw.fr3_reflex_server", str(reflex_force_n)]
        else:
            exe = shutil.which("franky-sim", path=str(Path(sys.executable).parent)) or shutil.which("franky-sim")
            if exe is None:
                raise FileNotFoundError("franky-sim is not installed")
            command = [exe, "-s", "mujoco", "--hostname", HOST]
        self.log = log
        self._out = open(log, "w")
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._out.write(line)
            self._out.flush()
            if READY_LINE in line:
                self._ready.set()

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while not self._ready.wait(0.2):
            if self.proc.poll() is not None:
                raise RuntimeError(f"franky-sim exited with {self.proc.returncode}: {self.log.read_text()[-400:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"franky-sim was not ready within {timeout_s:g} s")

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the process group at once (the controller vanishing from the network)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        self.kill()
        self._reader.join(2)
        self._out.close()
