"""The network guard (tests/netguard.py): a test that reaches for an address other than loopback fails, in
this process or in a child, and the refusal comes before the system call, so nothing is sent. Loopback works.
10.0.0.1 is never dialled here: every attempt below is refused by the guard first."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest

from tests import netguard

ROOT = Path(__file__).resolve().parents[1]
OUTSIDE = ("10.0.0.1", 9)
UNBOUND = ("0.0.0.0", 0)  # a socket's name before any connect or send: the kernel binds it on the first one


@pytest.mark.parametrize("is_local,host", [
    (True, "127.0.0.1"), (True, "127.0.0.3"), (True, "::1"), (True, "::ffff:127.0.0.1"), (True, "localhost"),
    (False, "10.0.0.1"), (False, "172.16.0.2"), (False, "192.168.1.1"), (False, "0.0.0.0"), (False, ""),
    (False, "::ffff:10.0.0.1"), (False, "robot.example.org"), (False, None),
])
def test_what_counts_as_loopback(is_local, host):
    assert netguard.is_loopback(host) is is_local


def test_the_guard_is_installed_for_this_session():
    assert netguard.SITE_DIR in os.environ["PYTHONPATH"].split(os.pathsep)
    assert os.environ.get(netguard.LOG_ENV)
    with socket.socket() as s, pytest.raises(netguard.NetworkGuardError):
        s.connect(OUTSIDE)
    assert netguard.take_violations()  # taken, so that this test itself passes


def _attempts():
    yield "connect", socket.AF_INET, socket.SOCK_STREAM, lambda s: s.connect(OUTSIDE)
    yield "connect_ex", socket.AF_INET, socket.SOCK_STREAM, lambda s: s.connect_ex(OUTSIDE)
    yield "sendto", socket.AF_INET, socket.SOCK_DGRAM, lambda s: s.sendto(b"x", OUTSIDE)
    yield "sendto", socket.AF_INET, socket.SOCK_DGRAM, lambda s: s.sendto(b"x", 0, OUTSIDE)
    yield "sendmsg", socket.AF_INET, socket.SOCK_DGRAM, lambda s: s.sendmsg([b"x"], [], 0, OUTSIDE)
    yield "connect", socket.AF_INET6, socket.SOCK_STREAM, lambda s: s.connect(("::ffff:10.0.0.1", 9))


@pytest.mark.parametrize("call,family,kind,attempt", list(_attempts()),
                         ids=[f"{c}-{i}" for i, (c, *_) in enumerate(_attempts())])
def test_non_loopback_is_refused_before_the_system_call(call, family, kind, attempt):
    with socket.socket(family, kind) as s:
        with pytest.raises(netguard.NetworkGuardError, match=f"refused {call} to"):
            attempt(s)
        # A connect or send that reached the kernel would have bound the socket to a local port.
        assert s.getsockname()[:2] in (UNBOUND, ("::", 0))
    found = netguard.take_violations()
    assert len(found) == 1 and "10.0.0.1" in found[0] and call in found[0]


def test_create_connection_and_name_lookups_are_refused():
    with pytest.raises(netguard.NetworkGuardError):
        socket.create_connection(OUTSIDE, timeout=0.1)
    for lookup in (lambda: socket.getaddrinfo("robot.example.org", 80), lambda: socket.gethostbyname("panda"),
                   lambda: socket.gethostbyname_ex("panda.lab")):
        with pytest.raises(netguard.NetworkGuardError, match="name look-up"):
            lookup()
    assert len(netguard.take_violations()) == 4
    assert socket.getaddrinfo("localhost", 80)  # loopback names still resolve


def test_loopback_and_unix_sockets_still_work(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as server:
        with socket.create_connection(server.getsockname(), timeout=5) as client:
            peer, _ = server.accept()
            with peer:
                client.sendall(b"ping")
                assert peer.recv(4) == b"ping"
        with socket.socket() as client:
            assert client.connect_ex(("localhost", server.getsockname()[1])) == 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        rx.bind(("127.0.0.1", 0))
        tx.sendto(b"pong", rx.getsockname())
        assert rx.recv(4) == b"pong"
    path = str(tmp_path / "s")
    with socket.socket(socket.AF_UNIX) as server, socket.socket(socket.AF_UNIX) as client:
        server.bind(path)
        server.listen(1)
        client.connect(path)
    assert netguard.take_violations() == []


CHILD = """
import socket
s = socket.socket()
try:
    s.connect(("10.0.0.1", 9))
except Exception as e:
    print(type(e).__name__, s.getsockname())
"""


def test_child_processes_are_guarded_too(tmp_path):
    """A child started with this session's environment (as `python -m htouch ...` is) refuses too, before
    the system call, and reports the refusal to the log the session watches."""
    log = tmp_path / "child.log"
    env = {**os.environ, netguard.LOG_ENV: str(log)}  # its own log: this test expects the refusal
    r = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"NetworkGuardError {UNBOUND}"
    assert "netguard: refused connect to ('10.0.0.1', 9)" in r.stderr
    assert "refused connect to ('10.0.0.1', 9)" in log.read_text()


INNER = """
import socket
import subprocess
import sys


def test_swallowed_dial_in_process():
    try:
        socket.create_connection(("10.0.0.1", 9), timeout=0.1)
    except Exception:
        pass  # the code under test hides the error: the guard still fails the test


def test_dial_in_a_child_process():
    code = "import socket\\ntry:\\n    socket.socket().connect(('10.0.0.1', 9))\\nexcept Exception:\\n    pass\\n"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_loopback_only():
    with socket.create_server(("127.0.0.1", 0)) as server:
        socket.create_connection(server.getsockname(), timeout=5).close()
"""


def test_a_test_that_dials_outside_loopback_fails(pytester, monkeypatch):
    """A pytest session with the guard's plugin: the two tests that dial 10.0.0.1 fail (one swallowed the
    error, the other dialled from a child), the loopback one passes."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    pytester.makepyfile(test_inner=INNER)
    report = pytester.path / "report.xml"
    result = pytester.runpytest_subprocess(
        "-p", "tests.netguard_plugin", "-p", "no:cacheprovider", f"--junitxml={report}", timeout=120
    )
    result.assert_outcomes(passed=1, failed=2)
    # The report, not the console text: how much of a failure message the console shows depends on its width.
    failures = {
        case.get("name"): case.find("failure").get("message", "")
        for case in ElementTree.parse(report).iter("testcase")
        if case.find("failure") is not None
    }
    assert sorted(failures) == ["test_dial_in_a_child_process", "test_swallowed_dial_in_process"]
    for message in failures.values():
        assert "the test reached for a non-loopback address" in message
